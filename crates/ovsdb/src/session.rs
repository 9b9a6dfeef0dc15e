//! The background task: pick a remote, connect, check it is usable (the `_Server` database
//! says whether a clustered member is connected and the leader, as ovsdb-idl checks), read
//! the schema, monitor (resuming with `monitor_cond_since` when we hold a transaction id),
//! then serve: fold updates, answer echoes, probe idle tcp/ssl links, run the user's
//! requests. Any failure moves to the next remote; after a round of failures, back off.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ClientConfig;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::client::{Command, Config, Event, Status};
use crate::conn::{value, Conn, Msg};
use crate::datum::Uuid;
use crate::error::{Error, Result};
use crate::leader::DbState;
use crate::monitor::Condition;
use crate::remote::Remote;
use crate::replica::{difference, fold, Columns, Replica, RowChange};
use crate::schema::Schema;
use crate::transport::connect;
use crate::updates::{self, Notice, Updates};

/// Our monitor ids (echoed back as `params[0]` of the updates).
const DATA_MON: &str = "data";
const SERVER_MON: &str = "server";

pub(crate) struct Ctx {
    cfg: Config,
    tls: Option<Arc<ClientConfig>>,
    replica: Arc<RwLock<Replica>>,
    cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    status: watch::Sender<Status>,
    /// The last transaction id the replica reflects; `None` forces a full resync.
    last_txn: Option<String>,
    /// Whether the server knows `monitor_cond_since` (OVS >= 2.12).
    since: bool,
    /// The columns the replica holds (a change forces a full resync).
    columns: Option<Columns>,
}

enum Pending {
    Transact(oneshot::Sender<Result<Value>>),
    Cond {
        table: String,
        conditions: Option<Vec<Condition>>,
        reply: oneshot::Sender<Result<()>>,
    },
}

impl Ctx {
    pub(crate) fn new(
        cfg: Config,
        tls: Option<Arc<ClientConfig>>,
        replica: Arc<RwLock<Replica>>,
        cmds: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        status: watch::Sender<Status>,
    ) -> Ctx {
        Ctx {
            cfg,
            tls,
            replica,
            cmds,
            events,
            status,
            last_txn: None,
            since: true,
            columns: None,
        }
    }

    async fn emit(&self, ev: Event) {
        // A consumer that dropped its receiver does not want events.
        let _ = self.events.send(ev).await;
    }

    async fn emit_changes(&self, changes: Vec<RowChange>) {
        for c in changes {
            self.emit(Event::Row(c)).await;
        }
    }

    /// Handle a command while no connection is up.
    fn offline(&mut self, cmd: Command) {
        match cmd {
            Command::Transact { reply, .. } => {
                let _ = reply.send(Err(Error::NotConnected));
            }
            Command::SetConditions {
                table,
                conditions,
                reply,
            } => {
                let r = match self.cfg.monitor.tables.get_mut(&table) {
                    Some(tm) => {
                        tm.conditions = conditions;
                        // Rows that newly match but did not change would not be resent.
                        self.last_txn = None;
                        Ok(())
                    }
                    None => Err(Error::Config(format!("table {table} is not monitored"))),
                };
                let _ = reply.send(r);
            }
        }
    }

    /// Resolve the monitor's columns against the server's schema: unknown tables and columns
    /// are left out (with a warning), an empty list means every column.
    fn resolve_columns(&self, schema: &Schema) -> Columns {
        let mut out = BTreeMap::new();
        for (t, tm) in &self.cfg.monitor.tables {
            let Some(ts) = schema.tables.get(t) else {
                tracing::warn!(table = %t, db = %schema.name, "ovsdb: table not in the server's schema, not monitored");
                continue;
            };
            let mut cols: Vec<String> = match &tm.columns {
                None => ts.columns.keys().cloned().collect(),
                Some(cs) => cs
                    .iter()
                    .filter(|c| {
                        let known = ts.columns.contains_key(*c);
                        if !known {
                            tracing::warn!(table = %t, column = %c, "ovsdb: column not in the server's schema, not monitored");
                        }
                        known
                    })
                    .cloned()
                    .collect(),
            };
            cols.sort();
            cols.dedup();
            out.insert(t.clone(), cols.into());
        }
        out
    }

