//! The agent's table through every layer: defaults, files, `--config-dir`, `OS_DEFAULT__*`,
//! flags as typed on a command line; the `$` rules; where each error points; which keys warn.

use super::*;
use ns_contract::socket;
use ns_ini::Ini;

const FILE: &str = "/etc/neutron/metadata_agent.ini";

type Loaded2 = Result<(Config, Vec<String>), ConfigError>;

/// One INI text, then env, then flags, as the binary layers them.
fn load(text: &str, env: &[(&str, &str)], flags: &[(&str, &str)]) -> Loaded2 {
    let ini = Ini::parse_str(text, Path::new(FILE))?;
    resolve(
        Loader::new(&SCHEMA)
            .ini(ini)
            .env(env.iter().copied())
            .flags(flags.iter().copied())
            .load()?,
    )
}

fn ini(text: &str) -> Config {
    load(text, &[], &[]).expect("valid").0
}

fn err(text: &str, env: &[(&str, &str)], flags: &[(&str, &str)]) -> String {
    load(text, env, flags).expect_err("invalid").to_string()
}

/// A real command line through clap (spellings, `=`, `-d`), no environment.
fn argv(args: &[&str]) -> Loaded2 {
    let m = command()
        .try_get_matches_from(std::iter::once("ns-metadata-agent").chain(args.iter().copied()))
        .map_err(|e| ConfigError::Schema(e.to_string()))?;
    resolve(Loader::new(&SCHEMA).matches(&m).load()?)
}

/// A temp directory removed on drop.
use ns_testkit::tempdir::TempDir as Dir;

#[test]
fn table_and_command_are_sound() {
    assert_eq!(SCHEMA.check().map_err(|e| e.to_string()), Ok(()));
    command().debug_assert();
    // Every option of Neutron's metadata agent is one of ours, not merely tolerated.
    let socket_keys = [
        "metadata_proxy_socket",
        "metadata_proxy_user",
        "metadata_proxy_group",
    ];
    for k in ns_contract::neutron_options::METADATA_AGENT
        .iter()
        .chain(&socket_keys)
    {
        assert!(SCHEMA.find(D, k).is_some(), "{k} is not ours");
    }
}

#[test]
fn defaults_follow_neutron() {
    let c = ini("");
    assert_eq!(
        c.metadata_proxy_socket,
        PathBuf::from(socket::DEFAULT_SOCKET)
    );
    assert_eq!(c.metadata_proxy_socket_mode, SocketMode::Deduce);
    assert_eq!(c.resolver, ResolverKind::Inventory);
    assert_eq!(c.metadata_backlog, 4096);
    assert!(c.metadata_workers >= 1);
    assert_eq!(c.nova_metadata_port, 8775);
    assert_eq!(c.nova_metadata_protocol, "http");
    assert_eq!(c.answerer, AnswererKind::Builtin);
    assert_eq!(c.inventory_file, PathBuf::from(DEFAULT_INVENTORY));
    assert!(c.keepalive);
    assert_eq!(c.nova_metadata_timeout, Duration::from_secs(60));
    assert_eq!(c.cache_ttl, Duration::from_secs(5));
    assert_eq!(c.dhcp_domain, "novalocal");
    assert_eq!(c.metadata_proxy_shared_secret, "");
}

