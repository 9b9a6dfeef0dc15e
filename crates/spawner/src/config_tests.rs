//! The spawner's option table: what an operator sees for each source and each mistake.

use super::*;
use ns_contract::limits::Versions;
use ns_ini::Ini;

/// `text` as one file named `s.ini`, plus flags and environment.
fn load_with(
    text: &str,
    flags: &[(&str, &str)],
    env: &[(&str, &str)],
) -> Result<(Config, Vec<String>)> {
    let ini = Ini::parse_str(text, Path::new("s.ini")).map_err(ns_ini::ConfigError::from)?;
    Config::from_loader(
        Loader::new(&SCHEMA)
            .ini(ini)
            .flags(flags.iter().copied())
            .env(env.iter().copied()),
    )
}

fn load(text: &str) -> Result<(Config, Vec<String>)> {
    load_with(text, &[], &[])
}

fn err(text: &str, flags: &[(&str, &str)], env: &[(&str, &str)]) -> String {
    match load_with(text, flags, env) {
        Ok(_) => panic!("{text:?} {flags:?} {env:?} loads"),
        Err(e) => e.to_string(),
    }
}

/// A fresh directory under the system temp dir, removed on drop.
use ns_testkit::tempdir::TempDir as Dir;

#[test]
fn table_and_flags_are_sound() {
    assert_eq!(SCHEMA.check().map_err(|e| e.to_string()), Ok(()));
    crate::cli::command().debug_assert();
}

#[test]
fn defaults() {
    let c = Config::defaults();
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/ns-metadata"));
    assert_eq!(
        c.control_socket,
        PathBuf::from("/var/lib/ns-metadata/control.sock")
    );
    assert_eq!(
        c.metadata_proxy_socket,
        PathBuf::from("/var/lib/neutron/metadata_proxy")
    );
    assert_eq!(c.router_interface, "lo");
    assert_eq!(c.agent_keepalive, KeepaliveMode::Auto);
    assert_eq!(
        c.max_agent_requests, None,
        "unset: the proxy's default, no flag"
    );
    assert_eq!(c.proxy_threads, None, "unset: the proxy's default, no flag");
    assert_eq!(c.timeouts, Timeouts::default());
    assert!(!c.ipv6 && !c.auto_enable_routers && !c.force_metadata && !c.enable_isolated_metadata);
    assert_eq!(c.rate_limit, None);
    assert_eq!(c.records_file, None);
    assert_eq!(c.metadata_proxy_user, None);
    assert_eq!(c.ready_timeout, Duration::from_secs(10));
    assert_eq!(c.stop_timeout, Duration::from_secs(5));
    assert_eq!(c.max_restart_delay, Duration::from_secs(30));
    assert_eq!(c.hang_timeout, Duration::from_secs(60));
    assert!(c.proxy_binary.ends_with("ns-metadata-proxy"));
    assert!(c.proxy_metrics);
    assert_eq!(c.stats_dir(), PathBuf::from("/var/lib/ns-metadata/stats"));
}

#[test]
fn hang_timeout_zero_switches_the_watchdog_off_and_a_bad_one_names_its_origin() {
    let (c, _) = load("[spawner]\nhang_timeout = 0\n").expect("loads");
    assert_eq!(c.hang_timeout, Duration::ZERO);
    let (c, _) = load_with("", &[("hang-timeout", "2.5")], &[]).expect("loads");
    assert_eq!(c.hang_timeout, Duration::from_millis(2500));
    let e = err("[spawner]\nhang_timeout = -1\n", &[], &[]);
    assert!(
        e.contains("s.ini:2: [spawner] hang_timeout: -1 is out of range"),
        "{e}"
    );
    let e = err("", &[("hang-timeout", "never")], &[]);
    assert!(e.contains("--hang-timeout"), "{e}");
}

#[test]
fn proxy_metrics_off_from_the_file_or_the_flag() {
    let (c, _) = load("[spawner]\nproxy_metrics = false\n").expect("loads");
    assert!(!c.proxy_metrics);
    let (c, _) = load_with("", &[("proxy_metrics", "false")], &[]).expect("loads");
    assert!(!c.proxy_metrics);
    let e = err("[spawner]\nproxy_metrics = maybe\n", &[], &[]);
    assert!(e.contains("proxy_metrics"), "{e}");
}

