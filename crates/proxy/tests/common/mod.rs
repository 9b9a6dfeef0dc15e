//! Test helpers: the proxy served in-process on loopback. The agent stand-in, the raw HTTP/1
//! client and temp dirs come from ns-testkit.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ns_metadata_proxy::shared::Namespaces;
use ns_metadata_proxy::stats::Stats;
use ns_metadata_proxy::{bind, server, Args, Config};
use tokio::sync::oneshot;

pub use ns_testkit::agent::{Behave, StandIn};
pub use ns_testkit::http::{request_tcp as request, Conn};
pub use ns_testkit::TempDir;

/// A client connection to the proxy under test.
pub type Client = Conn<tokio::net::TcpStream>;

/// Which proxy model a behaviour test runs against (issue #20: every proxy behaviour test runs
/// against both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// One proxy per namespace: [`server::serve`] on the listener.
    PerNamespace,
    /// The shared server's per-namespace table ([`ns_metadata_proxy::shared::Namespaces`]),
    /// the listener handed to it as the spawner hands one over.
    Shared,
}

impl Model {
    /// [`Proxy::start`] in this model.
    pub fn start(self, socket: &Path, bind_addr: &str, args: &[&str]) -> Proxy {
        Proxy::start_in(self, socket, bind_addr, args)
    }
}

/// Each `async fn NAME(model: Model)` named becomes two tests, `per_namespace::NAME` and
/// `shared::NAME`.
#[macro_export]
macro_rules! in_both_models {
    ($($name:ident),+ $(,)?) => {
        mod per_namespace {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Model::PerNamespace).await
                }
            )+
        }
        mod shared {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Model::Shared).await
                }
            )+
        }
    };
}

/// How a proxy under test is being served.
enum Serving {
    Own(oneshot::Sender<()>, tokio::task::JoinHandle<()>),
    Table(
        Arc<Namespaces>,
        ns_contract::Resource,
        tokio::sync::watch::Sender<bool>,
    ),
}

/// A proxy served in this test's runtime; stops on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    pub shared: Arc<server::Shared>,
    serving: Option<Serving>,
}

impl Proxy {
    /// `args`: extra command-line flags; binds `bind` (port 0) and uses `socket`. One proxy
    /// per namespace.
    pub fn start(socket: &Path, bind_addr: &str, args: &[&str]) -> Proxy {
        Proxy::start_in(Model::PerNamespace, socket, bind_addr, args)
    }

    /// As [`Proxy::start`], served in `model`.
    pub fn start_in(model: Model, socket: &Path, bind_addr: &str, args: &[&str]) -> Proxy {
        let id: &[&str] = if args.iter().any(|a| a.ends_with("-id")) {
            &[]
        } else {
            &["--router-id", "r-0001"]
        };
        let mut argv = vec!["ns-metadata-proxy".to_owned()];
        argv.extend(id.iter().map(|s| s.to_string()));
        argv.extend([
            "--metadata-proxy-socket".to_owned(),
            socket.display().to_string(),
        ]);
        argv.extend(args.iter().map(|s| s.to_string()));
        let cfg = Config::from_args(Args::try_parse_from(argv).expect("args")).expect("config");
        let std_l = bind::bind_all(&[bind_addr.parse().expect("bind spec")]).expect("bind");
        let addr = std_l[0].local_addr().expect("addr");
        let std_l = std_l.into_iter().next().expect("one");
        let resource = cfg.resource.clone().expect("one resource");
        match model {
            Model::PerNamespace => {
                let l = std_l;
                let shared = Arc::new(server::Shared::new(&cfg, &resource));
                let (tx, rx) = oneshot::channel::<()>();
                let done = tokio::spawn(server::serve(
                    shared.clone(),
                    vec![l],
                    cfg.max_connections,
                    async move {
                        let _ = rx.await;
                    },
                    GRACE,
                ));
                Proxy {
                    addr,
                    shared,
                    serving: Some(Serving::Own(tx, done)),
                }
            }
            Model::Shared => {
                let table = Arc::new(Namespaces::new(cfg, 65_536).with_grace(GRACE));
                // As the server runs it: one housekeeping task for the table.
                let tending = table.housekeeping();
                let shared = table
                    .add(
                        resource.clone(),
                        "test-ns".to_owned(),
                        vec![std::os::fd::OwnedFd::from(std_l)],
                        Stats::default(),
                    )
                    .expect("served by the shared table");
                Proxy {
                    addr,
                    shared,
                    serving: Some(Serving::Table(table, resource, tending)),
                }
            }
        }
    }

