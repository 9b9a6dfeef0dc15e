//! The three modes through the real binaries (spawner -> proxy -> agent -> built-in responder or
//! a Nova stand-in), asked by curl from inside each `vm` namespace. Root only.
use std::time::Duration;

use ns_e2e::client::get;
use ns_e2e::require_root;
use ns_e2e::world::{Modes, Upstream, World};
use serde_json::Value;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn builtin_responder_serves_every_vm_in_all_three_modes() {
    if !require_root("builtin_responder_serves_every_vm_in_all_three_modes") {
        return;
    }
    let world = World::build("builtin", 10, Modes::ALL, Upstream::Builtin);
    world.wait_answering("/openstack/latest/meta_data.json");
    for vm in &world.vms {
        let md = get(&vm.ns, "/openstack/latest/meta_data.json");
        assert_eq!(md.status, 200, "{} ({}): {md:?}", vm.name, vm.mode);
        let md = json(&md.body);
        assert_eq!(
            md["uuid"],
            vm.instance.as_str(),
            "{} ({}) got someone else's identity",
            vm.name,
            vm.mode
        );
        assert_eq!(md["name"], vm.name);
        assert!(
            md["hostname"]
                .as_str()
                .is_some_and(|h| h.starts_with(vm.name)),
            "{}: hostname {}",
            vm.name,
            md["hostname"]
        );

        let id = get(&vm.ns, "/latest/meta-data/instance-id");
        assert_eq!(id.status, 200, "{} ({}): {id:?}", vm.name, vm.mode);
        assert!(
            !id.body.trim().is_empty(),
            "{}: empty EC2 instance-id",
            vm.name
        );

        let ud = get(&vm.ns, "/openstack/latest/user_data");
        assert_eq!(
            (ud.status, ud.body.as_str()),
            (200, vm.user_data.as_str()),
            "{} user_data",
            vm.name
        );
        let ec2_ud = get(&vm.ns, "/latest/user-data");
        assert_eq!(
            (ec2_ud.status, ec2_ud.body.as_str()),
            (200, vm.user_data.as_str()),
            "{} EC2 user-data",
            vm.name
        );

        // A VM cannot claim another identity: the proxy strips what the client sent.
        let spoof = ns_e2e::client::curl_with(
            &vm.ns,
            &ns_e2e::client::url("/openstack/latest/meta_data.json"),
            &[
                "-H",
                "X-Forwarded-For: 10.250.99.99",
                "-H",
                "X-Neutron-Router-ID: x",
                "-H",
                "X-Instance-ID: x",
            ],
            5,
        );
        assert_eq!(spoof.status, 200, "{} spoofed request: {spoof:?}", vm.name);
        assert_eq!(
            json(&spoof.body)["uuid"],
            vm.instance.as_str(),
            "{}: spoofed headers were honoured",
            vm.name
        );
    }
    // An address with no port in the inventory gets the agent's 404, not someone's identity.
    let vm1 = world.vm("vm1");
    ns_e2e::topo::ip(&[
        "-n",
        &vm1.ns,
        "addr",
        "add",
        "10.250.10.99/24",
        "dev",
        "eth0",
    ]);
    let r = ns_e2e::client::curl_with(
        &vm1.ns,
        &ns_e2e::client::url("/openstack/latest/meta_data.json"),
        &["--interface", "10.250.10.99"],
        5,
    );
    assert_eq!(r.status, 404, "unknown address: {r:?}");
    let status = world.spawner.status();
    for id in &world.proxy_ids {
        assert!(
            status.contains(id.as_str()),
            "status does not list {id}:\n{status}"
        );
    }

    // Withdrawing the router (Neutron's BEFORE_DELETE hook) stops its proxy and takes
    // 169.254.169.254 away: the VM gets no answer any more, the other VMs still do.
    let router = &world.proxy_ids[0];
    world.spawner.cli(&["router", "remove", router]);
    let gone = ns_e2e::wait_until(Duration::from_secs(10), || {
        ns_e2e::client::curl_with(&vm1.ns, &ns_e2e::client::url("/openstack"), &[], 1).status == 0
            && ns_e2e::procs::proxies_of(std::slice::from_ref(router)).is_empty()
    });
    assert!(
        gone,
        "proxy of removed router still answers; status:\n{}",
        world.spawner.status()
    );
    let lo = std::process::Command::new("ip")
        .args([
            "-n",
            &format!("qrouter-{router}"),
            "-o",
            "addr",
            "show",
            "dev",
            "lo",
        ])
        .output()
        .expect("ip addr show");
    let lo = String::from_utf8_lossy(&lo.stdout);
    assert!(
        !lo.contains("169.254.169.254"),
        "address left on lo after remove: {lo}"
    );
    assert_eq!(
        get(&world.vm("vm2").ns, "/openstack").status,
        200,
        "other proxies unaffected"
    );
}

