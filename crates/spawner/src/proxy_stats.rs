//! The proxies' statistics blocks (issue #17): one file per namespace,
//! `<state_dir>/stats/<key>.stats`, a page of counters ([`ns_contract::proxy_stats`]) that
//! the proxy maps through an inherited fd (`--stats-fd 5`) and bumps with relaxed atomic adds,
//! and that the spawner maps to read at each scrape.
//!
//! - **Created** by the spawner before each start: `O_CREAT|O_EXCL|O_NOFOLLOW`, 0600, in the
//!   0700 stats dir; an existing file is reused only if it is a regular file, ours, not
//!   hard-linked, of [`BLOCK_SIZE`] bytes with the magic, else it is replaced. Nothing is
//!   followed through a link. The proxy gets an fd, not a path: it can write only its block.
//! - **Cumulative**: the same file serves every proxy of that key, so counters go on across
//!   a proxy's kill -9 and restart; it survives a spawner restart, so adopted proxies keep
//!   their counts. The open-connections gauge is zeroed before each start.
//! - **Untrusted**: a proxy can only lie about itself. Every slot read goes through a
//!   monotonic fold (a value lower than the last one read is a reset: the last value is kept
//!   as a base), so exported counters never go down and nothing read can panic. A proxy
//!   can also cut its block short (`ftruncate` on its read-write fd, whatever its uid): the
//!   mapping then reads zeros instead of killing the spawner with `SIGBUS`
//!   ([`SharedCounters::is_cut`]) and is replaced at the next scrape.
//! - **Removed** with the key: after each reconcile pass, files of keys no longer wanted go.
//!   Their last values stay in the per-kind latency histogram (kept by this process).
//! - **In the shared model** a namespace's block is a record of its server's slab
//!   ([`crate::stats_slab`]) instead: taken by [`record_for`] (a key with a block file moves
//!   its counts into the record and the file goes), read here with the same fold, freed by
//!   [`retain`] (after the reconcile pass, so after the server's answer to `remove`) with its
//!   last values kept in the per-kind totals. A key too long for a record, a full or
//!   changed slab, or a server not given the slab at its start: that namespace is served
//!   uncounted, with a sealed [`anonymous`] block (logged), never a file a server could grow.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ns_contract::proxy_stats::{
    BLOCK_MAPPED_SLOTS, BLOCK_SIZE, MAGIC, SLAB_SLOT_HEARTBEAT, SLAB_SLOT_HEARTBEAT_MS, SLOTS,
    SLOT_CONN_OPEN, SLOT_HEARTBEAT, SLOT_HEARTBEAT_MS, SLOT_MAGIC,
};

use crate::stats_slab::{NoRecord, Slab};
use ns_contract::Kind;
use ns_netns::SharedCounters;

/// `O_NOFOLLOW` (std adds `O_CLOEXEC` itself).
const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;

/// The fd number the proxy finds its block on (after the readiness pipe on 3 and the
/// namespace on 4).
pub const STATS_FD: i32 = 5;

/// The block file of `key` in `dir`.
pub fn path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.stats"))
}

/// What a start does with the open-connections gauge of a block it reuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// A fresh proxy: zeroed (a proxy killed with connections open never decremented it).
    Zero,
    /// A proxy taking over from a running one (`restart`), or the shared server (`add …
    /// stats=1`): kept, since the predecessor's connections, or the ones the server already
    /// serves, still count down into it (the server zeroes it itself when it first serves the
    /// namespace).
    Keep,
}

/// Open `key`'s block for a proxy start, creating it if needed, with the open-connections
/// gauge zeroed.
pub fn for_start(dir: &Path, key: &str) -> std::io::Result<OwnedFd> {
    let f = File::from(for_handover(dir, key)?);
    let map = SharedCounters::map(&f, SLOTS)?;
    map.store(SLOT_CONN_OPEN, 0);
    Ok(f.into())
}

/// Open `key`'s block, creating it if needed, with its gauge as it is ([`Gauge::Keep`]).
pub fn for_handover(dir: &Path, key: &str) -> std::io::Result<OwnedFd> {
    crate::statedir::prepare(dir).map_err(std::io::Error::other)?;
    Ok(open_block(&path(dir, key), true)?.into())
}

