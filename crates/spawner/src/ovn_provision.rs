//! Building and removing an `ovnmeta-<network id>` namespace, idempotently, as Neutron's
//! `provision_datapath` and `teardown_datapath` do (neutron/agent/ovn/metadata/agent.py):
//!
//! 1. the namespace; a veth `tap<id[:10]>0` (root namespace) / `tap<id[:10]>1` (inside), the
//!    metadata port's MAC on the inner end, `neutron:mtu` on both, both up (and `lo`);
//! 2. on the inner end 169.254.169.254/32, the metadata port's CIDRs for subnets with a local
//!    VIF IPv4 address, `fe80::a9fe:a9fe/128` and the MAC's EUI-64 link-local address when IPv6
//!    ([`OvnNet::addresses`]); any other address removed, the kernel's own link-local one
//!    included when there is no IPv6, as Neutron does;
//! 3. the outer end plugged into the integration bridge by one OVSDB transaction on the local
//!    `Open_vSwitch` database: taken out of any other bridge first, a `Port` + `Interface`
//!    with `external_ids:iface-id=<metadata port logical_port>`.
//!
//! 4. on a `datapath_type=netdev` bridge, the mangle `CHECKSUM --checksum-fill` rule for TCP
//!    in the namespace (LP#1904871: userspace datapaths leave checksums to the receiver).
//!
//! Teardown: the OVS port, the veth, the namespace (the proxy was stopped before).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ns_netns::{Netlink, Netns};
use ns_ovsdb::{named_uuid, Client, Condition, Datum, Function, Mutation, Mutator, Op, Uuid};
use serde_json::Value;

use crate::ovn_decide::{veth_names, OvnNet};
use crate::{Error, Result};

/// The `Interface.external_ids` key ovn-controller binds a port by.
const IFACE_ID: &str = "iface-id";

fn netns_err(e: ns_netns::Error) -> Error {
    Error::Netns(e.to_string())
}

fn ovs_err(what: &str, e: ns_ovsdb::Error) -> Error {
    Error::Netns(format!("local OVS database: {what}: {e}"))
}

/// Open `ovnmeta-<id>`, creating it if needed.
async fn ensure_namespace(name: &str) -> Result<Netns> {
    match Netns::open(name) {
        Ok(ns) => return Ok(ns),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(netns_err(e)),
    }
    let owned = name.to_owned();
    tokio::task::spawn_blocking(move || match ns_netns::create(&owned) {
        Ok(ns) => Ok(ns),
        // Created meanwhile (by an earlier pass killed half-way): open it.
        Err(ns_netns::Error::AlreadyExists { .. }) => Netns::open(&owned),
        Err(e) => Err(e),
    })
    .await
    .map_err(|e| Error::Netns(format!("create namespace {name}: {e}")))?
    .map_err(netns_err)
}

