//! Delivery against a real `redis-server` and the in-process test receiver.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meridian_webhooks::config::{EndpointConfig, RetryConfig, WebhooksConfig};
use meridian_webhooks::deliver::spawn;
use meridian_webhooks::outbox::{append, stream_key};
use meridian_webhooks::testing::TestReceiver;
use meridian_webhooks::{EventKind, VerifyError, WebhookEvent, WebhookMetrics};
use region_state::testing::RedisServer;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "test-secret-0123456789";

fn config(url: &str, partitions: u16, lease_ttl_ms: u64) -> WebhooksConfig {
    let c = WebhooksConfig {
        endpoints: vec![EndpointConfig {
            name: "rx".into(),
            url: url.into(),
            secret: SECRET.into(),
            events: vec![
                EventKind::RoomOccupied,
                EventKind::RoomVacated,
                EventKind::MemberJoined,
                EventKind::MemberLeft,
                EventKind::Dropped,
            ],
            batch_max_events: 10,
            batch_max_ms: 20,
            backlog_limit: 10_000,
            timeout_ms: 2_000,
            retry: RetryConfig {
                base_ms: 50,
                max_ms: 400,
                give_up_after_s: 3600,
            },
        }],
        partitions,
        lease_ttl_ms,
        stream_max_len: 100_000,
    };
    c.validate().map_err(|e| e.to_string()).unwrap();
    c
}

async fn until<F: FnMut() -> bool>(what: &str, secs: u64, mut f: F) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("timed out waiting for {what}")
}

