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
pub mod notify;
pub mod nova;
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

/// Build the request handler from the configuration (reads inventory and TLS files).
pub fn build_agent(cfg: &Config) -> Result<(Arc<handler::Agent>, Arc<store::InventoryStore>)> {
    let store = Arc::new(store::InventoryStore::open(&cfg.inventory_file)?);
    // A new resolver: one file under resolvers/, one ResolverKind value, one arm here.
    let resolver: Box<dyn resolve::Resolver> = match cfg.resolver {
        ResolverKind::Inventory => {
            Box::new(resolvers::inventory::InventoryResolver::new(store.clone()))
        }
    };
    let resolver = resolve::Cached::new(resolver, cfg.cache_ttl);
    let answerer = match cfg.answerer {
        AnswererKind::Nova => answer::Answerer::Nova(nova::Nova::new(cfg)?),
        AnswererKind::Builtin => answer::Answerer::Builtin {
            responder: builtin::Builtin::new(builtin::BuiltinOptions {
                dhcp_domain: cfg.dhcp_domain.clone(),
                require_token: cfg.imds_require_token,
            }),
            store: store.clone(),
        },
    };
    Ok((Arc::new(handler::Agent::new(resolver, answerer)), store))
}

/// Run the agent until `shutdown` resolves: bind the socket, watch the inventory, serve,
/// then remove the socket. Under systemd it reports READY once listening and STOPPING when
/// `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let (agent, store) = build_agent(&cfg)?;
    let socket::Bound {
        listener,
        file: socket_file,
    } = socket::bind_socket(&cfg)?;
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
    // SIGHUP is handled from here on (`watch` installs the handler before returning).
    let watcher = tokio::spawn(store.watch(cfg.inventory_poll_interval));
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
    watcher.abort();
    socket_file.remove();
    tracing::info!("metadata agent stopped");
    Ok(())
}
