//! Serving threads (`--threads`, issue #19): a proxy serves on one runtime thread and, when
//! allowed more, starts another only while it is busy.
//!
//! One thread is what an idle proxy should cost: a node runs thousands of them. The accept
//! loops stay on the main runtime thread, and each accepted connection goes to the serving
//! thread with the fewest connections open. When every running thread has [`START_AT`]
//! open, another one is started (up to `--threads`), with its own current-thread runtime,
//! agent pool, buffer pool and access-line buffer: nothing is shared between threads on the
//! request path but the per-namespace atomics and locks every connection already takes. A
//! connection stays on its thread for its life. Once the proxy is idle again (the
//! housekeeping that gives memory back, [`crate::server`]), helpers without a connection
//! are retired: their runtime ends, the thread exits and its memory goes with it.
//!
//! A process serving many namespaces (the shared server) places by namespace instead
//! ([`place_namespace`]): quiet namespaces on the main thread, a busy one's connections on
//! a helper.
//!
//! The default is one thread. On this project's 2-core bench machine, where the VMs' load
//! generator and the agent share the cores with the proxy, a second thread did not raise
//! req/s beyond the noise at c32 keep-alive and cost about 20% more CPU per request (each
//! thread parks more often: `epoll_wait` 0.83 per request against 0.13, agent sockets
//! registered 0.49 per request against 0.06, access-line writes 0.51 against 0.03;
//! bench/README.md, figure 12). With spare cores (not measured here) a second thread lets
//! one busy namespace use two.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tokio::runtime::Handle;

use crate::error::{Error, Result};

/// Connections open on every running serving thread before another one is started: a few
/// VMs at once do not need a second thread; a flood or a benchmark does.
pub const START_AT: usize = 8;

/// In a process serving many namespaces, a namespace with more connections open than this
/// is busy ([`place_namespace`]): cloud-init and the other guest agents of a VM ask with one
/// or two at a time, a flood or a benchmark with many.
pub const BUSY_NAMESPACE: usize = 4;

/// How long a helper may take to run a ping before it counts as not answering: a busy
/// helper runs it within milliseconds, and calls may come close together (a per-namespace
/// proxy's housekeeping also ticks when it goes idle).
pub const PING_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Most serving threads `--threads` may ask for.
pub const MAX_THREADS: usize = 16;

thread_local! {
    /// This thread's serving index: 0 on the main runtime thread, 1.. on helpers.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The serving index of the calling thread (0 outside a helper), for per-thread state such
/// as the agent pools.
#[inline]
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// One value per serving thread, each on its own cache line (two threads updating
/// neighbouring values would bounce the line between their cores on every request).
#[derive(Debug)]
pub struct PerThread<T>(Box<[Padded<T>]>);

#[derive(Debug, Default)]
#[repr(align(64))]
struct Padded<T>(T);

impl<T> PerThread<T> {
    /// One `make()` for each serving thread allowed ([`max`]).
    pub fn new(make: impl Fn() -> T) -> PerThread<T> {
        PerThread((0..max()).map(|_| Padded(make())).collect())
    }

    /// The calling thread's value.
    #[inline]
    pub fn mine(&self) -> &T {
        let i = index().min(self.0.len() - 1);
        &self.0[i].0
    }

    /// Thread `i`'s value.
    pub fn get(&self, i: usize) -> Option<&T> {
        self.0.get(i).map(|p| &p.0)
    }

    /// Every thread's value.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|p| &p.0)
    }
}

/// The process's serving threads.
#[derive(Debug)]
struct Workers {
    /// Threads allowed, the main one included.
    max: usize,
    /// Connections open per serving index.
    open: Box<[AtomicUsize]>,
    /// Running helpers, at index - 1.
    helpers: Mutex<Vec<Option<Helper>>>,
    /// A helper could not be started: serve on the threads there are, say it once.
    failed: AtomicBool,
}

