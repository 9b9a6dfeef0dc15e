//! The write-ahead journal of the API records against the real daemon binary: a change
//! answered 200 survives a kill -9 of the spawner right after the answer, well inside the
//! snapshot's save delay (`persist::SAVE_DELAY`). No namespace is made (the routers wait
//! for theirs, no proxy starts), so this needs no root where `/run/netns` exists.

mod common;
mod root_common;

use std::path::Path;
use std::time::Duration;

use http::{Method, StatusCode};
use ns_metadata_spawner::client::call;
use ns_testkit::netns::unique_prefix;
use ns_testkit::proc::kill9;
use ns_testkit::TempDir;
use root_common::start_daemon;

const T: Duration = Duration::from_secs(15);

async fn send(sock: &Path, m: Method, path: &str) -> (StatusCode, String) {
    let body = (m == Method::PUT).then(|| b"{}".to_vec());
    let (st, b) = call(sock, m, path, body).await.expect("call");
    (st, String::from_utf8_lossy(&b).into_owned())
}

/// PUT five routers and DELETE one through the control API, kill -9 the daemon at once
/// after the last 200, start it again: every acknowledged change is there (the records
/// come from the journal, not the snapshot the killed daemon never wrote), and the
/// replayed records are saved as `records.json`.
#[tokio::test(flavor = "current_thread")]
async fn acknowledged_changes_survive_a_kill_dash_nine_inside_the_save_delay() {
    let dir = TempDir::new("journal-kill").reaping();
    let proxy = common::fake_proxy(dir.path());
    let ini = dir.path().join("spawner.ini");
    std::fs::write(
        &ini,
        format!(
            "[DEFAULT]\nmetadata_proxy_socket = {}\n[spawner]\nstate_dir = {}\nproxy_binary = {}\n",
            dir.path().join("agent.sock").display(),
            dir.path().display(),
            proxy.display()
        ),
    )
    .expect("ini");
    let sock = dir.path().join("control.sock");
    let p = unique_prefix();
    let ids: Vec<String> = (0..5).map(|i| format!("{p}j{i}")).collect();

    let daemon = start_daemon(dir.path(), &ini, &[]);
    for id in &ids {
        let (st, body) = send(&sock, Method::PUT, &format!("/v1/routers/{id}")).await;
        assert_eq!(st, StatusCode::OK, "{body}");
    }
    let (st, body) = send(&sock, Method::DELETE, &format!("/v1/routers/{}", ids[1])).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    kill9(daemon.pid());
    drop(daemon);

    let _daemon = start_daemon(dir.path(), &ini, &[]);
    let (st, body) = send(&sock, Method::GET, "/v1/routers").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let routers: Vec<serde_json::Value> = serde_json::from_str(&body).expect("json");
    let mut got: Vec<&str> = routers.iter().filter_map(|r| r["id"].as_str()).collect();
    got.sort_unstable();
    let want: Vec<&str> = [0, 2, 3, 4].iter().map(|&i| ids[i].as_str()).collect();
    assert_eq!(
        got, want,
        "every acknowledged change, in order (log in daemon.log)"
    );
    // Replayed, then saved as the snapshot; the journal starts afresh.
    let saved = std::fs::read_to_string(dir.path().join("records.json")).expect("records.json");
    assert!(want.iter().all(|id| saved.contains(id)), "{saved}");
    assert!(!saved.contains(&ids[1]), "{saved}");
    let journal = std::fs::read(dir.path().join("records.journal")).expect("journal");
    assert!(journal.is_empty(), "cleared after the replay");

    // A later change goes through the journal into the next snapshot, which rotates the
    // journal and removes the rotated lines once written.
    let extra = format!("{p}j9");
    let (st, body) = send(&sock, Method::PUT, &format!("/v1/routers/{extra}")).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let state = dir.path();
    ns_testkit::eventually("the snapshot holds it, the journal rotated", T, || {
        let saved = std::fs::read_to_string(state.join("records.json")).ok()?;
        let journal = std::fs::read(state.join("records.journal")).ok()?;
        (saved.contains(&extra)
            && journal.is_empty()
            && !state.join("records.journal.old").exists())
        .then_some(())
    });
}
