//! The proxy as a process: daemonizing (by re-executing itself before any runtime exists),
//! the pid file, dropping privileges after bind, and telling the starter it is ready.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Gid, Group, Uid, User};
use ns_contract::notify::State;

use crate::error::{Error, Result};

/// Set in the environment of the re-executed daemon child.
pub const DAEMON_ENV: &str = "NS_METADATA_PROXY_DAEMON_CHILD";
const READY: &[u8] = b"READY=1\n";

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, source }
}

/// `--daemonize`, parent side. A tokio runtime cannot survive fork, and this crate has no
/// unsafe to call fork anyway, so the parent re-executes itself (same argv, so the id stays
/// in /proc/PID/cmdline) with one more `--ready-fd` on a pipe, and returns the exit code to
/// use: 0 once the child wrote READY, 1 if it exited first (its one-line reason went to the
/// shared stderr). Returns `None` in the child, which must call [`become_daemon`].
/// `ready_env`: pass the pipe in this environment variable instead of `--ready-fd`, so the
/// child's argv stays exactly the parent's (the haproxy drop-in: `haproxy -f FILE`).
pub fn daemonize_parent(ready_env: Option<&str>) -> Result<Option<i32>> {
    if std::env::var_os(DAEMON_ENV).is_some() {
        return Ok(None);
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Io {
        op: "pipe",
        source: e.into(),
    })?;
    // The write end must survive exec in the child.
    nix::fcntl::fcntl(
        &w,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(|e| Error::Io {
        op: "fcntl",
        source: e.into(),
    })?;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "ns-metadata-proxy".into());
    let fd = w.as_raw_fd().to_string();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0(argv0).args(args);
    match ready_env {
        Some(var) => cmd.env(var, &fd),
        None => cmd.arg("--ready-fd").arg(&fd),
    };
    let mut child = cmd
        .env(DAEMON_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(io("spawn daemon"))?;
    drop(w);
    let mut got = Vec::with_capacity(16);
    let _ = File::from(r).read_to_end(&mut got);
    if got.starts_with(READY) {
        return Ok(Some(0));
    }
    let status = child.wait().map_err(io("wait for daemon"))?;
    Ok(Some(if status.success() {
        1
    } else {
        status.code().unwrap_or(1)
    }))
}

/// Daemon child: leave the starter's session (no controlling terminal).
pub fn become_daemon() -> Result<()> {
    nix::unistd::setsid().map_err(|e| Error::Io {
        op: "setsid",
        source: e.into(),
    })?;
    Ok(())
}

/// After READY in a daemon: stop writing to the starter's terminal.
pub fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// The starter's readiness channels, opened early (before the privilege drop makes
/// /proc/self/fd unreadable).
#[derive(Debug)]
pub struct Readiness {
    fds: Vec<(i32, File)>,
}

impl Readiness {
    /// Open each inherited `--ready-fd` through /proc/self/fd (no unsafe needed): a bad fd
    /// is a start-up error.
    pub fn open(fds: &[i32]) -> Result<Readiness> {
        let mut out = Vec::new();
        for &fd in fds {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/self/fd/{fd}"))
                .map_err(|source| Error::Config(format!("--ready-fd {fd}: {source}")))?;
            out.push((fd, f));
        }
        Ok(Readiness { fds: out })
    }

    /// Write READY=1 to every ready fd and close it; tell systemd through $NOTIFY_SOCKET
    /// (`READY=1`, [`ns_contract::notify`]).
    pub fn notify(self) {
        for (fd, mut f) in self.fds {
            if let Err(e) = f.write_all(READY) {
                tracing::warn!(fd, err = %e, "cannot write readiness");
            }
            drop(f);
            // The inherited descriptor itself: the starter waits for its EOF too.
            let _ = nix::unistd::close(fd);
        }
        sd_notify(State::Ready);
    }
}

/// The spawner's namespace hand-over (`ns_contract::spawn`, issue 19): when
/// `NS_METADATA_SPAWNER_NETNS_FD` is set, enter the namespace on that inherited descriptor
/// with this (main, only) thread, so the whole process runs in it as it did when the spawner
/// entered it between fork and exec, and close the descriptor. Refused (a one-line error)
/// unless the process looks started by the spawner: its state-dir marker and a `--ready-fd`
/// present, no `--netns`, no `--daemonize`, not the haproxy drop-in. Call before any thread
/// exists. Returns whether it entered one.
pub fn enter_spawner_netns(cfg: &crate::Config, dropin: bool) -> Result<bool> {
    use ns_contract::spawn::{NETNS_FD, NETNS_FD_ENV, STATE_ENV};
    let Some(value) = std::env::var_os(NETNS_FD_ENV) else {
        return Ok(false);
    };
    let refuse = |why: &str| {
        Err(Error::Config(format!(
            "{NETNS_FD_ENV} is set but {why}: it is internal to ns-metadata-spawner;              use --netns to choose a namespace"
        )))
    };
    if value != NETNS_FD.to_string().as_str() {
        return refuse(&format!("is not {NETNS_FD}"));
    }
    if std::env::var_os(STATE_ENV).is_none() {
        return refuse(&format!("{STATE_ENV} is not (not started by the spawner)"));
    }
    if cfg.netns.is_some() || cfg.daemonize || dropin || cfg.ready_fds.is_empty() {
        return refuse("--netns, --daemonize or the haproxy drop-in is used, or --ready-fd is not");
    }
    let path = format!("/proc/self/fd/{NETNS_FD}");
    // Checked to be a network namespace (not any descriptor that happens to be open).
    let ns = ns_netns::Netns::open_path(Path::new(&path)).map_err(|source| Error::Netns {
        spec: format!("{NETNS_FD_ENV}={NETNS_FD}"),
        source,
    })?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| Error::Io {
        op: "setns into the spawner's namespace",
        source: e.into(),
    })?;
    drop(ns);
    // The inherited copy: nothing else may use it, and no child may inherit it.
    let _ = nix::unistd::close(NETNS_FD);
    // Single-threaded still, so changing the environment is sound; no child (none is
    // started today) inherits a name for a closed descriptor. `/proc/PID/environ` keeps
    // showing the block the process was started with.
    std::env::remove_var(NETNS_FD_ENV);
    Ok(true)
}

