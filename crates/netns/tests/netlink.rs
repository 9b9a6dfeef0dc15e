//! Root tests: idempotent rtnetlink verbs inside test namespaces, a veth between two of them,
//! TCP over it, and nothing left behind.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use ns_netns::{Error, Netlink, Netns};
use ns_testkit::netns::{link, unique_prefix, TestNs};
use ns_testkit::{require_root, wait_until};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[tokio::test]
async fn addresses_are_idempotent_v4_and_v6() {
    if !require_root("addresses_are_idempotent_v4_and_v6") {
        return;
    }
    let t = TestNs::new(&format!("{}-addr", unique_prefix())).expect("test ns");
    let nl = Netlink::open(t.netns()).await.expect("netlink");
    nl.set_link_up("lo").await.expect("lo up");
    nl.set_link_up("lo").await.expect("lo up twice");
    assert!(nl.link_exists("lo").await.expect("exists"));
    assert!(!nl.link_exists("nope0").await.expect("exists"));

    let wanted = [
        (ip("169.254.169.254"), 32),
        (ip("10.250.1.5"), 24),
        (ip("fe80::a9fe:a9fe"), 128),
        (ip("fd00:250:1::5"), 64),
    ];
    for (a, p) in wanted {
        nl.ensure_address("lo", a, p).await.expect("add");
        nl.ensure_address("lo", a, p)
            .await
            .expect("add again is ok");
    }
    let have = nl.addresses("lo").await.expect("list");
    for w in wanted {
        assert!(have.contains(&w), "{w:?} missing from {have:?}");
    }
    // NODAD: an IPv6 address is usable at once (no tentative period).
    let port = t
        .netns()
        .run(|| {
            // Link-local: a scope is needed; lo is ifindex 1 in a fresh namespace.
            let addr = std::net::SocketAddrV6::new("fe80::a9fe:a9fe".parse().expect("v6"), 0, 0, 1);
            let l = TcpListener::bind(addr)?;
            l.local_addr().map(|a| a.port())
        })
        .expect("run")
        .expect("bind fe80::a9fe:a9fe right after adding it");
    assert!(port > 0);
    let v6 = t
        .netns()
        .run(|| TcpListener::bind("[fd00:250:1::5]:0").map(|_| ()))
        .expect("run");
    assert!(v6.is_ok(), "{v6:?}");

    for (a, p) in wanted {
        nl.remove_address("lo", a, p).await.expect("remove");
        nl.remove_address("lo", a, p)
            .await
            .expect("remove again is ok");
    }
    let have = nl.addresses("lo").await.expect("list");
    for w in wanted {
        assert!(!have.contains(&w), "{w:?} still in {have:?}");
    }
    // Absent interface: remove is a no-op, the others name it.
    nl.remove_address("nope0", ip("10.250.1.5"), 24)
        .await
        .expect("remove on absent link");
    let e = nl
        .ensure_address("nope0", ip("10.250.1.5"), 24)
        .await
        .expect_err("absent link");
    assert!(e.is_not_found(), "{e:?}");
    assert!(e.to_string().contains("interface nope0"), "{e}");
    let e = nl.set_link_up("nope0").await.expect_err("absent link");
    assert!(e.is_not_found(), "{e:?}");
    let e = nl
        .ensure_address("lo", ip("10.250.1.5"), 33)
        .await
        .expect_err("bad prefix");
    assert!(matches!(e, Error::Netlink { .. }), "{e:?}");
}

