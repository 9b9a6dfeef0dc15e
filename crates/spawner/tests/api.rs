//! Unprivileged tests of the control API (status codes, reasons, persistence, metrics,
//! host routes) and of the CLI client subcommands against it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use ns_metadata_spawner::client::{call, reason};
use ns_metadata_spawner::records::RecordSet;
use ns_metadata_spawner::supervisor::State;
use ns_metadata_spawner::{api, pidfile};
use ns_testkit::{eventually_async, poll_async, TempDir};

const NET: &str = r#"{"id":"n1","interface":"tap1",
  "subnets":[{"id":"s1","cidr":"10.250.9.0/24","gateway_ip":"10.250.9.1","enable_dhcp":true,"ip_version":4}],
  "ports":[{"id":"pd","device_owner":"network:dhcp","device_id":"dhcp1","fixed_ips":[{"subnet_id":"s1","ip_address":"10.250.9.2"}]}]}"#;

async fn req(s: &Server, m: Method, path: &str, body: Option<&str>) -> (StatusCode, String) {
    let (st, b) = call(&s.sock, m, path, body.map(|b| b.as_bytes().to_vec()))
        .await
        .expect("call");
    (st, String::from_utf8_lossy(&b).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_codes_reasons_and_persistence() {
    let dir = TempDir::new("api").reaping();
    let s = server(&dir);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&s.sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        api::bind(&s.sock).is_err(),
        "a second supervisor on the same socket is refused"
    );

    let (st, body) = req(
        &s,
        Method::PUT,
        "/v1/routers/r1",
        Some(r#"{"netns":"qrouter-r1","ha_state":null,"distributed":false}"#),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) = req(&s, Method::PUT, "/v1/routers/r1", Some("{nope")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(reason(body.as_bytes()).contains("bad JSON"), "{body}");
    let (st, body) = req(
        &s,
        Method::PUT,
        "/v1/routers/r1",
        Some(r#"{"ha_state":"sideways"}"#),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("ha_state") || body.contains("variant"),
        "{body}"
    );
    let (st, body) = req(&s, Method::PUT, "/v1/routers/..%2Fetc", Some("{}")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(reason(body.as_bytes()).contains("invalid id"), "{body}");
    let (st, body) = req(
        &s,
        Method::PUT,
        "/v1/networks/n1",
        Some(r#"{"subnets":[{"id":"s","cidr":"300.0.0.0/8","ip_version":4}]}"#),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(reason(body.as_bytes()).contains("invalid cidr"), "{body}");
    let (st, _) = req(&s, Method::PUT, "/v1/networks/n2", Some(NET)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "body id n1 vs path n2");
    let (st, body) = req(&s, Method::DELETE, "/v1/routers/nope", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(reason(body.as_bytes()).contains("nope"), "{body}");
    let (st, _) = req(&s, Method::DELETE, "/v1/networks/nope", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = req(&s, Method::GET, "/v2/whatever", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = req(&s, Method::POST, "/v1/proxies", None).await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);

    let (st, body) = req(&s, Method::PUT, "/v1/networks/n1", Some(NET)).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, body) = req(&s, Method::GET, "/v1/networks/n1/host-routes", None).await;
    assert_eq!(st, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v[0]["host_routes"][0]["destination"], "169.254.169.254/32");
    assert_eq!(v[0]["host_routes"][0]["nexthop"], "10.250.9.2");
    let (st, _) = req(&s, Method::GET, "/v1/networks/zz/host-routes", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // Both proxies come up; the status lists them.
    poll_async(Duration::from_secs(10), || {
        let st = s.sup.status();
        (st.len() == 2 && st.iter().all(|p| p.state == State::Running)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("not running: {:?}", s.sup.status()));
    let (st, body) = req(&s, Method::GET, "/v1/proxies", None).await;
    assert_eq!(st, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v[0]["netns"], "qdhcp-n1");
    assert_eq!(v[0]["kind"], "network");
    assert_eq!(v[1]["id"], "r1");
    assert!(v[1]["pid"].as_u64().is_some());
    let (st, body) = req(&s, Method::GET, "/metrics", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        body.contains("ns_metadata_proxies{state=\"running\"} 2"),
        "{body}"
    );
    assert!(
        body.contains("ns_metadata_proxy_up{key=\"r1\",netns=\"qrouter-r1\",id=\"r1\"} 1"),
        "{body}"
    );

    // API records are persisted for the next start (after the save delay).
    s.sup.flush_records().await.expect("saved");
    let saved = RecordSet::load(&s.sup.config().records_json()).expect("records.json");
    assert_eq!((saved.routers.len(), saved.networks.len()), (2 - 1, 1));

    let (st, _) = req(&s, Method::DELETE, "/v1/routers/r1", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = req(&s, Method::DELETE, "/v1/networks/n1", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let pid_dir = s.sup.config().pid_dir();
    eventually_async("pid files removed", Duration::from_secs(10), || {
        pidfile::list(&pid_dir).is_empty().then_some(())
    })
    .await;
    s.sup.flush_records().await.expect("saved");
    assert!(RecordSet::load(&s.sup.config().records_json())
        .expect("records.json")
        .routers
        .is_empty());
}

fn cli(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ns-metadata-spawner"))
        .arg("--state-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run cli");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_client_subcommands() {
    let dir = TempDir::new("cli").reaping();
    let s = server(&dir);
    let d = TempDir::new("cli-files");
    let state = dir.path().to_owned();
    let run = |args: Vec<String>| {
        let state = state.clone();
        let r = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&state, &refs)
        });
        async move { r.await.expect("join") }
    };
    let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let (ok, out, err) = run(v(&["router", "add", "r1", "--ha-state", "primary"])).await;
    assert!(ok, "{err}");
    assert!(out.contains("router r1 added (netns qrouter-r1)"), "{out}");
    let (ok, _, err) = run(v(&["router", "add", "../x"])).await;
    assert!(!ok && err.contains("invalid id"), "{err}");
    let (ok, _, err) = run(v(&["router", "add", "r2", "--ha-state", "weird"])).await;
    assert!(!ok && err.contains("weird"), "{err}");
    let net = d.path().join("n1.json");
    std::fs::write(&net, NET).expect("write");
    let (ok, out, err) = run(v(&["network", "put", &net.display().to_string()])).await;
    assert!(ok, "{err}");
    assert!(out.contains("network n1 stored"), "{out}");
    let bad = d.path().join("bad.json");
    std::fs::write(&bad, r#"{"subnets":[]}"#).expect("write");
    let (ok, _, err) = run(v(&["network", "put", &bad.display().to_string()])).await;
    assert!(!ok && err.contains("\"id\""), "{err}");
    let (ok, out, err) = run(v(&["host-routes", "n1"])).await;
    assert!(ok, "{err}");
    assert!(out.contains("169.254.169.254/32 via 10.250.9.2"), "{out}");

    eventually_async("running", Duration::from_secs(10), || {
        (s.sup
            .status()
            .iter()
            .filter(|p| p.state == State::Running)
            .count()
            == 2)
            .then_some(())
    })
    .await;
    let (ok, out, err) = run(v(&["status"])).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NETNS") && lines[0].contains("RESTARTS"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("qrouter-r1") && l.contains("running")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("qdhcp-n1") && l.contains("network")),
        "{out}"
    );

    // list and show
    let (ok, out, err) = run(v(&["router", "list"])).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("HA STATE"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("r1 ") && l.contains("qrouter-r1")),
        "{out}"
    );
    let (ok, out, err) = run(v(&["router", "show", "r1"])).await;
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("show json");
    assert_eq!(shown["router"]["id"], "r1", "{out}");
    assert_eq!(shown["proxy"]["state"], "running", "{out}");
    let (ok, out, err) = run(v(&["network", "list"])).await;
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("n1 ")), "{out}");
    let (ok, out, err) = run(v(&["network", "show", "n1"])).await;
    assert!(ok, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("show json");
    assert_eq!(shown["network"]["id"], "n1", "{out}");
    let (ok, _, err) = run(v(&["router", "show", "r404"])).await;
    assert!(!ok && err.contains("404"), "{err}");
    // A router whose namespace does not exist waits: `status` exits 3, still printing.
    let (ok, _, err) = run(v(&["router", "add", "r2", "--netns", "missing-r2"])).await;
    assert!(ok, "{err}");
    let dir2 = state.clone();
    let code = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_ns-metadata-spawner"))
            .arg("--state-dir")
            .arg(&dir2)
            .arg("status")
            .output()
            .expect("status")
    })
    .await
    .expect("join");
    assert_eq!(code.status.code(), Some(3), "{code:?}");
    assert!(String::from_utf8_lossy(&code.stdout).contains("missing-r2"));
    let (ok, _, _) = run(v(&["router", "remove", "r2"])).await;
    assert!(ok);

    let (ok, _, err) = run(v(&["router", "remove", "r9"])).await;
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, out, _) = run(v(&["router", "remove", "r1"])).await;
    assert!(ok && out.contains("removed"));
    let (ok, _, _) = run(v(&["network", "remove", "n1"])).await;
    assert!(ok);
    s.sup.stop_all().await;
    // No server: a clear error.
    drop(s);
    let other = TempDir::new("cli-none");
    let (ok, _, err) = tokio::task::spawn_blocking(move || cli(other.path(), &["status"]))
        .await
        .expect("join");
    assert!(!ok && err.contains("control socket"), "{err}");
}

#[test]
fn bad_config_is_one_line_naming_file_and_key() {
    let dir = TempDir::new("badcfg");
    let f = dir.path().join("s.ini");
    std::fs::write(&f, "[spawner]\nipv6 = perhaps\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_ns-metadata-spawner"))
        .arg("--config-file")
        .arg(&f)
        .arg("status")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("s.ini:2: [spawner] ipv6: invalid boolean"),
        "{err}"
    );
}

/// Control clients that stall (no head, or a body that never completes) are closed after
/// the control timeouts, and never hold up other API calls meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_control_clients_are_closed_and_do_not_block_others() {
    use std::io::{Read as _, Write as _};
    let dir = TempDir::new("api-slow").reaping();
    let s = server(&dir);
    let mut silent = std::os::unix::net::UnixStream::connect(&s.sock).expect("connect");
    let mut half = std::os::unix::net::UnixStream::connect(&s.sock).expect("connect");
    half.write_all(b"PUT /v1/networks/n1 HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"id\"")
        .expect("send partial body");
    let (st, _) = req(&s, Method::GET, "/v1/proxies", None).await;
    assert_eq!(st, StatusCode::OK, "status answers while others stall");
    let bound = api::CLIENT_TIMEOUT + Duration::from_secs(5);
    let closed = tokio::task::spawn_blocking(move || {
        let mut ends = Vec::new();
        for s in [&mut silent, &mut half] {
            s.set_read_timeout(Some(bound)).expect("timeout");
            let mut got = Vec::new();
            // Ok: closed by the server (EOF), whatever it said first; Err: still open.
            ends.push(s.read_to_end(&mut got).is_ok());
        }
        ends
    })
    .await
    .expect("join");
    assert_eq!(closed, vec![true, true], "stalled clients closed");
}

/// With the journal (as the daemon runs): a change whose line cannot be appended (here a
/// link planted in the journal's place, never followed) is in effect but answered 500
/// "not saved", naming the journal; the link's target is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_the_journal_cannot_take_is_answered_not_saved() {
    let dir = TempDir::new("api-journal").reaping();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep").expect("victim");
    std::os::unix::fs::symlink(&victim, dir.path().join("records.journal")).expect("symlink");
    let s = server(&dir);
    s.sup
        .set_journal(ns_metadata_spawner::journal::Journal::open(
            dir.path(),
            0,
            None,
        ));
    let (st, body) = req(&s, Method::PUT, "/v1/routers/r-nojournal", Some("{}")).await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let why = reason(body.as_bytes());
    assert!(
        why.contains("not saved") && why.contains("records.journal"),
        "{why}"
    );
    assert!(
        s.sup.records().api_routers.contains_key("r-nojournal"),
        "in effect"
    );
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep");
    // Its proxy tasks would outlive the test body and recreate the removed directory's
    // stats files; and a save still pending (100 ms after the last change) would write
    // records.json into a directory made again after the TempDir is gone (seen once).
    s.sup.stop_all().await;
    let _ = s.sup.flush_records().await;
}

/// Only API changes are journaled, one line each in order: an auto-enabled router, a file
/// record and a removal of an unknown id write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_api_changes_are_journaled() {
    let dir = TempDir::new("api-journal-only").reaping();
    let s = server(&dir);
    s.sup
        .set_journal(ns_metadata_spawner::journal::Journal::open(
            dir.path(),
            0,
            None,
        ));
    s.sup.set_auto_router("r-auto", true);
    s.sup.set_file_records(RecordSet {
        routers: vec![router("r-file")],
        networks: vec![],
    });
    let (st, _) = req(&s, Method::DELETE, "/v1/routers/r-unknown", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    for (m, want) in [
        (Method::PUT, StatusCode::OK),
        (Method::DELETE, StatusCode::NO_CONTENT),
    ] {
        let (st, body) = req(&s, m, "/v1/routers/r-api", Some("{}")).await;
        assert_eq!(st, want, "{body}");
    }
    let text = std::fs::read_to_string(dir.path().join("records.journal")).expect("journal");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        (lines[0]["seq"].as_u64(), lines[1]["seq"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(lines[0]["change"]["put_router"]["id"], "r-api", "{text}");
    assert_eq!(lines[1]["change"]["remove_router"], "r-api", "{text}");
    // Its proxy tasks would outlive the test body and recreate the removed directory's
    // stats files; and a save still pending (100 ms after the last change) would write
    // records.json into a directory made again after the TempDir is gone (seen once).
    s.sup.stop_all().await;
    let _ = s.sup.flush_records().await;
}

/// A change that cannot be saved to records.json (full or read-only state dir) is reported
/// loudly: saving is debounced, so the change that meets the full disk is answered first;
/// then the status names the failure and every later change gets 500 naming the file,
/// although it is in effect until the spawner restarts. A good save clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsaved_records_are_reported_as_an_error() {
    let dir = TempDir::new("api-unsaved").reaping();
    // records.json's name is taken by a non-empty directory: every save fails.
    let blocker = dir.path().join("records.json");
    std::fs::create_dir_all(blocker.join("x")).expect("mkdir");
    let s = server(&dir);
    let (st, body) = req(&s, Method::PUT, "/v1/routers/r-unsaved", Some("{}")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let e = s.sup.flush_records().await.expect_err("the save failed");
    assert!(e.contains("records.json"), "{e}");
    let (st, body) = req(&s, Method::GET, "/v1/status", None).await;
    assert_eq!(st, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let why = v["records"]["save_error"].as_str().unwrap_or_default();
    assert!(why.contains("records.json"), "{body}");
    let (st, body) = req(&s, Method::DELETE, "/v1/routers/r-unsaved", None).await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body.contains("records.json") && body.contains("not saved"),
        "{body}"
    );
    std::fs::remove_dir_all(&blocker).expect("unblock");
    // Answered with the last save's state: 500 until the retry (or this change's own save)
    // has written the records.
    let (st, _) = req(&s, Method::PUT, "/v1/routers/r-saved", Some("{}")).await;
    assert!(
        matches!(st, StatusCode::OK | StatusCode::INTERNAL_SERVER_ERROR),
        "{st}"
    );
    s.sup.flush_records().await.expect("saved now");
    let (st, _) = req(&s, Method::DELETE, "/v1/routers/r-saved", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    s.sup.stop_all().await;
}

/// A state dir that could not take `records.json` (full) has room again: the records are
/// saved by the save task's retry, without waiting for another change, and the status'
/// `save_error` clears; nothing made meanwhile is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsaved_records_are_saved_once_there_is_room_without_another_change() {
    let dir = TempDir::new("api-retry").reaping();
    let blocker = dir.path().join("records.json");
    std::fs::create_dir_all(blocker.join("x")).expect("mkdir");
    let s = server(&dir);
    for id in ["r-later1", "r-later2"] {
        let (st, body) = req(&s, Method::PUT, &format!("/v1/routers/{id}"), Some("{}")).await;
        assert!(
            matches!(st, StatusCode::OK | StatusCode::INTERNAL_SERVER_ERROR),
            "{body}"
        );
    }
    s.sup.flush_records().await.expect_err("the save failed");
    std::fs::remove_dir_all(&blocker).expect("room again");
    let path = s.sup.config().records_json();
    let saved = eventually_async(
        "records.json saved by the retry",
        Duration::from_secs(10),
        || RecordSet::load(&path).ok(),
    )
    .await;
    let mut ids: Vec<&str> = saved.routers.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["r-later1", "r-later2"], "nothing lost");
    // The retry renames the file into place, then clears the error: wait across that gap.
    poll_async(Duration::from_secs(10), || {
        s.sup.records_state().save_error.is_none().then_some(())
    })
    .await;
    let (st, body) = req(&s, Method::GET, "/v1/status", None).await;
    assert_eq!(st, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        v["records"]["save_error"].is_null(),
        "the error is cleared: {body}"
    );
    s.sup.flush_records().await.expect("settled, saved");
    s.sup.stop_all().await;
}

/// Issue "the operator's view": `metrics_bind` serves `GET /metrics` over TCP for Prometheus,
/// and nothing else (the control API stays on the root-only Unix socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_bind_serves_only_metrics_over_tcp() {
    let dir = TempDir::new("api-metrics-tcp").reaping();
    let s = server(&dir);
    let (st, _) = req(&s, Method::PUT, "/v1/routers/rm1", Some("{}")).await;
    assert_eq!(st, StatusCode::OK);
    running_pid(&s.sup, "rm1", Duration::from_secs(10)).await;
    let listener = api::bind_metrics("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(api::serve_metrics(s.sup.clone(), listener));
    let get = |line: &'static str| {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect(addr).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            write!(c, "{line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
            let mut out = String::new();
            c.read_to_string(&mut out).expect("read");
            out
        })
    };
    let m = get("GET /metrics").await.expect("join");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    assert!(m.contains("text/plain; version=0.0.4"), "{m}");
    assert!(m.contains("ns_metadata_proxies{state=\"running\"}"), "{m}");
    assert!(m.contains("key=\"rm1\""), "{m}");
    for line in [
        "GET /v1/status",
        "GET /v1/routers",
        "PUT /v1/routers/x",
        "POST /metrics",
    ] {
        let r = get(line).await.expect("join");
        assert!(r.starts_with("HTTP/1.1 404"), "{line}: {r}");
    }
    task.abort();
    s.sup.stop_all().await;
}