#[test]
fn nova_host_selects_nova_unless_told_otherwise() {
    let c = ini("[DEFAULT]\nnova_metadata_host = 10.0.0.5\n");
    assert_eq!(c.answerer, AnswererKind::Nova);
    assert_eq!(c.nova_authority(), "10.0.0.5:8775");
    let c = ini("[DEFAULT]\nnova_metadata_host = fd00::5\nmetadata_backend = builtin\n");
    assert_eq!(c.answerer, AnswererKind::Builtin);
    assert_eq!(c.nova_authority(), "[fd00::5]:8775");
    let c = ini("[DEFAULT]\nmetadata_backend = NOVA\n");
    assert_eq!(
        (c.answerer, c.nova_authority().as_str()),
        (AnswererKind::Nova, "127.0.0.1:8775")
    );
    // The pre-Queens name still works, with a warning naming the new one.
    let text = "[DEFAULT]\nnova_metadata_ip = 10.1.1.1\nmetadata_proxy_shared_secret = k\n";
    let (c, w) = load(text, &[], &[]).expect("valid");
    assert_eq!(
        (c.answerer, c.nova_metadata_host.as_str()),
        (AnswererKind::Nova, "10.1.1.1")
    );
    assert_eq!(
        w,
        [format!(
            "{FILE}:2: [DEFAULT] nova_metadata_ip: deprecated name, use [DEFAULT] nova_metadata_host"
        )]
    );
    let e = err("[DEFAULT]\nnova_metadata_ip = a/b\n", &[], &[]);
    assert_eq!(
        e,
        format!("{FILE}:2: [DEFAULT] nova_metadata_ip: invalid host \"a/b\"")
    );
}

#[test]
fn shared_secret_follows_oslo_dollar_rules() {
    // oslo.config reads `$$` as `$`, and Neutron signs with that: so must we, or Nova says 403.
    let c = ini("[DEFAULT]\nmetadata_proxy_shared_secret = pa$$word\n");
    assert_eq!(c.metadata_proxy_shared_secret, "pa$word");
    let c = ini("[DEFAULT]\nmetadata_proxy_shared_secret = a\\$b$\n");
    assert_eq!(c.metadata_proxy_shared_secret, "a$b$");
    // A bare `$word` is a reference oslo cannot resolve either: refuse it where it is written.
    let e = err(
        "[DEFAULT]\n\nmetadata_proxy_shared_secret = pa$word\n",
        &[],
        &[],
    );
    assert!(
        e.starts_with(&format!(
            "{FILE}:3: [DEFAULT] metadata_proxy_shared_secret: undefined reference ${{word}}"
        )),
        "{e}"
    );
    assert!(e.ends_with("(write $$ for a literal $)"), "{e}");
}

#[test]
fn state_path_expands_in_the_socket_and_flags_win() {
    let c = ini("[DEFAULT]\nstate_path = /s\nmetadata_proxy_socket = ${state_path}/m\n");
    assert_eq!(c.metadata_proxy_socket, PathBuf::from("/s/m"));
    let c = ini("[DEFAULT]\nstate_path = /s\nmetadata_proxy_socket = $state_path/m\n");
    assert_eq!(c.metadata_proxy_socket, PathBuf::from("/s/m"));
    let (c, _) = load(
        "[DEFAULT]\nnova_metadata_port = 8000\n",
        &[],
        &[("--nova-metadata-port", "9000"), ("--state-path", "/run/x")],
    )
    .expect("valid");
    assert_eq!(c.nova_metadata_port, 9000);
    assert_eq!(
        c.metadata_proxy_socket,
        PathBuf::from("/run/x/metadata_proxy")
    );
}

#[test]
fn every_documented_flag_spelling_works() {
    let (c, _) = argv(&[
        "-d",
        "--nova_metadata_host",
        "10.0.0.1",
        "--metadata-proxy-socket=/run/a.sock",
        "--keepalive=false",
        "--noimds_require_token",
        "--cache-ttl",
        "0.5",
        "--metadata_backend",
        "builtin",
    ])
    .expect("valid");
    assert!(c.debug);
    assert_eq!(c.nova_metadata_host, "10.0.0.1");
    assert_eq!(c.metadata_proxy_socket, PathBuf::from("/run/a.sock"));
    assert!(!c.keepalive);
    assert!(!c.imds_require_token);
    assert_eq!(c.cache_ttl, Duration::from_millis(500));
    assert_eq!(c.answerer, AnswererKind::Builtin);
    // `=` is required after a boolean flag, so a following word is never its value.
    assert!(argv(&["--keepalive", "false"]).is_err());
}

