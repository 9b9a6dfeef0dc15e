//! Failure drills: kill -9 each process of the chain in turn while a VM keeps asking, and record
//! what the VM saw. Expected (the spawner README, "Start, adoption and exit"): a killed proxy is restarted at once by the spawner; a
//! killed spawner costs no request (proxies live in their own session and are adopted on
//! restart); a killed agent gives 503 until it is back. Root only.
use std::io::Write as _;
use std::time::Duration;

use ns_e2e::client::{get_until_ok, timeline, RequestLoop, Sample};
use ns_e2e::procs::kill9;
use ns_e2e::require_root;
use ns_e2e::world::{Modes, Upstream, World};

const PATH: &str = "/latest/meta-data/instance-id";
/// Upper bound for any wait in a drill (a bound, not a performance assertion).
const BOUND: Duration = Duration::from_secs(15);

/// What the VM saw, written straight to stderr so it shows in the test log even on success
/// (libtest captures `eprintln!`).
fn report(line: String) {
    let _ = writeln!(std::io::stderr(), "drill: {line}");
}

fn after(samples: &[Sample], t: Duration) -> Vec<u16> {
    samples
        .iter()
        .filter(|s| s.at >= t)
        .map(|s| s.status)
        .collect()
}

#[test]
fn kill_dash_nine_drills_proxy_spawner_agent() {
    if !require_root("kill_dash_nine_drills_proxy_spawner_agent") {
        return;
    }
    let mut world = World::build("drills", 50, Modes::ROUTER, Upstream::Builtin);
    world.wait_answering(PATH);
    let vm = world.vm("vm1").clone();
    let router = world.proxy_ids[0].clone();
    assert_eq!(get_until_ok(&vm.ns, PATH, BOUND).status, 200);

    // 1. The proxy: the spawner restarts it at once.
    let old = world
        .spawner
        .wait_proxy_pid(&router)
        .expect("proxy pid file names a live proxy");
    let lp = RequestLoop::start(&vm.ns, PATH, 2000);
    assert!(lp.wait_count(Duration::ZERO, 5, BOUND), "request loop runs");
    kill9(old);
    // Taken after kill(2) returned: a request started from now on cannot reach the old proxy.
    let killed_at = lp.now();
    let back = ns_e2e::wait_until(BOUND, || {
        world.spawner.proxy_pid(&router).is_some_and(|p| p != old)
    }) && lp.wait_for(killed_at, BOUND, |s| s == 200);
    // A few more requests, so the timeline shows the restarted proxy answering.
    let recovered_at = lp.now();
    lp.wait_count(recovered_at, 10, BOUND);
    let samples = lp.finish();
    report(format!(
        "proxy kill -9 at {:.2}s; vm saw: {}",
        killed_at.as_secs_f64(),
        timeline(&samples)
    ));
    assert!(
        back,
        "no answer after the proxy was killed; spawner log:\n{}",
        world.spawner.log()
    );
    let first_ok = samples
        .iter()
        .find(|s| s.at >= killed_at && s.status == 200)
        .expect("a 200 after the kill");
    assert!(
        first_ok.at - killed_at < Duration::from_secs(5),
        "answering again quickly (took {:?})",
        first_ok.at - killed_at
    );

    // 2. The spawner: the proxy keeps answering; the restarted spawner adopts it.
    let proxy = world.spawner.proxy_pid(&router).expect("restarted proxy");
    let lp = RequestLoop::start(&vm.ns, PATH, 2000);
    assert!(lp.wait_count(Duration::ZERO, 5, BOUND), "request loop runs");
    let killed_at = lp.now();
    world.spawner.kill();
    assert!(
        lp.wait_count(killed_at, 20, BOUND),
        "requests while the spawner is dead"
    );
    let restarted_at = lp.now();
    world.spawner.restart();
    if !lp.wait_count(restarted_at, 20, BOUND) {
        let samples = lp.finish();
        panic!(
            "requests after the spawner is back: vm saw {}; spawner log:\n{}",
            timeline(&samples),
            world.spawner.log()
        );
    }
    let samples = lp.finish();
    report(format!(
        "spawner kill -9 at {:.2}s, restarted at {:.2}s; vm saw: {}",
        killed_at.as_secs_f64(),
        restarted_at.as_secs_f64(),
        timeline(&samples)
    ));
    assert!(
        samples.iter().all(|s| s.status == 200),
        "a request failed while the spawner was down: {}",
        timeline(&samples)
    );
    assert_eq!(
        world.spawner.proxy_pid(&router),
        Some(proxy),
        "the restarted spawner adopts the live proxy"
    );
    let status = world.spawner.status();
    assert!(
        status.contains(&router),
        "adopted proxy listed in status:\n{status}"
    );

    // 3. The agent: 503 while it is dead, answers again once it is restarted.
    let lp = RequestLoop::start(&vm.ns, PATH, 2000);
    assert!(lp.wait_count(Duration::ZERO, 5, BOUND), "request loop runs");
    let killed_at = lp.now();
    world.agent.kill();
    // Leave it dead for a few requests (bounded), so the timeline shows the outage.
    let saw_503 = ns_e2e::wait_until(BOUND, || {
        lp.samples()
            .iter()
            .filter(|s| s.at >= killed_at && s.status == 503)
            .count()
            >= 5
    });
    let restarted_at = lp.now();
    world.agent.restart();
    let back = lp.wait_for(restarted_at, BOUND, |s| s == 200);
    let recovered_at = lp.now();
    lp.wait_count(recovered_at, 10, BOUND);
    let samples = lp.finish();
    report(format!(
        "agent kill -9 at {:.2}s, restarted at {:.2}s; vm saw: {}",
        killed_at.as_secs_f64(),
        restarted_at.as_secs_f64(),
        timeline(&samples)
    ));
    assert!(
        saw_503,
        "the vm sees 503 while the agent is down: {}",
        timeline(&samples)
    );
    let down: Vec<u16> = samples
        .iter()
        .filter(|s| s.at >= killed_at && s.at < restarted_at)
        .map(|s| s.status)
        .collect();
    // A request in flight at the kill may see 502 (agent closed without a reply); every other
    // answer while it is down is 503, and the proxy never fails to answer.
    assert!(
        down.iter().all(|s| *s == 503 || *s == 502 || *s == 200),
        "while the agent was down: {down:?}"
    );
    assert!(
        down.iter().filter(|s| **s == 502).count() <= 1,
        "at most the in-flight request sees 502: {down:?}"
    );
    assert!(
        back,
        "answers again after the agent restarts: {}",
        timeline(&samples)
    );
    assert!(after(&samples, restarted_at).contains(&200));
}

