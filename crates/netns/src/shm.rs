//! A file shared by `mmap` as an array of `AtomicU64` counters (the proxy's statistics block,
//! issue #17): the writer adds with relaxed atomics, no syscall per update; a reader in
//! another process loads the same slots.
//!
//! Here because mapping memory needs `unsafe` and this is the workspace's one crate allowed
//! it. The type is safe to use: the length is checked against the file when mapping, every
//! access is bounds-checked (out of range reads 0, writes are dropped), nothing is ever
//! handed out as a plain `&mut` or a slice that another process could change under it.
//!
//! **A file cut short under the mapping.** Whoever holds a writable descriptor of the file
//! can `ftruncate(2)` it, whatever its owner and mode (the kernel checks only that the
//! descriptor was opened for writing): an unprivileged proxy can cut its own block short, a
//! shared server its slab. An access to a mapped page past the new end of the file raises
//! `SIGBUS`, which would kill the reader: the spawner, as root, reading the blocks at every
//! scrape. A stat before the access is no defence (the file can be cut between the two). So
//! every mapping is registered, and a `SIGBUS` handler (installed by the first `map`) that
//! finds the faulting address in a registered mapping puts anonymous zeroed memory over the
//! whole of it (`MAP_FIXED`) and returns: the access completes, reading 0, and the mapping
//! says so ([`SharedCounters::is_cut`]), so its owner drops it. A fault anywhere else goes
//! to the handler that was there before (Rust's stack-overflow handler, or the default
//! action), as if ours did not exist. This is how Wayland compositors read the shared memory
//! of clients they do not trust (weston's `wl_shm_buffer_begin_access`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

/// `slots` shared `u64` counters at the start of a mapped file.
#[derive(Debug)]
pub struct SharedCounters {
    ptr: NonNull<AtomicU64>,
    slots: usize,
    len: usize,
    /// Its entry in [`GUARDED`].
    guard: usize,
}

/// Most mappings guarded at once (one per proxy's block, one per slab: thousands); a `map`
/// beyond that is refused.
const MAX_GUARDED: usize = 1 << 16;

/// A registered mapping: `start` 0 is a free entry. `start` is set first and cleared last,
/// `len` set last and cleared first, so the handler never sees a length with another
/// mapping's start.
struct Guarded {
    start: AtomicUsize,
    len: AtomicUsize,
    cut: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // only as the array's initialiser
const FREE: Guarded = Guarded {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    cut: AtomicBool::new(false),
};

static GUARDED: [Guarded; MAX_GUARDED] = [FREE; MAX_GUARDED];

/// The `SIGBUS` action that was installed before ours, for faults that are not ours.
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
static INSTALL: Once = Once::new();

/// Install [`on_sigbus`] once per process, keeping the action it replaces.
fn install_handler() -> io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; sigaction(2)
        // with valid pointers only reads `new` and writes `old`. The handler has the
        // SA_SIGINFO signature. `old` is leaked on purpose: the handler reads it for the
        // life of the process.
        unsafe {
            let old: *mut libc::sigaction = Box::into_raw(Box::new(std::mem::zeroed()));
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            if libc::sigaction(libc::SIGBUS, &new, old) != 0 {
                result = Err(io::Error::last_os_error());
                drop(Box::from_raw(old));
                return;
            }
            PREVIOUS.store(old, Ordering::SeqCst);
        }
    });
    result
}

