//! Starting one proxy: its argv, `posix_spawn` with the readiness pipe on fd 3 in its own
//! session, and waiting for `READY=1` with a timeout; plus the handle of a running proxy (own
//! child or adopted, both through a pidfd) with signals, exit waiting and reaping.

use std::os::fd::{AsFd as _, OwnedFd};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;

use crate::config::Config;
use crate::decide::ProxySpec;
use crate::platform::Platform;
use crate::proxy_stats::Gauge;
use crate::{Error, Result};

/// The fd number the proxy reports readiness on.
pub const READY_FD: i32 = 3;

/// How long a stop waits for a SIGKILLed process to be gone ([`Running::stop`]).
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// The proxy's arguments (without the program) for a spec under a config: every proxy option
/// the spawner reads, as the flags a standalone proxy takes for the same INI values. Also
/// compared with an adopted proxy's cmdline: any difference means "restart it".
pub fn proxy_args(spec: &ProxySpec, cfg: &Config) -> Vec<String> {
    let mut a: Vec<String> = Vec::with_capacity(32);
    let mut push = |k: &str, v: String| {
        a.push(k.to_owned());
        a.push(v);
    };
    push(spec.kind.flag(), spec.id.clone());
    // The proxy reads its flags through the same option layer, which substitutes `$name`:
    // values already resolved here go out escaped, so they arrive as they are.
    let literal = |v: &str| ns_ini::escape(v);
    push(
        "--metadata-proxy-socket",
        literal(&cfg.metadata_proxy_socket.display().to_string()),
    );
    push("--bind", "169.254.169.254:80".to_owned());
    if spec.ipv6 {
        push(
            "--bind",
            literal(&format!("[fe80::a9fe:a9fe]:80%{}", spec.interface)),
        );
    }
    push("--ready-fd", READY_FD.to_string());
    if cfg.proxy_metrics {
        push("--stats-fd", crate::proxy_stats::STATS_FD.to_string());
    } else if cfg.stats_blocks() {
        // The heartbeat alone: hangs are watched with the metrics off too.
        push("--heartbeat-fd", crate::proxy_stats::STATS_FD.to_string());
    }
    a.extend(option_args(cfg));
    a
}

/// The flags after `--ready-fd`, the same for every proxy and for the shared server: user,
/// group, rate limits, timeouts, agent keep-alive.
fn option_args(cfg: &Config) -> Vec<String> {
    let mut a: Vec<String> = Vec::with_capacity(16);
    let literal = |v: &str| ns_ini::escape(v);
    if let Some(u) = &cfg.metadata_proxy_user {
        a.extend(["--user".to_owned(), literal(u)]);
    }
    if let Some(g) = &cfg.metadata_proxy_group {
        a.extend(["--group".to_owned(), literal(g)]);
    }
    if let Some(rl) = &cfg.rate_limit {
        a.extend(rl.args());
    }
    // Only the timeouts that differ from Neutron's defaults (the proxy's defaults too), so
    // the argv of a default setup stays what earlier versions gave (no needless restart of
    // adopted proxies after an upgrade).
    a.extend(cfg.timeouts.args());
    a.push("--agent-keepalive".to_owned());
    a.push(cfg.agent_keepalive.as_str().to_owned());
    if let Some(n) = cfg.max_agent_requests {
        a.extend(["--max-agent-requests".to_owned(), n.to_string()]);
    }
    if let Some(t) = &cfg.proxy_threads {
        a.extend(["--threads".to_owned(), t.clone()]);
    }
    a
}

/// The shared server's flags besides `--shared-server` and `--control-fd`: every proxy's,
/// without an id or a bind.
pub fn shared_args(cfg: &Config) -> Vec<String> {
    let mut a = vec![
        "--metadata-proxy-socket".to_owned(),
        ns_ini::escape(&cfg.metadata_proxy_socket.display().to_string()),
        "--ready-fd".to_owned(),
        READY_FD.to_string(),
    ];
    a.extend(option_args(cfg));
    a
}

