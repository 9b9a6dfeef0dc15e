//! A file shared by `mmap` as an array of `AtomicU64` counters (the proxy's statistics block,
//! issue #17): the writer adds with relaxed atomics, no syscall per update; a reader in
//! another process loads the same slots.
//!
//! Here because mapping memory needs `unsafe` and this is the workspace's one crate allowed
//! it. The type is safe to use: the length is checked against the file when mapping, every
//! access is bounds-checked (out of range reads 0, writes are dropped), nothing is ever
//! handed out as a plain `&mut` or a slice that another process could change under it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// `slots` shared `u64` counters at the start of a mapped file.
#[derive(Debug)]
pub struct SharedCounters {
    ptr: NonNull<AtomicU64>,
    slots: usize,
    len: usize,
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
        let ptr = NonNull::new(p.cast::<AtomicU64>())
            .ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(SharedCounters { ptr, slots, len })
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
        // SAFETY: the exact mapping made in `map`, unmapped once; no borrow of a slot can
        // outlive `self`.
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