#[tokio::test]
async fn veth_tcp_between_two_namespaces() {
    if !require_root("veth_tcp_between_two_namespaces") {
        return;
    }
    let p = unique_prefix();
    let a = TestNs::new(&format!("{p}-a")).expect("ns a");
    let b = TestNs::new(&format!("{p}-b")).expect("ns b");
    let (ip_a, ip_b) = link(&a, &b, 11).await.expect("link");
    assert_eq!((ip_a, ip_b), (ip("10.250.11.1"), ip("10.250.11.2")));

    let na = Netlink::open(a.netns()).await.expect("netlink a");
    let nb = Netlink::open(b.netns()).await.expect("netlink b");
    assert!(na.link_exists("va11").await.expect("exists"));
    assert!(!na.link_exists("vb11").await.expect("exists"), "moved to b");
    assert!(nb.link_exists("vb11").await.expect("exists"));
    assert!(nb
        .addresses("vb11")
        .await
        .expect("addresses")
        .contains(&(ip_b, 24)));
    // Idempotent: again with the existing veth, address and route.
    na.create_veth("va11", "vb11x").await.expect("veth exists");
    nb.ensure_route(ip("0.0.0.0"), 0, Some(ip_a), Some("vb11"))
        .await
        .expect("route exists");
    let e = na.create_veth("lo", "x0").await.expect_err("lo is no veth");
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e:?}");

    // A listener bound inside `a`, a client inside `b`, over the veth.
    let listener = a
        .netns()
        .run(move || TcpListener::bind(SocketAddr::new(ip_a, 0)))
        .expect("run in a")
        .expect("bind in a");
    let port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || -> std::io::Result<(IpAddr, String)> {
        let (mut s, peer) = listener.accept()?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf)?;
        s.write_all(b"pong!")?;
        Ok((peer.ip(), String::from_utf8_lossy(&buf).into_owned()))
    });
    let reply = b
        .netns()
        .run(move || -> std::io::Result<String> {
            let mut c =
                TcpStream::connect_timeout(&SocketAddr::new(ip_a, port), Duration::from_secs(5))?;
            c.write_all(b"ping!")?;
            let mut buf = [0u8; 5];
            c.read_exact(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf).into_owned())
        })
        .expect("run in b")
        .expect("connect from b");
    assert_eq!(reply, "pong!");
    let (peer, got) = server.join().expect("server thread").expect("serve");
    assert_eq!((peer, got.as_str()), (ip_b, "ping!"));

    // NODAD: a link-local address on a veth with carrier is bindable at once, not
    // "tentative" (which would make bind fail with EADDRNOTAVAIL for a second or more).
    na.ensure_address("va11", ip("fe80::a9fe:a9fe"), 128)
        .await
        .expect("add v6");
    let scope = na.link_index("va11").await.expect("index");
    let bound = a
        .netns()
        .run(move || {
            let addr =
                std::net::SocketAddrV6::new("fe80::a9fe:a9fe".parse().expect("v6"), 80, 0, scope);
            TcpListener::bind(addr).map(|_| ())
        })
        .expect("run");
    assert!(bound.is_ok(), "{bound:?}");

    // Not reachable from the host: the veth never touched the host namespace.
    let host = Netlink::current().await.expect("host netlink");
    assert!(!host.link_exists("va11").await.expect("exists"));

    // delete_link is idempotent and takes the peer along.
    na.delete_link("va11").await.expect("delete");
    na.delete_link("va11").await.expect("delete again");
    assert!(wait_until(Duration::from_secs(5), || {
        !std::fs::read_to_string("/proc/net/dev").is_ok_and(|d| d.contains("vb11"))
    }));
    assert!(!nb.link_exists("vb11").await.expect("exists"));
}

