//! Against the real neutron-metadata-agent 29.0.0 (from $NS_NEUTRON_VENV) with its RPC port
//! lookup faked by neutron_agent.py (ns-testkit) and ns-testkit's echoing Nova on loopback:
//! the proxy's requests reach Nova as sent, and `--agent-keepalive auto` behaves like `off`.

mod common;

use std::path::{Path, PathBuf};

use common::{Client, Model, TempDir};
use ns_testkit::neutron::venv_python;
use ns_testkit::nova::{Nova, Seen};
use ns_testkit::ChildGuard;

crate::in_both_models!(real_neutron_agent_answers_through_the_proxy_and_auto_is_off,);

/// Nova's shared secret (the stand-in refuses a request whose signature does not match it).
const SECRET: &str = "s3cret";

/// What Neutron's port lookup answers (ns-testkit's neutron_agent.py reads it): router r-neutron-1
/// has network net-1; on net-1 the address 127.0.0.1 belongs to instance inst-1 of project
/// proj-1. Anything else: no port (Neutron's 404).
const INVENTORY: &str = r#"{"ports": [
  {"id": "rp-1", "device_id": "r-neutron-1", "device_owner": "network:router_interface",
   "network_id": "net-1", "fixed_ips": [{"ip_address": "10.0.0.1"}]},
  {"id": "vp-1", "device_id": "inst-1", "device_owner": "compute:nova", "project_id": "proj-1",
   "network_id": "net-1", "fixed_ips": [{"ip_address": "127.0.0.1"}]}
]}"#;

struct NeutronAgent {
    _agent: ChildGuard,
    _nova: Nova,
    socket: PathBuf,
    _dir: TempDir,
}

/// Start a script with the venv's python; wait for its "READY" line (the handshake).
fn start_script(py: &Path, script: &Path, args: &[&str]) -> ChildGuard {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    common::start_venv_script(py, script, &args, &[]).child
}

fn start_agent(py: &Path) -> NeutronAgent {
    let dir = TempDir::new("neutron");
    let socket = dir.join("metadata_proxy");
    let inventory = dir.join("inventory.json");
    std::fs::write(&inventory, INVENTORY).expect("write inventory");
    let nova = Nova::echo(SECRET);
    let port = nova.port().to_string();
    let sock = socket.display().to_string();
    let inv = inventory.display().to_string();
    let agent = start_script(
        py,
        &ns_testkit::neutron::agent_script(),
        &[&sock, &inv, &port, SECRET],
    );
    NeutronAgent {
        _agent: agent,
        _nova: nova,
        socket,
        _dir: dir,
    }
}

async fn real_neutron_agent_answers_through_the_proxy_and_auto_is_off(model: Model) {
    let Some(py) = venv_python("real_neutron_agent_answers_through_the_proxy_and_auto_is_off")
    else {
        return;
    };
    let agent = start_agent(&py);
    let p = model.start(
        &agent.socket,
        "127.0.0.1:0",
        &["--router-id", "r-neutron-1"],
    );
    let mut c = Client::tcp(p.addr).await;
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
        // A 200 at all means Nova found the signature right.
        assert_eq!(r.status, 200, "{r:?}");
        let nova = Seen::from_echo(&r.body);
        assert_eq!(
            nova.path,
            format!("/latest/meta-data/instance-id?n={i}"),
            "{nova:?}"
        );
        assert_eq!(nova.header("x-instance-id"), Some("inst-1"), "{nova:?}");
        assert_eq!(nova.header("x-tenant-id"), Some("proj-1"), "{nova:?}");
        assert_eq!(
            nova.header("x-forwarded-for"),
            Some("127.0.0.1"),
            "{nova:?}"
        );
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
    let nova = Seen::from_echo(&r.body);
    assert_eq!(nova.method, "POST");
    assert_eq!(nova.body, payload.as_bytes());

    // Nova's empty 404: the agent writes a head with no terminating empty line, then closes.
    c.send(b"GET /empty/404 HTTP/1.1\r\n\r\n").await;
    let r = c.read(false).await.expect("404 relayed");
    assert_eq!(r.status, 404);
    // Without a Content-Type Neutron's agent raises and closes the socket: 502.
    c.send(b"GET /untyped/404 HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.read(false).await.expect("502").status, 502);
    c.send(b"GET /latest HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.read(false).await.expect("still alive").status, 200);

    // The agent's own error (bare \n line ends): instance not found on this network.
    let other = model.start(
        &agent.socket,
        "127.0.0.1:0",
        &["--network-id", "net-unknown"],
    );
    let r = common::request(other.addr, b"GET /latest HTTP/1.1\r\n\r\n")
        .await
        .expect("answer");
    assert_eq!(r.status, 404);
    assert!(
        r.text()
            .contains("Instance was not found on network net-unknown"),
        "{r:?}"
    );

    // Forcing reuse on is harmless too: Neutron closes after each reply, the pool sees it.
    let on = model.start(
        &agent.socket,
        "127.0.0.1:0",
        &["--router-id", "r-neutron-1", "--agent-keepalive", "on"],
    );
    let mut c = Client::tcp(on.addr).await;
    for _ in 0..3 {
        c.send(b"GET /latest HTTP/1.1\r\n\r\n").await;
        assert_eq!(c.read(false).await.expect("on").status, 200);
    }
}
