//! The adoption rule at start (README, "Start, adoption and exit"): which pid files and
//! running proxies are provably ours, which are adopted, which are stopped (and torn down in
//! their own namespace), and which are left alone. Also used after a failed start, to find
//! a proxy of ours that holds the port (issue "hardening", item 12).

use crate::config::Config;
use crate::decide::ProxySpec;
use crate::launch::Running;
use crate::pidfile;
use crate::platform::Platform;

/// A proxy proven ours that must not be adopted, to stop at start (or one that died while
/// we were down, `running` is `None`: only its addresses are left to remove).
pub(crate) struct Stale<N> {
    pub(crate) pid: u32,
    pub(crate) running: Option<Running>,
    /// Its own namespace, opened before the stop, for the teardown.
    pub(crate) ns: Option<N>,
    /// Key, interface (from the pid file) and address family of what it was given.
    pub(crate) spec: ProxySpec,
    pub(crate) why: &'static str,
}

/// What to do with one pid file at start.
pub(crate) enum Verdict<N> {
    Adopt(Running, Vec<String>),
    Stop(Stale<N>),
    /// Remove the file and leave its process (if any) alone.
    Remove,
}

/// The resource a proxy's argv serves: the first `--router-id|--network-id|--ovn-network-id
/// ID` pair.
fn kind_and_id(argv: &[String]) -> Option<(ns_contract::Kind, String)> {
    ns_contract::Kind::ALL.iter().find_map(|k| {
        argv.windows(2)
            .find(|w| w[0] == k.flag())
            .map(|w| (*k, w[1].clone()))
    })
}

/// Whether `argv` holds the exact `--router-id|--network-id ID` pair of `spec`.
pub(crate) fn has_pair(argv: &[String], spec: &ProxySpec) -> bool {
    argv.windows(2)
        .any(|w| w[0] == spec.kind.flag() && w[1] == spec.id)
}

/// A pidfd on `pid`, if it is still the process `info` describes: the pidfd pins the
/// process, and the start time read after opening it proves it is the one checked.
pub(crate) fn open_proven(pid: u32, info: &pidfile::ProcInfo) -> Option<Running> {
    let r = Running::adopt(pid).ok()?;
    (info.start.is_some() && pidfile::start_time(pid) == info.start).then_some(r)
}

/// The adoption rule for one pid file (README, "Start, adoption and exit"). A pid file of the
/// previous release (bare pid) proves no start time: it is adopted only when the exe, the
/// exact id pair and the record's current namespace all match (an upgrade keeps its proxies,
/// without a duplicate that could not bind), and otherwise never signalled.
pub(crate) fn judge<P: Platform>(
    platform: &P,
    cfg: &Config,
    key: &str,
    path: &std::path::Path,
    spec: Option<&ProxySpec>,
) -> Verdict<P::Ns> {
    let Some(rec) = pidfile::read_record(path) else {
        tracing::warn!(key, path = %path.display(), "unreadable pid file removed");
        return Verdict::Remove;
    };
    let pid = rec.pid;
    let Some(info) = pidfile::ProcInfo::read(pid) else {
        return dead(platform, key, &rec, spec);
    };
    let want = pidfile::Want {
        binary: &cfg.proxy_binary,
        pair: spec.map(|s| (s.kind, s.id.as_str())),
    };
    if let Err(why) = pidfile::check(&info, &rec, &want) {
        tracing::warn!(key, pid, why = %why, "pid file names a process that is not our proxy: file removed, process left alone");
        return Verdict::Remove;
    }
    let in_record_ns = spec
        .is_some_and(|s| info.netns.is_some() && info.netns == platform.namespace_inode(&s.netns));
    if in_record_ns {
        let Some(r) = open_proven(pid, &info) else {
            return Verdict::Remove;
        };
        if let (true, Some(s)) = (rec.is_legacy(), spec) {
            // Upgrade the file, so the next start can prove the start time.
            if let Err(e) = pidfile::write(&cfg.pid_dir(), key, pid, &s.interface) {
                tracing::warn!(key, err = %e, "cannot write pid file");
            }
        }
        return Verdict::Adopt(r, info.argv);
    }
    if rec.is_legacy() {
        tracing::warn!(key, pid, "pid file of the previous release names a proxy that is not wanted in this namespace: not provably ours, left running (stop it by hand), file removed");
        return Verdict::Remove;
    }
    // Provably ours (exe, pair, start time, recorded namespace): not wanted any more, or
    // wanted in another namespace (deleted and re-added, or moved while we were down).
    let Some(running) = open_proven(pid, &info) else {
        return Verdict::Remove;
    };
    let ns = platform.open_process_ns(pid).ok();
    let (kind, id) = kind_and_id(&info.argv).unwrap_or((ns_contract::Kind::Router, key.to_owned()));
    let stale_spec = ProxySpec {
        key: key.to_owned(),
        kind,
        id,
        netns: format!("the namespace of pid {pid}"),
        interface: rec.interface.clone().unwrap_or_else(|| "lo".into()),
        ipv6: info.argv.iter().any(|a| a.starts_with("[fe80::a9fe:a9fe]")),
    };
    Verdict::Stop(Stale {
        pid,
        running: Some(running),
        ns,
        spec: stale_spec,
        why: if spec.is_some() {
            "stopping a proxy that serves an older namespace of its record"
        } else {
            "stopping a proxy that is no longer wanted"
        },
    })
}

