//! Debian's cloud-init against the built-in responder. cloud-init speaks HTTP to a base URL,
//! so a tiny loopback front stands in for the proxy: it forwards each request to the agent's
//! Unix socket adding X-Forwarded-For and X-Neutron-Network-ID (no proxy crate needed).
//! The same readers through the real proxy in namespaces belong to the workspace e2e tests.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ns_testkit::{skip, TempDir};

const PYTHON: &str = "/usr/bin/python3";

fn cloud_init_available(test: &str) -> bool {
    let ok = Command::new(PYTHON)
        .args([
            "-c",
            "import cloudinit.sources.helpers.openstack, cloudinit.sources.helpers.ec2",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(
            test,
            "cloud-init is not installed for /usr/bin/python3 (apt-get install cloud-init)",
        );
    }
    ok
}

async fn front_answer(socket: PathBuf, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let fail = |why: String| {
        let mut r = Response::new(Full::new(Bytes::from(why)));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r
    };
    let (mut parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    parts
        .headers
        .insert("x-forwarded-for", "10.250.41.2".parse().expect("hv"));
    parts
        .headers
        .insert("x-neutron-network-id", "n1".parse().expect("hv"));
    let Ok(stream) = tokio::net::UnixStream::connect(&socket).await else {
        return fail("agent socket refused".into());
    };
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return fail("handshake".into());
    };
    tokio::spawn(conn);
    match send
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
        Err(e) => fail(e.to_string()),
    }
}

/// Start the loopback front; returns its address and the task (aborted on drop by the caller).
async fn front(socket: PathBuf) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind front");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let socket = socket.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let socket = socket.clone();
                    async move { Ok::<_, std::convert::Infallible>(front_answer(socket, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// Run a python snippet (blocking, off the runtime) and parse its JSON output.
async fn python(script: &'static str, base: String) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(PYTHON).args(["-c", script, &base]).output()
    })
    .await
    .expect("join")
    .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad output {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

const OPENSTACK_READER: &str = r#"
import json, sys
from cloudinit.sources.helpers import openstack, ec2
base = sys.argv[1]

class Reader(openstack.MetadataReader):
    # The stock reader fetches the EC2 tree from 169.254.169.254; keep it on loopback.
    def _read_ec2_metadata(self):
        return ec2.get_instance_metadata(metadata_address=self.base_path, timeout=self.timeout, retries=self.retries)

reader = Reader(base, timeout=5, retries=0)
version = reader._find_working_version()
res = reader.read_v2()
md = res["metadata"]
net = openstack.convert_net_json(res.get("networkdata"), known_macs={"fa:16:3e:00:00:02": "eth0"})
print(json.dumps({
    "version": version,
    "instance_id": md["instance-id"],
    "local_hostname": md.get("local-hostname"),
    "keys": md.get("public_keys"),
    "userdata": res["userdata"].decode(),
    "vendordata": res.get("vendordata"),
    "ec2_instance_id": res["ec2-metadata"].get("instance-id"),
    "ec2_key": res["ec2-metadata"].get("public-keys", {}).get("demo"),
    "net_config": net,
}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_init_openstack_reader_boots_from_builtin() {
    if !cloud_init_available("cloud_init_openstack_reader_boots_from_builtin") {
        return;
    }
    let dir = TempDir::new("ci-os");
    let agent = start(config(&dir, INVENTORY)).await;
    let (addr, task) = front(agent.socket.clone()).await;
    let out = python(OPENSTACK_READER, format!("http://{addr}")).await;
    task.abort();
    agent.stop().await;

    assert_eq!(
        out["version"], "2018-08-27",
        "newest version this cloud-init knows"
    );
    assert_eq!(out["instance_id"], "vm-uuid-1");
    assert_eq!(out["local_hostname"], "vm1.novalocal");
    assert_eq!(out["userdata"], "#cloud-config\nfqdn: vm1.example\n");
    assert_eq!(out["keys"]["demo"], "ssh-ed25519 AAAAC3Nz demo@example");
    assert_eq!(out["vendordata"], serde_json::json!({}));
    assert!(
        out["ec2_instance_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("i-")),
        "{out}"
    );
    assert_eq!(out["ec2_key"], "ssh-ed25519 AAAAC3Nz demo@example");
    let cfg = &out["net_config"]["config"];
    assert_eq!(cfg[0]["type"], "physical", "{cfg}");
    assert_eq!(cfg[0]["name"], "eth0");
    assert_eq!(cfg[0]["subnets"][0]["type"], "dhcp4");
}

const EC2_CRAWL: &str = r#"
import json, sys
from cloudinit import url_helper
from cloudinit.sources.helpers import ec2
from cloudinit.sources.DataSourceEc2 import DataSourceEc2
base = sys.argv[1]

# IMDSv2 as cloud-init's Ec2 datasource does it (_refresh_api_token).
token = url_helper.readurl(base + "/latest/api/token", request_method="PUT",
                           headers={"X-aws-ec2-metadata-token-ttl-seconds": "21600"}).contents.decode()
headers = lambda url="": {"X-aws-ec2-metadata-token": token}

# get_metadata_api_version: newer versions answer 404, so it settles on 2009-04-04.
version = DataSourceEc2.min_metadata_version
for v in DataSourceEc2.extended_metadata_versions:
    try:
        url_helper.readurl(base + "/" + v + "/meta-data/instance-id", headers=headers())
        version = v
        break
    except url_helper.UrlError as e:
        assert e.code == 404, e.code
without_token = ec2.get_instance_metadata(version, base, retries=0)
md = ec2.get_instance_metadata(version, base, headers_cb=headers, retries=0)
ud = ec2.get_instance_userdata(version, base, headers_cb=headers, retries=0)
print(json.dumps({
    "version": version,
    "without_token": without_token,
    "instance_id": md.get("instance-id"),
    "hostname": md.get("local-hostname"),
    "ipv4": md.get("local-ipv4"),
    "az": md.get("placement", {}).get("availability-zone"),
    "key": md.get("public-keys", {}).get("demo"),
    "userdata": ud.decode(),
}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_init_ec2_crawl_with_required_imdsv2_tokens() {
    if !cloud_init_available("cloud_init_ec2_crawl_with_required_imdsv2_tokens") {
        return;
    }
    let dir = TempDir::new("ci-ec2");
    let mut cfg = config(&dir, INVENTORY);
    cfg.imds_require_token = true;
    let agent = start(cfg).await;
    let (addr, task) = front(agent.socket.clone()).await;
    let out = python(EC2_CRAWL, format!("http://{addr}")).await;
    task.abort();
    agent.stop().await;

    assert_eq!(out["version"], "2009-04-04");
    assert_eq!(
        out["without_token"],
        serde_json::json!({}),
        "tokens are required"
    );
    assert!(
        out["instance_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("i-")),
        "{out}"
    );
    assert_eq!(out["hostname"], "vm1.novalocal");
    assert_eq!(out["ipv4"], "10.250.41.2");
    assert_eq!(out["az"], "nova");
    assert_eq!(out["key"], "ssh-ed25519 AAAAC3Nz demo@example");
    assert_eq!(out["userdata"], "#cloud-config\nfqdn: vm1.example\n");
}
