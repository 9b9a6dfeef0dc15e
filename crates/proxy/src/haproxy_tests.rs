//! Unit tests of the grammar: every variant Neutron renders (its own templates, in
//! tests/data, filled in as its code does: tests/common/neutron_conf.rs) parsed into its
//! structure, including the IPv6 bind in both spellings; foreign files; bad values as one
//! `file:line: keyword: reason` line.

use super::*;

#[path = "../tests/common/neutron_conf.rs"]
mod neutron_conf;

use neutron_conf::{
    render, GLOBAL, HEADERS_ML2, HEADERS_OVN, LISTEN, LISTEN_RATE_LIMITED, ROUTER_DEFAULTS,
};

/// One rendered variant: the listen part, the header part, and values over the defaults.
struct Variant {
    listen: &'static str,
    headers: &'static str,
    values: Vec<(&'static str, &'static str)>,
}

impl Variant {
    fn render(&self) -> String {
        render(
            &[GLOBAL, self.listen, self.headers],
            &self.values,
            ROUTER_DEFAULTS,
        )
    }

    fn with(mut self, k: &'static str, v: &'static str) -> Variant {
        self.values.insert(0, (k, v));
        self
    }
}

const ROUTER: &str = "8f1b2c3d-0000-4000-8000-00000000000a";
const NET: &str = "5e6f7a8b-0000-4000-8000-00000000000b";

fn router_v4() -> Variant {
    Variant {
        listen: LISTEN,
        headers: HEADERS_ML2,
        values: vec![("res_id", ROUTER)],
    }
}

fn p(text: &str) -> Result<HaproxyConfig, Parse> {
    parse(text, Path::new("/var/lib/neutron/ns-metadata-proxy/x.conf"))
}