/// The `SIGBUS` handler (module docs). Only atomics, `mmap(2)` and `sigaction(2)`: nothing
/// that allocates or locks.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SA_SIGINFO handler; si_addr is the
    // faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    for g in GUARDED.iter() {
        let start = g.start.load(Ordering::SeqCst);
        if start == 0 || addr < start {
            continue;
        }
        let len = g.len.load(Ordering::SeqCst);
        if addr - start >= len {
            continue;
        }
        // SAFETY: [start, start + len) is a live mapping of ours (registered until its
        // owner unmaps it, which needs `&mut`, so not during an access): replacing it with
        // private zeroed memory at the same address only changes what its slots read.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            g.cut.store(true, Ordering::SeqCst);
            return; // the access is made again, on the zeroed page
        }
        break;
    }
    // Not ours: whoever handled SIGBUS before us does, or the default action (the access is
    // made again and faults again).
    let prev = PREVIOUS.load(Ordering::SeqCst);
    // SAFETY: `prev` is the leaked action saved at install, never freed; calling a previous
    // SA_SIGINFO handler with our arguments is what it was installed to receive.
    unsafe {
        if !prev.is_null() {
            let h = (*prev).sa_sigaction;
            if (*prev).sa_flags & libc::SA_SIGINFO != 0 && h > 1 {
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(h);
                return f(sig, info, ctx);
            }
            if h != libc::SIG_IGN && h != libc::SIG_DFL {
                let f: extern "C" fn(libc::c_int) = std::mem::transmute(h);
                return f(sig);
            }
        }
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
    }
}

/// Register the mapping `[start, start + len)`: its entry.
fn register(start: usize, len: usize) -> io::Result<usize> {
    for (i, g) in GUARDED.iter().enumerate() {
        if g.start
            .compare_exchange(0, start, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            g.cut.store(false, Ordering::SeqCst);
            g.len.store(len, Ordering::SeqCst);
            return Ok(i);
        }
    }
    Err(io::Error::other(format!(
        "more than {MAX_GUARDED} shared counter files mapped"
    )))
}

// SAFETY: the mapping is only accessed through `AtomicU64`, which is Sync; the pointer is
// owned by this value and unmapped once, in Drop.
unsafe impl Send for SharedCounters {}
// SAFETY: as above: every access is an atomic operation.
unsafe impl Sync for SharedCounters {}

