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

/// Set by the spawner when it restarts a running proxy by socket takeover (`restart ID`): the
/// comma-separated descriptor numbers of the listening sockets the new proxy must serve
/// instead of binding its `--bind`s (taken from the old proxy with `pidfd_getfd`, so
/// connections waiting in the accept queue are never reset). Honoured only next to
/// [`STATE_ENV`] and a `--ready-fd`; each descriptor must be a listening TCP socket in the
/// proxy's namespace bound to one of its `--bind`s, every `--bind` covered once.
pub const LISTEN_FDS_ENV: &str = "NS_METADATA_SPAWNER_LISTEN_FDS";

/// The first descriptor number of the inherited listeners ([`LISTEN_FDS_ENV`]), after the
/// ready pipe (3), the namespace (4) and the statistics block (5).
pub const FIRST_LISTEN_FD: i32 = 6;
