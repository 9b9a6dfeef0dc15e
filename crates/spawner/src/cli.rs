//! Command line: `run` (the daemon) and the control API client subcommands. The option
//! table's flags come from `config::SCHEMA`: `--config-file`, `--config-dir`, `--state-dir`
//! and `--control-socket` are global (the clients find the socket from them, as the daemon
//! does), every other option's flag belongs to `run`.

use std::io::{Read, Write};

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use http::{Method, StatusCode};

use ns_contract::neutron::HostRoute;
use ns_contract::{validate_id, Kind};

use crate::client::{call, reason};
use crate::config::{Sources, SCHEMA};
use crate::records::{HaState, Router};
use crate::{Error, Result};

/// Per-namespace metadata proxy supervisor (Neutron-compatible).
#[derive(Debug, Parser)]
#[command(name = "ns-metadata-spawner", version = crate::VERSION)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Flags of the option table that every subcommand takes (before or after its name).
const GLOBAL: &[&str] = &["config-file", "config-dir", "state-dir", "control-socket"];

/// The whole command line: the derive's subcommands plus the option table's flags.
pub fn command() -> clap::Command {
    let (global, run): (Vec<clap::Arg>, Vec<clap::Arg>) = SCHEMA
        .args()
        .into_iter()
        .partition(|a| a.get_long().is_some_and(|l| GLOBAL.contains(&l)));
    // In `run --help`: its own flag, the global ones, then the table's in table order.
    let global = global
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.global(true).display_order(50 + i));
    let run: Vec<clap::Arg> = run
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.display_order(100 + i))
        .collect();
    Cli::command()
        .args(global)
        .mut_subcommand("run", |c| c.args(run))
}

/// A parsed command line: what to do, and where the configuration comes from.
#[derive(Debug)]
pub struct Invocation {
    pub command: Command,
    pub sources: Sources,
}

impl Invocation {
    /// Parse `argv` (clap's error prints usage or help).
    pub fn try_parse_from<I, T>(argv: I) -> std::result::Result<Invocation, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let m = command().try_get_matches_from(argv)?;
        let cli = Cli::from_arg_matches(&m)?;
        Ok(Invocation {
            command: cli.command,
            sources: Sources::command_line(leaf(&m)),
        })
    }

    /// Parse the process's arguments; exit with clap's message on error.
    pub fn parse() -> Invocation {
        Invocation::try_parse_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }
}

