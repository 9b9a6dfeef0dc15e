//! Unit tests of the option table and the cross-field checks: each builds the command line
//! from an explicit argv and passes the environment explicitly (no stray `OS_*` leaks in).

use super::*;
use ns_contract::socket::DEFAULT_SOCKET;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn res(kind: IdKind, id: &str) -> Resource {
    Resource::new(kind, id).expect("valid id")
}

fn args(argv: &[&str], neutron_defaults: bool) -> Args {
    let m = command()
        .try_get_matches_from(std::iter::once("ns-metadata-proxy").chain(argv.iter().copied()))
        .expect("clap");
    let mut a = Args::from_arg_matches(&m).expect("args");
    a.neutron_defaults = neutron_defaults;
    a
}

/// `argv` with exactly these `OS_*` variables.
fn load(argv: &[&str], env: &[(&str, &str)]) -> Result<Config> {
    Config::from_args_env(&args(argv, false), env.iter().copied())
}

fn parse(argv: &[&str]) -> Result<Config> {
    load(argv, &[])
}

fn err(argv: &[&str]) -> String {
    parse(argv).expect_err("an error").to_string()
}

/// A directory removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new() -> Tmp {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "nsmp-cfg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        Tmp(p)
    }

    /// Write `name` with `text`; its path as an argument.
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write ini");
        p.display().to_string()
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("utf8 path")
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A one-file config: (dir guard, path).
fn ini(text: &str) -> (Tmp, String) {
    let t = Tmp::new();
    let p = t.file("p.ini", text);
    (t, p)
}

#[test]
fn table_and_command_are_sound() {
    SCHEMA.check().expect("table");
    let c = parse(&["--router-id", "r1"]).expect("defaults");
    assert_eq!(
        c.max_connections, DEFAULT_MAXCONN,
        "the table's default and the constant"
    );
    assert_eq!(c.connect_retries, DEFAULT_RETRIES);
    assert_eq!(
        c.max_agent_requests,
        crate::relayq::DEFAULT_MAX_AGENT_REQUESTS,
        "the table's default and the constant"
    );
    command().debug_assert();
    let help = command().render_long_help().to_string();
    for want in [
        "--router-id",
        "--config-dir",
        "--rate-limit-base",
        "--ready-fd",
        "[config: [metadata_haproxy] timeout_server]",
        "[config: [DEFAULT] metadata_proxy_user]",
        "[default: 169.254.169.254:80]",
    ] {
        assert!(help.contains(want), "{want} missing:\n{help}");
    }
    assert!(!help.contains("--nodebug"), "{help}");
    assert!(!help.contains("metadata-proxy-watch-log"), "{help}");
}

#[test]
fn defaults_and_neutron_spellings() {
    let c = parse(&[
        "--router_id=r-1",
        "--pid_file=/tmp/p",
        "--metadata_port=9697",
    ])
    .expect("ok");
    assert_eq!(c.resource, Some(res(IdKind::Router, "r-1")));
    assert_eq!(c.binds.len(), 1);
    assert_eq!(c.binds[0].to_string(), "0.0.0.0:9697");
    assert_eq!(c.pid_file, Some(PathBuf::from("/tmp/p")));
    assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
    assert_eq!(c.timeouts.server, Duration::from_secs(32));
    assert_eq!(c.max_connections, 1024);
    assert_eq!(c.agent_keepalive, KeepaliveMode::Auto);
    assert!(c.rate_limit.is_none());
    assert!(!c.daemonize && !c.debug);
    assert!(c.warnings.is_empty());
    let c = parse(&["--network-id", "n1"]).expect("ok");
    assert_eq!(c.binds[0].to_string(), DEFAULT_BIND);
    let c = parse(&[
        "--router_id=r",
        "--metadata_proxy_socket=/s",
        "--metadata_proxy_user=u",
        "--metadata_proxy_group=g",
        "--state_path=/st",
    ])
    .expect("ok");
    assert_eq!(c.socket, PathBuf::from("/s"));
    assert_eq!(
        (c.user.as_deref(), c.group.as_deref()),
        (Some("u"), Some("g"))
    );
}

