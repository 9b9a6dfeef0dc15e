//! Hung processes (`[spawner] hang_timeout`), a watchdog in the manner of systemd's
//! `WatchdogSec=`: a proxy or shared server whose event loop stops (a bug, a stuck syscall, a
//! cgroup freezer) keeps its sockets and never exits, so the pidfd never says anything. Each
//! process bumps a heartbeat counter from a timer task of its serving runtime
//! ([`ns_contract::proxy_stats::SLOT_HEARTBEAT`]); the spawner looks at it every period, and
//! one that has not moved for longer than the timeout, and is not stopped (`T`/`t`: SIGSTOP
//! or a debugger, left alone on purpose), is hung: its owner logs it, counts it, kills it
//! through its pidfd and replaces it as if it had died.
//!
//! Periods per model: one shared server serves every namespace of its shard, so it beats
//! every second (one wake-up a second for the whole node); a per-namespace proxy is asked for
//! a quarter of the timeout (15 s by default), since a node runs thousands of them: a period
//! that long is beaten by the housekeeping tick the proxy runs anyway (every 5 s, on the
//! runtime that accepts), so the default costs no wake-up at all (bench figure 15); a shorter
//! one (a timeout under 52 s) gets a timer of its own. A beat dirties the block's page,
//! written back at most once per writeback interval, as one request would. Either way
//! detection takes between the timeout and the timeout plus a period: a faster beat would not
//! find a hang sooner.
//!
//! A process with helper serving threads (`proxy_threads`) beats only while each of them ran
//! the small task an earlier beat sent it, or was sent it less than 100 ms ago
//! (`ns_metadata_proxy::workers::answering`), so a helper whose loop stopped is caught as the
//! main thread's would be, a period or two later.
//!
//! With `proxy_metrics = false` the block (the shared server's slab) is still made while
//! hangs are watched, for the heartbeat alone: a per-namespace proxy gets it as
//! `--heartbeat-fd` and counts nothing into it, a shared server gets no namespace records.
//!
//! Not watched, logged once: a process with no heartbeat block (its block could not be
//! made), and one whose beat never moves (an older proxy adopted
//! after an upgrade, or one started while the timeout was 0). A process started by this
//! spawner must beat before READY (its beat was zeroed); an adopted one counts as watched
//! once its beat has moved. The hangs are counted here and exported by `crate::metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Config, ProxyModel};

/// The shared server's period (at most; a quarter of the timeout when that is shorter).
const SHARED_PERIOD: Duration = Duration::from_secs(1);

/// How long an adopted process may take to show a first beat before it counts as not
/// watched (when the timeout is shorter): a per-namespace proxy takes up a period written by
/// its adopting spawner at its next housekeeping tick, at most 6.5 s away
/// (`ns_contract::proxy_stats::HEARTBEAT_TICK_GAP_MS`).
const ADOPTED_GRACE: Duration = Duration::from_secs(15);
const _: () = assert!(
    ADOPTED_GRACE.as_millis() >= 2 * ns_contract::proxy_stats::HEARTBEAT_TICK_GAP_MS as u128
);

/// How often `model`'s processes beat (and the spawner looks) under `cfg`; zero when hangs
/// are not watched.
pub fn period(cfg: &Config, model: ProxyModel) -> Duration {
    let quarter = cfg.hang_timeout / 4;
    match model {
        ProxyModel::Shared => quarter.min(SHARED_PERIOD),
        ProxyModel::PerNamespace => quarter,
    }
}