/// The innermost subcommand's matches: global flags are propagated down to it.
fn leaf(m: &ArgMatches) -> &ArgMatches {
    match m.subcommand() {
        Some((_, sub)) => leaf(sub),
        None => m,
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the supervisor (foreground; logs to stderr).
    Run {
        /// Stop every proxy when the supervisor exits (default: leave them running).
        #[arg(long)]
        stop_proxies_on_exit: bool,
    },
    /// Routers (l3 agent).
    #[command(subcommand)]
    Router(RouterCmd),
    /// Networks (dhcp agent).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Whether the agent socket is reachable, and every proxy: namespace, id, state, pid,
    /// restarts, last error; in the shared model also each shared server: state, pid,
    /// namespaces handed to it, restarts, last error. Exit status 0 when every proxy (and
    /// server) runs, 3 when one does not (waiting, starting, in backoff), 1 on an error.
    Status {
        /// Print the JSON of GET /v1/status (`{"agent": ..., "proxies": [...]}`) instead.
        #[arg(long)]
        json: bool,
    },
    /// One request to 169.254.169.254:80 from inside a proxy's namespace: status line,
    /// headers, body and timings (the agent's 404 for the namespace's own address proves the
    /// path works). Exit 0 on any HTTP answer, 1 without one.
    Probe {
        /// The proxy's key: the router or network id.
        id: String,
        /// The path to ask for.
        #[arg(default_value = "/")]
        path: String,
    },
    /// A doctor: the agent socket answers, records.json is saved, /run/netns is shared, and
    /// every proxy runs, in its namespace, with the metadata address, alone on port 80, and
    /// answers a probe. One line per problem; exit 1 if there is any.
    Check,
    /// Restart a running proxy without losing a request (after an upgrade of the proxy
    /// binary): the new proxy takes the old one's listening sockets over, then the old one
    /// finishes what it holds and exits; when that is impossible, a plain stop and start
    /// (said in the output). Returns once the new proxy is ready. Exit 0 when restarted, 1
    /// otherwise (unknown id, not running, failed).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "all"])))]
    Restart {
        /// The proxy's key: the router or network id.
        id: Option<String>,
        /// Every running proxy, one at a time (each one ready before the next); proxies
        /// that are not running are skipped and listed. In the shared model: each shared
        /// server once (it hands every namespace to its successor).
        #[arg(long)]
        all: bool,
    },
    /// The DHCP option-121 routes Neutron's dhcp agent would push for a network.
    HostRoutes {
        /// Network id.
        id: String,
    },
}

/// `router ...`
#[derive(Debug, Subcommand)]
pub enum RouterCmd {
    /// Add or update a router.
    Add {
        id: String,
        /// Namespace (default qrouter-ID).
        #[arg(long)]
        netns: Option<String>,
        /// HA state: primary or backup.
        #[arg(long, value_parser = ["primary", "backup", "master"])]
        ha_state: Option<String>,
        /// Distributed (DVR) router.
        #[arg(long)]
        distributed: bool,
    },
    /// Remove a router.
    Remove { id: String },
    /// Every router the spawner knows (from the API, the records file, auto-enabled).
    List,
    /// One router's record and its proxy's status, as JSON.
    Show { id: String },
}

/// `network ...`
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Add or update a network from a JSON file (`-` for stdin) with an `id` field.
    Put { file: String },
    /// Remove a network.
    Remove { id: String },
    /// Every network the spawner knows (from the API and the records file).
    List,
    /// One network's record and its proxy's status, as JSON.
    Show { id: String },
}

fn check(status: StatusCode, body: &[u8]) -> Result<()> {
    if status.is_success() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{}: {}",
            status.as_u16(),
            reason(body)
        )))
    }
}

fn out(text: &str) -> Result<()> {
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| Error::io("write", "stdout", e))
}

/// `status`'s exit status when some proxy is not running (as `systemctl status` uses 3).
pub const NOT_ALL_RUNNING: u8 = 3;

/// Run a client subcommand (everything but `run`); its exit status. The configuration is
/// read only for the socket path; its warnings are the daemon's to log.
pub async fn client(command: &Command, sources: &Sources) -> Result<u8> {
    let sock = sources.load()?.0.control_socket;
    if let Command::Status { json } = command {
        return status(&sock, *json).await;
    }
    match command {
        Command::Probe { id, path } => probe_cmd(&sock, id, path).await,
        Command::Check => check_cmd(&sock).await,
        Command::Restart { id, all } => restart_cmd(&sock, id.as_deref(), *all).await,
        _ => client_call(command, &sock).await.map(|()| 0),
    }
}

/// The status of the proxy keyed `id`, from `GET /v1/proxies`.
async fn proxy_of(sock: &std::path::Path, id: &str) -> Result<serde_json::Value> {
    let list = get_json(sock, "/v1/proxies").await?;
    list.as_array()
        .and_then(|l| l.iter().find(|p| p["key"] == id).cloned())
        .ok_or_else(|| Error::Invalid(format!("no proxy {id}: see `status`")))
}

