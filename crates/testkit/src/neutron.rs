//! Neutron's real metadata agent for tests: `neutron_agent.py` (its socket server and
//! handler, only the RPC port lookup answered from an inventory file) and the venv that has
//! Neutron installed (`$NS_NEUTRON_VENV`, default [`DEFAULT_VENV`]).
use std::path::PathBuf;

/// Where CI installs neutron 29.0.0.
pub const DEFAULT_VENV: &str = "/opt/ns-metadata-ci/neutron-29.0.0";

/// Path of the one wrapper script:
/// `python neutron_agent.py SOCKET INVENTORY_JSON NOVA_PORT SHARED_SECRET`, prints `READY`
/// once the socket listens.
pub fn agent_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("neutron_agent.py")
}

/// The venv's python, or `None` after a skip of `test` (a failure under `CI=true`).
pub fn venv_python(test: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("NS_NEUTRON_VENV")
        .map_or_else(|| PathBuf::from(DEFAULT_VENV), PathBuf::from);
    let py = venv.join("bin/python");
    if py.is_file() {
        return Some(py);
    }
    crate::skip(
        test,
        &format!(
            "no neutron venv at {} (set NS_NEUTRON_VENV)",
            venv.display()
        ),
    );
    None
}
