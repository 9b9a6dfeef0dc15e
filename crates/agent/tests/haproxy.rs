//! Neutron's own proxy in front of this agent: haproxy with the settings of Neutron's template
//! (neutron/common/metadata.py: http-server-close, forwardfor, del-header + set-header),
//! bound on loopback instead of inside a namespace. Shows the agent is a drop-in for
//! neutron-metadata-agent, with keep-alive on (haproxy closes after each request anyway).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ns_testkit::{require, wait_until_async, ChildGuard, TempDir};

/// The agent sees haproxy's TCP peer, 127.0.0.1, as the VM: give it a port on n1.
fn inventory() -> String {
    INVENTORY.replace(
        r#""fixed_ips": [{"subnet_id": "s1", "ip_address": "10.250.41.2"}]"#,
        r#""fixed_ips": [{"subnet_id": "s1", "ip_address": "10.250.41.2"}, {"ip_address": "127.0.0.1"}]"#,
    )
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (body.to_owned(), code.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neutron_haproxy_template_in_front_of_the_agent() {
    let have = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("curl")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !require(
        "neutron_haproxy_template_in_front_of_the_agent",
        have,
        "haproxy and curl",
    ) {
        return;
    }
    let dir = TempDir::new("haproxy");
    let agent = start(config(&dir, &inventory())).await;
    let port = ns_testkit::http::free_port();
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 1024\n    nbthread 2\n\ndefaults\n    mode http\n    option http-server-close\n    option forwardfor\n    retries 3\n    timeout http-request 30s\n    timeout connect 30s\n    timeout client 32s\n    timeout server 32s\n    timeout http-keep-alive 30s\n\nlisten listener\n    bind 127.0.0.1:{port}\n    server metadata {sock}\n    http-request del-header X-Neutron-Router-ID\n    http-request set-header X-Neutron-Network-ID n1\n",
            sock = agent.socket.display()
        ),
    )
    .expect("write haproxy config");
    let _h = ChildGuard(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy"),
    );
    let up = wait_until_async(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(up, "haproxy listening");
    let base = format!("http://127.0.0.1:{port}");
    let (md, code) = tokio::task::spawn_blocking({
        let base = base.clone();
        move || curl(&[&format!("{base}/openstack/latest/meta_data.json")])
    })
    .await
    .expect("join");
    assert_eq!(code, "200", "{md}");
    let md: serde_json::Value = serde_json::from_str(&md).expect("json");
    assert_eq!(md["uuid"], "vm-uuid-1");
    // A spoofed router header from the VM is deleted by haproxy; the network one wins.
    let (ud, code) = tokio::task::spawn_blocking({
        let base = base.clone();
        move || {
            curl(&[
                "-H",
                "X-Neutron-Router-ID: r1",
                &format!("{base}/latest/user-data"),
            ])
        }
    })
    .await
    .expect("join");
    assert_eq!(
        (code.as_str(), ud.as_str()),
        ("200", "#cloud-config\nfqdn: vm1.example\n")
    );
    let (_, code) =
        tokio::task::spawn_blocking(move || curl(&[&format!("{base}/latest/meta-data/nothing")]))
            .await
            .expect("join");
    assert_eq!(code, "404");
    agent.stop().await;
}
