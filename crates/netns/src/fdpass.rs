//! Handing sockets to another process: `SCM_RIGHTS` over a Unix socket, and asking a socket
//! which network namespace it was created in (`SIOCGSKNS`).
//!
//! The shared proxy model opens every namespace's listening sockets in the spawner and hands
//! them to one server process; a restarted spawner takes them back and checks each socket's
//! namespace against its records before trusting the tag that came with it. Both verbs take
//! borrowed descriptors and hand out owned ones, so nothing leaks on any error path.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::error::{Error, Result};
use crate::ns::Netns;

/// Most descriptors [`recv_fds`] accepts in one message. One namespace has at most a handful
/// of listeners; a message with more is refused (its descriptors closed at once), so a
/// hostile peer cannot fill our descriptor table with one message. A receiver that expects
/// batches (several namespaces per message) asks for more with [`recv_fds_upto`].
pub const MAX_FDS: usize = 16;
/// The kernel's own limit per message (`SCM_MAX_FD`): the most [`send_fds`] sends and
/// [`recv_fds_upto`] accepts. The control buffer always has room for this many, so the kernel
/// never truncates for want of room; it still does when our descriptor limit is reached
/// mid-message (it installs what fits and sets `MSG_CTRUNC`), and those are closed too.
pub const SCM_MAX_FD: usize = 253;

/// Send `payload` with `fds` attached as one message on the Unix socket `sock` (best used
/// with `SOCK_SEQPACKET`, where a message is never split or merged). The descriptors stay
/// open here: the receiver gets its own copies. `payload` must not be empty (a zero-length
/// message is indistinguishable from end of stream on the other side).
pub fn send_fds(sock: BorrowedFd<'_>, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if payload.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a message with descriptors needs a payload",
        ));
    }
    if fds.len() > SCM_MAX_FD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message, at most {SCM_MAX_FD}",
                fds.len()
            ),
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let iov = [IoSlice::new(payload)];
    let sent = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(io::Error::from)?;
    if sent != payload.len() {
        // Only possible on a stream socket under memory pressure; the descriptors went
        // with the first part, so the peer must not act on the rest.
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", payload.len()),
        ));
    }
    Ok(())
}

/// Receive one message into `buf`, with the descriptors attached to it (close-on-exec).
/// `Ok((0, []))` is end of stream. A message longer than `buf`, carrying more than
/// [`MAX_FDS`] descriptors, or cut short because our descriptor limit was reached, is an
/// error (`InvalidData`) and every descriptor that came with it is closed: the caller never
/// acts on half a message, and a peer cannot make us leak.
pub fn recv_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    recv_fds_upto(sock, buf, MAX_FDS)
}

/// [`recv_fds`] accepting up to `max` descriptors (at most [`SCM_MAX_FD`]) in one message.
pub fn recv_fds_upto(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let max = max.min(SCM_MAX_FD);
    // Room for SCM_MAX_FD descriptors (CMSG_SPACE(253 * 4) is 1,032 bytes), cmsghdr-aligned.
    let mut control = [0u64; 160];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is "no name, no iov, no control"; the fields set next point
    // at `iov` and `control`, which outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` describes buffers we own for the duration of the call; the kernel writes
    // at most iov_len bytes to `buf` and msg_controllen bytes to `control`.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // Own every descriptor the kernel installed before judging the message: with
    // MSG_CTRUNC (our descriptor limit reached mid-message: the kernel installs what fits
    // and says so) the ones that did arrive are ours to close too, or they would leak.
    let fds = installed_fds(&msg);
    let flags = msg.msg_flags;
    if fds.len() > max || flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message carried more than {max} descriptors, or more than we could take"),
        ));
    }
    if flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message longer than {} bytes", buf.len()),
        ));
    }
    Ok((n as usize, fds))
}

/// Every descriptor an `SCM_RIGHTS` control message of `msg` (as `recvmsg` returned it)
/// carries, owned.
fn installed_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by recvmsg: msg_control/msg_controllen describe the control
    // messages the kernel wrote (msg_controllen is what it used), and CMSG_FIRSTHDR /
    // CMSG_NXTHDR never step past that; each header's cmsg_len was set by the kernel.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !c.is_null() {
        // SAFETY: a non-null header within the control buffer (see above).
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_DATA of a valid header points inside it.
            let data = unsafe { libc::CMSG_DATA(c) };
            let header = data as usize - c as usize;
            let count = (h.cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: `count` ints follow CMSG_DATA within cmsg_len; read unaligned (the
                // data is only guaranteed int-aligned by the kernel's layout, not by Rust's).
                let fd = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
                // SAFETY: the kernel just installed `fd` in our table for this message
                // (SCM_RIGHTS); nothing else refers to it, so taking ownership is sound and
                // it is closed exactly once, by the OwnedFd.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR: bounded by msg_controllen.
        c = unsafe { libc::CMSG_NXTHDR(msg, c) };
    }
    fds
}

