//! cloud-init's own metadata readers (Debian's cloud-init package), run inside a `vm` namespace
//! against the real spawner -> proxy -> agent chain, get the VM's identity and user data. Root only.
use ns_e2e::client::{cloud_init_available, cloud_init_read};
use ns_e2e::topo::EtcNetnsResolv;
use ns_e2e::world::{Modes, Upstream, World};
use ns_e2e::{require, require_root};

#[test]
fn cloud_init_openstack_and_ec2_readers_get_identity_and_user_data() {
    let name = "cloud_init_openstack_and_ec2_readers_get_identity_and_user_data";
    if !require_root(name)
        || !require(
            name,
            cloud_init_available(),
            "cloud-init (apt install cloud-init)",
        )
    {
        return;
    }
    let world = World::build(
        "cloudinit",
        40,
        Modes {
            router: true,
            isolated: true,
            metadata_network: false,
            ipv6: false,
        },
        Upstream::Builtin,
    );
    world.wait_answering("/openstack/latest/meta_data.json");
    for vm in &world.vms {
        let _resolv = EtcNetnsResolv::new(&vm.ns);
        let got = cloud_init_read(&vm.ns);
        eprintln!("{} ({}): cloud-init read {got}", vm.name, vm.mode);
        assert_eq!(
            got["uuid"],
            vm.instance.as_str(),
            "{}: OpenStack reader's uuid",
            vm.name
        );
        assert!(
            got["hostname"]
                .as_str()
                .is_some_and(|h| h.starts_with(vm.name)),
            "{}: hostname {}",
            vm.name,
            got["hostname"]
        );
        assert_eq!(
            got["userdata"],
            vm.user_data.as_str(),
            "{}: OpenStack user_data",
            vm.name
        );
        let keys = got["public_keys"]
            .as_object()
            .expect("public_keys is an object");
        assert!(
            keys.values()
                .any(|k| k.as_str().is_some_and(|k| k.starts_with("ssh-ed25519 "))),
            "{}: ssh key",
            vm.name
        );
        // The EC2 tree, as cloud-init's Ec2 datasource and read_v2 walk it.
        let ec2_id = got["ec2_instance_id"].as_str().unwrap_or_default();
        assert!(
            !ec2_id.is_empty(),
            "{}: EC2 reader found no instance-id: {got}",
            vm.name
        );
        assert_eq!(
            got["ec2_in_v2"], ec2_id,
            "{}: both EC2 walks agree",
            vm.name
        );
        assert_eq!(
            got["ec2_userdata"],
            vm.user_data.as_str(),
            "{}: EC2 user-data",
            vm.name
        );
    }
}
