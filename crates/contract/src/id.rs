//! The one id rule, and the namespace and interface name checks, for everything that becomes a
//! header value, a file name under the state directory, a namespace or an interface name.

/// Longest id accepted (a UUID is 36; Neutron's own ids never come near).
pub const MAX_ID_LEN: usize = 64;

/// Namespace prefixes that mark a namespace name given where an id was expected.
pub const NAMESPACE_PREFIXES: [&str; 3] = ["qrouter-", "qdhcp-", "ovnmeta-"];

/// Longest interface name the kernel takes (`IFNAMSIZ` - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// A name that cannot be used; the message names it and says why (and what to give instead).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {name:?}: {reason}")]
pub struct InvalidName {
    /// "id", "netns name" or "interface name".
    pub what: &'static str,
    pub name: String,
    pub reason: String,
}

fn invalid(what: &'static str, name: &str, reason: impl Into<String>) -> InvalidName {
    InvalidName {
        what,
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// The id rule: 1–64 characters of ASCII letters, digits, `-` and `_`, the first a letter or
/// digit (UUIDs pass). Ids become header values, namespace suffixes and pid file names, so the
/// proxy, the spawner and the agent must agree on it: a record the spawner takes but its proxy
/// refuses restarts forever. A namespace name given as an id (`qrouter-<uuid>`) is refused
/// with the hint, since the agent would answer 404 for every VM behind it.
pub fn validate_id(id: &str) -> Result<(), InvalidName> {
    const RULE: &str =
        "expected 1-64 letters, digits, '-' or '_', starting with a letter or digit (a UUID)";
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(invalid("id", id, RULE));
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid("id", id, RULE));
    }
    if let Some(prefix) = NAMESPACE_PREFIXES.iter().find(|p| id.starts_with(**p)) {
        return Err(invalid(
            "id",
            id,
            format!(
                "that is a namespace name; give the id without {prefix:?} ({:?})",
                &id[prefix.len()..]
            ),
        ));
    }
    Ok(())
}

/// A namespace name as `ip netns` takes it (one path component under `/run/netns`: not empty,
/// at most 255 bytes, no `/` or NUL, not `.` or `..`), and without whitespace, so it survives
/// every command line and log line it appears in.
pub fn validate_netns(name: &str) -> Result<(), InvalidName> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 255 {
        "longer than 255 bytes"
    } else if name.contains('/') {
        "contains '/'"
    } else if name == "." || name == ".." {
        "is \".\" or \"..\""
    } else if name.contains('\0') {
        "contains a NUL byte"
    } else if name.chars().any(char::is_whitespace) {
        "contains whitespace"
    } else {
        return Ok(());
    };
    Err(invalid("netns name", name, reason))
}

/// An interface name as the kernel's `dev_valid_name` takes it (1–15 bytes, not `.` or `..`,
/// no `/`, `:`, whitespace or NUL), and without `%`, which separates the interface in a bind
/// address (`[fe80::a9fe:a9fe]:80%tap0`).
pub fn validate_ifname(name: &str) -> Result<(), InvalidName> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "is \".\" or \"..\""
    } else if name.contains(['/', ':', '%', '\0']) {
        "contains '/', ':', '%' or NUL"
    } else if name.chars().any(char::is_whitespace) {
        "contains whitespace"
    } else {
        return Ok(());
    };
    Err(invalid("interface name", name, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in [
            "r1",
            "a",
            "0b1c2d3e-aaaa-bbbb-cccc-123456789012",
            "net_1",
            "R-2_x",
            &"a".repeat(64),
        ] {
            assert_eq!(validate_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-r",
            "_r",
            "a b",
            "a/b",
            "a.b",
            "é",
            "a\n",
            &"a".repeat(65),
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn namespace_names_given_as_ids_get_the_hint() {
        let e = validate_id("qrouter-abc").expect_err("refused");
        assert_eq!(
            e.to_string(),
            "invalid id \"qrouter-abc\": that is a namespace name; give the id without \"qrouter-\" (\"abc\")"
        );
        assert!(validate_id("qdhcp-n1").is_err());
        assert!(validate_id("ovnmeta-n1").is_err());
        assert!(validate_id("qrouterx").is_ok());
    }

    #[test]
    fn netns_names() {
        for ok in ["qrouter-r1", "x", "a.b", "ns_1"] {
            assert_eq!(validate_netns(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a\0", &"n".repeat(256)] {
            assert!(validate_netns(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn interface_names() {
        for ok in ["lo", "tap1234567890a", "eth0.10", "ns-x_y"] {
            assert_eq!(validate_ifname(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "lo%x",
            "a:b",
            "a/b",
            "a b",
            "tap1234567890abc",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
