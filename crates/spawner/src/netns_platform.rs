//! The real [`Platform`]: named network namespaces under `/run/netns`, opened once per start,
//! prepared with rtnetlink through that fd and handed to the proxy, which enters it itself
//! (`ns_contract::spawn`; all namespace work through `ns_netns`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ns_netns::{Netlink, Netns};

use crate::decide::ProxySpec;
use crate::platform::{Opened, Platform};
use crate::{Error, Result};

/// 169.254.169.254, the metadata address.
pub const METADATA_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));
/// fe80::a9fe:a9fe, the IPv6 metadata address.
pub const METADATA_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0xa9fe, 0xa9fe));

/// Named namespaces, prepared through rtnetlink.
#[derive(Debug, Clone, Copy, Default)]
pub struct Namespaces;

fn netns_err(e: ns_netns::Error) -> Error {
    Error::Netns(e.to_string())
}

impl Platform for Namespaces {
    type Ns = Netns;

    fn namespace_exists(&self, netns: &str) -> bool {
        // The file, not an open: `ip netns add` creates it just before mounting the
        // namespace on it; a start in that window fails and is retried by the backoff.
        Path::new(ns_netns::NETNS_RUN_DIR).join(netns).exists()
    }

    fn namespace_inode(&self, netns: &str) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        // `stat` follows the bind mount to the namespace file itself (nsfs).
        std::fs::metadata(Path::new(ns_netns::NETNS_RUN_DIR).join(netns))
            .ok()
            .map(|m| m.ino())
    }

    fn open_process_ns(&self, pid: u32) -> Result<Netns> {
        Netns::open_path(Path::new(&format!("/proc/{pid}/ns/net"))).map_err(netns_err)
    }

    fn namespace_by_inode(&self, ino: u64) -> Option<Netns> {
        use std::os::unix::fs::MetadataExt;
        let dir = std::fs::read_dir(ns_netns::NETNS_RUN_DIR).ok()?;
        let name = dir.flatten().find_map(|e| {
            let name = e.file_name().into_string().ok()?;
            // `metadata` follows the bind mount to the namespace (nsfs), as `stat` does.
            let m = std::fs::metadata(e.path()).ok()?;
            (m.ino() == ino).then_some(name)
        })?;
        Netns::open(&name).ok()
    }

    async fn open(&self, spec: &ProxySpec) -> Result<Opened<Netns>> {
        let ns = match Netns::open(&spec.netns) {
            Ok(ns) => ns,
            Err(e) if e.is_not_found() => {
                return Ok(Opened::Missing(format!(
                    "namespace {} does not exist",
                    spec.netns
                )))
            }
            Err(e) => return Err(netns_err(e)),
        };
        if let Ok(nl) = Netlink::open(&ns).await {
            // Other failures are not "missing": `prepare` reports them (and backs off).
            if let Ok(false) = nl.link_exists(&spec.interface).await {
                return Ok(Opened::Missing(format!(
                    "interface {} not in {}",
                    spec.interface, spec.netns
                )));
            }
        }
        Ok(Opened::Ready(ns))
    }

    async fn prepare(&self, ns: &Netns, spec: &ProxySpec) -> Result<()> {
        let nl = Netlink::open(ns).await.map_err(netns_err)?;
        nl.set_link_up("lo").await.map_err(netns_err)?;
        nl.ensure_address(&spec.interface, METADATA_V4, 32)
            .await
            .map_err(netns_err)?;
        if spec.ipv6 {
            nl.ensure_address(&spec.interface, METADATA_V6, 128)
                .await
                .map_err(netns_err)?;
        }
        Ok(())
    }

    async fn teardown(&self, ns: &Netns, spec: &ProxySpec) -> Result<()> {
        let nl = Netlink::open(ns).await.map_err(netns_err)?;
        nl.remove_address(&spec.interface, METADATA_V4, 32)
            .await
            .map_err(netns_err)?;
        if spec.ipv6 {
            nl.remove_address(&spec.interface, METADATA_V6, 128)
                .await
                .map_err(netns_err)?;
        }
        Ok(())
    }

    async fn listen(
        &self,
        ns: &Netns,
        spec: &ProxySpec,
        backlog: usize,
    ) -> Result<Vec<std::os::fd::OwnedFd>> {
        use ns_metadata_proxy::bind::{bind_in, set_backlog, BindSpec};
        let mut addrs = vec!["169.254.169.254:80".to_owned()];
        if spec.ipv6 {
            addrs.push(format!("[fe80::a9fe:a9fe]:80%{}", spec.interface));
        }
        let specs = addrs
            .iter()
            .map(|a| a.parse::<BindSpec>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Spawn(format!("bind spec: {e}")))?;
        let ns = ns.try_clone().map_err(netns_err)?;
        let key = spec.key.clone();
        // The bind thread enters the namespace and may wait for DAD: off the runtime.
        let listeners = tokio::task::spawn_blocking(move || {
            let ls = bind_in(Some(&ns), &specs)?;
            set_backlog(&ls, backlog)?;
            Ok::<_, ns_metadata_proxy::Error>(ls)
        })
        .await
        .map_err(|e| Error::Spawn(format!("listen for {key}: {e}")))?
        .map_err(|e| Error::Spawn(format!("listen for {key}: {e}")))?;
        Ok(listeners.into_iter().map(Into::into).collect())
    }

    fn spawn(
        &self,
        ns: &Netns,
        spec: &ProxySpec,
        mut cmd: ns_netns::Spawn,
    ) -> Result<ns_netns::Spawned> {
        use std::os::fd::AsFd;
        let fail = |program: &std::ffi::OsStr, e: std::io::Error| {
            Error::Spawn(format!("spawn {program:?} in {}: {e}", spec.netns))
        };
        // The proxy enters the namespace itself (no code of ours runs in a posix_spawn
        // child): the namespace on a fixed descriptor, named in its environment.
        let fd = ns
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| fail(cmd.program(), e))?;
        cmd.fd(fd, ns_contract::spawn::NETNS_FD).env(
            ns_contract::spawn::NETNS_FD_ENV,
            ns_contract::spawn::NETNS_FD.to_string(),
        );
        let program = cmd.program().to_owned();
        cmd.spawn().map_err(|e| fail(&program, e))
    }
}
