//! The process from start to exit: (add the addresses and) bind in the namespace, pid file,
//! privilege drop, readiness, serve until SIGTERM/SIGINT, clean up.

use std::os::unix::fs::FileTypeExt as _;
use std::path::Path;
use std::sync::Arc;

use ns_netns::Netns;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::process::{self, Creds, PidFile, Readiness};
use crate::state::Shared;
use crate::{bind, server};

/// Run the proxy; returns when it has shut down cleanly. `daemon_child` says this process
/// is the re-executed `--daemonize` child (see [`process::daemonize_parent`]).
pub fn run(cfg: Config, daemon_child: bool) -> Result<()> {
    if let Some(ss) = cfg.shared_server.clone() {
        return run_shared(cfg, &ss);
    }
    let resource = cfg
        .resource
        .clone()
        .ok_or_else(|| Error::Config("no --router-id, --network-id or --ovn-network-id".into()))?;
    if daemon_child {
        process::become_daemon()?;
    }
    let ready = Readiness::open(&cfg.ready_fds)?;
    let stats = match cfg.heartbeat_fd {
        Some(fd) => crate::stats::Stats::open_heartbeat_only(fd)?,
        None => crate::stats::Stats::open(cfg.stats_fd)?,
    };
    let creds = Creds::resolve(cfg.user.as_deref(), cfg.group.as_deref())?;
    warn_if_no_agent(&cfg.socket);
    let netns = cfg
        .netns
        .as_deref()
        .map(|spec| {
            Netns::open(spec).map_err(|source| Error::Netns {
                spec: spec.to_owned(),
                source,
            })
        })
        .transpose()?;
    // A restart by socket takeover (`ns-metadata-spawner restart`): the old proxy's
    // listeners, with whatever waits in their accept queues, instead of new ones.
    let by_spawner = std::env::var_os(ns_contract::spawn::STATE_ENV).is_some()
        && !cfg.ready_fds.is_empty()
        && cfg.netns.is_none()
        && !cfg.daemonize;
    let listeners = match bind::inherited(&cfg.binds, by_spawner)? {
        Some(l) => l,
        None => bind::bind_in(netns.as_ref(), &cfg.binds)?,
    };
    drop(netns);
    bind::set_backlog(&listeners, cfg.max_connections)?;
    let (rt, shutdown) = runtime_and_signals()?;
    let pid_file = cfg.pid_file.as_deref().map(PidFile::create).transpose()?;
    process::raise_nofile(cfg.max_connections);
    creds.drop_privileges()?;
    confine()?;
    check_agent_access(&cfg.socket)?;

    // One serving thread, more only under load (crate::workers): a multi-thread runtime lost
    // at every load in the issue 8 bench.
    crate::workers::init(cfg.threads);
    let heartbeat = stats.heartbeat();
    rt.block_on(async move {
        // On the runtime that accepts: if its loop stops, so does the beat.
        if let Some(beat) = heartbeat.and_then(|h| h.start(Some(server::BEAT_COVERED))) {
            tokio::spawn(beat);
        }
        let shared = Arc::new(Shared::with_stats(&cfg, &resource, stats));
        tracing::info!(
            id = %shared.id,
            binds = ?cfg.binds.iter().map(ToString::to_string).collect::<Vec<_>>(),
            socket = %cfg.socket.display(),
            agent_keepalive = ?cfg.agent_keepalive,
            pid = std::process::id(),
            "listening"
        );
        // Parsing the command line and the option tables left freed heap behind; give it
        // back before idling, since an idle proxy only trims after it has served something
        // and a node runs thousands of them.
        ns_netns::release_free_memory();
        ready.notify();
        if daemon_child {
            process::detach_stdio();
        }
        server::serve(
            shared,
            listeners,
            cfg.max_connections,
            shutdown,
            server::GRACE,
        )
        .await;
        Ok::<(), Error>(())
    })?;
    if let Some(p) = pid_file {
        p.remove();
    }
    Ok(())
}

/// The serving runtime, and its signal handlers installed: called before the pid file is
/// written, since whatever finds the pid may signal it at once, and SIGHUP's or SIGTERM's
/// default action would kill the proxy without its clean-up. A current-thread runtime starts
/// no thread, so `confine` may still follow.
fn runtime_and_signals() -> Result<(
    tokio::runtime::Runtime,
    impl std::future::Future<Output = ()>,
)> {
    let rt = crate::workers::runtime()?;
    let shutdown = {
        let _in_rt = rt.enter();
        until_stopped()?
    };
    Ok((rt, shutdown))
}

