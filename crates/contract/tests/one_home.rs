//! The contract's facts are defined only in this crate: no other crate's
//! product code spells an identity header, the keep-alive header, the agent socket default or
//! the id rule's character test. Tests and comments may quote them; product code imports them.

use std::path::{Path, PathBuf};

/// Header names: a quoted name (`"x-forwarded-for"`) or a header line (`X-Forwarded-For: `)
/// in another crate's product code is a second definition. Prose (help text, messages)
/// may name them.
const HEADERS: &[&str] = &[
    "x-forwarded-for",
    "x-neutron-router-id",
    "x-neutron-network-id",
    "x-ovn-network-id",
    "x-instance-id",
    "x-instance-id-signature",
    "x-tenant-id",
    "x-ns-metadata-keepalive",
    "x-ns-metadata-client-forwarded",
];

/// Other spellings that must not appear in another crate's product code (compared
/// ignoring case).
const FACTS: &[(&str, &str)] = &[
    ("/var/lib/neutron/metadata_proxy", "agent socket default"),
    ("\"metadata_proxy\"", "agent socket default"),
    ("/metadata_proxy\"", "agent socket default"),
    ("\"/var/lib/neutron\"", "state_path default"),
    ("\"qrouter-\"", "namespace prefix"),
    ("\"qdhcp-\"", "namespace prefix"),
    ("\"ovnmeta-\"", "namespace prefix"),
    ("b == b'-' || b == b'_'", "id rule"),
    ("network:router_interface\"", "router interface owners"),
];

/// The facts a line spells, as (what, spelling).
fn facts_in(line: &str) -> Vec<(&'static str, String)> {
    let lower = line.to_ascii_lowercase();
    let mut out = Vec::new();
    for h in HEADERS {
        for form in [format!("\"{h}\""), format!("\"{h}:"), format!(" {h}:")] {
            if lower.contains(&form) {
                out.push(("header name", form));
            }
        }
    }
    for (fact, what) in FACTS {
        if lower.contains(fact) {
            out.push((*what, (*fact).to_owned()));
        }
    }
    out
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/contract is two levels below the workspace")
        .to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Product code of a file: comments dropped, and everything from the first `#[cfg(test)]`
/// on (unit tests sit at the end of a file by this codebase's convention).
fn product_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l))
}

#[test]
fn contract_facts_are_defined_only_in_the_contract_crate() {
    let root = workspace();
    let mut files = Vec::new();
    for krate in std::fs::read_dir(root.join("crates"))
        .expect("crates/")
        .flatten()
    {
        let name = krate.file_name();
        // The contract itself, and the test kit (test code by definition).
        if name == "contract" || name == "testkit" {
            continue;
        }
        rust_files(&krate.path().join("src"), &mut files);
    }
    assert!(files.len() > 20, "found only {} files", files.len());
    let mut found = Vec::new();
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with("_tests.rs") || name == "testing.rs" {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read source");
        for (n, line) in product_lines(&text) {
            for (what, fact) in facts_in(line) {
                found.push(format!(
                    "{}:{n}: {what} {fact:?} (use ns_contract)",
                    f.strip_prefix(&root).unwrap_or(f).display()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "contract facts outside crates/contract:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_definitions_and_lets_prose_pass() {
    assert!(!facts_in(r#"const H: &str = "x-tenant-id";"#).is_empty());
    assert!(!facts_in(r#"write!(out, "X-Forwarded-For: {}\r\n", ip)"#).is_empty());
    assert!(!facts_in(r#"let p = "/var/lib/neutron/metadata_proxy";"#).is_empty());
    assert!(facts_in(r#"bad("X-Forwarded-For is missing.")"#).is_empty());
    assert!(facts_in(r#""send X-NS-Metadata-Keepalive when reusing""#).is_empty());
}
