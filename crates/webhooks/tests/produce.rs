//! The region's Lua scripts write webhook events to the outbox, once, only while webhooks are
//! marked on: a real `redis-server` behind `RedisStore`.

use anyhow::{Context, Result};
use meridian_protocol::{LeftReason, RoomId, UserId};
use meridian_webhooks::outbox::{mark_on, partition_of, stream_key};
use meridian_webhooks::{EventKind, WebhookEvent};
use region_state::testing::RedisServer;
use region_state::{ConnRef, NodeId, RedisStore, RedisStoreConfig, StateStore, StoreLimits};
use tokio::sync::mpsc;

const PARTITIONS: u16 = 4;

async fn store(url: &str) -> Result<(RedisStore, NodeId, mpsc::Receiver<region_state::Inbound>)> {
    let (tx, rx) = mpsc::channel(1024);
    let node = NodeId::random();
    let config = RedisStoreConfig::standalone(url, "eu", node.clone(), StoreLimits::default());
    Ok((RedisStore::connect(config, tx).await?, node, rx))
}

/// Every outbox entry as an event, by partition then stream order.
async fn outbox(conn: &mut redis::aio::MultiplexedConnection) -> Result<Vec<(u16, WebhookEvent)>> {
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream_key(p))
            .arg("-")
            .arg("+")
            .query_async(conn)
            .await?;
        for id in reply.ids {
            let fields: Vec<(String, String)> = id
                .map
                .iter()
                .map(|(k, v)| Ok((k.clone(), redis::from_redis_value_ref(v)?)))
                .collect::<Result<_>>()?;
            out.push((p, WebhookEvent::from_entry(p, &id.id, &fields)?));
        }
    }
    Ok(out)
}

async fn session(store: &RedisStore, node: &NodeId) -> Result<()> {
    let room = RoomId::new("lobby").context("room")?;
    let alice = ConnRef {
        node: node.clone(),
        conn: 1,
        user: UserId::new("alice").context("user")?,
    };
    let bob = ConnRef {
        node: node.clone(),
        conn: 2,
        user: UserId::new("bob").context("user")?,
    };
    store.connect(&alice).await?;
    store.connect(&bob).await?;
    store.join(&room, &alice, 0).await?;
    store.join(&room, &bob, 0).await?;
    store.leave(&room, &bob, LeftReason::Leave).await?;
    store.leave(&room, &alice, LeftReason::Disconnect).await?;
    store.disconnect(&alice).await?;
    store.disconnect(&bob).await?;
    Ok(())
}

#[tokio::test]
async fn nothing_is_written_while_webhooks_are_off() -> Result<()> {
    let redis = RedisServer::start()?;
    let (store, node, _rx) = store(&redis.url()).await?;
    session(&store, &node).await?;
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("mw:wh:*")
        .query_async(&mut conn)
        .await?;
    assert!(keys.is_empty(), "{keys:?}");
    Ok(())
}

#[tokio::test]
async fn a_session_produces_each_event_once_in_order() -> Result<()> {
    let redis = RedisServer::start()?;
    let (store, node, _rx) = store(&redis.url()).await?;
    let mut conn = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    mark_on(&mut conn, PARTITIONS, 1000, 60_000).await?;
    session(&store, &node).await?;
    let events = outbox(&mut conn).await?;
    let room: Vec<(EventKind, Option<&str>, Option<&str>)> = events
        .iter()
        .filter(|(_, e)| e.room.is_some())
        .map(|(p, e)| {
            assert_eq!(*p, partition_of("r:lobby", PARTITIONS));
            assert_eq!(e.region, "eu");
            (e.kind, e.user.as_deref(), e.reason.as_deref())
        })
        .collect();
    assert_eq!(
        room,
        vec![
            (EventKind::RoomOccupied, None, None),
            (EventKind::MemberJoined, Some("alice"), None),
            (EventKind::MemberJoined, Some("bob"), None),
            (EventKind::MemberLeft, Some("bob"), Some("leave")),
            (EventKind::MemberLeft, Some("alice"), Some("disconnect")),
            (EventKind::RoomVacated, None, None),
        ]
    );
    let mut users: Vec<(EventKind, String)> = events
        .iter()
        .filter(|(_, e)| e.room.is_none())
        .map(|(p, e)| {
            let user = e.user.clone().unwrap_or_default();
            assert_eq!(*p, partition_of(&format!("u:{user}"), PARTITIONS));
            (e.kind, user)
        })
        .collect();
    users.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        users,
        vec![
            (EventKind::UserOnline, "alice".into()),
            (EventKind::UserOffline, "alice".into()),
            (EventKind::UserOnline, "bob".into()),
            (EventKind::UserOffline, "bob".into()),
        ]
    );
    Ok(())
}
