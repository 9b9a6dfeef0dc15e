//! Request statistics into the spawner's shared block (`--stats-fd`, issue #17): per request
//! a few relaxed atomic adds on a mapped page (status class, error code, latency bucket and
//! sum), per connection one add and one subtract. No syscall, no lock, no allocation; without
//! `--stats-fd` every call is one branch. Layout: [`ns_contract::proxy_stats`].
//!
//! The shared server counts each namespace into a block of its own too: a file handed over
//! with its listeners (`stats=1`), or a record of the one slab the spawner handed over for
//! every namespace ([`Slab`], `stats=@N`, issue #20): the same slots at the record's base.
//!
//! The same mapping carries the process's heartbeat ([`Heartbeat`]): a per-namespace proxy
//! beats in its block, the shared server in its slab's header.

use std::os::unix::fs::MetadataExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ns_contract::proxy_stats as layout;
use ns_netns::SharedCounters;

use crate::error::{Error, Result};

/// The mapped block, or nothing when the proxy runs without `--stats-fd`; and, with
/// `--heartbeat-fd` instead (`proxy_metrics = false` with hangs watched), a block mapped for
/// the heartbeat alone: nothing is counted into it.
#[derive(Debug, Default)]
pub struct Stats {
    block: Option<Block>,
    beat_only: Option<Arc<SharedCounters>>,
}

/// Where a namespace's slots are: a mapping (a block file's, or a whole slab shared by every
/// namespace) and the first slot of its block in it.
#[derive(Debug)]
struct Block {
    map: Arc<SharedCounters>,
    base: usize,
    /// (device, inode) of the file mapped.
    file: (u64, u64),
}

/// The shared model's slab (`stats-slab`): mapped once, every namespace's record in it.
#[derive(Debug)]
pub struct Slab {
    map: Arc<SharedCounters>,
    file: (u64, u64),
}

impl Slab {
    /// Map the slab open as `file`: refused unless it is a regular file of
    /// [`layout::SLAB_SIZE`] bytes whose header holds [`layout::SLAB_MAGIC`] and the capacity.
    /// The reason, without a prefix, on error.
    pub fn from_file(file: &std::fs::File) -> std::result::Result<Slab, String> {
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.file_type().is_file() {
            return Err("not a regular file".to_owned());
        }
        if meta.len() != layout::SLAB_SIZE as u64 {
            return Err(format!(
                "{} bytes, a statistics slab has {}",
                meta.len(),
                layout::SLAB_SIZE
            ));
        }
        let map =
            SharedCounters::map(file, layout::SLAB_SIZE / 8).map_err(|e| format!("mmap: {e}"))?;
        if map.load(0) != layout::SLAB_MAGIC
            || map.load(layout::SLAB_SLOT_CAPACITY) != layout::SLAB_RECORDS as u64
        {
            return Err("not a statistics slab (bad magic or capacity)".to_owned());
        }
        Ok(Slab {
            map: Arc::new(map),
            file: (meta.dev(), meta.ino()),
        })
    }

    /// The block of record `n`: refused unless `n` is a record (1..capacity) in use (its
    /// first slot holds [`layout::MAGIC`]).
    pub fn record(&self, n: u64) -> std::result::Result<Stats, String> {
        let base = usize::try_from(n)
            .ok()
            .filter(|n| (1..layout::SLAB_RECORDS).contains(n))
            .map(|n| n * layout::RECORD_SLOTS)
            .ok_or_else(|| {
                format!(
                    "record {n} is not 1..={} of the statistics slab",
                    layout::SLAB_RECORDS - 1
                )
            })?;
        if self.map.load(base + layout::SLOT_MAGIC) != layout::MAGIC {
            return Err(format!(
                "record {n} of the statistics slab is not in use (bad magic)"
            ));
        }
        Ok(Stats::counted(Block {
            map: Arc::clone(&self.map),
            base,
            file: self.file,
        }))
    }

