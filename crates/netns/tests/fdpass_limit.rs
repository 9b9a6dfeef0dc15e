//! `recv_fds` when our descriptor limit is reached in the middle of a message: the kernel
//! installs the descriptors that fit and sets `MSG_CTRUNC`. The message is refused, and the
//! descriptors that did arrive must be closed, not leaked (a hostile peer, e.g. a
//! compromised shared server answering a restarted spawner, could otherwise make root's
//! supervisor leak descriptors every time). Its own test binary: it lowers the process's
//! `RLIMIT_NOFILE`, which no other test may share. Unprivileged.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::sys::resource::{getrlimit, setrlimit, Resource};

fn is_open(fd: i32) -> bool {
    std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_ok()
}

#[test]
fn descriptors_that_arrive_when_our_limit_is_reached_are_closed() {
    let (a, b) = std::os::unix::net::UnixDatagram::pair().expect("pair");
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let five: Vec<BorrowedFd<'_>> = (0..5).map(|_| l.as_fd()).collect();
    ns_netns::send_fds(a.as_fd(), b"x", &five).expect("send");
    // The lowest free descriptor numbers: room for two of the five, no more.
    let probe = std::fs::File::open("/dev/null").expect("probe");
    let first = probe.as_raw_fd();
    drop(probe);
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, first as u64 + 2, hard).expect("lower the limit");
    let mut buf = [0u8; 8];
    let got = ns_netns::recv_fds(b.as_fd(), &mut buf);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).expect("restore the limit");
    let err = got.expect_err("a truncated message is refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    for fd in first..first + 2 {
        assert!(
            !is_open(fd),
            "fd {fd} installed by the truncated message was leaked"
        );
    }
}