/// `key`'s block for a start; if its file cannot be made (full or read-only state dir), an
/// anonymous one, so the proxy (or the shared server's namespace) still serves, uncounted.
pub fn block_or_anonymous(dir: &Path, key: &str, gauge: Gauge) -> std::io::Result<OwnedFd> {
    let block = match gauge {
        Gauge::Zero => for_start(dir, key),
        Gauge::Keep => for_handover(dir, key),
    };
    block.or_else(|e| {
        tracing::warn!(%key, err = %e, "cannot open the statistics block; the requests served for it are not counted");
        anonymous()
    })
}

/// Set the heartbeat period (`crate::hang`) in the block open as `fd`, and zero its beat
/// when `zero` (a start: the new process must beat before READY to be watched).
pub fn arm_heartbeat(fd: &OwnedFd, period_ms: u64, zero: bool) -> std::io::Result<()> {
    let f = File::from(fd.try_clone()?);
    let map = SharedCounters::map(&f, BLOCK_MAPPED_SLOTS)?;
    if zero {
        map.store(SLOT_HEARTBEAT, 0);
    }
    map.store(SLOT_HEARTBEAT_MS, period_ms);
    Ok(())
}

/// A per-namespace proxy's heartbeat as its watchdog reads it: `key`'s block file, mapped
/// (`None` without one: not watched).
pub struct Beat(SharedCounters);

impl Beat {
    /// Map `key`'s block in `dir` (never through a link, only a good block); with
    /// `period_ms`, set the period (an adopted proxy beats at this spawner's pace).
    pub fn open(dir: &Path, key: &str, period_ms: Option<u64>) -> Option<Beat> {
        let f = open_block(&path(dir, key), false).ok()?;
        let map = SharedCounters::map(&f, BLOCK_MAPPED_SLOTS).ok()?;
        if let Some(ms) = period_ms {
            map.store(SLOT_HEARTBEAT_MS, ms);
        }
        Some(Beat(map))
    }

    /// The beat now; `None` once the file was cut short under the mapping.
    pub fn read(&self) -> Option<u64> {
        (!self.0.is_cut()).then(|| self.0.load(SLOT_HEARTBEAT))
    }
}

/// Set the shared server `shard`'s heartbeat period in its slab's header (`crate::hang`),
/// and zero its beat when `zero` (before the slab goes to a new server).
pub fn arm_server_heartbeat(dir: &Path, shard: usize, period_ms: u64, zero: bool) {
    let mut guard = registry();
    let reg = guard.get_or_insert_with(Registry::default);
    if let Ok(s) = reg.slab(&crate::stats_slab::path(dir, shard)) {
        if zero {
            s.store(0, SLAB_SLOT_HEARTBEAT, 0);
        }
        s.store(0, SLAB_SLOT_HEARTBEAT_MS, period_ms);
    }
}

/// The shared server `shard`'s beat now (`None`: no slab this process can read).
pub fn server_beat(dir: &Path, shard: usize) -> Option<u64> {
    let mut guard = registry();
    let reg = guard.get_or_insert_with(Registry::default);
    let s = reg.slab(&crate::stats_slab::path(dir, shard)).ok()?;
    Some(s.load(0, SLAB_SLOT_HEARTBEAT))
}

/// A block in memory only (`memfd`), for a proxy whose file could not be made, or a shared
/// server's namespace without a slab record: counted for no one. Sealed at its one page
/// (`F_SEAL_GROW | F_SEAL_SHRINK`, then `F_SEAL_SEAL`), so the process it goes to can
/// neither grow it (`write`, `ftruncate`, `fallocate`: memory charged to whoever holds it)
/// nor cut it short under a mapping.
pub fn anonymous() -> std::io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "ns-metadata-stats",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut f = File::from(fd);
    let mut page = vec![0u8; BLOCK_SIZE];
    page[..8].copy_from_slice(&MAGIC.to_le_bytes());
    f.write_all(&page)?;
    rustix::fs::fcntl_add_seals(&f, SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)?;
    Ok(f.into())
}

/// Open an existing good block (read-write, no link followed, ours, one link, the right size
/// and magic); with `create`, replace a bad one and create a missing one.
fn open_block(p: &Path, create: bool) -> std::io::Result<File> {
    let check = |f: &File| check_file(f, BLOCK_SIZE, &MAGIC.to_le_bytes());
    open_file(p, create, check, |f| {
        let mut page = vec![0u8; BLOCK_SIZE];
        page[..8].copy_from_slice(&MAGIC.to_le_bytes());
        f.write_all(&page)
    })
}

