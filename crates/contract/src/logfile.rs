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
    file: Mutex<Sink>,
}

/// The open file, and what writing to it went through lately.
#[derive(Debug)]
struct Sink {
    file: File,
    /// The last write stopped inside a line (a disk that filled up mid-line): the next one
    /// ends that line first, so the next event does not run on from its middle.
    torn: bool,
    /// Writes dropped since they began to fail (`None` while they work): said once when it
    /// starts and once when it ends, not once per event on stderr (under systemd, journald).
    dropped: Option<u64>,
}

impl Sink {
    fn new(file: File) -> Sink {
        Sink {
            file,
            torn: false,
            dropped: None,
        }
    }

    /// Append `buf` (whole lines), or drop it: an error is said on stderr once per run of
    /// failures (naming the file), never handed back to the logger, which would print its
    /// own for every event.
    fn put(&mut self, path: &Path, buf: &[u8]) {
        match (self.append(buf), &mut self.dropped) {
            (Ok(()), None) => {}
            (Ok(()), Some(n)) => {
                eprintln!(
                    "log file {}: written again; {n} log writes were dropped meanwhile",
                    path.display()
                );
                self.dropped = None;
            }
            (Err(e), None) => {
                eprintln!(
                    "log file {}: cannot write ({e}); log lines are dropped until it works again",
                    path.display()
                );
                self.dropped = Some(1);
            }
            (Err(_), Some(n)) => *n += 1,
        }
    }

    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        use std::io::Write as _;
        if self.torn {
            self.file.write_all(b"\n")?;
            self.torn = false;
        }
        let mut done = 0;
        while done < buf.len() {
            match self.file.write(&buf[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.torn = done > 0;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
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
            file: Mutex::new(Sink::new(open(path)?)),
        };
        Ok(CURRENT.get_or_init(|| lf))
    }

    /// Append `buf` (whole lines) to the current file: the proxy's batched access lines. A
    /// failure is said on stderr once per run of them ([`Sink::put`]) and the lines dropped.
    pub fn write_all(&self, buf: &[u8]) {
        self.file().put(&self.path, buf);
    }

    fn file(&self) -> MutexGuard<'_, Sink> {
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
    let mut sink = lf.file();
    sink.file = new;
    sink.torn = false;
    Ok(true)
}

/// One log event's writer: holds the file for the event.
pub struct Guard<'a>(MutexGuard<'a, Sink>, &'a Path);

impl io::Write for Guard<'_> {
    /// The event's bytes whole (the logger hands them over in one call), or dropped.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.put(self.1, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for &'static LogFile {
    type Writer = Guard<'a>;
    fn make_writer(&'a self) -> Guard<'a> {
        Guard(self.file(), &self.path)
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

    /// A full disk (`/dev/full`: every write fails with ENOSPC) drops the lines, not once an
    /// error per event; the count is kept until writes work again. A line cut short is
    /// ended before the next one, which starts on its own line.
    #[test]
    fn a_full_disk_drops_lines_quietly_and_a_torn_line_is_ended() {
        let d = scratch("log-full");
        let full = OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .expect("/dev/full");
        let mut sink = Sink::new(full);
        let path = Path::new("/dev/full");
        sink.put(path, b"one\n");
        sink.put(path, b"two\n");
        assert_eq!(sink.dropped, Some(2));
        let p = d.join("agent.log");
        sink.file = open(&p).expect("open");
        sink.torn = true;
        sink.put(&p, b"three\n");
        assert_eq!(sink.dropped, None, "working again");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "\nthree\n");
        // Through the logger's writer: whole, and never an error back to it.
        let lf = LogFile {
            path: p.clone(),
            file: Mutex::new(sink),
        };
        let mut g = Guard(lf.file(), &lf.path);
        io::Write::write_all(&mut g, b"four\n").expect("never an error");
        drop(g);
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "\nthree\nfour\n"
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
