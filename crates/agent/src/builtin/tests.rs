//! Tests of the built-in responder: OpenStack and EC2 trees, versions, IMDSv2, password.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use super::*;
use crate::inventory::Snapshot;

const INV: &str = r##"{
  "networks": [
    {"id": "net1", "mtu": 1450, "subnets": [
      {"id": "sub1", "cidr": "10.250.1.0/24", "gateway_ip": "10.250.1.1", "enable_dhcp": true, "ip_version": 4,
       "dns_nameservers": ["10.250.1.53"]}]},
    {"id": "net2", "subnets": [
      {"id": "sub2", "cidr": "10.250.2.0/24", "gateway_ip": "10.250.2.1", "enable_dhcp": false,
       "host_routes": [{"destination": "192.168.7.0/24", "nexthop": "10.250.2.254"}]},
      {"id": "sub6", "cidr": "fd00:2::/64", "gateway_ip": "fd00:2::1", "ipv6_address_mode": "slaac"}]}
  ],
  "ports": [
    {"id": "0123456789abcdef", "network_id": "net1", "device_id": "vm-1", "mac_address": "fa:16:3e:00:00:02",
     "project_id": "proj", "fixed_ips": [{"subnet_id": "sub1", "ip_address": "10.250.1.2"}]},
    {"id": "port-b", "network_id": "net2", "device_id": "vm-1", "mac_address": "fa:16:3e:00:00:03",
     "fixed_ips": [{"ip_address": "10.250.2.7"}, {"ip_address": "fd00:2::7"}]},
    {"id": "port-c", "network_id": "net2", "device_id": "vm-2", "fixed_ips": [{"ip_address": "10.250.2.8"}]}
  ],
  "instances": [
    {"uuid": "6b2c1e0a-1f7e-4c1e-9d9a-2f0c3e4b5a61", "name": "unused"},
    {"uuid": "vm-1", "name": "web one", "hostname": "web1", "project_id": "proj", "availability_zone": "az1",
     "launch_index": 0, "flavor": "m1.small", "public_keys": {"demo": "ssh-ed25519 AAAA demo@example"},
     "user_data": "#cloud-config\nhostname: web1\n", "meta": {"role": "web"}},
    {"uuid": "vm-2", "security_groups": ["a", "b"]}
  ]
}"##;

struct Fixture {
    snap: Snapshot,
    b: Builtin,
}

fn fixture(require_token: bool) -> Fixture {
    Fixture {
        snap: Snapshot::parse(INV.as_bytes(), "t.json").expect("valid inventory"),
        b: Builtin::new(BuiltinOptions {
            dhcp_domain: "novalocal".into(),
            require_token,
        }),
    }
}

impl Fixture {
    fn call(
        &self,
        uuid: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let inst = self.snap.instance(uuid).expect("instance in fixture");
        let ctx = Ctx {
            snap: &self.snap,
            inst,
            client_ip: "10.250.1.2".parse::<IpAddr>().expect("ip"),
        };
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        let resp = self
            .b
            .respond(&method, path, &h, &Bytes::from(body.to_owned()), &ctx);
        let (parts, body) = resp.into_parts();
        let bytes = futures_lite_block(body);
        (parts.status, parts.headers, bytes)
    }

    fn get(&self, path: &str) -> (StatusCode, String) {
        let (s, _, b) = self.call("vm-1", Method::GET, path, &[], "");
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    fn json(&self, path: &str) -> Value {
        let (s, body) = self.get(path);
        assert_eq!(s, StatusCode::OK, "{path}: {body}");
        serde_json::from_str(&body).expect("json body")
    }
}

/// Full bodies are ready at once; poll them on a throwaway runtime.
fn futures_lite_block(body: http_body_util::Full<Bytes>) -> Bytes {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        body.collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default()
    })
}

