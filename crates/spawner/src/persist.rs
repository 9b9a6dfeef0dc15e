//! `<state dir>/records.json`, the records made through the control API, so that a restarted
//! spawner wants the same proxies and adopts them instead of stopping them.
//!
//! Saving (issue "hardening", item 13): a change is applied, appended to the write-ahead
//! journal (`journal.rs`: one `write(2)`, no fsync) and answered; one task writes the whole
//! snapshot [`SAVE_DELAY`] later from a blocking thread, so a burst of changes costs one
//! write and no change waits for an fsync. Auto-enabled routers are not API records and
//! never cause a write. Each save keeps the file it replaces as `records.json.prev` (a hard
//! link, taken before the atomic rename), the previous good copy. The file is what it was
//! before the journal (an older spawner reads it): which journal lines a snapshot includes
//! need not be known, since replaying a line the snapshot has already is harmless (a change
//! puts or removes one record by its id, so applying the same changes again, in order,
//! ends in the same records).
//!
//! Loading (item 9): an empty or truncated `records.json` (power loss) must not crash-loop
//! the spawner under systemd. A file that does not parse is set aside as
//! `records.json.bad-<unix seconds>` (named in the log), the previous copy is loaded instead,
//! and if there is none the spawner starts without API records, in a mode that stops nothing
//! it finds running; the status says so. Then the journal's lines are replayed (`.old`, then
//! the journal, in order), and if there was a journal the result is saved as a snapshot and
//! the journal cleared.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::journal::{self, Journal};
use crate::records::{RecordSet, Records};
use crate::{statedir, Error, Result};

/// The file, in the state dir.
pub const FILE: &str = "records.json";
/// The previous good copy, beside it.
pub const PREV: &str = "records.json.prev";
/// How long after a change the records are written: changes within it share one write.
pub const SAVE_DELAY: Duration = Duration::from_millis(100);
/// How often a failed save is tried again (a full or read-only state dir), until one
/// succeeds: the records are saved once there is room, without waiting for another change.
pub const SAVE_RETRY: Duration = Duration::from_secs(1);
/// Largest `records.json` read (a few hundred bytes per record).
const MAX_BYTES: u64 = 256 << 20;

/// What loading found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The file was good (or absent: a first start).
    Clean,
    /// The file was damaged and set aside; the previous copy was loaded (changes made after
    /// it was written are lost).
    FromPrevious { bad: PathBuf, why: String },
    /// The file was damaged and set aside, and there was no good previous copy: the API
    /// records are lost until announced again; nothing found running is stopped.
    Lost { bad: PathBuf, why: String },
}

impl Recovery {
    /// One line for the status and the log; `None` when clean.
    pub fn note(&self) -> Option<String> {
        match self {
            Recovery::Clean => None,
            Recovery::FromPrevious { bad, why } => Some(format!(
                "{FILE} was damaged ({why}); set aside as {}; loaded {PREV}: API changes made after it are lost until announced again; proxies found running are kept, none is stopped",
                bad.display()
            )),
            Recovery::Lost { bad, why } => Some(format!(
                "{FILE} was damaged ({why}); set aside as {}; no good {PREV}: API records are lost until announced again; proxies found running are kept, none is stopped",
                bad.display()
            )),
        }
    }

    /// Whether the API records may be incomplete so that nothing may be stopped for not
    /// being wanted: lost, or loaded from the previous copy, which lacks the last save's
    /// changes (a 100 ms debounce can hold a burst of announcements): a router announced in
    /// it still has its proxy running, provably ours.
    pub fn records_lost(&self) -> bool {
        matches!(self, Recovery::Lost { .. } | Recovery::FromPrevious { .. })
    }
}

