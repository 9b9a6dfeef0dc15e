//! Helpers of the tests against real `ovsdb-server`s: the servers and tools come from
//! `ns_testkit::ovsdb` (shared with the agent's OVN tests), the client helpers are here.
#![allow(dead_code)]

use std::time::Duration;

use ns_ovsdb::{Client, Config, Event, Monitor};
use tokio::sync::mpsc;

pub use ns_testkit::ovsdb::*;

/// A client with short backoff, for tests.
pub fn client(
    remotes: &str,
    monitor: Monitor,
    tweak: impl FnOnce(&mut Config),
) -> (Client, mpsc::Receiver<Event>) {
    let mut cfg = Config::new(remotes, monitor).expect("config");
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    cfg.connect_timeout = Duration::from_secs(5);
    tweak(&mut cfg);
    Client::start(cfg).expect("start client")
}

/// The next event matching `f` (others are dropped), within [`WAIT`].
pub async fn next_event(
    rx: &mut mpsc::Receiver<Event>,
    what: &str,
    mut f: impl FnMut(&Event) -> bool,
) -> Event {
    let fut = async {
        loop {
            match rx.recv().await {
                Some(e) if f(&e) => return e,
                Some(_) => {}
                None => panic!("event channel closed waiting for {what}"),
            }
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// The next `Ready`: (remote, resumed).
pub async fn ready(rx: &mut mpsc::Receiver<Event>) -> (String, bool) {
    match next_event(rx, "Ready", |e| matches!(e, Event::Ready { .. })).await {
        Event::Ready { remote, resumed } => (remote, resumed),
        _ => unreachable!(),
    }
}

/// Names (`name` column) of the rows of `table` in the client's replica.
pub fn names(c: &Client, table: &str) -> Vec<String> {
    let view = c.view();
    let mut v: Vec<String> = view
        .rows(table)
        .filter_map(|(_, r)| r.str("name").map(str::to_owned))
        .collect();
    v.sort();
    v
}

/// Wait (tokio timer) until `f` holds for the client's replica.
pub async fn until(c: &Client, what: &str, mut f: impl FnMut(&Client) -> bool) {
    ns_testkit::eventually_async(what, WAIT, || f(c).then_some(())).await
}
