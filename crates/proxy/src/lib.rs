//! ns-metadata-proxy: the per-namespace metadata relay (see the crate README). A VM's HTTP
//! request to 169.254.169.254 is checked, stripped of spoofable headers, given
//! X-Forwarded-For and the router, network or OVN network id, and sent to the metadata
//! agent's Unix socket as one write (Neutron's agent reads a single `recv(4096)`); the answer is relayed back.
#![forbid(unsafe_code)]

pub mod accesslog;
pub mod app;
pub mod bind;
pub mod bufpool;
pub mod config;
mod conn;
pub mod dropin;
pub mod error;
pub mod haproxy;
pub mod http1;
pub mod process;
pub mod ratelimit;
pub mod relayq;
pub mod request;
pub mod response;
pub mod server;
pub mod shared;
pub mod state;
pub mod stats;
pub mod syslog;
pub mod upstream;
pub mod workers;

#[cfg(test)]
mod fuzz_tests;

pub use config::{Args, Config};
pub use error::{Error, Result};