/// A pid file whose process is gone (killed with the spawner, or while it was down). Its
/// record names the namespace (inode) and interface that got the metadata address: unless
/// the same key is wanted in that same namespace (the new proxy takes the address over),
/// remove the address there, so a removal while we were down leaves nothing behind.
fn dead<P: Platform>(
    platform: &P,
    key: &str,
    rec: &pidfile::Record,
    spec: Option<&ProxySpec>,
) -> Verdict<P::Ns> {
    let (Some(ino), Some(interface)) = (rec.netns, rec.interface.clone()) else {
        return Verdict::Remove; // previous release's file: nothing recorded
    };
    if spec.is_some_and(|s| platform.namespace_inode(&s.netns) == Some(ino)) {
        return Verdict::Remove;
    }
    let Some(ns) = platform.namespace_by_inode(ino) else {
        return Verdict::Remove; // the namespace is gone, and its addresses with it
    };
    let (kind, id) = spec.map_or((ns_contract::Kind::Router, key.to_owned()), |s| {
        (s.kind, s.id.clone())
    });
    Verdict::Stop(Stale {
        pid: rec.pid,
        running: None,
        ns: Some(ns),
        spec: ProxySpec {
            key: key.to_owned(),
            kind,
            id,
            netns: format!("the namespace of inode {ino}"),
            interface,
            // Not known without its argv: remove the v6 address too if it is there.
            ipv6: true,
        },
        why: "removing the address of a proxy that exited while the spawner was down",
    })
}

/// A proxy this state dir's spawner started that has no pid file and is not wanted: stop it
/// (its pidfd opened after the start time was read, so the pid cannot be recycled between)
/// and remove its address in its own namespace, only if that is a named one (under
/// `/run/netns`, where only root puts namespaces: never the spawner's own or one a user made
/// for itself). The interface is the router interface for a router, the one in its `--bind
/// [fe80::a9fe:a9fe]:80%IFACE` for a network, else unknown (then only the process is
/// stopped).
pub(crate) fn unmanaged<P: Platform>(
    platform: &P,
    cfg: &Config,
    pid: u32,
    info: &pidfile::ProcInfo,
) -> Option<Stale<P::Ns>> {
    let (kind, id) = kind_and_id(&info.argv)?;
    let ipv6_if = info
        .argv
        .iter()
        .find_map(|a| a.strip_prefix("[fe80::a9fe:a9fe]:80%").map(str::to_owned));
    let interface = match kind {
        ns_contract::Kind::Router => Some(cfg.router_interface.clone()),
        _ => ipv6_if.clone(),
    };
    let running = open_proven(pid, info)?;
    let ns = interface
        .is_some()
        .then(|| info.netns.and_then(|ino| platform.namespace_by_inode(ino)))
        .flatten();
    Some(Stale {
        pid,
        running: Some(running),
        ns,
        spec: ProxySpec {
            key: id.clone(),
            kind,
            id,
            netns: format!("the namespace of pid {pid}"),
            interface: interface.unwrap_or_else(|| "lo".into()),
            ipv6: ipv6_if.is_some(),
        },
        why: "stopping a proxy this spawner started that is not wanted and had no pid file",
    })
}

/// A running proxy of ours for `spec` (our binary, the exact id pair, in the namespace that
/// has `spec.netns` now), pinned by a pidfd; with its argv. For a start that failed because
/// such a proxy holds the port (its pid file was never written or was lost).
pub(crate) fn find_for<P: Platform>(
    platform: &P,
    cfg: &Config,
    spec: &ProxySpec,
) -> Option<(u32, Running, Vec<String>)> {
    let ino = platform.namespace_inode(&spec.netns)?;
    pidfile::find_running(&cfg.proxy_binary)
        .into_iter()
        .filter(|(_, info)| has_pair(&info.argv, spec) && info.netns == Some(ino))
        .find_map(|(pid, info)| Some((pid, open_proven(pid, &info)?, info.argv)))
}
