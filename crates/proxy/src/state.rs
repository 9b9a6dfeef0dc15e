//! What every connection of one proxy shares: the settings taken from [`Config`], the agent
//! (socket path, timeouts, connection pool), the rate limiter, the activity counters the
//! housekeeping reads, the statistics block the spawner reads, and the log-storm state of "agent unavailable". Buffers come from the
//! per-thread pool in [`crate::bufpool`].

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ns_contract::limits::Timeouts;
use ns_contract::{KeepaliveMode, Resource};
use tokio::sync::Notify;

use crate::config::Config;
use crate::ratelimit::RateLimiter;
use crate::relayq::{Company, RelayQueue};
use crate::request::Upstream;
use crate::stats::Stats;
use crate::upstream::Agent;

/// While the agent stays unavailable, one summary line at most this often.
pub const AGENT_DOWN_REPORT_EVERY: Duration = Duration::from_secs(5);

/// State every connection reads.
#[derive(Debug)]
pub struct Shared {
    pub id: String,
    pub upstream: Upstream,
    pub agent: Agent,
    pub ratelimit: Option<RateLimiter>,
    /// Requests with the agent at once, the rest waiting in order (`--max-agent-requests`).
    pub queue: RelayQueue,
    pub timeouts: Timeouts,
    pub activity: Activity,
    /// The statistics block shared with the spawner (`--stats-fd`; empty without it).
    pub stats: std::sync::Arc<Stats>,
    /// Set while the agent is unavailable, so a success checks one flag, not the lock.
    agent_is_down: AtomicBool,
    agent_down: Mutex<AgentDown>,
}

impl Shared {
    /// The state of one namespace's proxy serving `resource` with `cfg`'s settings (the
    /// shared server builds one per namespace from one configuration).
    pub fn new(cfg: &Config, resource: &Resource) -> Shared {
        Shared::with_stats(cfg, resource, Stats::default())
    }

    /// As [`Shared::new`], counting into `stats` (mapped before the privilege drop).
    pub fn with_stats(cfg: &Config, resource: &Resource, stats: Stats) -> Shared {
        let queue = RelayQueue::new(cfg.max_agent_requests);
        Shared::build(cfg, resource, stats, queue)
    }

    /// As [`Shared::with_stats`], for one namespace of a shared server among `company`: a
    /// share of the relay queue's slots by the agent's speed while another of them asks the
    /// agent too (`relayq`).
    pub fn in_company(
        cfg: &Config,
        resource: &Resource,
        stats: Stats,
        company: &std::sync::Arc<Company>,
    ) -> Shared {
        let queue = RelayQueue::in_company(cfg.max_agent_requests, company);
        Shared::build(cfg, resource, stats, queue)
    }

    fn build(cfg: &Config, resource: &Resource, stats: Stats, queue: RelayQueue) -> Shared {
        let stats = std::sync::Arc::new(stats);
        Shared {
            id: resource.id().to_owned(),
            upstream: Upstream {
                id_line: resource.header_line(),
                close: cfg.agent_keepalive == KeepaliveMode::Off,
            },
            agent: Agent::new(
                cfg.socket.clone(),
                cfg.agent_keepalive,
                cfg.timeouts.connect,
                cfg.timeouts.server,
            )
            .with_retries(cfg.connect_retries)
            .with_stats(stats.clone()),
            ratelimit: cfg.rate_limit.map(|r| {
                let rl = RateLimiter::new(r.base, r.burst, r.versions);
                match cfg.rate_table {
                    Some((size, expire)) => rl.with_table(size, expire),
                    None => rl,
                }
            }),
            queue,
            timeouts: cfg.timeouts,
            activity: Activity::default(),
            stats,
            agent_is_down: AtomicBool::new(false),
            agent_down: Mutex::new(AgentDown::default()),
        }
    }

    fn agent_down(&self) -> std::sync::MutexGuard<'_, AgentDown> {
        match self.agent_down.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A request got 503 because the agent's socket is missing or refuses: one warning naming
    /// the socket when this starts, then a summary at most every [`AGENT_DOWN_REPORT_EVERY`].
    pub fn agent_unavailable(&self, client: IpAddr, err: &io::Error) {
        self.agent_is_down.store(true, Ordering::Relaxed);
        let socket = self.agent.path().display();
        match self.agent_down().failed(Instant::now()) {
            Report::Start => tracing::warn!(
                %client,
                id = %self.id,
                %socket,
                %err,
                "agent unavailable: is the metadata agent running and listening on {socket}? \
                 VMs get 503 until it is; repeats are summarized every {} s",
                AGENT_DOWN_REPORT_EVERY.as_secs()
            ),
            Report::Summary {
                suppressed,
                down_for,
            } => tracing::warn!(
                %client,
                id = %self.id,
                %socket,
                %err,
                suppressed,
                down_for_s = down_for.as_secs(),
                "agent still unavailable"
            ),
            Report::Quiet => {}
        }
    }

