//! The shared model's statistics slab (issue #20): one file per shared server,
//! `<state_dir>/stats/shared.slab` (`shared-N.slab` for shard N, as its socket and pid file
//! are named), of 512-byte records ([`ns_contract::proxy_stats::RECORD_SIZE`]), one per
//! namespace that server serves. A record is a block's first 64 slots, so 8 namespaces share
//! a page where each had a page of its own, and the server maps one file, not one per
//! namespace, when it (re)starts.
//!
//! - **Created** `O_CREAT|O_EXCL|O_NOFOLLOW`, 0600, sparse (`set_len`: a page never touched
//!   costs nothing), in the 0700 stats dir; an existing one is reused only if it is a regular
//!   file, ours, not hard-linked, of [`SLAB_SIZE`] bytes with the header's magic and
//!   capacity, else it is replaced (never followed through a link).
//! - **Records**: the lowest free one (slot 0 is 0) is taken for a new key: the block's
//!   [`MAGIC`] in slot 0 and the key in the record's tail, so a restarted spawner rebuilds
//!   key → record from the slab itself (scanning up to the header's high-water mark only, not
//!   the 8 MiB). A freed record is zeroed. A record's bytes are written through the file
//!   first, so a full filesystem refuses it (`ENOSPC`, the namespace is served uncounted)
//!   instead of the mapping faulting on a page the sparse file never had.
//! - **Checked** before each use of the mapping: the held file still has its size (a file
//!   cut short under a mapping faults on access), is still the one at its path, and its
//!   header still says what the spawner wrote (magic, capacity, a high-water mark within the
//!   records mapped: the server holds the file read-write and may write anything); a slab
//!   that is not is never touched again by this process, said once (its namespaces keep
//!   counting into the server's mapping; new ones are served uncounted).
//! - **Bounded by what the spawner mapped**: every record index it reads comes from its own
//!   table of keys or from a scan below the capacity it sized, never from a number in the
//!   file; a high-water mark past it found at a restart is said once and every record
//!   mapped scanned instead, and records with no good key are freed and said once, counted.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use ns_contract::proxy_stats::{
    key_of, key_slots, MAGIC, RECORD_SIZE, RECORD_SLOTS, SLAB_MAGIC, SLAB_RECORDS, SLAB_SIZE,
    SLAB_SLOT_CAPACITY, SLOTS, SLOT_KEY_LEN,
};
use ns_netns::SharedCounters;

/// Slot 2 of record 0: one past the highest record ever taken (what a reopen scans).
const SLOT_HIGH: usize = 2;

/// The slab of shard `shard` in the stats dir `dir`.
pub fn path(dir: &Path, shard: usize) -> PathBuf {
    if shard == 0 {
        dir.join("shared.slab")
    } else {
        dir.join(format!("shared-{shard}.slab"))
    }
}

/// Whether `name` is a slab's file name (for `retain`, which keeps them).
pub fn is_slab_name(name: &str) -> bool {
    name.starts_with("shared") && name.ends_with(".slab")
}

/// Why a key got no record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRecord {
    /// Longer than a record's tail holds.
    LongKey,
    /// Every record taken.
    Full,
    /// The slab file changed under us.
    Changed(String),
    /// The filesystem has no room for the record's page (a full state dir).
    NoRoom(String),
}

impl std::fmt::Display for NoRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoRecord::LongKey => write!(
                f,
                "the key is longer than the {} bytes a slab record holds",
                ns_contract::proxy_stats::MAX_RECORD_KEY
            ),
            NoRecord::Full => write!(f, "all {} records are taken", SLAB_RECORDS - 1),
            NoRecord::Changed(why) => write!(f, "the slab changed under the spawner: {why}"),
            NoRecord::NoRoom(why) => write!(f, "no room for the record in the slab's file: {why}"),
        }
    }
}

/// One slab, mapped whole, with the record of each key in it.
pub struct Slab {
    path: PathBuf,
    file: File,
    map: SharedCounters,
    /// (device, inode) of `file`.
    id: (u64, u64),
    keys: BTreeMap<String, u32>,
    /// One bit per record, set while taken (record 0, the header, always).
    used: Vec<u64>,
}