/// Resolves at SIGTERM or SIGINT (telling systemd we are stopping); SIGHUP reopens the log
/// file. The handlers are installed now, so a signal that comes before the first poll counts.
fn until_stopped() -> Result<impl std::future::Future<Output = ()>> {
    let io = |source| Error::Io {
        op: "signal handler",
        source,
    };
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    let mut hup = signal(SignalKind::hangup()).map_err(io)?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = term.recv() => break process::notify_stopping(),
                _ = int.recv() => break process::notify_stopping(),
                _ = hup.recv() => match crate::accesslog::reopen_log_file() {
                    Ok(true) => tracing::info!("SIGHUP: log file reopened"),
                    Ok(false) => tracing::info!("SIGHUP ignored: nothing to reload"),
                    Err(e) => tracing::warn!(err = %e, "SIGHUP: cannot reopen the log file; still writing to the old one"),
                },
            }
        }
    })
}

/// The shared server (`--shared-server`, [`crate::shared`]): no namespace of its own; the
/// control socket, the pid file and the privilege drop as for one proxy, then every namespace
/// the spawner hands over.
fn run_shared(cfg: Config, ss: &crate::shared::SharedServer) -> Result<()> {
    let starting_uid = nix::unistd::getuid().as_raw();
    let control = crate::shared::take_control(ss.control_fd)?;
    let ready = Readiness::open(&cfg.ready_fds)?;
    let creds = Creds::resolve(cfg.user.as_deref(), cfg.group.as_deref())?;
    warn_if_no_agent(&cfg.socket);
    let (rt, shutdown) = runtime_and_signals()?;
    let pid_file = cfg.pid_file.as_deref().map(PidFile::create).transpose()?;
    // Thousands of namespaces' listeners and their connections: all the hard limit allows.
    let nofile = process::raise_nofile_to_hard();
    creds.drop_privileges()?;
    confine()?;
    check_agent_access(&cfg.socket)?;
    crate::workers::init(cfg.threads);
    rt.block_on(async move {
        tracing::info!(
            state_dir = %ss.state_dir.display(),
            shard = ss.shard,
            socket = %cfg.socket.display(),
            nofile,
            pid = std::process::id(),
            "shared server: waiting for namespaces on the control socket"
        );
        ns_netns::release_free_memory();
        ready.notify();
        crate::shared::serve(cfg, control, starting_uid, nofile, shutdown).await
    })?;
    if let Some(p) = pid_file {
        p.remove();
    }
    Ok(())
}

/// A missing agent socket is the usual first-hour mistake: say so at start, not only as a
/// 503 per request.
/// After binding and the privilege drop, before any thread exists (capabilities are per
/// thread): a proxy still running as uid 0 keeps no capability (it parses VM traffic; uid 0
/// only lets it reach an agent socket that only root may use), and no `execve` can give one
/// back (issue "hardening", item 10).
fn confine() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        ns_netns::privs::drop_all_capabilities()
            .map_err(|e| Error::Privileges(format!("dropping capabilities: {e}")))?;
    }
    ns_netns::privs::set_no_new_privs()
        .map_err(|e| Error::Privileges(format!("PR_SET_NO_NEW_PRIVS: {e}")))
}

/// After the privilege drop: the agent socket must be writable by who we are now, or every
/// request would be a 503 while we reported READY (issue "hardening", item 8). A socket that
/// does not exist yet is only warned about (the agent may start later).
fn check_agent_access(socket: &Path) -> Result<()> {
    use nix::unistd::{faccessat, AccessFlags};
    use std::os::unix::fs::MetadataExt as _;
    match faccessat(
        nix::fcntl::AT_FDCWD,
        socket,
        AccessFlags::W_OK,
        nix::fcntl::AtFlags::AT_EACCESS,
    ) {
        Err(e @ (nix::errno::Errno::EACCES | nix::errno::Errno::EPERM)) => {
            let who = format!(
                "uid {} gid {}",
                nix::unistd::geteuid(),
                nix::unistd::getegid()
            );
            let what = std::fs::metadata(socket).map_or_else(
                |_| "not readable".to_owned(),
                |m| {
                    format!(
                        "mode {:o}, owner {}:{}",
                        m.mode() & 0o7777,
                        m.uid(),
                        m.gid()
                    )
                },
            );
            Err(Error::Privileges(format!(
                "cannot reach the agent socket {} as {who}: {} ({what}); run proxies as its \
                 owner or group (metadata_proxy_user / metadata_proxy_group) or widen the \
                 agent's metadata_proxy_socket_mode",
                socket.display(),
                e.desc()
            )))
        }
        _ => Ok(()),
    }
}

fn warn_if_no_agent(socket: &Path) {
    match std::fs::metadata(socket) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => tracing::warn!(
            socket = %socket.display(),
            "the agent socket {} does not exist: is the metadata agent (ns-metadata-agent or \
             neutron-metadata-agent) running, and is --metadata-proxy-socket its socket? \
             VMs get 503 until it listens",
            socket.display()
        ),
        Ok(m) if !m.file_type().is_socket() => tracing::warn!(
            socket = %socket.display(),
            "the agent socket {} is not a socket: VMs get 503",
            socket.display()
        ),
        _ => {}
    }
}