/// Open the statistics file (a block or a slab) at `p` read-write, never through a link, if
/// `check` accepts it; with `create`, replace a bad one (logged) and create a missing one
/// (`O_EXCL`, 0600) laid out by `init`.
pub(crate) fn open_file(
    p: &Path,
    create: bool,
    check: impl Fn(&File) -> std::result::Result<(), String>,
    init: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<File> {
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(NOFOLLOW)
            .open(p)
    };
    match open() {
        Ok(f) => match check(&f) {
            Ok(()) => return Ok(f),
            Err(why) if create => {
                tracing::warn!(file = %p.display(), %why, "statistics file replaced");
                std::fs::remove_file(p)?;
            }
            Err(why) => return Err(std::io::Error::other(why)),
        },
        Err(e) if create && e.kind() == std::io::ErrorKind::NotFound => {}
        // ELOOP: a symlink planted there. Replaced when creating, never followed.
        Err(e) if create && e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            tracing::warn!(file = %p.display(), "statistics file was a symlink; replaced");
            std::fs::remove_file(p)?;
        }
        Err(e) => return Err(e),
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(NOFOLLOW)
        .open(p)?;
    init(&mut f)?;
    Ok(f)
}

/// What every statistics file passes before it is used: a regular file of ours, one link,
/// `size` bytes, starting with `head`.
pub(crate) fn check_file(f: &File, size: usize, head: &[u8]) -> std::result::Result<(), String> {
    let m = f.metadata().map_err(|e| e.to_string())?;
    if !m.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if m.uid() != rustix::process::geteuid().as_raw() {
        return Err(format!("owned by uid {}", m.uid()));
    }
    if m.nlink() != 1 {
        return Err(format!("{} hard links", m.nlink()));
    }
    if m.len() != size as u64 {
        return Err(format!("{} bytes, not {size}", m.len()));
    }
    let mut got = vec![0u8; head.len()];
    let n = rustix::io::pread(f, &mut got, 0).map_err(|e| e.to_string())?;
    if n != head.len() || got != head {
        return Err("bad magic".into());
    }
    Ok(())
}