#[tokio::test]
async fn move_link_and_routes_with_prefixes() {
    if !require_root("move_link_and_routes_with_prefixes") {
        return;
    }
    let p = unique_prefix();
    let a = TestNs::new(&format!("{p}-ma")).expect("ns a");
    let b = TestNs::new(&format!("{p}-mb")).expect("ns b");
    let na = Netlink::open(a.netns()).await.expect("netlink a");
    let nb = Netlink::open(b.netns()).await.expect("netlink b");
    na.create_veth("m0", "m1").await.expect("veth");
    na.move_link("m1", b.netns()).await.expect("move");
    let e = na
        .move_link("m1", b.netns())
        .await
        .expect_err("already moved");
    assert!(e.is_not_found(), "{e:?}");
    nb.set_link_up("m1").await.expect("up");
    nb.ensure_address("m1", ip("10.250.12.2"), 24)
        .await
        .expect("addr");
    nb.ensure_address("m1", ip("fd00:250:12::2"), 64)
        .await
        .expect("addr6");
    // Host bits in the destination are cleared; repeating is fine.
    for _ in 0..2 {
        nb.ensure_route(ip("10.250.13.77"), 24, Some(ip("10.250.12.1")), None)
            .await
            .expect("route v4");
        nb.ensure_route(
            ip("fd00:250:13::"),
            64,
            Some(ip("fd00:250:12::1")),
            Some("m1"),
        )
        .await
        .expect("route v6");
    }
    let routes = b
        .netns()
        // thread-self: /proc/net is the main thread's view.
        .run(|| std::fs::read_to_string("/proc/thread-self/net/route"))
        .expect("run")
        .expect("read routes");
    // 10.250.13.0 little-endian hex is 000DFA0A.
    assert!(routes.contains("000DFA0A"), "{routes}");
    let e = nb
        .ensure_route(ip("10.250.13.0"), 24, Some(ip("fd00::1")), None)
        .await
        .expect_err("mixed families");
    assert!(matches!(e, Error::Netlink { .. }), "{e:?}");
}

#[test]
fn namespaces_are_gone_after_tests_with_links() {
    if !require_root("namespaces_are_gone_after_tests_with_links") {
        return;
    }
    let p = unique_prefix();
    let names = [format!("{p}-ga"), format!("{p}-gb")];
    let inodes = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let a = TestNs::new(&names[0]).expect("ns a");
            let b = TestNs::new(&names[1]).expect("ns b");
            link(&a, &b, 14).await.expect("link");
            (a.netns().inode(), b.netns().inode())
        })
    };
    let listed = ns_netns::list().expect("list");
    for n in &names {
        assert!(!listed.contains(n), "{n} still listed");
        assert!(Netns::open(n).expect_err("gone").is_not_found());
    }
    assert_ne!(inodes.0, inodes.1);
}

#[tokio::test]
async fn dropped_handles_release_the_namespace_and_its_veth() {
    if !require_root("dropped_handles_release_the_namespace_and_its_veth") {
        return;
    }
    // A netlink socket pins its namespace: if a dropped Netlink leaked its connection task,
    // namespace `a` would never be destroyed and `b`'s end of the veth would stay.
    let p = unique_prefix();
    let b = TestNs::new(&format!("{p}-rb")).expect("ns b");
    let nb = Netlink::open(b.netns()).await.expect("netlink b");
    {
        let a = TestNs::new(&format!("{p}-ra")).expect("ns a");
        link(&a, &b, 15).await.expect("link");
        for _ in 0..3 {
            let na = Netlink::open(a.netns()).await.expect("netlink a");
            assert!(na.link_exists("va15").await.expect("exists"));
        }
    }
    let mut gone = false;
    for _ in 0..500 {
        if !nb.link_exists("vb15").await.expect("exists") {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "namespace a still alive: veth end vb15 remains in b");
}

#[tokio::test]
async fn mac_and_mtu_are_set_and_read_back() {
    if !require_root("mac_and_mtu_are_set_and_read_back") {
        return;
    }
    let t = TestNs::new(&format!("{}-mac", unique_prefix())).expect("test ns");
    let nl = Netlink::open(t.netns()).await.expect("netlink");
    nl.create_veth("vmac0", "vmac1").await.expect("veth");
    let mac = [0xfa, 0x16, 0x3e, 0x01, 0x02, 0x03];
    nl.set_mac("vmac1", mac).await.expect("mac");
    nl.set_mac("vmac1", mac).await.expect("mac again is ok");
    nl.set_mtu("vmac1", 1400).await.expect("mtu");
    nl.set_mtu("vmac0", 1400).await.expect("mtu");
    let (m, mtu) = nl
        .link_mac_mtu("vmac1")
        .await
        .expect("read")
        .expect("present");
    assert_eq!((m, mtu), (Some(mac), 1400));
    assert_eq!(nl.link_mac_mtu("nope0").await.expect("read"), None);
    let e = nl.set_mtu("nope0", 1400).await.expect_err("absent");
    assert!(e.is_not_found(), "{e}");
}
