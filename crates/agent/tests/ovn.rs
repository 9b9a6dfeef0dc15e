//! The OVN resolver against real `ovsdb-server`s (a Southbound and a local `Open_vSwitch`
//! database, started by the test in its temp dir): a proxy's `X-OVN-Network-ID` request for a
//! VM bound to this chassis reaches Nova signed; an unknown IP and a VM bound to another
//! chassis are 404; live migration (`additional_chassis`) and ports added later are followed;
//! the registration keys are written as Neutron's OVN metadata agent writes them (and again
//! when ovn-controller recreates our `Chassis_Private` row); a lost Southbound keeps the last
//! view. Without the OVS/OVN programs the tests print SKIP (a failure under CI=true).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ns_metadata_agent::{AnswererKind, Config, ResolverKind};
use ns_testkit::neutron::venv_python;
use ns_testkit::nova::{signature_ok, Nova, Seen};
use ns_testkit::ovsdb::{pssl, sb_and_ovs_servers, vsctl, Server, WAIT};
use ns_testkit::{eventually_await, TempDir};

const SECRET: &str = "ovn-secret";
const NET: &str = "3f1c0a52-0b8e-4f4a-9d55-7a1f5a3e9b01";
const HERE: &str = "chassis-1";
const THERE: &str = "chassis-2";

/// The databases, with this chassis (`system-id`) and another one registered, one network.
struct Cloud {
    dir: TempDir,
    sb: Server,
    ovs: Server,
    datapath: String,
}

impl Cloud {
    fn new(test: &str) -> Option<Cloud> {
        Cloud::with(test, |_| (None, Vec::new()))
    }

    /// With more Southbound remotes (see `sb_and_ovs_servers`).
    fn with(
        test: &str,
        sb_remote: impl FnOnce(&TempDir) -> (Option<u16>, Vec<String>),
    ) -> Option<Cloud> {
        let (dir, sb, ovs) = sb_and_ovs_servers(test, "agent-ovn", sb_remote)?;
        vsctl(
            dir.path(),
            &ovs.unix(),
            &[
                "set",
                "Open_vSwitch",
                ".",
                &format!("external_ids:system-id={HERE}"),
                "external_ids:ovn-bridge=br-test",
            ],
        );
        let cloud = Cloud {
            datapath: String::new(),
            dir,
            sb,
            ovs,
        };
        cloud.sbctl(&["init"]);
        for (name, ip) in [(HERE, "127.0.0.1"), (THERE, "127.0.0.2")] {
            cloud.sbctl(&["chassis-add", name, "geneve", ip]);
            let ch = cloud.chassis(name);
            cloud.sbctl(&[
                "create",
                "Chassis_Private",
                &format!("name={name}"),
                &format!("chassis={ch}"),
                "nb_cfg=3",
                // The OVN agent's key: Neutron's metadata agent removes it, so do we.
                "external_ids={\"neutron:ovn-neutron-agent-id\"=\"x\"}",
            ]);
        }
        let datapath = cloud.sbctl(&[
            "create",
            "Datapath_Binding",
            "tunnel_key=1",
            &format!("external_ids={{name=\"neutron-{NET}\"}}"),
        ]);
        Some(Cloud { datapath, ..cloud })
    }

    fn sbctl(&self, args: &[&str]) -> String {
        self.sb.sbctl(args)
    }

    fn chassis(&self, name: &str) -> String {
        self.sbctl(&[
            "--bare",
            "--columns=_uuid",
            "find",
            "Chassis",
            &format!("name={name}"),
        ])
    }

