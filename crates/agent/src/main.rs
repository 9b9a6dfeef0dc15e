//! ns-metadata-agent binary: parse options, set up logging, run the library until SIGTERM.
#![forbid(unsafe_code)]

use ns_metadata_agent::{config, run};

fn main() {
    let matches = config::command().get_matches();
    let (cfg, warnings) = match config::load(&matches) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("ns-metadata-agent: {e}");
            std::process::exit(2);
        }
    };
    let default_level = if cfg.debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    match &cfg.log_file {
        // oslo.log's --log-file / --log-dir, as Neutron's launchers pass them.
        Some(path) => {
            let file = match ns_contract::logfile::LogFile::install(path) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("ns-metadata-agent: log_file {}: {e}", path.display());
                    std::process::exit(2);
                }
            };
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(file)
                .event_format(ns_contract::journal::StderrFormat::new(false, false))
                .init();
        }
        None => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Priority prefixes and no timestamp under journald; colour only at a terminal.
            .event_format(ns_contract::journal::StderrFormat::detect())
            .init(),
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    match ns_metadata_agent::server::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open file limit"),
    }
    let mut rt = if cfg.metadata_workers == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cfg.metadata_workers);
        b
    };
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ns-metadata-agent: start runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async move { run(cfg, shutdown_signal()).await });
    if let Err(e) = result {
        eprintln!("ns-metadata-agent: {e}");
        std::process::exit(e.exit_code());
    }
}

/// SIGTERM or SIGINT. The handlers are installed when this is called (before the socket is
/// bound and READY is sent), so an early SIGTERM still shuts down cleanly.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}
