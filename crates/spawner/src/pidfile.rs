//! Pid files `<state dir>/pids/<key>.pid` and the "is it provably our proxy" check used
//! before adopting or signalling anything: `/proc/PID/exe` is the proxy binary, argv holds
//! the exact `--router-id|--network-id ID` pair, and the start time and network namespace
//! recorded in the pid file match the process (a recycled pid, a look-alike or a process
//! that merely mentions the id never passes). Neutron's `active` (argv *contains* the id)
//! is not enough: pid files survive reboots and pids are reused.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ns_contract::{validate_id, Kind};

use crate::{Error, Result};

/// What a pid file says: `pid starttime netns-inode interface` on one line. A file of the
/// previous release holds the bare pid (`start` and `netns` are `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks since boot) when the file was written.
    pub start: Option<u64>,
    /// Inode of `/proc/PID/ns/net` when the file was written.
    pub netns: Option<u64>,
    /// The interface that got the metadata address (for the teardown).
    pub interface: Option<String>,
}

impl Record {
    /// A file of the previous release: a bare pid, nothing proves which process it meant.
    pub fn is_legacy(&self) -> bool {
        self.start.is_none()
    }

    /// The record of a live process, read from `/proc` now.
    pub fn of(pid: u32, interface: &str) -> Option<Record> {
        let info = ProcInfo::read(pid)?;
        Some(Record {
            pid,
            start: Some(info.start?),
            netns: Some(info.netns?),
            interface: Some(interface.to_owned()),
        })
    }

    fn parse(text: &str) -> Option<Record> {
        let mut f = text.split_ascii_whitespace();
        let pid = f.next()?.parse().ok().filter(|&p: &u32| p > 1)?;
        let start = f.next().map(str::parse).transpose().ok()?;
        let netns = f.next().map(str::parse).transpose().ok()?;
        let interface = f.next().map(str::to_owned);
        if f.next().is_some() || (start.is_some() && (netns.is_none() || interface.is_none())) {
            return None;
        }
        Some(Record {
            pid,
            start,
            netns,
            interface,
        })
    }

    fn line(&self) -> String {
        match (self.start, self.netns, &self.interface) {
            (Some(s), Some(n), Some(i)) => format!("{} {s} {n} {i}\n", self.pid),
            _ => format!("{}\n", self.pid),
        }
    }
}

/// The pid file of a proxy key.
pub fn path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.pid"))
}

/// Write the pid file of a live proxy (`pid starttime netns-inode interface`), read from
/// `/proc` now.
pub fn write(dir: &Path, key: &str, pid: u32, interface: &str) -> Result<()> {
    let rec = Record::of(pid, interface).ok_or_else(|| {
        Error::io(
            "read",
            format!("/proc/{pid}"),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )
    })?;
    write_record(dir, key, &rec)
}

/// Write a record atomically ([`crate::statedir::write_atomic_unsynced`]: a fresh temp file
/// opened O_EXCL|O_NOFOLLOW, 0600, so a planted file or symlink is never written through;
/// rename). Not fsync'ed (issue 19: two fsyncs per proxy were 4.5% of a cold start's CPU
/// and held a worker thread each): a crash of the spawner loses nothing (the page cache
/// outlives it, the rename is atomic), and a power loss only what the reboot makes void
/// anyway: every proxy dies with the machine and the namespaces with `/run`. A pid file
/// that is still lost is re-derived from `/proc` (the [`STATE_ENV`] scan at start: pid,
/// start time, namespace inode).
pub fn write_record(dir: &Path, key: &str, rec: &Record) -> Result<()> {
    if !dir.exists() {
        crate::statedir::prepare(dir)?;
    }
    crate::statedir::write_atomic_unsynced(dir, &format!("{key}.pid"), rec.line().as_bytes())
}

/// Read a pid file (O_NOFOLLOW: a symlink planted in its place is not followed); `None` if
/// missing or malformed.
pub fn read_record(p: &Path) -> Option<Record> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(p)
        .ok()?;
    let mut text = String::new();
    Read::by_ref(&mut f)
        .take(4096)
        .read_to_string(&mut text)
        .ok()?;
    Record::parse(&text)
}

/// The pid of a pid file; `None` if missing or malformed.
pub fn read(p: &Path) -> Option<u32> {
    read_record(p).map(|r| r.pid)
}

/// Remove a pid file; a missing file is fine.
pub fn remove(dir: &Path, key: &str) {
    let p = path(dir, key);
    if let Err(e) = std::fs::remove_file(&p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %p.display(), err = %e, "cannot remove pid file");
        }
    }
}