async fn probe_cmd(sock: &std::path::Path, id: &str, path: &str) -> Result<u8> {
    validate_id(id)?;
    let p = proxy_of(sock, id).await?;
    let netns = p["netns"].as_str().unwrap_or_default().to_owned();
    let pid = cell(&p["pid"]);
    out(&format!(
        "GET http://169.254.169.254{path} in {netns} (proxy {}, pid {pid})\n",
        cell(&p["state"])
    ))?;
    let (ns, path) = (netns.clone(), path.to_owned());
    let r = tokio::task::spawn_blocking(move || crate::doctor::probe(&ns, &path))
        .await
        .map_err(|e| Error::Invalid(format!("probe: {e}")))??;
    let body: String = r.body.chars().take(2048).collect();
    out(&format!(
        "{}\n\n{body}{}\nconnect {:.1} ms, total {:.1} ms\n",
        r.head,
        if body.ends_with('\n') || body.is_empty() {
            ""
        } else {
            "\n"
        },
        r.connect.as_secs_f64() * 1e3,
        r.total.as_secs_f64() * 1e3
    ))?;
    Ok(if r.status.is_some() { 0 } else { 1 })
}

/// `restart ID` / `restart --all`: one `POST /v1/proxies/{id}/restart` at a time.
async fn restart_cmd(sock: &std::path::Path, id: Option<&str>, all: bool) -> Result<u8> {
    if let Some(id) = id.filter(|_| !all) {
        validate_id(id)?;
        out(&restart_one(sock, id).await?)?;
        return Ok(0);
    }
    let status = get_json(sock, "/v1/status").await?;
    if let Some(servers) = status["servers"].as_array().filter(|s| !s.is_empty()) {
        return restart_servers(sock, servers).await;
    }
    let list = &status["proxies"];
    let (mut done, mut failed) = (0usize, 0usize);
    for p in list.as_array().into_iter().flatten() {
        let key = cell(&p["key"]);
        if p["state"] != "running" {
            out(&format!(
                "skipped {key}: not running ({})\n",
                cell(&p["state"])
            ))?;
            continue;
        }
        match restart_one(sock, &key).await {
            Ok(line) => {
                done += 1;
                out(&line)?;
            }
            Err(e) => {
                failed += 1;
                eprintln!("ns-metadata-spawner: {e}");
            }
        }
    }
    out(&format!("{done} restarted, {failed} failed\n"))?;
    Ok(if failed == 0 { 0 } else { 1 })
}

