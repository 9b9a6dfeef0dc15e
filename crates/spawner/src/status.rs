//! The status of one proxy as one type, [`Status`], changed only through its transitions
//! (starting, running, adopted, waiting, backoff with its reason, stopping, stopped); the
//! supervisor, the control API and the metrics read [`ProxyStatus`] snapshots of it, and the
//! supervisor waits on it (a `watch` channel) for a proxy's first start attempt.

use serde::Serialize;
use tokio::sync::watch;

use crate::decide::ProxySpec;

/// Lifecycle state of one proxy, as shown by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Being prepared/spawned, waiting for READY.
    Starting,
    /// Ready and watched.
    Running,
    /// Died or failed to start; waiting before the next try.
    Backoff,
    /// Being stopped.
    Stopping,
    /// Stopped: no process, pid file and addresses removed.
    Stopped,
    /// Wanted, but its namespace or its interface does not exist (yet); `last_error` says
    /// which. Re-checked often, not counted as a restart.
    Waiting,
    /// Its heartbeat stopped for longer than `hang_timeout` (`crate::hang`): killed, and
    /// being replaced (until the new one is ready or its start fails).
    Hung,
}

impl State {
    /// Every state, in the order the metrics list them.
    pub const ALL: [State; 7] = [
        State::Starting,
        State::Running,
        State::Backoff,
        State::Stopping,
        State::Stopped,
        State::Waiting,
        State::Hung,
    ];

    /// The lowercase name used in JSON, tables and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Backoff => "backoff",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Waiting => "waiting",
            State::Hung => "hung",
        }
    }
}

fn kind_name<S: serde::Serializer>(k: &ns_contract::Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

/// One proxy as the control API reports it: a snapshot, read-only by intent (a copy; the
/// live value is a [`Status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyStatus {
    pub key: String,
    pub netns: String,
    pub id: String,
    #[serde(serialize_with = "kind_name")]
    pub kind: ns_contract::Kind,
    pub interface: String,
    pub state: State,
    pub pid: Option<u32>,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub adopted: bool,
}

impl ProxyStatus {
    fn new(spec: &ProxySpec) -> ProxyStatus {
        ProxyStatus {
            key: spec.key.clone(),
            netns: spec.netns.clone(),
            id: spec.id.clone(),
            kind: spec.kind,
            interface: spec.interface.clone(),
            state: State::Starting,
            pid: None,
            restarts: 0,
            last_error: None,
            adopted: false,
        }
    }

    /// A wanted proxy no task runs for yet (its namespace does not exist, or another
    /// record's proxy serves it), and why.
    pub(crate) fn waiting(spec: &ProxySpec, why: String) -> ProxyStatus {
        ProxyStatus {
            state: State::Waiting,
            last_error: Some(why),
            ..ProxyStatus::new(spec)
        }
    }
}

/// The live value: the snapshot, and whether the first start attempt is over.
#[derive(Debug)]
struct Live {
    status: ProxyStatus,
    settled: bool,
}

/// The status of one proxy, written by its task through the transitions below.
#[derive(Debug)]
pub struct Status {
    tx: watch::Sender<Live>,
    /// In the shared model, once served: the shard's server pid (`None` while it restarts).
    /// A running namespace's pid and state are read from it, so a server restart changes
    /// one value, not one status per namespace (thousands of task wake-ups on the spawner's
    /// cores while the new server is being handed the sockets; issue #20).
    server: std::sync::OnceLock<watch::Receiver<Option<u32>>>,
}

/// How a note about a pid file that could not be written begins.
pub const PID_FILE_NOTE: &str = "cannot write pid file";

impl Status {
    /// A proxy about to be started (or adopted).
    pub fn new(spec: &ProxySpec) -> Status {
        Status {
            tx: watch::Sender::new(Live {
                status: ProxyStatus::new(spec),
                settled: false,
            }),
            server: std::sync::OnceLock::new(),
        }
    }

    /// A copy of the current status.
    pub fn snapshot(&self) -> ProxyStatus {
        let mut s = self.tx.borrow().status.clone();
        if let Some(server) = self.server_pid(&s) {
            s.pid = server;
            if server.is_none() && s.state == State::Running {
                s.state = State::Starting;
                s.last_error = Some("shared server restarting".into());
            }
        }
        s
    }

    /// Served by the shared server from now on (the shard's pid watch): while this status
    /// says running, its pid and state follow that server's.
    pub fn follow_server(&self, pid: watch::Receiver<Option<u32>>) {
        let _ = self.server.set(pid);
    }

    /// The followed server's pid (`Some(None)`: restarting), when `s` is served by it
    /// (running, or stopping: removed from it) and a server is followed.
    fn server_pid(&self, s: &ProxyStatus) -> Option<Option<u32>> {
        let server = self.server.get()?;
        matches!(s.state, State::Running | State::Stopping).then(|| *server.borrow())
    }

