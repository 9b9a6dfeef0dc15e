//! `ns-metadata-proxy`: parse options, set up logging, run (see the library).
#![forbid(unsafe_code)]

use clap::Parser;
use ns_metadata_proxy::accesslog::{self, Ordered};
use ns_metadata_proxy::dropin::{self, Route};
use ns_metadata_proxy::{app, process, syslog, Args, Config};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt as _};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Run as `haproxy`, or given `-f`: the haproxy drop-in (src/dropin.rs).
    let (cfg, dropin_file) = if dropin::is_dropin(&argv) {
        match dropin::route(&argv) {
            Route::Serve(cfg, file) => (*cfg, Some(file)),
            // The daemon child of a config that was ours a moment ago: never hand the
            // readiness pipe to another program (its parent would wait for ever).
            Route::Exec(why) if std::env::var_os(process::DAEMON_ENV).is_some() => fail(
                &format!("the configuration changed while starting: {why}"),
                1,
            ),
            Route::Exec(why) => fail(&dropin::exec_real(&argv, &why), 1),
            Route::Fail(line) => fail(&line, 1),
        }
    } else {
        (own_config(), None)
    };
    let daemon_child = std::env::var_os(process::DAEMON_ENV).is_some();
    let ready_env = dropin_file.as_ref().map(|_| dropin::READY_FD_ENV);
    if cfg.daemonize && !daemon_child {
        match process::daemonize_parent(ready_env) {
            Ok(Some(code)) => std::process::exit(code),
            Ok(None) => {}
            Err(e) => fail(&e.to_string(), 1),
        }
    }
    let logs_to_stderr = match init_logging(&cfg) {
        Ok(s) => s,
        Err(e) => fail(&format!("log file: {e:#}"), 1),
    };
    if let Some(file) = &dropin_file {
        tracing::info!(
            "haproxy drop-in: {} is Neutron's metadata proxy configuration: served by \
             ns-metadata-proxy",
            file.display()
        );
    }
    // Unknown keys, typos of our sections, old names: one line each, once, at start.
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    // Before any thread exists: the namespace the spawner handed over (ns_contract::spawn).
    if let Err(e) = process::enter_spawner_netns(&cfg, dropin_file.is_some()) {
        fail(&e.to_string(), e.exit_code());
    }
    if let Err(e) = app::run(cfg, daemon_child) {
        // Once per destination: the log gets it only when it is not stderr already.
        if !logs_to_stderr {
            tracing::error!(err = %e, "start-up failed");
        }
        // haproxy's rule in the drop-in: every failure to start is exit 1.
        let code = if dropin_file.is_some() {
            1
        } else {
            e.exit_code()
        };
        fail(&e.to_string(), code);
    }
    // A clean exit (SIGTERM, SIGINT) loses no access line.
    accesslog::flush();
}

/// Our own command line.
fn own_config() -> Config {
    let mut args = Args::parse();
    // Installed (symlinked) under the old Python proxy's name: keep its defaults.
    args.neutron_defaults = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == "neutron-ns-metadata-proxy"))
        .unwrap_or(false);
    match Config::from_args(args) {
        Ok(c) => c,
        Err(e) => fail(&e.to_string(), e.exit_code()),
    }
}

fn fail(msg: &str, code: i32) -> ! {
    accesslog::flush();
    eprintln!("ns-metadata-proxy: {msg}");
    std::process::exit(code)
}

/// Set up the subscriber; whether it writes to stderr.
fn init_logging(cfg: &Config) -> anyhow::Result<bool> {
    let default = match cfg.log_level {
        Some(l) => l.as_str().to_ascii_lowercase(),
        None if cfg.debug => "debug".to_owned(),
        None => "info".to_owned(),
    };
    // `RUST_LOG` as `target=level` directives (`debug`, `info,access=off`): tracing's
    // `Targets`, not `EnvFilter`, whose span and field filters need a regex engine that would
    // add 0.25 MB of code to every proxy (bench/RESULTS.md, session 10). One it cannot parse
    // is ignored, as before, with a warning once logging is up.
    let configured = || default.parse::<Targets>().unwrap_or_default();
    let mut bad_rust_log = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match v.parse::<Targets>() {
            Ok(t) => t,
            Err(e) => {
                bad_rust_log = Some((v, e.to_string()));
                configured()
            }
        },
        _ => configured(),
    };
    let file = match &cfg.log_file {
        Some(path) => Some(
            ns_contract::logfile::LogFile::install(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut syslog_missing = None;
    let syslog = cfg.syslog_facility.and_then(|facility| {
        let tag = cfg
            .syslog_tag
            .clone()
            .unwrap_or_else(|| match &cfg.resource {
                Some(r) => format!("haproxy-metadata-proxy-{}", r.id()),
                None => "ns-metadata-proxy-shared".to_owned(),
            });
        match syslog::Syslog::connect(&cfg.syslog_socket, facility, &tag) {
            Ok(s) => Some(s),
            Err(e) => {
                syslog_missing = Some(e);
                None
            }
        }
    });
    // Syslog and a log file together get every line (as oslo.log does); neither: stderr.
    let to_stderr = syslog.is_none() && file.is_none();
    // On stderr under journald (a proxy the spawner started shares its journal stream):
    // priority prefixes and no timestamp. Never colour: logs are read by machines.
    let journal = to_stderr && ns_contract::journal::stderr_is_journal();
    // The access lines' own writer, to the same places (src/accesslog.rs); every other line
    // is written after the access lines pending before it.
    accesslog::install(to_stderr, journal, file, syslog.clone());
    let writer = match (syslog, file) {
        (Some(s), Some(f)) => BoxMakeWriter::new(Ordered(s.and(f))),
        (Some(s), None) => BoxMakeWriter::new(Ordered(s)),
        (None, Some(f)) => BoxMakeWriter::new(Ordered(f)),
        (None, None) => BoxMakeWriter::new(Ordered(std::io::stderr)),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .event_format(ns_contract::journal::StderrFormat::new(journal, false))
                .with_writer(writer),
        )
        .with(filter)
        .init();
    if let Some((value, e)) = bad_rust_log {
        tracing::warn!(rust_log = %value, err = %e, "RUST_LOG ignored: not `level` or `target=level` directives");
    }
    if let Some(e) = syslog_missing {
        tracing::warn!(err = %e, socket = %cfg.syslog_socket.display(), "syslog: no syslog socket, logging here instead");
    }
    Ok(to_stderr)
}