/// Remove the pid file of a proxy that has exited (`pid`, if known), unless it already names
/// another live process: the replacement for the same key (e.g. the router moved to another
/// namespace) may have written its own while this one was stopping.
pub fn remove_own(dir: &Path, key: &str, pid: Option<u32>) {
    match read(&path(dir, key)) {
        Some(other) if Some(other) != pid && cmdline(other).is_some() => {}
        _ => remove(dir, key),
    }
}

/// Every `(key, pid file path)` in the directory whose key is a valid id.
pub fn list(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let key = name.strip_suffix(".pid")?.to_owned();
            validate_id(&key).ok()?;
            Some((key, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The argv of a live process (`None` if gone, a zombie, or unreadable).
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None; // zombie or kernel thread
    }
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// Field 22 of `/proc/PID/stat`: the start time in clock ticks since boot. Fields are
/// counted after the last `)`, since the command name may hold spaces and parentheses.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // After the name: field 3 (state) is the first; field 22 is the 20th.
    after_name(stat)?.nth(19)?.parse().ok()
}

/// Field 3 of `/proc/PID/stat`: the process state (`R`, `S`, `T` stopped, `t` traced, ...).
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    after_name(&stat)?.next()?.chars().next()
}

/// The fields of a `/proc/PID/stat` line after the command name (field 3 first), found
/// after the last `)`.
fn after_name(stat: &str) -> Option<std::str::SplitAsciiWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_ascii_whitespace())
}

/// The inode of a process's network namespace.
pub fn netns_inode(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Whether process `pid` maps the file `(device, inode)` (a line of `/proc/PID/maps`: its
/// `major:minor` in hex and its inode). Reading another user's maps needs `CAP_SYS_PTRACE`;
/// unreadable is `false`.
pub fn maps_file(pid: u32, (dev, ino): (u64, u64)) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return false;
    };
    let want = format!(
        "{:02x}:{:02x}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    text.lines().any(|l| maps_line_is(l, &want, ino))
}

/// One `/proc/PID/maps` line (`start-end perms offset major:minor inode [path]`) is of the
/// file `dev` (as `maps` writes it) and `ino`.
fn maps_line_is(line: &str, dev: &str, ino: u64) -> bool {
    let mut f = line.split_ascii_whitespace().skip(3);
    f.next() == Some(dev) && f.next().and_then(|i| i.parse::<u64>().ok()) == Some(ino)
}

/// What the identity check looks at, read from `/proc` (a plain struct, so the rule is
/// tested with fakes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcInfo {
    /// `/proc/PID/exe`, without a ` (deleted)` suffix (a binary replaced by an upgrade).
    pub exe: Option<PathBuf>,
    pub argv: Vec<String>,
    pub start: Option<u64>,
    pub netns: Option<u64>,
}

impl ProcInfo {
    /// `None` if the process is gone or a zombie.
    pub fn read(pid: u32) -> Option<ProcInfo> {
        let argv = cmdline(pid)?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|e| {
                let s = e.to_string_lossy();
                match s.strip_suffix(" (deleted)") {
                    Some(s) => PathBuf::from(s),
                    None => e,
                }
            });
        Some(ProcInfo {
            exe,
            argv,
            start: start_time(pid),
            netns: netns_inode(pid),
        })
    }
}

/// Which proxy a pid file is expected to name.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    /// The configured `proxy_binary`.
    pub binary: &'a Path,
    /// The exact `--router-id ID` (or `--network-id ID`) pair; `None` for a key that is no
    /// longer wanted, whose proxy may carry any kind's flag.
    pub pair: Option<(Kind, &'a str)>,
}

/// Whether `info` runs `binary`: its exe is the binary, or the binary is a script (`#!`)
/// that the kernel ran as `interpreter BINARY ...` (argv[1] is the script's path).
pub fn runs(info: &ProcInfo, binary: &Path) -> bool {
    let want = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_owned());
    if info.exe.as_deref() == Some(want.as_path()) {
        return true;
    }
    let script = std::fs::File::open(&want)
        .and_then(|f| {
            let mut head = [0u8; 2];
            f.take(2).read_exact(&mut head).map(|()| head == *b"#!")
        })
        .unwrap_or(false);
    script
        && info
            .argv
            .get(1)
            .is_some_and(|a| Path::new(a) == binary || Path::new(a) == want)
}