#[test]
fn exactly_one_valid_id() {
    assert!(parse(&[]).is_err());
    assert!(parse(&["--router-id", "a", "--network-id", "b"]).is_err());
    assert!(parse(&["--router-id", "a/b"]).is_err());
    assert!(parse(&["--router-id", &"a".repeat(65)]).is_err());
    // The spawner takes ids with '_' (and auto-enables `qrouter-<id>` namespaces):
    // its proxy must start for them.
    assert_eq!(
        parse(&["--router-id", "r_1"])
            .expect("'_' is valid")
            .resource,
        Some(res(IdKind::Router, "r_1"))
    );
    assert!(parse(&["--router-id", "r 1"]).is_err());
    assert_eq!(
        err(&[]),
        "one of --router-id, --network-id or --ovn-network-id is required"
    );
    let e = err(&["--router-id", "a", "--ovn-network-id", "b"]);
    assert!(e.contains("(got --router-id and --ovn-network-id)"), "{e}");
    // An id from a file is named where it was set, so the operator finds the line.
    let (_t, f) = ini("[DEFAULT]\n\nnetwork_id = n-1\n");
    let e = err(&["--router-id", "a", "--config-file", &f]);
    assert!(
        e.ends_with(&format!(
            "(got --router-id and {f}:3: [DEFAULT] network_id)"
        )),
        "{e}"
    );
}

#[test]
fn an_empty_id_is_invalid_not_missing() {
    let e = err(&["--router-id", ""]);
    assert!(e.starts_with("--router-id: invalid id \"\": "), "{e}");
    let e = err(&["--network_id="]);
    assert!(e.starts_with("--network-id: invalid id \"\""), "{e}");
    // In a file (or the environment) an empty id is unset.
    let (_t, f) = ini("[DEFAULT]\nrouter_id =\nnetwork_id = n\n");
    let c = load(
        &["--config-file", &f],
        &[("OS_DEFAULT__OVN_NETWORK_ID", "")],
    )
    .expect("ok");
    assert_eq!(c.resource, Some(res(IdKind::Network, "n")));
}

#[test]
fn a_namespace_name_given_as_id_gets_the_hint() {
    assert_eq!(
        err(&["--router-id", "qrouter-abc"]),
        "--router-id: invalid id \"qrouter-abc\": that is a namespace name; give the id without \"qrouter-\" (\"abc\")"
    );
    let (_t, f) = ini("[DEFAULT]\novn_network_id = ovnmeta-n1\n");
    let e = err(&["--config-file", &f]);
    assert!(
        e.contains(":2: [DEFAULT] ovn_network_id: invalid id"),
        "{e}"
    );
    assert!(e.contains("without \"ovnmeta-\""), "{e}");
}

#[test]
fn ovn_network_id_sends_the_ovn_header() {
    for argv in [
        &["--ovn-network-id", "n-9"][..],
        &["--ovn_network_id=n-9"][..],
    ] {
        let c = parse(argv).expect("ok");
        assert_eq!(c.resource, Some(res(IdKind::OvnNetwork, "n-9")));
        assert_eq!(
            c.resource.as_ref().expect("one resource").header_line(),
            "X-OVN-Network-ID: n-9\r\n"
        );
    }
    let (_t, f) = ini("[DEFAULT]\novn_network_id = n-8\n");
    let c = parse(&["--config-file", &f]).expect("ok");
    assert_eq!(
        c.resource.as_ref().expect("one resource").header_line(),
        "X-OVN-Network-ID: n-8\r\n"
    );
}

