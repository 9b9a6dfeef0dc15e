//! The `ns-metadata-agent` binary: option errors (one line, exit 2), unknown-key warnings,
//! SIGHUP reload, SIGTERM shutdown (exit 0, socket removed).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ns_testkit::{spin_until, wait_until_async, ChildGuard, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_ns-metadata-agent");

/// vm1's metadata index (keep-alive), as a proxy relays it.
const VM1_INDEX: &str = "GET /latest/meta-data/ HTTP/1.1\r\nX-Forwarded-For: 10.250.41.2\r\n\
                         X-Neutron-Network-ID: n1\r\n\r\n";

#[test]
fn bad_option_is_one_line_naming_file_line_and_key() {
    let dir = TempDir::new("bin-bad");
    let ini = dir.join("metadata_agent.ini");
    std::fs::write(
        &ini,
        "[DEFAULT]\nnova_metadata_host = 127.0.0.1\n# port below\nnova_metadata_port = 99999\n",
    )
    .expect("write ini");
    let out = Command::new(BIN)
        .arg("--config-file")
        .arg(&ini)
        .output()
        .expect("run agent");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}:4: [DEFAULT] nova_metadata_port: 99999 is out of range",
            ini.display()
        )),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["--cache-ttl", "soon"])
        .output()
        .expect("run agent");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--cache-ttl: invalid number of seconds \"soon\""));

    // A missing inventory is not a configuration syntax error but still stops the agent.
    let out = Command::new(BIN)
        .arg("--metadata-proxy-socket")
        .arg(dir.join("s.sock"))
        .arg("--inventory-file")
        .arg(dir.join("absent.json"))
        .output()
        .expect("run agent");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("absent.json: cannot read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = TempDir::new("bin-run");
    let inv = dir.join("inventory.json");
    write_atomic(&inv, INVENTORY);
    let sock = dir.join("run/agent.sock");
    let ini = dir.join("agent.ini");
    std::fs::write(
        &ini,
        format!(
            "[DEFAULT]\nmetadata_proxy_socket = {}\ninventory_file = {}\ninventory_poll_interval = 0\nmetadata_workers = 0\nmetadata_proxy_socket_mode = all\nsome_typo = 1\n[cache]\nenabled = true\n",
            sock.display(),
            inv.display()
        ),
    )
    .expect("write ini");
    let mut child = ChildGuard(
        Command::new(BIN)
            .arg("--config-file")
            .arg(&ini)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent"),
    );
    assert!(listening(&sock).await, "socket listening");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock)
        .expect("stat socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666, "metadata_proxy_socket_mode = all");

    let hostname = get(
        "/latest/meta-data/hostname",
        "10.250.41.2",
        "X-Neutron-Network-ID",
        "n1",
    );
    assert_eq!(ask(&sock, &hostname).await.text(), "vm1.novalocal");

    // Polling is off: only SIGHUP reloads.
    write_atomic(
        &inv,
        &INVENTORY.replace("\"hostname\": \"vm1\"", "\"hostname\": \"renamed\""),
    );
    child.signal("HUP");
    let mut seen = String::new();
    for _ in 0..500 {
        seen = ask(&sock, &hostname).await.text();
        if seen == "renamed.novalocal" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen, "renamed.novalocal");

    child.signal("TERM");
    let status = tokio::task::spawn_blocking(move || {
        let s = child.0.wait().expect("wait");
        let mut err = String::new();
        if let Some(mut e) = child.0.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (s, err)
    })
    .await
    .expect("join");
    assert_eq!(status.0.code(), Some(0), "{}", status.1);
    assert!(!sock.exists(), "socket removed on exit");
    assert!(
        status.1.contains("some_typo: unknown option"),
        "{}",
        status.1
    );
    assert!(
        !status.1.contains("enabled"),
        "other sections are not ours to judge: {}",
        status.1
    );
}

/// Issue "the operator's view": `metrics_bind` serves the agent's metrics over TCP, in valid
/// exposition text, counting what was answered (built-in answers, 404 for an unknown client,
/// 400 for a malformed request) and the resolver's cache; anything but GET /metrics is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_bind_counts_what_was_answered() {
    let dir = TempDir::new("bin-metrics");
    let (_child, sock, port) = agent_with_metrics(&dir).await;
    let hostname = get(
        "/latest/meta-data/hostname",
        "10.250.41.2",
        "X-Neutron-Network-ID",
        "n1",
    );
    assert_eq!(ask(&sock, &hostname).await.text(), "vm1.novalocal");
    assert_eq!(ask(&sock, &hostname).await.text(), "vm1.novalocal");
    let unknown = get(
        "/latest/meta-data/",
        "10.250.41.99",
        "X-Neutron-Network-ID",
        "n1",
    );
    assert!(ask(&sock, &unknown).await.text().contains("not found"));
    let no_id = "GET / HTTP/1.1\r\nX-Forwarded-For: 10.250.41.2\r\nConnection: close\r\n\r\n";
    ask(&sock, no_id).await;
    let scrape = |line: &'static str| {
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            write!(c, "{line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
            let mut out = String::new();
            c.read_to_string(&mut out).expect("read");
            out
        })
    };
    let m = scrape("GET /metrics").await.expect("join");
    let (head, body) = m.split_once("\r\n\r\n").expect("http answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    ns_contract::metrics::check_exposition(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    for line in [
        "ns_metadata_agent_requests_total{answer=\"builtin\",code=\"2xx\"} 2",
        "ns_metadata_agent_requests_total{answer=\"not_found\",code=\"4xx\"} 1",
        "ns_metadata_agent_requests_total{answer=\"rejected\",code=\"4xx\"} 1",
        "ns_metadata_agent_lookups_total{cache=\"hit\"} 1",
        "ns_metadata_agent_lookups_total{cache=\"miss\"} 2",
    ] {
        assert!(body.lines().any(|l| l == line), "{line}\n{body}");
    }
    assert!(
        body.contains("ns_metadata_build_info{binary=\"ns-metadata-agent\""),
        "{body}"
    );
    let other = scrape("GET /latest/meta-data/").await.expect("join");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

