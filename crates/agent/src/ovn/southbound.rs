//! The Southbound side of the OVN resolver: one conditional monitor holding only what this
//! chassis needs (our `Chassis` and `Chassis_Private` rows, `SB_Global`, `Datapath_Binding`,
//! and the `Port_Binding` rows bound here, additionally bound here during a live migration,
//! or of type `localport`), and the task that follows it:
//! - our `Chassis` row's UUID changes the `Port_Binding` conditions (`monitor_cond_change`);
//! - a new `Chassis_Private` row of ours (ovn-controller restarted) is registered again;
//! - an `SB_Global.nb_cfg` change is written back as `neutron:ovn-metadata-sb-cfg` after
//!   Neutron's random delay;
//! - a lost connection is logged once; answers keep coming from the last view while the
//!   client reconnects with backoff.
//!
//! Writes run in their own tasks so that the task reading events never waits on the
//! connection (which may itself wait for events to be read).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ns_ovsdb::ovn::port_conditions;
use ns_ovsdb::{Client, Config, Event, Monitor, Replica, TlsFiles, Uuid};
use rand::Rng;
use tokio::sync::{mpsc, watch};

use super::identity::Identity;
use super::register;
use crate::config::OvnOptions;

/// Everything this chassis needs from the Southbound database.
pub fn monitor(chassis: &str) -> Monitor {
    // Registration and the liveness heartbeat read our Chassis_Private row's config.
    ns_ovsdb::ovn::chassis_monitor(chassis, ["name", "chassis", "nb_cfg", "external_ids"])
}

/// The UUID of a row of `table` named `name` in the view.
fn named(view: &Replica, table: &str, name: &str) -> Option<Uuid> {
    view.rows(table)
        .find(|(_, r)| r.str("name") == Some(name))
        .map(|(u, _)| u.clone())
}

/// Why the Southbound side could not start.
#[derive(Debug, thiserror::Error)]
#[error("[ovn] ovn_sb_connection {remote}: {err}")]
pub struct StartError {
    pub remote: String,
    pub err: ns_ovsdb::Error,
}