/// After a reconcile pass: remove the blocks of keys not in `keep`, and free their slab
/// records (their last values kept in the per-kind totals).
pub fn retain(dir: &Path, keep: &std::collections::BTreeSet<String>) {
    {
        let mut guard = registry();
        let reg = guard.get_or_insert_with(Registry::default);
        let gone: Vec<(PathBuf, String)> = reg
            .slabs
            .iter()
            .filter(|(p, _)| p.parent() == Some(dir))
            .filter_map(|(p, s)| s.as_ref().map(|s| (p, s)))
            .flat_map(|(p, s)| {
                s.keys()
                    .filter(|k| !keep.contains(*k))
                    .map(|k| (p.clone(), k.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (slab, key) in gone {
            reg.free(&slab, dir, &key);
        }
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".stats")) else {
            continue;
        };
        if !keep.contains(key) {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(file = %e.path().display(), %err, "cannot remove statistics block");
            }
        }
    }
}

/// Where a block the spawner reads is.
enum Origin {
    /// A block file, mapped, and its (device, inode): a file replaced under the same name is
    /// a new block.
    File { map: SharedCounters, id: (u64, u64) },
    /// A record of the slab at this path.
    Record { slab: PathBuf, record: u32 },
}

/// One block as the spawner reads it: where, and per slot the last value seen and the base
/// folded in from resets.
struct Reading {
    origin: Origin,
    kind: Kind,
    last: [u64; SLOTS],
    base: [u64; SLOTS],
}

impl Reading {
    fn new(origin: Origin, kind: Kind) -> Reading {
        Reading {
            origin,
            kind,
            last: [0; SLOTS],
            base: [0; SLOTS],
        }
    }

    /// The values as last read, without touching the mapping (the file may be gone or cut).
    fn settled(&self) -> [u64; SLOTS] {
        let mut out = [0u64; SLOTS];
        for (i, o) in out.iter_mut().enumerate().skip(SLOT_MAGIC + 1) {
            if i != SLOT_CONN_OPEN {
                *o = self.base[i].saturating_add(self.last[i]);
            }
        }
        out
    }

    /// The monotonic values now (the magic slot reads 0), from `now` (the block's slots).
    fn fold(&mut self, now: &[u64; SLOTS]) -> [u64; SLOTS] {
        let mut out = [0u64; SLOTS];
        for (i, o) in out.iter_mut().enumerate().skip(SLOT_MAGIC + 1) {
            let v = now[i];
            if i == SLOT_CONN_OPEN {
                // A gauge: as it is (a proxy can only lie about itself), but never "negative":
                // a removed namespace's last connections closing after its record was freed
                // and taken again count below zero.
                *o = if v > i64::MAX as u64 { 0 } else { v };
                continue;
            }
            if v < self.last[i] {
                self.base[i] = self.base[i].saturating_add(self.last[i]);
            }
            self.last[i] = v;
            *o = self.base[i].saturating_add(v);
        }
        out
    }
}

/// The blocks this spawner reads, by file path, and the counts of blocks gone (per kind),
/// so per-kind totals never go down when a namespace is removed.
#[derive(Default)]
struct Registry {
    /// By the key's block file path (also for a key whose block is a slab record).
    open: BTreeMap<PathBuf, Reading>,
    retired: BTreeMap<&'static str, [u64; SLOTS]>,
    /// The shared servers' slabs by path; `None` for one that changed under us (not touched
    /// again by this process).
    slabs: BTreeMap<PathBuf, Option<Slab>>,
}

impl Registry {
    /// Move a reading's last values into its kind's retired totals.
    fn retire(&mut self, r: &Reading) {
        let last = r.settled();
        add_into(
            self.retired.entry(r.kind.as_str()).or_insert([0; SLOTS]),
            &last,
        );
    }

    /// The slab at `p`, opened (or created) once; `None` once it changed under us.
    fn slab(&mut self, p: &Path) -> std::io::Result<&mut Slab> {
        if !self.slabs.contains_key(p) {
            let slab = Slab::open(p)?;
            self.slabs.insert(p.to_owned(), Some(slab));
        }
        match self.slabs.get_mut(p) {
            Some(Some(s)) => match s.check() {
                Ok(()) => self.slab_checked(p),
                Err(why) => {
                    tracing::warn!(file = %p.display(), %why, "statistics slab changed under the spawner: not used again by this process");
                    self.slabs.insert(p.to_owned(), None);
                    Err(std::io::Error::other(why))
                }
            },
            _ => Err(gone()),
        }
    }

    /// The slab at `p` as [`Registry::slab`] last checked it, without checking it again:
    /// for a second borrow under the same lock.
    fn slab_checked(&mut self, p: &Path) -> std::io::Result<&mut Slab> {
        self.slabs
            .get_mut(p)
            .and_then(Option::as_mut)
            .ok_or_else(gone)
    }

    /// Free `key`'s record in the slab at `slab`: its last counts go to the retired totals
    /// (through its reading's fold when there is one: only a scrape knows its kind).
    fn free(&mut self, slab: &Path, dir: &Path, key: &str) {
        let Some(Some(s)) = self.slabs.get_mut(slab) else {
            return;
        };
        let Some(last) = s.free(key) else {
            return;
        };
        if let Some(mut r) = self.open.remove(&path(dir, key)) {
            if matches!(&r.origin, Origin::Record { slab: p, .. } if p == slab) {
                r.fold(&last);
                self.retire(&r);
            }
        }
    }
}

fn gone() -> std::io::Error {
    std::io::Error::other("the statistics slab changed under the spawner")
}

/// A key's record in its shard's slab: the slab's file (to hand to the server) and identity,
/// and the record.
pub struct SlabRecord {
    pub slab: OwnedFd,
    pub slab_id: (u64, u64),
    pub record: u32,
}

/// The slab of shard `shard` in `dir`: a duplicate of its descriptor (for `stats-slab`) and
/// its identity. Created if missing.
pub fn slab_fd(dir: &Path, shard: usize) -> std::io::Result<(OwnedFd, (u64, u64))> {
    crate::statedir::prepare(dir).map_err(std::io::Error::other)?;
    let mut guard = registry();
    let reg = guard.get_or_insert_with(Registry::default);
    let s = reg.slab(&crate::stats_slab::path(dir, shard))?;
    Ok((s.fd().try_clone_to_owned()?, s.id()))
}

/// `key`'s record in the slab of shard `shard` in `dir`, taken if it has none (its gauge as
/// it is: [`Gauge::Keep`]). A key that had a block file moves its counts into the record and
/// the file is removed. `None` (logged) when it cannot have one: it keeps a block file.
pub fn record_for(dir: &Path, shard: usize, key: &str) -> Option<SlabRecord> {
    let got = (|| {
        crate::statedir::prepare(dir).map_err(|e| e.to_string())?;
        let mut guard = registry();
        let reg = guard.get_or_insert_with(Registry::default);
        let sp = crate::stats_slab::path(dir, shard);
        let s = reg.slab(&sp).map_err(|e| e.to_string())?;
        let fresh = s.record_of(key).is_none();
        let record = s.allocate(key).map_err(|e: NoRecord| e.to_string())?;
        if fresh {
            // A namespace moving from another shard's server (`shared_servers` changed)
            // brings its counts along and frees its record there.
            let moved: Vec<[u64; SLOTS]> = reg
                .slabs
                .iter_mut()
                .filter(|(p, _)| p.parent() == Some(dir) && **p != sp)
                .filter_map(|(_, other)| other.as_mut()?.free(key))
                .collect();
            // Checked once above (a stat and an lstat: once per namespace, not three times).
            let s = reg.slab_checked(&sp).map_err(|e| e.to_string())?;
            for last in moved {
                copy_counts(s, record, |i| last[i]);
            }
            adopt_block_file(s, record, &path(dir, key));
        }
        let s = reg.slab_checked(&sp).map_err(|e| e.to_string())?;
        let rec = SlabRecord {
            slab: s.fd().try_clone_to_owned().map_err(|e| e.to_string())?,
            slab_id: s.id(),
            record,
        };
        if fresh {
            // Its counts are in the record now: the file's reading goes without being retired.
            reg.open.remove(&path(dir, key));
        }
        Ok::<_, String>(rec)
    })();
    got.map_err(|why| {
        tracing::warn!(%key, %why, "no statistics slab record: the namespace is served uncounted");
    })
    .ok()
}

/// Free `key`'s record in the slab of shard `shard` in `dir`, if it has one (its counts go to
/// the retired totals): for a namespace that got a record but then a block file after all.
pub fn release(dir: &Path, shard: usize, key: &str) {
    let mut guard = registry();
    let reg = guard.get_or_insert_with(Registry::default);
    reg.free(&crate::stats_slab::path(dir, shard), dir, key);
}

/// Add the counters of a block the key had before (`from`, by slot) into its record: not the
/// magic, not the open-connections gauge (the connections counted there count down there).
fn copy_counts(s: &Slab, record: u32, from: impl Fn(usize) -> u64) {
    for i in SLOT_MAGIC + 1..SLOTS {
        if i != SLOT_CONN_OPEN {
            s.store(record, i, s.load(record, i).saturating_add(from(i)));
        }
    }
}

/// A key's block file from before it had a record (the per-namespace model, or a shared
/// server of an older spawner): its counts added into `record`, then the file removed.
fn adopt_block_file(s: &Slab, record: u32, p: &Path) {
    let Ok(f) = open_block(p, false) else {
        return;
    };
    if let Ok(map) = SharedCounters::map(&f, SLOTS) {
        copy_counts(s, record, |i| map.load(i));
    }
    if let Err(err) = std::fs::remove_file(p) {
        tracing::warn!(file = %p.display(), %err, "cannot remove a statistics block moved into the slab");
    }
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn registry() -> MutexGuard<'static, Option<Registry>> {
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a scrape reads: per proxy (by key) its folded slots, and per kind the sum of every
/// block of that kind (live and retired) for the histograms.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub per_key: BTreeMap<String, [u64; SLOTS]>,
    pub per_kind: BTreeMap<&'static str, [u64; SLOTS]>,
}

fn add_into(acc: &mut [u64; SLOTS], v: &[u64; SLOTS]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a = a.saturating_add(*b);
    }
}

