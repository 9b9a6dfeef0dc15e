//! Skips look the same everywhere: `SKIP <test>: <reason>` written straight to the process's
//! stderr (libtest's capture does not hide it), and under `CI=true` a skip is a failure.
use std::io::Write as _;

/// Whether the environment demands that skips fail (`CI=true`).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skip `test` for `reason`: print `SKIP test: reason`, or panic under `CI=true`.
pub fn skip(test: &str, reason: &str) {
    assert!(!ci(), "{test}: {reason}, and CI=true forbids skipping");
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// True when running as root (effective uid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// True if root; else skips `test` ("needs root") and returns false.
pub fn require_root(test: &str) -> bool {
    require(test, is_root(), "root")
}

/// True if `ok`; else skips `test` ("needs WHAT") and returns false.
pub fn require(test: &str, ok: bool, what: &str) -> bool {
    if !ok {
        skip(test, &format!("needs {what}"));
    }
    ok
}
