//! Facts about OVN the agent and the spawner share.

/// The `Chassis_Private.external_ids` key our metadata agent writes (with its version) next to
/// the keys Neutron's OVN metadata agent writes, so anyone (the spawner's OVN source) can tell
/// our agent from Neutron's on a chassis.
pub const AGENT_MARKER_KEY: &str = "ns-metadata:agent";