    /// A VM port (`DEVICE-port`): `mac` is Neutron's `"MAC IP..."`; `chassis` None = unbound.
    fn port(&self, key: u32, mac: &str, chassis: Option<&str>, device: &str) -> String {
        let mut args = vec![
            "create".to_owned(),
            "Port_Binding".to_owned(),
            format!("logical_port={device}-port"),
            format!("tunnel_key={key}"),
            format!("datapath={}", self.datapath),
            format!("mac=\"{mac}\""),
            format!(
                "external_ids={{\"neutron:device_id\"=\"{device}\",\"neutron:project_id\"=\"proj-{device}\"}}"
            ),
        ];
        if let Some(c) = chassis {
            args.push(format!("chassis={}", self.chassis(c)));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.sbctl(&args)
    }

    fn private_key(&self, key: &str) -> String {
        self.sbctl(&[
            "--if-exists",
            "get",
            "Chassis_Private",
            HERE,
            &format!("external_ids:{}", key.replace(':', "\\:")),
        ])
        .trim_matches('"')
        .to_owned()
    }

    fn agent_config(&self, nova: &Nova) -> Config {
        self.agent_config_with(nova, &self.sb.unix(), &[])
    }

    fn agent_config_with(&self, nova: &Nova, sb: &str, more: &[(&str, &str)]) -> Config {
        let sock = self.dir.join("agent.sock").display().to_string();
        let port = nova.port().to_string();
        let ovs = self.ovs.unix();
        let mut flags = vec![
            ("metadata-proxy-socket", sock.as_str()),
            ("ovn-sb-connection", sb),
            ("ovsdb-connection", ovs.as_str()),
            ("nova-metadata-host", "127.0.0.1"),
            ("nova-metadata-port", port.as_str()),
            ("metadata-proxy-shared-secret", SECRET),
            ("metadata-workers", "1"),
            ("cache-ttl", "0"),
            ("agent-down-time", "9"),
        ];
        flags.extend_from_slice(more);
        let cfg = config_from(&flags);
        assert_eq!(
            cfg.resolver,
            ResolverKind::Ovn,
            "[ovn] ovn_sb_connection set"
        );
        assert_eq!(cfg.answerer, AnswererKind::Nova);
        cfg
    }
}

/// Status and, for a 200, what reached Nova.
async fn ask_ovn(socket: &Path, xff: &str) -> (u16, Option<Seen>, String) {
    let r = ask(
        socket,
        get("/latest/meta-data/", xff, "X-OVN-Network-ID", NET),
    )
    .await;
    let seen = (r.status == 200).then(|| Seen::from_echo(&r.body));
    (r.status, seen, r.text())
}

async fn until_status(socket: &Path, xff: &str, status: u16, what: &str) {
    eventually_await(what, WAIT, || async {
        (ask_ovn(socket, xff).await.0 == status).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_for_vms_bound_here_only() {
    let Some(cloud) = Cloud::new("answers_for_vms_bound_here_only") else {
        return;
    };
    cloud.port(1, "fa:16:3e:00:00:05 10.0.0.5 fd00::5", Some(HERE), "vm1");
    let elsewhere = cloud.port(2, "fa:16:3e:00:00:06 10.0.0.6", Some(THERE), "vm2");
    cloud.port(3, "fa:16:3e:00:00:02 10.0.0.2", None, "ovnmeta-net");
    let nova = Nova::echo(SECRET);
    let agent = start(cloud.agent_config(&nova)).await;
    let sock = agent.socket.clone();

    for xff in [
        "10.0.0.5",
        "::ffff:10.0.0.5",
        "fd00::5",
        "fe80::f816:3eff:fe00:5",
    ] {
        let (status, seen, body) = ask_ovn(&sock, xff).await;
        assert_eq!(status, 200, "{xff}: {body}");
        let seen = seen.expect("echo");
        assert_eq!(seen.header("X-Instance-ID"), Some("vm1"), "{xff}");
        assert_eq!(seen.header("X-Tenant-ID"), Some("proj-vm1"));
        assert_eq!(seen.header("X-Forwarded-For"), Some(xff));
        let sig = seen.header("X-Instance-ID-Signature").expect("signed");
        assert!(signature_ok(SECRET, "vm1", sig));
    }
    let (status, _, body) = ask_ovn(&sock, "10.0.0.9").await;
    assert_eq!(status, 404);
    assert!(
        body.contains(&format!(
            "Instance was not found on ovn-network {NET} for IP 10.0.0.9."
        )),
        "{body}"
    );
    assert_eq!(
        ask_ovn(&sock, "10.0.0.6").await.0,
        404,
        "bound to another chassis"
    );
    assert_eq!(
        ask_ovn(&sock, "10.0.0.2").await.0,
        404,
        "the unbound metadata localport"
    );

    // Live migration to here: additional_chassis, then the binding moves, then it leaves.
    let here = cloud.chassis(HERE);
    cloud.sbctl(&[
        "set",
        "Port_Binding",
        &elsewhere,
        &format!("additional_chassis={here}"),
    ]);
    until_status(&sock, "10.0.0.6", 200, "the migrating VM answered").await;
    cloud.sbctl(&["clear", "Port_Binding", &elsewhere, "additional_chassis"]);
    until_status(&sock, "10.0.0.6", 404, "the VM gone again").await;

    // A port bound here later is followed; a second port with the same IP is refused.
    cloud.port(4, "fa:16:3e:00:00:07 10.0.0.7", Some(HERE), "vm3");
    until_status(&sock, "10.0.0.7", 200, "a new port bound here").await;
    cloud.port(5, "fa:16:3e:00:00:08 10.0.0.7", Some(HERE), "vm4");
    until_status(&sock, "10.0.0.7", 404, "two ports with one IP").await;

    // Our Chassis row recreated (new UUID): the conditions follow it.
    cloud.sbctl(&["chassis-del", HERE]);
    cloud.sbctl(&["chassis-add", HERE, "geneve", "127.0.0.1"]);
    let new_here = cloud.chassis(HERE);
    cloud.port(6, "fa:16:3e:00:00:09 10.0.0.9", Some(HERE), "vm5");
    until_status(
        &sock,
        "10.0.0.9",
        200,
        "a port bound to the recreated Chassis row",
    )
    .await;
    assert_ne!(here, new_here);
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_as_neutrons_ovn_metadata_agent() {
    let Some(cloud) = Cloud::new("registers_as_neutrons_ovn_metadata_agent") else {
        return;
    };
    let nova = Nova::echo(SECRET);
    let agent = start(cloud.agent_config(&nova)).await;
    // Nothing is answered before the view is in, so one answer means registration started.
    assert_eq!(ask_ovn(&agent.socket, "10.0.0.1").await.0, 404);
    let keys = |c: &Cloud| {
        [
            "neutron:ovn-metadata-id",
            "neutron:ovn-bridge",
            "neutron:ovn-metadata-sb-cfg",
            "ns-metadata:agent",
            "neutron:ovn-neutron-agent-id",
        ]
        .map(|k| c.private_key(k))
    };
    let registered = [
        // python3: uuid.uuid5(uuid.uuid5(UUID('d34bf9f6-da32-4871-9af8-15a4626b41ab'),
        //   'chassis-1'), 'metadata_agent')
        "b37bb3d3-bea1-56d2-85be-062aa3b9bf45".to_owned(),
        "br-test".to_owned(),
        "3".to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
        String::new(),
    ];
    eventually_await("the registration keys", WAIT, || async {
        (keys(&cloud) == registered).then_some(())
    })
    .await;

    // The heartbeat: each SB_Global nb_cfg change is written back (the first at once, later
    // ones after a random delay of at most max(min(9 // 3, 10), 3) s).
    for n in ["7", "8"] {
        cloud.sbctl(&["set", "SB_Global", ".", &format!("nb_cfg={n}")]);
        eventually_await("sb-cfg follows nb_cfg", WAIT, || async {
            (cloud.private_key("neutron:ovn-metadata-sb-cfg") == n).then_some(())
        })
        .await;
    }

    // ovn-controller restarted: our Chassis_Private row is created again, without our keys.
    let ch = cloud.chassis(HERE);
    cloud.sbctl(&["destroy", "Chassis_Private", HERE]);
    cloud.sbctl(&[
        "create",
        "Chassis_Private",
        &format!("name={HERE}"),
        &format!("chassis={ch}"),
        "nb_cfg=8",
    ]);
    let again = {
        let mut r = registered.clone();
        r[2] = "8".to_owned();
        r
    };
    eventually_await("registered again", WAIT, || async {
        (keys(&cloud) == again).then_some(())
    })
    .await;

    // As Neutron's server reads them (AgentCache.populate, `openstack network agent list`):
    // an alive "OVN Metadata agent" on this chassis with our id, dead once NB_Global.nb_cfg
    // runs 2 ahead of our sb-cfg.
    let test = "registers_as_neutrons_ovn_metadata_agent";
    type Agents = Vec<serde_json::Value>;
    if let Some(agents) = neutron::<Agents>(test, &cloud, &["agents", "9"]).await {
        let ours: Vec<&serde_json::Value> = agents
            .iter()
            .filter(|a| a["type"] == "OVN Metadata agent")
            .collect();
        assert_eq!(ours.len(), 1, "{agents:?}");
        assert_eq!(ours[0]["id"], registered[0].as_str());
        assert_eq!(ours[0]["chassis"], HERE);
        assert_eq!(ours[0]["binary"], "neutron-ovn-metadata-agent");
        assert_eq!(ours[0]["nb_cfg"], 8);
        assert_eq!(ours[0]["alive"], true, "{agents:?}");
        let later = neutron::<Agents>(test, &cloud, &["agents", "10"])
            .await
            .expect("venv");
        let meta = later.iter().find(|a| a["type"] == "OVN Metadata agent");
        assert_eq!(meta.map(|a| &a["alive"]), Some(&serde_json::json!(false)));
    }
    // The other chassis is never touched.
    assert_eq!(
        cloud.sbctl(&["get", "Chassis_Private", THERE, "external_ids"]),
        "{\"neutron:ovn-neutron-agent-id\"=x}"
    );
    agent.stop().await;
}

/// Requests in a loop while the Southbound goes away mid-stream: killed (-9) and restarted,
/// then stopped (SIGSTOP: connected but silent) and continued. The resolver answers from its
/// view, so no request waits on the database: every answer is a 200, none hangs, and the
/// view follows the database again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_southbound_dropped_or_stopped_under_a_request_loop_costs_no_request() {
    let name = "a_southbound_dropped_or_stopped_under_a_request_loop_costs_no_request";
    let Some(mut cloud) = Cloud::new(name) else {
        return;
    };
    cloud.port(1, "fa:16:3e:00:00:05 10.0.0.5", Some(HERE), "vm1");
    let nova = Nova::echo(SECRET);
    let agent = start(cloud.agent_config(&nova)).await;
    let sock = agent.socket.clone();
    assert_eq!(ask_ovn(&sock, "10.0.0.5").await.0, 200);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (sock, stop) = (sock.clone(), stop.clone());
        loops.spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let asked = tokio::time::timeout(WAIT, ask_ovn(&sock, "10.0.0.5")).await;
                statuses.push(asked.map_or(0, |(status, _, _)| status));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        });
    }
    let pause = || tokio::time::sleep(Duration::from_millis(300));
    pause().await;
    cloud.sb.kill();
    pause().await;
    cloud.sb.restart();
    cloud.port(2, "fa:16:3e:00:00:06 10.0.0.6", Some(HERE), "vm2");
    until_status(&sock, "10.0.0.6", 200, "followed again after the restart").await;
    let pid = cloud.sb.pid().expect("the Southbound runs");
    ns_testkit::proc::signal(pid, "STOP");
    pause().await;
    ns_testkit::proc::signal(pid, "CONT");
    cloud.port(3, "fa:16:3e:00:00:07 10.0.0.7", Some(HERE), "vm3");
    until_status(&sock, "10.0.0.7", 200, "followed again after SIGCONT").await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut all = Vec::new();
    while let Some(s) = loops.join_next().await {
        all.extend(s.expect("request loop"));
    }
    assert!(all.len() > 20, "the loop ran: {} requests", all.len());
    assert!(
        all.iter().all(|s| *s == 200),
        "every request answered 200 (0: none within {WAIT:?}): {all:?}"
    );
    agent.stop().await;
}

/// Run Neutron 29's code (tests/data/neutron_ovn_lookup.py) against the test's Southbound
/// with `args`; its JSON answer (the last stdout line), or `None` after a skip (no venv).
async fn neutron<T: serde::de::DeserializeOwned>(
    test: &str,
    cloud: &Cloud,
    args: &[&str],
) -> Option<T> {
    let python = venv_python(test)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/neutron_ovn_lookup.py");
    let mut child = ns_testkit::ChildGuard(
        std::process::Command::new(python)
            .arg(script)
            .arg(cloud.sb.unix())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start Neutron's code"),
    );
    let mut stdout = child.0.stdout.take().expect("stdout");
    let read = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).map(|_| s)
    });
    // On a timeout the guard kills Neutron's process, which ends the read.
    let out = tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("Neutron's code finished")
        .expect("join")
        .expect("read");
    drop(child);
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('['))
        .unwrap_or_else(|| panic!("no answer from Neutron's code: {out}"));
    Some(serde_json::from_str(line).expect("answer json"))
}

