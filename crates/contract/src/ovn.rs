//! Facts about OVN the agent and the spawner share.

/// The `Chassis_Private.external_ids` key our metadata agent writes (with its version) next to
/// the keys Neutron's OVN metadata agent writes, so anyone (the spawner's OVN source) can tell
/// our agent from Neutron's on a chassis.
pub const AGENT_MARKER_KEY: &str = "ns-metadata:agent";

/// Neutron's `[ovn] ovn_sb_connection` default (neutron/conf/plugins/ml2/drivers/ovn).
pub const DEFAULT_SB_CONNECTION: &str = "tcp:127.0.0.1:6642";

/// Neutron's `[ovs] ovsdb_connection` default for the OVN metadata agent
/// (neutron/conf/agent/ovn/metadata/config.py).
pub const DEFAULT_OVSDB_CONNECTION: &str = "unix:/usr/local/var/run/openvswitch/db.sock";

/// The `Chassis_Private.external_ids` keys holding the last `nb_cfg` an OVN metadata agent saw:
/// Neutron's OVN metadata agent's, then the `neutron-ovn-agent`'s. One within 1 of
/// `SB_Global.nb_cfg` without [`AGENT_MARKER_KEY`] means Neutron's agent is alive here.
pub const SB_CFG_KEYS: [&str; 2] = [
    "neutron:ovn-metadata-sb-cfg",
    "neutron:ovn-neutron-agent-sb-cfg",
];
