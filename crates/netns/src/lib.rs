//! Network namespaces and rtnetlink: open, enter, create, delete, watch; addresses and links.
//!
//! This is the only crate of the workspace allowed to use `unsafe`: entering a namespace in a
//! forked child (`pre_exec`) and the `NS_GET_NSTYPE` ioctl have no safe wrapper. Every block
//! carries a `// SAFETY:` comment.
#![allow(unsafe_code)]

mod command;
mod error;
mod manage;
mod mem;
mod netlink;
mod ns;
pub mod privs;
mod shm;
mod watch;

#[cfg(feature = "test-util")]
pub mod testing;

pub use command::CommandExt;
pub use error::{Error, Result};
pub use manage::{create, delete, list, validate_name, NETNS_RUN_DIR};
pub use mem::release_free_memory;
pub use netlink::Netlink;
pub use ns::Netns;
pub use shm::SharedCounters;
pub use watch::{watch, watch_dir, NetnsEvent, NetnsWatcher};
