//! The `--log-file` writer: appends, and is reopened by path on SIGHUP so `logrotate`
//! can move the file away (no `copytruncate` needed).

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

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
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
