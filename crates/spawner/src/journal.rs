//! `<state dir>/records.journal`, the write-ahead journal of the API records: every change
//! made through the control API is one line appended *before* it is answered, so a change
//! answered 200 survives the spawner's death (kill -9, a panic, the OOM killer) inside the
//! snapshot's save delay (`persist.rs`), which a restarted spawner would otherwise not know,
//! and stop that namespace's proxy.
//!
//! - A line is `{"seq":N,"change":{"put_router":{…}}}` and its newline, written with one
//!   `write(2)` to the file opened `O_APPEND|O_NOFOLLOW`, 0600. No fsync: once written, the
//!   line is in the page cache, which outlives the process. A power loss keeps the last
//!   fsynced `records.json` and whatever lines the kernel had written back.
//! - A save takes its copy of the records and rotates the journal under the records lock:
//!   `records.journal` → `records.journal.old`, later appends go to a fresh file, and `.old`
//!   is removed once the snapshot is written. While an `.old` is left (its snapshot failed),
//!   the journal is not rotated again.
//! - Replay at start ([`replay`]): `.old`, then the journal, in order, onto the snapshot.
//!   Some of the lines may be in the snapshot already (a death after the snapshot was
//!   written but before `.old` was removed, or a journal not rotated): applying them again
//!   is harmless, since a change puts or removes one record by its id, so the same changes
//!   applied again in order end in the same records. The snapshot therefore need not say
//!   which lines it has, and `records.json` keeps the format an older spawner reads. A line
//!   whose sequence is not above the last one applied is skipped (a duplicate). A last line
//!   without its newline (cut by the death) is ignored with a warning; a line that does not
//!   parse stops the replay there, and the files not fully replayed are set aside as
//!   `<name>.bad-<unix seconds>`, never a crash loop.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::records::{Change, Records};
use crate::{statedir, Error, Result};

/// The journal, in the state dir.
pub const FILE: &str = "records.journal";
/// The journal a save rotated away, until its snapshot is written.
pub const OLD: &str = "records.journal.old";
/// Largest journal read (it holds the changes since the last snapshot began).
const MAX_BYTES: u64 = 256 << 20;

/// One line as written.
#[derive(Serialize)]
struct LineOut<'a> {
    seq: u64,
    change: &'a Change,
}

/// One line as read back.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn {
    seq: u64,
    change: Change,
}

/// The appending end of the journal, held under the records lock by the supervisor.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// `None` when it could not be opened; the next append tries again.
    file: Option<File>,
    /// Bytes of complete lines in `file`.
    len: u64,
    /// A short write left part of a line after `len`: cut before the next append.
    torn: bool,
    /// The sequence of the last line written (or replayed).
    seq: u64,
    /// What the replay at start found wrong, for the status.
    note: Option<String>,
}

/// Open `path` for appending (created 0600 if absent), not following a link; a regular file
/// with one link only. A last line without its newline is cut, so the next line starts on a
/// line of its own. The length of the file.
fn open_append(path: &Path) -> Result<(File, u64)> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let m = f.metadata().map_err(|e| Error::io("stat", path, e))?;
    if !m.is_file() || m.nlink() != 1 {
        return Err(Error::Invalid(format!(
            "{}: not a regular file with one link",
            path.display()
        )));
    }
    if m.len() == 0 {
        return Ok((f, 0));
    }
    let mut text = Vec::new();
    (&mut f)
        .take(MAX_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| Error::io("read", path, e))?;
    let good = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if good as u64 != m.len() {
        f.set_len(good as u64)
            .map_err(|e| Error::io("cut the torn last line of", path, e))?;
    }
    Ok((f, good as u64))
}

impl Journal {
    /// The journal of `dir`, its last sequence `seq` (from the replay); `note` is what the
    /// replay found wrong. A file that cannot be opened is logged; appends then fail until
    /// it can.
    pub fn open(dir: &Path, seq: u64, note: Option<String>) -> Journal {
        let mut j = Journal {
            dir: dir.to_owned(),
            file: None,
            len: 0,
            torn: false,
            seq,
            note,
        };
        if let Err(e) = j.reopen() {
            tracing::error!(err = %e, "cannot open the records journal; API changes are answered 500 until it can be");
        }
        j
    }

    fn reopen(&mut self) -> Result<()> {
        let (f, len) = open_append(&self.dir.join(FILE))?;
        self.file = Some(f);
        self.len = len;
        self.torn = false;
        Ok(())
    }

    /// The sequence of the last line written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// What the replay at start found wrong, if anything.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// Append `change` as the next line: one `write(2)`, no fsync (module docs). On error
    /// nothing of the line stays in the file (a short write is cut) and the sequence is not
    /// used.
    pub fn append(&mut self, change: &Change) -> Result<u64> {
        let path = self.dir.join(FILE);
        let seq = self.seq + 1;
        let mut line = serde_json::to_vec(&LineOut { seq, change })
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        line.push(b'\n');
        if self.file.is_none() {
            self.reopen()?;
        }
        let Some(f) = self.file.as_mut() else {
            return Err(Error::Invalid(format!("{}: not open", path.display())));
        };
        if self.torn {
            f.set_len(self.len)
                .map_err(|e| Error::io("cut a torn line of", &path, e))?;
            self.torn = false;
        }
        match f.write(&line) {
            Ok(n) if n == line.len() => {
                self.len += n as u64;
                self.seq = seq;
                Ok(seq)
            }
            Ok(n) => {
                // A full disk took part of the line: cut it now or before the next append.
                self.torn = f.set_len(self.len).is_err();
                Err(Error::Invalid(format!(
                    "append to {}: short write ({n} of {} bytes)",
                    path.display(),
                    line.len()
                )))
            }
            Err(e) => Err(Error::io("append to", &path, e)),
        }
    }