    /// One connection, from connect to loss. `Ok(())` means the client was dropped.
    async fn session(
        &mut self,
        remote: &Remote,
        pending: &mut HashMap<u64, Pending>,
    ) -> Result<()> {
        let name = remote.to_string();
        let db = self.cfg.monitor.db.clone();
        let stream = connect(remote, self.tls.as_ref(), self.cfg.connect_timeout).await?;
        let mut conn = Conn::new(
            name.clone(),
            stream,
            self.cfg.max_message,
            self.cfg.connect_timeout,
        );
        let mut stash = Vec::new();

        // 1. Is this member usable? (ovsdb-idl: `_Server` `Database` `model`/`connected`/`leader`.)
        let server_req = json!(["_Server", SERVER_MON, {"Database": [{
            "columns": ["name", "model", "connected", "leader"],
            "where": [["name", "==", db]],
        }]}]);
        let mut db_state = None;
        match conn.call("monitor_cond", server_req, &mut stash).await {
            Ok(updates) => {
                DbState::apply(&mut db_state, &value(&updates)?);
                DbState::check(&db_state, &name, &db, self.cfg.leader_only)?;
            }
            // A server without `_Server` (OVS < 2.9) is standalone.
            Err(Error::Rpc { error, .. }) => {
                tracing::debug!(remote = %name, %error, "ovsdb: no _Server database, assuming standalone");
                db_state = Some(DbState {
                    model: "standalone".into(),
                    connected: true,
                    leader: true,
                });
            }
            Err(e) => return Err(e),
        }

        // 2. The schema decides how values are read and diffs applied.
        let schema = conn.call("get_schema", json!([db]), &mut stash).await?;
        let schema = Schema::from_json(&value(&schema)?)?;
        let columns = self.resolve_columns(&schema);
        if self.columns.as_ref() != Some(&columns) {
            self.last_txn = None;
        }

        // 3. Monitor, resuming when we can.
        let requests = self.cfg.monitor.requests(&columns, &schema);
        let ctx = updates::Ctx {
            schema: &schema,
            columns: &columns,
        };
        let (found, updates) = self
            .monitor(&mut conn, ctx, &db, requests, &mut stash)
            .await?;
        let mut changes = Vec::new();
        let folded = if found {
            let mut rep = self.replica.write().unwrap_or_else(|e| e.into_inner());
            fold(&mut rep, &schema, &columns, updates, &mut changes)
        } else {
            let mut fresh = Replica::default();
            for t in columns.keys() {
                fresh.tables.insert(t.clone(), Default::default());
            }
            let r = fold(&mut fresh, &schema, &columns, updates, &mut Vec::new());
            if r.is_ok() {
                let mut rep = self.replica.write().unwrap_or_else(|e| e.into_inner());
                changes = difference(&rep, &fresh);
                *rep = fresh;
            }
            r
        };
        if let Err(e) = folded {
            self.last_txn = None;
            return Err(e);
        }
        self.columns = Some(columns.clone());
        self.emit_changes(changes).await;
        self.status.send_modify(|s| {
            s.connected = Some(name.clone());
            s.ready_count += 1;
        });
        tracing::info!(remote = %name, resumed = found, "ovsdb: replica ready");
        self.emit(Event::Ready {
            remote: name.clone(),
            resumed: found,
        })
        .await;

        // 4. Serve.
        let probe = self.cfg.probe_interval.filter(|_| remote.needs_probes());
        let mut last_rx = Instant::now();
        let mut probing = false;
        for m in std::mem::take(&mut stash) {
            self.handle(&mut conn, m, &schema, &columns, &mut db_state, pending)
                .await?;
        }
        loop {
            let deadline = probe
                .and_then(|p| last_rx.checked_add(if probing { p.saturating_mul(2) } else { p }));
            tokio::select! {
                m = conn.recv() => {
                    let m = m?;
                    last_rx = Instant::now();
                    probing = false;
                    self.handle(&mut conn, m, &schema, &columns, &mut db_state, pending).await?;
                }
                cmd = self.cmds.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    self.command(&mut conn, cmd, &schema, pending).await?;
                }
                _ = sleep_until(deadline), if deadline.is_some() => {
                    if probing {
                        return Err(Error::Io {
                            remote: name,
                            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer to our echo probe"),
                        });
                    }
                    conn.send(&json!({"id": "echo", "method": "echo", "params": []})).await?;
                    probing = true;
                }
            }
        }
    }

    /// `monitor_cond_since` (falling back to `monitor_cond` on servers without it):
    /// whether the server resumed from our transaction id, and the updates (read row by
    /// row, updates.rs).
    async fn monitor(
        &mut self,
        conn: &mut Conn,
        ctx: updates::Ctx<'_>,
        db: &str,
        requests: Value,
        stash: &mut Vec<Msg>,
    ) -> Result<(bool, Updates)> {
        if self.since {
            let last = self
                .last_txn
                .clone()
                .unwrap_or_else(|| Uuid::zero().as_str().to_owned());
            let params = json!([db, DATA_MON, requests, last]);
            match conn.call("monitor_cond_since", params, stash).await {
                Ok(reply) => {
                    let (found, txn, updates) = updates::parse_since_reply(ctx, reply.get())?;
                    // "Found" only means something if we asked with a real id.
                    let found = found && self.last_txn.is_some();
                    self.last_txn = Some(txn);
                    return Ok((found, updates));
                }
                Err(Error::Rpc { error, .. }) if error.contains("unknown method") => {
                    tracing::info!(remote = %conn.remote, "ovsdb: no monitor_cond_since, using monitor_cond");
                    self.since = false;
                }
                Err(e) => return Err(e),
            }
        }
        let reply = conn
            .call("monitor_cond", json!([db, DATA_MON, requests]), stash)
            .await?;
        self.last_txn = None;
        Ok((false, updates::parse(ctx, reply.get())?))
    }

    async fn handle(
        &mut self,
        conn: &mut Conn,
        m: Msg,
        schema: &Schema,
        columns: &Columns,
        db_state: &mut Option<DbState>,
        pending: &mut HashMap<u64, Pending>,
    ) -> Result<()> {
        match m {
            Msg::Request { id, method, params } if method == "echo" => {
                conn.answer_echo(id, params).await
            }
            Msg::Request { id, method, .. } => {
                // JSON-RPC: every request gets an answer, even one we do not know.
                conn.send(
                    &json!({"id": id, "result": null, "error": format!("unknown method {method}")}),
                )
                .await
            }
            Msg::Notify { method, params } if method == "update2" || method == "update3" => {
                let ctx = updates::Ctx { schema, columns };
                let raw = params.as_deref().map_or("null", RawValue::get);
                let (txn, updates) =
                    match updates::parse_notice(ctx, method == "update3", DATA_MON, raw)? {
                        Notice::Data { txn, updates } => (txn, updates),
                        Notice::Other { monitor, updates } => {
                            if monitor.as_str() != Some(SERVER_MON) {
                                return Ok(());
                            }
                            DbState::apply(db_state, &updates);
                            return DbState::check(
                                db_state,
                                &conn.remote,
                                &self.cfg.monitor.db,
                                self.cfg.leader_only,
                            );
                        }
                    };
                let mut changes = Vec::new();
                let r = {
                    let mut rep = self.replica.write().unwrap_or_else(|e| e.into_inner());
                    fold(&mut rep, schema, columns, updates, &mut changes)
                };
                if let Err(e) = r {
                    self.last_txn = None;
                    return Err(e);
                }
                if let Some(t) = txn {
                    self.last_txn = Some(t);
                }
                self.emit_changes(changes).await;
                Ok(())
            }
            Msg::Notify { method, .. } => {
                tracing::debug!(remote = %conn.remote, %method, "ovsdb: notification ignored");
                Ok(())
            }
            Msg::Response { id, result, error } => {
                let Some(p) = id.as_u64().and_then(|i| pending.remove(&i)) else {
                    // Our echo probes' answers, or late answers: nothing waits for them.
                    return Ok(());
                };
                let err = |method: &str| Error::Rpc {
                    method: method.to_owned(),
                    error: error
                        .as_str()
                        .map_or_else(|| error.to_string(), str::to_owned),
                };
                match p {
                    Pending::Transact(reply) => {
                        let r = match (error.is_null(), result) {
                            (true, Some(raw)) => value(&raw),
                            (true, None) => Err(Error::protocol("transact: no result")),
                            (false, _) => Err(err("transact")),
                        };
                        let _ = reply.send(r);
                    }
                    Pending::Cond {
                        table,
                        conditions,
                        reply,
                    } => {
                        let r = if error.is_null() {
                            if let Some(tm) = self.cfg.monitor.tables.get_mut(&table) {
                                tm.conditions = conditions;
                            }
                            Ok(())
                        } else {
                            Err(err("monitor_cond_change"))
                        };
                        let _ = reply.send(r);
                    }
                }
                Ok(())
            }
        }
    }

    async fn command(
        &mut self,
        conn: &mut Conn,
        cmd: Command,
        schema: &Schema,
        pending: &mut HashMap<u64, Pending>,
    ) -> Result<()> {
        match cmd {
            Command::Transact { ops, reply } => {
                let mut params = vec![json!(self.cfg.monitor.db)];
                params.extend(ops);
                let id = conn.request("transact", Value::Array(params)).await?;
                pending.insert(id, Pending::Transact(reply));
            }
            Command::SetConditions {
                table,
                conditions,
                reply,
            } => {
                if !self.cfg.monitor.tables.contains_key(&table) {
                    let _ = reply.send(Err(Error::Config(format!(
                        "table {table} is not monitored"
                    ))));
                    return Ok(());
                }
                let clauses: Vec<Value> = match &conditions {
                    Some(c) => crate::monitor::known_conditions(schema, &table, c),
                    None => vec![json!(true)],
                };
                let params = json!([DATA_MON, DATA_MON, {table.clone(): [{"where": clauses}]}]);
                let id = conn.request("monitor_cond_change", params).await?;
                pending.insert(
                    id,
                    Pending::Cond {
                        table,
                        conditions,
                        reply,
                    },
                );
            }
        }
        Ok(())
    }

    /// Fail what was in flight when a connection ended.
    fn abandon(&mut self, pending: &mut HashMap<u64, Pending>) {
        for (_, p) in pending.drain() {
            match p {
                Pending::Transact(reply) => {
                    let _ = reply.send(Err(Error::Disconnected));
                }
                Pending::Cond {
                    table,
                    conditions,
                    reply,
                } => {
                    // The server may have applied it: the replica may hold rows of either
                    // condition set, so only a full resync is safe, and it monitors with the
                    // new conditions, as a change made while offline does. Kept only for
                    // the last connection, the change was lost for good when a connection
                    // dropped before its answer (a leader failover): every caller would
                    // have had to retry it.
                    self.last_txn = None;
                    if let Some(tm) = self.cfg.monitor.tables.get_mut(&table) {
                        tm.conditions = conditions;
                    }
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    /// Wait `d`, answering commands as offline meanwhile; false if the client was dropped.
    async fn pause(&mut self, d: Duration) -> bool {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                cmd = self.cmds.recv() => match cmd {
                    Some(c) => self.offline(c),
                    None => return false,
                },
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The task behind a [`crate::Client`].
pub(crate) async fn run(mut ctx: Ctx) {
    let n = ctx.cfg.remotes.len().max(1);
    let mut idx = 0usize;
    let mut failures = 0usize;
    let mut backoff = ctx.cfg.backoff_min;
    let mut pending = HashMap::new();
    loop {
        let Some(remote) = ctx.cfg.remotes.get(idx % n).cloned() else {
            return;
        };
        let before = ctx.status.borrow().ready_count;
        let began = tokio::time::Instant::now();
        let r = ctx.session(&remote, &mut pending).await;
        ctx.abandon(&mut pending);
        let was_ready = ctx.status.borrow().ready_count > before;
        // Ready, then lost at once (a server that sends something we cannot fold right after
        // the view) counts as a failure: reset only after a session that lasted, or every
        // loss was a full resync at once, thousands a second.
        let lasted = began.elapsed() >= ctx.cfg.backoff_max;
        let err = match r {
            Ok(()) => return,
            Err(e) => e,
        };
        if matches!(err, Error::Protocol(_)) {
            // A server that sent something we could not read may send it again when asked
            // for the same changes: start over from a full view instead.
            ctx.last_txn = None;
        }
        let text = err.to_string();
        let text = if text.starts_with(&remote.to_string()) {
            text
        } else {
            format!("{remote}: {text}")
        };
        ctx.status.send_modify(|s| s.last_error = Some(text));
        if was_ready {
            tracing::warn!(remote = %remote, error = %err, "ovsdb: connection lost, reconnecting");
            ctx.status.send_modify(|s| s.connected = None);
            ctx.emit(Event::Disconnected {
                remote: remote.to_string(),
                error: err.to_string(),
            })
            .await;
        }
        if was_ready && lasted {
            failures = 0;
            backoff = ctx.cfg.backoff_min;
        } else if was_ready {
            failures += 1;
        } else {
            tracing::debug!(remote = %remote, error = %err, "ovsdb: remote not usable");
            failures += 1;
        }
        idx = idx.wrapping_add(1);
        // After every remote failed in a row, wait before the next round.
        if failures > 0 && failures % n == 0 {
            if failures == n {
                tracing::warn!(error = %err, "ovsdb: no usable remote, retrying with backoff");
            }
            if !ctx.pause(jitter(backoff)).await {
                return;
            }
            backoff = backoff.saturating_mul(2).min(ctx.cfg.backoff_max);
        }
    }
}

/// `d` plus up to a quarter more, so many clients of one server do not retry in step.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let quarter = d.as_millis() as u64 / 4;
    d + Duration::from_millis(if quarter == 0 {
        0
    } else {
        u64::from(nanos) % quarter
    })
}