    /// Wait until the first start attempt is over: the proxy ran (or was adopted), failed,
    /// or is waiting for its namespace or interface.
    pub fn settled(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            // An error means the sender is gone: nothing left to wait for.
            let _ = rx.wait_for(|l| l.settled).await;
        }
    }

    fn change(&self, settles: bool, f: impl FnOnce(&mut ProxyStatus)) {
        self.tx.send_modify(|l| {
            f(&mut l.status);
            l.settled |= settles;
        });
    }

    /// The namespace or interface is missing; true if it was not waiting before (to log
    /// the reason once).
    pub fn waiting(&self, reason: String) -> bool {
        let mut first = false;
        self.change(true, |s| {
            first = s.state != State::Waiting;
            s.state = State::Waiting;
            s.last_error = Some(reason);
            s.pid = None;
        });
        first
    }

    /// A start attempt begins; the reason of a wait is stale once what it waited for is there.
    /// A hung proxy's replacement stays `hung` until it is ready.
    pub fn starting(&self) {
        self.change(false, |s| {
            if s.state == State::Waiting {
                s.last_error = None;
            }
            if s.state != State::Hung {
                s.state = State::Starting;
            }
        });
    }

    /// The proxy hung (`reason` says how long) and was killed; its replacement follows.
    pub fn hung(&self, reason: String) {
        self.change(true, |s| {
            s.last_error = Some(reason);
            s.pid = None;
            s.state = State::Hung;
        });
    }

    /// Started by us and ready; `note` is a problem that does not stop it from serving
    /// (e.g. its pid file could not be written).
    pub fn running(&self, pid: Option<u32>, note: Option<String>) {
        self.change(true, |s| {
            if note.is_some() {
                s.last_error = note;
            }
            s.pid = pid;
            s.state = State::Running;
            s.adopted = false;
        });
    }

    /// The pid file that could not be written at the start is written now: its note goes.
    pub fn pid_file_written(&self) {
        self.change(false, |s| {
            if s.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with(PID_FILE_NOTE))
            {
                s.last_error = None;
            }
        });
    }

    /// A live proxy from before a supervisor restart, now watched.
    pub fn adopted(&self, pid: u32) {
        self.change(true, |s| {
            s.pid = Some(pid);
            s.state = State::Running;
            s.adopted = true;
        });
    }

    /// A start failed: back off, with the reason.
    pub fn start_failed(&self, reason: String) {
        self.change(true, |s| {
            s.last_error = Some(reason);
            s.state = State::Backoff;
            s.pid = None;
        });
    }

    /// The proxy died: restarted at once, or after a backoff.
    pub fn died(&self, reason: String, restart_now: bool) {
        self.change(true, |s| {
            s.last_error = Some(reason);
            s.pid = None;
            s.state = if restart_now {
                State::Starting
            } else {
                State::Backoff
            };
        });
    }

    /// The wait before another start is over: one more restart.
    pub fn restarting(&self) {
        self.change(true, |s| s.restarts += 1);
    }

    /// A stop was asked for.
    pub fn stopping(&self) {
        self.change(true, |s| s.state = State::Stopping);
    }

    /// Stopped and cleaned up.
    pub fn stopped(&self) {
        self.change(true, |s| {
            s.pid = None;
            s.state = State::Stopped;
        });
    }

    /// The pid, while known.
    pub fn pid(&self) -> Option<u32> {
        let s = self.tx.borrow();
        match self.server_pid(&s.status) {
            Some(server) => server,
            None => s.status.pid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ProxySpec {
        ProxySpec {
            key: "r1".into(),
            kind: ns_contract::Kind::Router,
            id: "r1".into(),
            netns: "qrouter-r1".into(),
            interface: "lo".into(),
            ipv6: false,
        }
    }

    #[tokio::test]
    async fn transitions_and_settling() {
        let st = Status::new(&spec());
        let settled = st.settled();
        assert!(st.waiting("interface lo not in qrouter-r1".into()));
        assert!(
            !st.waiting("interface lo not in qrouter-r1".into()),
            "logged once"
        );
        tokio::time::timeout(std::time::Duration::from_secs(1), settled)
            .await
            .expect("a wait settles the first attempt");
        st.starting();
        assert_eq!(st.snapshot().last_error, None, "stale reason cleared");
        st.running(Some(7), None);
        st.died("proxy exited".into(), false);
        st.restarting();
        let s = st.snapshot();
        assert_eq!(
            (s.state, s.pid, s.restarts, s.last_error.as_deref()),
            (State::Backoff, None, 1, Some("proxy exited"))
        );
        st.adopted(9);
        assert!(st.snapshot().adopted);
        st.stopping();
        st.stopped();
        assert_eq!((st.snapshot().state, st.pid()), (State::Stopped, None));
        let json = serde_json::to_value(st.snapshot()).expect("json");
        assert_eq!(
            (json["kind"].as_str(), json["state"].as_str()),
            (Some("router"), Some("stopped"))
        );
    }

    /// The shared model: a served namespace's pid and state are the server's, across its
    /// restarts, without a transition of its own; its own states (stopping) still win.
    #[test]
    fn a_served_namespace_follows_its_server() {
        let st = Status::new(&spec());
        let (server, rx) = watch::channel(Some(40));
        st.running(Some(40), None);
        st.follow_server(rx);
        let s = st.snapshot();
        assert_eq!(
            (s.state, s.pid, s.last_error),
            (State::Running, Some(40), None)
        );
        server.send_replace(None);
        let s = st.snapshot();
        assert_eq!(
            (s.state, s.pid, s.last_error.as_deref()),
            (State::Starting, None, Some("shared server restarting"))
        );
        assert_eq!(st.pid(), None);
        server.send_replace(Some(41));
        let s = st.snapshot();
        assert_eq!(
            (s.state, s.pid, s.last_error),
            (State::Running, Some(41), None)
        );
        assert_eq!(st.pid(), Some(41));
        st.stopping();
        assert_eq!(st.snapshot().pid, Some(41));
        server.send_replace(None);
        let s = st.snapshot();
        assert_eq!((s.state, s.pid), (State::Stopping, None));
        st.stopped();
        assert_eq!((st.snapshot().state, st.pid()), (State::Stopped, None));
    }
}
