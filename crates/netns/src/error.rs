//! The crate's typed error and the mapping of OS errors to it.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong with a namespace, an interface or a netlink request.
/// Each message names the namespace, path or interface concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `what` is e.g. "namespace qrouter-x" or "interface tap0 in namespace qrouter-x";
    /// the message reads "no such namespace qrouter-x".
    #[error("no such {what}")]
    NotFound { what: String },
    /// EACCES/EPERM: namespace operations need root (CAP_SYS_ADMIN).
    #[error("permission denied: {} (needs root / CAP_SYS_ADMIN)", path.display())]
    PermissionDenied { path: PathBuf },
    /// The file exists but is not a network namespace (e.g. a mount namespace, a plain file,
    /// or a `/run/netns` entry whose bind mount is gone).
    #[error("{} is not a network namespace", path.display())]
    NotNetns { path: PathBuf },
    /// A `/run/netns/NAME` entry that is a symbolic link (e.g. to `/proc/PID/ns/net`): never
    /// followed, since what we do there as root would then happen wherever it points.
    #[error("{} is a symbolic link, not followed (bind-mount the namespace there instead: `ip netns attach NAME PID`)", path.display())]
    Symlink { path: PathBuf },
    #[error("invalid namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// `what` is e.g. "namespace qrouter-x"; the message reads "namespace qrouter-x already exists".
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("{op} {target}: {source}")]
    Io {
        op: &'static str,
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("{op} {target}: {reason}")]
    Netlink {
        op: &'static str,
        target: String,
        reason: String,
    },
}

impl Error {
    /// An I/O error on `path`, with ENOENT, EACCES/EPERM mapped to their own variants.
    /// `what` names the object for NotFound ("namespace NAME").
    pub(crate) fn from_io(op: &'static str, path: &Path, what: &str, err: io::Error) -> Error {
        match err.raw_os_error() {
            Some(libc::ENOENT) => Error::NotFound {
                what: what.to_owned(),
            },
            Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied {
                path: path.to_owned(),
            },
            _ => Error::Io {
                op,
                target: path.display().to_string(),
                source: err,
            },
        }
    }

    /// Same as [`Error::from_io`] for a nix errno.
    pub(crate) fn from_errno(
        op: &'static str,
        path: &Path,
        what: &str,
        errno: nix::Error,
    ) -> Error {
        Error::from_io(op, path, what, io::Error::from(errno))
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enoent_maps_to_not_found_naming_the_namespace() {
        let e = Error::from_io(
            "open",
            Path::new("/run/netns/qrouter-x"),
            "namespace qrouter-x",
            io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "no such namespace qrouter-x");
    }

    #[test]
    fn eacces_and_eperm_map_to_permission_denied() {
        for code in [libc::EACCES, libc::EPERM] {
            let e = Error::from_io(
                "open",
                Path::new("/run/netns/a"),
                "namespace a",
                io::Error::from_raw_os_error(code),
            );
            assert!(
                matches!(e, Error::PermissionDenied { ref path } if path == Path::new("/run/netns/a"))
            );
            assert!(e.to_string().contains("/run/netns/a"), "{e}");
        }
    }

    #[test]
    fn other_errors_keep_op_and_target() {
        let e = Error::from_errno("open", Path::new("/x"), "namespace x", nix::Error::EIO);
        assert!(matches!(e, Error::Io { op: "open", .. }));
        assert!(e.to_string().starts_with("open /x: "), "{e}");
    }
}