impl SharedCounters {
    /// Map the first `slots * 8` bytes of `file` (opened read-write) shared. The file must be
    /// a regular file at least that long; the fd may be closed afterwards.
    pub fn map(file: &File, slots: usize) -> io::Result<SharedCounters> {
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        let len = slots
            .checked_mul(8)
            .filter(|&l| l > 0)
            .ok_or_else(|| io::Error::other("bad slot count"))?;
        if meta.len() < len as u64 {
            return Err(io::Error::other(format!(
                "file is {} bytes, {len} needed",
                meta.len()
            )));
        }
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL), of a length checked to be
        // within the file, on an fd we hold open for the call; the result is checked for
        // MAP_FAILED before use. Pages are page-aligned, so every u64 slot is 8-aligned.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let unmap = |e: io::Error| {
            // SAFETY: the mapping just made, not yet owned by anything.
            unsafe { libc::munmap(p, len) };
            e
        };
        let ptr = NonNull::new(p.cast::<AtomicU64>())
            .ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        install_handler().map_err(unmap)?;
        let guard = register(p as usize, len).map_err(unmap)?;
        Ok(SharedCounters {
            ptr,
            slots,
            len,
            guard,
        })
    }

    /// Whether the file was cut short under the mapping (module docs): every slot now reads
    /// 0 and writes go nowhere; drop it and map the file again if it is still good.
    pub fn is_cut(&self) -> bool {
        GUARDED[self.guard].cut.load(Ordering::SeqCst)
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    fn slot(&self, i: usize) -> Option<&AtomicU64> {
        if i >= self.slots {
            return None;
        }
        // SAFETY: i < slots, and slots * 8 bytes are mapped and live until Drop (which needs
        // &mut self, so not while this borrow lives). AtomicU64 has the size and alignment of
        // u64 and the mapping is page-aligned; other processes only ever touch these bytes
        // atomically too (or with plain reads/writes, which atomics tolerate on this platform).
        Some(unsafe { &*self.ptr.as_ptr().add(i) })
    }

    /// Add `v` to slot `i` (relaxed, wrapping); out of range does nothing.
    #[inline]
    pub fn add(&self, i: usize, v: u64) {
        if let Some(s) = self.slot(i) {
            s.fetch_add(v, Ordering::Relaxed);
        }
    }

    /// Subtract `v` from slot `i` (relaxed, wrapping); out of range does nothing.
    #[inline]
    pub fn sub(&self, i: usize, v: u64) {
        if let Some(s) = self.slot(i) {
            s.fetch_sub(v, Ordering::Relaxed);
        }
    }

    /// Slot `i`'s value (0 out of range).
    pub fn load(&self, i: usize) -> u64 {
        self.slot(i).map_or(0, |s| s.load(Ordering::Relaxed))
    }

    /// Set slot `i`; out of range does nothing.
    pub fn store(&self, i: usize, v: u64) {
        if let Some(s) = self.slot(i) {
            s.store(v, Ordering::Relaxed);
        }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        let g = &GUARDED[self.guard];
        g.len.store(0, Ordering::SeqCst);
        g.start.store(0, Ordering::SeqCst);
        // SAFETY: the exact mapping made in `map` (or the zeroed memory put over it), unmapped
        // once; no borrow of a slot can outlive `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn scratch(name: &str, bytes: usize) -> (std::path::PathBuf, File) {
        let p = std::env::temp_dir().join(format!("ns-shm-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .expect("create");
        f.write_all(&vec![0u8; bytes]).expect("write");
        (p, f)
    }

    #[test]
    fn two_mappings_of_one_file_see_each_others_adds() {
        let (p, f) = scratch("two", 4096);
        let a = SharedCounters::map(&f, 4).expect("map a");
        drop(f);
        let f2 = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .expect("reopen");
        let b = SharedCounters::map(&f2, 4).expect("map b");
        a.add(0, 5);
        a.add(3, 1);
        b.add(3, 2);
        a.add(4, 9); // out of range: ignored
        assert_eq!(b.load(0), 5);
        assert_eq!(a.load(3), 3);
        assert_eq!(a.load(4), 0);
        b.store(0, 1);
        a.sub(0, 1);
        assert_eq!(b.load(0), 0);
        assert_eq!(a.slots(), 4);
        let _ = std::fs::remove_file(&p);
    }

    /// Another holder of the file (a proxy, a shared server) cuts it short under our
    /// mapping: reading and writing it must not kill us (SIGBUS); the mapping reads 0 and says
    /// it was cut, and other mappings are untouched.
    #[test]
    fn a_file_cut_short_under_the_mapping_reads_zero_instead_of_killing_us() {
        let (p, f) = scratch("cut", 8192);
        let (q, g) = scratch("kept", 4096);
        let m = SharedCounters::map(&f, 1024).expect("map");
        let kept = SharedCounters::map(&g, 4).expect("map");
        m.store(0, 7);
        m.store(600, 9);
        kept.store(1, 5);
        assert!(!m.is_cut());
        f.set_len(0).expect("cut short");
        assert_eq!(m.load(600), 0, "a page past the end reads 0");
        assert!(m.is_cut());
        assert_eq!(m.load(0), 0);
        m.add(3, 1);
        assert_eq!(kept.load(1), 5, "another mapping is untouched");
        assert!(!kept.is_cut());
        drop(m);
        // The file made good again maps again.
        f.set_len(8192).expect("grow");
        let again = SharedCounters::map(&f, 1024).expect("map again");
        assert!(!again.is_cut());
        assert_eq!(again.load(600), 0);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_file(&q);
    }

    #[test]
    fn a_short_file_or_zero_slots_is_refused() {
        let (p, f) = scratch("short", 16);
        assert!(SharedCounters::map(&f, 3).is_err());
        assert!(SharedCounters::map(&f, 0).is_err());
        assert!(SharedCounters::map(&f, usize::MAX).is_err());
        assert!(SharedCounters::map(&f, 2).is_ok());
        let _ = std::fs::remove_file(&p);
    }
}