    /// The agent answered: if it was unavailable, say once that it is back.
    #[inline]
    pub fn agent_ok(&self) {
        if !self.agent_is_down.load(Ordering::Relaxed) {
            return;
        }
        self.agent_is_down.store(false, Ordering::Relaxed);
        if let Some((failures, down_for)) = self.agent_down().recovered(Instant::now()) {
            tracing::info!(
                id = %self.id,
                socket = %self.agent.path().display(),
                failures,
                down_for_ms = down_for.as_millis() as u64,
                "agent available again"
            );
        }
    }
}

/// Client connections open and accepted so far; tells housekeeping when the proxy goes idle.
#[derive(Debug, Default)]
pub struct Activity {
    open: AtomicUsize,
    accepted: AtomicU64,
    /// Signalled when the last open connection closes.
    pub idle: Notify,
}

impl Activity {
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        if self.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle.notify_one();
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// What to log for one more "agent unavailable".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// The first failure of an outage: one warning.
    Start,
    /// The period is over: one line with the failures not logged since the last one.
    Summary { suppressed: u64, down_for: Duration },
    /// Counted, not logged.
    Quiet,
}

/// "Agent unavailable" without a log storm (the [`crate::server`] `AcceptErrors` pattern,
/// with the clock passed in): while the agent is down every VM request fails the same way,
/// and a booting cloud sends many.
#[derive(Debug, Default)]
pub struct AgentDown {
    /// When the outage started, and when it was last reported.
    since: Option<(Instant, Instant)>,
    /// Failures not reported yet, and in the whole outage.
    suppressed: u64,
    total: u64,
}

impl AgentDown {
    pub fn failed(&mut self, now: Instant) -> Report {
        self.total += 1;
        match &mut self.since {
            None => {
                self.since = Some((now, now));
                Report::Start
            }
            Some((start, reported)) => {
                if now.saturating_duration_since(*reported) >= AGENT_DOWN_REPORT_EVERY {
                    *reported = now;
                    let suppressed = std::mem::take(&mut self.suppressed);
                    Report::Summary {
                        suppressed,
                        down_for: now.saturating_duration_since(*start),
                    }
                } else {
                    self.suppressed += 1;
                    Report::Quiet
                }
            }
        }
    }

    /// The agent answered again: the failures of the outage and how long it lasted, if
    /// there was one.
    pub fn recovered(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let (start, _) = self.since.take()?;
        let total = std::mem::take(&mut self.total);
        self.suppressed = 0;
        Some((total, now.saturating_duration_since(start)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_down_is_one_line_per_period_with_the_count() {
        let mut d = AgentDown::default();
        let t0 = Instant::now();
        assert_eq!(d.recovered(t0), None, "no outage, nothing to say");
        assert_eq!(d.failed(t0), Report::Start);
        for i in 1..=20u64 {
            assert_eq!(d.failed(t0 + Duration::from_millis(100 * i)), Report::Quiet);
        }
        assert_eq!(
            d.failed(t0 + AGENT_DOWN_REPORT_EVERY),
            Report::Summary {
                suppressed: 20,
                down_for: AGENT_DOWN_REPORT_EVERY
            }
        );
        let t1 = t0 + AGENT_DOWN_REPORT_EVERY;
        assert_eq!(d.failed(t1 + Duration::from_secs(1)), Report::Quiet);
        assert_eq!(
            d.failed(t1 + AGENT_DOWN_REPORT_EVERY),
            Report::Summary {
                suppressed: 1,
                down_for: 2 * AGENT_DOWN_REPORT_EVERY
            }
        );
        let back = t1 + 3 * AGENT_DOWN_REPORT_EVERY;
        assert_eq!(d.recovered(back), Some((24, back - t0)));
        assert_eq!(d.recovered(back), None, "said once");
        // A new outage starts with its own first line.
        assert_eq!(d.failed(back), Report::Start);
    }
}
