//! The commit the binaries are built from, for `--version` and `build_info`: `NS_GIT_COMMIT`
//! from the environment (packagers building from a tarball), else `git rev-parse`, else
//! "unknown". Only files that exist are watched, so a build without git is not redone each time.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=NS_GIT_COMMIT");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("../..");
    let commit = std::env::var("NS_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&root, &["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=NS_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a branch switch) and the ref it names (a commit).
    if let Some(dir) = git(&root, &["rev-parse", "--absolute-git-dir"]) {
        let dir = PathBuf::from(dir);
        let mut watch = vec![dir.join("HEAD"), dir.join("packed-refs")];
        if let Some(r) = git(&root, &["symbolic-ref", "-q", "HEAD"]) {
            watch.push(dir.join(&r));
            if let Some(common) = git(&root, &["rev-parse", "--git-common-dir"]) {
                watch.push(root.join(common).join(r));
            }
        }
        for p in watch.into_iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}