/// Neutron's own lookup: for each `(network, ip, mac)`, `Some((device_id, project_id))`.
async fn neutrons_answers(
    test: &str,
    cloud: &Cloud,
    queries: &[(&str, &str, Option<&str>)],
) -> Option<Vec<Option<(String, String)>>> {
    let q = serde_json::to_string(queries).expect("json");
    neutron(test, cloud, &[HERE, q.as_str()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_as_neutrons_own_lookup() {
    const TEST: &str = "answers_as_neutrons_own_lookup";
    let Some(cloud) = Cloud::new(TEST) else {
        return;
    };
    let net2 = "9b0c6a43-5d1e-4c2a-8f77-0e6b3c2d1a02";
    let dp2 = cloud.sbctl(&[
        "create",
        "Datapath_Binding",
        "tunnel_key=2",
        &format!("external_ids={{name=\"neutron-{net2}\"}}"),
    ]);
    cloud.port(1, "fa:16:3e:00:00:05 10.0.0.5 fd00::5", Some(HERE), "vm1");
    cloud.port(2, "fa:16:3e:00:00:06 10.0.0.6", Some(THERE), "vm2");
    let migrating = cloud.port(3, "fa:16:3e:00:00:07 10.0.0.7", Some(THERE), "vm3");
    let here = cloud.chassis(HERE);
    cloud.sbctl(&[
        "set",
        "Port_Binding",
        &migrating,
        &format!("additional_chassis={here}"),
    ]);
    cloud.port(4, "fa:16:3e:00:00:08 10.0.0.8", Some(HERE), "vm4");
    cloud.port(5, "fa:16:3e:00:00:09 10.0.0.8", Some(HERE), "vm5");
    cloud.port(6, "fa:16:3e:00:00:02 10.0.0.2", None, "ovnmeta-net");
    let other = cloud.port(7, "fa:16:3e:00:00:0a 10.0.0.5", Some(HERE), "vm6");
    cloud.sbctl(&["set", "Port_Binding", &other, &format!("datapath={dp2}")]);

    // (network, X-Forwarded-For, what Neutron's handler passes on: IP unmapped, link-local MAC)
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        (NET, "10.0.0.5", "10.0.0.5", None),
        (NET, "::ffff:10.0.0.5", "10.0.0.5", None),
        (NET, "fd00::5", "fd00::5", None),
        (
            NET,
            "fe80::f816:3eff:fe00:5",
            "fe80::f816:3eff:fe00:5",
            Some("fa:16:3e:00:00:05"),
        ),
        (NET, "10.0.0.7", "10.0.0.7", None),
        (NET, "10.0.0.8", "10.0.0.8", None),
        (NET, "10.0.0.2", "10.0.0.2", None),
        (NET, "10.0.0.99", "10.0.0.99", None),
        (net2, "10.0.0.5", "10.0.0.5", None),
        (net2, "10.0.0.6", "10.0.0.6", None),
        // Bound to another chassis: 404 from both (Neutron too: see below).
        (NET, "10.0.0.6", "10.0.0.6", None),
    ];
    let queries: Vec<(&str, &str, Option<&str>)> = cases
        .iter()
        .map(|(n, _, ip, mac)| (*n, *ip, *mac))
        .collect();
    let Some(neutron) = neutrons_answers(TEST, &cloud, &queries).await else {
        return;
    };

    let nova = Nova::echo(SECRET);
    let agent = start(cloud.agent_config(&nova)).await;
    for ((net, xff, _, _), theirs) in cases.iter().zip(&neutron) {
        let r = ask(&agent.socket, get("/", xff, "X-OVN-Network-ID", net)).await;
        let ours = (r.status == 200).then(|| {
            let seen = Seen::from_echo(&r.body);
            let h = |n: &str| seen.header(n).unwrap_or_default().to_owned();
            (h("X-Instance-ID"), h("X-Tenant-ID"))
        });
        assert!(r.status == 200 || r.status == 404, "{xff}: {}", r.status);
        if *net == NET && *xff == "10.0.0.7" {
            // Only additionally bound here (live migration): Neutron's replica holds only its
            // own Chassis row, so the port's `chassis` (another chassis) reads as empty and
            // Neutron answers 404; ours answers for the VM arriving here.
            assert_eq!(theirs, &None, "Neutron 29 during a live migration");
            assert_eq!(ours, Some(("vm3".to_owned(), "proj-vm3".to_owned())));
        } else {
            assert_eq!(&ours, theirs, "{net} {xff}: ours vs Neutron's");
        }
    }
    assert_eq!(
        neutron.iter().filter(|a| a.is_some()).count(),
        5,
        "vm1 (4 ways) and vm6 on net2: {neutron:?}"
    );
    agent.stop().await;
}

/// The binary started as Neutron's unit starts `neutron-ovn-metadata-agent` (a
/// `--config-file` set with `[ovn]` and `[ovs]`) says READY only with the view in: the first
/// request after READY is already answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_is_ready_with_the_first_view() {
    use std::os::unix::net::UnixDatagram;
    let Some(cloud) = Cloud::new("the_binary_is_ready_with_the_first_view") else {
        return;
    };
    cloud.port(1, "fa:16:3e:00:00:05 10.0.0.5", Some(HERE), "vm1");
    let nova = Nova::echo(SECRET);
    let sock = cloud.dir.join("agent.sock");
    let metrics = ns_testkit::http::free_port();
    let conf = cloud.dir.join("neutron_ovn_metadata_agent.ini");
    std::fs::write(
        &conf,
        format!(
            "[DEFAULT]\nmetadata_proxy_socket = {}\nnova_metadata_host = 127.0.0.1\n\
             nova_metadata_port = {}\nmetadata_proxy_shared_secret = {SECRET}\nmetadata_workers = 1\n\
             metrics_bind = 127.0.0.1:{metrics}\n\
             [ovs]\novsdb_connection = {}\novsdb_connection_timeout = 180\n\
             [ovn]\novn_sb_connection = {}\novsdb_probe_interval = 60000\n",
            sock.display(),
            nova.port(),
            cloud.ovs.unix(),
            cloud.sb.unix(),
        ),
    )
    .expect("write config");
    let notify = cloud.dir.join("notify.sock");
    let rx = UnixDatagram::bind(&notify).expect("bind notify socket");
    rx.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut agent = ns_testkit::ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_ns-metadata-agent"))
            .arg("--config-file")
            .arg(&conf)
            .env("NOTIFY_SOCKET", &notify)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn agent"),
    );
    let mut buf = [0u8; 1024];
    let n = rx.recv(&mut buf).expect("READY");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.starts_with("READY=1"), "{ready}");
    let (status, seen, body) = ask_ovn(&sock, "10.0.0.5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen.expect("echo").header("X-Instance-ID"), Some("vm1"));
    // The Southbound connection shows in the metrics.
    let scraped = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", metrics)).expect("connect");
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut out = String::new();
        c.read_to_string(&mut out).expect("read");
        out
    })
    .await
    .expect("join");
    for line in [
        "ns_metadata_agent_southbound_up 1",
        "ns_metadata_agent_southbound_ready_total 1",
        "ns_metadata_agent_requests_total{answer=\"nova\",code=\"2xx\"} 1",
    ] {
        assert!(scraped.lines().any(|l| l == line), "{line}\n{scraped}");
    }
    // systemd's reload: nothing to re-read, but framed for Type=notify-reload, and alive.
    agent.signal("HUP");
    let n = rx.recv(&mut buf).expect("RELOADING");
    assert!(buf[..n].starts_with(b"RELOADING=1"));
    let n = rx.recv(&mut buf).expect("READY");
    assert_eq!(&buf[..n], b"READY=1");
    assert_eq!(ask_ovn(&sock, "10.0.0.5").await.0, 200);
    agent.signal("TERM");
    let n = rx.recv(&mut buf).expect("STOPPING");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(agent.0.wait().expect("wait").code(), Some(0));
}

/// `ssl:` with Neutron's three options and `ovs-pki` certificates (no host names in them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_southbound_with_neutrons_options() {
    let port = ns_testkit::http::free_port();
    let mut client = None;
    let Some(cloud) = Cloud::with("ssl_southbound_with_neutrons_options", |dir| {
        let (remote, files) = pssl(dir, port);
        client = Some(files);
        remote
    }) else {
        return;
    };
    cloud.port(1, "fa:16:3e:00:00:05 10.0.0.5", Some(HERE), "vm1");
    let nova = Nova::echo(SECRET);
    let files = client.expect("client files");
    let (key, cert, ca) = (files.private_key, files.certificate, files.ca_cert);
    let sb = format!("ssl:127.0.0.1:{port}");
    let cfg = cloud.agent_config_with(
        &nova,
        &sb,
        &[
            ("ovn-sb-private-key", key.as_str()),
            ("ovn-sb-certificate", cert.as_str()),
            ("ovn-sb-ca-cert", ca.as_str()),
        ],
    );
    let agent = start(cfg).await;
    let (status, seen, body) = ask_ovn(&agent.socket, "10.0.0.5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(seen.expect("echo").header("X-Instance-ID"), Some("vm1"));
    agent.stop().await;
}