    /// Stop accepting and wait for the connections in flight (up to the grace).
    pub async fn stop(mut self) {
        match self.serving.take() {
            Some(Serving::Own(tx, done)) => {
                let _ = tx.send(());
                let _ = done.await;
            }
            Some(Serving::Table(table, _, tending)) => {
                let _ = tending.send(true);
                table.shutdown().await
            }
            None => {}
        }
    }
}

/// How long a stopped proxy's connections may take to finish, in both models.
const GRACE: Duration = Duration::from_secs(2);

impl Drop for Proxy {
    fn drop(&mut self) {
        match self.serving.take() {
            Some(Serving::Own(tx, _)) => {
                let _ = tx.send(());
            }
            Some(Serving::Table(table, resource, tending)) => {
                let _ = tending.send(true);
                let _ = table.remove(&resource);
            }
            None => {}
        }
    }
}

pub mod neutron_conf;

/// A Python script of the Neutron tests run by the venv's python, past its `READY` line (the
/// handshake): the child (killed on drop), its stdin, and the rest of its stdout.
/// NS_TEST_DEBUG=1 shows its stderr (Neutron's log).
pub struct VenvScript {
    pub child: ns_testkit::ChildGuard,
    pub stdin: std::process::ChildStdin,
    pub stdout: std::io::BufReader<std::process::ChildStdout>,
}

/// Start `py script args...` with `env` added; wait for its `READY` line.
pub fn start_venv_script(
    py: &Path,
    script: &Path,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &std::ffi::OsStr)],
) -> VenvScript {
    use std::io::BufRead as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(py)
        .args(["-W", "ignore"])
        .arg(script)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if std::env::var_os("NS_TEST_DEBUG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("start python script");
    let stdin = child.stdin.take().expect("stdin");
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let child = ns_testkit::ChildGuard(child);
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read READY");
    assert!(
        line.starts_with("READY"),
        "{} said {line:?}",
        script.display()
    );
    VenvScript {
        child,
        stdin,
        stdout,
    }
}

/// A shared server's table with `socket` as its agent (every other setting the default) and
/// its housekeeping running (stopped by sending `true`), as the server runs it.
pub fn shared_table(socket: &Path) -> (Arc<Namespaces>, tokio::sync::watch::Sender<bool>) {
    let argv = [
        "ns-metadata-proxy",
        "--router-id",
        "unused",
        "--metadata-proxy-socket",
        socket.to_str().expect("utf-8 path"),
    ];
    let cfg = Config::from_args(Args::try_parse_from(argv).expect("args")).expect("config");
    let table = Arc::new(Namespaces::new(cfg, 65_536));
    let tending = table.housekeeping();
    (table, tending)
}

/// Router `id` handed to `table` on a loopback listener of its own, as the spawner hands a
/// namespace's: the listener's address.
pub fn add_on_loopback(table: &Namespaces, id: &str) -> SocketAddr {
    let l = bind::bind_all(&["127.0.0.1:0".parse().expect("spec")]).expect("bind");
    let l = l.into_iter().next().expect("one listener");
    let addr = l.local_addr().expect("addr");
    table
        .add(
            ns_contract::Resource::new(ns_contract::Kind::Router, id).expect("id"),
            format!("qrouter-{id}"),
            vec![std::os::fd::OwnedFd::from(l)],
            Stats::default(),
        )
        .expect("served");
    addr
}
