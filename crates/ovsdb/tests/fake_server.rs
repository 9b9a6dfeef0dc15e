//! A scripted server on a Unix socket in the test's temp dir (no external program): what the
//! client does with the wire itself. Echo probes are answered; messages split over writes and
//! several in one write are read; anything malformed ends the connection with an error (never
//! a panic) and the client reconnects with a full resync.
mod common;

use common::*;
use ns_ovsdb::{Client, Config, Event, Monitor, Splitter, Uuid};
use ns_testkit::TempDir;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc::Receiver;

const U1: &str = "11111111-1111-1111-1111-111111111111";
const U2: &str = "22222222-2222-2222-2222-222222222222";
const TXN: &str = "aaaaaaaa-0000-0000-0000-000000000001";

struct Peer {
    s: UnixStream,
    split: Splitter,
}

impl Peer {
    async fn read(&mut self) -> Value {
        loop {
            if let Some(v) = self
                .split
                .next_message()
                .expect("the client sends valid JSON")
            {
                return v;
            }
            let n = self.s.read_buf(self.split.buffer()).await.expect("read");
            assert!(n > 0, "client closed");
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
        self.s.flush().await.expect("flush");
    }

    async fn reply(&mut self, id: &Value, result: Value) {
        let m = json!({"id": id, "result": result, "error": null});
        self.write(m.to_string().as_bytes()).await;
    }

    /// Answer the client's handshake as a standalone server with one table; the
    /// transaction id it asked to resume from.
    async fn handshake(&mut self) -> Value {
        self.handshake_monitor().await.1
    }

    /// [`Peer::handshake`]: the monitor requests of its `monitor_cond_since`, and the
    /// transaction id it asked to resume from.
    async fn handshake_monitor(&mut self) -> (Value, Value) {
        loop {
            let req = self.read().await;
            let id = req["id"].clone();
            match req["method"].as_str() {
                Some("monitor_cond") if req["params"][0] == "_Server" => {
                    let row = json!({"name": "DB", "model": "standalone", "connected": true, "leader": true});
                    self.reply(&id, json!({"Database": {U2: {"initial": row}}}))
                        .await;
                }
                Some("get_schema") => {
                    let schema = json!({"name": "DB", "version": "1.0.0", "tables": {"T": {"columns": {
                        "name": {"type": "string"},
                        "tags": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
                    }}}});
                    self.reply(&id, schema).await;
                }
                Some("monitor_cond_since") => {
                    let initial = json!({"T": {U1: {"initial": {"name": "a"}}}});
                    self.reply(&id, json!([false, TXN, initial])).await;
                    return (req["params"][2].clone(), req["params"][3].clone());
                }
                other => panic!("unexpected request {other:?}: {req}"),
            }
        }
    }
}

async fn accept(l: &UnixListener) -> Peer {
    let (s, _) = tokio::time::timeout(WAIT, l.accept())
        .await
        .expect("the client connects")
        .expect("accept");
    Peer {
        s,
        split: Splitter::new(1 << 20),
    }
}

fn tags(c: &Client, uuid: &str) -> Option<Vec<String>> {
    let view = c.view();
    let row = view.row("T", &Uuid::parse(uuid).expect("uuid"))?;
    Some(row.strs("tags").into_iter().map(str::to_owned).collect())
}

/// A listening socket in a fresh temp dir and a client of it (table `T`, every column).
fn fake(
    tag: &str,
    tweak: impl FnOnce(&mut Config),
) -> (TempDir, UnixListener, Client, Receiver<Event>) {
    let dir = TempDir::new(tag);
    let path = dir.join("db.sock");
    let l = UnixListener::bind(&path).expect("bind");
    let remote = format!("unix:{}", path.display());
    let (c, ev) = client(&remote, Monitor::new("DB").table("T", [], None), tweak);
    (dir, l, c, ev)
}

/// A condition change the server never answered (the connection dropped: a leader failover)
/// is not lost: the reconnect monitors with it. A clause on a column the server's schema
/// lacks (an older OVN) is left out, rather than the whole change refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_condition_change_cut_off_by_a_reconnect_is_monitored_after_it() {
    use ns_ovsdb::Condition;
    let (_dir, l, c, mut ev) = fake("ovsdb-fake-cond", |_| {});
    let c = std::sync::Arc::new(c);
    let mut p = accept(&l).await;
    p.handshake().await;
    ready(&mut ev).await;
    let wanted = vec![
        Condition::eq("name", "b"),
        Condition::includes("no_such_column", "x"),
    ];
    let change = {
        let c = std::sync::Arc::clone(&c);
        tokio::spawn(async move { c.set_conditions("T", Some(wanted)).await })
    };
    let req = p.read().await;
    assert_eq!(req["method"], "monitor_cond_change", "{req}");
    assert_eq!(
        req["params"][2]["T"][0]["where"],
        json!([["name", "==", "b"]]),
        "the unknown column's clause left out"
    );
    drop(p);
    let r = tokio::time::timeout(WAIT, change)
        .await
        .expect("answered")
        .expect("task");
    assert!(r.is_ok(), "kept for the reconnect: {r:?}");
    let mut p = accept(&l).await;
    let (monitor, since) = p.handshake_monitor().await;
    assert_eq!(
        monitor["T"][0]["where"],
        json!([["name", "==", "b"]]),
        "the reconnect monitors with the new conditions: {monitor}"
    );
    assert_eq!(
        since,
        json!("00000000-0000-0000-0000-000000000000"),
        "a full resync"
    );
    ready(&mut ev).await;
}