/// `restart --all` in the shared model: each shared server replaced once (it hands every
/// namespace it serves to its successor), not once per namespace.
async fn restart_servers(sock: &std::path::Path, servers: &[serde_json::Value]) -> Result<u8> {
    let (mut done, mut failed) = (0usize, 0usize);
    for s in servers {
        let shard = cell(&s["shard"]);
        let (st, b) = call(
            sock,
            Method::POST,
            &format!("/v1/shared-servers/{shard}/restart"),
            None,
        )
        .await?;
        match check(st, &b).and_then(|()| {
            serde_json::from_slice::<serde_json::Value>(&b)
                .map_err(|e| Error::Invalid(format!("restart reply: {e}")))
        }) {
            Ok(v) => {
                done += 1;
                out(&format!(
                    "restarted shared server {shard}: pid {} -> {} ({})\n",
                    cell(&v["old_pid"]),
                    cell(&v["new_pid"]),
                    cell(&v["note"])
                ))?;
            }
            Err(e) => {
                failed += 1;
                eprintln!("ns-metadata-spawner: shared server {shard}: {e}");
            }
        }
    }
    out(&format!(
        "{done} shared servers restarted, {failed} failed\n"
    ))?;
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Restart one proxy; the line that says how.
async fn restart_one(sock: &std::path::Path, id: &str) -> Result<String> {
    let (st, b) = call(
        sock,
        Method::POST,
        &format!("/v1/proxies/{id}/restart"),
        None,
    )
    .await?;
    check(st, &b)?;
    let v: serde_json::Value =
        serde_json::from_slice(&b).map_err(|e| Error::Invalid(format!("restart reply: {e}")))?;
    let how = match (v["method"].as_str(), v["note"].as_str()) {
        (Some("takeover"), _) => "socket takeover, nothing lost".to_owned(),
        (Some("shared-server"), _) => {
            "the shared server replaced for every namespace of its shard, sockets handed over, \
             nothing lost"
                .to_owned()
        }
        (_, Some(why)) => format!("stopped and started, connections meanwhile refused: {why}"),
        (m, None) => m.unwrap_or("?").to_owned(),
    };
    Ok(format!(
        "restarted {id}: pid {} -> {} ({how})\n",
        cell(&v["old_pid"]),
        cell(&v["new_pid"])
    ))
}

async fn check_cmd(sock: &std::path::Path) -> Result<u8> {
    let (st, b) = call(sock, Method::GET, "/v1/status", None).await?;
    check(st, &b)?;
    let reply: StatusReplyOwned =
        serde_json::from_slice(&b).map_err(|e| Error::Invalid(format!("bad status reply: {e}")))?;
    let mut problems = Vec::new();
    if !reply.agent.reachable {
        problems.push(reply.agent.summary());
    }
    if let Some(r) = reply.records.summary() {
        problems.push(r);
    }
    if crate::doctor::run_netns_shared() == Some(false) {
        problems.push(format!(
            "{} is not a shared mount: namespaces created in another mount namespace are not seen here (mount --make-shared {0})",
            ns_netns::NETNS_RUN_DIR
        ));
    }
    // A shared server that is not running (hung: being replaced; restarting; backoff) is
    // why its namespaces are not: said once, with its reason.
    for sv in reply.servers.iter().filter(|sv| sv.state != "running") {
        problems.push(format!(
            "shared server {} is {}{}",
            sv.shard,
            sv.state,
            sv.last_error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    // A hung agent accepts connections, so it looks reachable; every probe would then wait
    // out its timeout. Asked once; the probes are left out if it does not answer.
    let mut probe = true;
    if reply.agent.reachable {
        if let Err(why) = crate::doctor::agent_answers(&reply.agent.socket).await {
            problems.push(format!(
                "agent socket {}: {why}: every VM's request waits (a hung agent, or its Nova); probes through the proxies left out",
                reply.agent.socket.display()
            ));
            probe = false;
        }
    }
    let mut held = crate::doctor::HeldSockets::default();
    let mut probes = Vec::new();
    for p in &reply.proxies {
        let netns = cell(&p["netns"]);
        let state = cell(&p["state"]);
        match (state.as_str(), p["pid"].as_u64()) {
            ("running", Some(pid)) => {
                let interface = cell(&p["interface"]);
                let (found, probeable) =
                    crate::doctor::check_proxy(&netns, &interface, pid as u32, &mut held).await;
                problems.extend(found);
                if probe && probeable {
                    probes.push(netns);
                }
            }
            _ => problems.push(format!(
                "{netns}: proxy {} is {state}{}",
                cell(&p["key"]),
                p["last_error"]
                    .as_str()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )),
        }
    }
    // At most PROBE_PARALLEL at once, the problems in the namespaces' order.
    use futures::StreamExt;
    let probed: Vec<Vec<String>> = futures::stream::iter(probes)
        .map(|netns| async move { crate::doctor::probe_problems(&netns).await })
        .buffered(crate::doctor::PROBE_PARALLEL)
        .collect()
        .await;
    problems.extend(probed.into_iter().flatten());
    if problems.is_empty() {
        out(&format!(
            "ok: {} proxies running and answering; {}\n",
            reply.proxies.len(),
            reply.agent.summary()
        ))?;
        return Ok(0);
    }
    out(&problems
        .iter()
        .map(|p| format!("{p}\n"))
        .collect::<String>())?;
    Ok(1)
}

/// `status`: the table (or JSON), and whether every proxy runs.
async fn status(sock: &std::path::Path, json: bool) -> Result<u8> {
    let (st, b) = call(sock, Method::GET, "/v1/status", None).await?;
    check(st, &b)?;
    let reply: StatusReplyOwned =
        serde_json::from_slice(&b).map_err(|e| Error::Invalid(format!("bad status reply: {e}")))?;
    let all_running = reply
        .proxies
        .iter()
        .all(|p| p.get("state").and_then(serde_json::Value::as_str) == Some("running"))
        && reply.servers.iter().all(|s| s.state == "running");
    if json {
        out(&format!("{}\n", String::from_utf8_lossy(&b)))?;
    } else {
        // The table first (scripts read its header line), the agent line under it, then
        // records.json's state when it is not fine.
        let records = reply
            .records
            .summary()
            .map(|r| format!("{r}\n"))
            .unwrap_or_default();
        let servers = if reply.servers.is_empty() {
            String::new()
        } else {
            format!("\n{}", servers_table(&reply.servers))
        };
        out(&format!(
            "{}{servers}\n{}\n{records}",
            status_table(&reply.proxies),
            reply.agent.summary()
        ))?;
    }
    Ok(if all_running { 0 } else { NOT_ALL_RUNNING })
}

/// GET `path` and the JSON it answers.
async fn get_json(sock: &std::path::Path, path: &str) -> Result<serde_json::Value> {
    let (st, b) = call(sock, Method::GET, path, None).await?;
    check(st, &b)?;
    serde_json::from_slice(&b).map_err(|e| Error::Invalid(format!("bad reply to {path}: {e}")))
}

/// `router show` / `network show`: the record and the status of its proxy (`null` when it
/// has none: an HA backup, a network that needs no proxy).
async fn show(sock: &std::path::Path, kind: &str, id: &str) -> Result<()> {
    validate_id(id)?;
    let record = get_json(sock, &format!("/v1/{kind}s/{id}")).await;
    let proxies = get_json(sock, "/v1/proxies").await?;
    // A network of the OVN source has no record: show its proxy.
    let ovn = Kind::OvnNetwork.as_str();
    let record = match record {
        Err(e) if kind == "network" => {
            let Some(p) = proxies.as_array().and_then(|l| {
                l.iter()
                    .find(|p| p["key"] == id && p["kind"] == ovn)
                    .cloned()
            }) else {
                return Err(e);
            };
            let both = serde_json::json!({ "ovn_network": { "id": id, "netns": p["netns"], "interface": p["interface"] }, "proxy": p });
            return out(&format!(
                "{}\n",
                serde_json::to_string_pretty(&both).map_err(|e| Error::Invalid(e.to_string()))?
            ));
        }
        r => r?,
    };
    let proxy = proxies
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|p| p["key"] == id && p["kind"] == kind)
                .cloned()
        })
        .unwrap_or(serde_json::Value::Null);
    let both = serde_json::json!({ kind: record, "proxy": proxy });
    out(&format!(
        "{}\n",
        serde_json::to_string_pretty(&both).map_err(|e| Error::Invalid(e.to_string()))?
    ))
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.len().to_string(),
        x => x.to_string(),
    }
}