/// What every process the spawner starts from the proxy binary gets: no `OS_*` variables, no
/// `NOTIFY_SOCKET`, the state-dir marker, its own session (stdin and stdout are /dev/null,
/// stderr is shared: `ns_netns::Spawn`).
pub fn proxy_env(cmd: &mut ns_netns::Spawn, cfg: &Config) {
    // The proxy reads oslo-style `OS_<GROUP>__<OPTION>` variables too: what configures the
    // spawner must not reach its proxies behind the flags given here. systemd's notify
    // socket is the spawner unit's: a proxy's READY goes to its ready fd.
    for (k, v) in std::env::vars_os() {
        let b = k.as_encoded_bytes();
        if !b.starts_with(b"OS_")
            && k != "NOTIFY_SOCKET"
            && k != ns_contract::spawn::NETNS_FD_ENV
            && k != ns_contract::spawn::STATE_ENV
            && k != ns_contract::spawn::LISTEN_FDS_ENV
        {
            cmd.env(k, v);
        }
    }
    // Marks the proxy as started by the spawner of this state dir: the only proof, besides
    // a pid file, that lets a restarted spawner stop it when it is no longer wanted.
    cmd.env(crate::pidfile::STATE_ENV, &cfg.state_dir);
    // Own session (hence own process group, no controlling terminal), so a signal to the
    // supervisor's group or a hang-up of its terminal does not reach the proxies: they must
    // outlive a supervisor restart.
    cmd.new_session();
}

/// A proxy process we watch, through a pidfd either way (pidfd signals cannot reach a
/// recycled pid).
#[derive(Debug)]
pub enum Running {
    /// Spawned by us: reaped here (`waitid` on its pidfd), never by a `waitpid(-1)`.
    Child {
        pid: u32,
        pidfd: AsyncFd<OwnedFd>,
        reaped: bool,
    },
    /// Adopted after a restart: not our child, watched through a pidfd.
    Adopted { pid: u32, pidfd: AsyncFd<OwnedFd> },
}

fn async_pidfd(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // tokio 1.54 deprecates the safe constructors because a borrowed raw fd could be
    // closed behind the reactor's back; an OwnedFd moved in cannot be, so this is sound.
    #[allow(deprecated)]
    AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)
}

/// How a reaped child ended, as `std::process::ExitStatus` says it.
fn describe(st: Option<rustix::process::WaitIdStatus>) -> String {
    match st {
        Some(st) => match (st.exit_status(), st.terminating_signal()) {
            (Some(code), _) => format!("exited (exit status: {code})"),
            (None, Some(sig)) => format!("exited (signal: {sig})"),
            _ => "exited".to_owned(),
        },
        None => "exited".to_owned(),
    }
}

/// Reap an exited child through its pidfd (`None` if it has not exited).
fn reap(pidfd: &OwnedFd, block: bool) -> std::io::Result<Option<rustix::process::WaitIdStatus>> {
    use rustix::process::{waitid, WaitId, WaitIdOptions};
    let mut opts = WaitIdOptions::EXITED;
    if !block {
        opts |= WaitIdOptions::NOHANG;
    }
    Ok(waitid(WaitId::PidFd(pidfd.as_fd()), opts)?)
}

