//! Root tests: the /run/netns watch, and interoperation with iproute2's `ip netns`.

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use ns_netns::{Error, Netns, NetnsEvent};
use ns_testkit::netns::{unique_prefix, TestNs};
use ns_testkit::{require_root, wait_until};

/// The next event about a name starting with `prefix` (other tests create namespaces too).
async fn next_for(w: &mut ns_netns::NetnsWatcher, prefix: &str) -> NetnsEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("event within 5 s")
            .expect("stream open")
            .expect("no watch error");
        match &ev {
            NetnsEvent::Added(n) | NetnsEvent::Removed(n) if n.starts_with(prefix) => return ev,
            _ => {}
        }
    }
}

#[tokio::test]
async fn watch_reports_create_and_delete() {
    if !require_root("watch_reports_create_and_delete") {
        return;
    }
    let p = unique_prefix();
    let mut w = ns_netns::watch().expect("watch /run/netns");
    let name = format!("{p}-w");
    let t = TestNs::new(&name).expect("create");
    assert_eq!(next_for(&mut w, &p).await, NetnsEvent::Added(name.clone()));
    drop(t);
    assert_eq!(
        next_for(&mut w, &p).await,
        NetnsEvent::Removed(name.clone())
    );
    assert!(!ns_netns::list().expect("list").contains(&name));
}

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("run ip")
}

#[tokio::test]
async fn interoperates_with_ip_netns() {
    if !require_root("interoperates_with_ip_netns") {
        return;
    }
    let p = unique_prefix();
    let mut w = ns_netns::watch().expect("watch");

    // iproute2 creates, we see, open and delete it.
    let theirs = format!("{p}-ip");
    assert!(ip(&["netns", "add", &theirs]).status.success());
    assert_eq!(
        next_for(&mut w, &p).await,
        NetnsEvent::Added(theirs.clone())
    );
    // The file appears before its bind mount: NotNetns is possible for a moment.
    let mut opened = None;
    assert!(wait_until(Duration::from_secs(5), || {
        match Netns::open(&theirs) {
            Ok(ns) => {
                opened = Some(ns);
                true
            }
            Err(Error::NotNetns { .. }) => false,
            Err(e) => panic!("open {theirs}: {e}"),
        }
    }));
    let opened = opened.expect("opened");
    assert_ne!(opened, Netns::current().expect("current"));
    drop(opened);
    ns_netns::delete(&theirs).expect("we delete theirs");
    assert_eq!(
        next_for(&mut w, &p).await,
        NetnsEvent::Removed(theirs.clone())
    );
    let listed = String::from_utf8_lossy(&ip(&["netns", "list"]).stdout).into_owned();
    assert!(!listed.contains(&theirs), "{listed}");

    // We create, iproute2 sees, enters and deletes it.
    let ours = format!("{p}-us");
    let ns = ns_netns::create(&ours).expect("create");
    let inode = ns.inode();
    drop(ns);
    let listed = String::from_utf8_lossy(&ip(&["netns", "list"]).stdout).into_owned();
    assert!(listed.contains(&ours), "{listed}");
    let out = ip(&[
        "netns",
        "exec",
        &ours,
        "stat",
        "-L",
        "-c",
        "%i",
        "/proc/self/ns/net",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        inode.to_string()
    );
    assert!(ip(&["netns", "del", &ours]).status.success());
    assert!(Netns::open(&ours).expect_err("deleted").is_not_found());
}