async fn client_call(command: &Command, sock: &std::path::Path) -> Result<()> {
    let sock = sock.to_owned();
    match command {
        Command::Router(RouterCmd::List) => {
            let list = get_json(&sock, "/v1/routers").await?;
            let mut rows = vec![["ID", "NETNS", "HA STATE", "DISTRIBUTED"]
                .map(str::to_owned)
                .to_vec()];
            for r in list.as_array().into_iter().flatten() {
                let netns = match &r["netns"] {
                    serde_json::Value::Null => format!("qrouter-{}", cell(&r["id"])),
                    n => cell(n),
                };
                rows.push(vec![
                    cell(&r["id"]),
                    netns,
                    cell(&r["ha_state"]),
                    cell(&r["distributed"]),
                ]);
            }
            out(&table(rows))
        }
        Command::Network(NetworkCmd::List) => {
            let list = get_json(&sock, "/v1/networks").await?;
            let mut rows = vec![["ID", "INTERFACE", "SUBNETS", "PORTS"]
                .map(str::to_owned)
                .to_vec()];
            for n in list.as_array().into_iter().flatten() {
                rows.push(vec![
                    cell(&n["id"]),
                    cell(&n["interface"]),
                    cell(&n["subnets"]),
                    cell(&n["ports"]),
                ]);
            }
            // OVN networks come from the Southbound database (source = ovn), not records:
            // listed from their proxies.
            let proxies = get_json(&sock, "/v1/proxies").await?;
            for p in proxies.as_array().into_iter().flatten() {
                if p["kind"] == Kind::OvnNetwork.as_str() {
                    rows.push(vec![
                        cell(&p["id"]),
                        cell(&p["interface"]),
                        "(ovn)".to_owned(),
                        "-".to_owned(),
                    ]);
                }
            }
            out(&table(rows))
        }
        Command::Router(RouterCmd::Show { id }) => show(&sock, "router", id).await,
        Command::Network(NetworkCmd::Show { id }) => show(&sock, "network", id).await,
        Command::Run { .. } => Err(Error::Invalid("run is not a client command".into())),
        Command::Router(RouterCmd::Add {
            id,
            netns,
            ha_state,
            distributed,
        }) => {
            validate_id(id)?;
            let ha_state = match ha_state.as_deref() {
                Some("backup") => Some(HaState::Backup),
                Some(_) => Some(HaState::Primary),
                None => None,
            };
            let r = Router {
                id: id.clone(),
                netns: netns.clone(),
                ha_state,
                distributed: *distributed,
            };
            let body = serde_json::to_vec(&r).map_err(|e| Error::Invalid(e.to_string()))?;
            let (st, b) =
                call(&sock, Method::PUT, &format!("/v1/routers/{id}"), Some(body)).await?;
            check(st, &b)?;
            out(&format!("router {id} added (netns {})\n", r.netns()))
        }
        Command::Router(RouterCmd::Remove { id }) => {
            validate_id(id)?;
            let (st, b) = call(&sock, Method::DELETE, &format!("/v1/routers/{id}"), None).await?;
            check(st, &b)?;
            out(&format!("router {id} removed\n"))
        }
        Command::Network(NetworkCmd::Put { file }) => {
            let mut text = Vec::new();
            if file == "-" {
                std::io::stdin()
                    .read_to_end(&mut text)
                    .map_err(|e| Error::io("read", "stdin", e))?;
            } else {
                text = std::fs::read(file).map_err(|e| Error::io("read", file, e))?;
            }
            let v: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| Error::BadRecord(format!("{file}: bad JSON: {e}")))?;
            let id = v
                .get("id")
                .and_then(|i| i.as_str())
                .ok_or_else(|| {
                    Error::BadRecord(format!("{file}: the network needs a string \"id\" field"))
                })?
                .to_owned();
            validate_id(&id)?;
            let (st, b) = call(
                &sock,
                Method::PUT,
                &format!("/v1/networks/{id}"),
                Some(text),
            )
            .await?;
            check(st, &b)?;
            out(&format!("network {id} stored\n"))
        }
        Command::Network(NetworkCmd::Remove { id }) => {
            validate_id(id)?;
            let (st, b) = call(&sock, Method::DELETE, &format!("/v1/networks/{id}"), None).await?;
            check(st, &b)?;
            out(&format!("network {id} removed\n"))
        }
        Command::Status { .. }
        | Command::Probe { .. }
        | Command::Check
        | Command::Restart { .. } => Err(Error::Invalid("answered by client()".into())),
        Command::HostRoutes { id } => {
            validate_id(id)?;
            let (st, b) = call(
                &sock,
                Method::GET,
                &format!("/v1/networks/{id}/host-routes"),
                None,
            )
            .await?;
            check(st, &b)?;
            let subnets: Vec<serde_json::Value> = serde_json::from_slice(&b)
                .map_err(|e| Error::Invalid(format!("bad reply: {e}")))?;
            let mut s = String::new();
            for sn in subnets {
                let sn: SubnetRoutesOwned = serde_json::from_value(sn)
                    .map_err(|e| Error::Invalid(format!("bad reply: {e}")))?;
                s.push_str(&format!("subnet {} ({}):\n", sn.subnet_id, sn.cidr));
                if sn.host_routes.is_empty() {
                    s.push_str("  (no classless static routes)\n");
                }
                for r in sn.host_routes {
                    s.push_str(&format!("  {} via {}\n", r.destination, r.nexthop));
                }
            }
            out(&s)
        }
    }
}

