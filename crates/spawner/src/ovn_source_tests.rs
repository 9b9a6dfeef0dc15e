//! The start's wait for a database, on a scripted event channel.

use super::*;

const WHAT: &str = "Southbound database";

#[tokio::test]
async fn first_ready_says_what_it_waits_for_until_ready() {
    let (tx, mut rx) = mpsc::channel(8);
    let (phase, mut seen) = watch::channel(String::new());
    let wait =
        tokio::spawn(
            async move { first_ready(&mut rx, WHAT, "tcp:a:6642,tcp:b:6642", &phase).await },
        );
    seen.changed().await.expect("phase");
    assert_eq!(
        *seen.borrow_and_update(),
        "waiting for the Southbound database at tcp:a:6642,tcp:b:6642"
    );
    let down = |remote: &str| Event::Disconnected {
        remote: remote.into(),
        error: "connection refused".into(),
    };
    tx.send(down("tcp:a:6642")).await.expect("send");
    seen.changed().await.expect("phase");
    assert_eq!(
        *seen.borrow_and_update(),
        "waiting for the Southbound database at tcp:a:6642: connection refused"
    );
    tx.send(down("tcp:b:6642")).await.expect("send");
    seen.changed().await.expect("phase");
    assert!(seen.borrow_and_update().contains("at tcp:b:6642:"));
    assert!(!wait.is_finished(), "still waiting: no time limit");
    let ready = Event::Ready {
        remote: "tcp:b:6642".into(),
        resumed: false,
    };
    tx.send(ready).await.expect("send");
    assert!(wait.await.expect("task").is_ok());
}

#[tokio::test]
async fn first_ready_fails_when_the_client_stops() {
    let (tx, mut rx) = mpsc::channel::<Event>(1);
    let (phase, _seen) = watch::channel(String::new());
    drop(tx);
    let err = first_ready(&mut rx, WHAT, "unix:/x", &phase)
        .await
        .expect_err("stopped");
    assert!(
        err.to_string()
            .contains("Southbound database: client stopped"),
        "{err}"
    );
}