#[test]
fn neutron_names_and_our_section() {
    let (c, w) = load(
        "[DEFAULT]\nstate_path = /srv/n\nenable_isolated_metadata = true\nforce_metadata = True\n\
         enable_metadata_network = yes\nmetadata_proxy_user = neutron\ndebug = true\n\
         [metadata_rate_limiting]\nrate_limit_enabled = true\nbase_query_rate_limit = 5\n\
         [spawner]\nstate_dir = /tmp/s\nrouter_interface = dummy0\nipv6 = on\nagent_keepalive = ON\n\
         max_agent_requests = 0\nproxy_threads = auto\nready_timeout = 2.5\nrecords_file = /etc/r.json\n[agent]\nwhatever = 1\n",
    )
    .expect("valid");
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        c.metadata_proxy_socket,
        PathBuf::from("/srv/n/metadata_proxy")
    );
    assert!(c.enable_isolated_metadata && c.force_metadata && c.enable_metadata_network);
    assert_eq!(c.metadata_proxy_user.as_deref(), Some("neutron"));
    assert_eq!(
        c.rate_limit,
        Some(RateLimit {
            base: "5/10".parse().expect("rate"),
            burst: "10/10".parse().expect("rate"),
            versions: Versions::BOTH,
        })
    );
    assert_eq!(c.control_socket, PathBuf::from("/tmp/s/control.sock"));
    assert_eq!(c.router_interface, "dummy0");
    assert!(c.ipv6);
    assert_eq!(c.agent_keepalive, KeepaliveMode::On);
    assert_eq!(c.max_agent_requests, Some(0));
    assert_eq!(c.proxy_threads.as_deref(), Some("auto"));
    assert_eq!(c.ready_timeout, Duration::from_millis(2500));
    assert_eq!(c.records_file, Some(PathBuf::from("/etc/r.json")));
}

#[test]
fn dollar_rules_are_oslos() {
    // Neutron's sample line, uncommented; both spellings; `$$` is a literal `$`.
    let (c, _) = load(
        "[DEFAULT]\nstate_path = /srv/n\nmetadata_proxy_socket = $state_path/mp\n\
         metadata_proxy_group = a$$b\n",
    )
    .expect("valid");
    assert_eq!(c.metadata_proxy_socket, PathBuf::from("/srv/n/mp"));
    assert_eq!(c.metadata_proxy_group.as_deref(), Some("a$b"));
    let (c, _) = load("[DEFAULT]\nmetadata_proxy_socket = ${state_path}/mp\n").expect("valid");
    assert_eq!(
        c.metadata_proxy_socket,
        PathBuf::from("/var/lib/neutron/mp")
    );
    // Our own section's default follows our state_dir, from any layer.
    let (c, _) = load_with("", &[], &[("OS_SPAWNER__STATE_DIR", "/e")]).expect("valid");
    assert_eq!(c.control_socket, PathBuf::from("/e/control.sock"));
    // A bare `$word` that names no option is an error, as in oslo.
    let e = err("[DEFAULT]\n\nmetadata_proxy_user = pa$word\n", &[], &[]);
    assert!(
        e.starts_with("s.ini:3: [DEFAULT] metadata_proxy_user: undefined reference ${word}"),
        "{e}"
    );
}

