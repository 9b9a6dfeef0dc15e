//! botocore's own IMDS clients (the code every AWS SDK-based tool in a guest runs) inside a `vm`
//! namespace against the real stack: spawner -> proxy -> agent's built-in responder. IMDSv2:
//! PUT /latest/api/token, then GETs with the token over one kept-alive connection. Root only;
//! botocore comes from the venv at $NS_BOTOCORE_VENV (default /opt/ns-metadata-ci/botocore).
use std::path::PathBuf;
use std::process::{Command, Stdio};

use ns_e2e::require_root;
use ns_e2e::world::{Modes, Upstream, World};
use serde_json::Value;

/// Runs botocore's fetchers against http://169.254.169.254 and prints one JSON line.
const SCRIPT: &str = r#"
import json, logging, sys
from botocore.utils import InstanceMetadataFetcher, InstanceMetadataRegionFetcher
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
f = InstanceMetadataFetcher(timeout=5, num_attempts=2)
token = f._fetch_metadata_token()
out = {"token": token}
for key, path in [("instance_id", "latest/meta-data/instance-id"),
                  ("az", "latest/meta-data/placement/availability-zone"),
                  ("local_ipv4", "latest/meta-data/local-ipv4"),
                  ("hostname", "latest/meta-data/hostname")]:
    r = f._get_request(path, None, token)
    out[key] = r.text
out["iam"] = f.retrieve_iam_role_credentials()
out["region"] = InstanceMetadataRegionFetcher(timeout=5, num_attempts=2).retrieve_region()
print(json.dumps(out))
"#;

fn venv_python(test: &str) -> Option<PathBuf> {
    let venv =
        std::env::var("NS_BOTOCORE_VENV").unwrap_or_else(|_| "/opt/ns-metadata-ci/botocore".into());
    let python = PathBuf::from(venv).join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import botocore.utils"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ns_e2e::require(test, ok, &format!("botocore at {}", python.display())).then_some(python)
}

/// Run [`SCRIPT`] in `ns`; its JSON, or a panic with botocore's debug log.
fn botocore_in(ns: &str, python: &PathBuf) -> Value {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "env",
            "-u",
            "HTTP_PROXY",
            "-u",
            "http_proxy",
        ])
        .args([
            "-u",
            "NO_PROXY",
            "-u",
            "no_proxy",
            "AWS_EC2_METADATA_DISABLED=false",
        ])
        .arg(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::null())
        .output()
        .expect("run botocore in the vm namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "botocore failed: {stdout}\n{stderr}");
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("botocore printed no JSON ({e}): {stdout}\n{stderr}"))
}

fn check(world: &World, python: &PathBuf, token_required: bool) {
    let vm = world.vm("vm1");
    let got = botocore_in(&vm.ns, python);
    let token = got["token"].as_str().unwrap_or_default();
    assert!(
        !token.is_empty(),
        "botocore got no IMDSv2 token from PUT /latest/api/token: {got}"
    );
    let expected_id = format!(
        "i-{}",
        vm.instance
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(8)
            .collect::<String>()
    );
    assert_eq!(got["instance_id"], expected_id.as_str(), "{got}");
    assert_eq!(got["az"], "nova", "{got}");
    assert_eq!(got["local_ipv4"], vm.ip.as_str(), "{got}");
    assert!(
        got["hostname"]
            .as_str()
            .is_some_and(|h| h.starts_with(vm.name)),
        "{got}"
    );
    // No IAM role in the built-in responder: botocore's fetcher reports none, without error.
    assert_eq!(got["iam"], serde_json::json!({}), "{got}");
    // botocore derives the region from the availability zone minus its last letter.
    assert_eq!(
        got["region"], "nov",
        "botocore's region fetcher (GET .../availability-zone/ with a trailing slash): {got}\n(token required: {token_required})"
    );
}

#[test]
fn botocore_imdsv2_fetchers_read_the_builtin_responder() {
    let test = "botocore_imdsv2_fetchers_read_the_builtin_responder";
    if !require_root(test) {
        return;
    }
    let Some(python) = venv_python(test) else {
        return;
    };
    let world = World::build("boto", 110, Modes::ROUTER, Upstream::Builtin);
    world.wait_answering("/latest/meta-data/instance-id");
    check(&world, &python, false);
}

#[test]
fn botocore_works_when_the_agent_requires_imdsv2_tokens() {
    let test = "botocore_works_when_the_agent_requires_imdsv2_tokens";
    if !require_root(test) {
        return;
    }
    let Some(python) = venv_python(test) else {
        return;
    };
    let world = World::build_with(
        "botov2",
        113,
        Modes::ROUTER,
        Upstream::Builtin,
        "imds_require_token = true\n",
    );
    world.wait_answering("/latest/meta-data/instance-id");
    let vm = world.vm("vm1");
    // Without a token an EC2 path is refused (as EC2 does with HttpTokens=required).
    let bare = ns_e2e::client::get(&vm.ns, "/latest/meta-data/instance-id");
    assert_eq!(bare.status, 401, "tokenless EC2 request: {bare:?}");
    check(&world, &python, true);
}
