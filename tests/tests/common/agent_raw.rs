//! Hostile requests straight to the real `ns-metadata-agent`'s Unix socket (what a compromised
//! or buggy proxy could send): identity headers missing, doubled or garbage, path traversal in
//! the built-in responder, huge bodies, slow clients. Every answer is a well-formed HTTP error
//! and the agent keeps serving.
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ns_e2e::TempDir;
use ns_e2e::{bin_path, unique_prefix, wait_until, ChildGuard};
use ns_testkit::http::Blocking;

const ROUTER: &str = "0e2e0001-0000-4000-8000-000000000001";
const NET: &str = "0e2e0002-0000-4000-8000-000000000002";
const SUBNET: &str = "0e2e0003-0000-4000-8000-000000000003";
const INSTANCE: &str = "0e2e0004-0000-4000-8000-000000000004";
const PROJECT: &str = "0e2e0005-0000-4000-8000-000000000005";
const VM_IP: &str = "10.250.200.10";

fn inventory() -> serde_json::Value {
    serde_json::json!({
        "networks": [{"id": NET, "name": "net-hostile", "project_id": PROJECT,
            "subnets": [{"id": SUBNET, "cidr": "10.250.200.0/24", "gateway_ip": "10.250.200.1",
                         "enable_dhcp": true, "ip_version": 4}]}],
        "ports": [
            {"id": "0e2e0006-0000-4000-8000-000000000006", "network_id": NET, "device_id": ROUTER,
             "device_owner": "network:router_interface", "mac_address": "fa:16:3e:00:00:01",
             "project_id": PROJECT, "fixed_ips": [{"subnet_id": SUBNET, "ip_address": "10.250.200.1"}]},
            {"id": "0e2e0007-0000-4000-8000-000000000007", "network_id": NET, "device_id": INSTANCE,
             "device_owner": "compute:nova", "mac_address": "fa:16:3e:00:00:02",
             "project_id": PROJECT, "fixed_ips": [{"subnet_id": SUBNET, "ip_address": VM_IP}]}
        ],
        "instances": [{"uuid": INSTANCE, "name": "hostile-vm", "hostname": "hostile-vm",
            "project_id": PROJECT, "availability_zone": "nova", "launch_index": 0,
            "flavor": "m1.tiny", "public_keys": {}, "user_data": "#cloud-config\n",
            "meta": {}}]
    })
}

/// Send `bytes` on a fresh connection; everything the agent says until it closes (10 s).
fn exchange(sock: &Path, bytes: &[u8]) -> Vec<u8> {
    Blocking::unix(sock)
        .expect("connect to the agent socket")
        .exchange(bytes, Duration::from_secs(10))
}

/// [`exchange`] while the agent may not listen yet (then nothing), waiting 2 s at most.
fn exchange_quiet(sock: &Path, bytes: &[u8]) -> Vec<u8> {
    Blocking::unix(sock)
        .map(|mut c| c.exchange(bytes, Duration::from_secs(2)))
        .unwrap_or_default()
}

fn req(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n{headers}Connection: close\r\n\r\n")
        .into_bytes()
}