/// Steps 1 and 2: namespace, veth, MAC, MTU, links up, addresses. Idempotent.
pub async fn provision_links(net: &OvnNet) -> Result<()> {
    let name = net.netns();
    let (outer, inner) = veth_names(&net.id);
    let ns = ensure_namespace(&name).await?;
    let root = Netlink::current().await.map_err(netns_err)?;
    let nl = Netlink::open(&ns).await.map_err(netns_err)?;
    if !nl.link_exists(&inner).await.map_err(netns_err)? {
        // A half-made pair (killed between create and move) is made again.
        root.delete_link(&outer).await.map_err(netns_err)?;
        root.create_veth(&outer, &inner).await.map_err(netns_err)?;
        root.move_link(&inner, &ns).await.map_err(netns_err)?;
    }
    let now = nl.link_mac_mtu(&inner).await.map_err(netns_err)?;
    if now.as_ref().and_then(|(m, _)| *m) != Some(net.mac) {
        nl.set_mac(&inner, net.mac).await.map_err(netns_err)?;
    }
    if let Some(mtu) = net.mtu {
        if now.map(|(_, m)| m) != Some(mtu) {
            nl.set_mtu(&inner, mtu).await.map_err(netns_err)?;
        }
        // The outer end may have been moved away (a test wires it to a VM namespace).
        if let Some((_, m)) = root.link_mac_mtu(&outer).await.map_err(netns_err)? {
            if m != mtu {
                root.set_mtu(&outer, mtu).await.map_err(netns_err)?;
            }
        }
    }
    if root.link_exists(&outer).await.map_err(netns_err)? {
        root.set_link_up(&outer).await.map_err(netns_err)?;
    }
    nl.set_link_up(&inner).await.map_err(netns_err)?;
    nl.set_link_up("lo").await.map_err(netns_err)?;
    let want = net.addresses();
    let have: BTreeSet<(IpAddr, u8)> = nl
        .addresses(&inner)
        .await
        .map_err(netns_err)?
        .into_iter()
        .collect();
    // Removals first: a CIDR whose prefix changed is replaced, not doubled.
    for (a, p) in have.difference(&want) {
        nl.remove_address(&inner, *a, *p).await.map_err(netns_err)?;
    }
    for (a, p) in want.difference(&have) {
        nl.ensure_address(&inner, *a, *p).await.map_err(netns_err)?;
    }
    Ok(())
}

/// Remove the veth and the namespace; what is already gone is fine.
pub async fn teardown_links(id: &str) -> Result<()> {
    let name = crate::ovn_decide::netns(id);
    let (outer, _) = veth_names(id);
    let root = Netlink::current().await.map_err(netns_err)?;
    root.delete_link(&outer).await.map_err(netns_err)?;
    let owned = name.clone();
    let r = tokio::task::spawn_blocking(move || ns_netns::delete(&owned))
        .await
        .map_err(|e| Error::Netns(format!("delete namespace {name}: {e}")))?;
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(netns_err(e)),
    }
}

