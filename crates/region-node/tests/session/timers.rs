//! Timers on virtual time (`start_paused`): the runtime jumps to the next timer whenever every
//! task waits, so minutes of heartbeats, timeouts and drain pass in milliseconds. Timers that
//! are not under test are set far out so that a jump never lands on them.

use std::time::Duration;

use meridian_client::protocol::ErrorCode;
use meridian_client::{Connection, Event};
use region_node::NodeConfig;
use tokio::time::{timeout, Instant};

use crate::support::{self, closed, token_for};

/// Longer than any timer here: a wait that reaches it is a failure, and costs nothing.
const LONG: Duration = Duration::from_secs(3600);

/// Only the timers a test looks at stay as configured.
fn quiet_timers(config: &mut NodeConfig) {
    config.timing.hello_timeout_ms = 100 * LONG.as_millis() as u64;
    config.timing.upgrade_timeout_ms = 100 * LONG.as_millis() as u64;
}

async fn next_event(c: &mut Connection) -> Event {
    timeout(LONG, c.next_event())
        .await
        .expect("an event")
        .expect("the connection is open")
}

#[tokio::test(start_paused = true)]
async fn no_hello_in_time_is_not_authenticated_and_closed_1008() {
    let node =
        support::start(|c| c.timing.upgrade_timeout_ms = 100 * LONG.as_millis() as u64).await;
    let started = Instant::now();
    let mut c = Connection::connect(&node.url).await.unwrap();
    match next_event(&mut c).await {
        Event::Error(e) => assert_eq!(e.code, Some(ErrorCode::NotAuthenticated)),
        other => panic!("{other:?}"),
    }
    assert_eq!(closed(&mut c, LONG).await, Some(1008));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(5), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_answers_no_ping_is_closed_and_one_that_does_stays() {
    let node = support::start(quiet_timers).await;
    let mut silent = support::connect(&node, "silent").await;
    let mut live = support::connect(&node, "live").await;
    let started = Instant::now();
    // `live` reads (so its pings are answered) for a minute; `silent` reads nothing.
    let nothing = timeout(Duration::from_secs(60), live.next_event()).await;
    assert!(
        nothing.is_err(),
        "no event for an idle connection: {nothing:?}"
    );
    assert!(live.ping().await.unwrap().pong, "the live connection stays");
    // Pings every 10 s; nothing heard for more than 25 s at a tick: closed as dead (1000;
    // the close frame may be lost behind the pings whose pongs find the socket closed).
    let code = closed(&mut silent, LONG).await;
    assert!(matches!(code, Some(1000) | None), "{code:?}");
    assert!(started.elapsed() >= Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_connection_ends_at_its_token_expiry() {
    let node = support::start(quiet_timers).await;
    let mut c = Connection::connect(&node.url).await.unwrap();
    c.hello(&token_for("alice", Duration::from_secs(30)), Vec::new())
        .await
        .unwrap();
    let started = Instant::now();
    match next_event(&mut c).await {
        Event::Error(e) => assert_eq!(e.code, Some(ErrorCode::TokenExpired)),
        other => panic!("{other:?}"),
    }
    assert_eq!(closed(&mut c, LONG).await, Some(1008));
    assert!(
        started.elapsed() >= Duration::from_secs(28),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn drain_asks_clients_to_reconnect_then_closes_the_rest() {
    let mut node = support::start(quiet_timers).await;
    let mut alice = support::connect(&node, "alice").await;
    let mut waiting = Connection::connect(&node.url).await.unwrap();
    let started = Instant::now();
    node.shutdown.cancel();

    // A connection still waiting for hello: `draining`, close 1013.
    match next_event(&mut waiting).await {
        Event::Error(e) => assert_eq!(e.code, Some(ErrorCode::Draining)),
        other => panic!("{other:?}"),
    }
    assert_eq!(closed(&mut waiting, LONG).await, Some(1013));

    // An established one: `reconnect` (draining) within the configured jitter, and it keeps
    // working meanwhile.
    match next_event(&mut alice).await {
        Event::Reconnect(r) => {
            assert_eq!(r.reason, "draining");
            assert!((100..=2_000).contains(&r.after_ms), "{}", r.after_ms);
        }
        other => panic!("{other:?}"),
    }
    assert!(alice.ping().await.unwrap().pong);
    // New connections are refused.
    assert!(Connection::connect(&node.url).await.is_err());

    // After max(deadline - 2 s, deadline / 2) = 8 s the rest are closed (1012).
    assert_eq!(closed(&mut alice, LONG).await, Some(1012));
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let stopped = timeout(LONG, &mut node.running.done).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "the node stops cleanly: {stopped:?}"
    );
}
