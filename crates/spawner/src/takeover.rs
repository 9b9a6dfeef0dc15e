//! `restart ID` by socket takeover: the running proxy's listening sockets are copied into the
//! spawner with `pidfd_getfd(2)` and handed to its successor, so connections waiting in the
//! accept queues (and every one arriving meanwhile) are served by one of the two processes,
//! never refused or reset. What is taken is checked on the descriptors themselves: a TCP socket
//! in the listening state, bound to one of the proxy's addresses, created in the record's
//! namespace (`SIOCGSKNS`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};

/// The addresses a per-namespace proxy binds (`launch::proxy_args`: `--bind`s), in order;
/// the shared model's listeners are the same.
pub(crate) fn wanted(ipv6: bool) -> Vec<(IpAddr, u16)> {
    let mut w = vec![(IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), 80)];
    if ipv6 {
        w.push((
            IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa9fe, 0xa9fe)),
            80,
        ));
    }
    w
}

/// The inodes of the listening TCP sockets of `pid`'s network namespace
/// (`/proc/PID/net/tcp{,6}`, state `0A`): a cheap filter, so only those descriptors are
/// copied; every copy is then checked on the socket itself.
fn listening_inodes(pid: u32) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) == Some(&"0A") {
                if let Some(ino) = f.get(9).and_then(|s| s.parse().ok()) {
                    out.insert(ino);
                }
            }
        }
    }
    out
}

/// Copy the proxy's listening sockets (one per bind: `169.254.169.254:80`, and
/// `[fe80::a9fe:a9fe]:80` with `ipv6`, in `--bind` order) out of the
/// process behind `pidfd` (proven ours: spawned by us, or adopted by the pid-file rules, and
/// held through this pidfd since). `pid` only names its `/proc` entries; a descriptor copied
/// through the pidfd always comes from that very process. `ns_inode` is the record's
/// namespace. The error is one line (e.g. no CAP_SYS_PTRACE: `pidfd_getfd: Operation not
/// permitted`).
pub(crate) fn take_listeners(
    pidfd: BorrowedFd<'_>,
    pid: u32,
    ipv6: bool,
    ns_inode: u64,
) -> Result<Vec<OwnedFd>, String> {
    let wanted = wanted(ipv6);
    let inodes = listening_inodes(pid);
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut got: Vec<Option<OwnedFd>> = wanted.iter().map(|_| None).collect();
    let mut last_error = None;
    for entry in entries.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let ino = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse::<u64>().ok());
        if !ino.is_some_and(|i| inodes.contains(&i)) {
            continue;
        }
        let copy = match rustix::process::pidfd_getfd(
            pidfd,
            fd,
            rustix::process::PidfdGetfdFlags::empty(),
        ) {
            Ok(c) => c,
            Err(e) => {
                last_error = Some(format!("pidfd_getfd of fd {fd} of pid {pid}: {e}"));
                continue;
            }
        };
        match which(copy.as_fd(), &wanted, ns_inode) {
            Ok(Some(i)) if got[i].is_none() => got[i] = Some(copy),
            Ok(_) => {}
            Err(e) => last_error = Some(format!("fd {fd} of pid {pid}: {e}")),
        }
    }
    let mut out = Vec::with_capacity(wanted.len());
    for (sock, (ip, port)) in got.into_iter().zip(&wanted) {
        match sock {
            Some(s) => out.push(s),
            None => {
                let addr = SocketAddr::new(*ip, *port);
                return Err(match &last_error {
                    Some(e) => format!("no listening socket for {addr} taken: {e}"),
                    None => format!("pid {pid} holds no listening socket for {addr}"),
                });
            }
        }
    }
    Ok(out)
}

/// Which wanted address the descriptor listens on (`None`: not a listening TCP socket, or
/// another one of the process's listeners); an error for a listener on a wanted address
/// that lives in another namespace. Also the check of sockets a shared server hands back.
pub(crate) fn which(
    sock: BorrowedFd<'_>,
    wanted: &[(IpAddr, u16)],
    ns_inode: u64,
) -> Result<Option<usize>, String> {
    use rustix::net::sockopt;
    let st = rustix::fs::fstat(sock).map_err(|e| format!("fstat: {e}"))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
        return Ok(None);
    }
    if sockopt::socket_type(sock).map_err(|e| format!("SO_TYPE: {e}"))?
        != rustix::net::SocketType::STREAM
        || !sockopt::socket_acceptconn(sock).map_err(|e| format!("SO_ACCEPTCONN: {e}"))?
    {
        return Ok(None);
    }
    let Ok(addr) = rustix::net::getsockname(sock)
        .map_err(|e| format!("getsockname: {e}"))
        .and_then(|a| SocketAddr::try_from(a).map_err(|e| e.to_string()))
    else {
        return Ok(None);
    };
    let Some(i) = wanted
        .iter()
        .position(|&(ip, port)| addr.ip() == ip && addr.port() == port)
    else {
        return Ok(None);
    };
    let ns = ns_netns::Netns::of_socket(sock.as_fd()).map_err(|e| e.to_string())?;
    if ns.inode() != ns_inode {
        return Err(format!(
            "{addr} lives in namespace inode {}, not the record's ({ns_inode})",
            ns.inode()
        ));
    }
    Ok(Some(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_own_listener_and_skips_others() {
        // Our own process: a listener on a port no proxy uses is not taken, and a spec whose
        // addresses are not bound here is one clear line.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let pid = std::process::id();
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_raw(pid as i32).expect("pid"),
            rustix::process::PidfdFlags::empty(),
        );
        let Ok(pidfd) = pidfd else {
            return; // no pidfd_open (old kernel): nothing to test here
        };
        let ino = ns_netns::Netns::current().expect("ns").inode();
        let e = take_listeners(pidfd.as_fd(), pid, false, ino).expect_err("no such listener");
        assert!(e.contains("169.254.169.254:80"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        drop(l);
    }
}