#[test]
fn precedence_file_dir_env_flag() {
    let d = Dir::new("prec");
    let file = d.write(
        "a.ini",
        "[spawner]\nrouter_interface = eth0\nstop_timeout = 7\n",
    );
    std::fs::create_dir_all(d.join("conf.d")).expect("mkdir");
    d.write("conf.d/20.conf", "[spawner]\nrouter_interface = eth2\n");
    d.write(
        "conf.d/10.conf",
        "[spawner]\nrouter_interface = eth1\nipv6 = true\n",
    );
    d.write("conf.d/30.ini", "[spawner]\nrouter_interface = skipped\n");
    let dir = d.join("conf.d");
    let files = || Loader::new(&SCHEMA).config_file(&file).config_dir(&dir);
    let (c, _) = Config::from_loader(files()).expect("valid");
    assert_eq!((c.router_interface.as_str(), c.ipv6), ("eth2", true));
    assert_eq!(c.stop_timeout, Duration::from_secs(7));
    let env = [("OS_SPAWNER__ROUTER_INTERFACE", "eth3")];
    let (c, _) = Config::from_loader(files().env(env)).expect("valid");
    assert_eq!(c.router_interface, "eth3");
    let (c, _) =
        Config::from_loader(files().env(env).flag("router-interface", "eth4")).expect("valid");
    assert_eq!(c.router_interface, "eth4");
    // The same layers read again (SIGHUP) see the files as they are now.
    let sources =
        Sources::files(std::slice::from_ref(&file)).flag("config-dir", &dir.display().to_string());
    assert_eq!(sources.load().expect("valid").0.router_interface, "eth2");
    d.write("conf.d/20.conf", "[spawner]\nrouter_interface = eth5\n");
    assert_eq!(sources.load().expect("valid").0.router_interface, "eth5");
}

#[test]
fn bad_values_are_blamed_where_they_were_set() {
    type Case<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a [(&'a str, &'a str)],
        &'a str,
    );
    let cases: &[Case<'_>] = &[
        (
            "[DEFAULT]\nforce_metadata = maybe\n",
            &[],
            &[],
            "s.ini:2: [DEFAULT] force_metadata: invalid boolean \"maybe\"",
        ),
        (
            "",
            &[],
            &[("OS_DEFAULT__FORCE_METADATA", "maybe")],
            "OS_DEFAULT__FORCE_METADATA: invalid boolean",
        ),
        ("", &[("--force-metadata", "maybe")], &[], "--force-metadata: invalid boolean"),
        (
            "[spawner]\nagent_keepalive = sometimes\n",
            &[],
            &[],
            "s.ini:2: [spawner] agent_keepalive: invalid value \"sometimes\": expected one of off, on, auto",
        ),
        (
            "[spawner]\nmax_agent_requests = lots\n",
            &[],
            &[],
            "s.ini:2: [spawner] max_agent_requests: invalid integer \"lots\"",
        ),
        (
            "[spawner]\nproxy_threads = 17\n",
            &[],
            &[],
            "s.ini:2: [spawner] proxy_threads: \"17\" is neither auto nor a thread count of 1 to 16",
        ),
        (
            "",
            &[("max-agent-requests", "1000001")],
            &[],
            "--max-agent-requests: 1000001 is out of range 0..=1000000",
        ),
        (
            "[spawner]\nready_timeout = -1\n",
            &[],
            &[],
            "s.ini:2: [spawner] ready_timeout: -1 is out of range",
        ),
        (
            "",
            &[("stop-timeout", "soon")],
            &[],
            "--stop-timeout: invalid number of seconds \"soon\"",
        ),
        (
            "[spawner]\nrouter_interface = a/b\n",
            &[],
            &[],
            "s.ini:2: [spawner] router_interface: invalid interface",
        ),
        (
            "",
            &[],
            &[("OS_SPAWNER__ROUTER_INTERFACE", "")],
            "OS_SPAWNER__ROUTER_INTERFACE: invalid interface",
        ),
        ("[spawner]\nstate_dir =\n", &[], &[], "s.ini:2: [spawner] state_dir: must not be empty"),
        ("", &[("state-dir", "rel")], &[], "--state-dir: \"rel\" must be an absolute path"),
        ("[spawner]\nproxy_binary =\n", &[], &[], "s.ini:2: [spawner] proxy_binary: must not be empty"),
        (
            "[metadata_rate_limiting]\nrate_limit_enabled = 1\nip_versions = 4,5\n",
            &[],
            &[],
            "s.ini:3: [metadata_rate_limiting] ip_versions: invalid IP version",
        ),
        (
            "[metadata_rate_limiting]\nrate_limit_enabled = 1\nburst_query_rate_limit = 0\n",
            &[],
            &[],
            "s.ini:3: [metadata_rate_limiting] burst_query_rate_limit: 0 is out of range",
        ),
        (
            // The proxy refuses windows over a day: caught here, not by proxies that never
            // start. Checked even with rate limiting off, as oslo checks every value.
            "[metadata_rate_limiting]\nbase_window_duration = 90000\n",
            &[],
            &[],
            "s.ini:2: [metadata_rate_limiting] base_window_duration: 90000 is out of range 1..=86400",
        ),
        (
            "[metadata_haproxy]\ntimeout_server = 0\n",
            &[],
            &[],
            "s.ini:2: [metadata_haproxy] timeout_server: 0 is out of range",
        ),
        ("", &[("timeout-client", "soon")], &[], "--timeout-client: invalid integer \"soon\""),
        (
            "[DEFAULT]\nmetadata_proxy_socket = run/agent.sock\n",
            &[],
            &[],
            "s.ini:2: [DEFAULT] metadata_proxy_socket: \"run/agent.sock\" must be an absolute path",
        ),
    ];
    for (text, flags, env, want) in cases {
        let e = err(text, flags, env);
        assert!(e.starts_with(want), "{e}\n  !~ {want}");
    }
}