#[test]
fn ini_values_and_cli_precedence() {
    let (_t, f) = ini("[DEFAULT]\nnetwork_id = n-2\nmetadata_proxy_socket = /s\nagent_keepalive = on\n[metadata_haproxy]\ntimeout_server = 7\n[metadata_rate_limiting]\nrate_limit_enabled = true\nip_versions = 6\nbase_query_rate_limit = 5\n");
    let c = parse(&["--config-file", &f, "--timeout-server", "9"]).expect("ok");
    assert_eq!(c.resource, Some(res(IdKind::Network, "n-2")));
    assert_eq!(c.socket, PathBuf::from("/s"));
    assert_eq!(c.agent_keepalive, KeepaliveMode::On);
    assert_eq!(c.timeouts.server, Duration::from_secs(9));
    let rl = c.rate_limit.expect("enabled");
    assert_eq!(rl.base.limit, 5);
    assert_eq!(
        rl.versions,
        Versions {
            v4: false,
            v6: true
        }
    );
}

#[test]
fn socket_expands_state_path_and_dollar_rules_as_oslo_config() {
    let (_t, f) = ini(
        "[DEFAULT]\nrouter_id = r\nstate_path = /srv/n\nmetadata_proxy_socket = $state_path/mp\n",
    );
    let c = parse(&["--config-file", &f]).expect("ok");
    assert_eq!(c.socket, PathBuf::from("/srv/n/mp"));
    let c = parse(&[
        "--router-id",
        "r",
        "--metadata-proxy-socket",
        "${state_path}/mp",
    ])
    .expect("ok");
    assert_eq!(c.socket, PathBuf::from("/var/lib/neutron/mp"));
    // A flag's $state_path reaches the default socket.
    let c = parse(&["--router-id", "r", "--state-path", "/st"]).expect("ok");
    assert_eq!(c.socket, PathBuf::from("/st/metadata_proxy"));
    // `$$` is a literal `$`; a bare `$word` is an undefined reference, blamed where written.
    let c = parse(&["--router-id", "r", "--metadata-proxy-socket", "/a$$b"]).expect("ok");
    assert_eq!(c.socket, PathBuf::from("/a$b"));
    let (_t, f) = ini("[DEFAULT]\nrouter_id = r\nnetns = x$nope\n");
    let e = err(&["--config-file", &f]);
    assert!(
        e.contains(":3: [DEFAULT] netns: undefined reference ${nope}"),
        "{e}"
    );
}

#[test]
fn bad_values_name_file_line_env_or_flag() {
    let (_t, f) = ini("[DEFAULT]\nrouter_id = r\n\n[metadata_haproxy]\ntimeout_client = soon\n");
    let e = err(&["--config-file", &f]);
    assert_eq!(
        e,
        format!("{f}:5: [metadata_haproxy] timeout_client: invalid integer \"soon\"")
    );
    let (_t, f) = ini("[DEFAULT]\nrouter_id = r\nagent_keepalive = maybe\n");
    let e = err(&["--config-file", &f]);
    assert!(e.contains(":3: [DEFAULT] agent_keepalive:"), "{e}");
    let e = load(
        &["--router-id", "r"],
        &[("OS_METADATA_HAPROXY__TIMEOUT_SERVER", "0")],
    )
    .expect_err("0 s")
    .to_string();
    assert_eq!(
        e,
        "OS_METADATA_HAPROXY__TIMEOUT_SERVER: 0 is out of range 1..=86400"
    );
    assert_eq!(
        err(&["--router-id", "r", "--timeout-server", "0"]),
        "--timeout-server: 0 is out of range 1..=86400"
    );
    assert_eq!(
        err(&["--router-id", "r", "--max-connections", "0"]),
        "--max-connections: 0 is out of range 1..=1000000"
    );
    assert_eq!(
        err(&["--router-id", "r", "--max-agent-requests=-1"]),
        "--max-agent-requests: -1 is out of range 0..=1000000"
    );
    let (_t, f) = ini("[DEFAULT]\nmax_agent_requests = many\n");
    let e = err(&["--router-id", "r", "--config-file", &f]);
    assert!(
        e.ends_with(":2: [DEFAULT] max_agent_requests: invalid integer \"many\""),
        "{e}"
    );
    let c = parse(&["--router-id", "r", "--max-agent-requests", "0"]).expect("0: no limit");
    assert_eq!(c.max_agent_requests, 0);
    let (_t, f) = ini("[DEFAULT]\nthreads = two\n");
    let e = err(&["--router-id", "r", "--config-file", &f]);
    assert!(
        e.ends_with(":2: [DEFAULT] threads: \"two\" is neither auto nor a thread count of 1 to 16"),
        "{e}"
    );
    assert!(err(&["--router-id", "r", "--threads", "0"]).starts_with("--threads: "));
    let c = parse(&["--router-id", "r", "--threads", "3"]).expect("3 threads");
    assert_eq!(c.threads, 3);
    let c = parse(&["--router-id", "r"]).expect("default");
    assert_eq!(c.threads, 1);
    let c = parse(&["--router-id", "r", "--threads", "auto"]).expect("auto");
    assert_eq!(c.threads, crate::workers::auto());
    assert_eq!(
        err(&["--router-id", "r", "--debug=maybe"]),
        "--debug: invalid boolean \"maybe\": expected true/false, yes/no, on/off or 1/0"
    );
    let e = err(&["--router-id", "r", "--bind", "1.2.3.4"]);
    assert!(e.starts_with("--bind: \"1.2.3.4\": "), "{e}");
    let e = err(&["--router-id", "r", "--pid-file", "rel.pid"]);
    assert_eq!(e, "--pid-file: \"rel.pid\" must be an absolute path");
}

