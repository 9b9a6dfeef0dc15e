//! Whether a member may serve us, as ovsdb-idl decides it: the `_Server` database's
//! `Database` row for our database says its `model` (standalone, clustered, relay), whether a
//! clustered member is `connected` to its cluster, and whether it is the `leader`. With
//! `leader_only`, only the leader qualifies, so transactions go to it; a row update that
//! takes leadership away ends the connection and the client moves on.
use serde_json::Value;

use crate::error::{Error, Result};

/// `_Server.Database` row of our database.
#[derive(Debug, Default, Clone)]
pub(crate) struct DbState {
    pub(crate) model: String,
    pub(crate) connected: bool,
    pub(crate) leader: bool,
}

impl DbState {
    /// Fold a `_Server` `<table-updates2>` (only our database's row is monitored).
    pub(crate) fn apply(state: &mut Option<DbState>, updates: &Value) {
        let rows = updates.get("Database").and_then(Value::as_object);
        for ru in rows.into_iter().flat_map(|r| r.values()) {
            let Some((kind, body)) = ru.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            let s = match kind.as_str() {
                "initial" | "insert" => state.insert(DbState::default()),
                "modify" => state.get_or_insert_with(DbState::default),
                _ => {
                    *state = None;
                    continue;
                }
            };
            if let Some(m) = body.get("model").and_then(Value::as_str) {
                s.model = m.to_owned();
            }
            if let Some(c) = body.get("connected").and_then(Value::as_bool) {
                s.connected = c;
            }
            if let Some(l) = body.get("leader").and_then(Value::as_bool) {
                s.leader = l;
            }
        }
    }

    pub(crate) fn check(
        state: &Option<DbState>,
        remote: &str,
        db: &str,
        leader_only: bool,
    ) -> Result<()> {
        let not = |reason: &str| {
            Err(Error::NotLeader {
                remote: remote.to_owned(),
                reason: reason.to_owned(),
            })
        };
        match state {
            None => not(&format!("does not serve database {db}")),
            Some(s) if s.model == "clustered" && !s.connected => {
                not("not connected to its cluster")
            }
            Some(s) if s.model == "clustered" && leader_only && !s.leader => {
                not("not the cluster leader")
            }
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(initial: Value) -> Option<DbState> {
        let mut s = None;
        DbState::apply(&mut s, &json!({"Database": {"u": {"initial": initial}}}));
        s
    }

    #[test]
    fn members_that_qualify() {
        let standalone =
            state(json!({"name": "DB", "model": "standalone", "connected": true, "leader": true}));
        assert!(DbState::check(&standalone, "r", "DB", true).is_ok());
        // A follower omits leader (false is the default).
        let follower = state(json!({"name": "DB", "model": "clustered", "connected": true}));
        assert!(DbState::check(&follower, "r", "DB", true).is_err());
        assert!(DbState::check(&follower, "r", "DB", false).is_ok());
        let cut_off = state(json!({"name": "DB", "model": "clustered", "leader": true}));
        assert!(DbState::check(&cut_off, "r", "DB", false).is_err());
        assert!(
            DbState::check(&None, "r", "DB", false).is_err(),
            "database not served"
        );
    }

    #[test]
    fn losing_leadership_disqualifies() {
        let mut s =
            state(json!({"name": "DB", "model": "clustered", "connected": true, "leader": true}));
        assert!(DbState::check(&s, "r", "DB", true).is_ok());
        DbState::apply(
            &mut s,
            &json!({"Database": {"u": {"modify": {"leader": false}}}}),
        );
        assert!(DbState::check(&s, "r", "DB", true).is_err());
        DbState::apply(&mut s, &json!({"Database": {"u": {"delete": null}}}));
        assert!(s.is_none());
    }
}