    /// The shared server's heartbeat, in the slab's header.
    pub fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            map: Arc::clone(&self.map),
            beat: layout::SLAB_SLOT_HEARTBEAT,
            period: layout::SLAB_SLOT_HEARTBEAT_MS,
        }
    }
}

/// The liveness beat the spawner watches (`[spawner] hang_timeout`;
/// [`layout::SLOT_HEARTBEAT`]): a counter bumped by a timer task of the serving runtime, so
/// it stops when that runtime's loop stops (a bug, a stuck syscall, a frozen process), and
/// while a helper serving thread's loop has stopped ([`crate::workers::answering`]). The
/// period is the spawner's, read from the mapping at each beat; 0 means none (no wake-up at
/// all). A period at least twice as long as the gap between the ticks of a timer the process
/// runs anyway (a per-namespace proxy's housekeeping, [`Heartbeat::tick`]) costs no wake-up
/// of its own: that tick beats.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    map: Arc<SharedCounters>,
    beat: usize,
    period: usize,
}

/// One heartbeat per process: a second slab handed over does not start a second timer.
static BEATING: AtomicBool = AtomicBool::new(false);

impl Heartbeat {
    /// Beat once now (before READY: the spawner zeroed the beat, so it sees this process
    /// alive from its first look), then the task that beats every period, to be spawned on
    /// the serving runtime. `covered`: the longest gap between the ticks of a timer of that
    /// runtime that calls [`Heartbeat::tick`]. `None` when the spawner asked for no
    /// heartbeat, that tick covers the period, or a timer runs already.
    pub fn start(
        self,
        covered: Option<Duration>,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let period = self.period()?;
        self.beat();
        if Self::is_covered(period, covered) || BEATING.swap(true, Ordering::SeqCst) {
            return None;
        }
        Some(self.timer(period, covered))
    }

    /// From a timer the serving runtime runs anyway, at most `covered` apart: beat when that
    /// covers the period; when the period became shorter (a spawner with a shorter timeout
    /// adopted this process), start the timer of its own on this runtime.
    pub fn tick(&self, covered: Duration) {
        let Some(period) = self.period() else {
            return;
        };
        if Self::is_covered(period, Some(covered)) {
            self.beat();
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            if !BEATING.swap(true, Ordering::SeqCst) {
                self.beat();
                rt.spawn(self.clone().timer(period, Some(covered)));
            }
        }
    }

    /// Beats every period until the period is 0 or covered by the other timer's ticks.
    async fn timer(self, mut period: Duration, covered: Option<Duration>) {
        loop {
            tokio::time::sleep(period).await;
            match self.period() {
                Some(p) if !Self::is_covered(p, covered) => {
                    period = p;
                    self.beat();
                }
                // Switched off (the spawner stops watching when its timeout is 0), or
                // beaten by the other timer from now on.
                _ => {
                    BEATING.store(false, Ordering::SeqCst);
                    return;
                }
            }
        }
    }

    /// One beat, unless a helper serving thread has stopped running its tasks
    /// ([`crate::workers::answering`]): a hang there is a hang of the process.
    fn beat(&self) {
        if crate::workers::answering() {
            self.map.add(self.beat, 1);
        }
    }

    /// A period at least twice the longest gap between the other timer's ticks.
    fn is_covered(period: Duration, covered: Option<Duration>) -> bool {
        covered.is_some_and(|c| period >= 2 * c)
    }

    /// The period asked for, bounded; `None` for 0.
    fn period(&self) -> Option<Duration> {
        match self.map.load(self.period) {
            0 => None,
            ms => Some(Duration::from_millis(
                ms.clamp(layout::HEARTBEAT_MIN_MS, layout::HEARTBEAT_MAX_MS),
            )),
        }
    }
}

/// Who produced an answer, as the counters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The agent's answer, relayed (counted by class only).
    Relayed,
    /// The proxy's own error answer (also counted by code).
    Own,
}

impl Block {
    #[inline]
    fn add(&self, slot: usize, v: u64) {
        self.map.add(self.base + slot, v);
    }

