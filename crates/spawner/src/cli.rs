//! Command line: `run` (the daemon) and the control API client subcommands, which find the
//! socket from the same `--config-file`/`--state-dir`/`--control-socket` as the daemon.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use http::{Method, StatusCode};

use crate::client::{call, reason};
use crate::config::Config;
use crate::records::{validate_id, HaState, Router};
use crate::{Error, Result};

/// Per-namespace metadata proxy supervisor (Neutron-compatible).
#[derive(Debug, Parser)]
#[command(name = "ns-metadata-spawner", version)]
pub struct Cli {
    /// INI file (repeatable; later files win). Neutron's dhcp/l3/metadata agent files work.
    #[arg(long = "config-file", global = true, value_name = "FILE")]
    pub config_file: Vec<PathBuf>,
    /// Overrides `[spawner] state_dir` (default /var/lib/ns-metadata).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Control socket path (default <state dir>/control.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
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
    /// Every proxy: namespace, id, state, pid, restarts, last error.
    Status {
        /// Print the JSON of GET /v1/proxies instead of a table.
        #[arg(long)]
        json: bool,
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
}

/// `network ...`
#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Add or update a network from a JSON file (`-` for stdin) with an `id` field.
    Put { file: String },
    /// Remove a network.
    Remove { id: String },
}

impl Cli {
    /// The configuration the daemon would use (for the socket path).
    pub fn config(&self) -> Result<Config> {
        let (cfg, _) = Config::load(&self.config_file)?;
        Ok(cfg.with_overrides(self.state_dir.as_deref(), self.control_socket.as_deref()))
    }
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

/// Run a client subcommand (everything but `run`).
pub async fn client(cli: &Cli) -> Result<()> {
    let sock = cli.config()?.control_socket;
    match &cli.command {
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
        Command::Status { json } => {
            let (st, b) = call(&sock, Method::GET, "/v1/proxies", None).await?;
            check(st, &b)?;
            if *json {
                return out(&format!("{}\n", String::from_utf8_lossy(&b)));
            }
            let list: Vec<serde_json::Value> = serde_json::from_slice(&b)
                .map_err(|e| Error::Invalid(format!("bad status reply: {e}")))?;
            out(&status_table(&list))
        }
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

/// One subnet of a `host-routes` reply (`crate::decide::SubnetRoutes`).
#[derive(serde::Deserialize)]
struct SubnetRoutesOwned {
    subnet_id: String,
    cidr: String,
    host_routes: Vec<crate::records::HostRoute>,
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
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut t = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 6 {
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

    #[test]
    fn parses_subcommands() {
        let c = Cli::try_parse_from([
            "x",
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
        ])
        .expect("parses");
        assert!(
            matches!(c.command, Command::Router(RouterCmd::Add { ref netns, distributed: true, .. }) if netns.as_deref() == Some("ns1"))
        );
        assert_eq!(
            c.config().expect("cfg").control_socket,
            std::path::PathBuf::from("/s/control.sock")
        );
        assert!(
            Cli::try_parse_from(["x", "router", "add", "r1", "--ha-state", "sideways"]).is_err()
        );
        assert!(Cli::try_parse_from(["x", "run", "--stop-proxies-on-exit"]).is_ok());
        assert!(Cli::try_parse_from(["x", "network", "put", "-"]).is_ok());
        assert!(Cli::try_parse_from(["x", "host-routes"]).is_err());
    }
}
