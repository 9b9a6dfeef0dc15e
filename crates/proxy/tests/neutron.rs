//! Against the real neutron-metadata-agent 29.0.0 (from $NS_NEUTRON_VENV) with its RPC port
//! lookup faked by tests/neutron_agent.py and a Nova stand-in on loopback: the proxy's
//! requests get the right answers, and `--agent-keepalive auto` behaves like `off`.

mod common;

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{Client, Proxy, TempDir};
use ns_netns::testing::ChildGuard;

const DEFAULT_VENV: &str = "/opt/ns-metadata-ci/neutron-29.0.0";

/// The venv's python, or `None` after printing SKIP (a failure when CI=true).
fn venv_python(test: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("NS_NEUTRON_VENV")
        .map_or_else(|| PathBuf::from(DEFAULT_VENV), PathBuf::from);
    let py = venv.join("bin/python");
    if py.is_file() {
        return Some(py);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: no neutron venv at {} (set NS_NEUTRON_VENV)",
            venv.display()
        );
    }
    eprintln!(
        "SKIP {test}: no neutron venv at {} (set NS_NEUTRON_VENV)",
        venv.display()
    );
    None
}

struct NeutronAgent {
    _agent: ChildGuard,
    _nova: ChildGuard,
    socket: PathBuf,
    _dir: TempDir,
}

/// Start a script with the venv's python; wait for its "READY..." line (the handshake).
fn start_script(py: &PathBuf, script: &str, args: &[&str]) -> (ChildGuard, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let mut child = Command::new(py)
        .arg(&path)
        .args(args)
        .stdout(Stdio::piped())
        // NS_TEST_DEBUG=1 shows the agent's debug log.
        .stderr(if std::env::var_os("NS_TEST_DEBUG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("start python script");
    let out = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    let mut line = String::new();
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("read READY");
    assert!(line.starts_with("READY"), "{script} said {line:?}");
    (guard, line.trim().to_owned())
}

fn start_agent(py: &PathBuf) -> NeutronAgent {
    let dir = TempDir::new("neutron");
    let socket = dir.path().join("metadata_proxy");
    let (nova, line) = start_script(py, "nova_echo.py", &["s3cret"]);
    let port = line.trim_start_matches("READY ").to_owned();
    let sock = socket.display().to_string();
    let (agent, _) = start_script(py, "neutron_agent.py", &[&sock, &port]);
    NeutronAgent {
        _agent: agent,
        _nova: nova,
        socket,
        _dir: dir,
    }
}

fn json_field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\": ");
    let rest = &body[body.find(&pat)? + pat.len()..];
    if let Some(r) = rest.strip_prefix('"') {
        return r.split('"').next();
    }
    rest.split([',', '}']).next()
}

#[tokio::test]
async fn real_neutron_agent_answers_through_the_proxy_and_auto_is_off() {
    let Some(py) = venv_python("real_neutron_agent_answers_through_the_proxy_and_auto_is_off")
    else {
        return;
    };
    let agent = start_agent(&py);
    let p = Proxy::start(
        &agent.socket,
        "127.0.0.1:0",
        &["--router-id", "r-neutron-1"],
    );
    let mut c = Client::connect(p.addr).await;
    // Keep-alive to the VM across several agent connections (one request each).
    for i in 0..3 {
        c.send(
            format!(
                "GET /latest/meta-data/instance-id?n={i} HTTP/1.1\r\nHost: 169.254.169.254\r\n\
                 X-Instance-ID: spoofed\r\nX-Neutron-Network-ID: spoofed\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let r = c
            .read(false)
            .await
            .expect("answer on the kept-alive connection");
        assert_eq!(r.status, 200, "{r:?}");
        let body = r.body_str();
        assert_eq!(
            json_field(&body, "path"),
            Some("/latest/meta-data/instance-id"),
            "{body}"
        );
        assert_eq!(
            json_field(&body, "query"),
            Some(format!("n={i}").as_str()),
            "{body}"
        );
        assert_eq!(json_field(&body, "X-Instance-ID"), Some("inst-1"), "{body}");
        assert_eq!(json_field(&body, "X-Tenant-ID"), Some("proj-1"), "{body}");
        assert_eq!(
            json_field(&body, "X-Forwarded-For"),
            Some("127.0.0.1"),
            "{body}"
        );
        assert_eq!(json_field(&body, "sig_ok"), Some("true"), "{body}");
    }
    // auto == off with Neutron's agent: it never sends the keep-alive signal, so no
    // connection was pooled.
    assert_eq!(p.shared.agent.idle(), 0);

    // A body, kept byte for byte (head + body in the agent's single recv).
    let payload = "x".repeat(3000);
    c.send(
        format!(
            "POST /openstack/latest/password HTTP/1.1\r\nContent-Length: 3000\r\n\r\n{payload}"
        )
        .as_bytes(),
    )
    .await;
    let r = c.read(false).await.expect("post answer");
    assert_eq!(r.status, 200);
    assert_eq!(json_field(&r.body_str(), "method"), Some("POST"));
    assert_eq!(json_field(&r.body_str(), "body"), Some(payload.as_str()));

    // Nova's empty 404: the agent writes a head with no terminating empty line, then closes.
    c.send(b"GET /empty404 HTTP/1.1\r\n\r\n").await;
    let r = c.read(false).await.expect("404 relayed");
    assert_eq!(r.status, 404);
    // Without a Content-Type Neutron's agent raises and closes the socket: 502.
    c.send(b"GET /crash404 HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.read(false).await.expect("502").status, 502);
    c.send(b"GET /latest HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.read(false).await.expect("still alive").status, 200);

    // The agent's own error (bare \n line ends): instance not found on this network.
    let other = Proxy::start(
        &agent.socket,
        "127.0.0.1:0",
        &["--network-id", "net-unknown"],
    );
    let r = common::request(other.addr, b"GET /latest HTTP/1.1\r\n\r\n")
        .await
        .expect("answer");
    assert_eq!(r.status, 404);
    assert!(
        r.body_str()
            .contains("Instance was not found on network net-unknown"),
        "{r:?}"
    );

    // Forcing reuse on is harmless too: Neutron closes after each reply, the pool sees it.
    let on = Proxy::start(
        &agent.socket,
        "127.0.0.1:0",
        &["--router-id", "r-neutron-1", "--agent-keepalive", "on"],
    );
    let mut c = Client::connect(on.addr).await;
    for _ in 0..3 {
        c.send(b"GET /latest HTTP/1.1\r\n\r\n").await;
        assert_eq!(c.read(false).await.expect("on").status, 200);
    }
}
