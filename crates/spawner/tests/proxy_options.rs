//! Every proxy option the spawner reads reaches its proxies: a proxy it spawns runs with what
//! a standalone proxy reads from the same INI files (`[metadata_haproxy]` timeouts,
//! LP#2154609; `[metadata_rate_limiting]` with `ip_versions`), checked through the proxy's own
//! option parsing, and once end to end: a spawned proxy limiting only IPv6 leaves IPv4 VMs be.

mod common;
mod root_common;

use std::path::Path;
use std::time::Duration;

use clap::Parser as _;
use common::*;
use ns_contract::limits::TIMEOUT_KEYS;
use ns_contract::Kind;
use ns_metadata_spawner::config::Config;
use ns_metadata_spawner::decide::ProxySpec;
use ns_metadata_spawner::launch::proxy_args;
use ns_metadata_spawner::netns_platform::Namespaces;
use ns_metadata_spawner::records::Records;
use ns_metadata_spawner::supervisor::Supervisor;
use ns_testkit::netns::{link, unique_prefix, TestNs};
use ns_testkit::require_root;
use ns_testkit::TempDir;
use root_common::*;

fn proxy(args: &[String]) -> ns_metadata_proxy::Config {
    let argv = std::iter::once("ns-metadata-proxy".to_owned()).chain(args.iter().cloned());
    let parsed = ns_metadata_proxy::Args::try_parse_from(argv).expect("proxy takes the flags");
    ns_metadata_proxy::Config::from_args(parsed).expect("proxy accepts the values")
}

/// The proxy config a spawned proxy gets, and the one a standalone proxy reads from `ini`.
fn spawned_and_standalone(ini: &Path) -> (ns_metadata_proxy::Config, ns_metadata_proxy::Config) {
    let (cfg, warnings) = Config::load(&[ini.to_owned()]).expect("spawner reads it");
    assert!(warnings.is_empty(), "{warnings:?}");
    let spec = ProxySpec {
        key: "r1".into(),
        kind: Kind::Router,
        id: "r1".into(),
        netns: "qrouter-r1".into(),
        interface: "lo".into(),
        ipv6: false,
    };
    let spawned = proxy(&proxy_args(&spec, &cfg));
    let standalone = proxy(&[
        "--router-id".into(),
        "r1".into(),
        "--config-file".into(),
        ini.display().to_string(),
    ]);
    (spawned, standalone)
}

#[test]
fn each_haproxy_timeout_reaches_the_proxy() {
    let dir = TempDir::new("opt-timeouts");
    let ini = dir.path().join("t.ini");
    for (i, k) in TIMEOUT_KEYS.iter().enumerate() {
        let v = k.default + 7 + i as u64;
        std::fs::write(&ini, format!("[metadata_haproxy]\n{} = {v}\n", k.key)).expect("write");
        let (spawned, standalone) = spawned_and_standalone(&ini);
        assert_eq!(spawned.timeouts, standalone.timeouts, "{}", k.key);
        assert_ne!(
            standalone.timeouts,
            proxy(&["--router-id".into(), "r1".into()]).timeouts,
            "{} changes something",
            k.key
        );
    }
}

#[test]
fn rate_limiting_with_its_ip_versions_reaches_the_proxy() {
    let dir = TempDir::new("opt-rate");
    let ini = dir.path().join("r.ini");
    for extra in [
        "ip_versions = 6\n",
        "ip_versions = 4\nbase_query_rate_limit = 3\n",
        "ip_versions = 4, 6\nburst_window_duration = 2\n",
        "",
    ] {
        std::fs::write(
            &ini,
            format!("[metadata_rate_limiting]\nrate_limit_enabled = true\n{extra}"),
        )
        .expect("write");
        let (spawned, standalone) = spawned_and_standalone(&ini);
        assert!(standalone.rate_limit.is_some(), "{extra}");
        assert_eq!(spawned.rate_limit, standalone.rate_limit, "{extra}");
    }
    std::fs::write(&ini, "[metadata_rate_limiting]\nip_versions = 6\n").expect("write");
    let (spawned, standalone) = spawned_and_standalone(&ini);
    assert_eq!((spawned.rate_limit, standalone.rate_limit), (None, None));
}

/// A router proxy spawned with `base_query_rate_limit = 1` for the given `ip_versions`; how
/// many of 4 GETs from an IPv4 VM get an answer.
async fn ipv4_answers_with(ip_versions: &str) -> usize {
    let dir = TempDir::new("opt-rate-rt").reaping();
    let _agent = agent(dir.path());
    let p = unique_prefix();
    let id = format!("{p}rl");
    let rns = TestNs::new(&format!("qrouter-{id}")).expect("router ns");
    let vm = TestNs::new(&format!("{p}vm")).expect("vm ns");
    link(&rns, &vm, 117).await.expect("veth");
    let ini = dir.path().join("rate.ini");
    std::fs::write(
        &ini,
        format!(
            "[metadata_rate_limiting]\nrate_limit_enabled = true\nip_versions = {ip_versions}\n\
             base_query_rate_limit = 1\nbase_window_duration = 60\n\
             burst_query_rate_limit = 1\nburst_window_duration = 60\n"
        ),
    )
    .expect("write");
    let mut cfg = real_config(dir.path());
    cfg.rate_limit = Config::load(&[ini]).expect("ini").0.rate_limit;
    let sup = Supervisor::new(Namespaces, cfg, Records::default());
    let looper = sup.clone();
    let lp = tokio::spawn(async move { looper.run_loop().await });
    sup.put_router(router(&id));
    running_pid(&sup, &id, Duration::from_secs(15)).await;
    let mut ok = 0;
    for _ in 0..4 {
        let vm_ns = vm.netns().try_clone().expect("fd");
        let r = tokio::task::spawn_blocking(move || get_in(&vm_ns, META))
            .await
            .expect("join");
        match r {
            Ok(_) => ok += 1,
            Err(e) => assert!(e.contains(" 429 "), "only rate limiting refuses: {e}"),
        }
    }
    sup.stop_all().await;
    lp.abort();
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_proxy_limiting_ipv6_only_leaves_ipv4_clients_alone() {
    if !require_root("spawned_proxy_limiting_ipv6_only_leaves_ipv4_clients_alone") {
        return;
    }
    assert_eq!(ipv4_answers_with("6").await, 4, "IPv4 is not limited");
    assert_eq!(ipv4_answers_with("4").await, 1, "IPv4 is limited to 1");
}