/// The period as the block's slot holds it (milliseconds, at least 1 when not zero).
pub fn period_ms(cfg: &Config, model: ProxyModel) -> u64 {
    let p = period(cfg, model);
    if p.is_zero() {
        return 0;
    }
    u64::try_from(p.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// What one look at a heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// Beating, or not stale yet.
    Alive,
    /// Stopped (`T`/`t`) with a still beat: left alone, its clock restarted.
    Stopped,
    /// Not watched from now on, and why.
    NotWatched(&'static str),
    /// Not moved for this long, and not stopped.
    Hung(Duration),
}

/// One process's watchdog: the beat last seen and since when, the clock passed in.
#[derive(Debug)]
pub struct Watchdog {
    timeout: Duration,
    /// Started by this spawner (its beat was zeroed before the start).
    fresh: bool,
    last: Option<u64>,
    since: Instant,
    /// The beat was seen alive (non-zero at the first look of a fresh process, or moved).
    moved: bool,
}

impl Watchdog {
    /// A watchdog for a process started by us (`fresh`) or adopted.
    pub fn new(timeout: Duration, fresh: bool, now: Instant) -> Watchdog {
        Watchdog {
            timeout,
            fresh,
            last: None,
            since: now,
            moved: false,
        }
    }

    /// Look at the beat (`None`: no block to read); `stopped` says whether the process is
    /// stopped, asked only when the beat is still (a `/proc` read saved per healthy look).
    pub fn look(
        &mut self,
        now: Instant,
        beat: Option<u64>,
        stopped: impl FnOnce() -> bool,
    ) -> Look {
        let Some(beat) = beat else {
            return Look::NotWatched(
                "no heartbeat block to read (it could not be made, or the process was started without one)",
            );
        };
        let Some(last) = self.last else {
            self.last = Some(beat);
            self.since = now;
            if self.fresh {
                if beat == 0 {
                    return Look::NotWatched(
                        "it did not beat before READY (a proxy binary older than the spawner)",
                    );
                }
                self.moved = true;
            }
            return Look::Alive;
        };
        if beat != last {
            self.last = Some(beat);
            self.since = now;
            self.moved = true;
            return Look::Alive;
        }
        if stopped() {
            // A stopped process gets a whole timeout once it continues.
            self.since = now;
            return Look::Stopped;
        }
        let still = now.saturating_duration_since(self.since);
        if self.moved {
            return if still <= self.timeout {
                Look::Alive
            } else {
                Look::Hung(still)
            };
        }
        if still <= self.timeout.max(ADOPTED_GRACE) {
            return Look::Alive;
        }
        Look::NotWatched("its heartbeat never moved since it was adopted (an older proxy, or a shared server started while hang_timeout was 0)")
    }
}

/// Resolves when the process `pid` (`what`, for the log) is hung, with how long its beat has
/// been still; never when hangs are not watched (`period` zero) or it turns out not to be
/// watchable (logged once). `read` gives its beat now.
pub async fn until_hung(
    timeout: Duration,
    period: Duration,
    fresh: bool,
    pid: u32,
    what: &str,
    mut read: impl FnMut() -> Option<u64>,
) -> Duration {
    if timeout.is_zero() || period.is_zero() {
        return std::future::pending().await;
    }
    let mut dog = Watchdog::new(timeout, fresh, Instant::now());
    let mut was_stopped = false;
    // The first look right away: a fresh process beat before READY.
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        next += period;
        let stopped = || matches!(crate::pidfile::state(pid), Some('T' | 't'));
        match dog.look(Instant::now(), read(), stopped) {
            Look::Alive => was_stopped = false,
            Look::Stopped => {
                if !was_stopped {
                    tracing::warn!(pid, what, "stopped (SIGSTOP or a debugger) with a still heartbeat: left alone; kill -CONT resumes it");
                }
                was_stopped = true;
            }
            Look::NotWatched(why) => {
                tracing::info!(pid, what, why, "not watched for hangs");
                return std::future::pending().await;
            }
            Look::Hung(still) => return still,
        }
    }
}

/// Hangs seen since this spawner started, by what hung: the kinds of per-namespace proxies
/// (`Kind::ALL` order), then shared servers.
static HANGS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// What hung, as the metric's labels say.
#[derive(Debug, Clone, Copy)]
pub enum Hung {
    Proxy(ns_contract::Kind),
    SharedServer,
}

impl Hung {
    fn index(self) -> usize {
        match self {
            Hung::Proxy(k) => ns_contract::Kind::ALL
                .iter()
                .position(|x| *x == k)
                .unwrap_or(0),
            Hung::SharedServer => 3,
        }
    }
}

/// Count one hang.
pub fn count(what: Hung) {
    if let Some(c) = HANGS.get(what.index()) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Hangs of `what` counted since this spawner started (`/metrics`).
pub fn hangs(what: Hung) -> u64 {
    HANGS
        .get(what.index())
        .map_or(0, |c| c.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(60);

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn a_still_beat_is_hung_after_the_timeout_and_a_moving_one_never() {
        let t0 = Instant::now();
        let mut d = Watchdog::new(T, true, t0);
        assert_eq!(d.look(t0, Some(1), || false), Look::Alive);
        assert_eq!(
            d.look(at(t0, 15), Some(2), || unreachable!(
                "asked only when still"
            )),
            Look::Alive
        );
        assert_eq!(
            d.look(at(t0, 75), Some(2), || false),
            Look::Alive,
            "60 s exactly"
        );
        assert_eq!(
            d.look(at(t0, 76), Some(2), || false),
            Look::Hung(Duration::from_secs(61))
        );
        // Any change is a beat, a lower value too (a block cut short reads 0).
        let mut d = Watchdog::new(T, true, t0);
        for (i, v) in [5, 6, 0, 1].into_iter().enumerate() {
            let now = at(t0, 50 * i as u64);
            assert_eq!(d.look(now, Some(v), || false), Look::Alive);
        }
    }

    #[test]
    fn a_stopped_process_is_left_alone_and_gets_a_whole_timeout_after() {
        let t0 = Instant::now();
        let mut d = Watchdog::new(T, true, t0);
        assert_eq!(d.look(t0, Some(3), || false), Look::Alive);
        assert_eq!(d.look(at(t0, 500), Some(3), || true), Look::Stopped);
        assert_eq!(d.look(at(t0, 559), Some(3), || false), Look::Alive);
        assert_eq!(
            d.look(at(t0, 561), Some(3), || false),
            Look::Hung(Duration::from_secs(61))
        );
    }

    #[test]
    fn old_layouts_and_missing_blocks_are_not_watched() {
        let t0 = Instant::now();
        // Started by us but never beat before READY: an older proxy binary.
        let mut d = Watchdog::new(T, true, t0);
        assert!(matches!(d.look(t0, Some(0), || false), Look::NotWatched(_)));
        let mut d = Watchdog::new(T, true, t0);
        assert!(matches!(d.look(t0, None, || false), Look::NotWatched(_)));
        // Adopted: watched only once its beat moved; a still one is never called hung.
        let mut d = Watchdog::new(T, false, t0);
        assert_eq!(d.look(t0, Some(40), || false), Look::Alive);
        // A short timeout still waits ADOPTED_GRACE for the first beat of an adopted one.
        let short = Duration::from_secs(1);
        let mut e = Watchdog::new(short, false, t0);
        assert_eq!(e.look(t0, Some(7), || false), Look::Alive);
        assert_eq!(e.look(at(t0, 6), Some(7), || false), Look::Alive);
        assert_eq!(e.look(at(t0, 7), Some(8), || false), Look::Alive);
        assert_eq!(
            e.look(at(t0, 9), Some(8), || false),
            Look::Hung(Duration::from_secs(2))
        );
        assert!(matches!(
            d.look(at(t0, 61), Some(40), || false),
            Look::NotWatched(_)
        ));
        let mut d = Watchdog::new(T, false, t0);
        assert_eq!(d.look(t0, Some(0), || false), Look::Alive);
        assert_eq!(d.look(at(t0, 15), Some(1), || false), Look::Alive);
        assert!(matches!(
            d.look(at(t0, 80), Some(1), || false),
            Look::Hung(_)
        ));
    }

    #[test]
    fn periods_per_model() {
        let mut cfg = crate::config::Config::defaults();
        cfg.hang_timeout = T;
        assert_eq!(
            period(&cfg, ProxyModel::PerNamespace),
            Duration::from_secs(15)
        );
        assert_eq!(period(&cfg, ProxyModel::Shared), Duration::from_secs(1));
        assert_eq!(period_ms(&cfg, ProxyModel::Shared), 1000);
        cfg.hang_timeout = Duration::from_secs(2);
        assert_eq!(period_ms(&cfg, ProxyModel::Shared), 500);
        cfg.hang_timeout = Duration::ZERO;
        assert_eq!(period_ms(&cfg, ProxyModel::PerNamespace), 0);
        assert_eq!(period_ms(&cfg, ProxyModel::Shared), 0);
    }
}