/// Appends `n` joined events over `rooms` rooms; returns the appended (room, user) in order.
async fn produce(redis: &RedisServer, partitions: u16, rooms: usize, n: usize) -> Result<()> {
    let client = redis::Client::open(redis.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    for i in 0..n {
        let room = format!("room{}", i % rooms);
        let user = format!("u{i}");
        append(
            &mut conn,
            partitions,
            "eu",
            EventKind::MemberJoined,
            Some(&room),
            Some(&user),
            None,
        )
        .await?;
    }
    Ok(())
}

/// Every produced event arrived exactly once by id, and in order within each room.
fn check_all_once_in_order(events: &[WebhookEvent], rooms: usize, n: usize) -> Result<()> {
    let joins: Vec<&WebhookEvent> = events
        .iter()
        .filter(|e| e.kind == EventKind::MemberJoined)
        .collect();
    let ids: HashSet<&str> = joins.iter().map(|e| e.id.as_str()).collect();
    if ids.len() != joins.len() {
        bail!("duplicate event ids among {} events", joins.len());
    }
    if joins.len() != n {
        bail!("{} of {n} events arrived", joins.len());
    }
    let mut last: HashMap<&str, usize> = HashMap::new();
    for e in joins {
        let room = e.room.as_deref().context("room")?;
        let i: usize = e.user.as_deref().context("user")?[1..].parse()?;
        if let Some(prev) = last.insert(room, i) {
            if prev >= i {
                bail!("room {room}: u{i} after u{prev}");
            }
        }
    }
    if last.len() != rooms {
        bail!("{} rooms seen", last.len());
    }
    Ok(())
}

#[tokio::test]
async fn delivers_signed_batches_once_and_in_order_per_room() -> Result<()> {
    let redis = RedisServer::start()?;
    let rx = TestReceiver::start(SECRET).await?;
    let stop = CancellationToken::new();
    let metrics = WebhookMetrics::default();
    let cfg = config(&rx.url(), 4, 1_000);
    let _workers = spawn(
        redis::Client::open(redis.url())?,
        cfg,
        "eu".into(),
        "node1".into(),
        metrics.clone(),
        stop.clone(),
    );
    produce(&redis, 4, 5, 60).await?;
    until("60 events", 20, || rx.events().len() >= 60).await?;
    check_all_once_in_order(&rx.events(), 5, 60)?;
    assert!(rx.refused().is_empty(), "{:?}", rx.refused());
    // Batched: fewer requests than events.
    assert!(rx.accepted().len() < 60);
    // A replayed batch is refused by the reference verifier (answered 200, not processed).
    let (raw, _) = rx.accepted().into_iter().next().context("a batch")?;
    let before = rx.events().len();
    assert_eq!(rx.replay(&raw).await?, 200);
    assert_eq!(rx.refused(), vec![VerifyError::Replayed]);
    assert_eq!(rx.events().len(), before);
    stop.cancel();
    Ok(())
}

#[tokio::test]
async fn a_receiver_failing_then_recovering_gets_everything() -> Result<()> {
    let redis = RedisServer::start()?;
    let rx = TestReceiver::start(SECRET).await?;
    rx.set_failing(true);
    let stop = CancellationToken::new();
    let metrics = WebhookMetrics::default();
    let _workers = spawn(
        redis::Client::open(redis.url())?,
        config(&rx.url(), 2, 1_000),
        "eu".into(),
        "node1".into(),
        metrics.clone(),
        stop.clone(),
    );
    produce(&redis, 2, 3, 30).await?;
    until("several failed attempts", 20, || rx.attempts() >= 6).await?;
    assert!(rx.events().is_empty());
    rx.set_failing(false);
    until("30 events", 20, || rx.events().len() >= 30).await?;
    check_all_once_in_order(&rx.events(), 3, 30)?;
    let failed = metrics
        .batches
        .get_or_create_owned(&vec![
            ("endpoint", "rx".into()),
            ("result", "failed".into()),
        ])
        .get();
    assert!(failed >= 6, "failed batches: {failed}");
    stop.cancel();
    Ok(())
}

#[tokio::test]
async fn a_crashed_owner_s_events_arrive_through_the_next_node() -> Result<()> {
    let redis = RedisServer::start()?;
    let mut rx = TestReceiver::start(SECRET).await?;
    rx.down();
    let client = redis::Client::open(redis.url())?;
    let first = CancellationToken::new();
    let mut crashed = spawn(
        client.clone(),
        config(&rx.url(), 2, 600),
        "eu".into(),
        "node1".into(),
        WebhookMetrics::default(),
        first.clone(),
    );
    produce(&redis, 2, 4, 40).await?;
    // node1 has read (pending) entries it could not deliver.
    let mut conn = client.get_multiplexed_async_connection().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut pending = 0;
        for p in 0..2 {
            let summary: redis::Value = redis::cmd("XPENDING")
                .arg(stream_key(p))
                .arg("rx")
                .query_async(&mut conn)
                .await?;
            if let redis::Value::Array(v) = summary {
                if let Some(redis::Value::Int(n)) = v.first() {
                    pending += n;
                }
            }
        }
        if pending > 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("node1 never read the outbox");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A crash: tasks gone without releasing leases or acknowledging.
    crashed.abort_all();
    while crashed.join_next().await.is_some() {}
    let stop = CancellationToken::new();
    let _workers = spawn(
        client,
        config(&rx.url(), 2, 600),
        "eu".into(),
        "node2".into(),
        WebhookMetrics::default(),
        stop.clone(),
    );
    rx.up().await?;
    until("40 events", 20, || rx.events().len() >= 40).await?;
    check_all_once_in_order(&rx.events(), 4, 40)?;
    stop.cancel();
    Ok(())
}

#[tokio::test]
async fn a_full_backlog_drops_the_oldest_and_says_how_many() -> Result<()> {
    let redis = RedisServer::start()?;
    let rx = TestReceiver::start(SECRET).await?;
    rx.set_failing(true);
    let mut cfg = config(&rx.url(), 1, 1_000);
    cfg.endpoints[0].backlog_limit = 5;
    cfg.endpoints[0].batch_max_events = 1;
    let metrics = WebhookMetrics::default();
    let stop = CancellationToken::new();
    let _workers = spawn(
        redis::Client::open(redis.url())?,
        cfg,
        "eu".into(),
        "node1".into(),
        metrics.clone(),
        stop.clone(),
    );
    // The first event is read and retried; 19 more wait behind it.
    produce(&redis, 1, 1, 1).await?;
    until("a failed attempt", 10, || rx.attempts() >= 1).await?;
    produce(&redis, 1, 1, 19).await?;
    let dropped = || {
        metrics
            .dropped
            .get_or_create_owned(&vec![("endpoint", "rx".into())])
            .get()
    };
    until("14 dropped", 10, || dropped() >= 14).await?;
    rx.set_failing(false);
    until("the rest", 20, || {
        rx.events()
            .iter()
            .filter(|e| e.kind == EventKind::MemberJoined)
            .count()
            >= 6
    })
    .await?;
    let events = rx.events();
    let reported: u64 = events
        .iter()
        .filter(|e| e.kind == EventKind::Dropped)
        .filter_map(|e| e.count)
        .sum();
    let joins = events
        .iter()
        .filter(|e| e.kind == EventKind::MemberJoined)
        .count() as u64;
    assert_eq!(reported, 14);
    assert_eq!(joins + reported, 20);
    stop.cancel();
    Ok(())
}

#[tokio::test]
async fn a_malformed_outbox_entry_is_skipped() -> Result<()> {
    let redis = RedisServer::start()?;
    let rx = TestReceiver::start(SECRET).await?;
    let client = redis::Client::open(redis.url())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let _: String = redis::cmd("XADD")
        .arg(stream_key(0))
        .arg("*")
        .arg("t")
        .arg("nonsense")
        .query_async(&mut conn)
        .await?;
    produce(&redis, 1, 1, 3).await?;
    let stop = CancellationToken::new();
    let _workers = spawn(
        client,
        config(&rx.url(), 1, 1_000),
        "eu".into(),
        "node1".into(),
        WebhookMetrics::default(),
        stop.clone(),
    );
    until("3 events", 10, || rx.events().len() >= 3).await?;
    check_all_once_in_order(&rx.events(), 1, 3)?;
    stop.cancel();
    Ok(())
}
