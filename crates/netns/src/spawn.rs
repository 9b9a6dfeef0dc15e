//! `Spawn`: start a program with `posix_spawn(3)` instead of fork + exec.
//!
//! glibc's `posix_spawn` runs the child on its own small stack with `CLONE_VM | CLONE_VFORK`:
//! the parent's page tables are never copied and the child never tears down a copy of them
//! at exec. A fork costs in proportion to the parent's memory and open files, so a supervisor
//! holding thousands of proxies paid more for each next one (issue 19: `copy_process`,
//! `dup_mmap`, `exit_mmap` and COW faults were a third of the spawner's CPU at 600 proxies).
//! The price is that no code of ours runs in the child: everything it needs is expressed as
//! spawn attributes and file actions (descriptors placed on fixed numbers, every other one
//! closed, stdin/stdout on `/dev/null`, a new session, default signal dispositions, an empty
//! signal mask). Entering a namespace is not among them: the program does it itself from an
//! inherited descriptor (see `ns_contract::spawn`).
//!
//! Needs glibc 2.34 (`posix_spawn_file_actions_addclosefrom_np`) and Linux 5.3 (`pidfd_open`).

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// A program to start; see the module documentation.
#[derive(Debug)]
pub struct Spawn {
    program: OsString,
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    fds: Vec<(OwnedFd, RawFd)>,
    new_session: bool,
}

