//! Giving up what a process running as uid 0 does not need once its sockets are bound (issue
//! "hardening", item 10): a proxy that parses VM traffic as root keeps uid 0 (to reach an
//! agent socket only root may use) but no capability at all, and can never regain one.
//!
//! Capabilities are per thread in Linux: call [`drop_all_capabilities`] before the process
//! starts any thread (the proxy does it before building its runtime).

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_V3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drop every capability of the calling thread for good: the bounding set (when this thread
/// may, i.e. holds `CAP_SETPCAP`), the ambient set, then the effective, permitted and
/// inheritable sets. Also sets the securebits that stop uid 0 from regaining capabilities
/// on `execve` (`SECBIT_NOROOT`, `SECBIT_NO_SETUID_FIXUP`, both locked) when permitted.
pub fn drop_all_capabilities() -> io::Result<()> {
    const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
    const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
    const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
    const SECBIT_NO_SETUID_FIXUP_LOCKED: libc::c_ulong = 1 << 3;
    // SAFETY: prctl with integer arguments only; it changes this thread's credentials and
    // touches no memory of ours.
    unsafe {
        // Best effort: both need CAP_SETPCAP, which a process without it does not have to
        // give up (its bounding set cannot grant anything without file capabilities either,
        // and PR_SET_NO_NEW_PRIVS shuts those off).
        libc::prctl(
            libc::PR_SET_SECUREBITS,
            SECBIT_NOROOT
                | SECBIT_NOROOT_LOCKED
                | SECBIT_NO_SETUID_FIXUP
                | SECBIT_NO_SETUID_FIXUP_LOCKED,
            0,
            0,
            0,
        );
        for cap in 0..=last_cap() {
            libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
        }
        // EINVAL on kernels without ambient capabilities (before 4.3): nothing to clear.
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset(2) reads one header and two data structs of the v3 layout (repr(C),
    // alive for the call); pid 0 is the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `PR_SET_NO_NEW_PRIVS`: no `execve` of this process or its children can gain privileges
/// (setuid bits and file capabilities are ignored). Cannot be undone.
pub fn set_no_new_privs() -> io::Result<()> {
    nix::sys::prctl::set_no_new_privs().map_err(io::Error::from)
}

/// The calling thread's capability sets as `/proc/thread-self/status` shows them:
/// `(effective, permitted, bounding)`.
pub fn capabilities() -> io::Result<(u64, u64, u64)> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .ok_or_else(|| io::Error::other(format!("no {name} in /proc/thread-self/status")))
    };
    Ok((field("CapEff:")?, field("CapPrm:")?, field("CapBnd:")?))
}

/// Whether `PR_SET_NO_NEW_PRIVS` is set for the calling thread.
pub fn no_new_privs() -> io::Result<bool> {
    nix::sys::prctl::get_no_new_privs().map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a thread of its own (capabilities are per thread), so the rest of the test process
    /// keeps its privileges.
    #[test]
    fn drops_every_capability_and_sets_no_new_privs() {
        let root = nix::unistd::geteuid().is_root();
        // A directory only its owner (not root) may write to: root writes there only with
        // CAP_DAC_OVERRIDE.
        let dir = std::env::temp_dir().join(format!("ns-privs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("mkdir");
        if root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
            std::fs::write(dir.join("before"), "").expect("root writes with its capabilities");
        }
        let d = dir.clone();
        std::thread::spawn(move || {
            drop_all_capabilities().expect("drop");
            assert_eq!(capabilities().expect("read").0, 0, "effective");
            assert_eq!(capabilities().expect("read").1, 0, "permitted");
            if root {
                assert_eq!(capabilities().expect("read").2, 0, "bounding");
                let e = std::fs::write(d.join("after"), "").expect_err("no CAP_DAC_OVERRIDE");
                assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            }
            set_no_new_privs().expect("nnp");
            assert!(no_new_privs().expect("read"));
        })
        .join()
        .expect("thread");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