/// The identity rule: `Ok` only for a process that is provably the proxy `rec` was written
/// for; otherwise why not (it must then never be signalled). A legacy record (bare pid)
/// proves no start time or namespace: the caller decides what more it needs.
pub fn check(info: &ProcInfo, rec: &Record, want: &Want<'_>) -> std::result::Result<(), String> {
    if !runs(info, want.binary) {
        return Err(format!(
            "runs {}, not the proxy binary",
            info.exe.as_deref().map_or_else(
                || "an unreadable executable".into(),
                |e| e.display().to_string()
            )
        ));
    }
    let pair = |flag: &str, id: Option<&str>| {
        info.argv
            .windows(2)
            .any(|w| w[0] == flag && id.is_none_or(|id| w[1] == id))
    };
    let has_pair = match want.pair {
        Some((kind, id)) => pair(kind.flag(), Some(id)),
        None => Kind::ALL.iter().any(|k| pair(k.flag(), None)),
    };
    if !has_pair {
        return Err("its arguments are not this proxy's id".into());
    }
    if let Some(start) = rec.start {
        if info.start != Some(start) {
            return Err("started after the pid file was written (recycled pid)".into());
        }
    }
    if let Some(ns) = rec.netns {
        if info.netns != Some(ns) {
            return Err("not in the namespace the pid file names".into());
        }
    }
    Ok(())
}

/// The environment variable the spawner sets in every proxy it starts: its state dir.
/// Only a proxy carrying this spawner's value may be stopped without a pid file.
pub use ns_contract::spawn::STATE_ENV;

/// Whether `pid` was started by the spawner of `state_dir`, as far as a process without a
/// pid file can prove it: its environment holds [`STATE_ENV`]`=state_dir` (readable by the
/// process's owner and by root), and each of its uids (real, effective, saved, filesystem)
/// is one of `uids`: the spawner's own and the one it gives proxies now. Anyone can set the
/// variable for a process of theirs; no local user can take those uids, so no local user can
/// make the spawner stop a process of theirs, or tear down where it runs.
pub fn started_by(pid: u32, state_dir: &Path, uids: &[u32]) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let owned = proc_uids(pid).is_some_and(|ids| ids.iter().all(|u| uids.contains(u)));
    if !owned {
        return false;
    }
    let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let mut want = format!("{STATE_ENV}=").into_bytes();
    want.extend_from_slice(state_dir.as_os_str().as_bytes());
    env.split(|&b| b == 0).any(|kv| kv == want.as_slice())
}

/// The real, effective, saved and filesystem uids of `pid` (`/proc/PID/status`, `Uid:`).
pub fn proc_uids(pid: u32) -> Option<[u32; 4]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_uids(&status)
}

fn parse_uids(status: &str) -> Option<[u32; 4]> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut ids = line.split_whitespace().map(|v| v.parse::<u32>().ok());
    let mut out = [0u32; 4];
    for slot in &mut out {
        *slot = ids.next()??;
    }
    Some(out)
}

