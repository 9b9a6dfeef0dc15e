//! `Netlink`: idempotent rtnetlink verbs (links, addresses, routes) bound to one namespace.
//!
//! The netlink socket is created on a thread that entered the namespace, so every request acts
//! on that namespace no matter which thread later sends it. Every verb is idempotent, so a
//! reconcile loop may repeat it: adding what exists or removing what is absent succeeds.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::error::{Error, Result};
use crate::ns::Netns;

/// rtnetlink verbs bound to one namespace; every verb is idempotent. Cheap to clone (all clones
/// share one socket, whose connection task ends when the last clone is dropped).
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    /// The namespace's name or path, for messages.
    label: Arc<str>,
}

/// The errno of a netlink NACK, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

impl Netlink {
    /// Open a netlink socket inside `ns`. The socket is created on a dedicated thread that
    /// entered `ns` (and the current tokio runtime, to register with its reactor); the
    /// connection task is spawned on the current runtime. Must be called within a runtime.
    pub async fn open(ns: &Netns) -> Result<Netlink> {
        let label: Arc<str> = ns.label().into();
        let rt = tokio::runtime::Handle::try_current().map_err(|e| Error::Netlink {
            op: "open netlink in",
            target: label.to_string(),
            reason: e.to_string(),
        })?;
        let ns = ns.try_clone()?;
        let (conn, handle, _) = tokio::task::spawn_blocking(move || {
            ns.run(move || {
                let _entered = rt.enter();
                rtnetlink::new_connection()
            })
        })
        .await
        .map_err(|e| Error::Netlink {
            op: "open netlink in",
            target: label.to_string(),
            reason: e.to_string(),
        })??
        .map_err(|e| Error::Io {
            op: "open netlink in",
            target: label.to_string(),
            source: e,
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle, label })
    }

