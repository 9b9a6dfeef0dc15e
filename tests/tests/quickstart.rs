//! `examples/quickstart.sh --once` (the README's first command) runs the whole demo and leaves
//! nothing behind. It reuses the binaries this test run was built with (`--bin-dir`, documented
//! in the script) instead of the script's release build, which would take minutes. Root only.
//!
//! The machine is not assumed to be the test's: "left behind" means this run's namespaces
//! (named with the run id the script prints) and processes that were not running before it
//! started and carry this run's ids or work dir, so someone else's demo never counts.
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use ns_e2e::{bin_path, require_root};
use ns_testkit::proc::pids_mentioning;

/// The instances' ids (examples/inventory.json; the script keeps them).
const VM1: &str = "de0e1000-0000-4000-8000-000000000001";
const VM2: &str = "de0e2000-0000-4000-8000-000000000001";
/// The router's and the isolated network's ids in examples/inventory.json; the script
/// replaces their last group with the run id.
const ROUTER: &str = "de0a1000-0000-4000-8000-000000000001";
const NET: &str = "de0b2000-0000-4000-8000-000000000001";

/// `id` with its last group replaced by `run` (the script's `run_id`).
fn run_id(id: &str, run: &str) -> String {
    let (head, _) = id.rsplit_once('-').expect("uuid-shaped id");
    format!("{head}-{run}")
}

/// Pids of live processes whose command line mentions any of `needles`.
fn pids_with(needles: &[String]) -> HashSet<u32> {
    needles.iter().flat_map(|n| pids_mentioning(n)).collect()
}

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
    // What already runs with the demo's ids (someone else's demo) never counts as ours.
    let fixed = [ROUTER.to_owned(), NET.to_owned()];
    let running_before = pids_with(&fixed);
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
    let work = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("work dir: "))
        .and_then(|l| l.split_whitespace().next())
        .expect("work dir printed");
    // This run's ids: the script's run id when it prints one, else the inventory's.
    let run = stdout
        .lines()
        .find_map(|l| l.split("run id: ").nth(1))
        .and_then(|l| l.split_whitespace().next());
    let ours: Vec<String> = match run {
        Some(run) => vec![run_id(ROUTER, run), run_id(NET, run)],
        None => fixed.to_vec(),
    };
    let after = namespaces();
    for ns in vm_namespaces.iter().map(|s| s.to_string()).chain(
        ours.iter()
            .flat_map(|id| [format!("qrouter-{id}"), format!("qdhcp-{id}")]),
    ) {
        assert!(!after.contains(&ns), "namespace {ns} left behind: {after}");
    }
    let mut needles = ours.clone();
    needles.push(work.to_owned());
    let leftover: Vec<u32> = pids_with(&needles)
        .difference(&running_before)
        .copied()
        .collect();
    assert!(
        leftover.is_empty(),
        "processes of this run left running: {leftover:?}"
    );
    assert!(!Path::new(work).exists(), "{work} not removed");
}
