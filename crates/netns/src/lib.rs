//! Network namespaces and rtnetlink: open, enter, create, delete, watch; addresses and links.
//!
//! This is the only crate of the workspace allowed to use `unsafe`: entering a namespace in a
//! forked child (`pre_exec`), `posix_spawn(3)`, the `NS_GET_NSTYPE` and `SIOCGSKNS` ioctls and
//! descriptors received with `SCM_RIGHTS`, shared mappings and the `SIGBUS` handler that
//! guards them have no safe wrapper. Every block
//! carries a `// SAFETY:` comment.
#![allow(unsafe_code)]

mod command;
mod error;
mod fdpass;
mod manage;
mod mem;
mod netlink;
mod ns;
pub mod privs;
mod shm;
mod spawn;
mod watch;

#[cfg(feature = "test-util")]
pub mod testing;

pub use command::CommandExt;
pub use error::{Error, Result};
pub use fdpass::{
    accept_owned, async_listener, recv_fds, recv_fds_upto, send_fds, seqpacket_connect,
    seqpacket_listen, take_inherited, MAX_FDS, SCM_MAX_FD,
};
pub use manage::{create, delete, list, validate_name, NETNS_RUN_DIR};
pub use mem::release_free_memory;
pub use netlink::Netlink;
pub use ns::Netns;
pub use shm::SharedCounters;
pub use spawn::{Spawn, Spawned};
pub use watch::{watch, watch_dir, NetnsEvent, NetnsWatcher};
