//! The `--log-file` writer of the proxy and the agent: appends, and is reopened by path on
//! SIGHUP so `logrotate` can move the file away (no `copytruncate` needed).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The process's log file, once logging to a file is set up.
static CURRENT: OnceLock<LogFile> = OnceLock::new();

/// An append-mode log file that can be reopened.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

/// Open for appending (never truncating) without following a symlink at `path`, and only a
/// regular file: it is opened as root, often in a directory others can write to.
fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        // O_NONBLOCK: a FIFO planted at the path must not hang start-up (refused below).
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "is a symlink; refusing to follow it",
                )
            } else {
                e
            }
        })?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file; refusing to write to it",
        ));
    }
    // A hard link planted at the path would have root append to the file it names (where
    // `fs.protected_hardlinks` is off, any file): a log file has one name.
    let links = std::os::unix::fs::MetadataExt::nlink(&meta);
    if links != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("has {links} names (a hard link to another file?); refusing to write to it"),
        ));
    }
    Ok(f)
}

impl LogFile {
    /// Open `path` for appending and make it the process's log file (first call wins).
    pub fn install(path: &Path) -> io::Result<&'static LogFile> {
        let lf = LogFile {
            path: path.to_owned(),
            file: Mutex::new(open(path)?),
        };
        Ok(CURRENT.get_or_init(|| lf))
    }

    /// Append `buf` (whole lines) to the current file: the proxy's batched access lines.
    pub fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        io::Write::write_all(&mut *self.file(), buf)
    }

    fn file(&self) -> MutexGuard<'_, File> {
        self.file.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reopen the process's log file by its path (SIGHUP). `Ok(false)` when logging goes to
/// stderr or syslog only; on error the old file stays in use.
pub fn reopen() -> io::Result<bool> {
    let Some(lf) = CURRENT.get() else {
        return Ok(false);
    };
    let new = open(&lf.path)?;
    *lf.file() = new;
    Ok(true)
}

/// One log event's writer: holds the file for the event.
pub struct Guard<'a>(MutexGuard<'a, File>);

impl io::Write for Guard<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for &'static LogFile {
    type Writer = Guard<'a>;
    fn make_writer(&'a self) -> Guard<'a> {
        Guard(self.file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nsmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn symlinked_log_file_is_refused() {
        let d = scratch("log-symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious\n").expect("victim");
        let p = d.join("proxy.log");
        std::os::unix::fs::symlink(&victim, &p).expect("symlink");
        let e = open(&p).expect_err("symlink refused");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "precious\n"
        );
        let e = open(&d).expect_err("a directory is not a log file");
        assert!(!e.to_string().is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn hard_linked_log_file_is_refused() {
        let d = scratch("log-hardlink");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious\n").expect("victim");
        let p = d.join("proxy.log");
        std::fs::hard_link(&victim, &p).expect("hard link");
        let e = open(&p).expect_err("hard link refused");
        assert!(e.to_string().contains("2 names"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "precious\n"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn log_file_is_appended_never_truncated() {
        use std::io::Write as _;
        let d = scratch("log-append");
        let p = d.join("proxy.log");
        std::fs::write(&p, "old line\n").expect("write");
        open(&p)
            .expect("open")
            .write_all(b"new line\n")
            .expect("append");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "old line\nnew line\n"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