impl Slab {
    /// Open the slab at `p`, creating it if missing and replacing a bad one (logged), and
    /// find the key of every record in use.
    pub fn open(p: &Path) -> std::io::Result<Slab> {
        let file = open_file(p)?;
        let m = file.metadata()?;
        let map = SharedCounters::map(&file, SLAB_SIZE / 8)?;
        let mut slab = Slab {
            path: p.to_owned(),
            file,
            map,
            id: (m.dev(), m.ino()),
            keys: BTreeMap::new(),
            used: vec![0; SLAB_RECORDS.div_ceil(64)],
        };
        slab.mark(0, true);
        slab.rebuild();
        Ok(slab)
    }

    /// The records the spawner sized and mapped, the header's included: every record index
    /// it reads is below this, whatever the server wrote.
    fn capacity(&self) -> usize {
        (self.map.slots() / RECORD_SLOTS).min(SLAB_RECORDS)
    }

    /// What is wrong with the header (record 0), which the server can write as it holds the
    /// file read-write: its magic, the capacity the spawner sized, a high-water mark within
    /// it. `None` when it says what the spawner wrote.
    fn header_problem(&self) -> Option<String> {
        if self.map.load(0) != SLAB_MAGIC {
            return Some("its header's magic was overwritten".into());
        }
        let cap = self.map.load(SLAB_SLOT_CAPACITY);
        if cap != self.capacity() as u64 {
            return Some(format!(
                "its header says {cap} records, not the {} it was made with",
                self.capacity()
            ));
        }
        let high = self.map.load(SLOT_HIGH);
        (high > self.capacity() as u64).then(|| {
            format!(
                "its high-water mark {high} is past the {} records mapped",
                self.capacity()
            )
        })
    }

    /// The records in use up to the high-water mark: each with a good key is that key's
    /// (the first of a key written twice); any other is freed. The mark is the server's to
    /// write too: one past the records mapped is a broken server's, said once, and every
    /// record mapped is scanned instead; bad records are said once, with their count.
    fn rebuild(&mut self) {
        let cap = self.capacity();
        let raw = self.map.load(SLOT_HIGH);
        let high = match usize::try_from(raw) {
            Ok(h) if h <= cap => h.max(1),
            _ => {
                tracing::warn!(file = %self.path.display(), high = raw, records = cap, "statistics slab: a high-water mark past the records mapped (a broken server wrote it): every record scanned");
                cap
            }
        };
        self.map.store(SLOT_HIGH, high as u64);
        let mut bad = Vec::new();
        for r in 1..high {
            let base = r * RECORD_SLOTS;
            if self.map.load(base) == 0 {
                continue;
            }
            let tail: Vec<u64> = (base + SLOT_KEY_LEN + 1..base + RECORD_SLOTS)
                .map(|i| self.map.load(i))
                .collect();
            let key = key_of(self.map.load(base + SLOT_KEY_LEN), &tail)
                .filter(|k| self.map.load(base) == MAGIC && ns_contract::validate_id(k).is_ok());
            match key {
                Some(k) if !self.keys.contains_key(&k) => {
                    self.keys.insert(k, r as u32);
                    self.mark(r, true);
                }
                _ => {
                    bad.push(r);
                    self.zero(r);
                }
            }
        }
        if let Some(first) = bad.first() {
            tracing::warn!(file = %self.path.display(), records = bad.len(), first, "statistics slab: records with no good key freed");
        }
    }

    fn mark(&mut self, r: usize, on: bool) {
        if let Some(w) = self.used.get_mut(r / 64) {
            if on {
                *w |= 1 << (r % 64);
            } else {
                *w &= !(1 << (r % 64));
            }
        }
    }

    fn zero(&self, r: usize) {
        for i in r * RECORD_SLOTS..(r + 1) * RECORD_SLOTS {
            self.map.store(i, 0);
        }
    }

    /// The slab's file, to hand to a server.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// (device, inode) of the slab's file.
    pub fn id(&self) -> (u64, u64) {
        self.id
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record of `key`, if it has one.
    pub fn record_of(&self, key: &str) -> Option<u32> {
        self.keys.get(key).copied()
    }

    /// Every key with a record.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.keys.keys()
    }