#[test]
fn openstack_versions_and_listing() {
    let f = fixture(false);
    let (s, list) = f.get("/openstack");
    assert_eq!(s, StatusCode::OK);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.first(), Some(&"2012-08-10"));
    assert!(lines.contains(&"2018-08-27") && lines.contains(&"2025-04-04"));
    assert_eq!(lines.last(), Some(&"latest"));
    assert_eq!(
        f.get("/openstack/latest").1,
        "meta_data.json\nuser_data\npassword\nvendor_data.json\nnetwork_data.json\nvendor_data2.json"
    );
    assert_eq!(
        f.get("/openstack/2012-08-10/").1,
        "meta_data.json\nuser_data"
    );
    assert_eq!(f.get("/openstack/2013-10-18").0, StatusCode::NOT_FOUND);
    assert_eq!(f.get("/openstack/latest/nothing").0, StatusCode::NOT_FOUND);
    assert_eq!(f.get("/openstack/content/0000").0, StatusCode::NOT_FOUND);
}

#[test]
fn meta_data_json_per_version() {
    let f = fixture(false);
    let md = f.json("/openstack/latest/meta_data.json");
    assert_eq!(md["uuid"], "vm-1");
    assert_eq!(md["name"], "web one");
    assert_eq!(md["hostname"], "web1.novalocal");
    assert_eq!(md["project_id"], "proj");
    assert_eq!(md["availability_zone"], "az1");
    assert_eq!(md["launch_index"], 0);
    assert_eq!(md["public_keys"]["demo"], "ssh-ed25519 AAAA demo@example");
    assert_eq!(md["keys"][0]["name"], "demo");
    assert_eq!(md["keys"][0]["type"], "ssh");
    assert_eq!(md["meta"]["role"], "web");
    assert!(md["devices"].is_array() && md["dedicated_cpus"].is_array());
    assert!(md["random_seed"].as_str().is_some_and(|s| s.len() > 600));
    let old = f.json("/openstack/2012-08-10/meta_data.json");
    assert!(
        old.get("project_id").is_none()
            && old.get("random_seed").is_none()
            && old.get("devices").is_none()
    );
    let (_, headers, _) = f.call(
        "vm-1",
        Method::GET,
        "/openstack/latest/meta_data.json",
        &[],
        "",
    );
    assert_eq!(
        headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
}

#[test]
fn user_data_vendor_data_and_404s() {
    let f = fixture(false);
    assert_eq!(
        f.get("/openstack/latest/user_data").1,
        "#cloud-config\nhostname: web1\n"
    );
    let (s, _, _) = f.call("vm-2", Method::GET, "/openstack/latest/user_data", &[], "");
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "no user data is a 404, as in Nova"
    );
    assert_eq!(
        f.json("/openstack/latest/vendor_data.json"),
        serde_json::json!({})
    );
    assert_eq!(
        f.json("/openstack/latest/vendor_data2.json"),
        serde_json::json!({"static": {}})
    );
    assert_eq!(
        f.get("/openstack/2013-04-04/vendor_data.json").0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        f.get("/openstack/2016-06-30/vendor_data2.json").0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn network_data_from_ports_and_subnets() {
    let f = fixture(false);
    let nd = f.json("/openstack/latest/network_data.json");
    let links = nd["links"].as_array().expect("links");
    assert_eq!(links.len(), 2);
    assert_eq!(links[0]["id"], "tap0123456789a");
    assert_eq!(links[0]["vif_id"], "0123456789abcdef");
    assert_eq!(links[0]["ethernet_mac_address"], "fa:16:3e:00:00:02");
    assert_eq!(links[0]["mtu"], 1450);
    let nets = nd["networks"].as_array().expect("networks");
    assert_eq!(nets.len(), 3);
    assert_eq!(nets[0]["type"], "ipv4_dhcp");
    assert_eq!(nets[0]["network_id"], "net1");
    assert_eq!(nets[1]["type"], "ipv4");
    assert_eq!(nets[1]["ip_address"], "10.250.2.7");
    assert_eq!(nets[1]["netmask"], "255.255.255.0");
    assert_eq!(nets[1]["routes"][0]["gateway"], "10.250.2.1");
    assert_eq!(nets[1]["routes"][1]["network"], "192.168.7.0");
    assert_eq!(nets[1]["link"], "tapport-b");
    assert_eq!(nets[2]["type"], "ipv6_slaac");
    assert_eq!(nets[2]["netmask"], "ffff:ffff:ffff:ffff::");
    assert_eq!(nd["services"][0]["address"], "10.250.1.53");
}

#[test]
fn ec2_tree() {
    let f = fixture(false);
    let (_, root) = f.get("/");
    assert!(
        root.starts_with("1.0\n2007-01-19") && root.ends_with("2009-04-04\nlatest"),
        "{root}"
    );
    assert_eq!(f.get("/latest").1, "meta-data/\nuser-data");
    let listing = f.get("/latest/meta-data/").1;
    for key in [
        "ami-id",
        "ami-launch-index",
        "hostname",
        "instance-id",
        "instance-type",
        "local-hostname",
        "local-ipv4",
        "placement/",
        "public-keys/",
        "reservation-id",
        "security-groups",
        "block-device-mapping/",
    ] {
        assert!(
            listing.lines().any(|l| l == key),
            "{key} missing from {listing}"
        );
    }
    assert_eq!(f.get("/latest/meta-data/instance-id").1, "i-00000001");
    assert_eq!(f.get("/2009-04-04/meta-data/hostname").1, "web1.novalocal");
    assert_eq!(f.get("/latest/meta-data/local-ipv4").1, "10.250.1.2");
    assert_eq!(f.get("/latest/meta-data/public-keys").1, "0=demo");
    assert_eq!(f.get("/latest/meta-data/public-keys/0").1, "openssh-key");
    assert_eq!(
        f.get("/latest/meta-data/public-keys/0/openssh-key").1,
        "ssh-ed25519 AAAA demo@example"
    );
    assert_eq!(
        f.get("/latest/meta-data/placement/availability-zone").1,
        "az1"
    );
    assert_eq!(f.get("/latest/meta-data/instance-type").1, "m1.small");
    assert_eq!(
        f.get("/latest/meta-data/block-device-mapping/root").1,
        "/dev/vda"
    );
    assert_eq!(
        f.get("/latest/user-data").1,
        "#cloud-config\nhostname: web1\n"
    );
    assert_eq!(f.get("/ec2/latest/meta-data/ami-launch-index").1, "0");
    assert_eq!(f.get("/latest//meta-data/./hostname/").1, "web1.novalocal");
    // Percent-escapes are decoded as webob does for Nova; a lone % stays.
    assert_eq!(f.get("/latest/meta-data/host%6Eame").1, "web1.novalocal");
    assert_eq!(
        f.get("/openstack/latest/meta%5Fdata.json").0,
        StatusCode::OK
    );
    assert_eq!(f.get("/latest/meta-data/%").0, StatusCode::NOT_FOUND);
    assert_eq!(f.get("/latest/meta-data/%4").0, StatusCode::NOT_FOUND);
    // Versions Nova does not know are 404: cloud-init falls back to 2009-04-04 on that.
    assert_eq!(
        f.get("/2016-09-02/meta-data/instance-id").0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        f.get("/1.0/meta-data/local-hostname").0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(f.get("/latest/meta-data/nothing").0, StatusCode::NOT_FOUND);
    assert_eq!(
        f.get("/latest/meta-data/hostname/deeper").0,
        StatusCode::NOT_FOUND
    );
    let (s, _, b) = f.call(
        "vm-2",
        Method::GET,
        "/latest/meta-data/security-groups",
        &[],
        "",
    );
    assert_eq!((s, &b[..]), (StatusCode::OK, &b"a\nb"[..]));
    let (s, _, _) = f.call(
        "vm-2",
        Method::GET,
        "/latest/meta-data/public-keys/",
        &[],
        "",
    );
    assert_eq!(s, StatusCode::NOT_FOUND, "no key, no public-keys (Nova)");
    let (s, _, _) = f.call("vm-2", Method::GET, "/latest/user-data", &[], "");
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, _, id) = f.call(
        "6b2c1e0a-1f7e-4c1e-9d9a-2f0c3e4b5a61",
        Method::GET,
        "/latest/meta-data/instance-id",
        &[],
        "",
    );
    assert_eq!(&id[..], b"i-6b2c1e0a");
}

#[test]
fn imds_v2_tokens() {
    let f = fixture(false);
    let ttl = "x-aws-ec2-metadata-token-ttl-seconds";
    let (s, h, token) = f.call(
        "vm-1",
        Method::PUT,
        "/latest/api/token",
        &[(ttl, "21600")],
        "",
    );
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.get(ttl).map(|v| v.as_bytes()), Some(&b"21600"[..]));
    let token = String::from_utf8(token.to_vec()).expect("utf8");
    assert!(token.len() >= 40);
    for bad in ["0", "21601", "abc", "-5", ""] {
        let (s, _, _) = f.call("vm-1", Method::PUT, "/latest/api/token", &[(ttl, bad)], "");
        assert_eq!(s, StatusCode::BAD_REQUEST, "ttl {bad:?}");
    }
    let (s, _, _) = f.call("vm-1", Method::PUT, "/latest/api/token", &[], "");
    assert_eq!(s, StatusCode::BAD_REQUEST, "ttl header missing");
    let (s, h, _) = f.call("vm-1", Method::GET, "/latest/api/token", &[], "");
    assert_eq!(
        (s, h.get("allow").map(|v| v.as_bytes())),
        (StatusCode::METHOD_NOT_ALLOWED, Some(&b"PUT"[..]))
    );

    let tok = "x-aws-ec2-metadata-token";
    let (s, _, b) = f.call(
        "vm-1",
        Method::GET,
        "/latest/meta-data/hostname",
        &[(tok, &token)],
        "",
    );
    assert_eq!((s, &b[..]), (StatusCode::OK, &b"web1.novalocal"[..]));
    let (s, _, _) = f.call(
        "vm-1",
        Method::GET,
        "/latest/meta-data/hostname",
        &[(tok, "forged")],
        "",
    );
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = f.call(
        "vm-2",
        Method::GET,
        "/latest/meta-data/hostname",
        &[(tok, &token)],
        "",
    );
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a token is bound to the instance that asked for it"
    );
    // Tokens are optional unless required.
    assert_eq!(f.get("/latest/meta-data/hostname").0, StatusCode::OK);
    f.b.tokens.expire_all();
    let (s, _, _) = f.call(
        "vm-1",
        Method::GET,
        "/latest/meta-data/hostname",
        &[(tok, &token)],
        "",
    );
    assert_eq!(s, StatusCode::UNAUTHORIZED, "expired");
}

