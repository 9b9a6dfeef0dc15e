//! ns-metadata-agent: the other end of the proxies' Unix socket, compatible with Neutron's
//! neutron-metadata-agent. Resolves (router|network, client IP) to an instance through the
//! inventory, then forwards to Nova with the signed instance id or answers itself.
#![forbid(unsafe_code)]

pub mod builtin;
pub mod config;
pub mod handler;
pub mod inventory;
pub mod nova;
pub mod resolve;
pub mod respond;
pub mod server;
pub mod socket;
pub mod store;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use config::{BackendKind, Cli, Config, ConfigError};

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
    Socket(#[from] socket::SocketError),
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
    let resolver = resolve::Resolver::new(store.clone(), cfg.cache_ttl);
    let answerer = match cfg.backend {
        BackendKind::Nova => handler::Answerer::Nova(nova::Nova::new(cfg)?),
        BackendKind::Builtin => {
            handler::Answerer::Builtin(builtin::Builtin::new(builtin::BuiltinOptions {
                dhcp_domain: cfg.dhcp_domain.clone(),
                require_token: cfg.imds_require_token,
            }))
        }
    };
    Ok((Arc::new(handler::Agent::new(resolver, answerer)), store))
}

/// Run the agent until `shutdown` resolves: bind the socket, watch the inventory, serve,
/// then remove the socket.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let (agent, store) = build_agent(&cfg)?;
    let listener = socket::bind_socket(&cfg)?;
    match &agent.answerer {
        handler::Answerer::Nova(n) => tracing::info!(
            socket = %cfg.metadata_proxy_socket.display(), nova = n.base_url(), keepalive = cfg.keepalive,
            "metadata agent listening, forwarding to Nova"
        ),
        handler::Answerer::Builtin(_) => tracing::info!(
            socket = %cfg.metadata_proxy_socket.display(), inventory = %cfg.inventory_file.display(),
            keepalive = cfg.keepalive, "metadata agent listening, answering from the inventory"
        ),
    }
    let watcher = tokio::spawn(store.watch(cfg.inventory_poll_interval));
    let opts = server::ServeOptions {
        keepalive: cfg.keepalive.then_some(cfg.keepalive_idle_timeout),
        grace: SHUTDOWN_GRACE,
    };
    server::serve(listener, agent, opts, shutdown).await;
    watcher.abort();
    if let Err(err) = std::fs::remove_file(&cfg.metadata_proxy_socket) {
        tracing::debug!(%err, "socket already gone");
    }
    tracing::info!("metadata agent stopped");
    Ok(())
}