    /// Whether the mapping may be touched: the held file still has the slab's size and is
    /// the one at the path. The reason if not.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.map.is_cut() {
            // Cut short under the mapping by a holder of the file (its server: the kernel
            // lets any writable descriptor truncate): what it reads now is not the file.
            return Err("cut short under the spawner's mapping".into());
        }
        if let Some(why) = self.header_problem() {
            // Only a broken (or hostile) server writes there: nothing it says is read again.
            return Err(why);
        }
        let len = self.file.metadata().map_err(|e| e.to_string())?.len();
        if len != SLAB_SIZE as u64 {
            return Err(format!("{len} bytes, not {SLAB_SIZE}"));
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => Ok(()),
            Ok(_) => Err("replaced by another file".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `key`'s record, taking the lowest free one for a new key (its counters zero, its
    /// open-connections gauge as it is for a key that has one).
    pub fn allocate(&mut self, key: &str) -> std::result::Result<u32, NoRecord> {
        if let Some(r) = self.record_of(key) {
            return Ok(r);
        }
        let tail = key_slots(key).ok_or(NoRecord::LongKey)?;
        self.check().map_err(NoRecord::Changed)?;
        let r = self
            .used
            .iter()
            .enumerate()
            .find(|(_, w)| **w != u64::MAX)
            .map(|(i, w)| i * 64 + w.trailing_ones() as usize)
            .filter(|&r| r < self.capacity())
            .ok_or(NoRecord::Full)?;
        // The record's bytes backed in the file first, through the descriptor: on a full
        // filesystem a page the sparse slab never had cannot be allocated, and a store through
        // the mapping would fault (the SIGBUS handler swaps anonymous memory in, so the
        // record would count for no one, silently); a write says ENOSPC instead.
        let at = (r * RECORD_SIZE) as u64;
        match rustix::io::pwrite(&self.file, &[0u8; RECORD_SIZE], at) {
            Ok(n) if n == RECORD_SIZE => {}
            Ok(n) => {
                return Err(NoRecord::NoRoom(format!(
                    "{n} of {RECORD_SIZE} bytes written"
                )))
            }
            Err(e) => return Err(NoRecord::NoRoom(std::io::Error::from(e).to_string())),
        }
        let base = r * RECORD_SLOTS;
        // A free record is zero; one freed by a crash half-way is made so.
        self.zero(r);
        self.map.store(base + SLOT_KEY_LEN, key.len() as u64);
        for (i, w) in tail.into_iter().enumerate() {
            self.map.store(base + SLOT_KEY_LEN + 1 + i, w);
        }
        // The magic last: a record is in use once its key is there.
        self.map.store(base, MAGIC);
        if self.map.load(SLOT_HIGH) <= r as u64 {
            self.map.store(SLOT_HIGH, r as u64 + 1);
        }
        self.mark(r, true);
        self.keys.insert(key.to_owned(), r as u32);
        Ok(r as u32)
    }

    /// Free `key`'s record: its counters as they were (for the retired totals), then zeroed.
    /// `None` if it has none or the slab may not be touched.
    pub fn free(&mut self, key: &str) -> Option<[u64; SLOTS]> {
        let r = self.record_of(key)?;
        self.check().ok()?;
        let last = self.slots(r);
        self.zero(r as usize);
        self.mark(r as usize, false);
        self.keys.remove(key);
        Some(last)
    }

    /// Record `r`'s counter slots as they are now (call [`Slab::check`] first).
    pub fn slots(&self, r: u32) -> [u64; SLOTS] {
        let base = r as usize * RECORD_SLOTS;
        let mut out = [0u64; SLOTS];
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.map.load(base + i);
        }
        out
    }

    /// Slot `slot` of record `r` (call [`Slab::check`] first).
    pub fn load(&self, r: u32, slot: usize) -> u64 {
        self.map.load(r as usize * RECORD_SLOTS + slot)
    }

    /// Set slot `slot` of record `r` (call [`Slab::check`] first).
    pub fn store(&self, r: u32, slot: usize, v: u64) {
        self.map.store(r as usize * RECORD_SLOTS + slot, v);
    }
}

