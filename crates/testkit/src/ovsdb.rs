//! Real `ovsdb-server`s for the tests (the OVSDB client's and the agent's OVN resolver's):
//! started by the test on sockets in its own temp dir from the shipped schemas, killed by pid
//! on drop (ChildGuard), never the system's sockets; `ovn-sbctl`/`ovs-vsctl` runs against them.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{eventually, ChildGuard, TempDir};

pub const OVSDB_SERVER: &str = "ovsdb-server";
pub const OVSDB_TOOL: &str = "ovsdb-tool";
pub const OVN_SBCTL: &str = "ovn-sbctl";
pub const OVS_VSCTL: &str = "ovs-vsctl";
pub const OVS_PKI: &str = "ovs-pki";
pub const OVSDB_CLIENT: &str = "ovsdb-client";
pub const SB_SCHEMA: &str = "/usr/share/ovn/ovn-sb.ovsschema";
pub const VS_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

pub const WAIT: Duration = Duration::from_secs(30);

/// Whether `prog` is on PATH (or in the sbin directories a non-root PATH may lack).
pub fn on_path(prog: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .any(|d| Path::new(d).join(prog).is_file());
    found
}

/// True if every program and file is there; otherwise skip `test` (a failure under CI=true).
pub fn have(test: &str, programs: &[&str], files: &[&str]) -> bool {
    for p in programs {
        if !on_path(p) {
            crate::skip(
                test,
                &format!("needs {p} (openvswitch-common, openvswitch-switch, ovn-common)"),
            );
            return false;
        }
    }
    for f in files {
        if !Path::new(f).is_file() {
            crate::skip(
                test,
                &format!("needs {f} (ovn-central, openvswitch-switch)"),
            );
            return false;
        }
    }
    true
}

/// [`have`] the server, its tools, ovn-sbctl and the Southbound schema.
pub fn have_sb(test: &str) -> bool {
    have(
        test,
        &[OVSDB_SERVER, OVSDB_TOOL, OVSDB_CLIENT, OVN_SBCTL],
        &[SB_SCHEMA],
    )
}

/// Environment for every OVS program: run, log and db dirs inside the test's directory (also
/// its working directory), so nothing touches /var/run/openvswitch.
fn ovs_env(cmd: &mut Command, dir: &Path) {
    cmd.current_dir(dir);
    for var in [
        "OVS_RUNDIR",
        "OVS_DBDIR",
        "OVS_LOGDIR",
        "OVS_SYSCONFDIR",
        "OVN_RUNDIR",
        "OVN_DBDIR",
        "OVN_LOGDIR",
    ] {
        cmd.env(var, dir);
    }
}

