//! Root tests: the proxy binary entering a `qrouter-` namespace itself (`--netns`), binding
//! 169.254.169.254:80 and [fe80::a9fe:a9fe]:80%IFACE (waiting out DAD), dropping to
//! `nobody`, and answering curl run in a `vm` namespace across a veth.

mod common;

use std::io::Read as _;
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Behave, StandIn};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ns_netns::Netlink;
use ns_testkit::netns::{link, unique_prefix, TestNs};
use ns_testkit::{bin_path, require_root, wait_until, ChildGuard};

const ECHO: Behave = Behave::Echo {
    advertise: None,
    reuse: false,
};

async fn curl_in(ns: String, url: String) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new("ip")
            .args([
                "netns", "exec", &ns, "curl", "-sS", "-g", "-m", "5", "-D", "-", &url,
            ])
            .output()
            .expect("run curl")
    })
    .await
    .expect("join")
}

fn uid_of(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(str::to_owned)
}

#[tokio::test]
async fn proxy_in_qrouter_netns_answers_curl_from_vm_v4_and_v6() {
    if !require_root("proxy_in_qrouter_netns_answers_curl_from_vm_v4_and_v6") {
        return;
    }
    let prefix = unique_prefix();
    let qr = TestNs::new(&format!("qrouter-{prefix}")).expect("qrouter ns");
    let vm = TestNs::new(&format!("vm-{prefix}")).expect("vm ns");
    let subnet = 61;
    let (_, vm_ip) = link(&qr, &vm, subnet).await.expect("veth");
    let ifa = format!("va{subnet}");
    let nl = Netlink::open(qr.netns()).await.expect("netlink");
    let v4: IpAddr = "169.254.169.254".parse().expect("ip");
    let v6: IpAddr = "fe80::a9fe:a9fe".parse().expect("ip");
    nl.ensure_address(&ifa, v4, 32).await.expect("add v4");
    // Tentative until DAD finishes: the proxy must wait for it, not fail.
    nl.ensure_address(&ifa, v6, 128).await.expect("add v6");

    let agent = StandIn::start(ECHO);
    std::fs::set_permissions(&agent.path, std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");
    let id = format!("r-{prefix}");
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let child = Command::new(bin_path("ns-metadata-proxy"))
        .args(["--netns", qr.name(), "--router-id", &id])
        .arg("--metadata-proxy-socket")
        .arg(&agent.path)
        .args([
            "--bind",
            "169.254.169.254:80",
            "--bind",
            &format!("[fe80::a9fe:a9fe]:80%{ifa}"),
        ])
        .args(["--user", "nobody", "--ready-fd", &w.as_raw_fd().to_string()])
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn proxy");
    let mut proxy = ChildGuard(child);
    drop(w);
    let ready = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        let _ = std::fs::File::from(r).read_to_end(&mut got);
        got
    })
    .await
    .expect("join");
    assert_eq!(ready, b"READY=1\n", "proxy did not get ready");
    let pid = proxy.0.id();

    // Its listeners are in the qrouter namespace (only the bind thread entered it, so
    // /proc/PID/ns/net still names the starter's namespace); it runs as nobody, with the
    // id in its cmdline.
    let ss = Command::new("ip")
        .args(["netns", "exec", qr.name(), "ss", "-Hltnp"])
        .output()
        .expect("ss");
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(
        ss.contains("169.254.169.254:80") && ss.contains(&format!("pid={pid},")),
        "{ss}"
    );
    let host_ino = std::fs::metadata("/proc/self/ns/net").expect("ns").ino();
    assert_ne!(qr.netns().inode(), host_ino);
    let uid = uid_of(pid).expect("status");
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid}"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(String::from_utf8_lossy(&cmdline).contains(&id));

    let out = curl_in(
        vm.name().to_owned(),
        "http://169.254.169.254/latest/meta-data/?x=1".into(),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("GET /latest/meta-data/?x=1 HTTP/1.1\r\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("X-Forwarded-For: {vm_ip}\r\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("X-Neutron-Router-ID: {id}\r\n")),
        "{text}"
    );

    // IPv6 link-local with a zone; the VM's own link-local address may still be tentative.
    let url = format!("http://[fe80::a9fe:a9fe%25vb{subnet}]/v6");
    let mut text = String::new();
    for _ in 0..50 {
        let out = curl_in(vm.name().to_owned(), url.clone()).await;
        text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("X-Forwarded-For: fe80::"), "{text}");

    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::task::spawn_blocking(move || {
        let st = proxy.0.wait().expect("wait");
        drop(proxy);
        st
    })
    .await
    .expect("join");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn netns_errors_are_one_line_startup_failures() {
    if !require_root("netns_errors_are_one_line_startup_failures") {
        return;
    }
    let prefix = unique_prefix();
    let out = Command::new(bin_path("ns-metadata-proxy"))
        .args([
            "--netns",
            &format!("qrouter-{prefix}-none"),
            "--router-id",
            "r1",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("netns qrouter-"), "{err}");
    // An interface that does not exist in the namespace.
    let qr = TestNs::new(&format!("qrouter-{prefix}")).expect("ns");
    let out = Command::new(bin_path("ns-metadata-proxy"))
        .args([
            "--netns",
            qr.name(),
            "--router-id",
            "r1",
            "--bind",
            "[fe80::a9fe:a9fe]:80%nope0",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope0"));
    assert!(wait_until(Duration::from_secs(1), || true));
}

/// Start the proxy in `ns` with `extra` flags; wait for READY (true) or its exit (false).
async fn start_in(
    ns: &str,
    id: &str,
    socket: &std::path::Path,
    extra: &[&str],
) -> (ChildGuard, bool) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let child = Command::new(bin_path("ns-metadata-proxy"))
        .args(["--netns", ns, "--router-id", id])
        .arg("--metadata-proxy-socket")
        .arg(socket)
        .args(extra)
        .args(["--ready-fd", &w.as_raw_fd().to_string()])
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn proxy");
    drop(w);
    let ready = tokio::task::spawn_blocking(move || {
        let mut got = Vec::new();
        let _ = std::fs::File::from(r).read_to_end(&mut got);
        got
    })
    .await
    .expect("join");
    (ChildGuard(child), ready == b"READY=1\n")
}

async fn stop(mut proxy: ChildGuard) -> std::process::ExitStatus {
    kill(Pid::from_raw(proxy.0.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    tokio::task::spawn_blocking(move || {
        let st = proxy.0.wait().expect("wait");
        drop(proxy);
        st
    })
    .await
    .expect("join")
}

async fn has_metadata_address(nl: &Netlink) -> bool {
    let v4: IpAddr = "169.254.169.254".parse().expect("ip");
    nl.addresses("lo")
        .await
        .expect("addresses")
        .iter()
        .any(|(a, _)| *a == v4)
}

/// Run the proxy expecting a start-up failure; its stderr. Killed (and the test failed) if
/// it starts serving instead.
fn run_expecting_failure(cmd: &mut Command) -> String {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn proxy");
    let mut proxy = ChildGuard(child);
    let mut status = None;
    wait_until(Duration::from_secs(10), || {
        status = proxy.0.try_wait().expect("try_wait");
        status.is_some()
    });
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "it should have failed"
    );
    let mut err = String::new();
    let _ = proxy
        .0
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    err
}

#[tokio::test]
async fn missing_address_names_the_namespace_and_the_fix_once_and_a_prepared_one_serves() {
    if !require_root(
        "missing_address_names_the_namespace_and_the_fix_once_and_a_prepared_one_serves",
    ) {
        return;
    }
    let prefix = unique_prefix();
    let qr = TestNs::new(&format!("qrouter-{prefix}")).expect("qrouter ns");
    let nl = Netlink::open(qr.netns()).await.expect("netlink");
    let agent = StandIn::start(ECHO);
    let id = format!("r-{prefix}");

    // lo up, as in every Neutron namespace, and no address: one line naming the namespace
    // and the fix. (With lo down the kernel takes any bind and the proxy would listen on an
    // address nothing can reach.)
    nl.set_link_up("lo").await.expect("lo up");
    let err = run_expecting_failure(
        Command::new(bin_path("ns-metadata-proxy"))
            .args(["--netns", qr.name(), "--router-id", &id])
            .arg("--metadata-proxy-socket")
            .arg(&agent.path),
    );
    assert_eq!(
        err.matches("Cannot assign requested address").count(),
        1,
        "{err}"
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("ns-metadata-proxy: "))
        .expect("error line");
    assert!(
        line.contains(&format!(
            "bind 169.254.169.254:80 in namespace {}",
            qr.name()
        )),
        "{line}"
    );
    assert!(
        line.contains(&format!(
            "`ip netns exec {} ip addr add 169.254.169.254/32 dev lo`",
            qr.name()
        )),
        "{line}"
    );

    // The fix applied: it serves, and the address (not the proxy's) stays after SIGTERM.
    let v4: IpAddr = "169.254.169.254".parse().expect("ip");
    nl.ensure_address("lo", v4, 32).await.expect("add");
    let (proxy, ready) = start_in(qr.name(), &id, &agent.path, &[]).await;
    assert!(ready, "proxy did not get ready");
    let out = curl_in(qr.name().to_owned(), "http://169.254.169.254/x".into()).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(&format!("X-Neutron-Router-ID: {id}\r\n")),
        "{text}"
    );
    assert!(stop(proxy).await.success());
    assert!(has_metadata_address(&nl).await, "not the proxy's to remove");
}
