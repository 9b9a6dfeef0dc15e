//! Churn without privileges: the supervisor on the `Host` platform (the fake proxy), with its
//! control API served, round after round: routers whose proxies start, routers waiting for a
//! namespace that does not exist, one proxy killed -9 (restarted), then every router removed.
//! After a warm-up round the runtime's live tasks and this process's descriptors come back
//! to the same counts after every round, `status` is empty and no proxy of a removed router
//! runs: a task or descriptor left per record (a proxy's watcher, a waiting record's re-check,
//! a pidfd) would add up over months of routers coming and going.

mod common;

use std::time::Duration;

use common::*;
use ns_metadata_spawner::records::Router;
use ns_metadata_spawner::supervisor::State;
use ns_testkit::proc::{fds_by_kind, kill9, pids_mentioning};
use ns_testkit::{poll_async, wait_until_async, TempDir};

const RUNNING: usize = 12;
const WAITING: usize = 6;
const ROUNDS: usize = 4;
const T: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_and_descriptors_return_to_baseline_after_every_round() {
    let dir = TempDir::new("churn").reaping();
    let s = server(&dir);
    let metrics = tokio::runtime::Handle::current().metrics();
    let me = std::process::id();
    let prefix = ns_testkit::netns::unique_prefix();
    let mut baseline = None;
    for round in 0..ROUNDS {
        let running: Vec<String> = (0..RUNNING)
            .map(|i| format!("{prefix}r{round}x{i}"))
            .collect();
        let waiting: Vec<String> = (0..WAITING)
            .map(|i| format!("{prefix}w{round}x{i}"))
            .collect();
        for id in &running {
            s.sup.put_router(router(id));
        }
        for id in &waiting {
            s.sup.put_router(Router {
                netns: Some(format!("missing-{id}")),
                ..router(id)
            });
        }
        let mut pids = Vec::new();
        for id in &running {
            pids.push(running_pid(&s.sup, id, T).await);
        }
        // One proxy dies: restarted, a new pid.
        kill9(pids[0]);
        poll_async(T, || {
            status_of(&s.sup, &running[0])
                .filter(|st| st.state == State::Running && st.pid != Some(pids[0]))
        })
        .await
        .expect("restarted after kill -9");
        for id in &waiting {
            let st = status_of(&s.sup, id).expect("listed");
            assert_eq!(st.state, State::Waiting, "{id}: {st:?}");
        }
        // The measure sees them: a task owns each proxy.
        let busy = metrics.num_alive_tasks();
        assert!(busy >= RUNNING, "{busy} live tasks with {RUNNING} proxies");
        for id in running.iter().chain(&waiting) {
            assert!(s.sup.remove_router(id), "{id} known");
        }
        assert!(
            wait_until_async(T, || s.sup.status().is_empty()).await,
            "round {round}: status keeps {:?}",
            s.sup.status()
        );
        for id in &running {
            assert!(
                wait_until_async(T, || pids_mentioning(id).is_empty()).await,
                "round {round}: a proxy of {id} is left"
            );
        }
        let measure = || (metrics.num_alive_tasks(), fds_by_kind(me));
        match &baseline {
            None => baseline = Some(measure()),
            Some(want) => {
                let mut last = measure();
                let back = wait_until_async(T, || {
                    last = measure();
                    &last == want
                })
                .await;
                assert!(
                    back,
                    "round {round}: (live tasks, descriptors) after warm-up {want:?}, now {last:?}"
                );
            }
        }
        eprintln!(
            "churn round {round}: (live tasks, descriptors) {:?}",
            measure()
        );
    }
}
