//! The Unix socket the proxies connect to: parent directory created, a stale file removed
//! (but never a socket another agent still serves), bound with `metadata_backlog`,
//! permissions from `metadata_proxy_socket_mode` (neutron agent/linux/utils.py
//! `ensure_directory_exists_without_file`, proxy_base.py); removed at exit only while it is
//! still the file this agent bound, so an overlapping restart keeps its successor's socket.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use crate::config::{Config, SocketMode};

/// Setting up the socket failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct SocketError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SocketError + 'a {
    move |source| SocketError {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Another agent answers on the path: starting would take the proxies away from it.
#[derive(Debug, thiserror::Error)]
#[error("{}: another agent is serving this socket; stop it first or use another metadata_proxy_socket", path.display())]
pub struct InUse {
    pub path: PathBuf,
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(transparent)]
    InUse(#[from] InUse),
    #[error(transparent)]
    Socket(#[from] SocketError),
}

/// The listening socket and the identity of the file it was bound to.
pub struct Bound {
    pub listener: tokio::net::UnixListener,
    /// The socket file this agent created, to remove at exit (and only that one).
    pub file: SocketFile,
}

/// A socket file by path and `(dev, ino)`: a successor that bound the same path has a new
/// inode, so comparing both tells our file from theirs.
#[derive(Debug, Clone)]
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    /// Remove the file if it is still the one we bound; leave a successor's socket alone.
    /// (A successor binding between the check and the unlink is not excluded, but the window
    /// is one syscall instead of the whole shutdown grace.)
    pub fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => match std::fs::remove_file(&self.path) {
                Ok(()) => {}
                Err(err) => tracing::debug!(%err, "socket already gone"),
            },
            Ok(_) => tracing::info!(
                path = %self.path.display(),
                "socket was replaced by another agent; leaving it in place"
            ),
            Err(err) => tracing::debug!(%err, "socket already gone"),
        }
    }
}

/// The file mode for the socket (Neutron's MODE_MAP; "deduce" looks at who the proxies run as).
pub fn mode_bits(cfg: &Config) -> u32 {
    let mode = match cfg.metadata_proxy_socket_mode {
        SocketMode::Deduce => deduce(&cfg.metadata_proxy_user, &cfg.metadata_proxy_group),
        m => m,
    };
    match mode {
        SocketMode::User | SocketMode::Deduce => 0o644,
        SocketMode::Group => 0o664,
        SocketMode::All => 0o666,
    }
}

/// proxy_base.py `_get_socket_mode`: proxies running as us or root -> user; in our group ->
/// group; otherwise all.
fn deduce(user: &str, group: &str) -> SocketMode {
    let euid = nix::unistd::geteuid();
    let is_us = user.is_empty()
        || user == "0"
        || user == "root"
        || user.parse::<u32>().is_ok_and(|u| u == euid.as_raw())
        || nix::unistd::User::from_name(user)
            .ok()
            .flatten()
            .is_some_and(|u| u.uid == euid);
    if is_us {
        return SocketMode::User;
    }
    let egid = nix::unistd::getegid();
    let in_group = group.is_empty()
        || group.parse::<u32>().is_ok_and(|g| g == egid.as_raw())
        || nix::unistd::Group::from_name(group)
            .ok()
            .flatten()
            .is_some_and(|g| g.gid == egid);
    if in_group {
        SocketMode::Group
    } else {
        SocketMode::All
    }
}

/// Create, bind and listen. An existing socket that accepts a connection belongs to a running
/// agent: refuse. One that refuses it (or any other file) is stale: replace it.
pub fn bind_socket(cfg: &Config) -> Result<Bound, BindError> {
    let path = cfg.metadata_proxy_socket.as_path();
    if let Some(dir) = path.parent() {
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(err("create directory for", path))?;
        }
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(InUse {
            path: path.to_owned(),
        }
        .into());
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("remove stale", path)(e).into()),
    }
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| err("create socket for", path)(e.into()))?;
    let addr = UnixAddr::new(path).map_err(|e| err("address", path)(e.into()))?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map_err(|e| err("bind", path)(e.into()))?;
    // The configured mode before `listen`: until then every connect is refused, so no local
    // user gets a connection while the file still has the umask's mode (0777 under umask 0),
    // which would stay open to an agent that trusts what its clients say about the instance.
    // Not through a symlink swapped in for the socket meanwhile (the agent may be root).
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        path,
        nix::sys::stat::Mode::from_bits_truncate(mode_bits(cfg)),
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .map_err(|e| err("chmod", path)(e.into()))?;
    let backlog =
        Backlog::new(cfg.metadata_backlog.min(i32::MAX as u32) as i32).unwrap_or(Backlog::MAXCONN);
    listen(&fd, backlog).map_err(|e| err("listen on", path)(e.into()))?;
    let meta = std::fs::symlink_metadata(path).map_err(err("stat", path))?;
    let std_listener = std::os::unix::net::UnixListener::from(fd);
    let listener =
        tokio::net::UnixListener::from_std(std_listener).map_err(err("register", path))?;
    Ok(Bound {
        listener,
        file: SocketFile {
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deduce_follows_neutron() {
        assert_eq!(deduce("", ""), SocketMode::User);
        assert_eq!(deduce("root", "whatever"), SocketMode::User);
        assert_eq!(deduce("0", ""), SocketMode::User);
        let euid = nix::unistd::geteuid().as_raw().to_string();
        assert_eq!(deduce(&euid, "x"), SocketMode::User);
        assert_eq!(deduce("no-such-user-ns", ""), SocketMode::Group);
        let egid = nix::unistd::getegid().as_raw().to_string();
        assert_eq!(deduce("no-such-user-ns", &egid), SocketMode::Group);
        assert_eq!(
            deduce("no-such-user-ns", "no-such-group-ns"),
            SocketMode::All
        );
    }
}
