//! The OVN event source (`[spawner] source = ovn`): as Neutron's OVN metadata agent, but with a
//! conditional monitor of only this chassis's rows. It
//! - reads who we are from the local `Open_vSwitch` database (`external_ids:system-id`, the
//!   integration bridge `external_ids:ovn-bridge`, default `br-int`);
//! - monitors the Southbound database: our `Chassis` row, `Datapath_Binding`, and the
//!   `Port_Binding` rows bound here, additionally bound here (live migration) or of type
//!   `localport`; the `Port_Binding` conditions follow our `Chassis` row's UUID;
//! - on every change (binding, unbinding, migration, deletion, CIDR change: any row event)
//!   recomputes the wanted networks ([`ovn_networks`]) and reconciles: proxies of networks
//!   no longer wanted are stopped before their namespace, veth and OVS port go; new or changed
//!   networks are provisioned ([`crate::ovn_provision`]) before their record reaches the
//!   supervisor, which runs the proxy (`--ovn-network-id`);
//! - at start, before the supervisor adopts proxies, removes the `ovnmeta-` namespaces no
//!   longer wanted and provisions the rest (Neutron's `sync`, without LP#2031184's rebuild of
//!   everything: what is there is only checked);
//! - a lost Southbound connection tears nothing down: the last view stays until the client
//!   has resynced (`Ready`), then one pass runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ns_ovsdb::ovn::port_conditions;
use ns_ovsdb::{Client, Config as OvsdbConfig, Event, Monitor, Replica, Uuid};
use tokio::sync::{mpsc, watch, Notify};

use crate::ovn_decide::{ovn_networks, veth_names, OvnNet, PortRow, SbView};
use crate::ovn_provision::{ensure_checksum_rule, plug, provision_links, teardown_links, unplug};
use crate::platform::Platform;
use crate::supervisor::Supervisor;
use crate::{Error, Result};

/// Default integration bridge (Neutron's, with a warning when `ovn-bridge` is unset).
const DEFAULT_BRIDGE: &str = "br-int";
/// Delay before a pass that had errors is retried.
const RETRY: Duration = Duration::from_secs(2);

/// Where the databases are (`[ovn] ovn_sb_connection`, `[ovs] ovsdb_connection`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvnOptions {
    pub sb_connection: String,
    /// `[ovn] ovn_sb_private_key`, `ovn_sb_certificate`, `ovn_sb_ca_cert` (for `ssl:`).
    pub sb_tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// `[ovn] ovsdb_probe_interval` (0: off).
    pub probe_interval: Option<Duration>,
    pub ovsdb_connection: String,
}

fn sb_monitor(chassis: &str) -> Monitor {
    // The coexistence check reads our Chassis_Private row's external_ids only.
    ns_ovsdb::ovn::chassis_monitor(chassis, ["name", "external_ids"])
}

/// Why the OVN source must not run: Neutron's OVN metadata agent is alive on this chassis
/// (its `sb-cfg` within 1 of `SB_Global.nb_cfg`, and no marker of our agent, which writes the
/// same key). `None` when it is not.
pub fn neutron_agent_alive(view: &Replica, chassis: &str) -> Option<String> {
    let nb_cfg = view.rows("SB_Global").find_map(|(_, r)| r.i64("nb_cfg"))?;
    let (_, row) = view
        .rows("Chassis_Private")
        .find(|(_, r)| r.str("name") == Some(chassis))?;
    if row
        .map_str("external_ids", ns_contract::ovn::AGENT_MARKER_KEY)
        .is_some()
    {
        return None;
    }
    ns_contract::ovn::SB_CFG_KEYS.iter().find_map(|key| {
        let sb_cfg: i64 = row.map_str("external_ids", key)?.parse().ok()?;
        ((nb_cfg - sb_cfg).abs() <= 1).then(|| {
            format!(
                "Neutron's OVN metadata agent is alive on chassis {chassis} (Chassis_Private \
                 {key} = {sb_cfg}, SB_Global nb_cfg = {nb_cfg}); stop it before running the \
                 spawner with [spawner] source = ovn"
            )
        })
    })
}

fn chassis_row(view: &Replica, chassis: &str) -> Option<Uuid> {
    view.rows("Chassis")
        .find(|(_, r)| r.str("name") == Some(chassis))
        .map(|(u, _)| u.clone())
}