pub fn run() {
    let dir = TempDir::new(&format!("{}-hostile-agent", unique_prefix()));
    let inv = dir.path().join("inventory.json");
    std::fs::write(&inv, inventory().to_string()).expect("write inventory");
    let sock = dir.path().join("metadata_proxy");
    let log = dir.path().join("agent.log");
    let mut agent = ChildGuard(
        Command::new(bin_path("ns-metadata-agent"))
            .arg("--metadata-proxy-socket")
            .arg(&sock)
            .arg("--inventory-file")
            .arg(&inv)
            .args(["--metadata-backend", "builtin"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .spawn()
            .expect("start ns-metadata-agent"),
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let good = req(
        "/openstack/latest/meta_data.json",
        &format!("X-Forwarded-For: {VM_IP}\r\nX-Neutron-Router-ID: {ROUTER}\r\n"),
    );
    let ok = wait_until(Duration::from_secs(20), || {
        super::raw::status(&exchange_quiet(&sock, &good)) == Some(200)
    });
    assert!(ok, "agent never answered 200:\n{}", log_text());

    let mut healthy = |case: &str| {
        assert!(
            matches!(agent.0.try_wait(), Ok(None)),
            "{case}: the agent died:\n{}",
            log_text()
        );
        let r = exchange(&sock, &good);
        assert_eq!(
            super::raw::status(&r),
            Some(200),
            "{case}: a good request afterwards: {}",
            super::raw::show(&r)
        );
        assert!(String::from_utf8_lossy(&r).contains(INSTANCE));
    };

    let rid = format!("X-Neutron-Router-ID: {ROUTER}\r\n");
    let xff = format!("X-Forwarded-For: {VM_IP}\r\n");
    let md = "/openstack/latest/meta_data.json";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no X-Forwarded-For", req(md, &rid)),
        ("no resource id", req(md, &xff)),
        (
            "two different X-Forwarded-For",
            req(md, &format!("{rid}X-Forwarded-For: 10.250.200.99\r\n{xff}")),
        ),
        (
            "X-Forwarded-For list",
            req(
                md,
                &format!("{rid}X-Forwarded-For: 10.250.200.99, {VM_IP}\r\n"),
            ),
        ),
        (
            "garbage X-Forwarded-For",
            req(md, &format!("{rid}X-Forwarded-For: ../../\x01zz\r\n")),
        ),
        (
            "overlong X-Forwarded-For",
            req(
                md,
                &format!("{rid}X-Forwarded-For: {}\r\n", "9".repeat(10_000)),
            ),
        ),
        (
            "both router and network ids",
            req(md, &format!("{rid}{xff}X-Neutron-Network-ID: {NET}\r\n")),
        ),
        (
            "two router ids",
            req(
                md,
                &format!("{rid}{xff}X-Neutron-Router-ID: 0e2e0009-0000-4000-8000-000000000009\r\n"),
            ),
        ),
        (
            "garbage router id",
            req(md, &format!("{xff}X-Neutron-Router-ID: ../\u{7f}x\r\n")),
        ),
    ];
    for (case, bytes) in &cases {
        let r = exchange(&sock, bytes);
        let s = super::raw::status(&r);
        assert!(
            s.is_some_and(|s| (400..500).contains(&s)),
            "{case}: expected a well-formed 4xx, got {}",
            super::raw::show(&r)
        );
        assert!(
            !String::from_utf8_lossy(&r).contains(INSTANCE),
            "{case}: leaked the identity: {}",
            super::raw::show(&r)
        );
        healthy(case);
    }

    let ids = format!("{rid}{xff}");
    // Malformed HTTP on the socket itself.
    let mut many = format!("GET {md} HTTP/1.1\r\nHost: h\r\n{ids}");
    for i in 0..10_000 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let raw_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "two Content-Lengths",
            format!("POST {md} HTTP/1.1\r\nHost: h\r\n{ids}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab").into_bytes(),
        ),
        ("10k headers", many.into_bytes()),
        (
            "20 KiB URI",
            req(&format!("/openstack/{}", "a".repeat(20 * 1024)), &ids),
        ),
        ("NUL in the path", req("/openstack/\0latest", &ids)),
        ("HTTP/0.9", b"GET /openstack\r\n\r\n".to_vec()),
        ("TLS bytes", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n".to_vec()),
        ("obs-fold", format!("GET {md} HTTP/1.1\r\nHost: h\r\n{ids}X-F: a\r\n b\r\n\r\n").into_bytes()),
    ];
    for (case, bytes) in &raw_cases {
        let r = exchange(&sock, bytes);
        assert!(
            r.is_empty() || super::raw::status(&r).is_some_and(|s| (400..500).contains(&s)),
            "{case}: expected a well-formed 4xx or a close, got {}",
            super::raw::show(&r)
        );
        healthy(case);
    }
    // CL + TE: RFC 9112 §6.1 allows treating it as chunked if the connection is then closed;
    // the smuggled request behind it must never be answered.
    let r = exchange(
        &sock,
        format!("POST {md} HTTP/1.1\r\nHost: h\r\n{ids}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n").as_bytes(),
    );
    let text = String::from_utf8_lossy(&r).to_ascii_lowercase();
    assert!(
        r.is_empty()
            || super::raw::status(&r).is_some_and(|s| (400..500).contains(&s))
            || (text.contains("connection: close") && super::raw::statuses(&r).len() == 1),
        "CL + TE: must get a 4xx, or one answer and a close: {}",
        super::raw::show(&r)
    );
    healthy("CL + TE");
    let mut non_utf8 = b"GET /openstack/\xff\xfe HTTP/1.1\r\nHost: h\r\n".to_vec();
    non_utf8.extend_from_slice(ids.as_bytes());
    non_utf8.extend_from_slice(b"Connection: close\r\n\r\n");
    let r = exchange(&sock, &non_utf8);
    assert!(
        r.is_empty() || super::raw::status(&r).is_some_and(|s| (400..500).contains(&s)),
        "non-UTF-8 path: {}",
        super::raw::show(&r)
    );
    healthy("non-UTF-8 path");

    for path in [
        "/openstack/latest/../../etc/passwd",
        "/openstack/latest/%2e%2e/%2e%2e/etc/passwd",
        "/openstack/latest/..%2f..%2f..%2fetc%2fpasswd",
        "/openstack/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/latest/meta-data/../../../../etc/passwd",
        "/latest/meta-data/%2e%2e%2f%2e%2e%2fetc/passwd",
        "/openstack/latest/meta_data.json%00.txt",
        "//etc/passwd",
        "/openstack/latest/user_data/../../../../proc/self/environ",
    ] {
        let r = exchange(&sock, &req(path, &ids));
        let text = String::from_utf8_lossy(&r);
        let s = super::raw::status(&r);
        assert!(
            s.is_some_and(|s| (400..500).contains(&s)),
            "{path}: expected a well-formed 4xx, got {}",
            super::raw::show(&r)
        );
        assert!(
            !text.contains("root:") && !text.contains("PATH="),
            "{path} read a host file: {text}"
        );
        healthy(path);
    }

    // A huge body (declared and actually sent) and a body that never arrives.
    let mut huge = format!(
        "POST {md} HTTP/1.1\r\nHost: h\r\n{ids}Content-Length: 10000000\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    huge.extend(std::iter::repeat_n(b'z', 1 << 20));
    let r = exchange(&sock, &huge);
    assert!(
        r.is_empty() || super::raw::status(&r).is_some_and(|s| s >= 400),
        "huge body: {}",
        super::raw::show(&r)
    );
    healthy("huge body");

    // Slow clients: 20 connections dribbling a head must not stop others from being served.
    let slow: Vec<UnixStream> = (0..20)
        .map(|_| {
            let mut s = UnixStream::connect(&sock).expect("connect");
            let _ = s.write_all(b"GET /openstack HTTP/1.1\r\nHost: h\r\nX-Slow: ");
            s
        })
        .collect();
    healthy("20 slow clients");
    drop(slow);
    healthy("slow clients gone");

    // Seeded mutations of good requests (`NS_FUZZ_SEED` replays): once the client has sent
    // everything, only well-formed answers with documented statuses, then a close.
    let post = format!(
        "POST /openstack/latest/password HTTP/1.1\r\nHost: h\r\n{ids}Content-Length: 3\r\n\r\nabc"
    );
    let valid = [good.clone(), post.into_bytes()];
    let dict: &[&[u8]] = &[
        b"X-Neutron-Network-ID: 0e2e0002-0000-4000-8000-000000000002\r\n",
        b"X-Forwarded-For: ::ffff:10.250.200.10\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Content-Length: 99999999999999999999\r\n",
        b"/../..",
        b"%00",
    ];
    ns_testkit::fuzz::run("agent-wire", 0x5eed_0102, 1000, |rng, case| {
        let v: &Vec<u8> = rng.pick(&valid);
        let bytes = ns_testkit::fuzz::mutate(rng, &v.clone(), dict);
        let (r, closed) = Blocking::unix(&sock)
            .expect("connect")
            .send_last(&bytes, Duration::from_secs(10));
        let sent = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
        assert!(
            closed,
            "case {case}: not closed: {sent:?} -> {}",
            super::raw::show(&r)
        );
        let answers =
            ns_testkit::http::answers(&r).unwrap_or_else(|e| panic!("case {case}: {sent:?}: {e}"));
        for a in answers {
            assert!(
                matches!(
                    a.status,
                    200 | 400 | 401 | 403 | 404 | 405 | 409 | 413 | 414 | 431 | 501 | 505
                ),
                "case {case}: {sent:?} -> {}",
                a.head
            );
        }
    });
    healthy("mutated requests");
}
