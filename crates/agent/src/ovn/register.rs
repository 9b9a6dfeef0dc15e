//! Registration as Neutron's OVN metadata agent (neutron/agent/ovn/metadata/agent.py,
//! `register_metadata_agent`, `_update_chassis_private_config`, `_update_metadata_sb_cfg_key`,
//! `_cleanup_previous_tags`, `SbGlobalUpdateEvent`): the `Chassis_Private.external_ids` keys
//! Neutron's server reads to list the agent (type "OVN Metadata agent") and to call it alive
//! (`NB_Global.nb_cfg - sb-cfg <= 1`), plus our marker key.

use ns_ovsdb::{Atom, Condition, Datum, Mutation, Mutator, Op};

use super::uuid5::{self, Bytes};

/// `neutron:ovn-metadata-id`: uuid5(chassis id, "metadata_agent"); added only when absent.
pub const METADATA_ID_KEY: &str = "neutron:ovn-metadata-id";
/// `neutron:ovn-bridge`: the integration bridge (`Open_vSwitch` `external_ids:ovn-bridge`).
pub const BRIDGE_KEY: &str = "neutron:ovn-bridge";
/// `neutron:ovn-metadata-sb-cfg`: the last `nb_cfg` seen, Neutron's heartbeat.
pub const SB_CFG_KEY: &str = ns_contract::ovn::SB_CFG_KEYS[0];
/// The OVN agent's keys (`neutron-ovn-agent`), removed at start as Neutron's metadata agent
/// does: one chassis runs one of the two.
pub const OVN_AGENT_KEYS: [&str; 3] = [
    ns_contract::ovn::SB_CFG_KEYS[1],
    "neutron:description-neutron-agent",
    "neutron:ovn-neutron-agent-id",
];
/// Our marker: present means the metadata agent on this chassis is ns-metadata's, not Neutron's.
pub const MARKER_KEY: &str = ns_contract::ovn::AGENT_MARKER_KEY;
/// Neutron's `OVN_METADATA_UUID_NAMESPACE`, for system-ids that are not UUIDs.
pub const NAMESPACE: Bytes = [
    0xd3, 0x4b, 0xf9, 0xf6, 0xda, 0x32, 0x48, 0x71, 0x9a, 0xf8, 0x15, 0xa4, 0x62, 0x6b, 0x41, 0xab,
];

/// The chassis id Neutron derives from the chassis name (`system-id`): the name itself when
/// it is a UUID, else uuid5(NAMESPACE, name).
pub fn chassis_id(chassis: &str) -> Bytes {
    uuid5::parse(chassis).unwrap_or_else(|| uuid5::uuid5(&NAMESPACE, chassis))
}

/// The agent id Neutron's server shows for this chassis's metadata agent.
pub fn agent_id(chassis: &str) -> String {
    uuid5::format(&uuid5::uuid5(&chassis_id(chassis), "metadata_agent"))
}

/// The largest random delay, in seconds, before writing a new `sb-cfg` (LP#2119092):
/// `max(min(agent_down_time // 3, 10), 3)`.
pub fn max_delay(agent_down_time: u64) -> u64 {
    (agent_down_time / 3).clamp(3, 10)
}

fn ours(chassis: &str) -> [Condition; 1] {
    [Condition::eq("name", chassis)]
}

/// The registration, in one transaction on our `Chassis_Private` row: the OVN agent's keys
/// removed, the agent id added if absent (Neutron's `db_add`), bridge, `sb-cfg` (from the
/// row's own `nb_cfg`, as at Neutron's start) and our marker set.
pub fn register_ops(chassis: &str, bridge: &str, nb_cfg: i64, version: &str) -> Vec<Op> {
    let nb_cfg = nb_cfg.to_string();
    let [del, ins] = Mutation::set_keys(
        "external_ids",
        &[
            (BRIDGE_KEY, bridge),
            (SB_CFG_KEY, nb_cfg.as_str()),
            (MARKER_KEY, version),
        ],
    );
    let id = agent_id(chassis);
    vec![Op::mutate(
        "Chassis_Private",
        &ours(chassis),
        &[
            Mutation::new(
                "external_ids",
                Mutator::Delete,
                Datum::set(OVN_AGENT_KEYS.iter().map(|k| Atom::from(*k))),
            ),
            Mutation::new(
                "external_ids",
                Mutator::Insert,
                Datum::str_map([(METADATA_ID_KEY, id.as_str())]),
            ),
            del,
            ins,
        ],
    )]
}

/// The heartbeat: `sb-cfg = nb_cfg` (SB_Global's, after each change).
pub fn sb_cfg_ops(chassis: &str, nb_cfg: i64) -> Vec<Op> {
    let nb_cfg = nb_cfg.to_string();
    vec![Op::mutate(
        "Chassis_Private",
        &ours(chassis),
        &Mutation::set_keys("external_ids", &[(SB_CFG_KEY, nb_cfg.as_str())]),
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_as_neutron() {
        // python3 -c "import uuid; print(uuid.uuid5(uuid.uuid5(uuid.UUID(
        //   'd34bf9f6-da32-4871-9af8-15a4626b41ab'), 'compute-1'), 'metadata_agent'))"
        assert_eq!(
            agent_id("compute-1"),
            "ef4b08c7-4be3-5738-a4fa-e02d697fb653"
        );
        let c = "0b2f5b5e-6f2a-4c4b-9a59-2b3f0f4f2d11";
        assert_eq!(
            uuid5::format(&chassis_id(c)),
            c,
            "a UUID name is its own id"
        );
        assert_eq!(agent_id(c), "e92ac3db-b8fc-5274-9bf0-b9413a8ddf6c");
    }

    #[test]
    fn delay_rule() {
        assert_eq!(max_delay(75), 10, "Neutron's default agent_down_time");
        assert_eq!(max_delay(15), 5);
        assert_eq!(max_delay(3), 3);
        assert_eq!(max_delay(1), 3);
    }
}