    /// A save takes its copy of the records (under the records lock): move the journal's
    /// lines aside to `.old` so that appends from now on go to a fresh file. The sequence of
    /// the last line the copy includes. Not rotated while an `.old` is left (its snapshot
    /// failed): the journal's lines that this snapshot includes are then replayed again if
    /// the spawner dies, which is harmless (module docs).
    pub fn rotate(&mut self) -> u64 {
        if self.file.is_none() || (self.len == 0 && !self.torn) {
            return self.seq;
        }
        let (cur, old) = (self.dir.join(FILE), self.dir.join(OLD));
        if std::fs::symlink_metadata(&old).is_ok() {
            return self.seq;
        }
        if let Err(e) = std::fs::rename(&cur, &old) {
            tracing::warn!(err = %e, file = %cur.display(), "cannot rotate the records journal; it keeps growing until a save can");
            return self.seq;
        }
        self.file = None;
        if let Err(e) = self.reopen() {
            tracing::error!(err = %e, "cannot open a fresh records journal; API changes are answered 500 until it can be");
        }
        self.seq
    }
}

/// After a snapshot was written: the rotated lines are in it, remove them.
pub fn remove_old(dir: &Path) {
    remove(&dir.join(OLD));
}

/// After the replayed records were written as a snapshot: both files are in it.
pub fn clear(dir: &Path) {
    remove(&dir.join(OLD));
    remove(&dir.join(FILE));
}

fn remove(p: &Path) {
    match std::fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(err = %e, file = %p.display(), "cannot remove"),
    }
}

/// What [`replay`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// The last sequence applied (0: none).
    pub seq: u64,
    /// Lines applied.
    pub applied: usize,
    /// Whether a journal file with lines (or unreadable) was there: then the records are
    /// saved as a snapshot and the journal cleared.
    pub found: bool,
    /// What went wrong (a damaged line: the files set aside), for the status.
    pub note: Option<String>,
}

/// Why a line was not applied.
enum Bad {
    /// The whole file could not be read.
    File(String),
    /// Line `n` (1-based): the reason.
    Line(usize, String),
}

/// Apply the lines of `.old` and the journal to `records`, in order (module docs). Never
/// fails: what cannot be read is set aside and said in the note.
pub fn replay(dir: &Path, records: &mut Records) -> Replayed {
    let mut out = Replayed::default();
    let names = [OLD, FILE];
    for (i, name) in names.iter().enumerate() {
        let path = dir.join(name);
        let bad = match statedir::read_nofollow(&path, MAX_BYTES) {
            Ok(None) => continue,
            Ok(Some(text)) => {
                out.found |= !text.is_empty();
                apply_lines(&path, &text, records, &mut out).err()
            }
            Err(e) => {
                out.found = true;
                Some(Bad::File(e.to_string()))
            }
        };
        let Some(bad) = bad else { continue };
        let why = match bad {
            Bad::File(why) => why,
            Bad::Line(n, why) => format!("{}:{n}: {why}", path.display()),
        };
        let aside: Vec<String> = names[i..]
            .iter()
            .filter_map(|n| set_aside(dir, n))
            .collect();
        let note = format!(
            "records journal damaged ({why}); replay stopped there, API changes after it are lost; set aside as {}",
            aside.join(", ")
        );
        tracing::error!("{note}");
        out.note = Some(note);
        break;
    }
    if out.applied > 0 {
        tracing::info!(
            lines = out.applied,
            seq = out.seq,
            "replayed the records journal: API changes not yet in records.json"
        );
    }
    out
}

/// Apply the complete lines of `text` (the file at `path`) above `out.seq`.
fn apply_lines(
    path: &Path,
    text: &[u8],
    records: &mut Records,
    out: &mut Replayed,
) -> std::result::Result<(), Bad> {
    let mut lines = text.split(|&b| b == b'\n').enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        if lines.peek().is_none() {
            // After the last newline: empty, or a line the death cut short.
            if !line.is_empty() {
                tracing::warn!(
                    file = %path.display(),
                    line = i + 1,
                    "records journal: the last line has no newline (cut short when the spawner died); ignored"
                );
            }
            break;
        }
        let parsed: LineIn =
            serde_json::from_slice(line).map_err(|e| Bad::Line(i + 1, e.to_string()))?;
        parsed
            .change
            .validate()
            .map_err(|e| Bad::Line(i + 1, e.to_string()))?;
        if parsed.seq <= out.seq {
            continue; // a duplicate of a line applied already
        }
        records.apply(parsed.change);
        out.seq = parsed.seq;
        out.applied += 1;
    }
    Ok(())
}

/// Rename `dir/name` to `name.bad-<unix seconds>`; its new path, if it was there.
fn set_aside(dir: &Path, name: &str) -> Option<String> {
    let from = dir.join(name);
    std::fs::symlink_metadata(&from).ok()?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let to = dir.join(format!("{name}.bad-{secs}"));
    match std::fs::rename(&from, &to) {
        Ok(()) => {
            statedir::sync_dir(dir);
            Some(to.display().to_string())
        }
        Err(e) => {
            tracing::error!(err = %e, file = %from.display(), "cannot set the damaged records journal aside");
            None
        }
    }
}
