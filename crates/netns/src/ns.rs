//! `Netns`: an open network-namespace file descriptor, its identity, and running code inside it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use crate::error::{Error, Result};
use crate::manage::{validate_name, NETNS_RUN_DIR};

/// An open network namespace. The fd stays open for the handle's lifetime, so the namespace
/// cannot vanish under it (even if its `/run/netns` bind mount is deleted). `Send + Sync`.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: PathBuf,
    name: Option<String>,
    dev: u64,
    inode: u64,
}

impl Netns {
    /// Open a namespace by name (`NAME` -> `/run/netns/NAME`) or, when `spec` contains a '/',
    /// by path (`/proc/PID/ns/net`, a bind mount elsewhere).
    pub fn open(spec: &str) -> Result<Netns> {
        if spec.contains('/') {
            return Netns::open_path(Path::new(spec));
        }
        validate_name(spec)?;
        let path = Path::new(NETNS_RUN_DIR).join(spec);
        Netns::open_inner(
            &path,
            Some(spec.to_owned()),
            &format!("namespace {spec}"),
            Follow::No,
        )
    }

    /// Open a namespace file by path, e.g. `/proc/PID/ns/net` or a bind mount.
    /// A path directly under `/run/netns` gets its [`Netns::name`].
    pub fn open_path(path: &Path) -> Result<Netns> {
        let name = match (path.parent(), path.file_name()) {
            (Some(dir), Some(file)) if dir == Path::new(NETNS_RUN_DIR) => {
                file.to_str().map(str::to_owned)
            }
            _ => None,
        };
        let what = match &name {
            Some(n) => format!("namespace {n}"),
            None => format!("namespace {}", path.display()),
        };
        // A path given as such may be a magic link (`/proc/PID/ns/net`); a name may not.
        Netns::open_inner(path, name, &what, Follow::Yes)
    }

    /// The calling thread's network namespace.
    pub fn current() -> Result<Netns> {
        let tid = nix::unistd::gettid();
        let path = PathBuf::from(format!("/proc/self/task/{tid}/ns/net"));
        Netns::open_inner(&path, None, "namespace of the current thread", Follow::Yes)
    }

    /// A handle on an already open namespace fd (e.g. from `SIOCGSKNS`), checked to be one.
    pub(crate) fn from_parts(fd: OwnedFd, path: PathBuf, dev: u64, inode: u64) -> Result<Netns> {
        check_is_netns(fd.as_fd(), &path)?;
        Ok(Netns {
            fd,
            path,
            name: None,
            dev,
            inode,
        })
    }

    fn open_inner(path: &Path, name: Option<String>, what: &str, follow: Follow) -> Result<Netns> {
        // O_CLOEXEC (std's default): children get the namespace only through CommandExt.
        // O_NONBLOCK: a FIFO planted in /run/netns must not block the opening thread (a
        // runtime worker) until someone writes to it; it is refused below like any file that
        // is not a namespace. O_NOFOLLOW for a name: /run/netns/NAME a link elsewhere would
        // have us add addresses and start proxies wherever it points.
        let mut flags = libc::O_NONBLOCK;
        if follow == Follow::No {
            flags |= libc::O_NOFOLLOW;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) if follow == Follow::No => Error::Symlink {
                    path: path.to_owned(),
                },
                _ => Error::from_io("open", path, what, e),
            })?;
        let meta = file
            .metadata()
            .map_err(|e| Error::from_io("stat", path, what, e))?;
        let fd = OwnedFd::from(file);
        check_is_netns(fd.as_fd(), path)?;
        Ok(Netns {
            fd,
            path: path.to_owned(),
            name,
            dev: meta.dev(),
            inode: meta.ino(),
        })
    }

    /// The path this namespace was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Some("NAME")` when opened from `/run/netns/NAME`.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The nsfs inode: same inode means same namespace (compare with `/proc/PID/ns/net`).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// The nsfs device, the other half of the identity (constant on one kernel).
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// A human label for messages: the name if any, else the path.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => self.path.display().to_string(),
        }
    }

    /// A second handle on the same namespace (dup of the fd).
    pub fn try_clone(&self) -> Result<Netns> {
        let fd = self.fd.try_clone().map_err(|e| Error::Io {
            op: "dup fd of",
            target: self.label(),
            source: e,
        })?;
        Ok(Netns {
            fd,
            path: self.path.clone(),
            name: self.name.clone(),
            dev: self.dev,
            inode: self.inode,
        })
    }

    /// Run `f` on a new dedicated std::thread that has entered this namespace; the thread exits
    /// after. Sockets created inside stay in this namespace. A panic in `f` is propagated.
    /// Never enters the namespace on the calling thread (so never on a tokio worker).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let ns = self.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || -> Result<T> {
                setns(ns.fd.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| Error::from_errno("setns", &ns.path, &ns.label(), e))?;
                drop(ns);
                Ok(f())
            })
            .map_err(|e| Error::Io {
                op: "spawn thread for",
                target: self.label(),
                source: e,
            })?;
        match thread.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl PartialEq for Netns {
    /// Same namespace (device and inode), whatever path it was opened from.
    fn eq(&self, other: &Netns) -> bool {
        self.dev == other.dev && self.inode == other.inode
    }
}
impl Eq for Netns {}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Netns {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// Whether opening a namespace file may follow a symbolic link at its last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    Yes,
    No,
}

