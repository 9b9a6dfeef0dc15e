//! The OVN side of the agent (`resolver = ovn`), as Neutron's `neutron-ovn-metadata-agent`
//! (neutron/agent/ovn/metadata/agent.py) but with a conditional monitor of only this chassis's
//! rows instead of a full Southbound replica:
//!
//! | file | job |
//! |---|---|
//! | `identity.rs` | who we are: `system-id` and `ovn-bridge` from the local `Open_vSwitch` database |
//! | `uuid5.rs` | name-based UUIDs (RFC 4122 v5), for the chassis id and the agent id |
//! | `lookup.rs` | Neutron's port lookup by network and IP/MAC, over the replica |
//! | `register.rs` | the `Chassis_Private.external_ids` keys Neutron's server reads, and the heartbeat delay |
//! | `southbound.rs` | the Southbound monitor and the task that follows it (conditions, registration, outages) |

pub mod identity;
pub mod lookup;
pub mod register;
pub mod southbound;
pub mod uuid5;
