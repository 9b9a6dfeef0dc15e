//! Root tests: create, open, enter, list and delete named namespaces; cleanup on panic.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ns_netns::{CommandExt, Error, Netns};
use ns_testkit::netns::{unique_prefix, TestNs};
use ns_testkit::{require_root, wait_until, ChildGuard};

fn inode_of_pid(pid: u32) -> u64 {
    Netns::open(&format!("/proc/{pid}/ns/net"))
        .expect("open /proc/PID/ns/net")
        .inode()
}

#[test]
fn create_open_list_delete() {
    if !require_root("create_open_list_delete") {
        return;
    }
    let name = format!("{}-cold", unique_prefix());
    let ns = ns_netns::create(&name).expect("create");
    assert_eq!(ns.name(), Some(name.as_str()));
    assert_eq!(ns.path(), Path::new("/run/netns").join(&name));
    assert!(ns_netns::list().expect("list").contains(&name));

    let again = Netns::open(&name).expect("open by name");
    assert_eq!(again.inode(), ns.inode());
    let by_path = Netns::open(&format!("/run/netns/{name}")).expect("open by path");
    assert_eq!(by_path.name(), Some(name.as_str()));
    assert_eq!(by_path, ns);
    assert_ne!(ns, Netns::current().expect("current"), "a new namespace");

    let dup = ns_netns::create(&name).expect_err("second create");
    assert!(matches!(dup, Error::AlreadyExists { .. }), "{dup:?}");
    assert_eq!(dup.to_string(), format!("namespace {name} already exists"));

    ns_netns::delete(&name).expect("delete");
    assert!(!ns_netns::list().expect("list").contains(&name));
    let gone = Netns::open(&name).expect_err("open after delete");
    assert_eq!(gone.to_string(), format!("no such namespace {name}"));
    let gone = ns_netns::delete(&name).expect_err("delete twice");
    assert!(gone.is_not_found(), "{gone:?}");
}

#[test]
fn leftover_file_without_mount_is_not_netns() {
    if !require_root("leftover_file_without_mount_is_not_netns") {
        return;
    }
    // What `ip netns add` leaves behind if it dies between creating the file and mounting.
    let name = format!("{}-bare", unique_prefix());
    let path = Path::new("/run/netns").join(&name);
    std::fs::create_dir_all("/run/netns").expect("mkdir /run/netns");
    std::fs::write(&path, b"").expect("create bare file");
    let r = Netns::open(&name);
    ns_netns::delete(&name).expect("delete removes a bare file too");
    assert!(matches!(r, Err(Error::NotNetns { .. })), "{r:?}");
    assert!(!path.exists());
}

#[test]
fn run_enters_namespace_on_a_dedicated_thread() {
    if !require_root("run_enters_namespace_on_a_dedicated_thread") {
        return;
    }
    let t = TestNs::new(&format!("{}-run", unique_prefix())).expect("test ns");
    let inode = t
        .netns()
        .run(|| Netns::current().map(|n| n.inode()))
        .expect("run")
        .expect("current inside");
    assert_eq!(inode, t.netns().inode());
    // The calling thread did not move.
    assert_ne!(
        Netns::current().expect("current").inode(),
        t.netns().inode()
    );
    // A socket created inside stays there after the thread exits: a listener bound inside
    // is not reachable on the host's loopback.
    let listener = t
        .netns()
        .run(|| std::net::TcpListener::bind("0.0.0.0:0"))
        .expect("run")
        .expect("bind inside");
    let port = listener.local_addr().expect("local addr").port();
    let connect = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(connect.is_err(), "listener must live in the test namespace");
}

#[test]
fn a_socket_handed_over_names_the_namespace_it_was_opened_in() {
    use std::os::fd::AsFd;
    if !require_root("a_socket_handed_over_names_the_namespace_it_was_opened_in") {
        return;
    }
    let t = TestNs::new(&format!("{}-skns", unique_prefix())).expect("test ns");
    let listener = t
        .netns()
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("run")
        .expect("bind inside");
    // Through SCM_RIGHTS, as the spawner hands sockets to the shared server and back.
    let (a, b) = std::os::unix::net::UnixDatagram::pair().expect("pair");
    ns_netns::send_fds(a.as_fd(), b"router x", &[listener.as_fd()]).expect("send");
    drop(listener);
    let mut buf = [0u8; 32];
    let (n, mut fds) = ns_netns::recv_fds(b.as_fd(), &mut buf).expect("recv");
    assert_eq!(&buf[..n], b"router x");
    let got = fds.pop().expect("one fd");
    let ns = Netns::of_socket(got.as_fd()).expect("SIOCGSKNS");
    assert_eq!(
        &ns,
        t.netns(),
        "the socket's namespace is the test namespace"
    );
    assert_ne!(ns, Netns::current().expect("current"));
}

#[test]
fn std_command_enters_namespace() {
    if !require_root("std_command_enters_namespace") {
        return;
    }
    let t = TestNs::new(&format!("{}-cmd", unique_prefix())).expect("test ns");
    let child = Command::new("sleep")
        .arg("1000")
        .netns(t.netns())
        .spawn()
        .expect("spawn in netns");
    let guard = ChildGuard(child);
    assert_eq!(inode_of_pid(guard.0.id()), t.netns().inode());
    // The parent stays where it was.
    assert_eq!(
        inode_of_pid(std::process::id()),
        Netns::current().expect("current").inode()
    );
}

#[tokio::test]
async fn tokio_command_enters_namespace() {
    if !require_root("tokio_command_enters_namespace") {
        return;
    }
    let t = TestNs::new(&format!("{}-tok", unique_prefix())).expect("test ns");
    let mut child = tokio::process::Command::new("sleep")
        .arg("1000")
        .netns(t.netns())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn in netns");
    let pid = child.id().expect("pid");
    assert_eq!(inode_of_pid(pid), t.netns().inode());
    child.kill().await.expect("kill");
}

#[test]
fn command_into_deleted_but_open_namespace_still_works() {
    if !require_root("command_into_deleted_but_open_namespace_still_works") {
        return;
    }
    // The fd keeps the namespace alive after `ip netns del`.
    let name = format!("{}-del", unique_prefix());
    let ns = ns_netns::create(&name).expect("create");
    ns_netns::delete(&name).expect("delete");
    let out = Command::new("cat")
        .arg("/proc/self/net/dev")
        .netns(&ns)
        .output()
        .expect("run cat in netns");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lo:"), "{text}");
    assert!(
        !text.contains("eth"),
        "only lo in a fresh namespace: {text}"
    );
}

#[test]
fn everything_is_gone_after_a_panicking_test() {
    if !require_root("everything_is_gone_after_a_panicking_test") {
        return;
    }
    let name = format!("{}-pan", unique_prefix());
    let mut pid = 0;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = TestNs::new(&name).expect("test ns");
        let child = Command::new("sleep")
            .arg("1000")
            .netns(t.netns())
            .spawn()
            .expect("spawn");
        pid = child.id();
        let _guard = ChildGuard(child);
        panic!("test body fails while holding the guards");
    }));
    assert!(result.is_err());
    assert!(!ns_netns::list().expect("list").contains(&name));
    assert!(!Path::new("/run/netns").join(&name).exists());
    assert!(pid != 0);
    assert!(
        wait_until(Duration::from_secs(5), || !Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists()),
        "child {pid} still exists"
    );
}