/// SIGTERM/SIGINT: tell systemd the service is stopping (`STOPPING=1`).
pub fn notify_stopping() {
    sd_notify(State::Stopping);
}

fn sd_notify(state: State) {
    if let Err(e) = ns_contract::notify::notify(&[state]) {
        tracing::warn!(err = %e, "cannot notify NOTIFY_SOCKET");
    }
}

/// Make room for `max_connections` VM sockets plus as many agent sockets (haproxy raises
/// its limit the same way from `maxconn`): raise the soft RLIMIT_NOFILE up to the hard one.
pub fn raise_nofile(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let want = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(64);
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let target = want.min(hard);
        if soft < target {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
                tracing::warn!(err = %e, "cannot raise the open-files limit");
            }
        }
        if want > hard {
            tracing::warn!(
                hard,
                want,
                "open-files hard limit is below what --max-connections needs"
            );
        }
    }
}

/// The shared server: every descriptor the hard limit allows (thousands of namespaces'
/// listeners and their connections; [`ns_contract::rlimit`]). The soft limit now in force.
pub fn raise_nofile_to_hard() -> u64 {
    match ns_contract::rlimit::raise_nofile_to_hard() {
        Ok((soft, _)) => soft,
        Err(e) => {
            tracing::warn!(err = %e, "cannot raise the open-files limit");
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(1024, |(soft, _)| soft)
        }
    }
}

/// The pid file: flock'ed for the process's life, like Neutron's old proxy daemon.
///
/// The proxy writes it as root, often in a directory others can write to, so the path is
/// never trusted: it is opened without following a symlink (`O_NOFOLLOW`), must be a regular
/// file with one link, and an existing file must hold nothing or a pid (otherwise it may be
/// someone else's file, which must not be truncated). At exit it is unlinked only if the path
/// still names the file created here (same device and inode).
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    /// `(st_dev, st_ino)` of the file we locked and wrote.
    id: (u64, u64),
    _lock: Flock<File>,
}

/// Whether an existing pid file's content is something we may overwrite: empty, or one
/// decimal pid (Neutron's files and ours: the bare number, an optional newline).
fn holds_a_pid(text: &str) -> bool {
    let t = text.trim();
    t.is_empty() || (t.len() <= 10 && t.bytes().all(|b| b.is_ascii_digit()))
}

