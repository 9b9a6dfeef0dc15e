//! Per-thread pool of I/O buffers: a connection takes buffers only while a request is in
//! flight, so idle keep-alive connections hold none, and busy ones allocate nothing per
//! request once the pool is warm.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Capacity a fresh buffer starts with: one agent request (`recv(4096)`).
pub const BUF_SIZE: usize = 4096;
/// Buffers that grew past this are shrunk back before being pooled.
const KEEP_MAX: usize = 2 * BUF_SIZE;
/// Free buffers kept per thread; the rest go back to the allocator.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A pooled `Vec<u8>`, returned to the pool on drop.
#[derive(Debug)]
pub struct Buf(Vec<u8>);

impl Buf {
    /// An empty buffer with at least [`BUF_SIZE`] capacity.
    pub fn get() -> Buf {
        let v = POOL
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE));
        Buf(v)
    }
}

impl Deref for Buf {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let mut v = std::mem::take(&mut self.0);
        v.clear();
        if v.capacity() > KEEP_MAX {
            v.shrink_to(BUF_SIZE);
        }
        POOL.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < POOL_MAX {
                p.push(v);
            }
        });
    }
}

/// Give every pooled buffer back to the allocator (called when the proxy goes idle).
pub fn release() {
    POOL.with(|p| *p.borrow_mut() = Vec::new());
}

/// Buffers currently pooled on this thread.
pub fn pooled() -> usize {
    POOL.with(|p| p.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_shrinks() {
        release();
        let mut a = Buf::get();
        a.extend_from_slice(&[1; 3 * BUF_SIZE]);
        drop(a);
        assert_eq!(pooled(), 1);
        let b = Buf::get();
        assert!(b.is_empty() && b.capacity() <= KEEP_MAX);
        drop(b);
        release();
        assert_eq!(pooled(), 0);
    }
}
