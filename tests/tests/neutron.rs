//! Either side can be swapped (the agent speaks neutron-metadata-agent's contract): the real neutron-metadata-agent 29.0.0 (from
//! `$NS_NEUTRON_VENV`, default /opt/ns-metadata-ci/neutron-29.0.0; its RPC port lookup answered
//! from the test's inventory by `neutron_agent.py` (ns-testkit)) behind the spawner's proxies, in all
//! three modes, forwarding to the Nova stand-in that checks the signature. Root only.
use std::path::PathBuf;

use ns_e2e::client::{curl_with, get, url};
use ns_e2e::world::{Modes, Upstream, World};
use ns_e2e::{require, require_root};

const DEFAULT_VENV: &str = "/opt/ns-metadata-ci/neutron-29.0.0";

fn neutron_python() -> PathBuf {
    std::env::var_os("NS_NEUTRON_VENV")
        .map_or_else(|| PathBuf::from(DEFAULT_VENV), PathBuf::from)
        .join("bin/python")
}

#[test]
fn real_neutron_metadata_agent_behind_the_spawners_proxies_in_all_three_modes() {
    let name = "real_neutron_metadata_agent_behind_the_spawners_proxies_in_all_three_modes";
    let python = neutron_python();
    if !require_root(name)
        || !require(
            name,
            python.is_file(),
            "a neutron venv (set NS_NEUTRON_VENV)",
        )
    {
        return;
    }
    let secret = "e2e-neutron-secret".to_owned();
    let world = World::build(
        "neutron",
        60,
        Modes::ALL,
        Upstream::NeutronAgent { python, secret },
    );
    world.wait_answering("/openstack/latest/meta_data.json");
    for vm in &world.vms {
        let r = get(&vm.ns, "/openstack/latest/meta_data.json");
        assert_eq!(
            r.status,
            200,
            "{} ({}): {r:?}\nagent log:\n{}",
            vm.name,
            vm.mode,
            world.agent.log()
        );
        let md: serde_json::Value = serde_json::from_str(&r.body).expect("JSON from the stand-in");
        assert_eq!(
            md["uuid"],
            vm.instance.as_str(),
            "{} ({})",
            vm.name,
            vm.mode
        );
    }
    let seen = world.nova.as_ref().expect("nova stand-in").seen();
    for vm in &world.vms {
        let req = seen
            .iter()
            .find(|s| s.header("x-instance-id") == Some(vm.instance.as_str()))
            .unwrap_or_else(|| panic!("Nova never saw {}: {seen:?}", vm.name));
        assert_eq!(
            req.status, 200,
            "signature and tenant accepted for {}",
            vm.name
        );
        assert_eq!(
            req.header("x-forwarded-for"),
            Some(vm.ip.as_str()),
            "{}",
            vm.name
        );
    }
    // An address Neutron cannot place (not in its port list): the agent's own 404, relayed.
    let vm1 = world.vm("vm1");
    let stranger = unknown_address(&vm1.ns, "10.250.60.99");
    let r = curl_with(
        &vm1.ns,
        &url("/openstack/latest/meta_data.json"),
        &["--interface", &stranger],
        5,
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("not found"), "Neutron's reason: {}", r.body);
}

/// Add `ip` to the vm's eth0 (same subnet, no port in the inventory) and return it.
fn unknown_address(ns: &str, ip: &str) -> String {
    ns_e2e::topo::ip(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    ip.to_owned()
}