    #[inline]
    fn sub(&self, slot: usize, v: u64) {
        self.map.sub(self.base + slot, v);
    }

    fn store(&self, slot: usize, v: u64) {
        self.map.store(self.base + slot, v);
    }
}

impl Stats {
    fn counted(block: Block) -> Stats {
        Stats {
            block: Some(block),
            beat_only: None,
        }
    }

    /// Map the block on inherited fd `fd` and close that fd. Called before the privilege drop:
    /// the block is reopened through `/proc/self/fd` (no `unsafe` here), which checks access
    /// as the user the proxy still is. A block that is not a regular file of
    /// [`layout::BLOCK_SIZE`] bytes starting with [`layout::MAGIC`] is refused.
    pub fn open(fd: Option<i32>) -> Result<Stats> {
        match fd {
            Some(fd) => Stats::open_flag(fd, "--stats-fd"),
            None => Ok(Stats::default()),
        }
    }

    /// The same for `--heartbeat-fd`: the block is checked and mapped as `--stats-fd`'s is,
    /// and only the heartbeat goes into it (`[spawner] proxy_metrics = false` with
    /// `hang_timeout` not 0: the spawner watches for hangs, and exports no counts).
    pub fn open_heartbeat_only(fd: i32) -> Result<Stats> {
        let mapped = Stats::open_flag(fd, "--heartbeat-fd")?;
        Ok(Stats {
            block: None,
            beat_only: mapped.block.map(|b| b.map),
        })
    }

    fn open_flag(fd: i32, flag: &str) -> Result<Stats> {
        let bad = |why: String| Error::Config(format!("{flag} {fd}: {why}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/self/fd/{fd}"))
            .map_err(|e| bad(e.to_string()))?;
        let stats = Stats::from_file(&file).map_err(bad)?;
        drop(file);
        // The inherited descriptor itself: the mapping stays, the proxy keeps no fd it could
        // truncate the file through.
        let _ = nix::unistd::close(fd);
        Ok(stats)
    }

    /// Map the block open as `file` (the shared server gets one per namespace on its control
    /// socket): refused unless it is a regular file of [`layout::BLOCK_SIZE`] bytes starting
    /// with [`layout::MAGIC`]. The reason, without a prefix, on error.
    pub fn from_file(file: &std::fs::File) -> std::result::Result<Stats, String> {
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.file_type().is_file() {
            return Err("not a regular file".to_owned());
        }
        let size = meta.len();
        if size != layout::BLOCK_SIZE as u64 {
            return Err(format!(
                "{size} bytes, a statistics block has {}",
                layout::BLOCK_SIZE
            ));
        }
        let block = SharedCounters::map(file, layout::BLOCK_MAPPED_SLOTS)
            .map_err(|e| format!("mmap: {e}"))?;
        if block.load(layout::SLOT_MAGIC) != layout::MAGIC {
            return Err("not a statistics block (bad magic)".to_owned());
        }
        Ok(Stats::counted(Block {
            map: Arc::new(block),
            base: 0,
            file: (meta.dev(), meta.ino()),
        }))
    }

    /// Which block this is (file device and inode, first slot), to tell a repeated `add` of
    /// the same block from one that moves the namespace's counts elsewhere.
    pub fn identity(&self) -> Option<(u64, u64, usize)> {
        self.block.as_ref().map(|b| (b.file.0, b.file.1, b.base))
    }

    /// Zero the open-connections gauge: for a block a new server starts counting into (a
    /// server killed with connections open never decremented it). Read first and written
    /// only if not zero: a restarted server's replay then takes no write fault per page of
    /// the slab (the first count of each page comes later, off the restart's path).
    pub fn reset_open_connections(&self) {
        if let Some(b) = &self.block {
            if b.map.load(b.base + layout::SLOT_CONN_OPEN) != 0 {
                b.store(layout::SLOT_CONN_OPEN, 0);
            }
        }
    }

