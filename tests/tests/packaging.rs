//! The Debian package (issue #18), as an operator meets it: `packaging/build-deb.sh` builds
//! it from this test build's binaries, and it is installed into a throwaway Debian 12 root
//! made with debootstrap (never onto this host), where the test checks the file list, the
//! conffiles, `man ns-metadata-spawner`, the bash completion, `systemd-analyze verify
//! --root` on the installed units, that installing made no haproxy link, and that a purge
//! leaves nothing behind. The root is removed by a guard, also when the test fails.
//!
//! Needs root, cargo-deb (`.ci/run` installs the pinned version), debootstrap and the apt
//! mirror of this machine (`NS_DEBIAN_MIRROR` overrides it); prints SKIP otherwise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ns_e2e::{bin_path, require, require_root, unit_values as values, TempDir};

const TEST: &str = "deb_package_installs_into_a_fresh_debian_root";
const BINS: [&str; 3] = [
    "ns-metadata-agent",
    "ns-metadata-spawner",
    "ns-metadata-proxy",
];
const UNITS: [&str; 3] = [
    "ns-metadata-agent.service",
    "ns-metadata-spawner.service",
    "ns-metadata-proxy@.service",
];
const CONFFILES: [&str; 3] = [
    "/etc/ns-metadata/metadata_agent.ini",
    "/etc/ns-metadata/spawner.ini",
    "/etc/ns-metadata/proxy.ini",
];
/// Programs inside the root come from its own packages; this PATH finds them there.
const ROOT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cargo-deb` on PATH or in cargo's own bin directory (where `cargo install` puts it).
fn cargo_deb_dir() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(cargo_home.map(|h| h.join("bin")))
        .find(|d| d.join("cargo-deb").is_file())
}

/// The Debian mirror this machine's apt uses (deb822 `URIs:` or a one-line `deb URI`).
fn mirror() -> Option<String> {
    if let Some(m) = std::env::var_os("NS_DEBIAN_MIRROR") {
        return Some(m.to_string_lossy().into_owned());
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files.iter().find_map(|f| {
        let text = std::fs::read_to_string(f).ok()?;
        text.lines().find_map(|l| {
            let l = l.trim();
            let uri = l
                .strip_prefix("URIs:")
                .or_else(|| l.strip_prefix("deb "))?
                .split_whitespace()
                .find(|w| w.starts_with("http"))?;
            // The main archive, not the security one (debootstrap wants bookworm itself).
            (!uri.contains("security")).then(|| uri.to_owned())
        })
    })
}

/// The throwaway root: removed on drop, after detaching anything still mounted under it
/// (debootstrap mounts /proc and /sys inside while it runs, and a failure can leave them).
/// It never removes a tree that still has a mount under it.
struct Root {
    dir: Option<TempDir>,
    path: PathBuf,
}

impl Root {
    fn new() -> Root {
        let dir = TempDir::new("pkg-root");
        let path = dir.path().to_owned();
        Root {
            dir: Some(dir),
            path,
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Mount points at or under the root, deepest first.
    fn mounts(&self) -> Vec<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut m: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(self.path()))
            .collect();
        m.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        m
    }

    /// None of `paths` (relative to the root) exists, not even as a dangling link.
    fn assert_absent(&self, paths: &[&str], when: &str) {
        for p in paths {
            let found = std::fs::symlink_metadata(self.path.join(p)).is_ok();
            assert!(!found, "/{p} exists {when}");
        }
    }

    /// `chroot ROOT argv...` with a clean environment; its output.
    fn run(&self, argv: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new("chroot")
            .arg(self.path())
            .args(argv)
            .env_clear()
            .env("PATH", ROOT_PATH)
            .env("LC_ALL", "C")
            .envs(env.iter().copied())
            .output()
            .expect("run chroot")
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for m in self.mounts() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        let left = self.mounts();
        if !left.is_empty() {
            // Never rm -r through a mount into the host's /proc or /sys.
            eprintln!(
                "packaging: {} still has mounts {left:?}; leaving it",
                self.path().display()
            );
            std::mem::forget(self.dir.take());
        }
    }
}

/// Paths (without the leading `.`) in the .deb, from `dpkg-deb --contents`.
fn contents(deb: &Path) -> BTreeSet<String> {
    let out = ok(
        Command::new("dpkg-deb")
            .arg("--contents")
            .arg(deb)
            .output()
            .expect("run dpkg-deb"),
        "dpkg-deb --contents",
    );
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').trim_end_matches('/').to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

#[test]
fn deb_package_installs_into_a_fresh_debian_root() {
    if !require_root(TEST) {
        return;
    }
    let cargo_deb = cargo_deb_dir();
    let mirror = mirror();
    if !require(
        TEST,
        cargo_deb.is_some(),
        "cargo-deb (.ci/run installs the pinned version)",
    ) || !require(
        TEST,
        Path::new("/usr/sbin/debootstrap").exists(),
        "debootstrap (package debootstrap)",
    ) || !require(
        TEST,
        mirror.is_some(),
        "an apt mirror in /etc/apt/sources.list*",
    ) {
        return;
    }
    let (cargo_deb, mirror) = (cargo_deb.unwrap_or_default(), mirror.unwrap_or_default());

    // 1. Build the package from the binaries this test run was built with.
    let bins = bin_path("ns-metadata-spawner")
        .parent()
        .expect("bin dir")
        .to_owned();
    let target = bins.parent().expect("target dir").to_owned();
    let profile = match bins.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(p) => p.to_owned(),
    };
    let work = TempDir::new("pkg");
    let path = format!(
        "{}:{}",
        cargo_deb.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = ok(
        Command::new("bash")
            .arg(repo().join("packaging/build-deb.sh"))
            .args(["--profile", &profile, "--no-build", "-o"])
            .arg(work.path())
            .current_dir(repo())
            .env("CARGO_TARGET_DIR", &target)
            .env("PATH", path)
            .output()
            .expect("run packaging/build-deb.sh"),
        "packaging/build-deb.sh",
    );
    let deb = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    assert!(deb.is_file(), "no .deb at {deb:?}: {out}");

    // 2. What is in it: every path the units name (programs, Documentation=), the man pages
    // and completions, README.Debian; nothing under /usr/local, no haproxy.
    let files = contents(&deb);
    let mut want: Vec<String> = Vec::new();
    for b in BINS {
        want.push(format!("/usr/bin/{b}"));
        want.push(format!("/usr/share/man/man8/{b}.8.gz"));
        want.push(format!("/usr/share/bash-completion/completions/{b}"));
        want.push(format!("/usr/share/zsh/vendor-completions/_{b}"));
        want.push(format!("/usr/share/fish/vendor_completions.d/{b}.fish"));
    }
    for page in [
        "run",
        "router-add",
        "network-put",
        "status",
        "check",
        "probe",
    ] {
        want.push(format!(
            "/usr/share/man/man8/ns-metadata-spawner-{page}.8.gz"
        ));
    }
    let repo_units = repo().join("examples/systemd");
    for u in UNITS {
        want.push(format!("/lib/systemd/system/{u}"));
        let unit = std::fs::read_to_string(repo_units.join(u)).expect("unit");
        for doc in values(&unit, "Documentation").join(" ").split_whitespace() {
            if let Some(f) = doc.strip_prefix("file://") {
                want.push(f.to_owned());
            } else if let Some(m) = doc.strip_prefix("man:") {
                let (page, sect) = m.trim_end_matches(')').split_once('(').expect("man:x(n)");
                want.push(format!("/usr/share/man/man{sect}/{page}.{sect}.gz"));
            }
        }
        for exec in ["ExecStart", "ExecReload"] {
            for line in values(&unit, exec) {
                let prog = line
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if prog.contains("ns-metadata") {
                    want.push(prog);
                }
            }
        }
    }
    want.extend(CONFFILES.iter().map(|c| c.to_string()));
    want.push("/usr/share/doc/ns-metadata/README.Debian".into());
    let missing: Vec<&String> = want.iter().filter(|w| !files.contains(*w)).collect();
    assert!(
        missing.is_empty(),
        "missing from the package: {missing:?}\nit has: {files:#?}"
    );
    let stray: Vec<&String> = files
        .iter()
        .filter(|f| f.starts_with("/usr/local") || f.ends_with("/haproxy"))
        .collect();
    assert!(stray.is_empty(), "the package must not ship {stray:?}");

    // 3. A fresh Debian 12 with what a host running it has (systemd; man-db to read pages).
    let root = Root::new();
    let started = std::time::Instant::now();
    ok(
        Command::new("debootstrap")
            .args([
                "--variant=minbase",
                "--include=man-db,systemd,procps",
                "bookworm",
            ])
            .arg(root.path())
            .arg(&mirror)
            .output()
            .expect("run debootstrap"),
        "debootstrap",
    );
    eprintln!(
        "packaging: debootstrap from {mirror} took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::copy(&deb, root.path().join("tmp/ns-metadata.deb")).expect("copy .deb");
    ok(
        root.run(&["dpkg", "-i", "/tmp/ns-metadata.deb"], &[]),
        "dpkg -i",
    );

    // 4. The conffiles dpkg recorded: the sample INIs, which an upgrade will not overwrite.
    let conffiles =
        std::fs::read_to_string(root.path().join("var/lib/dpkg/info/ns-metadata.conffiles"))
            .expect("conffiles");
    let got: BTreeSet<&str> = conffiles.lines().map(str::trim).collect();
    assert_eq!(got, CONFFILES.into_iter().collect(), "{conffiles}");

    // 5. `man ns-metadata-spawner` shows the page, and it lists what `--help` lists.
    let man = ok(
        root.run(
            &["man", "ns-metadata-spawner"],
            &[("MANPAGER", "cat"), ("MANWIDTH", "200")],
        ),
        "man ns-metadata-spawner",
    );
    let help = ok(
        root.run(&["/usr/bin/ns-metadata-spawner", "--help"], &[]),
        "ns-metadata-spawner --help",
    );
    assert!(
        man.contains("NAME") && man.contains("ns-metadata-spawner"),
        "{man}"
    );
    let subcommands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(subcommands.contains(&"run"), "{help}");
    for c in &subcommands {
        assert!(
            man.contains(&format!("ns-metadata-spawner-{c}(8)")),
            "`{c}` from --help is not in the man page:\n{man}"
        );
    }
    let run = ok(
        root.run(
            &["man", "8", "ns-metadata-spawner-run"],
            &[("MANPAGER", "cat"), ("MANWIDTH", "200")],
        ),
        "man ns-metadata-spawner-run",
    );
    assert!(run.contains("--stop-proxies-on-exit"), "{run}");

    // 6. The bash completion loads and completes a subcommand.
    let script = "source /usr/share/bash-completion/completions/ns-metadata-spawner\n\
        f=$(complete -p ns-metadata-spawner | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p')\n\
        COMP_WORDS=(ns-metadata-spawner rou); COMP_CWORD=1\n\
        COMP_LINE='ns-metadata-spawner rou'; COMP_POINT=${#COMP_LINE}\n\
        \"$f\" ns-metadata-spawner rou ns-metadata-spawner\n\
        printf '%s\\n' \"${COMPREPLY[@]}\"";
    let words = ok(root.run(&["bash", "-c", script], &[]), "bash completion");
    assert_eq!(
        words.split_whitespace().collect::<Vec<_>>(),
        ["router"],
        "{words}"
    );

    // 7. The installed units verify against the installed root: ExecStart paths, and the
    // Documentation= man pages (systemd-analyze runs `man`; MANPATH points it at the root's).
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .env("MANPATH", root.path().join("usr/share/man"))
        .args([
            "ns-metadata-agent.service",
            "ns-metadata-spawner.service",
            "ns-metadata-proxy@r1.service",
        ])
        .output()
        .expect("run systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success() && err.trim().is_empty(),
        "{}",
        text(&out)
    );

    // 8. Installing made no haproxy link and diverted nothing: the drop-in is opt-in.
    root.assert_absent(
        &[
            "usr/local/sbin/haproxy",
            "usr/local/bin/haproxy",
            "usr/sbin/haproxy",
        ],
        "after installing",
    );
    let diversions = ok(root.run(&["dpkg-divert", "--list"], &[]), "dpkg-divert");
    assert!(!diversions.contains("haproxy"), "{diversions}");

    // 9. Purge leaves neither the binaries nor the conffiles.
    ok(
        root.run(&["dpkg", "--purge", "ns-metadata"], &[]),
        "dpkg --purge",
    );
    root.assert_absent(
        &[
            "usr/bin/ns-metadata-spawner",
            "etc/ns-metadata",
            "lib/systemd/system/ns-metadata-agent.service",
        ],
        "after purge",
    );
}
