//! Starting one proxy: its argv, the readiness pipe on fd 3, its own session, and
//! waiting for `READY=1` with a timeout; plus the handle of a running proxy (own child or
//! adopted through a pidfd) with signals and exit waiting.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use ns_netns::CommandExt as _;
use rustix::process::{Pid, Signal};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncReadExt;

use crate::config::Config;
use crate::decide::ProxySpec;
use crate::platform::Platform;
use crate::{Error, Result};

/// The fd number the proxy reports readiness on.
pub const READY_FD: i32 = 3;

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
    }
    if let Some(u) = &cfg.metadata_proxy_user {
        push("--user", literal(u));
    }
    if let Some(g) = &cfg.metadata_proxy_group {
        push("--group", literal(g));
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
    a
}

/// A proxy process we watch.
#[derive(Debug)]
pub enum Running {
    /// Spawned by us: tokio reaps it.
    Child(tokio::process::Child),
    /// Adopted after a restart: not our child, watched through a pidfd.
    Adopted { pid: u32, pidfd: AsyncFd<OwnedFd> },
}

impl Running {
    /// Watch a live process that is not our child.
    pub fn adopt(pid: u32) -> std::io::Result<Running> {
        let raw = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
        let p = Pid::from_raw(raw).ok_or_else(|| std::io::Error::other("pid 0"))?;
        let fd = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())?;
        // tokio 1.54 deprecates the safe constructors because a borrowed raw fd could be
        // closed behind the reactor's back; an OwnedFd moved in cannot be, so this is sound.
        #[allow(deprecated)]
        let pidfd = AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)?;
        Ok(Running::Adopted { pid, pidfd })
    }

    /// The pid, while known.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Running::Child(c) => c.id(),
            Running::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// Wait until it exits; a description of how.
    pub async fn wait(&mut self) -> String {
        match self {
            Running::Child(c) => match c.wait().await {
                Ok(st) => format!("exited ({st})"),
                Err(e) => format!("wait failed: {e}"),
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

    /// Send a signal (a process already gone is fine).
    pub fn signal(&mut self, sig: Signal) {
        let r = match self {
            Running::Child(c) => match c
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(Pid::from_raw)
            {
                // Not yet reaped, so the pid cannot have been reused.
                Some(pid) => rustix::process::kill_process(pid, sig),
                None => Ok(()),
            },
            Running::Adopted { pidfd, .. } => {
                rustix::process::pidfd_send_signal(pidfd.get_ref(), sig)
            }
        };
        if let Err(e) = r {
            if e != rustix::io::Errno::SRCH {
                tracing::warn!(pid = ?self.pid(), err = %e, "signal failed");
            }
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL and wait.
    pub async fn stop(&mut self, grace: Duration) -> String {
        self.signal(Signal::TERM);
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(how) => how,
            Err(_) => {
                self.signal(Signal::KILL);
                format!("killed after {grace:?}: {}", self.wait().await)
            }
        }
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
    platform.prepare(ns, spec).await?;
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::Spawn(format!("pipe: {e}")))?;
    let mut cmd = tokio::process::Command::new(&cfg.proxy_binary);
    cmd.args(args);
    // The proxy reads oslo-style `OS_<GROUP>__<OPTION>` variables too: what configures the
    // spawner must not reach its proxies behind the flags given here.
    for (k, _) in std::env::vars_os() {
        if k.as_encoded_bytes().starts_with(b"OS_") {
            cmd.env_remove(k);
        }
    }
    // Marks the proxy as started by the spawner of this state dir: the only proof, besides
    // a pid file, that lets a restarted spawner stop it when it is no longer wanted.
    cmd.env(crate::pidfile::STATE_ENV, &cfg.state_dir);
    // systemd's notify socket is the spawner unit's: a proxy's READY goes to its ready fd.
    cmd.env_remove("NOTIFY_SOCKET");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(false);
    // Own session (hence own process group, no controlling terminal), so a signal to the
    // supervisor's group or a hang-up of its terminal does not reach the proxies: they must
    // outlive a supervisor restart.
    cmd.new_session();
    // Descriptors the spawner inherited without O_CLOEXEC (from whoever started it) must not
    // reach every proxy; the readiness pipe is mapped onto fd 3 after this.
    cmd.close_inherited_fds(READY_FD as u32);
    let mut fds = vec![FdMapping {
        parent_fd: wr,
        child_fd: READY_FD,
    }];
    if cfg.proxy_metrics {
        fds.push(FdMapping {
            parent_fd: stats_block(cfg, spec)?,
            child_fd: crate::proxy_stats::STATS_FD,
        });
    }
    cmd.fd_mappings(fds)
        .map_err(|e| Error::Spawn(format!("fd mapping: {e}")))?;
    let child = platform.spawn(ns, spec, &mut cmd);
    // Dropping the command closes our copy of the write end: EOF then means the proxy
    // closed (or died) without saying READY.
    drop(cmd);
    let mut child = child?;
    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(rd)
        .map_err(|e| Error::Spawn(format!("pipe: {e}")));
    let ready = match rx {
        Ok(rx) => tokio::time::timeout(cfg.ready_timeout, read_ready(rx)).await,
        Err(e) => Ok(Err(e)),
    };
    let fail =
        |reason: String| Error::Spawn(format!("proxy {} in {}: {reason}", spec.id, spec.netns));
    match ready {
        Ok(Ok(())) => Ok(Running::Child(child)),
        Ok(Err(e)) => {
            // Closed without READY: it is exiting; report how.
            let how = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                Ok(Ok(st)) => format!("exited ({st}) before ready"),
                _ => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    format!("closed its ready fd without READY=1 ({e})")
                }
            };
            Err(fail(how))
        }
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(fail(format!(
                "not ready after {:?}, killed",
                cfg.ready_timeout
            )))
        }
    }
}

/// The proxy's statistics block; if the file cannot be made (full or read-only state dir), an
/// anonymous one, so the proxy still serves (its counts are then not exported).
fn stats_block(cfg: &Config, spec: &ProxySpec) -> Result<OwnedFd> {
    match crate::proxy_stats::for_start(&cfg.stats_dir(), &spec.key) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            tracing::warn!(key = %spec.key, err = %e, "cannot open the statistics block; this proxy's requests are not counted");
            crate::proxy_stats::anonymous()
                .map_err(|e| Error::Spawn(format!("statistics block: {e}")))
        }
    }
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
             --ready-fd 3 --stats-fd 4 --agent-keepalive auto"
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
             --bind [fe80::a9fe:a9fe]:80%tap1 --ready-fd 3 --user neutron --group neutron \
             --rate-limit-base 10/10 --rate-limit-burst 20/5 --rate-limit-ip-versions 6 \
             --timeout-request 1 --timeout-server 90 --agent-keepalive off"
        );
    }
}
