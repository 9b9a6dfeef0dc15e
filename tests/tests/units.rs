//! The example systemd units (examples/systemd) pass `systemd-analyze verify` with the
//! binaries at their ExecStart paths (here: this build's binaries, substituted for
//! `/usr/bin/`), and carry the hardening the issue "hardening" (item 10) asks for:
//! the agent and `proxy@` get `NoNewPrivileges`, `CapabilityBoundingSet`, `PrivateTmp`,
//! `ProtectSystem`; the spawner gets `NoNewPrivileges` and its capability set but nothing
//! that gives it a mount namespace of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use ns_e2e::{bin_path, require, unit_values as values, TempDir};

const UNITS: [&str; 3] = [
    "ns-metadata-agent.service",
    "ns-metadata-proxy@.service",
    "ns-metadata-spawner.service",
];

fn unit_text(name: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/systemd");
    std::fs::read_to_string(dir.join(name)).expect("unit")
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
        let text = unit_text(name).replace("/usr/bin/", &format!("{}/", bins.display()));
        // A template is verified as one of its instances.
        let file = dir.path().join(name.replace("@.", "@r1."));
        std::fs::write(&file, text).expect("write unit");
        paths.push(file);
    }
    // The Documentation= man pages are installed by the package, not on this host:
    // tests/tests/packaging.rs verifies them in the root it installs the package into.
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
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

/// The unit's ExecStart argv with this build's binaries and `config` for its `--config-file`.
fn exec_start(unit: &str, config: &Path) -> Vec<String> {
    let bins = bin_path("ns-metadata-spawner")
        .parent()
        .expect("target dir")
        .to_owned();
    let line = values(&unit_text(unit), "ExecStart").join(" ");
    line.split_whitespace()
        .map(|w| {
            if let Some(b) = w.strip_prefix("/usr/bin/") {
                bins.join(b).display().to_string()
            } else if w.starts_with("/etc/ns-metadata/") {
                config.display().to_string()
            } else {
                w.to_owned()
            }
        })
        .collect()
}

/// Run `argv` as systemd would for a `Type=notify` unit whose stderr is the journal: a
/// NOTIFY_SOCKET and a JOURNAL_STREAM naming the stderr pipe. Returns the first datagram
/// and, after SIGTERM, the exit code and what it wrote to stderr.
fn run_as_systemd(dir: &Path, bin: &str, argv: &[String]) -> (String, Option<i32>, String) {
    assert_eq!(
        Path::new(&argv[0]),
        bin_path(bin),
        "the unit runs {bin} from /usr/bin"
    );
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let notify = dir.join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&notify).expect("notify socket");
    rx.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .expect("timeout");
    let (r, w) = nix::unistd::pipe().expect("pipe");
    let mut r = std::fs::File::from(r);
    let m = std::fs::metadata(format!("/proc/self/fd/{}", w.as_raw_fd())).expect("stat pipe");
    let mut child = ns_e2e::ChildGuard(
        Command::new(bin_path(bin))
            .args(&argv[1..])
            .env("NOTIFY_SOCKET", &notify)
            .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(w)
            .spawn()
            .expect("spawn"),
    );
    let mut buf = [0u8; 512];
    let first = match rx.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => format!("no datagram: {e}"),
    };
    child.signal("TERM");
    let code = child.0.wait().ok().and_then(|s| s.code());
    let mut err = String::new();
    let _ = r.read_to_string(&mut err);
    (first, code, err)
}

/// Issue "the operator's view": CI has no systemd as PID 1, so each notify unit's ExecStart
/// is run by hand as systemd would: READY=1 arrives, log lines carry journald priorities,
/// SIGTERM exits 0.
#[test]
fn agent_and_spawner_execstart_say_ready_and_log_for_the_journal() {
    let dir = TempDir::new("units-exec");
    let agent_ini = dir.path().join("metadata_agent.ini");
    std::fs::write(
        &agent_ini,
        format!(
            "[DEFAULT]\nmetadata_proxy_socket = {}\ninventory_file = {}\n",
            dir.path().join("agent.sock").display(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../examples/inventory.json")
                .display()
        ),
    )
    .expect("agent ini");
    let (ready, code, err) = run_as_systemd(
        dir.path(),
        "ns-metadata-agent",
        &exec_start("ns-metadata-agent.service", &agent_ini),
    );
    assert_eq!(
        ready,
        "READY=1\nSTATUS=listening on ".to_owned()
            + &dir.path().join("agent.sock").display().to_string(),
        "{err}"
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !err.is_empty() && err.lines().all(|l| l.starts_with('<')),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("<6>") && l.contains("listening")),
        "{err}"
    );

    if !ns_e2e::require_root(
        "agent_and_spawner_execstart_say_ready_and_log_for_the_journal (spawner)",
    ) {
        return;
    }
    let sdir = TempDir::new("units-exec-spawner");
    let spawner_ini = sdir.path().join("spawner.ini");
    std::fs::write(
        &spawner_ini,
        format!(
            "[DEFAULT]\nmetadata_proxy_socket = {}\n[spawner]\nstate_dir = {}\nproxy_binary = {}\n",
            sdir.path().join("agent.sock").display(),
            sdir.path().join("state").display(),
            bin_path("ns-metadata-proxy").display()
        ),
    )
    .expect("spawner ini");
    let (ready, code, err) = run_as_systemd(
        sdir.path(),
        "ns-metadata-spawner",
        &exec_start("ns-metadata-spawner.service", &spawner_ini),
    );
    assert_eq!(ready, "READY=1", "{err}");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        !err.is_empty() && err.lines().all(|l| l.starts_with('<')),
        "{err}"
    );
}
