//! A three-member Raft cluster of the OVN Southbound database on loopback
//! (`ovsdb-tool create-cluster` / `join-cluster`): writes go to the leader, the client
//! follows a new leader after the old one dies, and `monitor_cond_since` resumes without a
//! full resync.
mod common;

use common::*;
use ns_ovsdb::{Client, Event, Monitor, Op};
use serde_json::json;

fn monitor() -> Monitor {
    Monitor::new("OVN_Southbound").table("Chassis_Private", ["name", "external_ids"], None)
}

/// Whether `remote` says it leads the cluster: its `_Server` `Database` row for the
/// Southbound database, read with a second client (any role, no leader check).
async fn leader(remote: &str) -> bool {
    let m = Monitor::new("_Server").table("Database", ["name", "leader"], None);
    let (c, mut ev) = client(remote, m, |cfg| cfg.leader_only = false);
    ready(&mut ev).await;
    let view = c.view();
    let found = view
        .rows("Database")
        .find(|(_, r)| r.str("name") == Some("OVN_Southbound"))
        .and_then(|(_, r)| r.bool("leader"));
    found.expect("the Southbound row of _Server")
}

fn has(c: &Client, name: &str) -> bool {
    names(c, "Chassis_Private").iter().any(|n| n == name)
}

fn insert(name: &str) -> Op {
    Op::insert("Chassis_Private", [("name", json!(name))], None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_writes_go_to_the_leader_and_follow_a_new_one() {
    if !have_sb("cluster_writes_go_to_the_leader_and_follow_a_new_one") {
        return;
    }
    let mut cl = Cluster::start("ovsdb-cluster");
    // Followers listed first: the client skips them for the leader (s1 created the cluster).
    let remotes = [1, 2, 0].map(|i| cl.members[i].tcp()).join(",");
    let (c, mut ev) = client(&remotes, monitor(), |_| {});
    let (remote, resumed) = ready(&mut ev).await;
    assert!(!resumed);
    assert!(leader(&remote).await, "{remote} is the leader");
    // s1 created the cluster and leads it unless an election happened meanwhile.
    if remote != cl.members[0].tcp() {
        assert!(!leader(&cl.members[0].tcp()).await);
    }

    c.transact(&[insert("w1")])
        .await
        .expect("write on the leader");
    until(&c, "w1 in the replica", |c| has(c, "w1")).await;
    // Both followers have joined and caught up before the leader goes.
    cl.member_has(1, "w1");
    cl.member_has(2, "w1");

    cl.members[0].kill();
    next_event(&mut ev, "Disconnected from s1", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    let (remote, resumed) = ready(&mut ev).await;
    assert!(
        remote == cl.members[1].tcp() || remote == cl.members[2].tcp(),
        "{remote}"
    );
    assert!(
        resumed,
        "monitor_cond_since resumed from the last transaction id"
    );
    assert!(has(&c, "w1"));

    // The new leader takes the client's writes, and others' writes reach the client.
    c.transact(&[insert("w2")])
        .await
        .expect("write on the new leader");
    cl.sbctl(&["create", "Chassis_Private", "name=w3"]);
    until(&c, "w2 and w3 in the replica", |c| {
        has(c, "w2") && has(c, "w3")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_member_is_dropped_by_echo_probe_and_another_resumes() {
    if !have_sb("stalled_member_is_dropped_by_echo_probe_and_another_resumes") {
        return;
    }
    let cl = Cluster::start("ovsdb-resume");
    cl.sbctl(&["create", "Chassis_Private", "name=before"]);
    cl.member_has(2, "before");
    cl.member_has(1, "before");
    // Reads from followers are fine without leader_only: s3 first, then s2.
    let remotes = format!("{},{}", cl.members[2].tcp(), cl.members[1].tcp());
    let (c, mut ev) = client(&remotes, monitor(), |cfg| {
        cfg.leader_only = false;
        cfg.probe_interval = Some(std::time::Duration::from_secs(1));
    });
    assert_eq!(ready(&mut ev).await, (cl.members[2].tcp(), false));
    cl.sbctl(&["create", "Chassis_Private", "name=live"]);
    until(&c, "live in the replica", |c| has(c, "live")).await;

    // s3 stops answering without closing the connection: only our echo probe can tell.
    cl.members[2].signal("STOP");
    cl.sbctl_via(&[0, 1], &["create", "Chassis_Private", "name=missed"]);
    cl.sbctl_via(&[0, 1], &["destroy", "Chassis_Private", "before"]);
    match next_event(&mut ev, "Disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await
    {
        Event::Disconnected { remote, error } => {
            assert_eq!(remote, cl.members[2].tcp());
            assert!(error.contains("echo"), "{error}");
        }
        _ => unreachable!(),
    }
    let mut rows = Vec::new();
    let (remote, resumed) = match next_event(&mut ev, "Ready on s2", |e| {
        if let Event::Row(ch) = e {
            rows.push(ch.clone());
        }
        matches!(e, Event::Ready { .. })
    })
    .await
    {
        Event::Ready { remote, resumed } => (remote, resumed),
        _ => unreachable!(),
    };
    assert_eq!(remote, cl.members[1].tcp());
    assert!(
        resumed,
        "resumed from the last transaction id, not resynced"
    );
    until(&c, "the missed insert and delete", |c| {
        has(c, "missed") && !has(c, "before")
    })
    .await;
    assert_eq!(names(&c, "Chassis_Private"), vec!["live", "missed"]);
    // A resume sends only what changed: "live" never came again.
    assert!(
        rows.iter()
            .all(|r| r.new.as_ref().and_then(|n| n.str("name")) != Some("live")),
        "{rows:?}"
    );
}
