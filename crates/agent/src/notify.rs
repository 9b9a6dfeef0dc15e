//! Telling systemd how the agent is doing (`sd_notify` through `ns_contract::notify`): READY
//! once the socket listens, RELOADING then READY around a SIGHUP reload, STOPPING on shutdown.
//! Nothing is sent outside systemd (no `$NOTIFY_SOCKET`); a failure is logged, never fatal.

use ns_contract::notify::{notify, State};

/// Send `states` to systemd if it is listening.
pub fn systemd(states: &[State]) {
    match notify(states) {
        Ok(sent) => {
            if sent {
                tracing::debug!(?states, "sd_notify");
            }
        }
        Err(err) => tracing::warn!(%err, ?states, "sd_notify failed"),
    }
}