/// The decision's input from the replica.
pub fn sb_view(view: &Replica, chassis: &str) -> SbView {
    let strmap = |r: &ns_ovsdb::Row| -> BTreeMap<String, String> {
        r.get("external_ids")
            .and_then(ns_ovsdb::Datum::as_map)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    SbView {
        chassis: chassis_row(view, chassis).map(|u| u.as_str().to_owned()),
        datapaths: view
            .rows("Datapath_Binding")
            .filter_map(|(u, r)| {
                Some((
                    u.as_str().to_owned(),
                    r.map_str("external_ids", "name")?.to_owned(),
                ))
            })
            .collect(),
        ports: view
            .rows("Port_Binding")
            .map(|(_, r)| PortRow {
                logical_port: r.str("logical_port").unwrap_or_default().to_owned(),
                kind: r.str("type").unwrap_or_default().to_owned(),
                mac: r.strs("mac").into_iter().map(str::to_owned).collect(),
                chassis: r.uuid("chassis").map(|u| u.as_str().to_owned()),
                additional_chassis: r
                    .uuids("additional_chassis")
                    .into_iter()
                    .map(|u| u.as_str().to_owned())
                    .collect(),
                datapath: r
                    .uuid("datapath")
                    .map(|u| u.as_str().to_owned())
                    .unwrap_or_default(),
                external_ids: strmap(r),
            })
            .collect(),
    }
}

/// How often a start-up still waiting for a database says so in the log.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Wait, without a time limit, for the first `Ready` of a client (it retries with its
/// backoff): the first failure is logged at once, then one line a minute while it lasts;
/// `phase` always holds what is waited for (`status`, `check` and systemd's `STATUS=` show it).
async fn first_ready(
    events: &mut mpsc::Receiver<Event>,
    what: &str,
    remotes: &str,
    phase: &watch::Sender<String>,
) -> Result<()> {
    let since = tokio::time::Instant::now();
    phase.send_replace(format!("waiting for the {what} at {remotes}"));
    let mut last: Option<(String, String)> = None;
    let mut tick = tokio::time::interval_at(since + WAIT_LOG_EVERY, WAIT_LOG_EVERY);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Ready { remote, .. }) => {
                    if last.is_some() {
                        tracing::info!(%remote, waited_s = since.elapsed().as_secs(), "reached the {what}");
                    }
                    return Ok(());
                }
                Some(Event::Disconnected { remote, error }) => {
                    if last.is_none() {
                        tracing::warn!(%remote, %error, "cannot reach the {what} yet; retrying");
                    }
                    phase.send_replace(format!("waiting for the {what} at {remote}: {error}"));
                    last = Some((remote, error.to_string()));
                }
                Some(_) => {}
                None => return Err(Error::Invalid(format!("{what}: client stopped"))),
            },
            _ = tick.tick() => {
                let (remote, error) = last.clone().unwrap_or_else(|| (remotes.to_owned(), "no answer yet".to_owned()));
                tracing::warn!(%remote, %error, waited_s = since.elapsed().as_secs(), "still waiting for the {what}; retrying");
            }
        }
    }
}

/// The running OVN source. Dropping it stops its tasks (what it built stays, as proxies do).
pub struct OvnSource {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for OvnSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What one reconcile pass works with.
struct State<P> {
    sup: Supervisor<P>,
    sb: Arc<Client>,
    ovs: Arc<Client>,
    chassis: String,
    bridge: String,
    /// What is built, by network id.
    built: BTreeMap<String, OvnNet>,
    /// Networks whose teardown failed: retried by the next pass unless wanted again.
    leftovers: std::collections::BTreeSet<String>,
    /// Set when our `Chassis_Private` row is created again (ovn-controller restarted,
    /// Neutron's `ChassisPrivateCreateEvent`): the next pass checks every network again.
    recheck: Arc<std::sync::atomic::AtomicBool>,
}

impl<P: Platform> State<P> {
    fn records(&self) -> BTreeMap<String, bool> {
        self.built
            .iter()
            .map(|(k, n)| (k.clone(), n.ipv6))
            .collect()
    }