#[derive(Debug)]
struct Helper {
    handle: Handle,
    /// Dropped or sent: the helper's runtime ends.
    retire: tokio::sync::oneshot::Sender<()>,
    /// Pings sent to its runtime ([`answering`]), when the last was sent, and the last one
    /// it ran.
    pinged: u64,
    sent: Option<std::time::Instant>,
    pong: std::sync::Arc<AtomicU64>,
    /// Said once that it stopped answering, until it answers again.
    said: bool,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

/// Allow up to `threads` serving threads (the main one included); before serving. A second
/// call is ignored (one configuration per process).
pub fn init(threads: usize) {
    let _ = WORKERS.set(Workers::new(threads));
}

/// The serving threads allowed (1 before [`init`]): the size of per-thread tables.
pub fn max() -> usize {
    WORKERS.get().map_or(1, |w| w.max)
}

/// `--threads auto`: two where there are two CPUs or more (haproxy starts one per CPU;
/// these start only under load), one otherwise.
pub fn auto() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

/// A `--threads` value (`threads`, the spawner's `proxy_threads`): `auto` ([`auto`]) or a
/// count of 1..=[`MAX_THREADS`]; the count, or why not, for the caller to name its key.
pub fn parse_threads(text: &str) -> std::result::Result<usize, String> {
    match text.trim() {
        "auto" => Ok(auto()),
        t => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_THREADS).contains(n))
            .ok_or_else(|| {
                format!("{t:?} is neither auto nor a thread count of 1 to {MAX_THREADS}")
            }),
    }
}

/// Where a connection is served.
#[derive(Debug)]
pub enum Place {
    /// On the calling (main) runtime thread.
    Here,
    /// On a helper's runtime.
    On(Handle),
}

