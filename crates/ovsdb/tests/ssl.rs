//! `ssl:` remotes with certificates made by `ovs-pki` (no host names in them): the client
//! verifies the server's chain against the CA file and presents its own certificate, as
//! Neutron's `ovn_sb_private_key` / `ovn_sb_certificate` / `ovn_sb_ca_cert` configure it.
mod common;

use std::path::Path;

use common::*;
use ns_ovsdb::{Monitor, TlsFiles};
use ns_testkit::http::free_port;
use ns_testkit::TempDir;

fn files(dir: &Path, name: &str, cert: &str, ca: &str) -> TlsFiles {
    TlsFiles {
        private_key: dir.join(format!("{name}-{cert}-privkey.pem")),
        certificate: dir.join(format!("{name}-{cert}-cert.pem")),
        ca_cert: ca.into(),
    }
}

fn monitor() -> Monitor {
    Monitor::new("OVN_Southbound").table("Chassis_Private", ["name"], None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_with_ovs_pki_certificates_and_a_foreign_ca_refused() {
    const T: &str = "ssl_with_ovs_pki_certificates_and_a_foreign_ca_refused";
    if !have(
        T,
        &[OVSDB_SERVER, OVSDB_TOOL, OVN_SBCTL, OVS_PKI],
        &[SB_SCHEMA],
    ) {
        return;
    }
    let dir = TempDir::new("ovsdb-ssl");
    let ca = pki(&dir, "pki", &["server", "client"]);
    let other_ca = pki(&dir, "other", &["client"]);
    let db = create_db(&dir, "sb", SB_SCHEMA);
    let port = free_port();
    let server = files(dir.path(), "pki", "server", &ca);
    let srv = Server::start(
        &dir,
        "sb",
        &db,
        Some(port),
        &[
            format!("--private-key={}", server.private_key.display()),
            format!("--certificate={}", server.certificate.display()),
            format!("--ca-cert={ca}"),
            format!("--remote=pssl:{port}:127.0.0.1"),
        ],
    );
    srv.sbctl(&["create", "Chassis_Private", "name=over-ssl"]);
    let remote = format!("ssl:127.0.0.1:{port}");

    let (c, mut ev) = client(&remote, monitor(), |cfg| {
        cfg.tls = Some(files(dir.path(), "pki", "client", &ca))
    });
    assert_eq!(ready(&mut ev).await, (remote.clone(), false));
    assert_eq!(names(&c, "Chassis_Private"), vec!["over-ssl"]);
    srv.sbctl(&["create", "Chassis_Private", "name=live"]);
    until(&c, "a live update over ssl", |c| {
        names(c, "Chassis_Private").len() == 2
    })
    .await;
    drop(c);

    // Our CA does not know the server's: the handshake fails on our side, never Ready.
    let tls = TlsFiles {
        ca_cert: other_ca.clone().into(),
        ..files(dir.path(), "other", "client", &other_ca)
    };
    let (c, _ev) = client(&remote, monitor(), |cfg| cfg.tls = Some(tls));
    let err = ns_testkit::eventually_async("a certificate error", WAIT, || {
        c.status()
            .last_error
            .filter(|e| e.to_lowercase().contains("certificate"))
    })
    .await;
    assert_eq!(c.status().ready_count, 0, "{err}");
}

#[test]
fn ssl_remote_needs_tls_files_and_readable_ones() {
    let m = monitor();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cfg = ns_ovsdb::Config::new("ssl:127.0.0.1:6642", m.clone()).expect("config");
        assert!(matches!(
            ns_ovsdb::Client::start(cfg),
            Err(ns_ovsdb::Error::Config(_))
        ));
        let mut cfg = ns_ovsdb::Config::new("ssl:127.0.0.1:6642", m).expect("config");
        cfg.tls = Some(TlsFiles {
            private_key: "/nonexistent/key.pem".into(),
            certificate: "/nonexistent/cert.pem".into(),
            ca_cert: "/nonexistent/ca.pem".into(),
        });
        match ns_ovsdb::Client::start(cfg) {
            Err(ns_ovsdb::Error::Tls { path, .. }) => assert_eq!(path, "/nonexistent/ca.pem"),
            other => panic!("{other:?}"),
        }
    });
}