#[test]
fn proxy_limits_are_read_with_the_contracts_readers() {
    let (c, w) = load(
        "[metadata_haproxy]\ntimeout_http_request = 1\ntimeout_server = 90\n\
         [metadata_rate_limiting]\nrate_limit_enabled = true\nip_versions = 6\n\
         burst_window_duration = 2\n",
    )
    .expect("valid");
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        c.timeouts,
        Timeouts::from_secs([1, 30, 32, 90, 30]).expect("valid")
    );
    let rl = c.rate_limit.expect("enabled");
    assert_eq!(
        rl.versions,
        Versions {
            v4: false,
            v6: true
        }
    );
    assert_eq!(rl.burst.to_string(), "10/2");
    // Rate limiting off: nothing of it is passed on.
    let (c, _) = load("[metadata_rate_limiting]\nip_versions = 4\n").expect("valid");
    assert_eq!(c.rate_limit, None);
}

#[test]
fn unknown_keys_warn_once_with_did_you_mean() {
    let (_, w) = load(
        "[spawner]\nrouter_interfce = eth0\nrouter_interfce = eth1\n[metadata_haproxy]\n\
         timeout_tunnel = 5\n[DEFAULT]\nnova_metadata_host = 10.0.0.1\n[spawnr]\nipv6 = 1\n",
    )
    .expect("valid");
    assert_eq!(
        w,
        [
            "s.ini:2: [spawner] router_interfce: unknown option, ignored (did you mean `router_interface`?)",
            "s.ini:5: [metadata_haproxy] timeout_tunnel: unknown option, ignored",
            // The metadata agent's option: the spawner does not read it, so say so.
            "s.ini:7: [DEFAULT] nova_metadata_host: unknown option, ignored",
            "s.ini:9: [spawnr]: unknown section, ignored (did you mean [spawner]?)",
        ]
    );
}

#[test]
fn neutron_agent_keys_and_sections_stay_quiet() {
    let (_, w) = load(
        "[DEFAULT]\ndebug = true\ntransport_url = rabbit://x\ncore_plugin = ml2\n\
         interface_driver = openvswitch\ndhcp_driver = x\nagent_mode = dvr_snat\nl3_ha = true\n\
         [AGENT]\nroot_helper = sudo\n[ovs]\nintegration_bridge = br-int\n[network_log]\nx = 1\n",
    )
    .expect("valid");
    assert!(w.is_empty(), "{w:?}");
}

#[test]
fn metadata_network_without_isolated_warns() {
    let (_, w) = load("[DEFAULT]\nenable_metadata_network = true\n").expect("valid");
    assert_eq!(
        w,
        ["s.ini:2: [DEFAULT] enable_metadata_network: has no effect without enable_isolated_metadata = true (as in Neutron)"]
    );
}

/// A file shipped with the project or generated from Neutron: loads, no warning.
fn loads_quietly(name: &str, text: &str) -> Config {
    let ini = Ini::parse_str(text, Path::new(name)).expect("parses");
    let (c, w) = Config::from_loader(Loader::new(&SCHEMA).ini(ini)).expect(name);
    assert!(w.is_empty(), "{name}: {w:#?}");
    c
}

