//! `ns-metadata-spawner`: parse the command line, set up logging, call the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use ns_metadata_spawner::cli::{self, Command, Invocation};
use ns_metadata_spawner::daemon::{self, RunOptions};
use ns_metadata_spawner::netns_platform::Namespaces;

fn main() -> ExitCode {
    let cli = Invocation::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Priority prefixes and no timestamp under journald; colour only at a terminal.
        .event_format(ns_contract::journal::StderrFormat::detect())
        .init();
    match real_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // The library errors already name their cause; `{e}` avoids printing it twice.
            eprintln!("ns-metadata-spawner: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Invocation) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("start tokio runtime: {e}"))?;
    match &cli.command {
        Command::Run {
            stop_proxies_on_exit,
        } => {
            let opts = RunOptions {
                sources: cli.sources.clone(),
                stop_proxies_on_exit: *stop_proxies_on_exit,
                watch_netns: true,
            };
            rt.block_on(daemon::run(Namespaces, opts))?;
            Ok(0)
        }
        command => Ok(rt.block_on(cli::client(command, &cli.sources))?),
    }
}
