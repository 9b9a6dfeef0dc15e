//! The internal convention between `ns-metadata-spawner` and the proxies it starts (issue 19).
//!
//! The spawner starts proxies with `posix_spawn` (no fork: no code of its own runs in the
//! child), so the proxy enters its namespace itself: the spawner passes the namespace as an
//! open descriptor on [`NETNS_FD`] and names it in [`NETNS_FD_ENV`]; the proxy `setns`es its
//! main thread into it before anything else and closes it. The argv stays what it always was
//! (`--router-id ID ...`), so running proxies are still recognised across an upgrade.
//! A proxy honours the variable only next to [`STATE_ENV`] and its `--ready-fd`, never with
//! `--netns`, `--daemonize` or as the haproxy drop-in.

/// Set by the spawner in every proxy it starts: its state dir. Marks the proxy as started by
/// that spawner (the only proof besides a pid file that lets a restarted spawner stop it).
pub const STATE_ENV: &str = "NS_METADATA_SPAWNER_STATE_DIR";

/// The descriptor number of the namespace the proxy must enter.
pub const NETNS_FD: i32 = 4;

/// Set to [`NETNS_FD`] by the spawner when it passes a namespace to enter.
pub const NETNS_FD_ENV: &str = "NS_METADATA_SPAWNER_NETNS_FD";
