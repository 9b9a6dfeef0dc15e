//! Forwarding to a Nova stand-in that checks the signature as Nova does: headers, method,
//! path, query and body; relayed statuses; 503/504 when Nova is away or slow, 503/502 when it
//! answers broken (closed, not HTTP, cut short) and recovery after; HTTPS with a
//! test CA, `nova_metadata_insecure` and client certificates.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ns_metadata_agent::{AnswererKind, Config};
use ns_testkit::nova::{signature_ok, Nova, GZIP_BODY};
use ns_testkit::TempDir;

const SECRET: &str = "s3cret-shared";
/// Bound of the waits below (each ends as soon as its condition holds).
const WAIT: Duration = Duration::from_secs(10);

fn nova_config(dir: &TempDir, port: u16, secret: &str) -> Config {
    let mut cfg = config(dir, INVENTORY);
    cfg.answerer = AnswererKind::Nova;
    cfg.nova_metadata_host = "127.0.0.1".into();
    cfg.nova_metadata_port = port;
    cfg.metadata_proxy_shared_secret = secret.into();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_signed_request_unchanged() {
    let nova = Nova::start(SECRET);
    let dir = TempDir::new("nova");
    let agent = start(nova_config(&dir, nova.port(), SECRET)).await;
    let body = "pw-blob";
    let req = format!(
        "POST /openstack/2013-04-04/password?a=1&b=two HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Forwarded-For: 10.250.41.2\r\nX-Neutron-Router-ID: r1\r\nX-Instance-ID: spoofed\r\nX-Tenant-ID: spoofed\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = ask(&agent.socket, &req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "{\"uuid\": \"vm-uuid-1\"}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-nova-test"), Some("relayed"));
    assert!(r.header("x-ns-metadata-keepalive").is_some());
    let seen = nova.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/openstack/2013-04-04/password?a=1&b=two");
    assert_eq!(seen.body, body.as_bytes());
    assert_eq!(seen.header("x-forwarded-for"), Some("10.250.41.2"));
    assert_eq!(seen.header("x-instance-id"), Some("vm-uuid-1"));
    assert_eq!(seen.header("x-tenant-id"), Some("p1"));
    let sig = seen
        .header("x-instance-id-signature")
        .expect("signature sent");
    assert!(signature_ok(SECRET, "vm-uuid-1", sig));
    assert!(
        !seen.headers.iter().any(|(_, v)| v == "spoofed"),
        "client identity headers never reach Nova"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nova_status_codes_are_relayed() {
    let nova = Nova::start(SECRET);
    let dir = TempDir::new("status");
    let agent = start(nova_config(&dir, nova.port(), SECRET)).await;
    for code in [400u16, 403, 404, 409, 500, 502, 503, 504, 418] {
        let r = ask(
            &agent.socket,
            &get(
                &format!("/status/{code}"),
                "10.250.42.2",
                "X-Neutron-Network-ID",
                "n2",
            ),
        )
        .await;
        assert_eq!(r.status, code);
        assert_eq!(r.text(), format!("status {code}"));
    }
    assert_eq!(nova.last().header("x-tenant-id"), Some("p2"));
    let r = ask(
        &agent.socket,
        &get("/gzip", "10.250.42.2", "X-Neutron-Network-ID", "n2"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, GZIP_BODY, "compressed bodies pass unchanged");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(
        r.header("content-length"),
        Some(GZIP_BODY.len().to_string().as_str())
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_gets_novas_403() {
    let nova = Nova::start(SECRET);
    let dir = TempDir::new("secret");
    let agent = start(nova_config(&dir, nova.port(), "not-the-secret")).await;
    let r = ask(
        &agent.socket,
        &get("/openstack", "10.250.41.2", "X-Neutron-Network-ID", "n1"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("Invalid proxy request signature"));
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nova_unreachable_is_503() {
    // A port that was free a moment ago and has nothing listening now.
    let port = ns_testkit::http::free_port();
    let dir = TempDir::new("down");
    let agent = start(nova_config(&dir, port, SECRET)).await;
    let r = ask(
        &agent.socket,
        &get("/openstack", "10.250.41.2", "X-Neutron-Network-ID", "n1"),
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(r.text().contains("temporarily unavailable"));
    // Identity errors are still the agent's own answers.
    assert_eq!(
        ask(
            &agent.socket,
            &get("/", "10.250.41.77", "X-Neutron-Network-ID", "n1")
        )
        .await
        .status,
        404
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_nova_is_504() {
    // Accepts the connection and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let dir = TempDir::new("slow");
    let mut cfg = nova_config(&dir, port, SECRET);
    cfg.nova_metadata_timeout = Duration::from_secs(1);
    let agent = start(cfg).await;
    let r = ask(
        &agent.socket,
        &get("/openstack", "10.250.41.2", "X-Neutron-Network-ID", "n1"),
    )
    .await;
    assert_eq!(r.status, 504);
    agent.stop().await;
    hold.abort();
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, written as PEM files.
struct Pki {
    ca: std::path::PathBuf,
    client_cert: std::path::PathBuf,
    client_key: std::path::PathBuf,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: rustls::pki_types::PrivateKeyDer<'static>,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

fn pki(dir: &TempDir) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ns-metadata test CA");
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);

    let mut sp = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params");
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().expect("server key");
    let server_cert = sp.signed_by(&server_key, &issuer).expect("server cert");

    let mut cp =
        CertificateParams::new(vec!["neutron-metadata-agent".to_owned()]).expect("client params");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().expect("client key");
    let client_cert = cp.signed_by(&client_key, &issuer).expect("client cert");

    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).expect("write ca");
    let client_cert_path = dir.join("client.pem");
    std::fs::write(&client_cert_path, client_cert.pem()).expect("write client cert");
    let client_key_path = dir.join("client.key");
    std::fs::write(&client_key_path, client_key.serialize_pem()).expect("write client key");
    Pki {
        ca,
        client_cert: client_cert_path,
        client_key: client_key_path,
        server_chain: vec![server_cert.der().clone()],
        server_key: rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        ca_der: ca_cert.der().clone(),
    }
}

/// Nova's TLS server configuration, demanding a client certificate or not.
fn server_tls(p: &Pki, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(p.ca_der.clone()).expect("ca root");
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let cfg = builder
        .with_single_cert(p.server_chain.clone(), p.server_key.clone_key())
        .expect("server cert");
    Arc::new(cfg)
}

async fn status_via(cfg: Config) -> u16 {
    let agent = start(cfg).await;
    let r = ask(
        &agent.socket,
        &get("/openstack", "10.250.41.2", "X-Neutron-Network-ID", "n1"),
    )
    .await;
    agent.stop().await;
    r.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_nova_with_ca_insecure_and_client_cert() {
    let dir = TempDir::new("tls");
    let p = pki(&dir);
    let nova = Nova::start_tls(SECRET, server_tls(&p, false));
    let https = |dir: &TempDir| {
        let mut c = nova_config(dir, nova.port(), SECRET);
        c.nova_metadata_protocol = "https".into();
        c
    };
    let d1 = TempDir::new("tls-ca");
    let mut cfg = https(&d1);
    cfg.auth_ca_cert = Some(p.ca.clone());
    assert_eq!(status_via(cfg).await, 200, "verified against auth_ca_cert");
    assert_eq!(nova.last().header("x-instance-id"), Some("vm-uuid-1"));

    let d2 = TempDir::new("tls-sys");
    assert_eq!(
        status_via(https(&d2)).await,
        503,
        "the system bundle does not trust the test CA"
    );

    let d3 = TempDir::new("tls-insecure");
    let mut cfg = https(&d3);
    cfg.nova_metadata_insecure = true;
    assert_eq!(
        status_via(cfg).await,
        200,
        "nova_metadata_insecure skips verification"
    );

    // Nova demanding a client certificate.
    let mtls = Nova::start_tls(SECRET, server_tls(&p, true));
    let d4 = TempDir::new("tls-mtls");
    let mut cfg = https(&d4);
    cfg.nova_metadata_port = mtls.port();
    cfg.auth_ca_cert = Some(p.ca.clone());
    assert_eq!(
        status_via(cfg.clone()).await,
        503,
        "no client certificate, no connection"
    );
    let d5 = TempDir::new("tls-mtls2");
    let mut with_cert = https(&d5);
    with_cert.nova_metadata_port = mtls.port();
    with_cert.auth_ca_cert = Some(p.ca.clone());
    with_cert.nova_client_cert = Some(p.client_cert.clone());
    with_cert.nova_client_priv_key = Some(p.client_key.clone());
    assert_eq!(
        status_via(with_cert).await,
        200,
        "client certificate presented"
    );
    assert_eq!(mtls.last().header("x-tenant-id"), Some("p1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_stop_the_agent() {
    let dir = TempDir::new("tlsbad");
    std::fs::write(dir.join("junk.pem"), "not a certificate").expect("write");
    let mut cfg = nova_config(&dir, 1, SECRET);
    cfg.nova_metadata_protocol = "https".into();
    cfg.auth_ca_cert = Some(dir.join("junk.pem"));
    let err = ns_metadata_agent::run(cfg, std::future::pending())
        .await
        .expect_err("must refuse");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().starts_with("auth_ca_cert: "), "{err}");
    assert!(err.to_string().contains("junk.pem"), "{err}");
}

/// A "Nova" that answers every request with `head` followed by `len` bytes of body, written
/// in pieces (`chunked` framing when `head` says so).
fn big_nova(chunked: bool, len: usize) -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let head = if chunked {
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_owned()
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
            };
            let _ = c.write_all(head.as_bytes());
            let piece = vec![b'x'; 100];
            for _ in 0..len / 100 {
                let _ = if chunked {
                    c.write_all(b"64\r\n")
                        .and_then(|()| c.write_all(&piece))
                        .and_then(|()| c.write_all(b"\r\n"))
                } else {
                    c.write_all(&piece)
                };
            }
            if chunked {
                let _ = c.write_all(b"0\r\n\r\n");
            }
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_cap_is_502_and_one_under_it_is_relayed() {
    let dir = TempDir::new("nova-cap");
    // One agent with a 1000-byte cap in front of a Nova answering `size` bytes.
    let ask_capped = |chunked: bool, size: usize| {
        let mut cfg = nova_config(&dir, big_nova(chunked, size), SECRET);
        cfg.nova_max_response_bytes = 1_000;
        async move {
            let agent = start(cfg).await;
            let r = ask(
                &agent.socket,
                get("/openstack", "10.250.41.2", "X-Neutron-Network-ID", "n1"),
            )
            .await;
            agent.stop().await;
            r
        }
    };
    for chunked in [false, true] {
        // Over the cap: with a Content-Length (refused at once) and without (counted).
        let r = ask_capped(chunked, 5_000).await;
        assert_eq!(r.status, 502, "chunked={chunked}");
        assert!(r.text().contains("too large"), "{}", r.text());

        let r = ask_capped(chunked, 1_000).await;
        assert_eq!(r.status, 200, "chunked={chunked}");
        assert_eq!(r.body.len(), 1_000);
    }
}

/// A "Nova" on loopback that reads a request and answers each connection with the bytes
/// last put in the returned cell, exactly, then closes.
fn scripted_nova() -> (u16, Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let script = Arc::new(std::sync::Mutex::new(Vec::new()));
    let answer = script.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let bytes = answer.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let _ = c.write_all(&bytes);
        }
    });
    (port, script)
}

/// Nova reached but broken, behind the agent: what the VM sees is what it sees behind
/// neutron-metadata-agent, whose `requests` call raises `ConnectionError` (answered 503,
/// LP#2059032) for a connection closed before or during the head and for a head that is not
/// HTTP, and another exception (the connection closed: haproxy's 502) for a body cut short.
/// Each is one warning naming Nova's URL, and the same agent answers again once Nova does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_nova_answers_are_503_or_502_and_the_agent_recovers() {
    let (port, script) = scripted_nova();
    let dir = TempDir::new("broken-nova");
    let agent = start(nova_config(&dir, port, SECRET)).await;
    let cases: [(&str, &[u8], u16); 5] = [
        ("closed without a reply", b"", 503),
        ("not HTTP", b"SSH-2.0-OpenSSH_9.2p1\r\n", 503),
        ("half a head", b"HTTP/1.1 200 OK\r\nContent-Le", 503),
        (
            "a body cut short",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
            502,
        ),
        (
            "500",
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nbad",
            500,
        ),
    ];
    let ask_one = || async {
        ask(
            &agent.socket,
            &get("/openstack", "10.250.41.2", "X-Neutron-Network-ID", "n1"),
        )
        .await
    };
    for (what, bytes, status) in cases {
        *script.lock().unwrap_or_else(|p| p.into_inner()) = bytes.to_vec();
        let r = ask_one().await;
        assert_eq!(r.status, status, "Nova's answer {what}: {}", r.text());
    }
    *script.lock().unwrap_or_else(|p| p.into_inner()) =
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec();
    let r = ask_one().await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ok"),
        "Nova answers again"
    );
    agent.stop().await;
}

/// What Nova answers that is not the VM's to see: a redirect (its Location is Nova's own
/// address) and a protocol switch are answered 502; headers Nova names in `Connection` are
/// hop-by-hop and dropped; a HEAD answer keeps Nova's length (there is no body to measure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_switches_and_hop_by_hop_headers_are_not_relayed() {
    let (port, script) = scripted_nova();
    let dir = TempDir::new("nova-filter");
    let agent = start(nova_config(&dir, port, SECRET)).await;
    let set = |b: &[u8]| *script.lock().unwrap_or_else(|p| p.into_inner()) = b.to_vec();
    let req = get("/openstack", "10.250.41.2", "X-Neutron-Network-ID", "n1");
    for answer in [
        &b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:8775/internal/\r\nContent-Length: 0\r\n\r\n"[..],
        &b"HTTP/1.1 301 Moved Permanently\r\nLocation: /openstack/\r\nContent-Length: 0\r\n\r\n"[..],
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"[..],
    ] {
        set(answer);
        let r = ask(&agent.socket, &req).await;
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(answer));
        assert_eq!(r.header("location"), None);
    }
    set(b"HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: s\r\nX-Kept: k\r\nContent-Length: 2\r\n\r\nok");
    let r = ask(&agent.socket, &req).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(
        r.header("x-secret"),
        None,
        "named in Connection: hop-by-hop"
    );
    assert_eq!(r.header("x-kept"), Some("k"));
    set(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n");
    let head = req.replacen("GET", "HEAD", 1);
    let r = ask(&agent.socket, &head).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some("13"),
        "Nova's length of the GET"
    );
    assert!(r.body.is_empty());
    agent.stop().await;
}

/// A keep-alive "Nova" on `port` answering every request `200 ok`; [`KeepAliveNova::kill`]
/// closes the listener and every connection at once, as a killed process's are.
struct KeepAliveNova {
    port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl KeepAliveNova {
    fn start(port: u16) -> KeepAliveNova {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind nova");
        let port = l.local_addr().expect("addr").port();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (stopping, held) = (stop.clone(), conns.clone());
        std::thread::spawn(move || {
            for c in l.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(mut c) = c else { return };
                if let Ok(copy) = c.try_clone() {
                    held.lock().unwrap_or_else(|p| p.into_inner()).push(copy);
                }
                std::thread::spawn(move || {
                    let (mut buf, mut tmp) = (Vec::new(), [0u8; 4096]);
                    while let Ok(n @ 1..) = c.read(&mut tmp) {
                        buf.extend_from_slice(&tmp[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if c.write_all(ok).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        KeepAliveNova { port, stop, conns }
    }

    fn kill(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Nova restarted behind the agent while it pools keep-alive connections to it: while it is
/// down the VM gets 503 (as from neutron-metadata-agent, LP#2059032); once it listens again
/// every request is answered, none on a pooled connection to the dead process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nova_restarted_under_pooled_connections_is_answered_again_at_once() {
    let nova = KeepAliveNova::start(0);
    let port = nova.port;
    let dir = TempDir::new("nova-restart");
    let agent = start(nova_config(&dir, port, SECRET)).await;
    let req = get("/openstack", "10.250.41.2", "X-Neutron-Network-ID", "n1");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (sock, req) = (agent.socket.clone(), req.clone());
        tasks.spawn(async move { ask(&sock, &req).await.status });
    }
    while let Some(s) = tasks.join_next().await {
        assert_eq!(s.expect("task"), 200, "before the restart");
    }
    nova.kill();
    let down = ns_testkit::eventually_await("503 while Nova is down", WAIT, || async {
        let r = ask(&agent.socket, &req).await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert!(
        down.text().contains("temporarily unavailable"),
        "{}",
        down.text()
    );
    let nova = KeepAliveNova::start(port);
    for i in 0..8 {
        let r = ask(&agent.socket, &req).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "ok"),
            "request {i} after the restart"
        );
    }
    nova.kill();
    agent.stop().await;
}

/// The race of a pooled keep-alive connection, made certain: Nova answers a connection's
/// first request (keeping it open, as Nova's WSGI server does) and closes it without an
/// answer when the next request comes on it, as when its idle timeout or a restart closes
/// it just as the agent reuses it. The VM still gets its 200 (the idempotent request is
/// sent once more on a new connection), as it does from neutron-metadata-agent, which never
/// reuses a connection; a POST is not sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_nova_connection_closed_under_the_request_is_retried_once() {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let (mut buf, mut tmp, mut answered) = (Vec::new(), [0u8; 4096], false);
                while let Ok(n @ 1..) = c.read(&mut tmp) {
                    buf.extend_from_slice(&tmp[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        if answered {
                            return;
                        }
                        answered = true;
                        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    }
                }
            });
        }
    });
    let dir = TempDir::new("nova-pooled");
    let agent = start(nova_config(&dir, port, SECRET)).await;
    let req = get("/openstack", "10.250.41.2", "X-Neutron-Network-ID", "n1");
    for i in 0..3 {
        let r = ask(&agent.socket, &req).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "request {i}");
    }
    let before = requests.load(std::sync::atomic::Ordering::SeqCst);
    let post =
        "POST /openstack HTTP/1.1\r\nHost: 169.254.169.254\r\nX-Forwarded-For: 10.250.41.2\r\n\
                X-Neutron-Network-ID: n1\r\nContent-Length: 2\r\n\r\nhi";
    let r = ask(&agent.socket, post).await;
    assert_eq!(r.status, 503, "a POST is not sent again: {}", r.text());
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        before + 1,
        "sent once"
    );
    agent.stop().await;
}