/// A large answer that keeps coming for longer than `connect_timeout` (a full view on a slow
/// link) is waited for: only silence that long ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_answer_is_waited_for() {
    let (_dir, l, c, mut ev) = fake("ovsdb-fake-slow", |cfg| {
        cfg.connect_timeout = std::time::Duration::from_millis(300);
    });
    let mut p = accept(&l).await;
    loop {
        let req = p.read().await;
        let id = req["id"].clone();
        match req["method"].as_str() {
            Some("monitor_cond") => {
                let row =
                    json!({"name": "DB", "model": "standalone", "connected": true, "leader": true});
                p.reply(&id, json!({"Database": {U2: {"initial": row}}}))
                    .await;
            }
            Some("get_schema") => {
                let schema = json!({"name": "DB", "version": "1.0.0", "tables": {"T": {"columns": {
                    "name": {"type": "string"},
                    "tags": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
                }}}});
                p.reply(&id, schema).await;
            }
            Some("monitor_cond_since") => {
                // 1 s in ten pieces, 100 ms apart: more than three times the timeout.
                let initial = json!({"T": {U1: {"initial": {"name": "a".repeat(1000)}}}});
                let m =
                    json!({"id": id, "result": [false, TXN, initial], "error": null}).to_string();
                let step = m.len().div_ceil(10);
                for part in m.as_bytes().chunks(step) {
                    p.write(part).await;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                break;
            }
            other => panic!("unexpected request {other:?}: {req}"),
        }
    }
    ready(&mut ev).await;
    assert!(c.view().row("T", &Uuid::parse(U1).expect("uuid")).is_some());
}