    /// One pass; false if something failed (retried later). `first`: before the supervisor
    /// adopted anything, so stale namespaces are found by listing `/run/netns`.
    async fn pass(&mut self, first: bool) -> bool {
        let recheck = self
            .recheck
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        let view = sb_view(&self.sb.view(), &self.chassis);
        let known = view.chassis.is_some();
        let want = ovn_networks(&view);
        let mut ok = true;
        let mut gone: Vec<String> = self
            .built
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        // Without our Chassis row nothing is known to be unwanted: nothing is removed at start.
        if first && known {
            let prefix = ns_contract::Kind::OvnNetwork.netns_prefix();
            for name in ns_netns::list().unwrap_or_default() {
                if let Some(id) = name.strip_prefix(prefix) {
                    if !want.contains_key(id)
                        && !gone.iter().any(|g| g == id)
                        && built_by_an_agent(&name, id).await
                    {
                        gone.push(id.to_owned());
                    }
                }
            }
        }
        for id in std::mem::take(&mut self.leftovers) {
            if !want.contains_key(&id) && !gone.contains(&id) {
                gone.push(id);
            }
        }
        if !gone.is_empty() {
            for g in &gone {
                self.built.remove(g);
            }
            if !first {
                // Proxies stop before their namespace goes.
                self.sup.set_ovn_networks(self.records());
                for e in self.sup.reconcile().await {
                    tracing::warn!(err = %e, "reconcile");
                }
            }
            for id in &gone {
                tracing::info!(network = %id, "tearing down ovnmeta namespace: no local VIF or no metadata port");
                let (outer, _) = veth_names(id);
                let r = match unplug(&self.ovs, &outer).await {
                    Ok(()) => teardown_links(id).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    tracing::warn!(network = %id, err = %e, "teardown failed; retried");
                    self.leftovers.insert(id.clone());
                    ok = false;
                }
            }
        }
        for (id, net) in &want {
            if !recheck && self.built.get(id) == Some(net) {
                continue;
            }
            match self.provision(net).await {
                Ok(()) => {
                    tracing::info!(network = %id, cidrs = ?net.cidrs, mtu = ?net.mtu, ipv6 = net.ipv6, "ovnmeta namespace provisioned");
                    self.built.insert(id.clone(), net.clone());
                }
                Err(e) => {
                    tracing::warn!(network = %id, err = %e, "cannot provision the ovnmeta namespace");
                    ok = false;
                }
            }
        }
        self.sup.set_ovn_networks(self.records());
        ok
    }

    async fn provision(&self, net: &OvnNet) -> Result<()> {
        provision_links(net).await?;
        let (outer, _) = veth_names(&net.id);
        if plug(&self.ovs, &self.bridge, &outer, &net.logical_port).await? {
            ensure_checksum_rule(&net.id).await?;
        }
        Ok(())
    }
}

impl OvnSource {
    /// Connect to both databases, wait for this chassis's view, run the first pass (stale
    /// `ovnmeta-` namespaces removed, the wanted ones built, their records given to `sup`),
    /// then follow the Southbound database in the background. Call before the supervisor's
    /// `adopt_and_start`, so running proxies are adopted, not rebuilt.
    pub async fn start<P: Platform>(sup: Supervisor<P>, opts: &OvnOptions) -> Result<OvnSource> {
        Self::start_reporting(sup, opts, &watch::channel(String::new()).0).await
    }

