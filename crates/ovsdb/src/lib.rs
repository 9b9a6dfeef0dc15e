//! An RFC 7047 OVSDB client for tokio: `unix:`/`tcp:`/`ssl:` remotes with failover and
//! leader selection for clustered databases, JSON-RPC 1.0 stream framing, `monitor_cond` +
//! `update2` folded into a typed replica of only the monitored tables and columns,
//! `monitor_cond_change`, `monitor_cond_since` + `update3` resume, and `transact`.
//!
//! | module | owns |
//! |---|---|
//! | [`remote`] | remote strings and lists |
//! | `tls` | the rustls client for `ssl:` (chain checked against the CA, no host name) |
//! | `transport` | opening a stream to a remote |
//! | `framing` | splitting the byte stream into JSON values |
//! | `conn` | one JSON-RPC connection: requests, responses, echo |
//! | `leader` | whether a (clustered) member may serve us: `_Server` `Database` |
//! | [`schema`] | column types from `get_schema` |
//! | [`datum`] | atoms, sets, maps and their wire forms |
//! | `updates` | reading table-updates2 off the wire row by row |
//! | [`replica`] | the replica and the update2 diff rules |
//! | [`monitor`] | what to monitor: tables, columns, conditions |
//! | [`transact`] | transaction operations and results |
//! | `session` | the background task: connect, check leader, monitor, resume, serve |
//! | [`client`] | the public handle, configuration and events |
#![forbid(unsafe_code)]

pub mod client;
mod conn;
pub mod datum;
pub mod error;
mod framing;
mod leader;
pub mod monitor;
pub mod ovn;
pub mod remote;
pub mod replica;
pub mod schema;
mod session;
mod tls;
pub mod transact;
mod transport;
mod updates;

pub use client::{Client, Config, Event, Status};
pub use datum::{named_uuid, Atom, Datum, Uuid};
pub use error::{Error, Result};
pub use framing::Splitter;
pub use monitor::{Condition, Function, Monitor, TableMonitor};
pub use remote::Remote;
pub use replica::{Replica, Row, RowChange, Table};
pub use schema::{AtomicType, ColumnType, Schema};
pub use tls::TlsFiles;
pub use transact::{Mutation, Mutator, Op, OpResult};
