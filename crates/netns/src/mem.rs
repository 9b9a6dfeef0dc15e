//! Giving freed heap memory back to the kernel (glibc `malloc_trim`).
//!
//! Nothing to do with namespaces: it lives here because `ns-netns` is the workspace's one
//! crate allowed `unsafe`, and the FFI call has no safe wrapper in `libc` or `nix`. The
//! metadata proxy calls it when it goes idle after load (issue 8: idle memory after load
//! must come back close to idle memory before it).

/// Return free memory at the top of the heap and in free pages inside every malloc arena
/// to the kernel (glibc `malloc_trim(0)`). Returns whether any memory was released.
///
/// Costs time proportional to the heap size (microseconds for a small process): call it
/// when idle, never per request. Without glibc it does nothing and returns `false`.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes a plain size_t, touches only the allocator's own state
        // under the allocator's locks, and is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_after_a_large_free() {
        // Many small blocks freed out of order leave free pages inside the heap that only
        // malloc_trim returns; a second call right after has little or nothing left to do.
        let blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 1000]).collect();
        let keep: Vec<Vec<u8>> = blocks
            .into_iter()
            .enumerate()
            .filter_map(|(i, b)| (i % 64 == 0).then_some(b))
            .collect();
        let released = release_free_memory();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(released, "4 MB freed inside the heap, nothing released");
        } else {
            assert!(!released);
        }
        drop(keep);
    }
}