#[test]
fn config_dir_files_in_sorted_order_win_over_config_file() {
    let d = Dir::new("dir");
    let file = d.write(
        "main.ini",
        "[DEFAULT]\nnova_metadata_port = 1\ncache_ttl = 7\n",
    );
    let conf = Dir::new("confd");
    conf.write("20-b.conf", "[DEFAULT]\nnova_metadata_port = 3\n");
    conf.write(
        "10-a.conf",
        "[DEFAULT]\nnova_metadata_port = 2\ndhcp_domain = a\n",
    );
    conf.write("30-c.conf.disabled", "[DEFAULT]\nnova_metadata_port = 4\n");
    let (c, _) = argv(&[
        "--config-dir",
        conf.path().to_str().expect("utf-8"),
        "--config-file",
        file.to_str().expect("utf-8"),
    ])
    .expect("valid");
    assert_eq!(c.nova_metadata_port, 3);
    assert_eq!(c.dhcp_domain, "a");
    assert_eq!(c.cache_ttl, Duration::from_secs(7));
}

#[test]
fn environment_sits_between_files_and_flags() {
    let text = "[DEFAULT]\nnova_metadata_port = 8000\n";
    let env = [("OS_DEFAULT__NOVA_METADATA_PORT", "9100")];
    let (c, _) = load(text, &env, &[]).expect("valid");
    assert_eq!(c.nova_metadata_port, 9100);
    let (c, _) = load(text, &env, &[("nova-metadata-port", "9200")]).expect("valid");
    assert_eq!(c.nova_metadata_port, 9200);
}

#[test]
fn bad_values_name_file_line_env_or_flag() {
    let cases = [
        ("nova_metadata_port = 0", "nova_metadata_port: 0 is out of range"),
        ("nova_metadata_port = x", "nova_metadata_port: invalid port \"x\""),
        (
            "nova_metadata_protocol = ftp",
            "nova_metadata_protocol: invalid value \"ftp\": expected one of http, https",
        ),
        ("keepalive = perhaps", "keepalive: invalid boolean \"perhaps\""),
        (
            "metadata_proxy_socket_mode = world",
            "metadata_proxy_socket_mode: invalid value \"world\"",
        ),
        (
            "auth_ca_cert = ca.pem",
            "auth_ca_cert: \"ca.pem\" must be an absolute path",
        ),
        ("metadata_backend = magic", "metadata_backend: invalid value"),
        (
            "metadata_proxy_socket = rel/sock",
            "metadata_proxy_socket: \"rel/sock\" must be an absolute path",
        ),
        (
            "resolver = neutron",
            "resolver: invalid value \"neutron\": expected one of auto, inventory, ovn",
        ),
        ("cache_ttl = -1", "cache_ttl: -1 is out of range 0..="),
        ("metadata_workers = 2000", "metadata_workers: 2000 is out of range 0..=1024"),
        (
            "metadata_proxy_socket = /a/long/path/to/a/socket/that/does/not/fit/into/sun_path/because/it/is/longer/than/the/107/bytes/allowed/sock",
            "bytes; a Unix socket path holds at most 107",
        ),
    ];
    for (line, want) in cases {
        let e = err(&format!("[DEFAULT]\n\n{line}\n"), &[], &[]);
        assert!(e.starts_with(&format!("{FILE}:3: [DEFAULT] ")), "{e}");
        assert!(e.contains(want), "{e} should contain {want}");
    }
    let e = err("", &[("OS_DEFAULT__NOVA_METADATA_PORT", "99999")], &[]);
    assert_eq!(
        e,
        "OS_DEFAULT__NOVA_METADATA_PORT: 99999 is out of range 1..=65535"
    );
    let e = err("", &[], &[("cache_ttl", "soon")]);
    assert_eq!(e, "--cache-ttl: invalid number of seconds \"soon\"");
    let e = argv(&["--nova-metadata-timeout", "0"])
        .expect_err("0 s")
        .to_string();
    assert!(
        e.starts_with("--nova-metadata-timeout: 0 is out of range 1..="),
        "{e}"
    );
}