/// The running Southbound side. Dropping it stops its tasks and the connection.
pub struct Southbound {
    pub client: Arc<Client>,
    pub identity: Identity,
    generation: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Southbound {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Southbound {
    /// Bumped on every row change: cached answers never outlive the view they came from.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Connect, wait for the first view (and for our ports' rows once our `Chassis` row is
    /// known), then register and follow the monitor in the background.
    pub async fn start(opts: &OvnOptions, identity: Identity) -> Result<Southbound, StartError> {
        let fail = |err| StartError {
            remote: opts.sb_connection.clone(),
            err,
        };
        let mut cfg = Config::new(&opts.sb_connection, monitor(&identity.chassis)).map_err(fail)?;
        cfg.tls = opts.sb_tls.as_ref().map(|(key, cert, ca)| TlsFiles {
            private_key: key.clone(),
            certificate: cert.clone(),
            ca_cert: ca.clone(),
        });
        cfg.probe_interval = opts.probe_interval;
        let (client, mut events) = Client::start(cfg).map_err(fail)?;
        let client = Arc::new(client);
        let generation = Arc::new(AtomicU64::new(0));
        let mut warned = false;
        loop {
            match events.recv().await {
                Some(Event::Ready { remote, .. }) => {
                    tracing::info!(%remote, chassis = %identity.chassis, "Southbound view received");
                    break;
                }
                Some(Event::Disconnected { remote, error }) if !warned => {
                    warned = true;
                    tracing::warn!(%remote, %error, "cannot reach the Southbound database yet; retrying");
                }
                Some(_) => {}
                None => return Err(fail(ns_ovsdb::Error::Stopped)),
            }
        }
        let chassis_row = named(&client.view(), "Chassis", &identity.chassis);
        // Events that arrive meanwhile (our ports entering the view) are kept for the
        // follower: the client waits for them to be read before it reads the reply.
        let mut early = Vec::new();
        let mut conds_set = true;
        match &chassis_row {
            // The reply of monitor_cond_change follows the update it causes: the view then
            // holds our ports.
            Some(u) => {
                let change = client.set_conditions("Port_Binding", Some(port_conditions(Some(u))));
                tokio::pin!(change);
                loop {
                    tokio::select! {
                        r = &mut change => {
                            if let Err(err) = r {
                                // Retried by the conditions task (kept for the reconnect).
                                tracing::warn!(%err, "cannot change the Port_Binding conditions yet");
                                conds_set = false;
                            }
                            break;
                        }
                        ev = events.recv() => match ev {
                            Some(ev) => early.push(ev),
                            None => return Err(fail(ns_ovsdb::Error::Stopped)),
                        },
                    }
                }
            }
            None => tracing::warn!(chassis = %identity.chassis,
                "no Chassis row of ours in the Southbound database yet (ovn-controller not running?); \
                 only localports until it appears"),
        }
        let (conds_tx, conds_rx) = watch::channel(chassis_row);
        if !conds_set {
            conds_tx.send_modify(|_| {});
        }
        let (reg_tx, reg_rx) = mpsc::unbounded_channel();
        let (cfg_tx, cfg_rx) = watch::channel(None);
        let registered = Arc::new(Mutex::new(None));
        let follower = Follower {
            client: client.clone(),
            chassis: identity.chassis.clone(),
            generation: generation.clone(),
            conds: conds_tx,
            register: reg_tx,
            nb_cfg: cfg_tx,
            registered: registered.clone(),
            down: false,
        };
        follower.check_registration();
        let tasks = vec![
            tokio::spawn(follower.run(early, events)),
            tokio::spawn(follow_conditions(client.clone(), conds_rx)),
            tokio::spawn(registrar(
                client.clone(),
                identity.clone(),
                registered,
                reg_rx,
            )),
            tokio::spawn(heartbeat(
                client.clone(),
                identity.chassis.clone(),
                register::max_delay(opts.agent_down_time),
                cfg_rx,
            )),
        ];
        Ok(Southbound {
            client,
            identity,
            generation,
            tasks,
        })
    }
}

/// The task reading the client's events.
struct Follower {
    client: Arc<Client>,
    chassis: String,
    generation: Arc<AtomicU64>,
    conds: watch::Sender<Option<Uuid>>,
    register: mpsc::UnboundedSender<()>,
    nb_cfg: watch::Sender<Option<i64>>,
    /// The `Chassis_Private` row our keys were last written to.
    registered: Arc<Mutex<Option<Uuid>>>,
    down: bool,
}

impl Follower {
    async fn run(mut self, early: Vec<Event>, mut events: mpsc::Receiver<Event>) {
        for ev in early {
            self.event(ev);
        }
        while let Some(ev) = events.recv().await {
            self.event(ev);
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Row(change) => {
                self.generation.fetch_add(1, Ordering::SeqCst);
                match change.table.as_str() {
                    "Chassis" => {
                        let now = named(&self.client.view(), "Chassis", &self.chassis);
                        self.conds.send_if_modified(|c| {
                            let changed = *c != now;
                            *c = now;
                            changed
                        });
                    }
                    "Chassis_Private" => self.check_registration(),
                    "SB_Global" => {
                        let old = change.old.as_ref().and_then(|r| r.i64("nb_cfg"));
                        let new = change.new.as_ref().and_then(|r| r.i64("nb_cfg"));
                        if let (Some(o), Some(n)) = (old, new) {
                            if o != n {
                                let _ = self.nb_cfg.send(Some(n));
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Disconnected { remote, error } => {
                if !self.down {
                    self.down = true;
                    tracing::warn!(%remote, %error,
                            "lost the Southbound connection; answering from the last view while reconnecting");
                }
            }
            Event::Ready { remote, resumed } => {
                if self.down {
                    self.down = false;
                    tracing::info!(%remote, resumed, "Southbound connection back");
                }
                self.check_registration();
            }
        }
    }

    /// Ask for a registration when our `Chassis_Private` row is not the one registered
    /// (first start, or the row was created again: ovn-controller restarted).
    fn check_registration(&self) {
        let now = named(&self.client.view(), "Chassis_Private", &self.chassis);
        let done = self
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if now.is_some() && now != done {
            let _ = self.register.send(());
        }
    }
}

/// Keep the `Port_Binding` conditions on our `Chassis` row.
async fn follow_conditions(client: Arc<Client>, mut rx: watch::Receiver<Option<Uuid>>) {
    while rx.changed().await.is_ok() {
        let chassis = rx.borrow_and_update().clone();
        tracing::info!(chassis_row = ?chassis.as_ref().map(Uuid::as_str), "following the ports of our Chassis row");
        // Kept by the client for reconnects even when the connection is down now.
        if let Err(err) = client
            .set_conditions("Port_Binding", Some(port_conditions(chassis.as_ref())))
            .await
        {
            tracing::warn!(%err, "cannot change the Port_Binding conditions");
        }
    }
}

/// Write the registration keys whenever asked (see [`register::register_ops`]).
async fn registrar(
    client: Arc<Client>,
    id: Identity,
    registered: Arc<Mutex<Option<Uuid>>>,
    mut rx: mpsc::UnboundedReceiver<()>,
) {
    let version = env!("CARGO_PKG_VERSION");
    while rx.recv().await.is_some() {
        while rx.try_recv().is_ok() {}
        let found = client
            .view()
            .rows("Chassis_Private")
            .find(|(_, r)| r.str("name") == Some(id.chassis.as_str()))
            .map(|(u, r)| (u.clone(), r.i64("nb_cfg").unwrap_or(0)));
        let Some((row, nb_cfg)) = found else {
            continue;
        };
        if registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            == Some(&row)
        {
            continue;
        }
        let ops = register::register_ops(&id.chassis, &id.bridge, nb_cfg, version);
        match client.transact(&ops).await {
            Ok(_) => {
                tracing::info!(chassis = %id.chassis, agent_id = %register::agent_id(&id.chassis), bridge = %id.bridge,
                    "registered as the OVN metadata agent of this chassis");
                *registered.lock().unwrap_or_else(|p| p.into_inner()) = Some(row);
            }
            // Asked again at the next Ready.
            Err(err) => tracing::warn!(%err, "cannot register in Chassis_Private yet"),
        }
    }
}

/// Neutron's heartbeat (`SbGlobalUpdateEvent`): after an `nb_cfg` change, wait 0 s the first
/// time, then a random 0..=`max_delay` s (LP#2119092), and write the newest `nb_cfg` (never an
/// older one that a later change overtook, unlike one timer per event).
async fn heartbeat(
    client: Arc<Client>,
    chassis: String,
    max_delay: u64,
    mut rx: watch::Receiver<Option<i64>>,
) {
    let mut first = true;
    while rx.changed().await.is_ok() {
        let delay = if first {
            0
        } else {
            rand::rng().random_range(0..=max_delay)
        };
        first = false;
        tracing::debug!(delay, "Delaying updating chassis table for {delay} seconds");
        tokio::time::sleep(Duration::from_secs(delay)).await;
        let Some(nb_cfg) = *rx.borrow_and_update() else {
            continue;
        };
        if let Err(err) = client
            .transact(&register::sb_cfg_ops(&chassis, nb_cfg))
            .await
        {
            tracing::warn!(%err, nb_cfg, "cannot write neutron:ovn-metadata-sb-cfg");
        }
    }
}
