//! The example systemd units (examples/systemd) pass `systemd-analyze verify` with the
//! binaries at their ExecStart paths (here: this build's binaries, substituted for
//! `/usr/local/bin/`), and carry the hardening the issue "hardening" (item 10) asks for:
//! the agent and `proxy@` get `NoNewPrivileges`, `CapabilityBoundingSet`, `PrivateTmp`,
//! `ProtectSystem`; the spawner gets `NoNewPrivileges` and its capability set but nothing
//! that gives it a mount namespace of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use ns_e2e::{bin_path, require, TempDir};

const UNITS: [&str; 3] = [
    "ns-metadata-agent.service",
    "ns-metadata-proxy@.service",
    "ns-metadata-spawner.service",
];

fn unit_text(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/systemd");
    std::fs::read_to_string(dir.join(name)).expect("unit")
}

/// `Key=value` lines of the unit (continuations joined), for the key.
fn values(text: &str, key: &str) -> Vec<String> {
    text.replace("\\\n", " ")
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
        .collect()
}

#[test]
fn example_units_verify_with_systemd_analyze() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !require(
        "example_units_verify_with_systemd_analyze",
        analyze.exists(),
        "systemd-analyze (package systemd)",
    ) {
        return;
    }
    let dir = TempDir::new("units");
    let bins: PathBuf = bin_path("ns-metadata-spawner")
        .parent()
        .expect("target dir")
        .to_owned();
    let mut paths = Vec::new();
    for name in UNITS {
        let text = unit_text(name).replace("/usr/local/bin/", &format!("{}/", bins.display()));
        // A template is verified as one of its instances.
        let file = dir.path().join(name.replace("@.", "@r1."));
        std::fs::write(&file, text).expect("write unit");
        paths.push(file);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("run systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    // Lines about the host's own units (a container without some of them) are not ours.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("ns-metadata")).collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
}

#[test]
fn units_carry_the_hardening_options() {
    for name in ["ns-metadata-agent.service", "ns-metadata-proxy@.service"] {
        let t = unit_text(name);
        for key in [
            "NoNewPrivileges",
            "CapabilityBoundingSet",
            "PrivateTmp",
            "ProtectSystem",
        ] {
            assert!(!values(&t, key).is_empty(), "{name}: {key}");
        }
    }
    // The agent says READY; it must not chown Neutron's state dir to root.
    let agent = unit_text("ns-metadata-agent.service");
    assert_eq!(values(&agent, "Type"), ["notify"]);
    assert!(values(&agent, "StateDirectory").is_empty());
    let t = unit_text("ns-metadata-spawner.service");
    assert_eq!(values(&t, "NoNewPrivileges"), ["yes"]);
    let caps: Vec<String> = values(&t, "CapabilityBoundingSet")
        .join(" ")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for cap in [
        "CAP_SYS_ADMIN",
        "CAP_NET_ADMIN",
        "CAP_NET_BIND_SERVICE",
        "CAP_KILL",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_SYS_PTRACE",
    ] {
        assert!(
            caps.iter().any(|c| c == cap),
            "spawner lacks {cap}: {caps:?}"
        );
    }
    // The namespaces it prepares under /run/netns must be the host's.
    for key in [
        "PrivateTmp",
        "ProtectSystem",
        "PrivateMounts",
        "ProtectHome",
        "ReadOnlyPaths",
        "TemporaryFileSystem",
        "PrivateDevices",
        "PrivateNetwork",
        "MountFlags",
    ] {
        assert!(values(&t, key).is_empty(), "spawner must not set {key}");
    }
    assert_eq!(values(&t, "KillMode"), ["process"]);
}