#[test]
fn imds_v2_token_refused_through_a_guest_proxy() {
    let f = fixture(false);
    let ttl = "x-aws-ec2-metadata-token-ttl-seconds";
    let marker = ns_contract::headers::X_NS_METADATA_CLIENT_FORWARDED.wire;
    // The proxy marks a request that carried the guest's own X-Forwarded-For: 403, as AWS.
    let (s, _, body) = f.call(
        "vm-1",
        Method::PUT,
        "/latest/api/token",
        &[(ttl, "60"), (marker, "1")],
        "",
    );
    assert_eq!(s, StatusCode::FORBIDDEN, "{body:?}");
    // Without the mark the same PUT gets a token.
    let (s, _, token) = f.call("vm-1", Method::PUT, "/latest/api/token", &[(ttl, "60")], "");
    assert_eq!(s, StatusCode::OK);
    assert!(token.len() >= 40);
    // Other requests are unaffected by the mark.
    let (s, _, b) = f.call(
        "vm-1",
        Method::GET,
        "/latest/meta-data/hostname",
        &[(marker, "1")],
        "",
    );
    assert_eq!((s, &b[..]), (StatusCode::OK, &b"web1.novalocal"[..]));
}

#[test]
fn imds_v2_required() {
    let f = fixture(true);
    assert_eq!(
        f.get("/latest/meta-data/hostname").0,
        StatusCode::UNAUTHORIZED
    );
    // The OpenStack tree is Nova's and has no tokens; cloud-init's OpenStack reader must work.
    assert_eq!(f.get("/openstack/latest/meta_data.json").0, StatusCode::OK);
    let ttl = "x-aws-ec2-metadata-token-ttl-seconds";
    let (_, _, token) = f.call("vm-1", Method::PUT, "/latest/api/token", &[(ttl, "60")], "");
    let token = String::from_utf8(token.to_vec()).expect("utf8");
    let (s, _, _) = f.call(
        "vm-1",
        Method::GET,
        "/latest/meta-data/hostname",
        &[("x-aws-ec2-metadata-token", &token)],
        "",
    );
    assert_eq!(s, StatusCode::OK);
}