#[test]
fn unknown_keys_warn_once_with_a_suggestion_and_neutrons_stay_quiet() {
    let text = "[DEFAULT]\n\
                nova_metadata_hots = x\n\
                nova_metadata_hots = y\n\
                log_file = /var/log/neutron/metadata-agent.log\n\
                transport_url = rabbit://\n\
                rpc_response_max_timeout = 600\n\
                router_distributed = true\n\
                [AGENT]\nreport_interval = 30\n\
                [cache]\nenabled = true\n\
                [ovs]\novsdb_connection = tcp:127.0.0.1:1\n\
                [ovn]\novn_sb_connection = tcp:127.0.0.1:2\n\
                [defaults]\nx = 1\n";
    // [ovn] selects the OVN resolver and so Nova: a secret keeps its warning out.
    let (_, w) = load(text, &[], &[("metadata-proxy-shared-secret", "s")]).expect("valid");
    assert_eq!(
        w,
        [
            format!(
                "{FILE}:2: [DEFAULT] nova_metadata_hots: unknown option, ignored \
                 (did you mean `nova_metadata_host`?)"
            ),
            format!("{FILE}:17: [defaults]: unknown section, ignored (did you mean [DEFAULT]?)"),
        ]
    );
}

#[test]
fn a_lone_client_certificate_warns_where_it_was_set() {
    let (c, w) = load("", &[], &[("nova-client-cert", "/etc/nova/c.pem")]).expect("valid");
    assert_eq!(c.nova_client_cert, Some(PathBuf::from("/etc/nova/c.pem")));
    assert_eq!(
        w,
        ["--nova-client-cert: nova_client_priv_key is not set, so no client certificate is sent to Nova"]
    );
    let text = "[DEFAULT]\nnova_client_cert = /c\nnova_client_priv_key = /k\n";
    assert!(load(text, &[], &[]).expect("valid").1.is_empty());
}

#[test]
fn the_example_file_loads_without_warnings() {
    let text = include_str!("../../../examples/metadata_agent.ini");
    let (c, w) = load(text, &[], &[]).expect("the example is valid");
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(
        c.metadata_proxy_socket,
        PathBuf::from(socket::DEFAULT_SOCKET)
    );
}

#[test]
fn an_empty_secret_warns_only_when_nova_answers() {
    let (c, w) = load("[DEFAULT]\nnova_metadata_host = 10.0.0.5\n", &[], &[]).expect("valid");
    assert_eq!(c.answerer, AnswererKind::Nova);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("metadata_proxy_shared_secret is empty"),
        "{w:?}"
    );
    assert!(w[0].contains("403"), "{w:?}");
    let text = "[DEFAULT]\nnova_metadata_host = 10.0.0.5\nmetadata_proxy_shared_secret = k\n";
    assert!(load(text, &[], &[]).expect("valid").1.is_empty());
    // The built-in responder signs nothing.
    assert!(load("", &[], &[]).expect("valid").1.is_empty());
}

#[test]
fn response_cap_and_connection_cap_are_options() {
    let c = ini("");
    assert_eq!(c.nova_max_response_bytes, 8 << 20);
    assert_eq!(c.metadata_max_connections, 0);
    let c = ini("[DEFAULT]\nnova_max_response_bytes = 1024\nmetadata_max_connections = 16\n");
    assert_eq!(c.nova_max_response_bytes, 1024);
    assert_eq!(c.metadata_max_connections, 16);
    assert!(err("[DEFAULT]\nnova_max_response_bytes = 0\n", &[], &[])
        .contains("nova_max_response_bytes"));
}