/// Read the blocks of `proxies` (key, kind) in `dir`. A block that cannot be read (missing:
/// the proxy has not started yet; bad: refused) is left out, never an error.
pub fn read(dir: &Path, proxies: &[(String, Kind)]) -> Snapshot {
    let mut guard = registry();
    let reg = guard.get_or_insert_with(Registry::default);
    let mut snap = Snapshot::default();
    let mut seen = std::collections::BTreeSet::new();
    // Each slab of this dir checked once per scrape before its mapping is read (as a block
    // file is below); one that changed is not read again.
    let slabs: Vec<PathBuf> = reg
        .slabs
        .keys()
        .filter(|p| p.parent() == Some(dir))
        .cloned()
        .collect();
    for p in &slabs {
        let _ = reg.slab(p);
    }
    for (key, kind) in proxies {
        let p = path(dir, key);
        let record = reg.slabs.iter().find_map(|(sp, s)| {
            let r = s.as_ref()?.record_of(key)?;
            (sp.parent() == Some(dir)).then(|| (sp.clone(), r))
        });
        let now = match record {
            Some((slab, record)) => {
                let same = matches!(reg.open.get(&p), Some(Reading { origin: Origin::Record { slab: s, record: r }, .. }) if *s == slab && *r == record);
                if !same {
                    if let Some(r) = reg.open.remove(&p) {
                        reg.retire(&r);
                    }
                    reg.open.insert(
                        p.clone(),
                        Reading::new(
                            Origin::Record {
                                slab: slab.clone(),
                                record,
                            },
                            *kind,
                        ),
                    );
                }
                match reg.slabs.get(&slab) {
                    Some(Some(s)) => s.slots(record),
                    _ => continue,
                }
            }
            None => {
                // Checked at every scrape, before the mapping is read. The proxy holds its
                // block read-write, so it can cut it short whatever its uid (ftruncate checks
                // only the descriptor): a page past the end would fault on access, and a
                // check before the access cannot close that race. The mapping then reads
                // zeros instead (`SharedCounters::is_cut`) and is replaced here.
                let id = std::fs::symlink_metadata(&p)
                    .ok()
                    .filter(|m| m.file_type().is_file() && m.len() == BLOCK_SIZE as u64)
                    .map(|m| (m.dev(), m.ino()));
                let stale = reg.open.get(&p).is_some_and(|r| match &r.origin {
                    Origin::File { id: was, map } => Some(*was) != id || map.is_cut(),
                    Origin::Record { .. } => true,
                });
                if stale {
                    if let Some(r) = reg.open.remove(&p) {
                        reg.retire(&r);
                    }
                }
                if !reg.open.contains_key(&p) {
                    let Some(id) = id else { continue };
                    let Ok(f) = open_block(&p, false) else {
                        continue;
                    };
                    let Ok(map) = SharedCounters::map(&f, SLOTS) else {
                        continue;
                    };
                    reg.open
                        .insert(p.clone(), Reading::new(Origin::File { map, id }, *kind));
                }
                match reg.open.get(&p).map(|r| &r.origin) {
                    Some(Origin::File { map, .. }) => std::array::from_fn(|i| map.load(i)),
                    _ => continue,
                }
            }
        };
        if let Some(r) = reg.open.get_mut(&p) {
            let v = r.fold(&now);
            add_into(snap.per_kind.entry(kind.as_str()).or_insert([0; SLOTS]), &v);
            snap.per_key.insert(key.clone(), v);
            seen.insert(p);
        }
    }
    // Blocks of this dir no longer listed: their last counts stay in their kind's totals.
    let gone: Vec<PathBuf> = reg
        .open
        .keys()
        .filter(|p| p.parent() == Some(dir) && !seen.contains(*p))
        .cloned()
        .collect();
    for p in gone {
        if let Some(r) = reg.open.remove(&p) {
            reg.retire(&r);
        }
    }
    for (kind, v) in &reg.retired {
        add_into(snap.per_kind.entry(kind).or_insert([0; SLOTS]), v);
    }
    snap
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_contract::proxy_stats as layout;

    /// The block handed where no file may go (a shared server's namespace without a record,
    /// a proxy whose file cannot be made): whoever holds it cannot grow it, by any call, nor
    /// cut it short; it maps and counts as a block does.
    #[test]
    fn an_anonymous_block_cannot_grow_or_shrink() {
        let f = File::from(anonymous().expect("memfd"));
        let map = SharedCounters::map(&f, SLOTS).expect("maps read-write");
        assert_eq!(map.load(SLOT_MAGIC), MAGIC);
        map.add(SLOT_CONN_OPEN, 2);
        let eperm = |r: rustix::io::Result<()>| {
            assert_eq!(r, Err(rustix::io::Errno::PERM));
        };
        eperm(rustix::fs::ftruncate(&f, 64 << 20));
        eperm(rustix::fs::ftruncate(&f, 0));
        eperm(rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            0,
            64 << 20,
        ));
        eperm(rustix::io::pwrite(&f, b"x", BLOCK_SIZE as u64).map(drop));
        // Sealed for good: no seal can be taken off or added.
        eperm(rustix::fs::fcntl_add_seals(
            &f,
            rustix::fs::SealFlags::WRITE,
        ));
        assert_eq!(f.metadata().expect("stat").len(), BLOCK_SIZE as u64);
        assert_eq!(map.load(SLOT_CONN_OPEN), 2);
    }

    /// A statistics directory not made yet, in a temporary one removed with the guard, also
    /// when the test fails.
    fn dir(name: &str) -> (ns_testkit::TempDir, PathBuf) {
        let t = ns_testkit::TempDir::new(&format!("stats-{name}"));
        let d = t.path().join("stats");
        (t, d)
    }

    #[test]
    fn counters_never_go_down_across_resets_and_removal() {
        let (_t, d) = dir("fold");
        let fd = for_start(&d, "r1").expect("create");
        let w = SharedCounters::map(&File::from(fd), SLOTS).expect("map");
        let ok = layout::class_slot(200);
        let lat = layout::latency_slot(10);
        w.add(ok, 5);
        w.add(lat, 5);
        w.add(SLOT_CONN_OPEN, 3);
        let proxies = [("r1".to_owned(), Kind::Router)];
        let s = read(&d, &proxies);
        assert_eq!(s.per_key["r1"][ok], 5);
        assert_eq!(s.per_key["r1"][SLOT_CONN_OPEN], 3);
        // A hostile or reset writer goes back to 2: the export goes on from 5.
        w.store(ok, 2);
        let s = read(&d, &proxies);
        assert_eq!(s.per_key["r1"][ok], 7);
        // A new start reuses the block (counts go on) and zeroes the gauge.
        drop(for_start(&d, "r1").expect("reopen"));
        assert_eq!(w.load(ok), 2, "same block");
        assert_eq!(w.load(SLOT_CONN_OPEN), 0);
        w.add(ok, 1);
        assert_eq!(read(&d, &proxies).per_key["r1"][ok], 8);
        // Removed: the per-kind total keeps its counts.
        retain(&d, &Default::default());
        assert!(!path(&d, "r1").exists());
        let s = read(&d, &[]);
        assert!(s.per_key.is_empty());
        assert_eq!(s.per_kind["router"][lat], 5);
    }

    /// A proxy holds its block read-write, so whatever its uid it can cut the file short and
    /// grow it back, again and again, while the spawner scrapes: every scrape goes on (no
    /// SIGBUS, however the cuts fall between the spawner's check and its read), and what is
    /// exported never goes down.
    #[test]
    fn a_proxy_cutting_its_block_short_while_scraped_neither_kills_nor_confuses_the_reader() {
        let (_t, d) = dir("cut");
        let block = File::from(for_start(&d, "r-cut").expect("create"));
        let w = SharedCounters::map(&block, SLOTS).expect("map");
        let ok = layout::class_slot(200);
        w.add(ok, 100);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cutter = {
            let stop = std::sync::Arc::clone(&stop);
            // The proxy's own descriptor of its block (its --stats-fd).
            let fd = block.try_clone().expect("dup");
            std::thread::spawn(move || {
                let mut cuts = 0u64;
                use std::os::unix::fs::FileExt as _;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = fd.set_len(0);
                    // Good again (size and magic), so the spawner maps it again next time.
                    let _ = fd.set_len(BLOCK_SIZE as u64);
                    let _ = fd.write_all_at(&MAGIC.to_le_bytes(), 0);
                    let _ = fd.write_all_at(&100u64.to_le_bytes(), (ok * 8) as u64);
                    cuts += 1;
                }
                cuts
            })
        };
        let proxies = [("r-cut".to_owned(), Kind::Router)];
        let (mut last, mut seen) = (0, 0);
        for _ in 0..20_000 {
            let s = read(&d, &proxies);
            seen += usize::from(s.per_key.contains_key("r-cut"));
            // Per kind (a block read again starts its own count; the last one's is kept).
            let total = s.per_kind.get("router").map_or(0, |v| v[ok]);
            assert!(total >= last, "{total} after {last}");
            last = total;
        }
        assert!(seen > 0, "the block was read");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(cutter.join().expect("cutter") > 0);
        drop(w);
    }

    #[test]
    fn bad_blocks_are_refused_for_reading_and_replaced_for_a_start() {
        let (_t, d) = dir("bad");
        crate::statedir::prepare(&d).expect("dir");
        let p = path(&d, "n1");
        std::fs::write(&p, b"short").expect("write");
        assert!(open_block(&p, false).is_err());
        assert!(read(&d, &[("n1".to_owned(), Kind::Network)])
            .per_key
            .is_empty());
        drop(for_start(&d, "n1").expect("replaced"));
        assert_eq!(
            std::fs::metadata(&p).expect("stat").len(),
            BLOCK_SIZE as u64
        );
        // A symlink is never followed.
        let victim = d.join("victim");
        std::fs::write(&victim, vec![0u8; BLOCK_SIZE]).expect("victim");
        let l = path(&d, "n2");
        std::os::unix::fs::symlink(&victim, &l).expect("symlink");
        assert!(open_block(&l, false).is_err());
        drop(for_start(&d, "n2").expect("replaced link"));
        assert!(!std::fs::symlink_metadata(&l)
            .expect("stat")
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read(&victim).expect("victim"),
            vec![0u8; BLOCK_SIZE]
        );
    }

    #[test]
    fn slab_records_are_read_folded_and_retired_like_block_files() {
        // Its own kind: the retired totals are the process's, shared with the other tests.
        let (_t, d) = dir("slab");
        // A key with a block file from before: its counts move into its record.
        let old = SharedCounters::map(&File::from(for_start(&d, "r1").expect("block")), SLOTS)
            .expect("map");
        let ok = layout::class_slot(200);
        let lat = layout::latency_slot(10);
        old.add(ok, 4);
        old.add(lat, 4);
        old.add(SLOT_CONN_OPEN, 2);
        let proxies = [
            ("r1".to_owned(), Kind::OvnNetwork),
            ("r2".to_owned(), Kind::OvnNetwork),
        ];
        assert_eq!(read(&d, &proxies).per_key["r1"][ok], 4);
        let r1 = record_for(&d, 0, "r1").expect("record");
        let r2 = record_for(&d, 0, "r2").expect("record");
        assert_eq!((r1.record, r2.record), (1, 2));
        assert!(!path(&d, "r1").exists(), "the block file went");
        assert!(crate::stats_slab::path(&d, 0).exists());
        let slab = SharedCounters::map(&File::from(r1.slab), layout::SLAB_SIZE / 8).expect("map");
        let at = |r: u32, slot: usize| r as usize * layout::RECORD_SLOTS + slot;
        assert_eq!(slab.load(at(1, ok)), 4, "moved");
        assert_eq!(slab.load(at(1, SLOT_CONN_OPEN)), 0, "not the gauge");
        slab.add(at(1, ok), 1);
        slab.add(at(2, lat), 3);
        let s = read(&d, &proxies);
        assert_eq!(s.per_key["r1"][ok], 5, "counts go on, not twice");
        assert_eq!(s.per_key["r2"][lat], 3);
        assert_eq!(s.per_kind["ovn-network"][lat], 7);
        // A reset writer: the export goes on.
        slab.store(at(2, lat), 1);
        assert_eq!(read(&d, &proxies).per_key["r2"][lat], 4);
        // The same key gets the same record back, its gauge kept.
        slab.store(at(2, SLOT_CONN_OPEN), 1);
        assert_eq!(record_for(&d, 0, "r2").expect("record").record, 2);
        assert_eq!(slab.load(at(2, SLOT_CONN_OPEN)), 1);
        // A removed key: its record freed and zeroed, its counts kept in its kind's total.
        retain(&d, &["r1".to_owned()].into());
        assert_eq!(slab.load(at(2, 0)), 0);
        assert!(crate::stats_slab::path(&d, 0).exists(), "the slab stays");
        let s = read(&d, &proxies[..1]);
        assert!(!s.per_key.contains_key("r2"));
        assert_eq!(s.per_kind["ovn-network"][lat], 8);
        // Its record goes to the next key, zeroed; a key too long for a record gets none.
        assert_eq!(record_for(&d, 0, "r3").expect("record").record, 2);
        assert_eq!(slab.load(at(2, lat)), 0);
        assert!(record_for(&d, 0, &"k".repeat(200)).is_none());
    }

    #[test]
    fn a_namespace_moving_to_another_shard_brings_its_counts() {
        let (_t, d) = dir("shards");
        let ok = layout::class_slot(200);
        let at = |r: u32, slot: usize| r as usize * layout::RECORD_SLOTS + slot;
        let from = record_for(&d, 1, "m1").expect("record");
        let one = SharedCounters::map(&File::from(from.slab), layout::SLAB_SIZE / 8).expect("map");
        one.add(at(from.record, ok), 6);
        one.add(at(from.record, SLOT_CONN_OPEN), 1);
        let proxies = [("m1".to_owned(), Kind::Network)];
        assert_eq!(read(&d, &proxies).per_key["m1"][ok], 6);
        let to = record_for(&d, 0, "m1").expect("record");
        let zero = SharedCounters::map(&File::from(to.slab), layout::SLAB_SIZE / 8).expect("map");
        assert_eq!(zero.load(at(to.record, ok)), 6);
        assert_eq!(zero.load(at(to.record, SLOT_CONN_OPEN)), 0);
        assert_eq!(
            one.load(at(from.record, 0)),
            0,
            "freed on the shard it left"
        );
        zero.add(at(to.record, ok), 1);
        assert_eq!(read(&d, &proxies).per_key["m1"][ok], 7);
    }
}
