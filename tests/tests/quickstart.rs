//! `examples/quickstart.sh --once` (the README's first command) runs the whole demo and leaves
//! nothing behind. It reuses the binaries this test run was built with (`--bin-dir`, documented
//! in the script) instead of the script's release build, which would take minutes. Root only.
use std::path::Path;
use std::process::Command;

use ns_e2e::{bin_path, require_root};

/// The demo's fixed ids (examples/inventory.json).
const VM1: &str = "de0e1000-0000-4000-8000-000000000001";
const VM2: &str = "de0e2000-0000-4000-8000-000000000001";
const ROUTER: &str = "de0a1000-0000-4000-8000-000000000001";
const NET: &str = "de0b2000-0000-4000-8000-000000000001";

fn namespaces() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn quickstart_once_prints_both_vms_metadata_and_cleans_up() {
    if !require_root("quickstart_once_prints_both_vms_metadata_and_cleans_up") {
        return;
    }
    let bin_dir = bin_path("ns-metadata-spawner")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart.sh");
    let before = namespaces();
    assert!(
        !before.contains(ROUTER) && !before.contains(NET),
        "the demo's namespaces already exist (is a demo running?): {before}"
    );
    let out = Command::new("bash")
        .arg(&script)
        .arg("--once")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .output()
        .expect("run examples/quickstart.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quickstart failed ({:?})\n{stdout}\n{stderr}",
        out.status
    );

    // What a newcomer must see: each VM's identity from both trees, and the spawner's status.
    for vm in [VM1, VM2] {
        assert!(
            stdout.matches(vm).count() >= 2,
            "{vm} missing from the metadata printed:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("\"uuid\""),
        "meta_data.json not printed:\n{stdout}"
    );
    assert!(
        stdout.contains("running"),
        "spawner status with running proxies not printed:\n{stdout}"
    );

    // Nothing left behind: namespaces, processes, the work directory.
    let vm_namespaces: Vec<&str> = stdout
        .split_whitespace()
        .filter(|w| w.starts_with("qs") && (w.ends_with("-vm1") || w.ends_with("-vm2")))
        .collect();
    assert!(
        !vm_namespaces.is_empty(),
        "vm namespaces not printed:\n{stdout}"
    );
    let after = namespaces();
    for ns in vm_namespaces.iter().copied().chain([ROUTER, NET]) {
        assert!(!after.contains(ns), "namespace {ns} left behind: {after}");
    }
    let leftover = ns_e2e::procs::proxies_of(&[ROUTER.to_owned(), NET.to_owned()]);
    assert!(leftover.is_empty(), "proxies left running: {leftover:?}");
    let work = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("work dir: "))
        .and_then(|l| l.split_whitespace().next())
        .expect("work dir printed");
    assert!(!Path::new(work).exists(), "{work} not removed");
}