#[test]
fn our_example_and_neutrons_samples_load_without_warnings() {
    let example = include_str!("../../../examples/spawner.ini");
    let c = loads_quietly("examples/spawner.ini", example);
    assert!(c.enable_isolated_metadata);
    // Its commented lines name real options with valid defaults.
    let uncommented: String = example
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(opt) if opt.starts_with(|c: char| c.is_ascii_lowercase()) => opt,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let u = loads_quietly("uncommented", &uncommented);
    let c = Config {
        proxy_binary: u.proxy_binary.clone(),
        ..c
    };
    assert_eq!(u, c);
    let c = loads_quietly(
        "dhcp_agent.ini",
        include_str!("../tests/data/dhcp_agent.ini"),
    );
    // Neutron's own defaults, read as ours: ip_versions = 4 while rate limiting is off.
    assert_eq!((c.rate_limit, c.timeouts), (None, Timeouts::default()));
    loads_quietly("l3_agent.ini", include_str!("../tests/data/l3_agent.ini"));
}

#[test]
fn overrides() {
    let c = Config::defaults().with_overrides(Some(Path::new("/x")), None);
    assert_eq!(c.control_socket, PathBuf::from("/x/control.sock"));
    let c = c.with_overrides(None, Some(Path::new("/y.sock")));
    assert_eq!(c.control_socket, PathBuf::from("/y.sock"));
    assert_eq!(c.pid_dir(), PathBuf::from("/x/pids"));
}