/// Run `prog args` to completion in `dir`'s environment; its stdout, or panic with stderr.
pub fn ovs_run(dir: &Path, prog: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(Stdio::null());
    ovs_env(&mut cmd, dir);
    let out = cmd.output().unwrap_or_else(|e| panic!("run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `ovsdb-tool create DB SCHEMA`.
pub fn create_db(dir: &TempDir, name: &str, schema: &str) -> PathBuf {
    let db = dir.join(format!("{name}.db"));
    ovs_run(
        dir.path(),
        OVSDB_TOOL,
        &["create", &db.display().to_string(), schema],
    );
    db
}

/// One ovsdb-server in the foreground, killed on drop.
pub struct Server {
    pub name: String,
    pub sock: PathBuf,
    /// Client port on 127.0.0.1 (ptcp or pssl), if any.
    pub port: Option<u16>,
    args: Vec<String>,
    dir: PathBuf,
    guard: Option<ChildGuard>,
}

impl Server {
    /// Serve `db` on `DIR/NAME.sock` plus `extra_remote` (`ptcp:PORT:127.0.0.1`, ...).
    pub fn start(
        dir: &TempDir,
        name: &str,
        db: &Path,
        port: Option<u16>,
        extra: &[String],
    ) -> Server {
        let sock = dir.join(format!("{name}.sock"));
        let mut args = vec![
            db.display().to_string(),
            format!("--remote=punix:{}", sock.display()),
            format!("--unixctl={}", dir.join(format!("{name}.ctl")).display()),
            format!("--log-file={}", dir.join(format!("{name}.log")).display()),
            "--no-chdir".to_owned(),
        ];
        args.extend(extra.iter().cloned());
        let mut s = Server {
            name: name.to_owned(),
            sock,
            port,
            args,
            dir: dir.path().to_path_buf(),
            guard: None,
        };
        s.restart();
        s
    }

    /// (Re)start the process with the same arguments and wait until it accepts connections.
    pub fn restart(&mut self) {
        self.guard = None;
        let _ = std::fs::remove_file(&self.sock);
        let err =
            File::create(self.dir.join(format!("{}.stderr", self.name))).expect("stderr file");
        let mut cmd = Command::new(OVSDB_SERVER);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        ovs_env(&mut cmd, &self.dir);
        self.guard = Some(ChildGuard(cmd.spawn().expect("spawn ovsdb-server")));
        let (sock, port) = (self.sock.clone(), self.port);
        eventually(&format!("{} to listen", self.name), WAIT, || {
            let unix = std::os::unix::net::UnixStream::connect(&sock).is_ok();
            let tcp = port.is_none_or(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok());
            (unix && tcp).then_some(())
        });
    }

    /// Send the running server the signal `name` (`"STOP"`, `"CONT"`).
    pub fn signal(&self, name: &str) {
        self.guard.as_ref().expect("server running").signal(name);
    }

    /// Kill it (SIGKILL, by pid) and wait until it is gone.
    pub fn kill(&mut self) {
        self.guard = None;
    }

    /// The server's pid while it runs (to stop and continue it).
    pub fn pid(&self) -> Option<u32> {
        self.guard.as_ref().map(ChildGuard::pid)
    }

    pub fn unix(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    pub fn tcp(&self) -> String {
        format!("tcp:127.0.0.1:{}", self.port.expect("server has a port"))
    }

    /// `ovn-sbctl` against this server.
    pub fn sbctl(&self, args: &[&str]) -> String {
        sbctl(&self.dir, &self.unix(), args)
    }

    pub fn db_arg(&self) -> String {
        format!("--db={}", self.unix())
    }
}

/// The usual start of a Southbound test: skip (`None`) unless the programs and schema are
/// there, else a temp dir and an ovsdb-server `sb` serving a fresh database in it.
pub fn sb_server(test: &str, tag: &str) -> Option<(TempDir, Server)> {
    if !have_sb(test) {
        return None;
    }
    let dir = TempDir::new(tag);
    let db = create_db(&dir, "sb", SB_SCHEMA);
    let srv = Server::start(&dir, "sb", &db, None, &[]);
    Some((dir, srv))
}

/// `ovn-sbctl --db=DB args...`.
pub fn sbctl(dir: &Path, db: &str, args: &[&str]) -> String {
    let db = format!("--db={db}");
    let mut all = vec![db.as_str(), "--timeout=20"];
    all.extend_from_slice(args);
    ovs_run(dir, OVN_SBCTL, &all)
}

/// `ovs-pki init` in `DIR/NAME`, then a signed key pair per entry of `certs` (as
/// `DIR/NAME-<cert>-privkey.pem` / `-cert.pem`); the CA certificate's path. The key pairs are
/// named relative to DIR (the programs' working directory): ovs-pki puts the name in the
/// certificate's CN, which holds at most 64 characters.
pub fn pki(dir: &TempDir, name: &str, certs: &[&str]) -> String {
    let root = dir.join(name).display().to_string();
    let log = dir.join(format!("{name}.log")).display().to_string();
    ovs_run(
        dir.path(),
        OVS_PKI,
        &["--dir", &root, "--log", &log, "init"],
    );
    for c in certs {
        let prefix = format!("{name}-{c}");
        ovs_run(
            dir.path(),
            OVS_PKI,
            &["--dir", &root, "--log", &log, "req+sign", &prefix, "switch"],
        );
    }
    format!("{root}/switchca/cacert.pem")
}

/// The client's files of an `ssl:` remote made by [`pssl`]: key, certificate, CA certificate.
pub struct SslClient {
    pub private_key: String,
    pub certificate: String,
    pub ca_cert: String,
}

/// An `ovs-pki` CA and a server and client key pair in `dir` (see [`pki`]); the server's
/// `--remote=pssl:PORT:127.0.0.1` with its key options (for [`sb_and_ovs_servers`]'s
/// `sb_remote`), and the client's files.
pub fn pssl(dir: &TempDir, port: u16) -> ((Option<u16>, Vec<String>), SslClient) {
    let ca = pki(dir, "pki", &["server", "client"]);
    let key = |c: &str, f: &str| dir.join(format!("pki-{c}-{f}.pem")).display().to_string();
    let args = vec![
        format!("--private-key={}", key("server", "privkey")),
        format!("--certificate={}", key("server", "cert")),
        format!("--ca-cert={ca}"),
        format!("--remote=pssl:{port}:127.0.0.1"),
    ];
    let client = SslClient {
        private_key: key("client", "privkey"),
        certificate: key("client", "cert"),
        ca_cert: ca,
    };
    ((Some(port), args), client)
}

/// `ovs-vsctl --no-wait --db=DB args...` (no ovs-vswitchd is running: never wait for it).
pub fn vsctl(dir: &Path, db: &str, args: &[&str]) -> String {
    let db = format!("--db={db}");
    let mut all = vec![db.as_str(), "--no-wait", "--timeout=20"];
    all.extend_from_slice(args);
    ovs_run(dir, OVS_VSCTL, &all)
}

/// A three-member Raft cluster of the Southbound database on loopback (`ovsdb-tool
/// create-cluster` / `join-cluster`), each member killed on drop.
pub struct Cluster {
    // Servers before the dir, so they die before it is removed.
    pub members: Vec<Server>,
    pub dir: TempDir,
}

impl Cluster {
    /// Create the cluster's databases in a new temp dir and start the three members, each
    /// on `DIR/sN.sock` and a `ptcp:` port on 127.0.0.1; return once all have joined.
    pub fn start(tag: &str) -> Cluster {
        let dir = TempDir::new(tag);
        let raft: Vec<String> = (0..3)
            .map(|_| format!("tcp:127.0.0.1:{}", crate::http::free_port()))
            .collect();
        let mut members = Vec::new();
        for (i, local) in raft.iter().enumerate() {
            let name = format!("s{}", i + 1);
            let db = dir.join(format!("{name}.db")).display().to_string();
            if i == 0 {
                ovs_run(
                    dir.path(),
                    OVSDB_TOOL,
                    &["create-cluster", &db, SB_SCHEMA, local],
                );
            } else {
                ovs_run(
                    dir.path(),
                    OVSDB_TOOL,
                    &["join-cluster", &db, "OVN_Southbound", local, &raft[0]],
                );
            }
            let port = crate::http::free_port();
            let remote = format!("--remote=ptcp:{port}:127.0.0.1");
            members.push(Server::start(
                &dir,
                &name,
                std::path::Path::new(&db),
                Some(port),
                &[remote],
            ));
        }
        // A joining member serves its database only once it has joined: wait for that
        // (ovsdb-client waits on the member's _Server database, no polling).
        for m in &members {
            ovs_run(
                dir.path(),
                OVSDB_CLIENT,
                &[
                    "--timeout=30",
                    "wait",
                    &m.unix(),
                    "OVN_Southbound",
                    "connected",
                ],
            );
        }
        let cl = Cluster { members, dir };
        // ovsdb-server drops the oldest history transactions once they hold more atoms than
        // the whole database (ovsdb/transaction.c), so a tiny database can resume from almost
        // nothing. Real Southbound databases are large; give this one some ballast (in a
        // table the tests do not monitor).
        let ballast: Vec<String> = (0..300).map(|i| format!("k{i}=v{i}")).collect();
        let ids = format!("external_ids={{{}}}", ballast.join(","));
        cl.sbctl(&["create", "Datapath_Binding", "tunnel_key=1", &ids]);
        cl
    }

    /// The `--db` list of every member's unix socket (ovn-sbctl finds the leader itself).
    pub fn all_unix(&self) -> String {
        self.members
            .iter()
            .map(Server::unix)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn sbctl(&self, args: &[&str]) -> String {
        sbctl(self.dir.path(), &self.all_unix(), args)
    }

    /// ovn-sbctl through members `which` only (a stopped member would hang it).
    pub fn sbctl_via(&self, which: &[usize], args: &[&str]) -> String {
        let db: Vec<String> = which.iter().map(|&i| self.members[i].unix()).collect();
        sbctl(self.dir.path(), &db.join(","), args)
    }

    /// Wait until member `i` (any role) has `Chassis_Private` row `name`.
    pub fn member_has(&self, i: usize, name: &str) {
        let db = self.members[i].unix();
        eventually(&format!("s{} to have {name}", i + 1), WAIT, || {
            let out = sbctl(
                self.dir.path(),
                &db,
                &[
                    "--no-leader-only",
                    "--bare",
                    "--columns=name",
                    "list",
                    "Chassis_Private",
                ],
            );
            out.lines().any(|l| l.trim() == name).then_some(())
        });
    }
}

/// The usual start of an OVN agent test: skip (`None`) unless the programs and both schemas
/// are there, else a temp dir with an ovsdb-server `sb` (Southbound; `sb_remote` may add a
/// client port and arguments, e.g. `pssl:` with [`pki`] files made in the dir) and one `ovs`
/// (the local `Open_vSwitch` database, its root row created).
pub fn sb_and_ovs_servers(
    test: &str,
    tag: &str,
    sb_remote: impl FnOnce(&TempDir) -> (Option<u16>, Vec<String>),
) -> Option<(TempDir, Server, Server)> {
    if !have(
        test,
        &[
            OVSDB_SERVER,
            OVSDB_TOOL,
            OVSDB_CLIENT,
            OVN_SBCTL,
            OVS_VSCTL,
            OVS_PKI,
        ],
        &[SB_SCHEMA, VS_SCHEMA],
    ) {
        return None;
    }
    let dir = TempDir::new(tag);
    let (port, extra) = sb_remote(&dir);
    let sb_db = create_db(&dir, "sb", SB_SCHEMA);
    let sb = Server::start(&dir, "sb", &sb_db, port, &extra);
    let ovs_db = create_db(&dir, "ovs", VS_SCHEMA);
    let ovs = Server::start(&dir, "ovs", &ovs_db, None, &[]);
    vsctl(dir.path(), &ovs.unix(), &["init"]);
    Some((dir, sb, ovs))
}