    /// One answered request: its status, who produced it, and how long it took.
    #[inline]
    pub fn request(&self, status: u16, answer: Answer, took: Duration) {
        let Some(b) = &self.block else { return };
        b.add(layout::class_slot(status), 1);
        if answer == Answer::Own {
            if let Some(i) = layout::error_slot(status) {
                b.add(i, 1);
            }
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        b.add(layout::latency_slot(us), 1);
        b.add(layout::SLOT_LATENCY_SUM_US, us);
    }

    /// A client connection was accepted.
    #[inline]
    pub fn conn_opened(&self) {
        if let Some(b) = &self.block {
            b.add(layout::SLOT_CONN_ACCEPTED, 1);
            b.add(layout::SLOT_CONN_OPEN, 1);
        }
    }

    /// A client connection was closed.
    #[inline]
    pub fn conn_closed(&self) {
        if let Some(b) = &self.block {
            b.sub(layout::SLOT_CONN_OPEN, 1);
        }
    }

    /// The agent was asked on a new connection (`reused == false`) or a pooled one.
    #[inline]
    pub fn agent_conn(&self, reused: bool) {
        if let Some(b) = &self.block {
            let i = if reused {
                layout::SLOT_AGENT_REUSED
            } else {
                layout::SLOT_AGENT_NEW
            };
            b.add(i, 1);
        }
    }

    /// Whether a block is mapped.
    pub fn enabled(&self) -> bool {
        self.block.is_some()
    }

    /// A per-namespace proxy's heartbeat, in its own block (none without `--stats-fd` or
    /// `--heartbeat-fd`).
    pub fn heartbeat(&self) -> Option<Heartbeat> {
        let map = match (&self.block, &self.beat_only) {
            (Some(b), _) if b.base == 0 => &b.map,
            (_, Some(m)) => m,
            _ => return None,
        };
        Some(Heartbeat {
            map: Arc::clone(map),
            beat: layout::SLOT_HEARTBEAT,
            period: layout::SLOT_HEARTBEAT_MS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::fd::IntoRawFd as _;

    fn block(name: &str, magic: u64, size: usize) -> (std::path::PathBuf, i32) {
        let p = std::env::temp_dir().join(format!("proxy-stats-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .expect("create");
        let mut bytes = vec![0u8; size];
        if size >= 8 {
            bytes[..8].copy_from_slice(&magic.to_le_bytes());
        }
        f.write_all(&bytes).expect("write");
        (p, f.into_raw_fd())
    }

    #[test]
    fn counts_land_in_the_contracts_slots() {
        let (p, fd) = block("ok", layout::MAGIC, layout::BLOCK_SIZE);
        let s = Stats::open(Some(fd)).expect("open");
        assert!(s.enabled());
        s.request(200, Answer::Relayed, Duration::from_micros(700));
        s.request(429, Answer::Own, Duration::from_millis(3));
        s.request(503, Answer::Relayed, Duration::from_secs(60));
        s.conn_opened();
        s.conn_opened();
        s.conn_closed();
        s.agent_conn(false);
        s.agent_conn(true);
        s.agent_conn(true);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .expect("reopen");
        let r = SharedCounters::map(&f, layout::SLOTS).expect("map");
        assert_eq!(r.load(layout::class_slot(200)), 1);
        assert_eq!(r.load(layout::class_slot(429)), 1);
        assert_eq!(r.load(layout::class_slot(503)), 1);
        assert_eq!(r.load(layout::error_slot(429).expect("429")), 1);
        assert_eq!(r.load(layout::error_slot(503).expect("503")), 0, "relayed");
        assert_eq!(r.load(layout::latency_slot(700)), 1);
        assert_eq!(r.load(layout::latency_slot(3_000)), 1);
        assert_eq!(r.load(layout::latency_slot(u64::MAX)), 1);
        assert_eq!(r.load(layout::SLOT_LATENCY_SUM_US), 60_003_700);
        assert_eq!(r.load(layout::SLOT_CONN_ACCEPTED), 2);
        assert_eq!(r.load(layout::SLOT_CONN_OPEN), 1);
        assert_eq!(r.load(layout::SLOT_AGENT_NEW), 1);
        assert_eq!(r.load(layout::SLOT_AGENT_REUSED), 2);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn a_wrong_block_is_a_one_line_error() {
        let (p, fd) = block("magic", 7, layout::BLOCK_SIZE);
        let e = Stats::open(Some(fd)).expect_err("bad magic").to_string();
        assert!(e.contains("--stats-fd") && e.contains("magic"), "{e}");
        let _ = nix::unistd::close(fd);
        let _ = std::fs::remove_file(&p);
        let (p, fd) = block("short", layout::MAGIC, 100);
        let e = Stats::open(Some(fd)).expect_err("short").to_string();
        assert!(e.contains("100 bytes"), "{e}");
        let _ = nix::unistd::close(fd);
        let _ = std::fs::remove_file(&p);
        let e = Stats::open(Some(987_654)).expect_err("no fd").to_string();
        assert!(e.contains("--stats-fd 987654"), "{e}");
        assert!(!Stats::open(None).expect("none").enabled());
    }

    /// `--heartbeat-fd`: the block is checked as `--stats-fd`'s is (errors name the flag),
    /// nothing is counted into it, and the heartbeat goes into its slot.
    #[test]
    fn a_heartbeat_only_block_beats_and_counts_nothing() {
        let (p, fd) = block("beat-only", layout::MAGIC, layout::BLOCK_SIZE);
        let s = Stats::open_heartbeat_only(fd).expect("open");
        assert!(!s.enabled(), "nothing counted");
        s.request(200, Answer::Relayed, Duration::from_micros(700));
        s.conn_opened();
        s.agent_conn(false);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .expect("reopen");
        let r = SharedCounters::map(&f, layout::BLOCK_MAPPED_SLOTS).expect("map");
        for slot in 1..layout::SLOTS {
            assert_eq!(r.load(slot), 0, "slot {slot} untouched");
        }
        r.store(layout::SLOT_HEARTBEAT_MS, 100);
        let hb = s.heartbeat().expect("a heartbeat");
        // A period the housekeeping tick covers: a beat at once, no timer (one per process).
        assert!(hb.start(Some(Duration::from_millis(10))).is_none());
        assert_eq!(r.load(layout::SLOT_HEARTBEAT), 1, "beat once at start");
        let _ = std::fs::remove_file(&p);

        let (p, fd) = block("beat-only-bad", 7, layout::BLOCK_SIZE);
        let e = Stats::open_heartbeat_only(fd)
            .expect_err("bad magic")
            .to_string();
        assert!(e.contains("--heartbeat-fd") && e.contains("magic"), "{e}");
        let _ = nix::unistd::close(fd);
        let _ = std::fs::remove_file(&p);
    }

    /// The heartbeat: nothing without a period (no timer at all), one beat at once with one,
    /// then one per period from its own timer, which ends when the period goes back to 0; one
    /// timer per process. A period the housekeeping tick covers gets no timer: the tick beats,
    /// and starts the timer once the period becomes shorter.
    #[tokio::test]
    async fn the_heartbeat_beats_at_once_then_per_period_and_stops_at_zero() {
        let (p, fd) = block("beat", layout::MAGIC, layout::BLOCK_SIZE);
        let s = Stats::open(Some(fd)).expect("open");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .expect("reopen");
        let w = SharedCounters::map(&f, layout::BLOCK_MAPPED_SLOTS).expect("map");
        let hb = || s.heartbeat().expect("a block");
        let beat = || w.load(layout::SLOT_HEARTBEAT);
        let covered = Duration::from_millis(50);
        assert!(hb().start(None).is_none(), "period 0");
        hb().tick(covered);
        assert_eq!(beat(), 0);
        let wr = &w;
        let beats = |n: u64| async move {
            for _ in 0..500 {
                if wr.load(layout::SLOT_HEARTBEAT) >= n {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        };

        // Covered: a beat at once, then one per tick, no timer.
        w.store(layout::SLOT_HEARTBEAT_MS, 100);
        assert!(hb().start(Some(covered)).is_none(), "the tick covers it");
        assert_eq!(beat(), 1, "beat before READY");
        hb().tick(covered);
        assert_eq!(beat(), 2);

        // Shorter than the tick covers: the tick starts the timer, once.
        w.store(layout::SLOT_HEARTBEAT_MS, 10);
        hb().tick(covered);
        hb().tick(covered);
        assert!(hb().start(None).is_none(), "one timer per process");
        assert!(beats(8).await, "beats every period");
        w.store(layout::SLOT_HEARTBEAT_MS, 0);
        for _ in 0..500 {
            if !BEATING.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !BEATING.load(Ordering::SeqCst),
            "the timer ends at period 0"
        );
        let last = beat();
        hb().tick(covered);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(beat(), last, "nothing beats at period 0");

        // Not covered from the start: its own timer.
        w.store(layout::SLOT_HEARTBEAT_MS, 10);
        let task = tokio::spawn(hb().start(None).expect("a timer"));
        assert!(beats(last + 4).await, "beats every period");
        w.store(layout::SLOT_HEARTBEAT_MS, 0);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends at period 0")
            .expect("task");
        assert!(
            Stats::default().heartbeat().is_none(),
            "no block, no heartbeat"
        );
        let _ = std::fs::remove_file(&p);
    }

    /// A slab-shaped file in `dir` (removed with it, also when the test fails).
    fn slab(dir: &ns_testkit::TempDir, name: &str, magic: u64, size: usize) -> std::fs::File {
        let p = dir.path().join(name);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .expect("create");
        f.set_len(size as u64).expect("size");
        if let Ok(m) = SharedCounters::map(&f, 2) {
            m.store(0, magic);
            m.store(layout::SLAB_SLOT_CAPACITY, layout::SLAB_RECORDS as u64);
        }
        f
    }

    #[test]
    fn a_slab_record_counts_at_its_base_and_bad_ones_are_refused() {
        let d = ns_testkit::TempDir::new("proxy-slab");
        let f = slab(&d, "ok", layout::SLAB_MAGIC, layout::SLAB_SIZE);
        let s = Slab::from_file(&f).expect("slab");
        let e = s.record(3).expect_err("free").to_string();
        assert!(e.contains("record 3") && e.contains("not in use"), "{e}");
        for n in [0, layout::SLAB_RECORDS as u64, u64::MAX] {
            let e = s.record(n).expect_err("out of range");
            assert!(e.contains(&format!("record {n} is not 1..=16383")), "{e}");
        }
        let w = SharedCounters::map(&f, layout::SLAB_SIZE / 8).expect("map");
        let base = 3 * layout::RECORD_SLOTS;
        w.store(base, layout::MAGIC);
        w.store(base + layout::SLOT_CONN_OPEN, 4);
        let r = s.record(3).expect("in use");
        r.reset_open_connections();
        r.request(200, Answer::Relayed, Duration::from_micros(10));
        r.conn_opened();
        assert_eq!(w.load(base + layout::class_slot(200)), 1);
        assert_eq!(w.load(base + layout::SLOT_CONN_OPEN), 1);
        assert_eq!(w.load(layout::class_slot(200)), 0, "not the header");
        assert_eq!(
            w.load(2 * layout::RECORD_SLOTS + layout::class_slot(200)),
            0
        );
        assert_eq!(r.identity().map(|i| i.2), Some(base));
        let f = slab(&d, "magic", layout::MAGIC, layout::SLAB_SIZE);
        let e = Slab::from_file(&f).expect_err("magic");
        assert!(e.contains("bad magic"), "{e}");
        let f = slab(&d, "size", layout::SLAB_MAGIC, 4096);
        let e = Slab::from_file(&f).expect_err("size");
        assert!(e.contains("4096 bytes"), "{e}");
    }
}