impl Running {
    /// Watch a live process that is not our child.
    pub fn adopt(pid: u32) -> std::io::Result<Running> {
        let raw = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
        let p = Pid::from_raw(raw).ok_or_else(|| std::io::Error::other("pid 0"))?;
        let fd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())?;
        Ok(Running::Adopted {
            pid,
            pidfd: async_pidfd(fd)?,
        })
    }

    /// Watch a child we spawned.
    pub fn child(s: ns_netns::Spawned) -> std::io::Result<Running> {
        Ok(Running::Child {
            pid: s.pid,
            pidfd: async_pidfd(s.pidfd)?,
            reaped: false,
        })
    }

    /// The pid, while known (a reaped child has none: the number may be reused).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Running::Child { reaped: true, .. } => None,
            Running::Child { pid, .. } | Running::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// The pidfd, while the process is not reaped (for `pidfd_getfd`: [`crate::takeover`]).
    pub fn pidfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Running::Child { reaped: true, .. } => None,
            Running::Child { pidfd, .. } | Running::Adopted { pidfd, .. } => {
                Some(pidfd.get_ref().as_fd())
            }
        }
    }

    /// Wait until it exits (reaping our own child); a description of how.
    pub async fn wait(&mut self) -> String {
        match self {
            Running::Child { reaped: true, .. } => "exited".to_owned(),
            Running::Child { pidfd, reaped, .. } => match pidfd.readable().await {
                Ok(mut guard) => {
                    guard.retain_ready();
                    match reap(pidfd.get_ref(), true) {
                        Ok(st) => {
                            *reaped = true;
                            describe(st)
                        }
                        Err(e) => format!("wait failed: {e}"),
                    }
                }
                Err(e) => format!("pidfd wait failed: {e}"),
            },
            Running::Adopted { pidfd, .. } => match pidfd.readable().await {
                Ok(mut guard) => {
                    guard.retain_ready();
                    "exited".to_owned()
                }
                Err(e) => format!("pidfd wait failed: {e}"),
            },
        }
    }

    /// Wait until it exits, without reaping our own child: a description of how. The
    /// zombie keeps its pid until it is reaped (by [`Running::wait`] or the drop), so a
    /// restart can come first: reaping a process that held thousands of descriptors costs
    /// the reaper milliseconds (its `/proc` entries are pruned then; issue #20).
    pub async fn exited(&mut self) -> String {
        match self {
            Running::Child {
                reaped: false,
                pidfd,
                ..
            } => match pidfd.readable().await {
                Ok(mut guard) => {
                    guard.retain_ready();
                    use rustix::process::{waitid, WaitId, WaitIdOptions};
                    let opts = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
                    match waitid(WaitId::PidFd(pidfd.get_ref().as_fd()), opts) {
                        Ok(st) => describe(st),
                        Err(e) => format!("wait failed: {e}"),
                    }
                }
                Err(e) => format!("pidfd wait failed: {e}"),
            },
            _ => self.wait().await,
        }
    }

    /// Send a signal (a process already gone is fine).
    pub fn signal(&mut self, sig: Signal) {
        let r = match self {
            // Reaped: nothing to signal.
            Running::Child { reaped: true, .. } => Ok(()),
            Running::Child { pidfd, .. } | Running::Adopted { pidfd, .. } => {
                rustix::process::pidfd_send_signal(pidfd.get_ref(), sig)
            }
        };
        if let Err(e) = r {
            if e != rustix::io::Errno::SRCH {
                tracing::warn!(pid = ?self.pid(), err = %e, "signal failed");
            }
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL and wait up to [`KILL_WAIT`]: a task frozen
    /// by a cgroup (v1) freezer, or stuck in the kernel, cannot die before it is thawed or the
    /// call returns, and a stop must not wait for ever on it (it can serve nothing with a
    /// SIGKILL pending; a child of ours is reaped whenever it dies, by the drop).
    pub async fn stop(&mut self, grace: Duration) -> String {
        self.signal(Signal::TERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(how) => how,
            Err(_) => {
                self.signal(Signal::KILL);
                match tokio::time::timeout(KILL_WAIT, self.wait()).await {
                    Ok(how) => format!("killed after {grace:?}: {how}"),
                    Err(_) => format!(
                        "killed after {grace:?}, not dead {KILL_WAIT:?} later (frozen or stuck \
                         in the kernel; reaped whenever it dies)"
                    ),
                }
            }
        }
    }
}

impl Drop for Running {
    /// A child left running (the supervisor went away without stopping it: it must outlive
    /// us) is still ours to reap when it exits, or it stays a zombie while we live.
    fn drop(&mut self) {
        let Running::Child {
            pidfd,
            reaped: false,
            ..
        } = self
        else {
            return;
        };
        if let Ok(Some(_)) = reap(pidfd.get_ref(), false) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Wait on a copy of the pidfd (this one closes with `self`).
        let Ok(dup) = pidfd.get_ref().try_clone() else {
            return;
        };
        rt.spawn(async move {
            if let Ok(fd) = async_pidfd(dup) {
                let _ = fd.readable().await;
                let _ = reap(fd.get_ref(), false);
            }
        });
    }
}

/// Prepare the open namespace `ns`, spawn the proxy in that same namespace and wait for
/// `READY=1` on its fd 3.
pub async fn launch<P: Platform>(
    platform: &P,
    ns: &P::Ns,
    spec: &ProxySpec,
    cfg: &Config,
    args: &[String],
) -> Result<Running> {
    launch_with(platform, ns, spec, cfg, args, Vec::new()).await
}

/// [`launch`], handing the proxy `listeners` (taken from its predecessor: a restart by socket
/// takeover, [`crate::takeover`]) to serve instead of binding: on fds 6, 7, … named in
/// `ns_contract::spawn::LISTEN_FDS_ENV`, in `--bind` order. The statistics block's
/// open-connections gauge is then left as it is (the predecessor still counts its own).
pub async fn launch_with<P: Platform>(
    platform: &P,
    ns: &P::Ns,
    spec: &ProxySpec,
    cfg: &Config,
    args: &[String],
    listeners: Vec<OwnedFd>,
) -> Result<Running> {
    platform.prepare(ns, spec).await?;
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::Spawn(format!("pipe: {e}")))?;
    // posix_spawn, not fork (ns_netns::Spawn): a fork costs in proportion to the spawner's
    // memory and open files, which grow with the number of proxies (issue 19).
    let mut cmd = ns_netns::Spawn::new(&cfg.proxy_binary);
    cmd.args(args);
    proxy_env(&mut cmd, cfg);
    // The readiness pipe on fd 3 (the namespace goes on 4, the statistics block on 5); every
    // descriptor the spawner holds above the mapped ones (its other proxies' pidfds, sockets,
    // whatever it inherited) is closed in the child.
    // Our copy of the write end is closed once the spawn returns: EOF then means the proxy
    // closed (or died) without saying READY.
    cmd.fd(wr, READY_FD);
    let takeover = !listeners.is_empty();
    if cfg.stats_blocks() {
        cmd.fd(
            stats_block(cfg, spec, takeover)?,
            crate::proxy_stats::STATS_FD,
        );
    }
    if takeover {
        let mut names = Vec::with_capacity(listeners.len());
        for (n, l) in (ns_contract::spawn::FIRST_LISTEN_FD..).zip(listeners) {
            cmd.fd(l, n);
            names.push(n.to_string());
        }
        cmd.env(ns_contract::spawn::LISTEN_FDS_ENV, names.join(","));
    }
    let child = platform
        .spawn(ns, spec, cmd)
        .and_then(|s| Running::child(s).map_err(|e| Error::Spawn(format!("pidfd: {e}"))));
    wait_ready(
        child?,
        rd,
        cfg.ready_timeout,
        &format!("proxy {} in {}", spec.id, spec.netns),
    )
    .await
}

