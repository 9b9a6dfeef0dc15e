//! Against real standalone ovsdb-servers (OVN Southbound and Open_vSwitch schemas) started by
//! each test in its own temp dir: what a user of the client sees.
mod common;

use common::*;
use ns_ovsdb::{named_uuid, Condition, Datum, Error, Event, Monitor, Mutation, Mutator, Op};
use ns_testkit::TempDir;
use serde_json::json;

/// Also names a table and a column this schema lacks (a newer schema's, say): left out with
/// a warning, as ovsdb-idl does, not an error.
fn chassis_monitor(conditions: Option<Vec<Condition>>) -> Monitor {
    Monitor::new("OVN_Southbound")
        .table(
            "Chassis",
            ["name", "hostname", "external_ids", "no_such_column"],
            conditions,
        )
        .table("Chassis_Private", ["name", "chassis", "external_ids"], None)
        .table("No_Such_Table", [], None)
}

fn row_event<'a>(table: &'a str, name: &'a str) -> impl FnMut(&Event) -> bool + 'a {
    move |e| match e {
        Event::Row(c) => {
            c.table == table
                && c.new
                    .as_ref()
                    .or(c.old.as_ref())
                    .and_then(|r| r.str("name"))
                    == Some(name)
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sb_initial_view_then_insert_modify_delete() {
    let Some((_dir, srv)) = sb_server("sb_initial_view_then_insert_modify_delete", "ovsdb-sb")
    else {
        return;
    };
    srv.sbctl(&["chassis-add", "a", "geneve", "127.0.0.1"]);

    let (c, mut ev) = client(&srv.unix(), chassis_monitor(None), |_| {});
    next_event(
        &mut ev,
        "row a in the initial view",
        row_event("Chassis", "a"),
    )
    .await;
    assert_eq!(ready(&mut ev).await, (srv.unix(), false));
    assert_eq!(names(&c, "Chassis"), vec!["a"]);
    // Columns not monitored are not held.
    {
        let view = c.view();
        let (_, a) = view.rows("Chassis").next().expect("row a");
        assert!(a.get("encaps").is_none());
        assert!(a.get("no_such_column").is_none());
        assert!(view.table("No_Such_Table").is_none());
        assert_eq!(a.str("hostname"), Some(""));
    }

    srv.sbctl(&["chassis-add", "b", "geneve", "127.0.0.2"]);
    let Event::Row(ins) = next_event(&mut ev, "insert b", row_event("Chassis", "b")).await else {
        unreachable!()
    };
    assert!(ins.old.is_none());

    srv.sbctl(&[
        "set",
        "Chassis",
        "b",
        "hostname=hb",
        "external_ids:k=\"v {x}\"",
    ]);
    let Event::Row(m) = next_event(&mut ev, "modify b", row_event("Chassis", "b")).await else {
        unreachable!()
    };
    let new = m.new.expect("modified row");
    assert_eq!(new.str("hostname"), Some("hb"));
    assert_eq!(new.map_str("external_ids", "k"), Some("v {x}"));
    assert_eq!(
        m.old
            .and_then(|o| o.str("hostname").map(str::to_owned))
            .as_deref(),
        Some("")
    );

    srv.sbctl(&["chassis-del", "a"]);
    let Event::Row(d) = next_event(&mut ev, "delete a", row_event("Chassis", "a")).await else {
        unreachable!()
    };
    assert!(d.new.is_none());
    assert_eq!(names(&c, "Chassis"), vec!["b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_monitor_holds_only_matching_rows_and_follows_cond_change() {
    let Some((_dir, srv)) = sb_server(
        "conditional_monitor_holds_only_matching_rows_and_follows_cond_change",
        "ovsdb-cond",
    ) else {
        return;
    };
    for (n, ip) in [("a", "127.0.0.1"), ("b", "127.0.0.2"), ("c", "127.0.0.3")] {
        srv.sbctl(&["chassis-add", n, "geneve", ip]);
    }
    // The conditions are OR-ed.
    let cond = vec![Condition::eq("name", "a"), Condition::eq("name", "c")];
    let (c, mut ev) = client(&srv.unix(), chassis_monitor(Some(cond)), |_| {});
    ready(&mut ev).await;
    assert_eq!(names(&c, "Chassis"), vec!["a", "c"]);

    c.set_conditions("Chassis", Some(vec![Condition::eq("name", "b")]))
        .await
        .expect("monitor_cond_change");
    until(&c, "only b after the condition change", |c| {
        names(c, "Chassis") == ["b"]
    })
    .await;
    srv.sbctl(&["chassis-add", "d", "geneve", "127.0.0.4"]);
    srv.sbctl(&["set", "Chassis", "b", "hostname=hb"]);
    next_event(&mut ev, "b modified", row_event("Chassis", "b")).await;
    assert_eq!(names(&c, "Chassis"), vec!["b"], "d does not match");

    c.set_conditions("Chassis", None).await.expect("all rows");
    until(&c, "every chassis", |c| {
        names(c, "Chassis") == ["a", "b", "c", "d"]
    })
    .await;
    assert!(matches!(
        c.set_conditions("Port_Binding", None).await,
        Err(Error::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transact_insert_named_uuid_mutate_wait_and_errors() {
    let Some((_dir, srv)) = sb_server(
        "transact_insert_named_uuid_mutate_wait_and_errors",
        "ovsdb-txn",
    ) else {
        return;
    };
    let (c, mut ev) = client(&srv.unix(), chassis_monitor(None), |_| {});
    ready(&mut ev).await;

    let r = c
        .transact(&[
            Op::insert(
                "Encap",
                [
                    ("type", json!("geneve")),
                    ("ip", json!("10.0.0.1")),
                    ("chassis_name", json!("ch")),
                ],
                Some("e"),
            ),
            Op::insert(
                "Chassis",
                [("name", json!("ch")), ("encaps", named_uuid("e"))],
                Some("c"),
            ),
            Op::insert(
                "Chassis_Private",
                [("name", json!("ch")), ("chassis", named_uuid("c"))],
                None,
            ),
        ])
        .await
        .expect("insert");
    let chassis = r[1].uuid.clone().expect("chassis uuid");

    // Neutron's registration write: keys added to Chassis_Private.external_ids.
    let me = [Condition::eq("name", "ch")];
    let r = c
        .transact(&[Op::mutate(
            "Chassis_Private",
            &me,
            &[Mutation::new(
                "external_ids",
                Mutator::Insert,
                Datum::str_map([
                    ("neutron:ovn-metadata-id", "m-1"),
                    ("neutron:ovn-bridge", "br-int"),
                ]),
            )],
        )])
        .await
        .expect("mutate");
    assert_eq!(r[0].count, Some(1));
    assert_eq!(
        srv.sbctl(&[
            "get",
            "Chassis_Private",
            "ch",
            "external_ids:neutron\\:ovn-bridge"
        ]),
        "br-int"
    );
    until(&c, "the mutation in the replica", |c| {
        c.view().rows("Chassis_Private").any(|(_, r)| {
            r.map_str("external_ids", "neutron:ovn-metadata-id") == Some("m-1")
                && r.uuid("chassis") == Some(&chassis)
        })
    })
    .await;

    // Update a key's value: delete the key, insert the new pair, in one transaction.
    c.transact(&[Op::mutate(
        "Chassis_Private",
        &me,
        &Mutation::set_keys("external_ids", &[("neutron:ovn-bridge", "br-ex")]),
    )])
    .await
    .expect("replace a key");
    assert_eq!(
        srv.sbctl(&[
            "get",
            "Chassis_Private",
            "ch",
            "external_ids:neutron\\:ovn-bridge"
        ]),
        "br-ex"
    );

    // wait: satisfied, then not (timeout 0 fails the transaction at once).
    let names_are = |name: &str| {
        let rows = vec![json!({ "name": name })];
        Op::wait("Chassis_Private", &me, &["name"], rows, true, Some(0))
    };
    c.transact(&[names_are("ch")])
        .await
        .expect("wait satisfied");
    let e = c
        .transact(&[
            Op::update("Chassis_Private", &me, [("nb_cfg", json!(5))]),
            names_are("other"),
        ])
        .await
        .expect_err("wait not satisfied");
    assert!(matches!(e, Error::Transaction { index: 1, .. }), "{e}");
    assert_eq!(
        srv.sbctl(&["get", "Chassis_Private", "ch", "nb_cfg"]),
        "0",
        "rolled back"
    );

    // A commit-time failure (unique index) names the failing result.
    let e = c
        .transact(&[Op::insert("Chassis_Private", [("name", json!("ch"))], None)])
        .await
        .expect_err("duplicate name");
    assert!(matches!(e, Error::Transaction { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_between_two_servers_resyncs_in_full() {
    if !have_sb("failover_between_two_servers_resyncs_in_full") {
        return;
    }
    let dir = TempDir::new("ovsdb-failover");
    let (db_a, db_b) = (
        create_db(&dir, "a", SB_SCHEMA),
        create_db(&dir, "b", SB_SCHEMA),
    );
    let mut a = Server::start(&dir, "a", &db_a, None, &[]);
    let b = Server::start(&dir, "b", &db_b, None, &[]);
    a.sbctl(&["chassis-add", "on-a", "geneve", "127.0.0.1"]);
    a.sbctl(&["chassis-add", "on-both", "geneve", "127.0.0.2"]);
    b.sbctl(&["chassis-add", "on-both", "geneve", "127.0.0.2"]);
    b.sbctl(&["chassis-add", "on-b", "geneve", "127.0.0.3"]);

    let (c, mut ev) = client(
        &format!("{},{}", a.unix(), b.unix()),
        chassis_monitor(None),
        |_| {},
    );
    assert_eq!(ready(&mut ev).await.0, a.unix(), "the first remote first");
    assert_eq!(names(&c, "Chassis"), vec!["on-a", "on-both"]);

    a.kill();
    match next_event(&mut ev, "Disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await
    {
        Event::Disconnected { remote, .. } => assert_eq!(remote, a.unix()),
        _ => unreachable!(),
    }
    // The last view was kept while reconnecting: a's rows leave only with the resync, as
    // differences, just before Ready.
    let mut seen = Vec::new();
    let ready_b = next_event(&mut ev, "Ready on b", |e| {
        if let Event::Row(ch) = e {
            seen.push((ch.old.is_some(), ch.new.is_some()));
        }
        matches!(e, Event::Ready { .. })
    })
    .await;
    assert_eq!(
        ready_b,
        Event::Ready {
            remote: b.unix(),
            resumed: false
        }
    );
    assert_eq!(names(&c, "Chassis"), vec!["on-b", "on-both"]);
    // The resync came as differences: on-a deleted, on-b inserted, on-both (another row, with
    // another uuid, on b) deleted and inserted; Chassis_Private unchanged (empty on both).
    assert_eq!(
        seen.iter().filter(|(o, n)| *o && !*n).count(),
        2,
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|(o, n)| !*o && *n).count(),
        2,
        "{seen:?}"
    );
    assert_eq!(c.status().connected, Some(b.unix()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_a_standalone_server_resyncs_changes_made_while_down() {
    let Some((dir, mut srv)) = sb_server(
        "restart_of_a_standalone_server_resyncs_changes_made_while_down",
        "ovsdb-restart",
    ) else {
        return;
    };
    srv.sbctl(&["chassis-add", "old", "geneve", "127.0.0.1"]);
    let (c, mut ev) = client(&srv.unix(), chassis_monitor(None), |_| {});
    ready(&mut ev).await;

    srv.kill();
    next_event(&mut ev, "Disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    assert!(matches!(
        c.transact(&[Op::comment("x")]).await,
        Err(Error::NotConnected)
    ));
    // Change the database file while no server runs.
    let txn = json!(["OVN_Southbound",
        {"op": "update", "table": "Chassis", "where": [["name", "==", "old"]], "row": {"hostname": "offline"}},
        {"op": "insert", "table": "Chassis_Private", "row": {"name": "new"}}]);
    ovs_run(
        dir.path(),
        OVSDB_TOOL,
        &[
            "transact",
            &dir.join("sb.db").display().to_string(),
            &txn.to_string(),
        ],
    );
    srv.restart();

    assert_eq!(
        ready(&mut ev).await,
        (srv.unix(), false),
        "standalone: no resume, full resync"
    );
    let view = c.view();
    assert_eq!(
        view.rows("Chassis")
            .next()
            .and_then(|(_, r)| r.str("hostname").map(str::to_owned))
            .as_deref(),
        Some("offline")
    );
    assert_eq!(
        view.rows("Chassis_Private")
            .filter_map(|(_, r)| r.str("name"))
            .collect::<Vec<_>>(),
        vec!["new"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_vswitch_db_written_by_ovs_vsctl() {
    const T: &str = "open_vswitch_db_written_by_ovs_vsctl";
    if !have(T, &[OVSDB_SERVER, OVSDB_TOOL, OVS_VSCTL], &[VS_SCHEMA]) {
        return;
    }
    let dir = TempDir::new("ovsdb-vs");
    let db = create_db(&dir, "conf", VS_SCHEMA);
    let srv = Server::start(&dir, "conf", &db, None, &[]);
    let vsctl = |args: &[&str]| {
        let db = srv.db_arg();
        let mut all = vec![db.as_str(), "--no-wait", "--timeout=20"];
        all.extend_from_slice(args);
        ovs_run(dir.path(), OVS_VSCTL, &all)
    };
    vsctl(&["init"]);
    vsctl(&[
        "set",
        "Open_vSwitch",
        ".",
        "external_ids:system-id=chassis-1",
        "external_ids:ovn-bridge=br-int",
    ]);
    let m = Monitor::new("Open_vSwitch")
        .table("Open_vSwitch", ["external_ids"], None)
        .table("Interface", ["name", "external_ids"], None);
    let (c, mut ev) = client(&srv.unix(), m, |_| {});
    ready(&mut ev).await;
    {
        let view = c.view();
        let (_, ovs) = view
            .rows("Open_vSwitch")
            .next()
            .expect("the Open_vSwitch row");
        assert_eq!(ovs.map_str("external_ids", "system-id"), Some("chassis-1"));
        assert_eq!(ovs.map_str("external_ids", "ovn-bridge"), Some("br-int"));
    }
    vsctl(&["add-br", "br-int"]);
    vsctl(&[
        "add-port",
        "br-int",
        "tap1",
        "--",
        "set",
        "Interface",
        "tap1",
        "external_ids:iface-id=lp-1",
    ]);
    until(&c, "tap1 with its iface-id", |c| {
        c.view().rows("Interface").any(|(_, r)| {
            r.str("name") == Some("tap1") && r.map_str("external_ids", "iface-id") == Some("lp-1")
        })
    })
    .await;
}
