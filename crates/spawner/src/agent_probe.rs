//! Whether the metadata agent is reachable: its Unix socket exists and accepts a connection.
//! A proxy starts and runs without the agent (it connects per request and answers 503), so a
//! missing agent would otherwise show only as errors to VMs; `status` and `/metrics` show this.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a probe may take to connect (a busy agent still accepts at once: the kernel
/// queues the connection).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The agent as last seen by the spawner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// `metadata_proxy_socket`, as passed to every proxy.
    pub socket: PathBuf,
    pub reachable: bool,
    /// Why not, when not: "socket missing", "connection refused", ...
    pub error: Option<String>,
}

impl AgentStatus {
    /// One line for logs, `status` and `systemctl status`.
    pub fn summary(&self) -> String {
        match &self.error {
            None => format!("agent socket {} reachable", self.socket.display()),
            Some(e) => format!("agent socket {} unreachable: {e}", self.socket.display()),
        }
    }
}

/// Connect to the agent socket once (and close at once; the agent sees an empty connection).
pub async fn probe(socket: &Path) -> AgentStatus {
    // One stat: cheap enough to run on the runtime thread.
    let error = match std::fs::symlink_metadata(socket) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("socket missing".to_owned()),
        _ => match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(socket))
            .await
        {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no connection within {PROBE_TIMEOUT:?}")),
        },
    };
    AgentStatus {
        socket: socket.to_owned(),
        reachable: error.is_none(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_refused_and_listening() {
        let dir = std::env::temp_dir().join(format!("spawner-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let sock = dir.join("agent.sock");
        let _ = std::fs::remove_file(&sock);
        let st = probe(&sock).await;
        assert_eq!(st.error.as_deref(), Some("socket missing"));
        assert!(
            st.summary().ends_with("unreachable: socket missing"),
            "{}",
            st.summary()
        );
        // A socket file nobody listens on (the agent died): refused.
        drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind"));
        let st = probe(&sock).await;
        assert!(
            !st.reachable && st.error.as_deref() != Some("socket missing"),
            "{st:?}"
        );
        std::fs::remove_file(&sock).expect("rm");
        let _l = tokio::net::UnixListener::bind(&sock).expect("bind");
        assert!(probe(&sock).await.reachable);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