    /// Open a netlink socket in the calling thread's namespace (normally the host's).
    pub async fn current() -> Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::Io {
            op: "open netlink in",
            target: "current namespace".into(),
            source: e,
        })?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            label: "current namespace".into(),
        })
    }

    fn target(&self, what: impl std::fmt::Display) -> String {
        format!("{what} in namespace {}", self.label)
    }

    fn fail(&self, op: &'static str, what: impl std::fmt::Display, e: rtnetlink::Error) -> Error {
        let target = self.target(what);
        match errno(&e) {
            Some(libc::EPERM) | Some(libc::EACCES) => Error::Netlink {
                op,
                target,
                reason: "permission denied (needs root / CAP_NET_ADMIN)".into(),
            },
            Some(code) => Error::Netlink {
                op,
                target,
                reason: std::io::Error::from_raw_os_error(code).to_string(),
            },
            None => Error::Netlink {
                op,
                target,
                reason: e.to_string(),
            },
        }
    }

    fn no_interface(&self, ifname: &str) -> Error {
        Error::NotFound {
            what: self.target(format_args!("interface {ifname}")),
        }
    }

    /// The link message of `ifname`, None if absent.
    async fn link(&self, ifname: &str) -> Result<Option<LinkMessage>> {
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', '\0']) {
            // The kernel would answer EINVAL or ERANGE; such a name can never exist.
            return Ok(None);
        }
        let mut links = self.handle.link().get().match_name(ifname).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(self.fail("look up", format_args!("interface {ifname}"), e)),
        }
    }

    /// The interface index of `ifname` (e.g. the scope id to bind a link-local address).
    /// NotFound if absent.
    pub async fn link_index(&self, ifname: &str) -> Result<u32> {
        self.index(ifname).await
    }

    async fn index(&self, ifname: &str) -> Result<u32> {
        match self.link(ifname).await? {
            Some(link) => Ok(link.header.index),
            None => Err(self.no_interface(ifname)),
        }
    }

    /// Whether an interface of this name exists in the namespace.
    pub async fn link_exists(&self, ifname: &str) -> Result<bool> {
        Ok(self.link(ifname).await?.is_some())
    }

    /// Set `ifname` administratively up. NotFound if absent.
    pub async fn set_link_up(&self, ifname: &str) -> Result<()> {
        let index = self.index(ifname).await?;
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.fail("set up", format_args!("interface {ifname}"), e))
    }

    /// Set the hardware address of `ifname` (idempotent: the kernel accepts the same value).
    /// NotFound if absent.
    pub async fn set_mac(&self, ifname: &str, mac: [u8; 6]) -> Result<()> {
        let index = self.index(ifname).await?;
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.fail("set the MAC of", format_args!("interface {ifname}"), e))
    }

    /// Set the MTU of `ifname` (idempotent). NotFound if absent.
    pub async fn set_mtu(&self, ifname: &str, mtu: u32) -> Result<()> {
        let index = self.index(ifname).await?;
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.fail("set the MTU of", format_args!("interface {ifname}"), e))
    }

    /// The hardware address and MTU of `ifname`, `None` if absent.
    pub async fn link_mac_mtu(&self, ifname: &str) -> Result<Option<(Option<[u8; 6]>, u32)>> {
        let Some(link) = self.link(ifname).await? else {
            return Ok(None);
        };
        let mut mac = None;
        let mut mtu = 0;
        for a in &link.attributes {
            match a {
                LinkAttribute::Address(b) if b.len() == 6 => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(b);
                    mac = Some(m);
                }
                LinkAttribute::Mtu(v) => mtu = *v,
                _ => {}
            }
        }
        Ok(Some((mac, mtu)))
    }

    /// Add `addr/prefix` to `ifname`; success if it is already there. IPv4 and IPv6, any prefix.
    ///
    /// IPv6 addresses are added with IFA_F_NODAD: they are addresses this project owns inside
    /// a namespace (e.g. fe80::a9fe:a9fe/128 for metadata), and without it the address stays
    /// "tentative" for a second or more, during which bind() fails with EADDRNOTAVAIL.
    /// An IPv6 address already present with another prefix counts as present (the kernel
    /// keys IPv6 addresses by address only).
    pub async fn ensure_address(&self, ifname: &str, addr: IpAddr, prefix: u8) -> Result<()> {
        let what = format!("address {addr}/{prefix} on {ifname}");
        check_prefix(addr, prefix).map_err(|reason| Error::Netlink {
            op: "add",
            target: self.target(&what),
            reason: reason.into(),
        })?;
        let index = self.index(ifname).await?;
        let mut req = self.handle.address().add(index, addr, prefix);
        if addr.is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(self.fail("add", what, e)),
        }
    }

    /// Remove `addr/prefix` from `ifname`; success if it (or the interface) is absent.
    pub async fn remove_address(&self, ifname: &str, addr: IpAddr, prefix: u8) -> Result<()> {
        let what = format!("address {addr}/{prefix} on {ifname}");
        if check_prefix(addr, prefix).is_err() {
            return Ok(()); // cannot exist
        }
        let Some(link) = self.link(ifname).await? else {
            return Ok(());
        };
        let mut msg = AddressMessage::default();
        msg.header.index = link.header.index;
        msg.header.prefix_len = prefix;
        msg.header.family = if addr.is_ipv4() {
            rtnetlink::packet_route::AddressFamily::Inet
        } else {
            rtnetlink::packet_route::AddressFamily::Inet6
        };
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    errno(&e),
                    Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT) | Some(libc::ENODEV)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(self.fail("remove", what, e)),
        }
    }

    /// The addresses of `ifname` as (address, prefix), IPv4 then IPv6 in kernel order.
    /// NotFound if the interface is absent.
    pub async fn addresses(&self, ifname: &str) -> Result<Vec<(IpAddr, u8)>> {
        let index = self.index(ifname).await?;
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut out = Vec::new();
        loop {
            let msg = match stream.try_next().await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(e) => return Err(self.fail("list addresses of", ifname, e)),
            };
            if msg.header.index != index {
                continue;
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
            // point-to-point links); IPv6 usually only sends IFA_ADDRESS.
            let mut local = None;
            let mut address = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(a) => local = Some(*a),
                    AddressAttribute::Address(a) => address = Some(*a),
                    _ => {}
                }
            }
            if let Some(a) = local.or(address) {
                out.push((a, msg.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Create a veth pair `a` <-> `b` in this namespace; success if `a` already exists as a
    /// veth. AlreadyExists if `a` exists but is not a veth.
    pub async fn create_veth(&self, a: &str, b: &str) -> Result<()> {
        let what = format!("veth {a}/{b}");
        let msg = LinkVeth::new(a, b).build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => match self.link(a).await? {
                Some(link) if is_veth(&link) => Ok(()),
                Some(_) => Err(Error::AlreadyExists {
                    what: self.target(format_args!("interface {a} (not a veth)")),
                }),
                // `b` was the one that exists.
                None => Err(Error::AlreadyExists {
                    what: self.target(format_args!("interface {b}")),
                }),
            },
            Err(e) => Err(self.fail("create", what, e)),
        }
    }

    /// Move `ifname` from this namespace into `to`. NotFound if absent here.
    pub async fn move_link(&self, ifname: &str, to: &Netns) -> Result<()> {
        let index = self.index(ifname).await?;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(to.as_raw_fd())
            .build();
        self.handle.link().set(msg).execute().await.map_err(|e| {
            self.fail(
                "move",
                format_args!("interface {ifname} to namespace {}", to.label()),
                e,
            )
        })
    }

    /// Delete `ifname` (a veth takes its peer along); success if absent.
    pub async fn delete_link(&self, ifname: &str) -> Result<()> {
        let Some(link) = self.link(ifname).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(self.fail("delete", format_args!("interface {ifname}"), e)),
        }
    }

    /// Add a route to `dest/prefix` via a gateway and/or out of a device (at least one);
    /// success if an equal route exists. Host bits of `dest` are cleared.
    pub async fn ensure_route(
        &self,
        dest: IpAddr,
        prefix: u8,
        via: Option<IpAddr>,
        dev: Option<&str>,
    ) -> Result<()> {
        let dest = mask(dest, prefix);
        let what = format!("route {dest}/{prefix}");
        let invalid = |reason: String| Error::Netlink {
            op: "add",
            target: self.target(&what),
            reason,
        };
        check_prefix(dest, prefix).map_err(|r| invalid(r.into()))?;
        if via.is_none() && dev.is_none() {
            return Err(invalid("needs a gateway or a device".into()));
        }
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest, prefix)
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(gw) = via {
            if gw.is_ipv4() != dest.is_ipv4() {
                return Err(invalid(format!(
                    "gateway {gw} is of another address family"
                )));
            }
            builder = builder.gateway(gw).map_err(|e| invalid(e.to_string()))?;
        }
        if let Some(ifname) = dev {
            builder = builder.output_interface(self.index(ifname).await?);
        }
        match self.handle.route().add(builder.build()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(self.fail("add", what, e)),
        }
    }
}

