//! Who this chassis is: `Open_vSwitch` `external_ids:system-id` (the chassis name
//! ovn-controller registers under) and `external_ids:ovn-bridge` (default `br-int`, with
//! Neutron's warning), read once at start from `[ovs] ovsdb_connection`, as Neutron's
//! `_get_own_chassis_name` / `_get_ovn_bridge`.

use ns_ovsdb::{Client, Config, Event, Monitor};

/// This chassis, as the OVN resolver needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `system-id`: the `Chassis`/`Chassis_Private` `name`.
    pub chassis: String,
    /// The integration bridge, reported as `neutron:ovn-bridge`.
    pub bridge: String,
}

/// Why the identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("[ovs] ovsdb_connection {remote}: {err}")]
    Client {
        remote: String,
        err: ns_ovsdb::Error,
    },
    #[error("[ovs] ovsdb_connection {remote}: Open_vSwitch external_ids:system-id is not set (is ovn-controller configured on this host?)")]
    NoSystemId { remote: String },
}

/// Connect to the local `Open_vSwitch` database, wait for its one row and read the ids.
/// Connection failures are retried (with the client's backoff) and logged once.
pub async fn read(remote: &str) -> Result<Identity, IdentityError> {
    let fail = |err| IdentityError::Client {
        remote: remote.to_owned(),
        err,
    };
    let monitor = Monitor::new("Open_vSwitch").table("Open_vSwitch", ["external_ids"], None);
    let cfg = Config::new(remote, monitor).map_err(fail)?;
    let (client, mut events) = Client::start(cfg).map_err(fail)?;
    let mut warned = false;
    loop {
        match events.recv().await {
            Some(Event::Ready { .. }) => break,
            Some(Event::Disconnected { error, .. }) if !warned => {
                warned = true;
                tracing::warn!(%remote, %error, "cannot read the local Open_vSwitch database yet; retrying");
            }
            Some(_) => {}
            None => return Err(fail(ns_ovsdb::Error::Stopped)),
        }
    }
    let view = client.view();
    let row = view.rows("Open_vSwitch").next().map(|(_, r)| r.clone());
    drop(view);
    let get = |k: &str| {
        row.as_ref()
            .and_then(|r| r.map_str("external_ids", k))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let Some(chassis) = get("system-id") else {
        return Err(IdentityError::NoSystemId {
            remote: remote.to_owned(),
        });
    };
    let bridge = get("ovn-bridge").unwrap_or_else(|| {
        tracing::warn!("Can't read ovn-bridge external-id from OVSDB. Using br-int instead.");
        "br-int".to_owned()
    });
    Ok(Identity { chassis, bridge })
}