/// `metrics_bind` is TCP on loopback: any local user can connect. Clients that ask and never
/// read take at most `MAX_SCRAPE_CONNECTIONS` of the agent's connections; one more is closed
/// unanswered, the agent socket answers meanwhile, and once they are gone a scrape is
/// answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_bind_serves_a_bounded_number_of_connections() {
    use ns_contract::metrics::MAX_SCRAPE_CONNECTIONS;
    use ns_testkit::http::{assert_scrapes_bounded, eventually_scraped};
    let dir = TempDir::new("bin-metrics-bound");
    let (_child, sock, port) = agent_with_metrics(&dir).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let stalled = assert_scrapes_bounded(addr, MAX_SCRAPE_CONNECTIONS).await;
    // The agent socket answers meanwhile.
    assert!(ask(&sock, VM1_INDEX).await.text().contains("hostname"));
    drop(stalled);
    eventually_scraped(addr).await;
}

/// The agent on the inventory in `dir` with `extra` arguments, once its socket exists: the
/// process (killed on drop) and its socket.
async fn start_agent(dir: &TempDir, extra: &[&str]) -> (ChildGuard, std::path::PathBuf) {
    let (child, sock) = spawn_agent(dir, extra);
    assert!(wait_until_async(Duration::from_secs(10), || sock.exists()).await);
    (child, sock)
}

/// Whether the agent accepts connections on `sock` within 10 s. The path exists from `bind`;
/// connects are refused until `listen` (and its mode is set by then).
async fn listening(sock: &std::path::Path) -> bool {
    wait_until_async(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(sock).is_ok()
    })
    .await
}

/// [`start_agent`] without waiting for the socket.
fn spawn_agent(dir: &TempDir, extra: &[&str]) -> (ChildGuard, std::path::PathBuf) {
    let inv = dir.join("inventory.json");
    write_atomic(&inv, INVENTORY);
    let sock = dir.join("agent.sock");
    let child = ChildGuard(
        Command::new(BIN)
            .arg("--metadata-proxy-socket")
            .arg(&sock)
            .arg("--inventory-file")
            .arg(&inv)
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent"),
    );
    (child, sock)
}

/// [`start_agent`] with `metrics_bind` on a free loopback port: also the port.
async fn agent_with_metrics(dir: &TempDir) -> (ChildGuard, std::path::PathBuf, u16) {
    let port = ns_testkit::http::free_port();
    let (child, sock) = start_agent(dir, &["--metrics-bind", &format!("127.0.0.1:{port}")]).await;
    (child, sock, port)
}

/// Issue "the operator's view": the agent takes oslo.log's `--log-dir` and `--log-file` as
/// Neutron's launchers pass them (a relative file inside the directory), logs there, and
/// reopens the file by its path on SIGHUP (logrotate moved it away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_file_in_log_dir_and_reopened_on_sighup() {
    let dir = TempDir::new("bin-logfile");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("mkdir");
    let logs_arg = logs.to_str().expect("utf-8 temp dir");
    let (child, _sock) = start_agent(
        &dir,
        &[
            "--inventory-poll-interval",
            "0",
            "--log-dir",
            logs_arg,
            "--log-file",
            "metadata-agent.log",
        ],
    )
    .await;
    let log = logs.join("metadata-agent.log");
    assert!(
        wait_until_async(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("metadata agent listening")))
        .await
    );
    std::fs::rename(&log, logs.join("metadata-agent.log.1")).expect("rotate");
    child.signal("HUP");
    assert!(
        wait_until_async(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("SIGHUP")))
        .await,
        "a new file after SIGHUP"
    );
}

/// A SIGHUP (logrotate, a reload) the moment the socket appears, before the agent has said
/// it is listening, never kills it (SIGHUP's default action): the handler is installed
/// before the socket exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_the_moment_the_socket_appears_never_kills_the_agent() {
    for round in 0..5 {
        let dir = TempDir::new(&format!("bin-early-hup-{round}"));
        let (mut child, sock) = spawn_agent(&dir, &["--inventory-poll-interval", "0"]);
        // As soon as the socket exists: no sleep between polls.
        assert!(
            spin_until(Duration::from_secs(10), || sock.exists()),
            "no socket"
        );
        child.signal("HUP");
        // Refused forever if the SIGHUP killed the agent.
        assert!(
            listening(&sock).await,
            "the agent listens after an early SIGHUP (round {round})"
        );
        assert!(
            ask(&sock, VM1_INDEX).await.text().contains("hostname"),
            "round {round}"
        );
        assert!(child.0.try_wait().expect("wait").is_none(), "round {round}");
    }
}