#[test]
fn vanished_namespace_stops_its_proxy_and_a_recreated_one_gets_it_back() {
    if !require_root("vanished_namespace_stops_its_proxy_and_a_recreated_one_gets_it_back") {
        return;
    }
    let world = World::build("vanish", 52, Modes::ROUTER, Upstream::Builtin);
    world.wait_answering(PATH);
    let router = world.proxy_ids[0].clone();
    let ns = format!("qrouter-{router}");
    let old = world
        .spawner
        .wait_proxy_pid(&router)
        .expect("proxy running");

    // neutron-netns-cleanup (or a crashed l3 agent) deletes the namespace under the proxy.
    ns_e2e::topo::ip(&["netns", "del", &ns]);
    let stopped = ns_e2e::wait_until(BOUND, || {
        ns_e2e::procs::proxies_of(std::slice::from_ref(&router)).is_empty()
    });
    report(format!(
        "namespace {ns} deleted: proxy {old} {}",
        if stopped { "stopped" } else { "still running" }
    ));
    assert!(
        stopped,
        "proxy {old} outlived its namespace; status:\n{}",
        world.spawner.status()
    );

    // The record is still there: when the namespace comes back, so does the proxy, inside it.
    ns_e2e::topo::ip(&["netns", "add", &ns]);
    let back = ns_e2e::wait_until(BOUND, || world.spawner.proxy_pid(&router).is_some());
    assert!(
        back,
        "no proxy in the recreated {ns}; status:\n{}",
        world.spawner.status()
    );
    let pid = world
        .spawner
        .proxy_pid(&router)
        .expect("new proxy")
        .to_string();
    let out = std::process::Command::new("ip")
        .args(["netns", "identify", &pid])
        .output()
        .expect("ip netns identify");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        ns,
        "the new proxy runs in the new namespace"
    );
}