/// Live processes running `binary` (see [`check`]): how proxies whose pid file is missing
/// are found again (`/proc` scan, done once at start). The caller applies the rest of the
/// rule (exact pair, namespace) before adopting one.
pub fn find_running(binary: &Path) -> Vec<(u32, ProcInfo)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter_map(|pid| Some((pid, ProcInfo::read(pid)?)))
        .filter(|(_, info)| runs(info, binary))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment alone proves nothing: a process carrying this state dir's variable is
    /// taken for ours only while it runs as one of the uids given (as root: a child as uid
    /// 65534 with the same variable is not).
    #[test]
    fn a_process_with_the_variable_is_ours_only_under_our_uids() {
        use std::os::unix::process::CommandExt as _;
        let dir = Path::new("/nonexistent/ns-spawner-started-by");
        let spawn = |uid: Option<u32>| {
            let mut c = std::process::Command::new("sleep");
            c.arg("30").env(STATE_ENV, dir);
            if let Some(u) = uid {
                c.uid(u).gid(u);
            }
            c.spawn().expect("sleep")
        };
        let own = rustix::process::geteuid().as_raw();
        let mut mine = spawn(None);
        let ok = ns_testkit::wait_until(std::time::Duration::from_secs(5), || {
            started_by(mine.id(), dir, &[own])
        });
        assert!(ok, "our own child with the variable");
        assert!(
            !started_by(mine.id(), Path::new("/other"), &[own]),
            "another state dir"
        );
        assert!(
            !started_by(mine.id(), dir, &[own + 1]),
            "not under our uids"
        );
        let _ = mine.kill();
        let _ = mine.wait();
        if own != 0 {
            return;
        }
        let mut theirs = spawn(Some(65534));
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(proc_uids(theirs.id()), Some([65534; 4]));
        assert!(
            !started_by(theirs.id(), dir, &[0]),
            "a local user's process with the variable"
        );
        assert!(
            started_by(theirs.id(), dir, &[0, 65534]),
            "the proxies' uid"
        );
        let _ = theirs.kill();
        let _ = theirs.wait();
    }

    #[test]
    fn the_uids_are_read_from_the_status_line() {
        let status = "Name:\tx\nUid:\t0\t1000\t0\t1000\nGid:\t0\t0\t0\t0\n";
        assert_eq!(parse_uids(status), Some([0, 1000, 0, 1000]));
        assert_eq!(parse_uids("Uid:\t0\t1\t2\n"), None, "short");
        assert_eq!(parse_uids("Uid:\t0\tx\t2\t3\n"), None, "not a number");
        assert_eq!(parse_uids("Gid:\t0\t0\t0\t0\n"), None, "no Uid line");
        let own = rustix::process::geteuid().as_raw();
        assert_eq!(
            proc_uids(std::process::id()).map(|u| u[1]),
            Some(own),
            "this process"
        );
    }

    #[test]
    fn a_mapped_file_is_found_in_proc_maps() {
        let line = "7f00-7f10 rw-s 00000000 fe:00 247282                     /x/shared.slab";
        assert!(maps_line_is(line, "fe:00", 247282));
        assert!(!maps_line_is(line, "fe:01", 247282));
        assert!(!maps_line_is(line, "fe:00", 24728));
        assert!(!maps_line_is("7f00-7f10 rw-p 00000000 00:00 0", "00:00", 1));
        assert!(!maps_line_is("", "fe:00", 0));
        // This test's own program is mapped; a file nobody maps is not.
        let exe = std::fs::metadata("/proc/self/exe").expect("exe");
        assert!(maps_file(std::process::id(), (exe.dev(), exe.ino())));
        assert!(!maps_file(std::process::id(), (exe.dev(), u64::MAX)));
        assert!(!maps_file(u32::MAX, (exe.dev(), exe.ino())));
    }

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("spawner-{name}-{}", std::process::id()))
    }

    #[test]
    fn remove_own_keeps_a_live_replacements_file() {
        let dir = tmp("pidown");
        let me = std::process::id();
        write(&dir, "k", me, "lo").expect("write");
        remove_own(&dir, "k", Some(me + 1_000_000));
        assert_eq!(
            read(&path(&dir, "k")),
            Some(me),
            "another live process's file kept"
        );
        remove_own(&dir, "k", Some(me));
        assert!(!path(&dir, "k").exists(), "own file removed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn format_is_pid_start_netns_interface_and_legacy_is_a_bare_pid() {
        let dir = tmp("pidfmt");
        let me = std::process::id();
        write(&dir, "abc", me, "tap1").expect("write");
        let text = std::fs::read_to_string(path(&dir, "abc")).expect("read");
        let want = format!(
            "{me} {} {} tap1\n",
            start_time(me).expect("start"),
            netns_inode(me).expect("netns")
        );
        assert_eq!(text, want);
        let mode = std::fs::metadata(path(&dir, "abc")).expect("stat").mode();
        assert_eq!(mode & 0o777, 0o600);
        let rec = read_record(&path(&dir, "abc")).expect("parse");
        assert!(!rec.is_legacy());
        assert_eq!(rec.interface.as_deref(), Some("tap1"));

        std::fs::write(path(&dir, "old"), "1234\n").expect("write");
        let old = read_record(&path(&dir, "old")).expect("legacy");
        assert!(old.is_legacy());
        assert_eq!((old.pid, old.netns, old.interface), (1234, None, None));
        for bad in [
            "x",
            "1",
            "12 34",
            "12 34 56",
            "12 x 56 lo",
            "12 34 56 lo extra",
            "",
        ] {
            std::fs::write(path(&dir, "bad"), bad).expect("write");
            assert_eq!(read_record(&path(&dir, "bad")), None, "{bad:?}");
        }
        // A symlink in place of a pid file is not followed.
        std::os::unix::fs::symlink(path(&dir, "abc"), path(&dir, "link")).expect("symlink");
        assert_eq!(read(&path(&dir, "link")), None);
        // A stale temp file (crash) does not block the next write; none is left.
        std::fs::write(dir.join(".abc.pid.tmp"), "junk").expect("write");
        write(&dir, "abc", me, "lo").expect("write over a stale temp file");
        assert!(!dir.join(".abc.pid.tmp").exists());
        let keys: Vec<_> = list(&dir).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["abc", "bad", "link", "old"]);
        remove(&dir, "abc");
        remove(&dir, "abc");
        assert_eq!(read(&path(&dir, "abc")), None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    /// Damaged pid files and `/proc/PID/stat` lines (seeded; `NS_FUZZ_SEED` replays): a
    /// record or `None`, never a panic; what parses writes back the same.
    #[test]
    fn mutated_pid_files_and_stat_lines_parse_or_are_refused() {
        use ns_testkit::fuzz;
        let line = b"4242 987654 4026532281 qr-1234567890\n";
        let stat = b"4242 (ns-metadata-pr) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        fuzz::run("pidfile", 0x5eed_000d, 3000, |rng, _| {
            let text = fuzz::mutate(rng, line, &[b"18446744073709551616", b" 1", b" x"]);
            if let Some(r) = Record::parse(&String::from_utf8_lossy(&text)) {
                assert_eq!(Record::parse(&r.line()), Some(r.clone()));
            }
            let s = fuzz::mutate(rng, stat, &[b")", b"(", b" 0"]);
            let _ = parse_start_time(&String::from_utf8_lossy(&s));
        });
    }

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_the_name() {
        let stat = "42 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19 20";
        assert_eq!(parse_start_time(stat), Some(777));
        assert_eq!(parse_start_time("42 (x) S 1"), None);
        let me = std::process::id();
        assert!(start_time(me).is_some());
        assert!(start_time(u32::MAX - 1).is_none());
    }

    /// The identity rule on fake process facts.
    #[test]
    fn identity_needs_exe_exact_pair_start_time_and_namespace() {
        let bin = std::env::current_exe().expect("exe");
        let rec = Record {
            pid: 100,
            start: Some(5),
            netns: Some(7),
            interface: Some("lo".into()),
        };
        let ours = ProcInfo {
            exe: Some(bin.clone()),
            argv: ["x", "--router-id", "r1", "--bind", "a"]
                .map(String::from)
                .to_vec(),
            start: Some(5),
            netns: Some(7),
        };
        let want = Want {
            binary: &bin,
            pair: Some((Kind::Router, "r1")),
        };
        assert_eq!(check(&ours, &rec, &want), Ok(()));
        // sshd, keepalived, `ip netns exec qrouter-r1 ...`: another executable.
        let other = ProcInfo {
            exe: Some("/usr/sbin/keepalived".into()),
            ..ours.clone()
        };
        assert!(check(&other, &rec, &want).is_err());
        // Argv mentions the id but not as the exact pair.
        for argv in [
            vec!["x", "--router-id", "r10"],
            vec!["x", "qrouter-r1", "r1"],
            vec!["x", "--network-id", "r1"],
            vec!["x", "--router-id=r1"],
        ] {
            let i = ProcInfo {
                argv: argv.into_iter().map(String::from).collect(),
                ..ours.clone()
            };
            assert!(check(&i, &rec, &want).is_err());
        }
        // A recycled pid: another start time.
        let recycled = ProcInfo {
            start: Some(6),
            ..ours.clone()
        };
        let e = check(&recycled, &rec, &want).expect_err("recycled");
        assert!(e.contains("recycled"), "{e}");
        // Another namespace than the one recorded.
        let moved = ProcInfo {
            netns: Some(8),
            ..ours.clone()
        };
        assert!(check(&moved, &rec, &want).is_err());
        // A legacy record proves nothing beyond exe and pair.
        let legacy = Record {
            pid: 100,
            start: None,
            netns: None,
            interface: None,
        };
        assert_eq!(check(&recycled, &legacy, &want), Ok(()));
        // An unwanted key: any kind's flag.
        let any = Want {
            binary: &bin,
            pair: None,
        };
        assert_eq!(check(&ours, &rec, &any), Ok(()));
        let none = ProcInfo {
            argv: vec!["x".into(), "r1".into()],
            ..ours
        };
        assert!(check(&none, &rec, &any).is_err());
    }

    #[test]
    fn proc_info_of_self() {
        let me = std::process::id();
        let info = ProcInfo::read(me).expect("own info");
        assert!(!info.argv.is_empty());
        assert_eq!(info.exe, Some(std::env::current_exe().expect("exe")));
        assert!(ProcInfo::read(u32::MAX - 1).is_none());
        assert!(runs(&info, &std::env::current_exe().expect("exe")));
        assert!(!runs(&info, Path::new("/bin/true")));
    }
}