/// Open an existing good slab (read-write, no link followed, ours, one link, the right size,
/// magic and capacity); replace a bad one and create a missing one, sparse.
fn open_file(p: &Path) -> std::io::Result<File> {
    crate::proxy_stats::open_file(p, true, check_file, |f| {
        f.set_len(SLAB_SIZE as u64)?;
        rustix::io::pwrite(&*f, &header(), 0)?;
        Ok(())
    })
}

/// Record 0's first slots: the magic and the capacity.
fn header() -> [u8; 16] {
    let mut head = [0u8; 16];
    head[..8].copy_from_slice(&SLAB_MAGIC.to_le_bytes());
    head[8 * SLAB_SLOT_CAPACITY..8 * SLAB_SLOT_CAPACITY + 8]
        .copy_from_slice(&(SLAB_RECORDS as u64).to_le_bytes());
    head
}

fn check_file(f: &File) -> std::result::Result<(), String> {
    crate::proxy_stats::check_file(f, SLAB_SIZE, &header())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_contract::proxy_stats::{class_slot, SLOT_CONN_OPEN};

    /// A fresh statistics directory (mode 0700, as the spawner makes it), removed with the
    /// guard, also when the test fails.
    fn dir(name: &str) -> (ns_testkit::TempDir, PathBuf) {
        let t = ns_testkit::TempDir::new(&format!("slab-{name}"));
        let d = t.path().join("stats");
        crate::statedir::prepare(&d).expect("dir");
        (t, d)
    }

    /// A state dir on a full tmpfs: a record on a page the sparse slab never had is refused
    /// with the filesystem's reason (the namespace is served uncounted,
    /// and the log says why), where it was taken through the mapping, whose fault the SIGBUS
    /// handler answered with anonymous memory: the namespace counted for no one, silently.
    /// Once there is room it is taken.
    #[test]
    fn a_record_on_a_full_filesystem_is_refused_not_taken_for_no_one() {
        let name = "a_record_on_a_full_filesystem_is_refused_not_taken_for_no_one";
        if !ns_testkit::require_root(name) {
            return;
        }
        let fs = match ns_testkit::tmpfs::Tmpfs::mount("slab-full", 64) {
            Ok(fs) => fs,
            Err(e) => return ns_testkit::skip(name, &e),
        };
        let d = fs.path().join("stats");
        crate::statedir::prepare(&d).expect("dir");
        let mut s = Slab::open(&path(&d, 0)).expect("create");
        fs.fill("filler");
        // Records 1-7 share the header's page, which is there.
        for i in 1..8 {
            assert_eq!(s.allocate(&format!("k{i}")), Ok(i));
        }
        match s.allocate("k8") {
            Err(NoRecord::NoRoom(why)) => assert!(why.contains("No space left"), "{why}"),
            other => panic!("record 8 needs a page of its own: {other:?}"),
        }
        assert_eq!(s.record_of("k8"), None, "nothing half taken");
        std::fs::remove_file(fs.path().join("filler")).expect("room again");
        assert_eq!(s.allocate("k8"), Ok(8));
        assert_eq!(s.allocate("k1"), Ok(1), "the earlier ones kept");
    }

    #[test]
    fn records_are_taken_lowest_first_freed_and_reused() {
        let (_t, d) = dir("alloc");
        let p = path(&d, 0);
        let mut s = Slab::open(&p).expect("create");
        let m = std::fs::symlink_metadata(&p).expect("stat");
        assert_eq!(m.len(), SLAB_SIZE as u64);
        assert_eq!(m.mode() & 0o777, 0o600);
        // Sparse: only the pages written hold blocks.
        assert!(m.blocks() * 512 < 64 * 1024, "{} blocks", m.blocks());
        assert_eq!(s.allocate("r1"), Ok(1));
        assert_eq!(s.allocate("r2"), Ok(2));
        assert_eq!(s.allocate("r3"), Ok(3));
        assert_eq!(s.allocate("r2"), Ok(2), "a key keeps its record");
        s.store(2, class_slot(200), 7);
        s.store(2, SLOT_CONN_OPEN, 1);
        let last = s.free("r2").expect("freed");
        assert_eq!(last[class_slot(200)], 7);
        assert_eq!(s.load(2, 0), 0, "zeroed");
        assert_eq!(s.free("r2"), None);
        // The lowest free record again, its counters zero.
        assert_eq!(s.allocate("r4"), Ok(2));
        assert_eq!(s.load(2, class_slot(200)), 0);
        assert_eq!(s.load(2, SLOT_CONN_OPEN), 0);
        assert_eq!(s.load(2, 0), MAGIC);
        assert_eq!(
            s.allocate(&"k".repeat(ns_contract::proxy_stats::MAX_RECORD_KEY + 1)),
            Err(NoRecord::LongKey)
        );
    }

    #[test]
    fn a_reopened_slab_gives_each_key_its_record_back() {
        let (_t, d) = dir("reopen");
        let p = path(&d, 3);
        assert!(p.ends_with("shared-3.slab"));
        let key = "4f3c2a1e-8b7d-4c6e-9f1a-2b3c4d5e6f70";
        {
            let mut s = Slab::open(&p).expect("create");
            for k in ["a", key, "c"] {
                s.allocate(k).expect("record");
            }
            s.free("a");
            s.store(2, class_slot(200), 9);
            // A record in use with garbage for a key (not written by us): freed on reopen.
            s.store(5, 0, MAGIC);
            s.store(5, SLOT_KEY_LEN, 3);
            s.store(5, SLOT_KEY_LEN + 1, 0x00ff_ffff);
            s.store(0, SLOT_HIGH, 6);
        }
        let mut s = Slab::open(&p).expect("reopen");
        assert_eq!(s.record_of(key), Some(2));
        assert_eq!(s.record_of("c"), Some(3));
        assert_eq!(s.record_of("a"), None);
        assert_eq!(s.keys().count(), 2);
        assert_eq!(s.load(2, class_slot(200)), 9, "counts kept");
        assert_eq!(s.load(5, 0), 0, "garbage freed");
        assert_eq!(s.allocate("d"), Ok(1));
        assert_eq!(s.allocate("e"), Ok(4));
        assert_eq!(s.allocate("f"), Ok(5));
    }

    /// A server writes its slab's header (it holds the file read-write): a high-water mark
    /// past the records mapped, garbage in every record below it. A restarted spawner reads
    /// only what it mapped, keeps the good record, frees the rest; a header changed under a
    /// running spawner makes the slab a broken server's, never used again.
    #[test]
    fn a_hostile_header_is_bounded_by_what_the_spawner_mapped() {
        let (_t, d) = dir("hostile");
        let p = path(&d, 0);
        let key = "4f3c2a1e-8b7d-4c6e-9f1a-2b3c4d5e6f70";
        {
            let mut s = Slab::open(&p).expect("create");
            assert_eq!(s.allocate(key), Ok(1));
            s.store(1, class_slot(200), 3);
            for r in 2..40u32 {
                s.store(r, 0, MAGIC);
                s.store(r, SLOT_KEY_LEN, u64::MAX);
            }
            // The last record mapped, in use with a good key: only a full scan finds it.
            let last = SLAB_RECORDS as u32 - 1;
            s.store(last, 0, MAGIC);
            s.store(last, SLOT_KEY_LEN, 2);
            s.store(
                last,
                SLOT_KEY_LEN + 1,
                u64::from(u16::from_le_bytes(*b"zz")),
            );
            for high in [u64::MAX, SLAB_RECORDS as u64 + 1] {
                s.store(0, SLOT_HIGH, high);
                let e = s.check().expect_err("a broken server's header");
                assert!(e.contains("high-water mark"), "{e}");
            }
        }
        let mut s = Slab::open(&p).expect("reopen");
        assert_eq!(
            s.load(0, SLOT_HIGH),
            SLAB_RECORDS as u64,
            "clamped to what is mapped"
        );
        assert_eq!(s.record_of(key), Some(1));
        assert_eq!(s.load(1, class_slot(200)), 3);
        assert_eq!(s.record_of("zz"), Some(SLAB_RECORDS as u32 - 1));
        assert_eq!(s.keys().count(), 2);
        assert_eq!(s.load(2, 0), 0, "garbage freed");
        s.check().expect("a good header again");
        assert_eq!(s.allocate("n"), Ok(2));
        // The server overwrites the header under a running spawner: magic, then capacity.
        for (slot, v, why) in [
            (0, MAGIC, "magic"),
            (SLAB_SLOT_CAPACITY, u64::MAX, "records"),
        ] {
            let mut s = Slab::open(&p).expect("reopen");
            s.check().expect("good");
            let was = s.load(0, slot);
            s.store(0, slot, v);
            let e = s.check().expect_err("changed header");
            assert!(e.contains(why), "{e}");
            assert!(matches!(s.allocate("m"), Err(NoRecord::Changed(_))));
            assert_eq!(s.free("n"), None, "not touched");
            s.store(0, slot, was);
        }
    }

    #[test]
    fn a_full_slab_says_so() {
        let (_t, d) = dir("full");
        let mut s = Slab::open(&path(&d, 0)).expect("create");
        s.used.iter_mut().for_each(|w| *w = u64::MAX);
        assert_eq!(s.allocate("x"), Err(NoRecord::Full));
        s.mark(SLAB_RECORDS - 1, false);
        assert_eq!(s.allocate("x"), Ok(SLAB_RECORDS as u32 - 1));
        assert_eq!(s.allocate("y"), Err(NoRecord::Full));
    }

    #[test]
    fn bad_slab_files_are_replaced_never_followed() {
        let (_t, d) = dir("bad");
        let p = path(&d, 0);
        let good = |p: &Path| {
            let m = std::fs::symlink_metadata(p).expect("stat");
            assert!(m.file_type().is_file());
            assert_eq!(m.len(), SLAB_SIZE as u64);
            assert_eq!(m.nlink(), 1);
        };
        // Wrong size.
        std::fs::write(&p, b"short").expect("write");
        assert!(check_file(&File::open(&p).expect("open")).is_err());
        let mut s = Slab::open(&p).expect("replaced");
        good(&p);
        s.allocate("r1").expect("record");
        drop(s);
        // Bad magic: replaced, its records gone.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open");
        rustix::io::pwrite(&f, b"NSMSTAT1", 0).expect("write");
        drop(f);
        let s = Slab::open(&p).expect("replaced");
        assert_eq!(s.record_of("r1"), None);
        drop(s);
        // A hard link.
        let link = d.join("elsewhere");
        std::fs::hard_link(&p, &link).expect("link");
        let s = Slab::open(&p).expect("replaced");
        good(&p);
        assert_ne!(
            std::fs::metadata(&link).expect("stat").ino(),
            s.id().1,
            "the linked file is left alone"
        );
        drop(s);
        // A symlink to a file of the right size: never followed, replaced.
        std::fs::remove_file(&p).expect("rm");
        let victim = d.join("victim");
        let v = File::create(&victim).expect("victim");
        v.set_len(SLAB_SIZE as u64).expect("size");
        std::os::unix::fs::symlink(&victim, &p).expect("symlink");
        let mut s = Slab::open(&p).expect("replaced");
        good(&p);
        s.allocate("r1").expect("record");
        assert!(std::fs::read(&victim)
            .expect("victim")
            .iter()
            .all(|&b| b == 0));
        drop(s);
        // Cut short by its server (which holds it read-write) between a check and a read:
        // the spawner reads zeros instead of dying of SIGBUS, and never uses it again.
        let mut s = Slab::open(&p).expect("open");
        let r = s.allocate("r9").expect("record");
        s.store(r, class_slot(200), 4);
        s.check().expect("good");
        s.file.set_len(0).expect("cut");
        assert_eq!(s.slots(r)[class_slot(200)], 0);
        let e = s.check().expect_err("cut");
        assert!(e.contains("cut short"), "{e}");
        assert!(matches!(s.allocate("r10"), Err(NoRecord::Changed(_))));
        drop(s);
        let mut s = Slab::open(&p).expect("replaced");
        s.allocate("r1").expect("record");
        // Replaced under us: not touched again.
        std::fs::remove_file(&p).expect("rm");
        assert!(s.check().is_err());
        assert!(matches!(s.allocate("r2"), Err(NoRecord::Changed(_))));
        assert_eq!(s.free("r1"), None);
    }
}