/// `metrics_bind` is TCP on loopback: any local user can connect. Clients that ask and never
/// read the answers take at most `MAX_SCRAPE_CONNECTIONS` connections of the spawner; one
/// more is closed without an answer (before, each got a task and a descriptor of root's
/// supervisor for as long as it liked), and once they are gone a scrape is answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_bind_serves_a_bounded_number_of_connections() {
    use ns_contract::metrics::MAX_SCRAPE_CONNECTIONS;
    use ns_testkit::http::{assert_scrapes_bounded, eventually_scraped};
    let dir = TempDir::new("api-metrics-bound").reaping();
    let s = server(&dir);
    let listener = api::bind_metrics("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let _task = AbortOnDrop(tokio::spawn(api::serve_metrics(s.sup.clone(), listener)));
    let stalled = assert_scrapes_bounded(addr, MAX_SCRAPE_CONNECTIONS).await;
    let (st, _) = req(&s, Method::GET, "/v1/proxies", None).await;
    assert_eq!(st, StatusCode::OK, "the control API answers meanwhile");
    drop(stalled);
    eventually_scraped(addr).await;
}

/// Aborts a task when dropped (also when the test fails).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Seeded mutations of raw control requests (`NS_FUZZ_SEED` replays: broken request lines
/// and framing, hostile ids and JSON bodies, NUL, huge numbers): once the client has sent
/// everything, only well-formed answers with the documented codes, then a close; the API
/// then answers a normal request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_control_requests_get_well_formed_answers() {
    let dir = TempDir::new("api-fuzz").reaping();
    let s = server(&dir);
    let sock = s.sock.clone();
    tokio::task::spawn_blocking(move || {
        let valid: [&[u8]; 4] = [
            b"GET /v1/proxies HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PUT /v1/routers/r1 HTTP/1.1\r\nHost: x\r\nContent-Length: 58\r\n\r\n{\"netns\":\"qrouter-r1\",\"ha_state\":null,\"distributed\":false}",
            b"DELETE /v1/networks/n1 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /v1/shared-servers/0/restart HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        ];
        let dict: &[&[u8]] = &[
            b"/..%2F..",
            b"qrouter-",
            b"\"subnets\":[{\"id\":\"s\",\"cidr\":\"10.0.0.0/99\"}],",
            b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
            b"Transfer-Encoding: chunked\r\n",
            b"18446744073709551616",
        ];
        ns_testkit::fuzz::run("control-api", 0x5eed_0103, 300, |rng, case| {
            let v = *rng.pick(&valid);
            let bytes = ns_testkit::fuzz::mutate(rng, v, dict);
            let (r, closed) = ns_testkit::http::Blocking::unix(&sock)
                .expect("connect")
                .send_last(&bytes, Duration::from_secs(10));
            let sent = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            assert!(closed, "case {case}: not closed: {sent:?}");
            let answers = ns_testkit::http::answers(&r)
                .unwrap_or_else(|e| panic!("case {case}: {sent:?}: {e}"));
            for a in answers {
                assert!(
                    matches!(
                        a.status,
                        200 | 204 | 400 | 404 | 405 | 408 | 409 | 413 | 414 | 431 | 500 | 501 | 505
                    ),
                    "case {case}: {sent:?} -> {}",
                    a.head
                );
            }
        });
    })
    .await
    .expect("join");
    let (st, _) = req(&s, Method::GET, "/v1/proxies", None).await;
    assert_eq!(st, StatusCode::OK, "the API still answers");
    // Its proxy tasks would outlive the test body and recreate the removed directory's
    // stats files; and a save still pending (100 ms after the last change) would write
    // records.json into a directory made again after the TempDir is gone (seen once).
    s.sup.stop_all().await;
    let _ = s.sup.flush_records().await;
}