impl PidFile {
    /// Lock and write our pid. Fails if another live process holds the lock, if the path is
    /// a symlink or not a regular file, or if the file holds something other than a pid.
    pub fn create(path: &Path) -> Result<PidFile> {
        use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _};
        let err = |reason: String| Error::PidFile {
            path: path.to_owned(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            // O_NONBLOCK: a FIFO planted at the path must not hang start-up (refused below).
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(nix::libc::ELOOP) {
                    err("is a symlink; refusing to follow it".into())
                } else {
                    err(e.to_string())
                }
            })?;
        let meta = f.metadata().map_err(|e| err(e.to_string()))?;
        if !meta.file_type().is_file() {
            return Err(err("not a regular file; refusing to use it".into()));
        }
        if meta.nlink() > 1 {
            return Err(err(format!(
                "has {} hard links; refusing to write through them",
                meta.nlink()
            )));
        }
        let mut lock = Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(mut f, e)| {
            let mut old = String::new();
            let _ = f.read_to_string(&mut old);
            err(format!("locked by running process {} ({e})", old.trim()))
        })?;
        let mut old = String::new();
        // Bounded: a pid is a few bytes, and a large file is not ours anyway.
        let _ = (&mut *lock).take(64).read_to_string(&mut old);
        if !holds_a_pid(&old) {
            return Err(err(
                "exists and does not hold a pid (it may be another program's file); \
                 refusing to overwrite it"
                    .into(),
            ));
        }
        // A bare pid: Neutron reads the file with int() at any moment, so it must never see
        // it empty (truncate, then write, showed it "" and its ProcessManager a pid of None).
        // One write at offset 0, `pid\n` padded with spaces over a longer old pid (int()
        // ignores them), then the padding is cut off, leaving `pid\n`.
        let pid = std::process::id().to_string();
        let text = format!("{:<width$}", format!("{pid}\n"), width = old.len());
        lock.write_all_at(text.as_bytes(), 0)
            .map_err(|e| err(e.to_string()))?;
        lock.set_len(pid.len() as u64 + 1)
            .map_err(|e| err(e.to_string()))?;
        Ok(PidFile {
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
            _lock: lock,
        })
    }

    /// Remove the file (still holding the lock, so no other proxy raced in), but only if the
    /// path still names the file we created: one put there since is someone else's.
    pub fn remove(self) {
        use std::os::unix::fs::MetadataExt as _;
        let path = self.path.display();
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    // E.g. the directory is root-owned and we dropped privileges (LP#1907695).
                    tracing::warn!(%path, err = %e, "cannot remove pid file");
                }
            }
            Ok(_) => tracing::warn!(%path, "pid file was replaced by another file; left alone"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(%path, err = %e, "cannot check pid file before removing it"),
        }
    }
}

fn lookup_user(u: &str) -> Result<User> {
    let err = |r: String| Error::Privileges(format!("user {u:?}: {r}"));
    let found = match u.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(u),
    };
    found
        .map_err(|e| err(e.to_string()))?
        .ok_or_else(|| err("no such user".into()))
}

fn lookup_group(g: &str) -> Result<Gid> {
    if let Ok(gid) = g.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    let err = |r: String| Error::Privileges(format!("group {g:?}: {r}"));
    Ok(Group::from_name(g)
        .map_err(|e| err(e.to_string()))?
        .ok_or_else(|| err("no such group".into()))?
        .gid)
}

/// What to drop to, resolved before binding so a typo fails start-up early.
#[derive(Debug, Clone, Copy)]
pub struct Creds {
    uid: Option<Uid>,
    gid: Option<Gid>,
}

impl Creds {
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Creds> {
        let user = user.map(lookup_user).transpose()?;
        let gid = match group {
            Some(g) => Some(lookup_group(g)?),
            None => user.as_ref().map(|u| u.gid),
        };
        Ok(Creds {
            uid: user.map(|u| u.uid),
            gid,
        })
    }

