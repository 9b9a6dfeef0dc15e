//! Pid files `<state dir>/pids/<key>.pid` and the liveness check used for adoption: the pid
//! is alive and its `/proc/PID/cmdline` holds the id (what Neutron's `active` checks).

use std::path::{Path, PathBuf};

use ns_contract::validate_id;

use crate::{Error, Result};

/// The pid file of a proxy key.
pub fn path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.pid"))
}

/// Write `pid\n` atomically.
pub fn write(dir: &Path, key: &str, pid: u32) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let p = path(dir, key);
    let tmp = dir.join(format!(".{key}.pid.tmp"));
    let r = std::fs::write(&tmp, format!("{pid}\n"))
        .map_err(|e| Error::io("write", &tmp, e))
        .and_then(|()| std::fs::rename(&tmp, &p).map_err(|e| Error::io("rename", &p, e)));
    if r.is_err() {
        // A full or read-only state dir must not collect half-written temp files.
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Read the pid of a pid file; `None` if missing or not a number.
pub fn read(p: &Path) -> Option<u32> {
    std::fs::read_to_string(p)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 1)
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

/// Neutron's `active`: the process is alive and one of its arguments holds the id.
pub fn is_proxy_for(pid: u32, id: &str) -> Option<Vec<String>> {
    cmdline(pid).filter(|argv| argv.iter().any(|a| a.contains(id)))
}

/// Whether the process executes `binary` (compared through `/proc/PID/exe`; a binary
/// replaced by an upgrade shows as "PATH (deleted)" and still counts).
pub fn runs_binary(pid: u32, binary: &Path) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    let want = std::fs::canonicalize(binary).unwrap_or_else(|_| binary.to_owned());
    Path::new(exe) == want
}

/// Live processes that look like proxies of `binary` (its executable, or the path as
/// argv[0], or argv[1] for a script run by its interpreter) with their argv: how proxies
/// whose pid file is missing are found again (`/proc` scan, done once at start).
pub fn find_running(binary: &Path) -> Vec<(u32, Vec<String>)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let want = binary.to_string_lossy();
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter_map(|pid| {
            let argv = cmdline(pid)?;
            let named = argv.iter().take(2).any(|a| *a == want);
            (named || runs_binary(pid, binary)).then_some((pid, argv))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_own_keeps_a_live_replacements_file() {
        let dir = std::env::temp_dir().join(format!("spawner-pidown-{}", std::process::id()));
        let me = std::process::id();
        write(&dir, "k", me).expect("write");
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
    fn write_read_list_remove() {
        let dir = std::env::temp_dir().join(format!("spawner-pid-{}", std::process::id()));
        write(&dir, "abc", 1234).expect("write");
        std::fs::write(dir.join("bad name.pid"), "1").expect("write");
        std::fs::write(dir.join("junk.pid"), "x").expect("write");
        assert_eq!(read(&path(&dir, "abc")), Some(1234));
        assert_eq!(read(&path(&dir, "junk")), None);
        let keys: Vec<_> = list(&dir).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["abc", "junk"]);
        remove(&dir, "abc");
        remove(&dir, "abc");
        assert_eq!(read(&path(&dir, "abc")), None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn cmdline_of_self() {
        let me = std::process::id();
        let argv = cmdline(me).expect("own cmdline");
        assert!(!argv.is_empty());
        assert!(is_proxy_for(me, "no-such-id-in-argv-4711").is_none());
        assert!(cmdline(u32::MAX - 1).is_none());
        let exe = std::env::current_exe().expect("exe");
        assert!(runs_binary(me, &exe));
        assert!(!runs_binary(me, Path::new("/bin/true")));
        assert!(!runs_binary(u32::MAX - 1, &exe));
    }
}
