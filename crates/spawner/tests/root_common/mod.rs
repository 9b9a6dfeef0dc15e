//! Helpers for the root tests: an agent stand-in on a Unix socket that answers with the
//! headers it saw, an HTTP GET run inside a namespace, and a supervisor wired to the real
//! proxy binary and real namespaces.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use ns_metadata_spawner::config::Config;
use ns_netns::Netns;

/// Agent stand-in: answers 200 with `router=<X-Neutron-Router-ID> network=<…> xff=<…>`.
pub fn start_agent(sock: &Path) -> tokio::task::JoinHandle<()> {
    let _ = std::fs::remove_file(sock);
    let listener = tokio::net::UnixListener::bind(sock).expect("bind agent socket");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let h = |k: &str| {
                            req.headers()
                                .get(k)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned()
                        };
                        let body = format!(
                            "router={} network={} xff={}",
                            h("x-neutron-router-id"),
                            h("x-neutron-network-id"),
                            h("x-forwarded-for")
                        );
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

/// GET http://ADDR/latest/meta-data/ from inside `ns` (a blocking socket on a thread that
/// entered the namespace); the body on a 200, else an error string.
pub fn get_in(ns: &Netns, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
    get_in_addr(ns, addr)
}

/// As [`get_in`], for an address with a scope id (IPv6 link-local).
pub fn get_in_addr(ns: &Netns, addr: SocketAddr) -> Result<String, String> {
    ns.run(move || -> Result<String, String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        s.write_all(b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| format!("read: {e}"))?;
        if !out.starts_with("HTTP/1.1 200") {
            return Err(format!("not 200: {out}"));
        }
        Ok(out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
    })
    .map_err(|e| e.to_string())?
}

/// A config for the real proxy binary under `dir`.
pub fn real_config(dir: &Path) -> Config {
    let mut c = Config::defaults().with_overrides(Some(dir), None);
    c.proxy_binary = ns_netns::testing::bin_path("ns-metadata-proxy");
    c.metadata_proxy_socket = dir.join("agent.sock");
    c.stop_timeout = Duration::from_secs(3);
    c
}

/// The same as an INI file (for the daemon binary).
pub fn write_ini(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("spawner.ini");
    let text = format!(
        "[DEFAULT]\nmetadata_proxy_socket = {}\n{extra}\n[spawner]\nstate_dir = {}\nproxy_binary = {}\nstop_timeout = 3\n",
        dir.join("agent.sock").display(),
        dir.display(),
        ns_netns::testing::bin_path("ns-metadata-proxy").display()
    );
    std::fs::write(&p, text).expect("write ini");
    p
}
