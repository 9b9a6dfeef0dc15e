//! ns-metadata-agent: the other end of the proxies' Unix socket, compatible with Neutron's
//! neutron-metadata-agent. A resolver finds the instance behind (router | network | OVN
//! network, client IP), then an answerer forwards to Nova with the signed instance id or
//! answers itself from the inventory. The code map is in README.md.
#![forbid(unsafe_code)]

pub mod answer;
pub mod builtin;
pub mod config;
pub mod handler;
pub mod inventory;
pub mod metrics;
pub mod notify;
pub mod nova;
pub mod ovn;
pub mod resolve;
pub mod resolvers;
pub mod respond;
pub mod server;
pub mod socket;
pub mod store;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ns_contract::notify::State;

pub use config::{AnswererKind, Config, ConfigError, ResolverKind};

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Inventory(#[from] inventory::InventoryError),
    #[error(transparent)]
    Socket(#[from] socket::BindError),
    #[error(transparent)]
    OvnIdentity(#[from] ovn::identity::IdentityError),
    #[error(transparent)]
    Southbound(#[from] ovn::southbound::StartError),
    #[error("metrics_bind {0}: cannot listen: {1}")]
    Metrics(std::net::SocketAddr, std::io::Error),
}

impl Error {
    /// Configuration mistakes exit 2, everything else 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Tls(_) => 2,
            _ => 1,
        }
    }
}

/// How long in-flight requests may finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The parts of the agent that need no network: the inventory in force (when the inventory
/// resolver or the built-in responder uses it) and the answerer (reads TLS files).
pub struct Prepared {
    pub store: Option<Arc<store::InventoryStore>>,
    pub answerer: answer::Answerer,
}

/// Read the inventory (if used) and build the answerer.
pub fn prepare(cfg: &Config) -> Result<Prepared> {
    let needs_store =
        cfg.resolver == ResolverKind::Inventory || cfg.answerer == AnswererKind::Builtin;
    let store = match needs_store {
        true => Some(Arc::new(store::InventoryStore::open(&cfg.inventory_file)?)),
        false => None,
    };
    let answerer = match (&store, cfg.answerer) {
        (Some(store), AnswererKind::Builtin) => answer::Answerer::Builtin {
            responder: builtin::Builtin::new(builtin::BuiltinOptions {
                dhcp_domain: cfg.dhcp_domain.clone(),
                require_token: cfg.imds_require_token,
            }),
            store: store.clone(),
        },
        _ => answer::Answerer::Nova(nova::Nova::new(cfg)?),
    };
    Ok(Prepared { store, answerer })
}

/// The resolver in force. The OVN one connects first: it returns once the first Southbound
/// view of this chassis is in (it waits, retrying, for the databases to answer).
pub async fn build_resolver(
    cfg: &Config,
    store: Option<&Arc<store::InventoryStore>>,
) -> Result<(
    Box<dyn resolve::Resolver>,
    Option<Arc<ovn::southbound::Southbound>>,
)> {
    // A new resolver: one file under resolvers/, one ResolverKind value, one arm here.
    Ok(match (cfg.resolver, store) {
        (ResolverKind::Inventory, Some(store)) => (
            Box::new(resolvers::inventory::InventoryResolver::new(store.clone())),
            None,
        ),
        (ResolverKind::Inventory, None) => {
            let store = Arc::new(store::InventoryStore::open(&cfg.inventory_file)?);
            (
                Box::new(resolvers::inventory::InventoryResolver::new(store)),
                None,
            )
        }
        (ResolverKind::Ovn, _) => {
            let id = ovn::identity::read(&cfg.ovn.ovsdb_connection).await?;
            tracing::info!(chassis = %id.chassis, bridge = %id.bridge, sb = %cfg.ovn.sb_connection,
                "OVN resolver: following this chassis in the Southbound database");
            let sb = Arc::new(ovn::southbound::Southbound::start(&cfg.ovn, id).await?);
            (
                Box::new(resolvers::ovn::OvnResolver::new(sb.clone())),
                Some(sb),
            )
        }
    })
}

/// Build the request handler from the configuration (reads inventory and TLS files; the OVN
/// resolver waits for its first view).
pub async fn build_agent(cfg: &Config) -> Result<Built> {
    let Prepared { store, answerer } = prepare(cfg)?;
    let (resolver, ovn) = build_resolver(cfg, store.as_ref()).await?;
    Ok(Built {
        agent: Arc::new(handler::Agent::new(
            resolve::Cached::new(resolver, cfg.cache_ttl),
            answerer,
        )),
        store,
        ovn,
    })
}

/// SIGHUP: reopen `log_file` by its path, so logrotate can move it away.
pub(crate) fn reopen_log_file() {
    if let Err(e) = ns_contract::logfile::reopen() {
        tracing::warn!(err = %e, "cannot reopen the log file; logging to the old one");
    }
}

/// SIGHUP without an inventory (the OVN resolver follows its database live): say so, and
/// frame it with RELOADING and READY for `Type=notify-reload` units.
async fn nothing_to_reload(mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        reopen_log_file();
        notify::systemd(&[State::Reloading]);
        tracing::info!("SIGHUP: nothing to reload (the resolver follows its database live)");
        notify::systemd(&[State::Ready]);
    }
}

