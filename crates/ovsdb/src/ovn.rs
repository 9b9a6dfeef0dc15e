//! The OVN Southbound monitor of one chassis, as the metadata agent's resolver and the
//! spawner's OVN source both set it up: the `Port_Binding` columns they read and the clauses
//! that keep only this chassis's rows. (OVN-schema facts, kept next to the client that sends
//! them so the two users cannot drift apart.)

use crate::{Condition, Uuid};

/// The `Port_Binding` columns read: the lookup (addresses in `mac`, the datapath, the owner
/// in `external_ids`) and the spawner's decision (binding, type, metadata port).
pub const PORT_BINDING_COLUMNS: [&str; 7] = [
    "logical_port",
    "mac",
    "chassis",
    "additional_chassis",
    "datapath",
    "type",
    "external_ids",
];

/// The `Port_Binding` clauses (OR-ed): bound to this chassis, additionally bound to it (live
/// migration), or a localport (the metadata ports). Before our `Chassis` row is known only
/// the localports.
pub fn port_conditions(chassis: Option<&Uuid>) -> Vec<Condition> {
    let mut c = Vec::new();
    if let Some(u) = chassis {
        c.push(Condition::eq("chassis", u.clone()));
        c.push(Condition::includes("additional_chassis", u.clone()));
    }
    c.push(Condition::eq("type", "localport"));
    c
}