/// A started child: its pid and a pidfd on it (opened while it could not yet be reaped, so
/// the pidfd is the child's for sure). The caller reaps it (`waitid(P_PIDFD)`).
#[derive(Debug)]
pub struct Spawned {
    pub pid: u32,
    pub pidfd: OwnedFd,
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `libc` status (an errno value, 0 for success) as a result.
fn check(r: libc::c_int) -> io::Result<()> {
    match r {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

impl Spawn {
    /// `program` is a path, or a bare name looked up in `PATH` (`posix_spawnp`); argv[0] is
    /// `program`. The environment starts empty: pass every variable the child gets.
    pub fn new(program: impl Into<OsString>) -> Spawn {
        let program = program.into();
        Spawn {
            argv: vec![program.clone()],
            program,
            env: Vec::new(),
            fds: Vec::new(),
            new_session: false,
        }
    }

    /// Append arguments.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(&mut self, args: I) -> &mut Self {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Add (or replace) an environment variable.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        let key = key.as_ref();
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The child gets `fd` as descriptor number `child` (without close-on-exec). Our copy is
    /// closed once the spawn returns. Every descriptor above the highest `child` number is
    /// closed in the child, whatever its flags: nothing the parent holds leaks in.
    pub fn fd(&mut self, fd: OwnedFd, child: RawFd) -> &mut Self {
        self.fds.retain(|(_, c)| *c != child);
        self.fds.push((fd, child));
        self
    }

    /// The child starts in a new session (`setsid(2)`, `POSIX_SPAWN_SETSID`): no controlling
    /// terminal, and no signal aimed at the parent's session or process group reaches it.
    pub fn new_session(&mut self) -> &mut Self {
        self.new_session = true;
        self
    }

    /// The program, for messages.
    pub fn program(&self) -> &OsStr {
        &self.program
    }

    /// Start it: stdin and stdout on `/dev/null`, stderr shared, the mapped descriptors and
    /// nothing above them, default signal dispositions, empty signal mask. An exec failure
    /// (missing program, not executable) is this call's error.
    pub fn spawn(self) -> io::Result<Spawned> {
        let program = cstring(&self.program)?;
        let argv = self
            .argv
            .iter()
            .map(|a| cstring(a))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = self
            .env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone();
                kv.push("=");
                kv.push(v);
                cstring(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut argv_p: Vec<*mut libc::c_char> =
            argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
        argv_p.push(std::ptr::null_mut());
        let mut envp_p: Vec<*mut libc::c_char> =
            envp.iter().map(|a| a.as_ptr().cast_mut()).collect();
        envp_p.push(std::ptr::null_mut());
        // A source below the first free number could be overwritten by an earlier dup2 in
        // the child: move such sources above every target first (in the parent).
        let first_free = self
            .fds
            .iter()
            .map(|(_, c)| c + 1)
            .max()
            .unwrap_or(3)
            .max(3);
        let mut sources: Vec<(OwnedFd, RawFd)> = Vec::with_capacity(self.fds.len());
        for (fd, child) in self.fds {
            let fd = if fd.as_raw_fd() < first_free {
                rustix_dupfd(&fd, first_free)?
            } else {
                fd
            };
            sources.push((fd, child));
        }
        let actions = Spawnobj::new(
            libc::posix_spawn_file_actions_init,
            libc::posix_spawn_file_actions_destroy,
        )?;
        let devnull = c"/dev/null";
        // SAFETY: `actions` is initialised; the path is a valid C string that the call copies.
        check(unsafe {
            libc::posix_spawn_file_actions_addopen(
                actions.as_ptr(),
                0,
                devnull.as_ptr(),
                libc::O_RDONLY,
                0,
            )
        })?;
        // SAFETY: as above.
        check(unsafe {
            libc::posix_spawn_file_actions_addopen(
                actions.as_ptr(),
                1,
                devnull.as_ptr(),
                libc::O_WRONLY,
                0,
            )
        })?;
        for (fd, child) in &sources {
            // SAFETY: `actions` is initialised; both are plain descriptor numbers, the source
            // open until the spawn returns (owned by `sources`). dup2 clears FD_CLOEXEC on
            // the copy.
            check(unsafe {
                libc::posix_spawn_file_actions_adddup2(actions.as_ptr(), fd.as_raw_fd(), *child)
            })?;
        }
        // SAFETY: `actions` is initialised; closes every descriptor from `first_free` up in
        // the child (close_range), after the dup2s above.
        check(unsafe {
            libc::posix_spawn_file_actions_addclosefrom_np(actions.as_ptr(), first_free)
        })?;
        let attr = Spawnobj::new(libc::posix_spawnattr_init, libc::posix_spawnattr_destroy)?;
        let mut flags =
            (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short;
        if self.new_session {
            flags |= libc::POSIX_SPAWN_SETSID;
        }
        // SAFETY: `attr` is initialised; the sigset_t values are initialised by
        // sigemptyset/sigfillset before use and copied by the setters.
        unsafe {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            check(libc::posix_spawnattr_setsigmask(attr.as_ptr(), &empty))?;
            check(libc::posix_spawnattr_setsigdefault(attr.as_ptr(), &all))?;
            check(libc::posix_spawnattr_setflags(attr.as_ptr(), flags))?;
        }
        let mut pid: libc::pid_t = 0;
        let by_path = self.program.as_bytes().contains(&b'/');
        let call = if by_path {
            libc::posix_spawn
        } else {
            libc::posix_spawnp
        };
        // SAFETY: every pointer is valid for the call: `program`, `argv` and `envp` own the
        // strings and the pointer arrays are NULL-terminated; `actions` and `attr` are
        // initialised. glibc runs the child with CLONE_VM|CLONE_VFORK, so this thread waits
        // until the child has exec'd (or failed to, which is returned here).
        let r = unsafe {
            call(
                &mut pid,
                program.as_ptr(),
                actions.as_ptr(),
                attr.as_ptr(),
                argv_p.as_ptr(),
                envp_p.as_ptr(),
            )
        };
        drop(sources);
        check(r)?;
        let pid_u = pid as u32;
        // The child is ours and unreaped (nobody here waits for any pid), so this pidfd can
        // only be for it.
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // No way to watch it: do not leave it running unwatched.
            // SAFETY: kill and waitpid on the pid of our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(e);
        }
        // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Spawned { pid: pid_u, pidfd })
    }
}

/// `fcntl(F_DUPFD_CLOEXEC, min)`.
fn rustix_dupfd(fd: &OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a descriptor we own returns a new descriptor or -1.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a fresh descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// A `posix_spawn_file_actions_t` or `posix_spawnattr_t`: initialised by `init`, destroyed
/// by `destroy` on drop, at a stable address.
struct Spawnobj<T> {
    value: Box<T>,
    destroy: unsafe extern "C" fn(*mut T) -> libc::c_int,
}

impl<T> Spawnobj<T> {
    fn new(
        init: unsafe extern "C" fn(*mut T) -> libc::c_int,
        destroy: unsafe extern "C" fn(*mut T) -> libc::c_int,
    ) -> io::Result<Spawnobj<T>> {
        // SAFETY: both types are plain C structs for which all-zero bytes are a valid (if
        // meaningless) value; `init` then initialises it.
        let mut value = Box::new(unsafe { std::mem::zeroed::<T>() });
        // SAFETY: `value` points to writable memory of the type `init` expects.
        check(unsafe { init(&mut *value) })?;
        Ok(Spawnobj { value, destroy })
    }

    fn as_ptr(&self) -> *mut T {
        std::ptr::from_ref(&*self.value).cast_mut()
    }
}

impl<T> Drop for Spawnobj<T> {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, destroyed once.
        unsafe { (self.destroy)(&mut *self.value) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn reap(s: &Spawned) -> i32 {
        let mut status = 0;
        // SAFETY: waitpid on our own child's pid.
        unsafe { libc::waitpid(s.pid as i32, &mut status, 0) };
        status
    }

    /// The mapped descriptor arrives on its number; a descriptor the parent holds without
    /// CLOEXEC does not; stdin is /dev/null; the child leads its own session; the
    /// environment is exactly the one given.
    #[test]
    fn fds_env_session_and_stdio() {
        let (r, w) = nix::unistd::pipe().expect("pipe");
        let leak = std::fs::File::open("/proc/self/stat").expect("open");
        let leak_fd = nix::fcntl::fcntl(&leak, nix::fcntl::FcntlArg::F_DUPFD(100)).expect("dup");
        // SAFETY: `leak_fd` was just returned by F_DUPFD and is owned by nothing else.
        let _leak = unsafe { OwnedFd::from_raw_fd(leak_fd) };
        let mut s = Spawn::new("/bin/sh");
        s.args([
            "-c",
            "ls /proc/self/fd >&3; echo \"env=$A:$HOME\" >&3; \
             cut -d' ' -f6 /proc/$$/stat >&3; echo $$ >&3; readlink /proc/self/fd/0 >&3",
        ])
        .env("A", "1")
        .env("PATH", "/usr/bin:/bin")
        .fd(w, 3)
        .new_session();
        let child = s.spawn().expect("spawn");
        let mut out = String::new();
        std::fs::File::from(r)
            .read_to_string(&mut out)
            .expect("read");
        assert_eq!(reap(&child), 0, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(!lines.contains(&leak_fd.to_string().as_str()), "{out}");
        assert!(lines.contains(&"3"), "{out}");
        assert!(out.contains("env=1:\n"), "{out}");
        let sid = lines.iter().rev().nth(2).expect("sid").trim();
        let pid = lines.iter().rev().nth(1).expect("pid").trim();
        assert_eq!(sid, pid, "session leader: {out}");
        assert_eq!(lines.last().copied(), Some("/dev/null"), "{out}");
    }

    #[test]
    fn exec_failure_is_the_spawn_error() {
        let e = Spawn::new("/nonexistent/prog")
            .spawn()
            .expect_err("missing");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let e = Spawn::new("no-such-program-nsm")
            .spawn()
            .expect_err("missing");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
