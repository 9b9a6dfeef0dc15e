//! What the supervisor needs from the host, behind a small trait so the supervision logic
//! runs unprivileged in tests: whether a namespace exists, preparing it (addresses, links),
//! spawning a command inside it, and undoing the preparation. [`Host`] runs proxies in the
//! current namespace (tests, development); the real implementation with namespaces is
//! [`crate::netns_platform::Namespaces`].

use std::future::Future;

use crate::decide::ProxySpec;
use crate::Result;

/// Host operations the supervisor depends on.
pub trait Platform: Send + Sync + 'static {
    /// Whether the proxy's namespace exists now (a missing one means "wait for it").
    fn namespace_exists(&self, netns: &str) -> bool;
    /// Make the namespace ready for the proxy: loopback up, 169.254.169.254/32 (and
    /// fe80::a9fe:a9fe/128 when `spec.ipv6`) on `spec.interface`. Idempotent.
    fn prepare(&self, spec: &ProxySpec) -> impl Future<Output = Result<()>> + Send;
    /// Why the proxy cannot start yet, if something it needs is not there: the namespace,
    /// or `spec.interface` inside it (an orchestrator often announces a network before it
    /// plugs the DHCP port). Cheap (one link lookup, no process): polled while waiting.
    /// Other errors are not reasons to wait; `prepare` reports them.
    fn missing(&self, spec: &ProxySpec) -> impl Future<Output = Option<String>> + Send;
    /// Remove what `prepare` added (the addresses). A namespace that is gone is fine.
    fn teardown(&self, spec: &ProxySpec) -> impl Future<Output = Result<()>> + Send;
    /// Spawn `cmd` inside the namespace (the namespace is opened before the fork and
    /// entered in the child).
    fn spawn(
        &self,
        spec: &ProxySpec,
        cmd: &mut tokio::process::Command,
    ) -> Result<tokio::process::Child>;
}

/// Runs proxies in the current namespace and prepares nothing: for unprivileged tests
/// (every namespace "exists" unless its name starts with `missing-`; every interface exists
/// unless its name starts with `missing-` and no file of that name is in the temp dir, so a
/// test makes it "appear" by creating the file).
#[derive(Debug, Clone, Copy, Default)]
pub struct Host;

impl Platform for Host {
    fn namespace_exists(&self, netns: &str) -> bool {
        !netns.starts_with("missing-")
    }

    async fn prepare(&self, _spec: &ProxySpec) -> Result<()> {
        Ok(())
    }

    async fn missing(&self, spec: &ProxySpec) -> Option<String> {
        (spec.interface.starts_with("missing-")
            && !std::env::temp_dir().join(&spec.interface).exists())
        .then(|| format!("interface {} not in {}", spec.interface, spec.netns))
    }

    async fn teardown(&self, _spec: &ProxySpec) -> Result<()> {
        Ok(())
    }

    fn spawn(
        &self,
        _spec: &ProxySpec,
        cmd: &mut tokio::process::Command,
    ) -> Result<tokio::process::Child> {
        cmd.spawn().map_err(|e| {
            crate::Error::Spawn(format!("spawn {:?}: {e}", cmd.as_std().get_program()))
        })
    }
}
