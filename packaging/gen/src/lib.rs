//! Man pages and shell completions for the three binaries, generated from each binary's own
//! `command()` (the clap definition its `--help` prints), so the packaged docs cannot drift
//! from the program. Run at package build time by `packaging/build-deb.sh`; nothing here is
//! installed.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Command;
use clap_complete::Shell;

/// Section 8 (system administration): all three run as root daemons or talk to a root-only
/// control socket.
pub const MAN_SECTION: &str = "8";

/// The shells we ship completions for, each with the directory Debian's packages of that
/// shell load vendor completions from, and the file name it expects there.
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "usr/share/bash-completion/completions"),
    (Shell::Zsh, "usr/share/zsh/vendor-completions"),
    (Shell::Fish, "usr/share/fish/vendor_completions.d"),
];

/// Each binary's command line, as its `main` parses it.
pub fn commands() -> Vec<Command> {
    vec![
        ns_metadata_proxy::config::command(),
        ns_metadata_spawner::cli::command(),
        ns_metadata_agent::config::command(),
    ]
}

/// The file a shell loads completions for `bin` from, relative to its directory.
pub fn completion_file(shell: Shell, bin: &str) -> String {
    match shell {
        Shell::Zsh => format!("_{bin}"),
        Shell::Fish => format!("{bin}.fish"),
        _ => bin.to_owned(),
    }
}

/// One man page per command and per visible subcommand (`ns-metadata-spawner-run.8`, ...),
/// written to `dir`; returns the files written.
pub fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(cmd: &Command, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        let page = clap_mangen::Man::new(cmd.clone())
            .section(MAN_SECTION)
            .manual("ns-metadata")
            .source(format!("ns-metadata {}", env!("CARGO_PKG_VERSION")));
        let file = page
            .generate_to(dir)
            .with_context(|| format!("write {}", dir.join(page.get_filename()).display()))?;
        out.push(file);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, dir, out)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut out = Vec::new();
    for cmd in commands() {
        // Built, so that subcommands carry their full names (`ns-metadata-spawner-run`); the
        // `help` subcommand is clap's, not a page of its own.
        let mut cmd = cmd.disable_help_subcommand(true);
        cmd.build();
        walk(&cmd, dir, &mut out)?;
    }
    Ok(out)
}

/// Completions for every shell in [`SHELLS`], under `root/<the shell's directory>/`;
/// returns the files written.
pub fn completions(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (shell, sub) in SHELLS {
        let dir = root.join(sub);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        for mut cmd in commands() {
            let bin = cmd.get_name().to_owned();
            let file = dir.join(completion_file(shell, &bin));
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cmd, &bin, &mut text);
            std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
            out.push(file);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ns-gen-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Every visible long flag of every (sub)command is on its page: the page is the same
    /// definition `--help` prints, not a copy that can fall behind.
    #[test]
    fn every_flag_of_every_subcommand_is_on_its_man_page() {
        let dir = tmp("man");
        let files = man_pages(&dir).expect("man pages");
        fn check(cmd: &Command, dir: &Path, seen: &mut usize) {
            let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_owned();
            let page = std::fs::read_to_string(dir.join(format!("{name}.{MAN_SECTION}")))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                page.starts_with(".ie") || page.contains(".TH"),
                "{name}: not roff"
            );
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(long) = arg.get_long() {
                    // roff escapes '-' as '\-'.
                    let roff = format!("\\-\\-{}", long.replace('-', "\\-"));
                    assert!(page.contains(&roff), "{name}: --{long} missing");
                }
            }
            *seen += 1;
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                check(sub, dir, seen);
            }
        }
        let mut seen = 0;
        for cmd in commands() {
            let mut cmd = cmd.disable_help_subcommand(true);
            cmd.build();
            check(&cmd, &dir, &mut seen);
        }
        assert_eq!(seen, files.len());
        for page in [
            "ns-metadata-spawner-run.8",
            "ns-metadata-spawner-router-add.8",
        ] {
            assert!(dir.join(page).exists(), "{page}");
        }
        assert!(!dir.join("ns-metadata-spawner-help.8").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn completions_name_each_binary_and_its_subcommands() {
        let dir = tmp("comp");
        let files = completions(&dir).expect("completions");
        assert_eq!(files.len(), SHELLS.len() * 3);
        let bash = std::fs::read_to_string(
            dir.join("usr/share/bash-completion/completions/ns-metadata-spawner"),
        )
        .expect("bash");
        assert!(bash.contains("complete -F"), "{bash}");
        for word in ["run", "router", "network", "status", "--config-file"] {
            assert!(bash.contains(word), "{word}");
        }
        assert!(dir
            .join("usr/share/zsh/vendor-completions/_ns-metadata-agent")
            .exists());
        assert!(dir
            .join("usr/share/fish/vendor_completions.d/ns-metadata-proxy.fish")
            .exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
