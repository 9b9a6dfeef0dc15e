//! The public face: [`Config`], [`Client`] (a handle on one background task that keeps a
//! connection to one of the remotes and the replica in step with it) and [`Event`]s.
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::monitor::{Condition, Monitor};
use crate::remote::Remote;
use crate::replica::{Replica, RowChange};
use crate::session;
use crate::tls::{client_config, TlsFiles};
use crate::transact::{results, Op, OpResult};

/// How to connect and what to replicate.
#[derive(Clone, Debug)]
pub struct Config {
    /// Tried in order, moving to the next on failure.
    pub remotes: Vec<Remote>,
    pub monitor: Monitor,
    /// Needed for `ssl:` remotes.
    pub tls: Option<TlsFiles>,
    /// Only stay connected to the leader of a clustered database (ovsdb-idl's default), so
    /// writes go to the leader. Followers are skipped; standalone servers always qualify.
    pub leader_only: bool,
    /// Send an `echo` after this long without traffic on tcp/ssl, and drop the connection
    /// when another interval passes unanswered (unix streams are not probed, as in OVS).
    pub probe_interval: Option<Duration>,
    /// For connecting, and for each silence of the server while the handshake (schema,
    /// initial view) waits for an answer.
    pub connect_timeout: Duration,
    /// Wait after every remote failed in a row: doubling from `backoff_min` to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The largest single message accepted (the initial dump is one message).
    pub max_message: usize,
    /// Events queued for the consumer before the client stops reading from the server.
    pub event_capacity: usize,
}

impl Config {
    /// `remotes` as Neutron's `ovn_sb_connection` (comma-separated), defaults elsewhere.
    pub fn new(remotes: &str, monitor: Monitor) -> Result<Config> {
        Ok(Config {
            remotes: Remote::parse_list(remotes)?,
            monitor,
            tls: None,
            leader_only: true,
            probe_interval: Some(Duration::from_secs(5)),
            connect_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            max_message: 256 << 20,
            event_capacity: 1024,
        })
    }
}

/// What the client tells its user, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A row was inserted, modified or deleted (also: entered or left the conditions).
    Row(RowChange),
    /// The replica now matches the server: after the first connect, after a full resync
    /// (the changes against the previous view came as `Row` events just before), or after a
    /// resume with `monitor_cond_since` (`resumed`: only the missed changes were sent).
    Ready { remote: String, resumed: bool },
    /// The connection was lost; the replica keeps the last view until the next `Ready`.
    Disconnected { remote: String, error: String },
}

/// Connection state, for status pages and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// The remote the replica is in step with, while connected.
    pub connected: Option<String>,
    /// How many times the replica became ready (first connect, resyncs, resumes).
    pub ready_count: u64,
    /// Why the last connection or connection attempt ended (for logs and status pages).
    pub last_error: Option<String>,
}

pub(crate) enum Command {
    Transact {
        ops: Vec<Value>,
        reply: oneshot::Sender<Result<Value>>,
    },
    SetConditions {
        table: String,
        conditions: Option<Vec<Condition>>,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// A running client. Dropping it stops the background task and closes the connection.
#[derive(Debug)]
pub struct Client {
    cmds: mpsc::Sender<Command>,
    replica: Arc<RwLock<Replica>>,
    status: watch::Receiver<Status>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Start connecting (in a task on the current tokio runtime: call it from inside one).
    /// The receiver gets the [`Event`]s; drop it if you only read [`Client::view`]. Errors
    /// here are configuration errors (no table, unreadable TLS files); connection problems
    /// never fail the client, they show in [`Client::status`] and as events.
    pub fn start(config: Config) -> Result<(Client, mpsc::Receiver<Event>)> {
        if config.monitor.tables.is_empty() {
            return Err(Error::Config("the monitor names no table".into()));
        }
        let tls = match &config.tls {
            Some(files) => Some(client_config(files)?),
            None if config
                .remotes
                .iter()
                .any(|r| matches!(r, Remote::Ssl { .. })) =>
            {
                return Err(Error::Config(
                    "ssl: remote without TLS key, certificate and CA".into(),
                ))
            }
            None => None,
        };
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(config.event_capacity.max(1));
        let (st_tx, st_rx) = watch::channel(Status::default());
        let replica = Arc::new(RwLock::new(Replica::default()));
        let task = tokio::spawn(session::run(session::Ctx::new(
            config,
            tls,
            replica.clone(),
            cmd_rx,
            ev_tx,
            st_tx,
        )));
        Ok((
            Client {
                cmds: cmd_tx,
                replica,
                status: st_rx,
                task,
            },
            ev_rx,
        ))
    }

    /// The replica. Do not hold the guard across an `.await`: the client waits for it to
    /// fold the next update.
    pub fn view(&self) -> RwLockReadGuard<'_, Replica> {
        self.replica.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Wait until the replica has been ready at least once (bound it with a timeout).
    pub async fn ready(&self) -> Result<()> {
        let mut rx = self.status.clone();
        rx.wait_for(|s| s.ready_count > 0)
            .await
            .map(|_| ())
            .map_err(|_| Error::Stopped)
    }

    /// Run a transaction on the current connection (the leader, with `leader_only`).
    /// [`Error::NotConnected`] while reconnecting; [`Error::Transaction`] if an operation
    /// failed (nothing was committed).
    pub async fn transact(&self, ops: &[Op]) -> Result<Vec<OpResult>> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Transact {
            ops: ops.iter().map(Op::to_json).collect(),
            reply,
        };
        self.cmds.send(cmd).await.map_err(|_| Error::Stopped)?;
        let v = rx.await.map_err(|_| Error::Stopped)??;
        results(&v, ops.len())
    }

    /// Replace `table`'s conditions (`None`: every row) with `monitor_cond_change`. Rows that
    /// enter or leave arrive as [`Event::Row`]s; reconnects use the new conditions.
    pub async fn set_conditions(
        &self,
        table: &str,
        conditions: Option<Vec<Condition>>,
    ) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::SetConditions {
            table: table.to_owned(),
            conditions,
            reply,
        };
        self.cmds.send(cmd).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}