#[test]
fn config_dir_wins_over_files_env_over_both_flags_over_all() {
    let t = Tmp::new();
    let file = t.file("p.ini", "[DEFAULT]\nrouter_id = r\nmax_connections = 10\n");
    let d = Tmp::new();
    d.file(
        "10-a.conf",
        "[DEFAULT]\nmax_connections = 20\ndebug = true\n",
    );
    d.file("20-b.conf", "[DEFAULT]\nmax_connections = 30\n");
    d.file("30-c.ini", "[DEFAULT]\nmax_connections = 40\n");
    // --config-dir first on the command line still wins over --config-file (oslo's order).
    let c = parse(&["--config-dir", d.arg(), "--config-file", &file]).expect("ok");
    assert_eq!(c.max_connections, 30);
    assert!(c.debug);
    let env = [
        ("OS_DEFAULT__MAX_CONNECTIONS", "50"),
        ("OS_DEFAULT__DEBUG", "false"),
    ];
    let argv = ["--config-file", &file, "--config-dir", d.arg()];
    let c = load(&argv, &env).expect("ok");
    assert_eq!((c.max_connections, c.debug), (50, false));
    let mut with_flag = argv.to_vec();
    with_flag.extend(["--max-connections", "60", "--debug"]);
    let c = load(&with_flag, &env).expect("ok");
    assert_eq!((c.max_connections, c.debug), (60, true));
    // The id from the environment alone.
    let c = load(&[], &[("OS_DEFAULT__ROUTER_ID", "r-env")]).expect("ok");
    assert_eq!(c.resource, Some(res(IdKind::Router, "r-env")));
}

#[test]
fn misspelled_section_warns_with_did_you_mean() {
    // The issue's example: before, silently ignored with rate limiting off.
    let (_t, f) =
        ini("[DEFAULT]\nrouter_id = r\n[metadata_rate_limitng]\nrate_limit_enabled = true\n");
    let c = parse(&["--config-file", &f]).expect("ok");
    assert!(c.rate_limit.is_none());
    assert_eq!(
        c.warnings,
        vec![format!(
            "{f}:4: [metadata_rate_limitng]: unknown section, ignored (did you mean [metadata_rate_limiting]?)"
        )]
    );
    let (_t, f) = ini("[DEFAULT]\nrouter_id = r\nmetadata_proxy_sokcet = /s\n[metadata_haproxy]\ntimeout_sever = 9\n");
    let c = parse(&["--config-file", &f]).expect("ok");
    assert_eq!(
        c.warnings,
        vec![
            format!("{f}:3: [DEFAULT] metadata_proxy_sokcet: unknown option, ignored (did you mean `metadata_proxy_socket`?)"),
            format!("{f}:5: [metadata_haproxy] timeout_sever: unknown option, ignored (did you mean `timeout_server`?)"),
        ]
    );
}