/// One subnet of a `host-routes` reply (`decide::SubnetRoutes` on the wire).
#[derive(serde::Deserialize)]
struct SubnetRoutesOwned {
    subnet_id: String,
    cidr: String,
    host_routes: Vec<HostRoute>,
}

/// A `GET /v1/status` reply (`api::StatusReply` on the wire).
#[derive(serde::Deserialize)]
struct StatusReplyOwned {
    agent: crate::agent_probe::AgentStatus,
    #[serde(default)]
    records: crate::supervisor::RecordsState,
    proxies: Vec<serde_json::Value>,
    #[serde(default)]
    servers: Vec<crate::shared_model::ServerStatus>,
}

/// Format `GET /v1/proxies` as an aligned table.
pub fn status_table(list: &[serde_json::Value]) -> String {
    let s = |v: &serde_json::Value, k: &str| match v.get(k) {
        None | Some(serde_json::Value::Null) => "-".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
    };
    let mut rows = vec![[
        "NETNS",
        "KIND",
        "ID",
        "STATE",
        "PID",
        "RESTARTS",
        "LAST ERROR",
    ]
    .map(str::to_owned)
    .to_vec()];
    for p in list {
        let mut state = s(p, "state");
        if p.get("adopted").and_then(serde_json::Value::as_bool) == Some(true) {
            state.push_str(" (adopted)");
        }
        rows.push(vec![
            s(p, "netns"),
            s(p, "kind"),
            s(p, "id"),
            state,
            s(p, "pid"),
            s(p, "restarts"),
            s(p, "last_error"),
        ]);
    }
    table(rows)
}