/// Issue "hardening" items 8 and 10: who the proxies run as, by Neutron's rule.
#[test]
fn proxies_run_as_the_agent_sockets_owner_unless_configured() {
    let dir = std::env::temp_dir().join(format!("spawner-ident-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let sock = dir.join("agent.sock");
    let mut c = Config::defaults().with_overrides(Some(&dir), None);
    c.metadata_proxy_socket = sock.clone();
    let ident = |c: &Config| {
        let p = c.for_proxies();
        (p.metadata_proxy_user, p.metadata_proxy_group)
    };
    // No socket yet: nothing to follow (the proxy stays uid 0, without capabilities).
    assert_eq!(ident(&c), (None, None));
    let _l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    // Our own socket: nothing passed, the argv of a default setup is unchanged.
    assert_eq!(ident(&c), (None, None));
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(&sock, Some(65534), Some(65533)).expect("chown");
        assert_eq!(
            ident(&c),
            (Some("65534".into()), Some("65533".into())),
            "the agent's user and group"
        );
        c.metadata_proxy_group = Some("neutron".into());
        assert_eq!(ident(&c), (Some("65534".into()), Some("neutron".into())));
        c.metadata_proxy_group = None;
    }
    // A user without a group: the spawner's group, as Neutron passes its own.
    c.metadata_proxy_user = Some("neutron".into());
    let egid = rustix::process::getegid().as_raw().to_string();
    assert_eq!(ident(&c), (Some("neutron".into()), Some(egid)));
    c.metadata_proxy_group = Some("nova".into());
    assert_eq!(ident(&c), (Some("neutron".into()), Some("nova".into())));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn metrics_bind_is_an_address_and_port() {
    let (c, _) = load("[spawner]\nmetrics_bind = 127.0.0.1:9715\n").expect("loads");
    assert_eq!(
        c.metrics_bind,
        Some("127.0.0.1:9715".parse().expect("addr"))
    );
    let (c, _) = load("[spawner]\nmetrics_bind = [::1]:9715\n").expect("loads");
    assert_eq!(c.metrics_bind, Some("[::1]:9715".parse().expect("addr")));
    let (c, _) = load("[spawner]\n").expect("loads");
    assert_eq!(c.metrics_bind, None, "off by default");
    let e = err("[spawner]\nmetrics_bind = localhost\n", &[], &[]);
    assert!(
        e.starts_with("s.ini:2: [spawner] metrics_bind: \"localhost\" is not ADDRESS:PORT"),
        "{e}"
    );
}

#[test]
fn ovn_source_reads_neutrons_ovn_and_ovs_sections() {
    let (c, w) = load("[spawner]\nsource = records\n").expect("valid");
    assert!(c.ovn.is_none() && w.is_empty(), "{w:?}");
    let (c, w) = load(
        "[spawner]\nsource = ovn\n[ovn]\novn_sb_connection = tcp:10.0.0.1:6642,tcp:10.0.0.2:6642\n\
         ovn_metadata_enabled = true\n[ovs]\novsdb_connection = unix:/run/openvswitch/db.sock\n\
         integration_bridge = br-int\n",
    )
    .expect("valid");
    assert!(w.is_empty(), "Neutron's keys stay quiet: {w:?}");
    let o = c.ovn.expect("ovn on");
    assert_eq!(o.sb_connection, "tcp:10.0.0.1:6642,tcp:10.0.0.2:6642");
    assert_eq!(o.ovsdb_connection, "unix:/run/openvswitch/db.sock");
    assert_eq!(o.probe_interval, Some(Duration::from_secs(60)));
    let e = load("[spawner]\nsource = ovn\n[ovn]\novn_sb_connection = ssl:10.0.0.1:6642\n")
        .expect_err("ssl without files");
    assert!(
        e.to_string().contains("ssl: needs ovn_sb_private_key"),
        "{e}"
    );
    let e = load("[spawner]\nsource = ovn\n[ovs]\novsdb_connection = db.sock\n")
        .expect_err("bad remote");
    assert!(e.to_string().contains("[ovs] ovsdb_connection"), "{e}");
}

/// SIGHUP: what changes only on restart keeps its old value and is named.
#[test]
fn a_reload_keeps_what_changes_only_on_restart() {
    let (old, _) = load("[spawner]\nproxy_model = shared\nshared_servers = 2\n").expect("old");
    let (mut new, _) = load(
        "[spawner]\nproxy_model = per-namespace\nshared_servers = 1\nstate_dir = /x\n\
         agent_keepalive = off\nhang_timeout = 0\n",
    )
    .expect("new");
    let kept = new.keep_restart_only(&old);
    // The control socket's default lives in the state dir.
    assert_eq!(
        kept,
        [
            "state_dir",
            "control_socket",
            "proxy_model",
            "shared_servers",
            "hang_timeout"
        ]
    );
    assert_eq!(
        (new.proxy_model, new.shared_servers, &new.state_dir),
        (ProxyModel::Shared, 2, &old.state_dir)
    );
    assert_eq!(new.agent_keepalive, KeepaliveMode::Off, "the rest is taken");
    let (mut same, _) =
        load("[spawner]\nproxy_model = shared\nshared_servers = 2\n").expect("same");
    assert!(same.keep_restart_only(&old).is_empty());
}

/// The sample spawner.ini with its options switched on at random and mutated (seeded;
/// `NS_FUZZ_SEED` replays): a configuration, or one line naming `s.ini:LINE` (or the default
/// a value reached through `$`); never a panic.
#[test]
fn mutated_sample_files_load_or_name_the_line() {
    const DICT: &[&[u8]] = &[
        b"\nproxy_model = shared\n",
        b"\nshared_servers = 99999999999\n",
        b"\nproxy_threads = 0\n",
        b"\nipv6 = maybe\n",
        b"\nrouter_interface = ../x\n",
        b"\nstate_dir = relative\n",
        b"\nmetrics_bind = [::1]:99999\n",
        b"\nbase_window_duration = 1e9\n",
        b"\n[spawner]\nsource = ovn\n",
        b"$state_path",
    ];
    let sample = include_str!("../../../examples/spawner.ini");
    ns_testkit::fuzz::sample_files(
        "spawner-ini",
        0x5eed_000f,
        1000,
        sample,
        DICT,
        "s.ini:",
        |t| load(t).err().map(|e| e.to_string()),
    );
}

/// Every option set to a hostile multi-line value, with the OVN source and the shared model
/// on so their checks run too: an error names the place in one line, the value quoted.
#[test]
fn every_option_with_a_hostile_value_is_refused_in_one_line() {
    ns_testkit::fuzz::hostile_values(
        SCHEMA.all().map(|o| (o.group, o.name)),
        "[spawner]\nsource = ovn\nproxy_model = shared\n",
        "s.ini:",
        |t| load(t).err().map(|e| e.to_string()),
    );
}