#[test]
fn neutron_files_stay_quiet() {
    // Keys of metadata_agent.ini, l3_agent.ini, dhcp_agent.ini and oslo's, and their sections.
    let (_t, f) = ini(
        "[DEFAULT]\nrouter_id = r\nnova_metadata_host = 10.0.0.1\nmetadata_workers = 2\n\
         interface_driver = openvswitch\nagent_mode = legacy\nenable_isolated_metadata = true\n\
         rate_limit_burst = 0\ntransport_url = rabbit://x\n[agent]\nreport_interval = 30\n\
         [ovs]\nbridge_mappings = x\n[metadata_rate_limiting]\nrate_limit_enabled = false\n",
    );
    let c = parse(&["--config-file", &f]).expect("ok");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // oslo's old name for log_dir works, with a warning.
    let (_t, f) = ini("[DEFAULT]\nrouter_id = r\nlogdir = /l\n");
    let c = parse(&["--config-file", &f]).expect("ok");
    assert_eq!(
        c.log_file,
        Some(PathBuf::from("/l/neutron-ns-metadata-proxy-r.log"))
    );
    assert_eq!(
        c.warnings,
        vec![format!(
            "{f}:3: [DEFAULT] logdir: deprecated name, use [DEFAULT] log_dir"
        )]
    );
}

#[test]
fn binds_and_metadata_port() {
    let c = parse(&[
        "--router-id",
        "r",
        "--bind",
        "127.0.0.1:1",
        "--bind",
        "[::]:2,127.0.0.2:3",
    ])
    .expect("ok");
    let binds: Vec<String> = c.binds.iter().map(ToString::to_string).collect();
    assert_eq!(binds, ["127.0.0.1:1", "[::]:2", "127.0.0.2:3"]);
    let one = |argv: &[&str]| parse(argv).expect("ok").binds[0].to_string();
    let (_t, f) = ini("[DEFAULT]\nrouter_id = r\nbind = 127.0.0.1:5\nmetadata_port = 9697\n");
    assert_eq!(
        one(&["--config-file", &f]),
        "127.0.0.1:5",
        "bind wins in a file"
    );
    assert_eq!(
        one(&["--config-file", &f, "--metadata-port", "9"]),
        "0.0.0.0:9",
        "a flag wins over the file"
    );
    assert_eq!(
        one(&[
            "--config-file",
            &f,
            "--metadata-port",
            "9",
            "--bind",
            "127.0.0.1:6"
        ]),
        "127.0.0.1:6"
    );
    let (_t, f) = ini("[DEFAULT]\nrouter_id = r\nbind =\n");
    assert_eq!(one(&["--config-file", &f]), DEFAULT_BIND);
}

#[test]
fn rate_flags() {
    let c = parse(&["--router-id", "r", "--rate-limit-base", "10/60"]).expect("ok");
    let rl = c.rate_limit.expect("on");
    assert_eq!(rl.burst, rl.base);
    assert_eq!(rl.versions, Versions::BOTH);
}

