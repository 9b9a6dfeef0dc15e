//! Polling with a timeout: wait for a condition the test can observe, never for a fixed time.
//! Every 10 ms the condition is checked again; the last check happens at the deadline.
//!
//! [`wait_until`] / [`poll`] return what happened, for tests with their own failure message;
//! [`eventually`] panics with one naming what was awaited. The `_async` forms sleep with
//! tokio, for tests whose server runs in the same runtime.
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(10);

/// Check `f` until it returns `Some`, or `timeout` passes (then `None`).
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(TICK);
    }
}

/// Check `f` until it is true or `timeout` passes; whether it became true.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    poll(timeout, || f().then_some(())).is_some()
}

/// [`wait_until`] without the tick: checks `f` back to back, for a test that must act the
/// moment something appears (a signal the instant a file exists), not within 10 ms of it.
pub fn spin_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() >= deadline {
            return false;
        }
        std::hint::spin_loop();
    }
    true
}

/// The value `f` yields within `timeout`; panics with "timed out after T waiting for WHAT".
pub fn eventually<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll(timeout, f).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// [`poll`], sleeping on the tokio timer.
pub async fn poll_async<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// [`wait_until`], sleeping on the tokio timer.
pub async fn wait_until_async(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    poll_async(timeout, || f().then_some(())).await.is_some()
}

/// [`eventually`], sleeping on the tokio timer.
pub async fn eventually_async<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_async(timeout, f)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// [`eventually_async`] for a check that is itself a future (a request to the code under
/// test): each check runs to completion, then the next one starts a tick later.
pub async fn eventually_await<T, F>(what: &str, timeout: Duration, mut f: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(TICK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_success_and_timeout() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            n += 1;
            n >= 3
        }));
        assert!(!wait_until(Duration::from_millis(30), || false));
        assert_eq!(poll(Duration::from_secs(1), || Some(7)), Some(7));
    }

    #[test]
    #[should_panic(expected = "waiting for the answer")]
    fn eventually_names_what_it_awaited() {
        eventually::<()>("the answer", Duration::from_millis(20), || None);
    }

    #[tokio::test]
    async fn async_forms() {
        assert!(wait_until_async(Duration::from_secs(1), || true).await);
        assert_eq!(
            eventually_async("a value", Duration::from_secs(1), || Some(1)).await,
            1
        );
    }
}