/// A built agent and what it keeps running.
pub struct Built {
    pub agent: Arc<handler::Agent>,
    /// The inventory, when the inventory resolver or the built-in responder reads it.
    pub store: Option<Arc<store::InventoryStore>>,
    /// The Southbound side of the OVN resolver (dropping it stops the connection).
    pub ovn: Option<Arc<ovn::southbound::Southbound>>,
}

/// Run the agent until `shutdown` resolves: bind the socket, watch the inventory, serve,
/// then remove the socket. Under systemd it reports READY once listening (with the OVN
/// resolver: once the first Southbound view is in) and STOPPING when `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let Prepared { store, answerer } = prepare(&cfg)?;
    // SIGHUP (systemd's reload, logrotate) must never kill the agent: the handler is installed
    // before the socket exists, so nothing that sees the agent listening can signal it too
    // early. It also covers the wait for the first OVN view.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(
            |err| tracing::warn!(%err, "cannot handle SIGHUP: the inventory reloads only by polling, and a SIGHUP stops the agent"),
        )
        .ok();
    let metrics = match cfg.metrics_bind {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::Metrics(addr, e))?,
        ),
        None => None,
    };
    let socket::Bound {
        listener,
        file: socket_file,
    } = socket::bind_socket(&cfg)?;
    // Proxies may connect now; they wait in the backlog until the first view is in.
    let mut shutdown = std::pin::pin!(shutdown);
    let built = tokio::select! {
        r = build_resolver(&cfg, store.as_ref()) => r,
        _ = &mut shutdown => {
            socket_file.remove();
            tracing::info!("metadata agent stopped before it was ready");
            return Ok(());
        }
    };
    let (resolver, ovn) = match built {
        Ok(x) => x,
        Err(e) => {
            socket_file.remove();
            return Err(e);
        }
    };
    let agent = Arc::new(handler::Agent::new(
        resolve::Cached::new(resolver, cfg.cache_ttl),
        answerer,
    ));
    if let Some(sb) = &ovn {
        agent.metrics.watch_southbound(sb.client.clone());
    }
    let resolver = agent.resolver.inner().name();
    match &agent.answerer {
        answer::Answerer::Nova(n) => tracing::info!(
            socket = %cfg.metadata_proxy_socket.display(), resolver, nova = n.base_url(), keepalive = cfg.keepalive,
            "metadata agent listening, forwarding to Nova"
        ),
        answer::Answerer::Builtin { .. } => tracing::info!(
            socket = %cfg.metadata_proxy_socket.display(), resolver, inventory = %cfg.inventory_file.display(),
            keepalive = cfg.keepalive, "metadata agent listening, answering from the inventory"
        ),
    }
    let metrics_task = metrics.map(|m| {
        tracing::info!(addr = ?m.local_addr().ok(), "serving GET /metrics over TCP");
        tokio::spawn(server::serve_metrics(m, agent.clone()))
    });
    let watcher = match (store, hup) {
        (Some(s), hup) => Some(tokio::spawn(s.watch(cfg.inventory_poll_interval, hup))),
        (None, Some(hup)) => Some(tokio::spawn(nothing_to_reload(hup))),
        (None, None) => None,
    };
    notify::systemd(&[
        State::Ready,
        State::Status(format!(
            "listening on {}",
            cfg.metadata_proxy_socket.display()
        )),
    ]);
    let opts = server::ServeOptions {
        keepalive: cfg.keepalive.then_some(cfg.keepalive_idle_timeout),
        grace: SHUTDOWN_GRACE,
        max_connections: server::connection_cap(cfg.metadata_max_connections),
    };
    let shutdown = async {
        shutdown.await;
        notify::systemd(&[State::Stopping]);
    };
    server::serve(listener, agent, opts, shutdown).await;
    if let Some(w) = watcher {
        w.abort();
    }
    if let Some(m) = metrics_task {
        m.abort();
    }
    socket_file.remove();
    tracing::info!("metadata agent stopped");
    Ok(())
}