fn ok(text: &str) -> HaproxyConfig {
    p(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn spec(s: &str) -> BindSpec {
    s.parse().expect("bind spec")
}

#[test]
fn l3_router_ipv4_with_the_four_space_line() {
    let text = router_v4().render();
    assert!(
        text.starts_with("\nglobal\n"),
        "the template's first empty line"
    );
    assert!(
        text.contains("\n    \n"),
        "the empty bind_v6_line: four spaces"
    );
    let c = ok(&text);
    assert_eq!(
        c,
        HaproxyConfig {
            log: Some(LogTarget {
                socket: "/dev/log".into(),
                facility: 16,
                level: "info",
            }),
            log_tag: Some(format!("haproxy-metadata-proxy-{ROUTER}")),
            user: Some(("neutron".into(), 5)),
            group: Some(("neutron".into(), 6)),
            maxconn: Some(1024),
            nbthread: Some(2),
            pidfile: Some(format!("/var/lib/neutron/external/pids/{ROUTER}.pid.haproxy").into()),
            daemon: true,
            http_server_close: true,
            retries: Some(3),
            timeouts: Timeouts {
                http_request: Some(Duration::from_secs(30)),
                connect: Some(Duration::from_secs(30)),
                client: Some(Duration::from_secs(32)),
                server: Some(Duration::from_secs(32)),
                http_keep_alive: Some(Duration::from_secs(30)),
            },
            tables: vec![],
            binds: vec![spec("0.0.0.0:9697")],
            server: "/var/lib/neutron/metadata_proxy".into(),
            resource: Resource::new(Kind::Router, ROUTER).expect("id"),
            tracked: vec![],
            denies: vec![],
        }
    );
}

#[test]
fn l3_router_dual_stack_and_debug() {
    let c = ok(&router_v4()
        .with("host", "::")
        .with("log_level", "debug")
        .render());
    assert_eq!(c.binds, vec![spec("[::]:9697")]);
    assert_eq!(c.log.expect("log").level, "debug");
    assert_eq!(c.resource.kind(), Kind::Router);
}

#[test]
fn dhcp_network_v4_v6_bracketed_and_legacy() {
    let net = |v6_line| {
        router_v4()
            .with("host", "169.254.169.254")
            .with("port", "80")
            .with("bind_v6_line", v6_line)
            .with("res_id", NET)
            .with("res_type_del", "Router")
            .with("res_type", "Network")
    };
    let c = ok(&net("").render());
    assert_eq!(c.binds, vec![spec("169.254.169.254:80")]);
    assert_eq!(c.resource, Resource::new(Kind::Network, NET).expect("id"));
    // Neutron 29 and master: brackets (afbe99a949, LP#2158258).
    let c = ok(&net("bind [fe80::a9fe:a9fe]:80 interface tap1234abcd-12").render());
    let both = vec![
        spec("169.254.169.254:80"),
        spec("[fe80::a9fe:a9fe]:80%tap1234abcd-12"),
    ];
    assert_eq!(c.binds, both);
    // Before: no brackets; the last `:` is the port, as haproxy reads it.
    let c = ok(&net("bind fe80::a9fe:a9fe:80 interface tap1234abcd-12").render());
    assert_eq!(c.binds, both);
}

#[test]
fn metadata_network_serves_the_router_on_the_dhcp_bind() {
    let c = ok(&router_v4()
        .with("host", "169.254.169.254")
        .with("port", "80")
        .render());
    assert_eq!(c.binds, vec![spec("169.254.169.254:80")]);
    assert_eq!(c.resource, Resource::new(Kind::Router, ROUTER).expect("id"));
}

#[test]
fn ovn_network_add_header() {
    let text = Variant {
        headers: HEADERS_OVN,
        ..router_v4()
    }
    .with("host", "169.254.169.254")
    .with("port", "80")
    .with(
        "bind_v6_line",
        "bind [fe80::a9fe:a9fe]:80 interface tap5e6f7a8b-01",
    )
    .with("res_id", NET)
    .with("res_type", "Network")
    .render();
    let c = ok(&text);
    assert_eq!(
        c.resource,
        Resource::new(Kind::OvnNetwork, NET).expect("id")
    );
    assert_eq!(c.binds.len(), 2);
}

#[test]
fn rate_limited_ip_and_ipv6_tables() {
    for (ipv, v6) in [("ip", false), ("ipv6", true)] {
        let c = ok(&Variant {
            listen: LISTEN_RATE_LIMITED,
            ..router_v4()
        }
        .with("ip_version", ipv)
        .render());
        let table = |name: &str, line| StickTable {
            name: name.into(),
            ipv6: v6,
            size: 10_000,
            expire: Duration::from_secs(10),
            period: Duration::from_secs(10),
            line,
        };
        assert_eq!(
            c.tables,
            vec![
                table("base_rate_limiter", 27),
                table("burst_rate_limiter", 30)
            ]
        );
        assert_eq!(c.tracked, ["base_rate_limiter", "burst_rate_limiter"]);
        assert_eq!(
            c.denies,
            [
                ("base_rate_limiter".to_owned(), 10),
                ("burst_rate_limiter".to_owned(), 10)
            ]
        );
        // The header rules come after the server line: still the same listener.
        assert_eq!(c.resource.kind(), Kind::Router);
    }
}

#[test]
fn times_and_sizes_as_haproxy_reads_them() {
    assert_eq!(time("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(time("1500"), Ok(Duration::from_millis(1500)), "no unit: ms");
    assert_eq!(time("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(time("5us"), Ok(Duration::from_micros(5)));
    assert!(time("30x").is_err());
    assert!(time("s").is_err());
    assert!(time("30d").is_err(), "over 2^31 ms");
    assert_eq!(size("10k"), Ok(10_000));
    assert_eq!(size("3"), Ok(3));
    assert!(size("0").is_err());
}

#[test]
fn other_haproxy_files_are_foreign() {
    let base = router_v4().render();
    // The OVS agent's host metadata proxy (host_metadata_proxy.py): frontend/backend per VM.
    let host_proxy = "global\n    daemon\ndefaults\n    mode http\nfrontend public\n    bind 240.0.0.1:80\n    use_backend %[src]\nbackend b1\n    server metasrv 127.0.0.1:8775\n";
    for (text, line) in [
        (host_proxy.to_owned(), 5),
        (
            base.replace("    nbthread    2", "    stats socket /run/x"),
            8,
        ),
        (base.replace("option httplog", "option redispatch"), 15),
        (base.replace("timeout client", "timeout queue"), 22),
        (base.replace("mode http", "mode tcp"), 14),
        (
            base.replace("bind 0.0.0.0:9697", "bind 0.0.0.0:9697 ssl crt /x.pem"),
            27,
        ),
        (
            base.replace(
                "server metadata /var/lib/neutron/metadata_proxy",
                "server m 127.0.0.1:8775",
            ),
            29,
        ),
        (
            base.replace("set-header X-Neutron-Router-ID", "set-header X-Custom"),
            32,
        ),
        (
            base.replace("log         /dev/log", "log         127.0.0.1:514"),
            3,
        ),
        (format!("{base}    acl x path /\n"), 33),
        (format!("{base}\nfrontend f\n"), 34),
        (base.replace("log-tag", "log-tag \"q\""), 4),
    ] {
        match p(&text) {
            Err(Parse::Foreign { line: l, .. }) => assert_eq!(l, line, "{text}"),
            other => panic!("{other:?}\n{text}"),
        }
    }
    // Structure: no listen section, no `mode http` (haproxy's default is tcp).
    let no_mode = base.replace("    mode http\n", "");
    assert!(matches!(p(&no_mode), Err(Parse::Foreign { line: 0, .. })));
    assert!(matches!(
        p("global\n    daemon\n"),
        Err(Parse::Foreign { line: 0, .. })
    ));
}

#[test]
fn bad_values_name_file_line_and_keyword() {
    let base = router_v4().render();
    for (from, to, want) in [
        (
            "maxconn     1024",
            "maxconn     lots",
            "x.conf:7: maxconn: invalid number \"lots\"",
        ),
        (
            "timeout server          32s",
            "timeout server 32x",
            "x.conf:23: timeout server: invalid time \"32x\"",
        ),
        (
            "timeout connect         30s",
            "timeout connect 0s",
            "x.conf:21: timeout connect: must be above 0",
        ),
        (
            "bind 0.0.0.0:9697",
            "bind 0.0.0.0:http",
            "x.conf:27: bind: invalid port \"http\"",
        ),
        (
            "bind 0.0.0.0:9697",
            "bind 300.1.1.1:80",
            "x.conf:27: bind: invalid address \"300.1.1.1\"",
        ),
        (
            "bind 0.0.0.0:9697",
            "bind [fe80::1]:80",
            "x.conf:27: bind: a link-local IPv6 address needs %IFACE",
        ),
        (
            "local0 info",
            "local9 info",
            "x.conf:3: log: unknown facility \"local9\"",
        ),
        (
            "local0 info",
            "local0 chatty",
            "x.conf:3: log: unknown level \"chatty\"",
        ),
        (
            "pidfile     /var",
            "pidfile     var",
            "x.conf:9: pidfile: var/lib",
        ),
        (
            &format!("Router-ID {ROUTER}"),
            "Router-ID bad/id",
            "x.conf:32: http-request set-header: ",
        ),
        (
            "retries                 3",
            "retries -1",
            "x.conf:19: retries: invalid number \"-1\"",
        ),
    ] {
        let text = base.replace(from, to);
        assert_ne!(text, base, "{from}");
        match p(&text) {
            Err(e @ Parse::Bad { .. }) => {
                let line = e.to_string();
                assert!(line.contains(want), "{line} !~ {want}");
                assert!(!line.contains('\n'), "one line: {line}");
            }
            other => panic!("{from}: {other:?}"),
        }
    }
    // Across lines: a second id header, a deny on an untracked table.
    let two = format!("{base}    http-request set-header X-Neutron-Network-ID {NET}\n");
    assert!(
        matches!(p(&two), Err(Parse::Bad { line: 33, .. })),
        "{:?}",
        p(&two)
    );
    let untracked = Variant {
        listen: LISTEN_RATE_LIMITED,
        ..router_v4()
    }
    .render()
    .replace(
        "    http-request track-sc1 src table burst_rate_limiter\n",
        "",
    );
    let e = p(&untracked).expect_err("untracked").to_string();
    assert!(
        e.contains("http-request deny: table burst_rate_limiter is not tracked"),
        "{e}"
    );
}

/// Mutations of every variant Neutron renders (seeded; `NS_FUZZ_SEED` replays): the grammar
/// never panics, and what it says is one line naming a line of the file; a file it takes
/// becomes a `Config` or a one-line reason, never a panic.
#[test]
fn mutated_neutron_files_are_ours_foreign_or_one_line_errors() {
    use ns_testkit::fuzz;
    let variants: Vec<String> = [
        router_v4().render(),
        router_v4()
            .with("bind_v6_line", "bind :::9697")
            .with("log_level", "debug")
            .render(),
        render(
            &[GLOBAL, LISTEN_RATE_LIMITED, HEADERS_OVN],
            &[("res_id", NET), ("res_type", "OVN Network")],
            ROUTER_DEFAULTS,
        ),
    ]
    .into();
    const DICT: &[&[u8]] = &[
        b"timeout client 99999999999999999999d\n",
        b"timeout server 0\n",
        b"bind [fe80::a9fe:a9fe]:99999 interface eth0\n",
        b"bind 169.254.169.254:80\n",
        b"server metadata /\0\n",
        b"http-request set-header X-Neutron-Router-ID ../../etc\n",
        b"stick-table type ip size 99999999999999g expire 1d store http_req_rate(0)\n",
        b"listen listener\n",
        b"backend b\n",
        b"maxconn 0\n",
        b"log /dev/log local9 info\n",
        b"http-request deny deny_status 429 if { src_http_req_rate(x) gt 4294967296 }\n",
    ];
    let check = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let lines = text.lines().count();
        match p(&text) {
            Ok(h) => {
                if let Err(e) = crate::dropin::to_config(&h) {
                    assert!(!e.contains('\n'), "{e}");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "not one line: {msg:?}");
                match e {
                    Parse::Foreign { line, .. } => assert!(line <= lines, "{msg}"),
                    Parse::Bad { line, .. } => {
                        assert!((1..=lines).contains(&line), "{msg}");
                        assert!(msg.starts_with("/var/lib/neutron/ns-metadata-proxy/x.conf:"));
                    }
                }
            }
        }
    };
    for v in &variants {
        check(v.as_bytes());
    }
    for m in fuzz::truncations_and_substitutions(variants[0].as_bytes(), b"\0\n\"") {
        check(&m);
    }
    fuzz::run("haproxy", 0x5eed_0005, 2000, |rng, _| {
        let v = rng.pick(&variants);
        check(&fuzz::mutate(rng, v.as_bytes(), DICT));
    });
}