/// The shared servers as an aligned table (under the proxies' in `status`).
pub fn servers_table(list: &[crate::shared_model::ServerStatus]) -> String {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let mut rows = vec![[
        "SHARED SERVER",
        "STATE",
        "PID",
        "NAMESPACES",
        "RESTARTS",
        "LAST ERROR",
    ]
    .map(str::to_owned)
    .to_vec()];
    for s in list {
        let mut state = s.state.clone();
        if s.adopted {
            state.push_str(" (adopted)");
        }
        rows.push(vec![
            s.shard.to_string(),
            state,
            opt(s.pid.map(|p| p.to_string())),
            s.namespaces.to_string(),
            s.restarts.to_string(),
            opt(s.last_error.clone()),
        ]);
    }
    table(rows)
}

/// Rows (the first is the header) as aligned columns; the last column is not padded.
fn table(rows: Vec<Vec<String>>) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut t = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        t.push_str(line.join("  ").trim_end());
        t.push('\n');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_servers_table_has_a_line_per_server() {
        let s = crate::shared_model::ServerStatus {
            shard: 0,
            state: "running".into(),
            pid: Some(4242),
            namespaces: 2000,
            restarts: 1,
            last_error: Some("shared server killed by signal 9".into()),
            adopted: true,
        };
        let t = servers_table(&[s]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert!(lines[0].starts_with("SHARED SERVER  STATE"), "{t}");
        let cells: Vec<&str> = lines[1].split("  ").filter(|c| !c.is_empty()).collect();
        assert_eq!(
            cells.iter().map(|c| c.trim()).collect::<Vec<_>>(),
            [
                "0",
                "running (adopted)",
                "4242",
                "2000",
                "1",
                "shared server killed by signal 9"
            ],
            "{t}"
        );
    }

    #[test]
    fn status_table_aligns_and_marks_adopted() {
        let list: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"netns":"qrouter-r1","kind":"router","id":"r1","state":"running","pid":42,"restarts":0,"last_error":null,"adopted":true},
                {"netns":"qdhcp-network-long","kind":"network","id":"n1","state":"backoff","pid":null,"restarts":3,"last_error":"proxy exited (exit status: 1)","adopted":false}]"#,
        )
        .expect("json");
        let t = status_table(&list);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("NETNS               KIND     ID  STATE"),
            "{t}"
        );
        assert!(
            lines[1].contains("running (adopted)") && lines[1].contains(" 42 "),
            "{t}"
        );
        assert!(lines[2].ends_with("proxy exited (exit status: 1)"), "{t}");
        assert!(lines[2].contains(" - "), "null pid shown as -: {t}");
    }

    fn parse(argv: &[&str]) -> Invocation {
        Invocation::try_parse_from(std::iter::once("x").chain(argv.iter().copied()))
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }

    fn control_socket(argv: &[&str]) -> PathBuf {
        parse(argv).sources.load().expect("config").0.control_socket
    }

    #[test]
    fn command_is_valid_clap() {
        command().debug_assert();
    }

    #[test]
    fn parses_subcommands() {
        let c = parse(&[
            "router",
            "add",
            "r1",
            "--netns",
            "ns1",
            "--ha-state",
            "backup",
            "--distributed",
            "--state-dir",
            "/s",
        ]);
        assert!(
            matches!(c.command, Command::Router(RouterCmd::Add { ref netns, distributed: true, .. }) if netns.as_deref() == Some("ns1"))
        );
        assert_eq!(
            c.sources.load().expect("cfg").0.control_socket,
            PathBuf::from("/s/control.sock")
        );
        let bad = |argv: &[&str]| Invocation::try_parse_from(argv.iter().copied()).is_err();
        assert!(bad(&["x", "router", "add", "r1", "--ha-state", "sideways"]));
        assert!(!bad(&["x", "run", "--stop-proxies-on-exit"]));
        assert!(!bad(&["x", "network", "put", "-"]));
        assert!(bad(&["x", "host-routes"]));
        assert!(bad(&["x", "restart"]), "an id or --all");
        assert!(bad(&["x", "restart", "r1", "--all"]));
        assert!(!bad(&["x", "restart", "r1"]));
        assert!(matches!(
            parse(&["restart", "--all"]).command,
            Command::Restart {
                id: None,
                all: true
            }
        ));
        // Option flags other than the socket's belong to `run`.
        assert!(bad(&["x", "status", "--ipv6"]));
        assert!(bad(&["x", "--ipv6", "run"]));
    }

    #[test]
    fn socket_flags_work_before_and_after_the_subcommand() {
        let want = PathBuf::from("/s/control.sock");
        assert_eq!(control_socket(&["--state-dir", "/s", "status"]), want);
        assert_eq!(control_socket(&["status", "--state-dir=/s"]), want);
        assert_eq!(control_socket(&["--state_dir", "/s", "run"]), want);
        let c = control_socket(&["--control-socket", "/c.sock", "--state-dir", "/s", "status"]);
        assert_eq!(c, PathBuf::from("/c.sock"));
        assert_eq!(
            control_socket(&["status"]),
            PathBuf::from("/var/lib/ns-metadata/control.sock")
        );
    }

    #[test]
    fn run_takes_a_flag_for_every_option() {
        let c = parse(&[
            "run",
            "--ipv6",
            "--router-interface",
            "eth1",
            "--timeout-server",
            "90",
            "--agent-keepalive",
            "on",
            "--state-path",
            "/srv/n",
            "--enable-isolated-metadata=false",
            "--stop-proxies-on-exit",
        ]);
        assert!(matches!(
            c.command,
            Command::Run {
                stop_proxies_on_exit: true
            }
        ));
        let (cfg, _) = c.sources.load().expect("cfg");
        assert!(cfg.ipv6 && !cfg.enable_isolated_metadata);
        assert_eq!(cfg.router_interface, "eth1");
        assert_eq!(cfg.timeouts.server.as_secs(), 90);
        assert_eq!(cfg.agent_keepalive, ns_contract::KeepaliveMode::On);
        assert_eq!(
            cfg.metadata_proxy_socket,
            PathBuf::from("/srv/n/metadata_proxy")
        );
        let err = parse(&["run", "--ready-timeout", "0"])
            .sources
            .load()
            .expect_err("0 s");
        assert!(
            err.to_string()
                .starts_with("--ready-timeout: 0 is out of range"),
            "{err}"
        );
    }
}