/// Wait for `READY=1` on `rd` (the read end of the child's ready pipe) for up to `timeout`;
/// a child that closes it without READY, or takes too long, is reaped (killed if needed) and
/// the error says how, prefixed with `what`.
pub async fn wait_ready(
    mut child: Running,
    rd: OwnedFd,
    timeout: Duration,
    what: &str,
) -> Result<Running> {
    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(rd)
        .map_err(|e| Error::Spawn(format!("pipe: {e}")));
    let ready = match rx {
        Ok(rx) => tokio::time::timeout(timeout, read_ready(rx)).await,
        Err(e) => Ok(Err(e)),
    };
    let fail = |reason: String| Error::Spawn(format!("{what}: {reason}"));
    match ready {
        Ok(Ok(())) => Ok(child),
        Ok(Err(e)) => {
            // Closed without READY: it is exiting; report how.
            let how = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                Ok(how) if child.pid().is_none() => format!("{how} before ready"),
                _ => {
                    child.signal(Signal::KILL);
                    child.wait().await;
                    format!("closed its ready fd without READY=1 ({e})")
                }
            };
            Err(fail(how))
        }
        Err(_) => {
            child.signal(Signal::KILL);
            child.wait().await;
            Err(fail(format!("not ready after {timeout:?}, killed")))
        }
    }
}