    /// setgroups([gid]), setgid, setuid — in that order, after binding.
    pub fn drop_privileges(self) -> Result<()> {
        let fail = |what: &str, e: nix::Error| Error::Privileges(format!("{what}: {e}"));
        if let Some(gid) = self.gid {
            if Gid::effective() != gid || Uid::effective().is_root() {
                if Uid::effective().is_root() {
                    nix::unistd::setgroups(&[gid]).map_err(|e| fail("setgroups", e))?;
                }
                nix::unistd::setgid(gid).map_err(|e| fail("setgid", e))?;
            }
        }
        if let Some(uid) = self.uid {
            if Uid::effective() != uid {
                nix::unistd::setuid(uid).map_err(|e| fail("setuid", e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_locks_and_removes() {
        let p = std::env::temp_dir().join(format!("nsmp-pid-{}", std::process::id()));
        let a = PidFile::create(&p).expect("first");
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!(text.trim(), std::process::id().to_string());
        let e = PidFile::create(&p).expect_err("locked");
        assert!(e.to_string().contains("locked"), "{e}");
        a.remove();
        assert!(!p.exists());
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nsmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn pid_file_symlink_is_refused_and_victim_kept() {
        let d = scratch("pid-symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious\n").expect("victim");
        let p = d.join("proxy.pid");
        std::os::unix::fs::symlink(&victim, &p).expect("symlink");
        let e = PidFile::create(&p).expect_err("symlink refused");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "precious\n"
        );
        // A dangling symlink is not followed to create its target either.
        let dangling = d.join("dangling.pid");
        std::os::unix::fs::symlink(d.join("made"), &dangling).expect("symlink");
        assert!(PidFile::create(&dangling).is_err());
        assert!(!d.join("made").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn pid_file_with_other_content_is_refused() {
        let d = scratch("pid-text");
        let p = d.join("proxy.pid");
        std::fs::write(&p, "root:x:0:0\n").expect("write");
        let e = PidFile::create(&p).expect_err("not a pid");
        assert!(e.to_string().contains("does not hold a pid"), "{e}");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "root:x:0:0\n");
        // A stale pid (a proxy that died) and an empty file are taken over; an old pid longer
        // than any real one leaves no padding behind.
        std::fs::write(&p, "99999999\n").expect("write");
        let a = PidFile::create(&p).expect("stale pid file reused");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            format!("{}\n", std::process::id())
        );
        a.remove();
        // Not a regular file.
        let e = PidFile::create(&d).expect_err("directory refused");
        assert!(!e.to_string().is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Neutron reads the pid file with `int()` at any moment (its ProcessMonitor, every
    /// `check_child_processes_interval`): a rewrite must never show it an empty file, or it
    /// thinks the proxy is gone for a moment (seen as `pid=None, active=True` in CI).
    #[test]
    fn pid_file_rewrite_never_reads_empty() {
        let d = scratch("pid-rewrite");
        let p = d.join("proxy.pid");
        std::fs::write(&p, "4294967295\n").expect("a longer stale pid");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = std::fs::read_to_string(&p).expect("read");
                    if text.trim().parse::<u32>().is_err() {
                        bad.push(text);
                    }
                }
                bad
            })
        };
        for _ in 0..3000 {
            // Dropped without remove: the next create rewrites the file in place.
            drop(PidFile::create(&p).expect("create"));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let bad = reader.join().expect("reader");
        assert!(
            bad.is_empty(),
            "{} reads did not parse: {:?}",
            bad.len(),
            &bad[..bad.len().min(3)]
        );
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            format!("{}\n", std::process::id())
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn replaced_pid_file_is_left_alone() {
        let d = scratch("pid-replaced");
        let p = d.join("proxy.pid");
        let a = PidFile::create(&p).expect("create");
        // Another program puts its own file at the path while we run.
        std::fs::remove_file(&p).expect("unlink ours");
        std::fs::write(&p, "theirs\n").expect("theirs");
        a.remove();
        assert_eq!(
            std::fs::read_to_string(&p).expect("still there"),
            "theirs\n"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unknown_user_fails_early() {
        assert!(Creds::resolve(Some("nsmp-no-such-user"), None).is_err());
        assert!(Creds::resolve(None, Some("nsmp-no-such-group")).is_err());
        assert!(Creds::resolve(Some("0"), Some("0")).is_ok());
    }
}