#[test]
fn nova_stand_in_gets_signed_requests_in_all_three_modes() {
    if !require_root("nova_stand_in_gets_signed_requests_in_all_three_modes") {
        return;
    }
    let secret = "e2e-shared-secret";
    let upstream = Upstream::Nova {
        agent_secret: secret.into(),
        nova_secret: secret.into(),
    };
    let world = World::build("nova", 20, Modes::ALL, upstream);
    world.wait_answering("/openstack/latest/meta_data.json");
    for vm in &world.vms {
        let md = get(&vm.ns, "/openstack/latest/meta_data.json?e2e=1");
        assert_eq!(md.status, 200, "{} ({}): {md:?}", vm.name, vm.mode);
        let md = json(&md.body);
        assert_eq!(md["served_by"], "nova-stand-in");
        assert_eq!(
            md["uuid"],
            vm.instance.as_str(),
            "{} ({})",
            vm.name,
            vm.mode
        );
    }
    let nova = world.nova.as_ref().expect("nova stand-in runs");
    let seen = nova.seen();
    for vm in &world.vms {
        let req = seen
            .iter()
            .find(|s| {
                s.path == "/openstack/latest/meta_data.json?e2e=1"
                    && s.header("x-instance-id") == Some(vm.instance.as_str())
            })
            .unwrap_or_else(|| panic!("Nova never saw {}'s request: {seen:?}", vm.name));
        assert_eq!(req.status, 200);
        assert_eq!(req.method, "GET");
        assert_eq!(
            req.header("x-forwarded-for"),
            Some(vm.ip.as_str()),
            "{}: X-Forwarded-For",
            vm.name
        );
        assert_eq!(
            req.header("x-tenant-id"),
            Some(vm.project.as_str()),
            "{}: X-Tenant-ID",
            vm.name
        );
    }
}

#[test]
fn wrong_shared_secret_is_refused_by_nova_with_403() {
    if !require_root("wrong_shared_secret_is_refused_by_nova_with_403") {
        return;
    }
    let upstream = Upstream::Nova {
        agent_secret: "not-novas-secret".into(),
        nova_secret: "novas-secret".into(),
    };
    let world = World::build("badsecret", 30, Modes::ROUTER, upstream);
    let replies = world.wait_answering("/openstack/latest/meta_data.json");
    let vm = world.vm("vm1");
    assert_eq!(replies[0].status, 403, "{replies:?}");
    let r = get(&vm.ns, "/openstack/latest/meta_data.json");
    assert_eq!(
        r.status, 403,
        "a signature Nova rejects reaches the VM as 403: {r:?}"
    );
    assert!(
        !r.body.contains(&vm.instance),
        "a refused request leaks no identity: {}",
        r.body
    );
}

#[test]
fn ipv6_link_local_metadata_on_an_isolated_network() {
    if !require_root("ipv6_link_local_metadata_on_an_isolated_network") {
        return;
    }
    let modes = Modes {
        router: false,
        isolated: true,
        metadata_network: false,
        ipv6: true,
    };
    let world = World::build("ipv6", 70, modes, Upstream::Builtin);
    world.wait_answering("/openstack");
    let vm = world.vm("vm2");
    // As a guest asks over IPv6 (LP#1460177): the zone id names the guest's interface; the
    // agent finds the port by the MAC in the link-local source address (EUI-64). DAD on both
    // ends takes a moment, hence the poll.
    let url = "http://[fe80::a9fe:a9fe%eth0]/openstack/latest/meta_data.json";
    let mut last = None;
    let ok = ns_e2e::wait_until(Duration::from_secs(20), || {
        let r = ns_e2e::client::curl_with(&vm.ns, url, &["-g"], 2);
        let done = r.status == 200;
        last = Some(r);
        done
    });
    assert!(
        ok,
        "no answer over IPv6: {last:?}\nspawner log:\n{}",
        world.spawner.log()
    );
    let md = json(&last.expect("a reply").body);
    assert_eq!(
        md["uuid"],
        vm.instance.as_str(),
        "identity over IPv6 (MAC {})",
        vm.mac
    );
}