/// NotNetns unless `fd` is an nsfs file of type CLONE_NEWNET.
fn check_is_netns(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let not_netns = || Error::NotNetns {
        path: path.to_owned(),
    };
    let fs = fstatfs(fd).map_err(|e| Error::from_errno("fstatfs", path, "file", e))?;
    if fs.filesystem_type() != NSFS_MAGIC {
        return Err(not_netns());
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the namespace type of a valid,
    // open fd borrowed for the duration of the call; it touches no memory of ours.
    let ty = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if ty < 0 {
        let err = std::io::Error::last_os_error();
        return Err(Error::Io {
            op: "ioctl NS_GET_NSTYPE on",
            target: path.display().to_string(),
            source: err,
        });
    }
    if ty != libc::CLONE_NEWNET {
        return Err(not_netns());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_namespace_is_not_netns() {
        let e = Netns::open("/proc/self/ns/mnt").expect_err("mnt ns must be rejected");
        assert!(matches!(e, Error::NotNetns { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "/proc/self/ns/mnt is not a network namespace"
        );
    }

    #[test]
    fn regular_file_is_not_netns() {
        let dir = std::env::temp_dir().join(format!("ns-netns-unit-{}", std::process::id()));
        std::fs::write(&dir, b"x").expect("write temp file");
        let r = Netns::open_path(&dir);
        std::fs::remove_file(&dir).expect("remove temp file");
        assert!(matches!(r, Err(Error::NotNetns { .. })), "{r:?}");
    }

    #[test]
    fn missing_namespace_is_not_found() {
        let e = Netns::open("ns-netns-unit-surely-absent").expect_err("absent");
        assert_eq!(
            e.to_string(),
            "no such namespace ns-netns-unit-surely-absent"
        );
        let e = Netns::open_path(Path::new("/proc/self/ns/absent")).expect_err("absent");
        assert!(e.is_not_found(), "{e:?}");
    }

    #[test]
    fn pid1_namespace_needs_privilege() {
        // Only meaningful unprivileged (as root, containers differ on whether pid 1's
        // namespace may be opened); the mapping itself is covered in error.rs.
        if nix::unistd::geteuid().is_root() {
            return;
        }
        let e = Netns::open("/proc/1/ns/net").expect_err("not root");
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
        assert!(e.to_string().contains("/proc/1/ns/net"), "{e}");
    }

    #[test]
    fn invalid_name_is_rejected_before_touching_the_fs() {
        assert!(matches!(Netns::open(".."), Err(Error::InvalidName { .. })));
        assert!(matches!(Netns::open(""), Err(Error::InvalidName { .. })));
    }

    #[test]
    fn current_namespace_opens_and_equals_proc_self() {
        // Readable unprivileged for our own process.
        let cur = Netns::current().expect("current netns");
        let by_path = Netns::open("/proc/self/ns/net").expect("open /proc/self/ns/net");
        assert_eq!(cur, by_path);
        assert_eq!(cur.inode(), by_path.inode());
        assert_eq!(cur.name(), None);
        let clone = cur.try_clone().expect("clone");
        assert_eq!(clone.inode(), cur.inode());
    }

    /// Entries planted in /run/netns (root): a symbolic link to a namespace is refused by
    /// name, not followed (but a path given as such, `/proc/self/ns/net`, still is); a FIFO
    /// is refused at once instead of blocking the opening thread until someone writes to it.
    #[test]
    fn a_planted_link_or_fifo_in_run_netns_is_refused_at_once() {
        if !nix::unistd::geteuid().is_root() || !Path::new(NETNS_RUN_DIR).is_dir() {
            return;
        }
        let base = format!("ns-netns-unit-{}", std::process::id());
        let (link, fifo) = (format!("{base}-lnk"), format!("{base}-fifo"));
        let at = |n: &str| Path::new(NETNS_RUN_DIR).join(n);
        std::os::unix::fs::symlink("/proc/self/ns/net", at(&link)).expect("symlink");
        nix::unistd::mkfifo(&at(&fifo), nix::sys::stat::Mode::S_IRUSR).expect("mkfifo");
        let by_link = Netns::open(&link);
        let by_fifo = Netns::open(&fifo);
        let _ = std::fs::remove_file(at(&link));
        let _ = std::fs::remove_file(at(&fifo));
        let e = by_link.expect_err("a link is not followed");
        assert!(matches!(e, Error::Symlink { .. }), "{e:?}");
        assert!(e.to_string().contains("symbolic link, not followed"), "{e}");
        let e = by_fifo.expect_err("a fifo is no namespace");
        assert!(matches!(e, Error::NotNetns { .. }), "{e:?}");
    }

    #[test]
    fn name_is_set_only_under_run_netns() {
        // Pure path logic: open_path fails (absent), but the name logic is exercised in
        // root tests; here check that a path spec is not validated as a name.
        let e = Netns::open("/nonexistent/dir/x").expect_err("absent");
        assert_eq!(e.to_string(), "no such namespace /nonexistent/dir/x");
    }
}