#[test]
fn ip_versions_flag() {
    // What the spawner passes on: exactly the contract's RateLimit::args().
    let want = RateLimit {
        base: "5/60".parse().expect("rate"),
        burst: "2/1".parse().expect("rate"),
        versions: "6".parse().expect("versions"),
    };
    let mut argv = vec!["--router-id".to_owned(), "r".to_owned()];
    argv.extend(want.args());
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    assert_eq!(parse(&argv).expect("ok").rate_limit, Some(want));
    for (flag, v4, v6) in [("4", true, false), ("6", false, true), ("4,6", true, true)] {
        let c = parse(&[
            "--router-id",
            "r",
            "--rate-limit-burst",
            "3/1",
            "--rate-limit-ip-versions",
            flag,
        ])
        .expect("ok");
        let rl = c.rate_limit.expect("on");
        assert_eq!((rl.versions.v4, rl.versions.v6), (v4, v6), "{flag}");
        assert_eq!(rl.base, rl.burst, "one window: the other adds nothing");
    }
    assert!(Args::try_parse_from(["p", "--rate-limit-ip-versions", "5"]).is_err());
    // The flag wins over the INI's ip_versions; alone it does not turn limiting on.
    let (_t, f) = ini("[DEFAULT]\nrouter_id = r\n[metadata_rate_limiting]\nrate_limit_enabled = true\nip_versions = 4\n");
    let c = parse(&["--config-file", &f, "--rate-limit-ip-versions", "6"]).expect("ok");
    let rl = c.rate_limit.expect("on");
    assert_eq!(rl.versions, "6".parse().expect("v"));
    assert_eq!(rl.base.to_string(), "10/10", "Neutron's default window");
    let c = parse(&["--config-file", &f]).expect("ok");
    assert_eq!(c.rate_limit.expect("on").versions, "4".parse().expect("v"));
    let e = err(&["--router-id", "r", "--rate-limit-ip-versions", "4"]);
    assert!(e.contains("rate limiting is off"), "{e}");
    let (_t, f) = ini("[DEFAULT]\nrouter_id = r\n[metadata_rate_limiting]\nrate_limit_enabled = true\nburst_window_duration = 0\n");
    let e = err(&["--config-file", &f]);
    assert!(
        e.contains(":5: [metadata_rate_limiting] burst_window_duration"),
        "{e}"
    );
    // The environment turns it on too.
    let c = load(
        &["--router-id", "r"],
        &[("OS_METADATA_RATE_LIMITING__RATE_LIMIT_ENABLED", "true")],
    )
    .expect("ok");
    assert!(c.rate_limit.is_some());
}

#[test]
fn booleans_last_wins_and_old_name_daemonizes() {
    let c = parse(&["--router-id", "r", "--debug", "--nodebug"]).expect("ok");
    assert!(!c.debug);
    let c = parse(&["--router-id", "r", "--nodebug", "--debug"]).expect("ok");
    assert!(c.debug);
    let c = parse(&["--router-id", "r", "--debug=false"]).expect("ok");
    assert!(!c.debug);
    let c = parse(&["--router_id=r", "--daemonize", "--nodaemonize"]).expect("ok");
    assert!(!c.daemonize, "the last of a flag and its negation wins");
    let old = |argv: &[&str]| -> bool {
        Config::from_args_env(&args(argv, true), Vec::<(String, String)>::new())
            .expect("ok")
            .daemonize
    };
    assert!(
        old(&["--router-id", "r"]),
        "neutron-ns-metadata-proxy daemonizes"
    );
    assert!(!old(&["--router-id", "r", "--nodaemonize"]));
    let (_t, f) = ini("[DEFAULT]\nrouter_id = r\ndaemonize = false\n");
    assert!(!old(&["--config-file", &f]), "unless its file says no");
}

#[test]
fn old_proxy_log_options() {
    let c = parse(&[
        "--router_id=r",
        "--log-dir=/l",
        "--log-file=x.log",
        "--nodaemonize",
        "--nometadata_proxy_watch_log",
        "--metadata_proxy_num_threads=1000",
        "--verbose",
    ])
    .expect("ok");
    assert_eq!(c.log_file, Some(PathBuf::from("/l/x.log")));
    assert!(!c.daemonize);
    let c = parse(&[
        "--router_id=r",
        "--log_dir=/l",
        "--use-syslog",
        "--metadata_proxy_watch_log",
        "--nouse-syslog",
        "--use_syslog",
    ])
    .expect("ok");
    assert_eq!(
        c.log_file,
        Some(PathBuf::from("/l/neutron-ns-metadata-proxy-r.log"))
    );
    assert_eq!(c.syslog_facility, Some(1));
    let c = parse(&[
        "--router_id=r",
        "--use-syslog",
        "--syslog_log_facility=local3",
    ])
    .expect("ok");
    assert_eq!(c.syslog_facility, Some(19));
    let e = err(&[
        "--router_id=r",
        "--use-syslog",
        "--syslog-log-facility=LOG_NOPE",
    ]);
    assert_eq!(
        e,
        "--syslog-log-facility: unknown syslog facility \"LOG_NOPE\""
    );
    let c = parse(&["--router_id=r", "--log-file=/abs.log", "--log-dir=/l"]).expect("ok");
    assert_eq!(c.log_file.as_deref(), Some(Path::new("/abs.log")));
}