#[test]
fn ovn_resolver_follows_neutrons_ovn_file() {
    let c = ini("");
    assert_eq!(c.resolver, ResolverKind::Inventory, "no [ovn]: inventory");
    assert_eq!(c.ovn.sb_connection, "tcp:127.0.0.1:6642");
    assert_eq!(
        c.ovn.ovsdb_connection,
        "unix:/usr/local/var/run/openvswitch/db.sock"
    );
    assert_eq!(c.ovn.agent_down_time, 75);
    assert_eq!(c.ovn.probe_interval, Some(Duration::from_secs(60)));

    // neutron_ovn_metadata_agent.ini: the OVN resolver, answering through Nova.
    let (c, w) = load(
        "[ovs]\novsdb_connection = unix:/run/openvswitch/db.sock\n\
         [ovn]\novn_sb_connection = tcp:10.0.0.1:6642,tcp:10.0.0.2:6642\n\
         ovsdb_connection_timeout = 180\novsdb_probe_interval = 0\n",
        &[],
        &[("metadata-proxy-shared-secret", "s")],
    )
    .expect("valid");
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(c.resolver, ResolverKind::Ovn);
    assert_eq!(c.answerer, AnswererKind::Nova);
    assert_eq!(c.ovn.ovsdb_connection, "unix:/run/openvswitch/db.sock");
    assert_eq!(c.ovn.probe_interval, None);
    assert!(c.ovn.sb_tls.is_none());

    let e = load("[ovn]\novn_sb_connection = ssl:10.0.0.1:6642\n", &[], &[])
        .expect_err("ssl without files")
        .to_string();
    assert!(e.contains("ssl: needs ovn_sb_private_key"), "{e}");
    let e = load("[ovn]\novn_sb_connection = http://x\n", &[], &[])
        .expect_err("bad remote")
        .to_string();
    assert!(e.contains("ovn_sb_connection"), "{e}");
    // Forcing the inventory leaves [ovn] alone.
    let (c, _) = load(
        "[DEFAULT]\nresolver = inventory\n[ovn]\novn_sb_connection = x\n",
        &[],
        &[],
    )
    .expect("not checked");
    assert_eq!(c.resolver, ResolverKind::Inventory);
}

#[test]
fn metrics_bind_is_an_address_and_port() {
    assert_eq!(ini("[DEFAULT]\n").metrics_bind, None, "off by default");
    let c = ini("[DEFAULT]\nmetrics_bind = 127.0.0.1:9716\n");
    assert_eq!(
        c.metrics_bind,
        Some("127.0.0.1:9716".parse().expect("addr"))
    );
    let e = err("[DEFAULT]\nmetrics_bind = :9716\n", &[], &[]);
    assert!(
        e.contains("metrics_bind: \":9716\" is not ADDRESS:PORT"),
        "{e}"
    );
}

/// The sample metadata_agent.ini with its options switched on at random and mutated
/// (seeded; `NS_FUZZ_SEED` replays): a configuration, or one line naming the file's line (or
/// the default a value reached through `$`); never a panic.
#[test]
fn mutated_sample_files_load_or_name_the_line() {
    const DICT: &[&[u8]] = &[
        b"\nnova_metadata_port = 0\n",
        b"\nnova_metadata_protocol = gopher\n",
        b"\nmetadata_backend = nova\n",
        b"\nmetadata_proxy_socket_mode = 0777\n",
        b"\nkeepalive = -1\n",
        b"\nmetadata_workers = 99999999999999999999\n",
        b"\n[ovn]\novn_sb_connection = tcp:[::1\n",
        b"$state_path",
        b"$$",
    ];
    let sample = include_str!("../../../examples/metadata_agent.ini");
    ns_testkit::fuzz::sample_files("agent-ini", 0x5eed_0010, 1000, sample, DICT, FILE, |t| {
        load(t, &[], &[]).err().map(|e| e.to_string())
    });
}

/// Every option set to a hostile multi-line value, with the OVN resolver and Nova on so
/// their checks run too: an error names the place in one line, the value quoted.
#[test]
fn every_option_with_a_hostile_value_is_refused_in_one_line() {
    ns_testkit::fuzz::hostile_values(
        SCHEMA.all().map(|o| (o.group, o.name)),
        "[DEFAULT]\nresolver = ovn\nnova_metadata_host = n\n",
        FILE,
        |t| load(t, &[], &[]).err().map(|e| e.to_string()),
    );
}