/// The proxy's statistics block (`proxy_stats::block_or_anonymous`): the gauge kept for a
/// takeover, zeroed for a fresh start.
fn stats_block(cfg: &Config, spec: &ProxySpec, takeover: bool) -> Result<OwnedFd> {
    let gauge = if takeover { Gauge::Keep } else { Gauge::Zero };
    let fd = crate::proxy_stats::block_or_anonymous(&cfg.stats_dir(), &spec.key, gauge)
        .map_err(|e| Error::Spawn(format!("statistics block: {e}")))?;
    // The new process must beat before READY to be watched for hangs (crate::hang).
    let period = crate::hang::period_ms(cfg, crate::config::ProxyModel::PerNamespace);
    crate::proxy_stats::arm_heartbeat(&fd, period, true)
        .map_err(|e| Error::Spawn(format!("statistics block: heartbeat: {e}")))?;
    Ok(fd)
}

async fn read_ready(mut rx: tokio::net::unix::pipe::Receiver) -> Result<()> {
    let mut buf = Vec::with_capacity(16);
    let mut chunk = [0u8; 64];
    loop {
        let n = rx
            .read(&mut chunk)
            .await
            .map_err(|e| Error::Spawn(format!("read ready fd: {e}")))?;
        if n == 0 {
            return Err(Error::Spawn("EOF".to_owned()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.split(|&b| b == b'\n').any(|line| line == b"READY=1") {
            return Ok(());
        }
        if buf.len() > 4096 {
            return Err(Error::Spawn("garbage on ready fd".to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ns_contract::{limits::Timeouts, KeepaliveMode, Kind};

    #[test]
    fn args_router_and_network() {
        let mut cfg = Config::defaults();
        let spec = ProxySpec {
            key: "r1".into(),
            kind: Kind::Router,
            id: "r1".into(),
            netns: "qrouter-r1".into(),
            interface: "lo".into(),
            ipv6: false,
        };
        assert_eq!(
            proxy_args(&spec, &cfg).join(" "),
            "--router-id r1 --metadata-proxy-socket /var/lib/neutron/metadata_proxy --bind 169.254.169.254:80 \
             --ready-fd 3 --stats-fd 5 --agent-keepalive auto"
        );
        cfg.metadata_proxy_user = Some("neutron".into());
        cfg.metadata_proxy_group = Some("neutron".into());
        cfg.rate_limit = Some(ns_contract::limits::RateLimit {
            base: "10/10".parse().expect("rate"),
            burst: "20/5".parse().expect("rate"),
            versions: "6".parse().expect("versions"),
        });
        cfg.timeouts = Timeouts::from_secs([1, 30, 32, 90, 30]).expect("valid");
        cfg.agent_keepalive = KeepaliveMode::Off;
        cfg.max_agent_requests = Some(8);
        cfg.proxy_threads = Some("2".into());
        cfg.proxy_metrics = false;
        cfg.metadata_proxy_socket = "/srv/$x/metadata_proxy".into();
        let spec = ProxySpec {
            kind: Kind::Network,
            id: "n1".into(),
            interface: "tap1".into(),
            ipv6: true,
            ..spec
        };
        assert_eq!(
            proxy_args(&spec, &cfg).join(" "),
            "--network-id n1 --metadata-proxy-socket /srv/$$x/metadata_proxy --bind 169.254.169.254:80 \
             --bind [fe80::a9fe:a9fe]:80%tap1 --ready-fd 3 --heartbeat-fd 5 --user neutron \
             --group neutron --rate-limit-base 10/10 --rate-limit-burst 20/5 \
             --rate-limit-ip-versions 6 --timeout-request 1 --timeout-server 90 \
             --agent-keepalive off --max-agent-requests 8 --threads 2"
        );
        // Metrics off and hangs not watched: no block at all.
        cfg.hang_timeout = Duration::ZERO;
        let args = proxy_args(&spec, &cfg).join(" ");
        assert!(
            !args.contains("--heartbeat-fd") && !args.contains("--stats-fd"),
            "{args}"
        );
    }
}