#[test]
fn ready_fds_repeat() {
    let c = parse(&["--router-id", "r", "--ready-fd", "5", "--ready-fd", "7"]).expect("ok");
    assert_eq!(c.ready_fds, [5, 7]);
}

#[test]
fn the_example_file_loads_quietly() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/proxy.ini");
    let c = parse(&["--router-id", "r", "--config-file", example]).expect("example loads");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
}

#[test]
fn the_shared_server_refuses_a_statistics_fd_of_its_own() {
    let e = err(&[
        "--shared-server",
        "/tmp/x",
        "--control-fd",
        "4",
        "--stats-fd",
        "5",
    ]);
    assert!(
        e.contains("--shared-server") && e.contains("--stats-fd"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    let e = err(&[
        "--shared-server",
        "/tmp/x",
        "--control-fd",
        "4",
        "--heartbeat-fd",
        "5",
    ]);
    assert!(e.contains("--heartbeat-fd"), "{e}");
}

#[test]
fn a_heartbeat_fd_is_taken_alone_and_never_with_a_stats_fd() {
    let c = parse(&["--router-id", "r", "--heartbeat-fd", "5"]).expect("parses");
    assert_eq!((c.heartbeat_fd, c.stats_fd), (Some(5), None));
    let e = command()
        .try_get_matches_from([
            "ns-metadata-proxy",
            "--router-id",
            "r",
            "--heartbeat-fd",
            "5",
            "--stats-fd",
            "6",
        ])
        .expect_err("conflict")
        .to_string();
    assert!(
        e.contains("--heartbeat-fd") && e.contains("--stats-fd"),
        "{e}"
    );
}

/// `--router-id r-1 --config-file p.ini` with `text` in the file: the error, if any.
fn router_with_file(t: &Tmp, text: &str) -> Option<String> {
    let f = t.file("p.ini", text);
    parse(&["--router-id", "r-1", "--config-file", &f])
        .err()
        .map(|e| e.to_string())
}

/// The sample proxy.ini with its options switched on at random and mutated (seeded;
/// `NS_FUZZ_SEED` replays), with a router id on the command line: a configuration, or one
/// line naming the file's line (or the default a value reached through `$`); never a panic.
#[test]
fn mutated_sample_files_load_or_name_the_line() {
    const DICT: &[&[u8]] = &[
        b"\nbind = [fe80::a9fe:a9fe]:80%\n",
        b"\nbind = 169.254.169.254:99999\n",
        b"\nnetwork_id = n-1\n",
        b"\nmax_connections = 0\n",
        b"\nthreads = 99999999999999999999\n",
        b"\nip_versions = 5\n",
        b"\nsyslog_log_facility = LOG_NOPE\n",
        b"\ntimeout_server = 0.0001\n",
        b"\nagent_keepalive = sometimes\n",
        b"$state_path",
    ];
    let sample = include_str!("../../../examples/proxy.ini");
    let t = Tmp::new();
    ns_testkit::fuzz::sample_files(
        "proxy-ini",
        0x5eed_0011,
        300,
        sample,
        DICT,
        "p.ini:",
        |text| router_with_file(&t, text),
    );
}

/// Every option set to a hostile multi-line value: an error names the place in one line,
/// the value quoted (`bind` echoed it raw, line break and all, before).
#[test]
fn every_option_with_a_hostile_value_is_refused_in_one_line() {
    let t = Tmp::new();
    ns_testkit::fuzz::hostile_values(
        SCHEMA.all().map(|o| (o.group, o.name)),
        "[DEFAULT]\n",
        "p.ini:",
        |text| router_with_file(&t, text),
    );
}