fn is_veth(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

/// Err(reason) unless `prefix` fits the address family.
fn check_prefix(addr: IpAddr, prefix: u8) -> std::result::Result<(), &'static str> {
    match addr {
        IpAddr::V4(_) if prefix > 32 => Err("IPv4 prefix longer than 32"),
        IpAddr::V6(_) if prefix > 128 => Err("IPv6 prefix longer than 128"),
        _ => Ok(()),
    }
}

/// `addr` with the bits after `prefix` cleared.
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn mask_clears_host_bits() {
        assert_eq!(mask(ip("10.250.3.7"), 24), ip("10.250.3.0"));
        assert_eq!(mask(ip("10.250.3.7"), 32), ip("10.250.3.7"));
        assert_eq!(mask(ip("10.250.3.7"), 0), ip("0.0.0.0"));
        assert_eq!(mask(ip("fe80::a9fe:a9fe"), 64), ip("fe80::"));
        assert_eq!(mask(ip("fe80::a9fe:a9fe"), 128), ip("fe80::a9fe:a9fe"));
        assert_eq!(mask(ip("fe80::1"), 0), ip("::"));
    }

    #[test]
    fn prefix_limits_per_family() {
        assert!(check_prefix(ip("10.0.0.1"), 32).is_ok());
        assert!(check_prefix(ip("10.0.0.1"), 33).is_err());
        assert!(check_prefix(ip("::1"), 128).is_ok());
        assert!(check_prefix(ip("::1"), 129).is_err());
    }
}
