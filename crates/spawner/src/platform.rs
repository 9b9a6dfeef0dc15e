//! What the supervisor needs from the host, behind a small trait so the supervision logic
//! runs unprivileged in tests: whether a namespace exists, opening it once per start (the
//! same open namespace is then prepared, entered by the child, and cleaned up: a namespace
//! replaced under the same name in between is never half-used), preparing it (addresses,
//! links), spawning a command inside it, and undoing the preparation. The real
//! implementation is `netns_platform::Namespaces`; with the `test-fake` feature,
//! [`Host`] runs proxies in the current namespace for unprivileged tests.

use std::future::Future;

use crate::decide::ProxySpec;
use crate::Result;

/// The result of opening a proxy's namespace for a start.
#[derive(Debug)]
pub enum Opened<N> {
    /// Open, with the proxy's interface in it.
    Ready(N),
    /// The namespace or `spec.interface` inside it is not there (yet): the reason. An
    /// orchestrator often announces a network before it plugs the DHCP port.
    Missing(String),
}

/// Host operations the supervisor depends on.
pub trait Platform: Send + Sync + 'static {
    /// An open namespace (a file descriptor for the real one).
    type Ns: Send + Sync + 'static;

    /// Whether the proxy's namespace exists now (a missing one means "wait for it"). A cheap
    /// check by name, for planning; a start opens the namespace with [`Platform::open`].
    fn namespace_exists(&self, netns: &str) -> bool;
    /// The inode of the namespace named `netns` now (`None` if it does not exist): a process
    /// is in that namespace when its `/proc/PID/ns/net` has the same inode.
    fn namespace_inode(&self, netns: &str) -> Option<u64>;
    /// Open the namespace a process is in (`/proc/PID/ns/net`), to tear down what its proxy
    /// was given there after the name moved on (namespace deleted and re-added).
    fn open_process_ns(&self, pid: u32) -> Result<Self::Ns>;
    /// The named namespace (under `/run/netns`) whose inode is `ino`, opened; `None` if no
    /// name has it any more. For the teardown of a proxy that died while we were down: its
    /// pid file recorded the inode of its namespace.
    fn namespace_by_inode(&self, ino: u64) -> Option<Self::Ns>;
    /// Open the proxy's namespace, once per start, and check that `spec.interface` is in it
    /// (one link lookup, no process: polled while waiting). Errors other than "not there"
    /// are errors, not reasons to wait, except a failed link lookup, which `prepare` reports.
    fn open(&self, spec: &ProxySpec) -> impl Future<Output = Result<Opened<Self::Ns>>> + Send;
    /// Make the namespace ready for the proxy: loopback up, 169.254.169.254/32 (and
    /// fe80::a9fe:a9fe/128 when `spec.ipv6`) on `spec.interface`. Idempotent.
    fn prepare(&self, ns: &Self::Ns, spec: &ProxySpec) -> impl Future<Output = Result<()>> + Send;
    /// Remove what `prepare` added (the addresses). An interface that is gone is fine.
    fn teardown(&self, ns: &Self::Ns, spec: &ProxySpec) -> impl Future<Output = Result<()>> + Send;
    /// The shared model: open the proxy's listening sockets inside `ns` (prepared):
    /// `169.254.169.254:80`, and `[fe80::a9fe:a9fe]:80` on `spec.interface` when `spec.ipv6`,
    /// accept queues sized for `backlog` connections.
    fn listen(
        &self,
        ns: &Self::Ns,
        spec: &ProxySpec,
        backlog: usize,
    ) -> impl Future<Output = Result<Vec<std::os::fd::OwnedFd>>> + Send;
    /// Spawn `cmd` to run inside `ns` (passed to the proxy as an open descriptor that it
    /// enters itself: `ns_contract::spawn`).
    fn spawn(
        &self,
        ns: &Self::Ns,
        spec: &ProxySpec,
        cmd: ns_netns::Spawn,
    ) -> Result<ns_netns::Spawned>;
}

/// Runs proxies in the current namespace and prepares nothing: for unprivileged tests
/// (every namespace "exists" unless its name starts with `missing-`; every interface exists
/// unless its name starts with `missing-` and no file of that name is in the temp dir, so a
/// test makes it "appear" by creating the file).
#[cfg(feature = "test-fake")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Host;

#[cfg(feature = "test-fake")]
impl Platform for Host {
    type Ns = ();

    fn namespace_exists(&self, netns: &str) -> bool {
        !netns.starts_with("missing-")
    }

    fn namespace_inode(&self, netns: &str) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        self.namespace_exists(netns)
            .then(|| std::fs::metadata("/proc/self/ns/net").ok())
            .flatten()
            .map(|m| m.ino())
    }

    fn open_process_ns(&self, _pid: u32) -> Result<()> {
        Ok(())
    }

    fn namespace_by_inode(&self, ino: u64) -> Option<()> {
        (self.namespace_inode("host") == Some(ino)).then_some(())
    }

    async fn open(&self, spec: &ProxySpec) -> Result<Opened<()>> {
        if !self.namespace_exists(&spec.netns) {
            return Ok(Opened::Missing(format!(
                "namespace {} does not exist",
                spec.netns
            )));
        }
        if spec.interface.starts_with("missing-")
            && !std::env::temp_dir().join(&spec.interface).exists()
        {
            return Ok(Opened::Missing(format!(
                "interface {} not in {}",
                spec.interface, spec.netns
            )));
        }
        Ok(Opened::Ready(()))
    }

    async fn prepare(&self, _ns: &(), _spec: &ProxySpec) -> Result<()> {
        Ok(())
    }

    async fn teardown(&self, _ns: &(), _spec: &ProxySpec) -> Result<()> {
        Ok(())
    }
    /// One loopback listener on a free port per proxy (169.254.169.254 is not here).
    async fn listen(
        &self,
        _ns: &(),
        spec: &ProxySpec,
        _backlog: usize,
    ) -> Result<Vec<std::os::fd::OwnedFd>> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| crate::Error::Spawn(format!("listen for {}: {e}", spec.key)))?;
        Ok(vec![l.into()])
    }

    fn spawn(
        &self,
        _ns: &(),
        _spec: &ProxySpec,
        cmd: ns_netns::Spawn,
    ) -> Result<ns_netns::Spawned> {
        let program = cmd.program().to_owned();
        cmd.spawn()
            .map_err(|e| crate::Error::Spawn(format!("spawn {program:?}: {e}")))
    }
}
