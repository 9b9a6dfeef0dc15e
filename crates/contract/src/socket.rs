//! Where the metadata agent listens: Neutron's `metadata_proxy_socket`, by default
//! `$state_path/metadata_proxy` with `state_path = /var/lib/neutron`.

use std::path::Path;

/// Neutron's default `state_path`.
pub const DEFAULT_STATE_PATH: &str = "/var/lib/neutron";

/// Neutron's default `metadata_proxy_socket`, before interpolation (oslo.config expands
/// `$state_path`; every binary reads it through the same option layer).
pub const DEFAULT_SOCKET_TEMPLATE: &str = "$state_path/metadata_proxy";

/// The default socket path with the default `state_path`.
pub const DEFAULT_SOCKET: &str = "/var/lib/neutron/metadata_proxy";

/// Longest path a Unix socket address holds (`sun_path` is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The socket path after interpolation, for a given `state_path` (the default rule).
pub fn default_socket(state_path: &str) -> String {
    format!("{}/metadata_proxy", state_path.trim_end_matches('/'))
}

/// A socket path every binary can use: absolute (a proxy runs with another working directory
/// inside its namespace) and short enough for `sun_path`.
pub fn check_socket_path(path: &Path) -> Result<(), String> {
    let len = path.as_os_str().len();
    // Quoted: a value from a file may hold a line break (a continuation line) or control
    // bytes, and the error must stay one line.
    if path.is_relative() {
        return Err(format!("{path:?} must be an absolute path"));
    }
    if len > MAX_SOCKET_PATH {
        return Err(format!(
            "{path:?} is {len} bytes; a Unix socket path holds at most {MAX_SOCKET_PATH}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rule() {
        assert_eq!(default_socket(DEFAULT_STATE_PATH), DEFAULT_SOCKET);
        assert_eq!(default_socket("/srv/n/"), "/srv/n/metadata_proxy");
        assert_eq!(
            DEFAULT_SOCKET_TEMPLATE.replace("$state_path", DEFAULT_STATE_PATH),
            DEFAULT_SOCKET
        );
    }

    #[test]
    fn checks() {
        assert!(check_socket_path(Path::new(DEFAULT_SOCKET)).is_ok());
        assert!(check_socket_path(Path::new("run/x")).is_err());
        let long = format!("/{}", "a".repeat(107));
        assert!(check_socket_path(Path::new(&long)).is_err());
        let e =
            check_socket_path(Path::new(&format!("/x\n{}", "a".repeat(107)))).expect_err("long");
        assert!(e.starts_with("\"/x\\naaa") && !e.contains('\n'), "{e}");
    }
}