    /// [`OvnSource::start`], keeping `phase` set to what the start waits for or does.
    pub async fn start_reporting<P: Platform>(
        sup: Supervisor<P>,
        opts: &OvnOptions,
        phase: &watch::Sender<String>,
    ) -> Result<OvnSource> {
        let bad = |what: &str, e: ns_ovsdb::Error| Error::Invalid(format!("{what}: {e}"));
        let ovs_cfg = OvsdbConfig::new(
            &opts.ovsdb_connection,
            Monitor::new("Open_vSwitch").table("Open_vSwitch", ["external_ids"], None),
        )
        .map_err(|e| bad("[ovs] ovsdb_connection", e))?;
        let (ovs, mut ovs_events) =
            Client::start(ovs_cfg).map_err(|e| bad("[ovs] ovsdb_connection", e))?;
        first_ready(
            &mut ovs_events,
            "local OVS database",
            &opts.ovsdb_connection,
            phase,
        )
        .await?;
        // Only the view and transactions are used: the events are not needed.
        drop(ovs_events);
        let (chassis, bridge) = {
            let view = ovs.view();
            let row = view.rows("Open_vSwitch").next().map(|(_, r)| r.clone());
            let get = |k: &str| {
                row.as_ref()
                    .and_then(|r| r.map_str("external_ids", k))
                    .map(str::to_owned)
            };
            (get("system-id"), get("ovn-bridge"))
        };
        let chassis = chassis.ok_or_else(|| {
            Error::Invalid(
                "local OVS database: Open_vSwitch external_ids:system-id is not set (is this an OVN chassis?)"
                    .into(),
            )
        })?;
        let bridge = bridge.unwrap_or_else(|| {
            tracing::warn!("Open_vSwitch external_ids:ovn-bridge not set; using {DEFAULT_BRIDGE}");
            DEFAULT_BRIDGE.to_owned()
        });
        let mut sb_cfg = OvsdbConfig::new(&opts.sb_connection, sb_monitor(&chassis))
            .map_err(|e| bad("[ovn] ovn_sb_connection", e))?;
        sb_cfg.tls = opts
            .sb_tls
            .as_ref()
            .map(|(key, cert, ca)| ns_ovsdb::TlsFiles {
                private_key: key.clone(),
                certificate: cert.clone(),
                ca_cert: ca.clone(),
            });
        sb_cfg.probe_interval = opts.probe_interval;
        let (sb, mut events) =
            Client::start(sb_cfg).map_err(|e| bad("[ovn] ovn_sb_connection", e))?;
        let sb = Arc::new(sb);
        first_ready(
            &mut events,
            "Southbound database",
            &opts.sb_connection,
            phase,
        )
        .await?;
        tracing::info!(%chassis, %bridge, "Southbound view received");
        if let Some(why) = neutron_agent_alive(&sb.view(), &chassis) {
            return Err(Error::Invalid(why));
        }
        let mut current = chassis_row(&sb.view(), &chassis);
        // Our ports enter the view with the condition change; its reply follows the update.
        // Events are read meanwhile (the client waits for them to be read).
        if let Some(u) = &current {
            let change = sb.set_conditions("Port_Binding", Some(port_conditions(Some(u))));
            tokio::pin!(change);
            loop {
                tokio::select! {
                    r = &mut change => {
                        if let Err(e) = r {
                            tracing::warn!(err = %e, "cannot change the Port_Binding conditions yet");
                        }
                        break;
                    }
                    ev = events.recv() => if ev.is_none() {
                        return Err(Error::Invalid("Southbound database: client stopped".into()));
                    },
                }
            }
        } else {
            tracing::warn!(%chassis, "no Chassis row of ours in the Southbound database yet (ovn-controller not running?)");
        }
        let mut state = State {
            sup,
            sb: sb.clone(),
            ovs: Arc::new(ovs),
            chassis: chassis.clone(),
            bridge,
            built: BTreeMap::new(),
            leftovers: Default::default(),
            recheck: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let recheck = state.recheck.clone();
        phase.send_replace(format!(
            "building the ovnmeta namespaces of chassis {chassis}"
        ));
        let first_ok = state.pass(true).await;
        let wake = Arc::new(Notify::new());
        if !first_ok {
            retry_later(&wake);
        }
        let w = wake.clone();
        let follower = tokio::spawn(async move {
            let mut up = true;
            while let Some(ev) = events.recv().await {
                match ev {
                    Event::Row(change) => {
                        if change.table == "Chassis_Private" && change.old.is_none() {
                            tracing::info!(%chassis, "our Chassis_Private row was created again; checking every network");
                            recheck.store(true, std::sync::atomic::Ordering::SeqCst);
                        }
                        if change.table == "Chassis" {
                            let now = chassis_row(&sb.view(), &chassis);
                            if now != current {
                                current = now.clone();
                                tracing::info!(chassis_row = ?now.as_ref().map(Uuid::as_str), "following the ports of our Chassis row");
                                let sb = sb.clone();
                                // In its own task: the reply waits for events to be read.
                                tokio::spawn(async move {
                                    if let Err(e) = sb
                                        .set_conditions(
                                            "Port_Binding",
                                            Some(port_conditions(now.as_ref())),
                                        )
                                        .await
                                    {
                                        tracing::warn!(err = %e, "cannot change the Port_Binding conditions");
                                    }
                                });
                            }
                        }
                        // During a resync the view is rebuilt: one pass after Ready.
                        if up {
                            w.notify_one();
                        }
                    }
                    Event::Disconnected { remote, error } => {
                        if up {
                            tracing::warn!(%remote, %error, "lost the Southbound connection; nothing is torn down while reconnecting");
                        }
                        up = false;
                    }
                    Event::Ready { remote, resumed } => {
                        if !up {
                            tracing::info!(%remote, resumed, "Southbound connection back");
                        }
                        up = true;
                        w.notify_one();
                    }
                }
            }
        });
        let w = wake.clone();
        let reconciler = tokio::spawn(async move {
            loop {
                w.notified().await;
                if !state.pass(false).await {
                    retry_later(&w);
                }
            }
        });
        Ok(OvnSource {
            tasks: vec![follower, reconciler],
        })
    }
}

/// Whether `ovnmeta-<id>` holds the inner veth end an OVN metadata agent (ours or Neutron's)
/// puts there. Only such namespaces are removed at start: one without it was made by
/// something else (a test, an operator) and is left alone.
async fn built_by_an_agent(name: &str, id: &str) -> bool {
    let Ok(ns) = ns_netns::Netns::open(name) else {
        return false;
    };
    let Ok(nl) = ns_netns::Netlink::open(&ns).await else {
        return false;
    };
    let found = nl.link_exists(&veth_names(id).1).await.unwrap_or(false);
    if !found {
        tracing::info!(netns = %name, "left alone: no metadata veth in it (not built by an OVN metadata agent)");
    }
    found
}

fn retry_later(wake: &Arc<Notify>) {
    let w = wake.clone();
    tokio::spawn(async move {
        tokio::time::sleep(RETRY).await;
        w.notify_one();
    });
}

#[cfg(test)]
#[path = "ovn_source_tests.rs"]
mod tests;
