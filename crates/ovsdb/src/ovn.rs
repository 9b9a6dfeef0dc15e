//! The OVN Southbound monitor of one chassis, as the metadata agent's resolver and the
//! spawner's OVN source both set it up: the `Port_Binding` columns they read and the clauses
//! that keep only this chassis's rows. (OVN-schema facts, kept next to the client that sends
//! them so the two users cannot drift apart.)

use crate::{Condition, Monitor, Uuid};

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

/// The whole Southbound monitor of `chassis`: our `Chassis` row, our `Chassis_Private` row
/// with `private_columns` (the agent reads more of it than the spawner), `SB_Global.nb_cfg`,
/// every `Datapath_Binding`'s `external_ids`, and the `Port_Binding` rows of
/// [`port_conditions`] (localports until our `Chassis` row is known).
pub fn chassis_monitor<'a>(
    chassis: &str,
    private_columns: impl IntoIterator<Item = &'a str>,
) -> Monitor {
    let ours = || Some(vec![Condition::eq("name", chassis)]);
    Monitor::new("OVN_Southbound")
        .table("Chassis", ["name"], ours())
        .table("Chassis_Private", private_columns, ours())
        .table("SB_Global", ["nb_cfg"], None)
        .table("Datapath_Binding", ["external_ids"], None)
        .table(
            "Port_Binding",
            PORT_BINDING_COLUMNS,
            Some(port_conditions(None)),
        )
}