/// The records in `path`; `None` when absent.
fn parse(path: &Path) -> std::result::Result<Option<RecordSet>, String> {
    match statedir::read_nofollow(path, MAX_BYTES) {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => RecordSet::parse(&bytes, path)
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// What loading found: the API records, how `records.json` was recovered, and the journal
/// to append to (its sequence past every line replayed).
#[derive(Debug)]
pub struct Loaded {
    pub set: RecordSet,
    pub recovery: Recovery,
    pub journal: Journal,
}

/// Load the API records from `dir`: the snapshot, recovering as the module docs say, then
/// the journal's lines; a replayed journal is saved as a snapshot and
/// cleared (kept if that save fails: it is replayed again next time). Errors only when the
/// damaged file cannot even be set aside (then starting would lose it for good).
pub fn load(dir: &Path) -> Result<Loaded> {
    let (set, recovery) = load_snapshot(dir)?;
    let mut records = Records::default();
    records.set_api(set);
    let replayed = journal::replay(dir, &mut records);
    let set = records.api_set();
    if replayed.found {
        match save(dir, &set) {
            Ok(()) => journal::clear(dir),
            Err(e) => {
                tracing::warn!(err = %e, "cannot save the replayed records; the journal is kept and replayed again at the next start")
            }
        }
    }
    let journal = Journal::open(dir, replayed.seq, replayed.note);
    Ok(Loaded {
        set,
        recovery,
        journal,
    })
}

fn load_snapshot(dir: &Path) -> Result<(RecordSet, Recovery)> {
    let path = dir.join(FILE);
    let why = match parse(&path) {
        Ok(got) => return Ok((got.unwrap_or_default(), Recovery::Clean)),
        Err(why) => why,
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let bad = dir.join(format!("{FILE}.bad-{secs}"));
    std::fs::rename(&path, &bad).map_err(|e| Error::io("set aside damaged", &path, e))?;
    statedir::sync_dir(dir);
    let prev = dir.join(PREV);
    let recovery = match parse(&prev) {
        Ok(Some(set)) => {
            let r = Recovery::FromPrevious { bad, why };
            tracing::error!("{}", r.note().unwrap_or_default());
            // The previous copy becomes the file again, so the next start finds it.
            if let Err(e) = save(dir, &set) {
                tracing::warn!(err = %e, "cannot write {FILE} back from {PREV}");
            }
            return Ok((set, r));
        }
        Ok(None) => Recovery::Lost { bad, why },
        Err(prev_why) => Recovery::Lost {
            bad,
            why: format!("{why}; {PREV}: {prev_why}"),
        },
    };
    tracing::error!("{}", recovery.note().unwrap_or_default());
    Ok((RecordSet::default(), recovery))
}

/// Write `set` as `dir/records.json` now (atomically, durably), keeping the file it replaces
/// as `records.json.prev`.
pub fn save(dir: &Path, set: &RecordSet) -> Result<()> {
    let text = serde_json::to_vec_pretty(set).map_err(|e| Error::Invalid(e.to_string()))?;
    let path = dir.join(FILE);
    if path.is_file() {
        // A hard link under a temp name, renamed over the old copy: atomic, and the current
        // file is untouched if anything fails.
        let tmp = dir.join(format!(".{PREV}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let kept =
            std::fs::hard_link(&path, &tmp).and_then(|()| std::fs::rename(&tmp, dir.join(PREV)));
        if let Err(e) = kept {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(err = %e, "cannot keep the previous {FILE} as {PREV}");
        }
    }
    statedir::write_atomic(dir, FILE, &text)
}

/// The state of the debounced saver.
#[derive(Debug, Default)]
pub(crate) struct Saver {
    state: Mutex<SaverState>,
    done: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct SaverState {
    /// Generation of the records: bumped by every persisted change.
    wanted: u64,
    /// Generation last written (or attempted).
    saved: u64,
    /// A save task is scheduled or running.
    running: bool,
    /// Why the last save failed; cleared by the next good one.
    error: Option<String>,
    /// Writes done (good or not), for the metric and tests.
    writes: u64,
}

/// What the save task does after a write ([`Saver::finish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Everything is written: the task ends.
    Done,
    /// Another change came meanwhile: write again after [`SAVE_DELAY`].
    Again,
    /// The write failed: try again after [`SAVE_RETRY`] (the task stays the one save task).
    Retry,
}

/// What [`Saver::mark`] asks the caller to do.
pub(crate) enum Next {
    /// A save task is already scheduled: it will include this change.
    Scheduled,
    /// Spawn the save task.
    Spawn,
}

impl Saver {
    /// The state; a panic elsewhere while it was held leaves counters that are still usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, SaverState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record a change; the answer says whether a save task must be started.
    pub(crate) fn mark(&self) -> Next {
        let mut s = self.lock();
        s.wanted += 1;
        if s.running {
            Next::Scheduled
        } else {
            s.running = true;
            Next::Spawn
        }
    }

    /// The generation to write now.
    pub(crate) fn begin(&self) -> u64 {
        self.lock().wanted
    }

    /// After a write of generation `gen`: what the save task does next. When it is
    /// [`After::Done`] the task is marked ended under the same lock, so a change arriving
    /// now starts a new one. A failed write is retried (a disk that was full has room
    /// later), so a task ends only once everything is written.
    pub(crate) fn finish(&self, gen: u64, r: &Result<()>) -> After {
        let mut s = self.lock();
        s.saved = s.saved.max(gen);
        s.writes += 1;
        match r {
            Ok(()) => {
                if let Some(was) = s.error.take() {
                    tracing::info!(previous_err = %was, "{FILE} saved again; every change is saved");
                }
            }
            Err(e) => {
                if s.error.is_none() {
                    tracing::error!(
                        err = %e,
                        "cannot save {FILE}; changes stay in effect, and the save is retried every {} s until it succeeds",
                        SAVE_RETRY.as_secs()
                    );
                }
                s.error = Some(e.to_string());
            }
        }
        let next = if s.wanted > s.saved {
            After::Again
        } else if r.is_err() {
            After::Retry
        } else {
            s.running = false;
            After::Done
        };
        drop(s);
        self.done.notify_waiters();
        next
    }

    /// The save task gives up its retries (no runtime to wait on: tests only); the next
    /// change starts a new one.
    pub(crate) fn stop_retrying(&self) {
        self.lock().running = false;
    }

    /// Why the last save failed, if it did.
    pub(crate) fn error(&self) -> Option<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error
            .clone()
    }

    /// Writes done so far.
    pub(crate) fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Whether every change so far has been written (or attempted: a task retrying a failed
    /// write does not hold up the exit, which reports the failure).
    fn settled(&self) -> bool {
        let s = self.lock();
        s.saved >= s.wanted && (!s.running || s.error.is_some())
    }

    /// Wait until every change so far has been written; the error of the last write.
    pub(crate) async fn settle(&self) -> std::result::Result<(), String> {
        loop {
            let done = self.done.notified();
            if self.settled() {
                return self.error().map_or(Ok(()), Err);
            }
            done.await;
        }
    }
}

#[cfg(test)]
#[path = "persist_tests.rs"]
mod tests;