/// A listening `AF_UNIX` `SOCK_SEQPACKET` socket bound at `path` (close-on-exec), for a
/// control channel whose messages carry descriptors.
pub fn seqpacket_listen(path: &std::path::Path, backlog: i32) -> io::Result<OwnedFd> {
    use nix::sys::socket::{bind, listen, Backlog, UnixAddr};
    let fd = seqpacket()?;
    bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    listen(&fd, Backlog::new(backlog)?)?;
    Ok(fd)
}

/// A `SOCK_SEQPACKET` connection to the listening socket at `path` (close-on-exec).
pub fn seqpacket_connect(path: &std::path::Path) -> io::Result<OwnedFd> {
    use nix::sys::socket::{connect, UnixAddr};
    let fd = seqpacket()?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

fn seqpacket() -> io::Result<OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    Ok(socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// Accept one connection on the listening socket `listener` (any family or type, e.g. a
/// `SOCK_SEQPACKET` control socket), close-on-exec and non-blocking.
pub fn accept_owned(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    use nix::sys::socket::{accept4, SockFlag};
    let fd = accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )
    .map_err(io::Error::from)?;
    // SAFETY: accept4 just created `fd` for us; nothing else refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Take ownership of a descriptor this process inherited at `execve` and was told about on
/// its command line (e.g. `--control-fd 3`), marking it close-on-exec. Refuses stdin, stdout
/// and stderr, a descriptor that is not open, and one already taken (each number once per
/// process), so two owners can never close the same descriptor.
pub fn take_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    use std::sync::Mutex;
    static TAKEN: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());
    if fd <= 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} is standard input, output or error"),
        ));
    }
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    if taken.contains(&fd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fd {fd} was already taken"),
        ));
    }
    // SAFETY: F_GETFD/F_SETFD only read and set the descriptor's flags; an fd that is not
    // open makes F_GETFD fail with EBADF and nothing else happens.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::other(format!(
            "fd {fd} is not open: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: as above, on an fd we just saw open.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    taken.push(fd);
    // SAFETY: the descriptor is open (checked), was inherited for us (the caller's contract:
    // it was named on our command line), and the registry above hands each number out once,
    // so this OwnedFd is its only owner in the process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Netns {
    /// The network namespace the socket `sock` was created in (`SIOCGSKNS`, Linux 4.9+), as
    /// a handle like any other: compare it with a record's namespace (`==` is dev + inode).
    /// Needs CAP_NET_ADMIN over that namespace, as root has.
    pub fn of_socket(sock: BorrowedFd<'_>) -> Result<Netns> {
        let what = format!("socket fd {}", sock.as_raw_fd());
        // SAFETY: SIOCGSKNS takes no argument; on success the kernel returns a new
        // descriptor (O_CLOEXEC) that nothing else owns, which we take over at once.
        let fd = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGSKNS) };
        if fd < 0 {
            return Err(Error::Io {
                op: "ioctl SIOCGSKNS on",
                target: what,
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: see above: `fd` is a fresh descriptor owned by no one else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = File::from(owned);
        let meta = file.metadata().map_err(|e| Error::Io {
            op: "stat namespace of",
            target: what.clone(),
            source: e,
        })?;
        Netns::from_parts(
            OwnedFd::from(file),
            PathBuf::from(format!("(namespace of {what})")),
            meta.dev(),
            meta.ino(),
        )
    }
}

/// `l` (listening, non-blocking) registered with the current tokio runtime for readability,
/// to accept with `accept4` directly: the accepted socket is not registered anywhere yet, so
/// the thread that serves it registers it once (the proxy's serving threads). tokio made its
/// safe constructor `unsafe` (a type could hand out another fd later); a `TcpListener` owns
/// its one fd, so that cannot happen here. Must be called within a runtime.
pub fn async_listener(
    l: std::net::TcpListener,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::net::TcpListener>> {
    // SAFETY: `TcpListener::as_raw_fd` returns the fd it owns, the same one for its whole
    // life, and it stays open until the AsyncFd (which owns the listener) is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    fn pair() -> (UnixDatagram, UnixDatagram) {
        // SOCK_DGRAM on AF_UNIX keeps message boundaries like SOCK_SEQPACKET.
        UnixDatagram::pair().expect("socketpair")
    }

    #[test]
    fn descriptors_arrive_with_their_payload() {
        let (a, b) = pair();
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        send_fds(a.as_fd(), b"tag", &[l.as_fd()]).expect("send");
        let mut buf = [0u8; 64];
        let (n, fds) = recv_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(&buf[..n], b"tag");
        assert_eq!(fds.len(), 1);
        let got = std::net::TcpListener::from(fds.into_iter().next().expect("one fd"));
        assert_eq!(got.local_addr().expect("addr").port(), port);
        // Close-on-exec, as MSG_CMSG_CLOEXEC asks.
        let flags = nix::fcntl::fcntl(&got, nix::fcntl::FcntlArg::F_GETFD).expect("getfd");
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn a_message_without_descriptors_is_fine() {
        let (a, b) = pair();
        send_fds(a.as_fd(), b"hello", &[]).expect("send");
        let mut buf = [0u8; 8];
        let (n, fds) = recv_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!((&buf[..n], fds.len()), (&b"hello"[..], 0));
    }

    #[test]
    fn an_oversized_message_is_refused_and_its_descriptors_closed() {
        let (a, b) = pair();
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        send_fds(a.as_fd(), &[7u8; 100], &[l.as_fd()]).expect("send");
        let mut buf = [0u8; 10];
        let err = recv_fds(b.as_fd(), &mut buf).expect_err("too long");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("longer than 10 bytes"), "{err}");
    }

    #[test]
    fn too_many_descriptors_are_refused_on_both_sides() {
        let (a, b) = pair();
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let over_kernel: Vec<BorrowedFd<'_>> = (0..=SCM_MAX_FD).map(|_| l.as_fd()).collect();
        let err = send_fds(a.as_fd(), b"x", &over_kernel).expect_err("too many");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // A batch: more than recv_fds takes, as many as recv_fds_upto is told to.
        let many: Vec<BorrowedFd<'_>> = (0..MAX_FDS + 1).map(|_| l.as_fd()).collect();
        send_fds(a.as_fd(), b"x", &many).expect("a batch");
        let mut buf = [0u8; 8];
        let (_, got) = recv_fds_upto(b.as_fd(), &mut buf, SCM_MAX_FD).expect("a batch");
        assert_eq!(got.len(), MAX_FDS + 1);
        // A peer that sends more than recv_fds accepts: refused, every descriptor closed.
        let raw: Vec<RawFd> = many.iter().map(AsRawFd::as_raw_fd).collect();
        let iov = [IoSlice::new(b"x")];
        sendmsg::<()>(
            a.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .expect("raw send");
        let mut buf = [0u8; 8];
        let err = recv_fds(b.as_fd(), &mut buf).expect_err("truncated");
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn an_inherited_descriptor_is_taken_once() {
        use std::os::fd::IntoRawFd;
        assert!(take_inherited(1).is_err(), "stdout is not ours to take");
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let raw = a.into_raw_fd();
        let owned = take_inherited(raw).expect("take");
        let flags = nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_GETFD).expect("getfd");
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "close-on-exec once taken");
        let again = take_inherited(raw).expect_err("twice");
        assert!(again.to_string().contains("already taken"), "{again}");
        assert!(take_inherited(100_000).is_err(), "not open");
    }

    #[test]
    fn end_of_stream_reads_as_zero() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        drop(a);
        let mut buf = [0u8; 8];
        let (n, fds) = recv_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!((n, fds.len()), (0, 0));
    }

    #[test]
    fn a_socket_knows_its_namespace() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP a_socket_knows_its_namespace: needs root (CAP_NET_ADMIN)");
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let ns = Netns::of_socket(l.as_fd()).expect("SIOCGSKNS");
        assert_eq!(ns, Netns::current().expect("current"));
        let err = Netns::of_socket(std::io::stdin().as_fd()).expect_err("not a socket");
        assert!(err.to_string().contains("SIOCGSKNS"), "{err}");
    }
}