#[test]
fn password_set_once() {
    let f = fixture(false);
    assert_eq!(
        f.get("/openstack/latest/password"),
        (StatusCode::OK, String::new())
    );
    let (s, _, _) = f.call(
        "vm-1",
        Method::POST,
        "/openstack/latest/password",
        &[],
        "secret-blob",
    );
    assert_eq!(s, StatusCode::OK);
    assert_eq!(f.get("/openstack/latest/password").1, "secret-blob");
    let (s, _, _) = f.call(
        "vm-1",
        Method::POST,
        "/openstack/latest/password",
        &[],
        "again",
    );
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _, _) = f.call(
        "vm-2",
        Method::POST,
        "/openstack/latest/password",
        &[],
        &"x".repeat(1021),
    );
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = f.call(
        "vm-2",
        Method::DELETE,
        "/openstack/latest/password",
        &[],
        "",
    );
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        f.get("/openstack/2012-08-10/password").0,
        StatusCode::NOT_FOUND
    );
}

/// Mutated paths, methods, IMDSv2 headers and bodies against both trees (seeded;
/// `NS_FUZZ_SEED` replays): never a panic, only the statuses the README documents, never a
/// 5xx of the responder's own.
#[test]
fn mutated_requests_get_documented_statuses() {
    use ns_testkit::fuzz;
    const PATHS: &[&[u8]] = &[
        b"/openstack/latest/meta_data.json",
        b"/openstack/2012-08-10/user_data",
        b"/openstack/latest/network_data.json",
        b"/openstack/latest/password",
        b"/openstack/latest/vendor_data2.json",
        b"/latest/meta-data/public-keys/0/openssh-key",
        b"/2009-04-04/meta-data/block-device-mapping/ami",
        b"/latest/meta-data/network/interfaces/macs/fa:16:3e:00:00:02/local-ipv4s",
        b"/latest/api/token",
        b"/latest/user-data",
        b"/ec2/latest/meta-data/placement/availability-zone",
    ];
    const DICT: &[&[u8]] = &[
        b"/..",
        b"/.",
        b"//",
        b"%2e%2e",
        b"?x=1",
        b"#f",
        b"/0",
        b"/99999999999999999999",
        b"/-1",
        b"latest",
        b"meta-data",
    ];
    let methods = [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::POST,
        Method::DELETE,
    ];
    let ttls = ["21600", "0", "-1", "99999999999999999999", "1.5", "", "x"];
    for require_token in [false, true] {
        let f = fixture(require_token);
        fuzz::run("builtin", 0x5eed_0007, 1500, |rng, _| {
            let valid = *rng.pick(PATHS);
            let path = fuzz::mutate(rng, valid, DICT);
            let path = String::from_utf8_lossy(&path).into_owned();
            let method = rng.pick(&methods).clone();
            let mut headers = Vec::new();
            if rng.one_in(3) {
                headers.push(("X-aws-ec2-metadata-token-ttl-seconds", *rng.pick(&ttls)));
            }
            let n = rng.below(8);
            let token = String::from_utf8_lossy(&rng.bytes(n)).into_owned();
            if rng.one_in(4) && HeaderValue::from_str(&token).is_ok() {
                headers.push(("X-aws-ec2-metadata-token", token.as_str()));
            }
            let body = if rng.one_in(2) {
                let n = rng.below(300);
                "x".repeat(n)
            } else {
                String::new()
            };
            let uuid = if rng.one_in(2) { "vm-1" } else { "vm-2" };
            let (s, _, _) = f.call(uuid, method, &path, &headers, &body);
            assert!(
                matches!(s.as_u16(), 200 | 400 | 401 | 403 | 404 | 405 | 409 | 413),
                "{path:?}: {s}"
            );
        });
    }
}