/// A server that breaks every connection right after the view (an update the client cannot
/// fold): each loss right after Ready counts as a failure, so the client backs off instead
/// of resyncing in a loop (thousands of connections a second before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_right_after_ready_is_retried_with_backoff() {
    let (_dir, l, _c, _ev) = fake("ovsdb-fake-storm", |cfg| {
        cfg.backoff_min = std::time::Duration::from_millis(200);
        cfg.backoff_max = std::time::Duration::from_secs(2);
    });
    let bad = json!({"id": null, "method": "update3", "params": ["data", TXN, {"T": {U2: {"modify": {"name": "b"}}}}]});
    let mut connections = 0u32;
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while let Ok(Ok((s, _))) = tokio::time::timeout_at(until, l.accept()).await {
        connections += 1;
        let mut p = Peer {
            s,
            split: Splitter::new(1 << 20),
        };
        p.handshake().await;
        p.write(bad.to_string().as_bytes()).await;
    }
    assert!(
        (2..=20).contains(&connections),
        "{connections} connections in 3 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_echo_and_reads_split_and_joined_messages() {
    let (_dir, l, c, mut ev) = fake("ovsdb-fake-echo", |_| {});
    let mut p = accept(&l).await;
    p.handshake().await;
    ready(&mut ev).await;

    // An echo request split over three writes; its params hold braces and escapes.
    let echo = br#"{"id":"e1","method":"echo","params":["x",{"y":"}\"{\\"}]}"#;
    for part in [&echo[..7], &echo[7..33], &echo[33..]] {
        p.write(part).await;
    }
    assert_eq!(
        p.read().await,
        json!({"id": "e1", "result": ["x", {"y": "}\"{\\"}], "error": null})
    );

    // Two updates in one write: a set diff (one element, bare) and an insert.
    let two = format!(
        "{}{}",
        json!({"id": null, "method": "update3", "params": ["data", TXN, {"T": {U1: {"modify": {"tags": "t1"}}}}]}),
        json!({"id": null, "method": "update3", "params": ["data", TXN, {"T": {U2: {"insert": {"name": "b", "tags": ["set", ["t1", "t2"]]}}}}]}),
    );
    p.write(two.as_bytes()).await;
    until(&c, "both updates folded", |c| {
        tags(c, U1) == Some(vec!["t1".into()])
            && tags(c, U2) == Some(vec!["t1".into(), "t2".into()])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_drops_the_connection_and_forces_a_full_resync() {
    let (_dir, l, c, mut ev) = fake("ovsdb-fake-bad", |cfg| cfg.max_message = 4096);
    let huge = format!(
        "{{\"id\":null,\"method\":\"x\",\"params\":[\"{}\"]}}",
        "y".repeat(8192)
    );
    let update =
        |u: Value| json!({"id": null, "method": "update3", "params": ["data", TXN, u]}).to_string();
    let garbage: Vec<(String, &str)> = vec![
        (
            update(json!({"T": {U1: {"modify": {"name": 5}}}})),
            "protocol",
        ),
        (
            update(json!({"T": {U2: {"modify": {"name": "b"}}}})),
            "protocol",
        ),
        (
            update(json!({"T": {"not-a-uuid": {"insert": {}}}})),
            "protocol",
        ),
        (
            json!({"id": null, "method": "update3", "params": "x"}).to_string(),
            "protocol",
        ),
        ("{\"id\": 1,,}".to_owned(), "malformed JSON"),
        ("42".to_owned(), "protocol"),
        (huge, "longer than"),
        ("{\"id\":null,\"meth".to_owned(), "inside a message"),
    ];
    let zero = json!(Uuid::zero().as_str());
    for (i, (bad, expect)) in garbage.iter().enumerate() {
        let mut p = accept(&l).await;
        let asked = p.handshake().await;
        if i > 0 {
            // After a failed connection the client does not trust its replica's position.
            assert_eq!(asked, zero, "case {}: resync, not resume", i - 1);
        }
        ready(&mut ev).await;
        p.write(bad.as_bytes()).await;
        if expect == &"inside a message" {
            drop(p);
        }
        match next_event(&mut ev, "Disconnected", |e| {
            matches!(e, Event::Disconnected { .. })
        })
        .await
        {
            Event::Disconnected { error, .. } => {
                assert!(error.contains(expect), "case {i}: {error}")
            }
            _ => unreachable!(),
        }
    }
    // Still alive, and the last view is kept.
    assert!(c.view().row("T", &Uuid::parse(U1).expect("uuid")).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_accepts_but_never_answers_is_skipped() {
    let dir = TempDir::new("ovsdb-fake-silent");
    let (silent, good) = (dir.join("silent.sock"), dir.join("good.sock"));
    let silent_l = UnixListener::bind(&silent).expect("bind");
    let good_l = UnixListener::bind(&good).expect("bind");
    let remotes = format!("unix:{},unix:{}", silent.display(), good.display());
    let (_c, mut ev) = client(&remotes, Monitor::new("DB").table("T", [], None), |cfg| {
        cfg.connect_timeout = std::time::Duration::from_millis(500)
    });
    // Accepted, read, never answered (a stopped server looks like this).
    let _held = accept(&silent_l).await;
    let mut p = accept(&good_l).await;
    p.handshake().await;
    assert_eq!(ready(&mut ev).await.0, format!("unix:{}", good.display()));
}

/// A hostile server (seeded; `NS_FUZZ_SEED` replays): after the handshake it sends a
/// mutation of a valid message (updates of each kind, echo requests, replies, errors,
/// notices), an echo probe, and ends its side. The client answers the probe or drops the
/// connection with an error, and in both cases comes back with a full handshake: it never
/// stops, and a good update after all of them is folded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_server_messages_are_folded_or_end_the_connection() {
    let (_dir, l, c, mut ev) = fake("ovsdb-fake-fuzz", |cfg| {
        cfg.max_message = 64 * 1024;
        cfg.backoff_min = std::time::Duration::from_millis(1);
        cfg.backoff_max = std::time::Duration::from_millis(5);
    });
    let valid: Vec<String> = [
        json!({"id": null, "method": "update3", "params": ["data", TXN, {"T": {U1: {"modify": {"tags": ["set", ["a", "b"]]}}}}]}),
        json!({"id": null, "method": "update3", "params": ["data", TXN, {"T": {U2: {"insert": {"name": "b"}}}}]}),
        json!({"id": null, "method": "update3", "params": ["data", TXN, {"T": {U1: {"delete": null}}}]}),
        json!({"id": null, "method": "update2", "params": ["data", {"T": {U1: {"modify": {"name": "c"}}}}]}),
        json!({"id": "e9", "method": "echo", "params": []}),
        json!({"id": 12345, "result": {}, "error": null}),
        json!({"id": 7, "result": null, "error": {"error": "not leader"}}),
        json!({"id": null, "method": "update3", "params": ["_Server", TXN, {"Database": {U2: {"modify": {"leader": false}}}}]}),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    const DICT: &[&[u8]] = &[
        b"[\"set\",[]]",
        b"[\"map\",[[\"k\",1]]]",
        b"[\"uuid\",\"zz\"]",
        b"{\"initial\":{}}",
        b"9223372036854775808",
        b"1e400",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        b"\"\\ud800\"",
    ];
    let mut cases = Vec::new();
    ns_testkit::fuzz::run("ovsdb-server", 0x5eed_0105, 150, |rng, _| {
        let v = rng.pick(&valid).clone();
        cases.push(ns_testkit::fuzz::mutate(rng, v.as_bytes(), DICT));
    });
    for (i, bad) in cases.iter().enumerate() {
        let mut p = accept(&l).await;
        p.handshake().await;
        ready(&mut ev).await;
        // The client may close at the first bad byte: writes may fail.
        let _ = p.s.write_all(bad).await;
        let _ =
            p.s.write_all(b"{\"id\":\"probe\",\"method\":\"echo\",\"params\":[]}")
                .await;
        let _ = p.s.shutdown().await;
        // Whatever the client says until it closes: a clean read to the end, no hang.
        let closed = tokio::time::timeout(WAIT, async {
            let mut rest = Vec::new();
            p.s.read_to_end(&mut rest).await.is_ok()
        })
        .await;
        assert!(
            closed.is_ok(),
            "case {i}: the client neither closed nor answered: {}",
            String::from_utf8_lossy(bad)
        );
    }
    // Still the same client: a good update on the next connection is folded.
    let mut p = accept(&l).await;
    p.handshake().await;
    ready(&mut ev).await;
    p.write(json!({"id": null, "method": "update3", "params": ["data", TXN, {"T": {U2: {"insert": {"name": "z", "tags": "t"}}}}]}).to_string().as_bytes()).await;
    until(&c, "a good update after the hostile ones", |c| {
        tags(c, U2) == Some(vec!["t".into()])
    })
    .await;
}