/// The UUIDs in a wire value (`["uuid", u]` or `["set", [["uuid", u], …]]`).
fn wire_uuids(v: &Value) -> Vec<Uuid> {
    match v.as_array().map(Vec::as_slice) {
        Some([tag, u]) if tag == "uuid" => u.as_str().and_then(Uuid::parse).into_iter().collect(),
        Some([tag, items]) if tag == "set" => items
            .as_array()
            .map(|a| a.iter().flat_map(wire_uuids).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Step 3: `port` (the outer end) in `bridge`, and in no other bridge, with its Interface's
/// `external_ids:iface-id` set to `iface_id`. Returns whether the bridge is a userspace
/// (`datapath_type=netdev`) one.
pub async fn plug(ovs: &Client, bridge: &str, port: &str, iface_id: &str) -> Result<bool> {
    let found = ovs
        .transact(&[
            Op::select("Port", &[Condition::eq("name", port)], &["_uuid"]),
            Op::select(
                "Bridge",
                &[Condition::eq("name", bridge)],
                &["_uuid", "ports", "datapath_type"],
            ),
        ])
        .await
        .map_err(|e| ovs_err("look up ports", e))?;
    let existing = found
        .first()
        .and_then(|r| r.rows.first())
        .and_then(|row| row.get("_uuid"))
        .and_then(|u| wire_uuids(u).into_iter().next());
    let Some(ours) = found.get(1).and_then(|r| r.rows.first()) else {
        return Err(Error::Netns(format!(
            "local OVS database: no bridge {bridge} (Open_vSwitch external_ids:ovn-bridge)"
        )));
    };
    let in_ours = ours.get("ports").map(wire_uuids).unwrap_or_default();
    let netdev = ours.get("datapath_type").and_then(Value::as_str) == Some("netdev");
    let here = Condition::eq("name", bridge);
    let ops = match existing {
        Some(p) => {
            let mut ops = vec![Op::mutate(
                "Bridge",
                &[
                    Condition::includes("ports", p.clone()),
                    Condition::new("name", Function::Ne, bridge),
                ],
                &[Mutation::new("ports", Mutator::Delete, p.clone())],
            )];
            if !in_ours.contains(&p) {
                ops.push(Op::mutate(
                    "Bridge",
                    std::slice::from_ref(&here),
                    &[Mutation::new("ports", Mutator::Insert, p)],
                ));
            }
            ops.push(Op::mutate(
                "Interface",
                &[Condition::eq("name", port)],
                &Mutation::set_keys("external_ids", &[(IFACE_ID, iface_id)]),
            ));
            ops
        }
        None => vec![
            Op::insert(
                "Interface",
                [
                    ("name", Value::from(port)),
                    (
                        "external_ids",
                        Datum::str_map([(IFACE_ID, iface_id)]).into(),
                    ),
                ],
                Some("iface"),
            ),
            Op::insert(
                "Port",
                [
                    ("name", Value::from(port)),
                    ("interfaces", named_uuid("iface")),
                ],
                Some("port"),
            ),
            Op::mutate(
                "Bridge",
                &[here],
                &[Mutation::new("ports", Mutator::Insert, named_uuid("port"))],
            ),
        ],
    };
    ovs.transact(&ops)
        .await
        .map_err(|e| ovs_err(&format!("plug {port} into {bridge}"), e))?;
    Ok(netdev)
}

/// The rule of step 4, as `iptables` arguments after the operation.
const CHECKSUM_RULE: [&str; 9] = [
    "-t",
    "mangle",
    "POSTROUTING",
    "-p",
    "tcp",
    "-j",
    "CHECKSUM",
    "--checksum-fill",
    "-w",
];

/// `iptables -t mangle OP POSTROUTING …` inside `ovnmeta-<id>`: its exit status and stderr.
async fn iptables_in(id: &str, op: &str) -> Result<(bool, String)> {
    use ns_netns::CommandExt;
    let name = crate::ovn_decide::netns(id);
    let ns = Netns::open(&name).map_err(netns_err)?;
    let (table, rest) = CHECKSUM_RULE.split_at(2);
    let mut cmd = tokio::process::Command::new("iptables");
    cmd.args(table)
        .arg(op)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd.netns(&ns);
    let out = cmd.output().await.map_err(|e| {
        Error::Netns(format!(
            "checksum rule in {name}: run iptables (needed on netdev bridges): {e}"
        ))
    })?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    ))
}

/// Whether the checksum rule of step 4 is in `ovnmeta-<id>` (`iptables -C`).
pub async fn checksum_rule_present(id: &str) -> Result<bool> {
    Ok(iptables_in(id, "-C").await?.0)
}

/// Step 4: the checksum rule in `ovnmeta-<id>`, added unless it is there.
pub async fn ensure_checksum_rule(id: &str) -> Result<()> {
    if checksum_rule_present(id).await? {
        return Ok(());
    }
    match iptables_in(id, "-A").await? {
        (true, _) => Ok(()),
        (false, err) => Err(Error::Netns(format!(
            "checksum rule in {}: iptables -A: {err}",
            crate::ovn_decide::netns(id)
        ))),
    }
}

/// Take `port` out of every bridge (its Port and Interface rows go with it).
pub async fn unplug(ovs: &Client, port: &str) -> Result<()> {
    let found = ovs
        .transact(&[Op::select(
            "Port",
            &[Condition::eq("name", port)],
            &["_uuid"],
        )])
        .await
        .map_err(|e| ovs_err("look up ports", e))?;
    let uuids: Vec<Uuid> = found
        .iter()
        .flat_map(|r| r.rows.iter())
        .filter_map(|row| row.get("_uuid"))
        .flat_map(wire_uuids)
        .collect();
    if uuids.is_empty() {
        return Ok(());
    }
    let ops: Vec<Op> = uuids
        .into_iter()
        .map(|p| {
            Op::mutate(
                "Bridge",
                &[Condition::includes("ports", p.clone())],
                &[Mutation::new("ports", Mutator::Delete, p)],
            )
        })
        .collect();
    ovs.transact(&ops)
        .await
        .map_err(|e| ovs_err(&format!("unplug {port}"), e))?;
    Ok(())
}