/// A connection counted as open on its serving thread until dropped.
#[derive(Debug)]
pub struct Open {
    workers: Option<&'static Workers>,
    index: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(n) = self.workers.and_then(|w| w.open.get(self.index)) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Choose the serving thread of a connection just accepted (on the main thread): the one
/// with the fewest connections open, starting a helper when all have [`START_AT`].
pub fn place() -> (Place, Open) {
    match WORKERS.get() {
        Some(w) => w.place(),
        None => (
            Place::Here,
            Open {
                workers: None,
                index: 0,
            },
        ),
    }
}

/// [`place`] in a process serving many namespaces (the shared model, issue #20): a
/// connection of a namespace with more than [`BUSY_NAMESPACE`] open (`busy`) goes to the
/// least loaded helper, started if none runs; every other namespace's stays on
/// the main thread. One VM flooding its router then fills a helper's event loop, not the
/// one every quiet namespace's request waits its turn in (the relay queue already keeps the
/// flood from taking the quiet namespace's place at the agent). With one thread allowed,
/// or a helper that cannot start, everything is served on the main thread.
pub fn place_namespace(busy: bool) -> (Place, Open) {
    match WORKERS.get() {
        Some(w) => w.place_namespace(busy),
        None => place(),
    }
}

/// A connection of a busy namespace found on the main thread between two requests (it was
/// accepted before its namespace got busy): the helper it should move to, counted there, or
/// `None` to stay (one thread allowed, or no helper could start). Only a process serving
/// many namespaces asks ([`place_namespace`]).
pub fn move_busy() -> Option<(Handle, Open)> {
    let w = WORKERS.get()?;
    if w.max == 1 {
        // Asked between two requests of every busy connection: with one thread, nothing
        // to count and nowhere to go.
        return None;
    }
    match w.place_namespace(true) {
        (Place::On(h), open) => Some((h, open)),
        (Place::Here, _) => None,
    }
}

/// Whether every helper running ran the ping sent to it at an earlier call, or was sent it
/// less than [`PING_GRACE`] ago; each one that ran it is sent the next. The heartbeat
/// ([`crate::stats::Heartbeat`]) beats only while this holds, so the spawner's hang
/// watchdog sees a helper whose event loop stopped (a beat or two later than the main
/// thread's). True with no helper, and before [`init`].
pub fn answering() -> bool {
    WORKERS.get().is_none_or(Workers::answering)
}

/// Retire the helpers without a connection open (the proxy went idle); `forget(i)` drops
/// what the caller keeps for helper `i` (its agent connections, registered with the
/// helper's runtime). Returns how many were retired.
pub fn retire_idle(forget: impl Fn(usize)) -> usize {
    WORKERS.get().map_or(0, |w| w.retire_idle(forget))
}

impl Workers {
    fn new(threads: usize) -> Workers {
        let max = threads.clamp(1, MAX_THREADS);
        Workers {
            max,
            open: (0..max).map(|_| AtomicUsize::new(0)).collect(),
            helpers: Mutex::new((1..max).map(|_| None).collect()),
            failed: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Option<Helper>>> {
        self.helpers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn load(&self, i: usize) -> usize {
        self.open[i].load(Ordering::Relaxed)
    }

    fn place(&'static self) -> (Place, Open) {
        if self.max == 1 {
            return (Place::Here, self.count(0));
        }
        let mut helpers = self.lock();
        let (mut best, mut least) = (0, self.load(0));
        for (i, h) in helpers.iter().enumerate() {
            if h.is_some() && self.load(i + 1) < least {
                (best, least) = (i + 1, self.load(i + 1));
            }
        }
        if least >= START_AT {
            if let Some(started) = self.start_helper(&mut helpers, "busy") {
                best = started;
            }
        }
        self.placed(&helpers, best)
    }

    fn place_namespace(&'static self, busy: bool) -> (Place, Open) {
        if self.max == 1 || !busy {
            return (Place::Here, self.count(0));
        }
        let mut helpers = self.lock();
        let least = helpers
            .iter()
            .enumerate()
            .filter(|(_, h)| h.is_some())
            .min_by_key(|(i, _)| self.load(i + 1))
            .map(|(i, _)| i + 1);
        // Another helper once every running one is as busy as the main thread may get.
        let full = least.is_none_or(|i| self.load(i) >= START_AT * START_AT);
        let started = if full {
            self.start_helper(&mut helpers, "a busy namespace")
        } else {
            None
        };
        // No helper at all: the main thread (index 0).
        self.placed(&helpers, started.or(least).unwrap_or(0))
    }

    /// Start a helper in the first free slot, unless one failed to start before (then the
    /// process serves on the threads it has, said once): its serving index.
    fn start_helper(&self, helpers: &mut [Option<Helper>], why: &str) -> Option<usize> {
        if self.failed.load(Ordering::Relaxed) {
            return None;
        }
        let free = helpers.iter().position(Option::is_none)?;
        match start(free + 1) {
            Ok(h) => {
                helpers[free] = Some(h);
                let running = helpers.iter().flatten().count() + 1;
                tracing::debug!(threads = running, "{why}: another serving thread started");
                Some(free + 1)
            }
            Err(e) => {
                self.failed.store(true, Ordering::Relaxed);
                tracing::warn!(err = %e, "cannot start another serving thread; serving on the ones running");
                None
            }
        }
    }

    /// A connection counted on serving thread `index` (0, or a helper that is not running:
    /// the main thread).
    fn placed(&'static self, helpers: &[Option<Helper>], index: usize) -> (Place, Open) {
        match index.checked_sub(1).and_then(|i| helpers[i].as_ref()) {
            Some(h) => (Place::On(h.handle.clone()), self.count(index)),
            None => (Place::Here, self.count(0)),
        }
    }

    /// Count one more connection open on thread `index`.
    fn count(&'static self, index: usize) -> Open {
        self.open[index].fetch_add(1, Ordering::Relaxed);
        Open {
            workers: Some(self),
            index,
        }
    }

    fn answering(&self) -> bool {
        let mut helpers = self.lock();
        let mut all = true;
        for (i, h) in helpers.iter_mut().enumerate() {
            let Some(h) = h else { continue };
            if h.pong.load(Ordering::Acquire) < h.pinged {
                // Its last ping has not run: no other until it does; not yet a sign of
                // anything while it is young.
                if h.sent.is_some_and(|t| t.elapsed() < PING_GRACE) {
                    continue;
                }
                if !std::mem::replace(&mut h.said, true) {
                    tracing::warn!(
                        thread = format!("serve-{}", i + 1),
                        "a serving thread has not run a task since the last heartbeat; \
                         not beating while it does not"
                    );
                }
                all = false;
                continue;
            }
            if std::mem::replace(&mut h.said, false) {
                tracing::info!(
                    thread = format!("serve-{}", i + 1),
                    "the serving thread answers again"
                );
            }
            h.pinged += 1;
            h.sent = Some(std::time::Instant::now());
            let (pong, n) = (h.pong.clone(), h.pinged);
            h.handle
                .spawn(async move { pong.store(n, Ordering::Release) });
        }
        all
    }

    fn retire_idle(&self, forget: impl Fn(usize)) -> usize {
        let mut helpers = self.lock();
        let mut retired = 0;
        for (i, slot) in helpers.iter_mut().enumerate() {
            // Connections are put on a helper only under this lock: none can arrive now.
            if slot.is_some() && self.load(i + 1) == 0 {
                if let Some(h) = slot.take() {
                    forget(i + 1);
                    let _ = h.retire.send(());
                    retired += 1;
                }
            }
        }
        retired
    }

    #[cfg(test)]
    fn running(&self) -> usize {
        self.lock().iter().flatten().count() + 1
    }
}

/// A serving thread's runtime: one thread, I/O and timers (the access lines' flush timer,
/// [`crate::accesslog::FLUSH_AFTER`], runs on it).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|source| Error::Io {
            op: "tokio runtime",
            source,
        })
}

/// Start helper `i`: a thread running a runtime of its own until retired.
fn start(i: usize) -> std::result::Result<Helper, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (retire, retired) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("serve-{i}"))
        .spawn(move || {
            INDEX.with(|c| c.set(i));
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(rt.handle().clone()));
            rt.block_on(async {
                let _ = retired.await;
            });
            drop(rt);
            crate::accesslog::flush();
            // This thread's pooled buffers go with it.
            crate::bufpool::release();
        })
        .map_err(|e| format!("thread: {e}"))?;
    let handle = ready_rx
        .recv()
        .map_err(|_| "the thread ended before its runtime was built".to_owned())??;
    Ok(Helper {
        handle,
        retire,
        pinged: 0,
        sent: None,
        pong: std::sync::Arc::new(AtomicU64::new(0)),
        said: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaked(threads: usize) -> &'static Workers {
        Box::leak(Box::new(Workers::new(threads)))
    }

    /// The index of the thread a placed connection's task runs on.
    fn runs_on(place: &Place) -> usize {
        match place {
            Place::Here => index(),
            Place::On(h) => {
                let (tx, rx) = std::sync::mpsc::channel();
                h.spawn(async move { tx.send(index()).expect("send") });
                rx.recv().expect("the helper ran the task")
            }
        }
    }

    #[test]
    fn one_thread_until_busy_then_balanced_then_retired_when_idle() {
        let w = leaked(2);
        let mut open = Vec::new();
        for _ in 0..START_AT {
            let (p, o) = w.place();
            assert!(matches!(p, Place::Here), "{p:?}");
            open.push(o);
        }
        assert_eq!(w.running(), 1, "no helper below START_AT");
        // The next connection starts the helper, and the following ones go there until both
        // threads hold as many.
        let mut on_helper = Vec::new();
        for _ in 0..START_AT {
            let (p, o) = w.place();
            assert_eq!(runs_on(&p), 1, "served by the helper");
            on_helper.push(o);
        }
        assert_eq!(w.running(), 2);
        let (p, o) = w.place();
        assert!(
            matches!(p, Place::Here),
            "even again: the main thread first"
        );
        open.push(o);
        assert_eq!((w.load(0), w.load(1)), (START_AT + 1, START_AT));
        // Busy helpers are kept; a helper without connections is retired, and its pools
        // forgotten.
        let forgot = std::sync::Mutex::new(Vec::new());
        assert_eq!(w.retire_idle(|i| forgot.lock().expect("lock").push(i)), 0);
        on_helper.clear();
        assert_eq!(w.retire_idle(|i| forgot.lock().expect("lock").push(i)), 1);
        assert_eq!(*forgot.lock().expect("lock"), vec![1]);
        assert_eq!(w.running(), 1);
        // Busy again: a new helper.
        let (p, _o) = w.place();
        assert_eq!(runs_on(&p), 1);
    }

    #[test]
    fn answering_only_while_every_helper_runs_its_tasks() {
        let w = leaked(2);
        assert!(w.answering(), "no helper");
        let (p, _o) = w.place_namespace(true);
        let Place::On(h) = p else {
            panic!("a busy namespace on a helper: {p:?}")
        };
        let pong = |w: &Workers| {
            let helpers = w.lock();
            let h = helpers[0].as_ref().expect("the helper");
            (h.pinged, h.pong.clone())
        };
        assert!(w.answering(), "a new helper: pinged");
        let (sent, got) = pong(w);
        assert!(ns_testkit::spin_until(
            std::time::Duration::from_secs(10),
            || { got.load(Ordering::Acquire) == sent }
        ));
        assert!(w.answering(), "it ran the ping: the next one");
        // Its event loop stops (a task blocks the thread): the ping sent before does not run.
        let (unblock, blocked) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel();
        h.spawn(async move {
            started_tx.send(()).expect("send");
            let _ = blocked.recv();
        });
        started.recv().expect("the blocking task runs");
        assert!(
            w.answering(),
            "the ping of the last call ran before it blocked"
        );
        assert!(w.answering(), "this call's ping is not late yet");
        std::thread::sleep(PING_GRACE);
        assert!(!w.answering(), "now it is");
        assert!(!w.answering(), "and stays so while stuck");
        let pinged = pong(w).0;
        // Running again: the outstanding ping runs, and the helper counts again.
        unblock.send(()).expect("unblock");
        let (_, got) = pong(w);
        assert!(ns_testkit::spin_until(
            std::time::Duration::from_secs(10),
            || { got.load(Ordering::Acquire) == pinged }
        ));
        assert!(w.answering(), "answers again");
    }

    #[test]
    fn a_busy_namespace_is_served_off_the_main_thread_and_quiet_ones_stay() {
        let w = leaked(2);
        // Quiet namespaces: the main thread, however many connections they hold together.
        let quiet: Vec<_> = (0..3 * START_AT)
            .map(|_| w.place_namespace(false))
            .inspect(|(p, _)| assert!(matches!(p, Place::Here), "{p:?}"))
            .collect();
        assert_eq!(w.running(), 1, "no helper for quiet namespaces");
        // A busy one: a helper is started and takes every connection it opens.
        let busy: Vec<_> = (0..4 * START_AT)
            .map(|_| w.place_namespace(true))
            .inspect(|(p, _)| assert_eq!(runs_on(p), 1, "served by the helper"))
            .collect();
        assert_eq!(w.running(), 2);
        assert_eq!((w.load(0), w.load(1)), (3 * START_AT, 4 * START_AT));
        // Quiet connections still go to the main thread beside a busy helper.
        let (p, _o) = w.place_namespace(false);
        assert!(matches!(p, Place::Here), "{p:?}");
        drop(quiet);
        // The flood over: the helper is retired as before.
        drop(busy);
        assert_eq!(w.retire_idle(|_| ()), 1);
        assert_eq!(w.running(), 1);
        // One thread allowed: everything on the main thread.
        let one = leaked(1);
        let (p, _o) = one.place_namespace(true);
        assert!(matches!(p, Place::Here), "{p:?}");
        assert_eq!(one.running(), 1);
    }

    #[test]
    fn one_thread_allowed_never_starts_a_helper() {
        let w = leaked(1);
        let open: Vec<_> = (0..4 * START_AT).map(|_| w.place()).collect();
        assert!(open.iter().all(|(p, _)| matches!(p, Place::Here)));
        assert_eq!(w.load(0), 4 * START_AT);
        drop(open);
        assert_eq!(w.load(0), 0, "counted down when closed");
        assert_eq!(w.running(), 1);
    }

    #[test]
    fn auto_is_one_or_two() {
        assert!((1..=2).contains(&auto()));
    }
}
