//! `ns-metadata-proxy`: parse options, set up logging, run (see the library).
#![forbid(unsafe_code)]

use clap::Parser;
use ns_metadata_proxy::{app, logfile, process, syslog, Args, Config};
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt as _};
use tracing_subscriber::EnvFilter;

fn main() {
    let mut args = Args::parse();
    // Installed (symlinked) under the old Python proxy's name: keep its defaults.
    args.neutron_defaults = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == "neutron-ns-metadata-proxy"))
        .unwrap_or(false);
    let cfg = match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => fail(&e.to_string(), e.exit_code()),
    };
    let daemon_child = std::env::var_os(process::DAEMON_ENV).is_some();
    if cfg.daemonize && !daemon_child {
        match process::daemonize_parent() {
            Ok(Some(code)) => std::process::exit(code),
            Ok(None) => {}
            Err(e) => fail(&e.to_string(), 1),
        }
    }
    let logs_to_stderr = match init_logging(&cfg) {
        Ok(s) => s,
        Err(e) => fail(&format!("log file: {e:#}"), 1),
    };
    // Unknown keys, typos of our sections, old names: one line each, once, at start.
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    if let Err(e) = app::run(cfg, daemon_child) {
        // Once per destination: the log gets it only when it is not stderr already.
        if !logs_to_stderr {
            tracing::error!(err = %e, "start-up failed");
        }
        fail(&e.to_string(), e.exit_code());
    }
}

fn fail(msg: &str, code: i32) -> ! {
    eprintln!("ns-metadata-proxy: {msg}");
    std::process::exit(code)
}

/// Set up the subscriber; whether it writes to stderr.
fn init_logging(cfg: &Config) -> anyhow::Result<bool> {
    let default = if cfg.debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let file = match &cfg.log_file {
        Some(path) => Some(
            logfile::LogFile::install(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut syslog_missing = None;
    let syslog = cfg.syslog_facility.and_then(|facility| {
        let tag = format!("haproxy-metadata-proxy-{}", cfg.resource.id());
        match syslog::Syslog::connect(std::path::Path::new(syslog::DEV_LOG), facility, &tag) {
            Ok(s) => Some(s),
            Err(e) => {
                syslog_missing = Some(e);
                None
            }
        }
    });
    // Syslog and a log file together get every line (as oslo.log does); neither: stderr.
    let to_stderr = syslog.is_none() && file.is_none();
    let writer = match (syslog, file) {
        (Some(s), Some(f)) => BoxMakeWriter::new(s.and(f)),
        (Some(s), None) => BoxMakeWriter::new(s),
        (None, Some(f)) => BoxMakeWriter::new(f),
        (None, None) => BoxMakeWriter::new(std::io::stderr),
    };
    builder.with_writer(writer).init();
    if let Some(e) = syslog_missing {
        tracing::warn!(err = %e, socket = syslog::DEV_LOG, "--use-syslog: no syslog socket, logging here instead");
    }
    Ok(to_stderr)
}
