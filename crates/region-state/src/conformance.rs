//! The conformance suite every [`StateStore`] implementation must pass.
//!
//! A [`Harness`] makes stores for several nodes of one region; [`run_all`] runs every check
//! against it. Rooms and users get random names, so checks never see each other's data. Test
//! support: compiled only with the `test-support` feature.

// A test suite: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_trait::async_trait;
use meridian_protocol::{LeftReason, RoomEventFrame, RoomId, UserId};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::{
    random_token, Budget, ConnRef, Inbound, NodeId, PublishItem, Recovery, StateStore, StoreError,
    StoreLimits,
};

/// Makes stores for nodes of one region.
#[async_trait]
pub trait Harness: Send + Sync {
    /// A store for a new node with these limits, and its inbound channel.
    async fn node(&self, limits: StoreLimits) -> (Box<dyn StateStore>, mpsc::Receiver<Inbound>);
}

/// Runs every check, in order, printing each name so a failure is easy to place.
pub async fn run_all(h: &dyn Harness) {
    macro_rules! check {
        ($($name:ident),* $(,)?) => {$(
            eprintln!("conformance: {}", stringify!($name));
            $name(h).await;
        )*};
    }
    check!(
        join_leave_events_count_connections,
        publish_sequences_and_replays,
        trimmed_or_foreign_history_is_lost,
        idempotent_publish,
        batched_publishes_keep_order,
        members_paginate_in_order,
        room_full_is_refused,
        presence_and_direct_messages,
        state_versions_and_cas,
        dead_node_is_reaped,
        unsubscribe_stops_events,
        shares_room_sees_members_of_any_listed_room,
        budgets_are_shared_and_all_or_none,
        budgeted_publishes_stop_at_the_budget,
    );
}

fn room() -> RoomId {
    RoomId::new(format!("room-{}", random_token(8))).unwrap_or_else(|_| unreachable!())
}
fn user(prefix: &str) -> UserId {
    UserId::new(format!("{prefix}-{}", random_token(6))).unwrap_or_else(|_| unreachable!())
}
fn conn(store: &dyn StateStore, n: u64, user: &UserId) -> ConnRef {
    ConnRef {
        node: store.node().clone(),
        conn: n,
        user: user.clone(),
    }
}
fn json(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap_or_else(|_| unreachable!())
}

/// The next room event on `rx` as JSON, failing the check after 3 s.
async fn next_room_event(rx: &mut mpsc::Receiver<Inbound>) -> (u64, serde_json::Value) {
    loop {
        match tokio::time::timeout(Duration::from_secs(3), rx.recv()).await {
            Ok(Some(Inbound::Room { seq, frame, .. })) => {
                let v: serde_json::Value =
                    serde_json::from_slice(&frame).unwrap_or_else(|e| panic!("bad frame: {e}"));
                assert_eq!(
                    v["seq"].as_u64(),
                    Some(seq),
                    "frame seq matches channel seq"
                );
                return (seq, v);
            }
            Ok(Some(_)) => continue,
            other => panic!("expected a room event, got {other:?}"),
        }
    }
}

async fn assert_quiet(rx: &mut mpsc::Receiver<Inbound>) {
    if let Ok(Some(Inbound::Room { frame, .. })) =
        tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
    {
        panic!("unexpected event {}", String::from_utf8_lossy(&frame));
    }
}

async fn join_leave_events_count_connections(h: &dyn Harness) {
    let (observer, mut events) = h.node(StoreLimits::default()).await;
    let (other, _rx) = h.node(StoreLimits::default()).await;
    let r = room();
    let alice = user("alice");
    observer.subscribe(&r).await.unwrap();

    let tab1 = conn(&*other, 1, &alice);
    let tab2 = conn(&*other, 2, &alice);
    let j1 = other.join(&r, &tab1, 0).await.unwrap();
    assert!(j1.first);
    let (seq, ev) = next_room_event(&mut events).await;
    assert_eq!(
        (ev["type"].as_str(), ev["user"].as_str()),
        (Some("joined"), Some(alice.as_str()))
    );
    assert_eq!(seq, j1.seq);
    assert_eq!(ev["epoch"].as_str(), Some(j1.epoch.as_str()));

    let j2 = other.join(&r, &tab2, 0).await.unwrap();
    assert!(!j2.first, "second connection of a user is not a new member");
    assert_eq!(j2.seq, j1.seq);
    // Joining again on the same connection is a no-op.
    assert!(!other.join(&r, &tab2, 0).await.unwrap().first);
    // A third connection of the same user, on another node.
    let tab3 = conn(&*observer, 1, &alice);
    assert!(!observer.join(&r, &tab3, 0).await.unwrap().first);
    assert!(!observer
        .leave(&r, &tab3, LeftReason::Disconnect)
        .await
        .unwrap());
    assert_quiet(&mut events).await;
    let page = observer.members(&r, None, 10).await.unwrap();
    assert_eq!(page.members.len(), 1);
    assert_eq!(page.members[0].region, other.region());

    assert!(
        !other.leave(&r, &tab1, LeftReason::Leave).await.unwrap(),
        "one tab left, one remains"
    );
    assert_quiet(&mut events).await;
    assert!(other
        .leave(&r, &tab2, LeftReason::Disconnect)
        .await
        .unwrap());
    let (_, ev) = next_room_event(&mut events).await;
    assert_eq!(ev["type"], "left");
    assert_eq!(ev["reason"], "disconnect");
    assert!(
        !other.leave(&r, &tab2, LeftReason::Leave).await.unwrap(),
        "leave is idempotent"
    );
    assert!(observer
        .members(&r, None, 10)
        .await
        .unwrap()
        .members
        .is_empty());
    observer.unsubscribe(&r).await.unwrap();
}

async fn publish_sequences_and_replays(h: &dyn Harness) {
    let (store, mut events) = h.node(StoreLimits::default()).await;
    let r = room();
    let u = user("pub");
    store.subscribe(&r).await.unwrap();
    let mut seqs = Vec::new();
    for i in 0..5 {
        let data = json(&format!("{{\"n\":{i}}}"));
        let p = store
            .publish(&r, &RoomEventFrame::message(&r, &u, &data), None)
            .await
            .unwrap();
        assert!(!p.duplicate);
        seqs.push((p.seq, p.epoch));
    }
    for w in seqs.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "sequence numbers are consecutive");
        assert_eq!(w[1].1, w[0].1, "one epoch");
    }
    for (i, (seq, _)) in seqs.iter().enumerate() {
        let (s, ev) = next_room_event(&mut events).await;
        assert_eq!(s, *seq);
        assert_eq!(ev["data"]["n"], i);
        assert_eq!(ev["from"], u.as_str());
    }
    let epoch = seqs[0].1.clone();
    match store.history(&r, &epoch, seqs[1].0).await.unwrap() {
        Recovery::Replay { events, .. } => {
            let got: Vec<u64> = events.iter().map(|(s, _)| *s).collect();
            assert_eq!(got, seqs[2..].iter().map(|(s, _)| *s).collect::<Vec<_>>());
        }
        lost => panic!("expected replay, got {lost:?}"),
    }
    match store.history(&r, &epoch, seqs[4].0).await.unwrap() {
        Recovery::Replay { events, .. } => assert!(events.is_empty()),
        lost => panic!("expected empty replay, got {lost:?}"),
    }
    match store.history(&r, "", 0).await.unwrap() {
        Recovery::Replay { events, epoch: e } => {
            assert_eq!(e, epoch);
            assert_eq!(events.len(), 5);
        }
        lost => panic!("expected full replay, got {lost:?}"),
    }
    store.unsubscribe(&r).await.unwrap();
}

async fn trimmed_or_foreign_history_is_lost(h: &dyn Harness) {
    let limits = StoreLimits {
        history_len: 3,
        ..StoreLimits::default()
    };
    let (store, _events) = h.node(limits).await;
    let r = room();
    let u = user("pub");
    let data = json("1");
    let mut last = None;
    for _ in 0..10 {
        last = Some(
            store
                .publish(&r, &RoomEventFrame::message(&r, &u, &data), None)
                .await
                .unwrap(),
        );
    }
    let last = last.unwrap();
    assert!(matches!(
        store.history(&r, &last.epoch, 2).await.unwrap(),
        Recovery::Lost { seq: 10, .. }
    ));
    assert!(matches!(
        store.history(&r, "other-epoch", 9).await.unwrap(),
        Recovery::Lost { .. }
    ));
    assert!(matches!(
        store.history(&r, &last.epoch, 99).await.unwrap(),
        Recovery::Lost { .. }
    ));
    match store.history(&r, &last.epoch, 7).await.unwrap() {
        Recovery::Replay { events, .. } => assert_eq!(
            events.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![8, 9, 10]
        ),
        lost => panic!("expected replay, got {lost:?}"),
    }
    assert!(matches!(
        store.history(&room(), "gone", 4).await.unwrap(),
        Recovery::Lost { seq: 0, .. }
    ));
}

async fn idempotent_publish(h: &dyn Harness) {
    let (store, mut events) = h.node(StoreLimits::default()).await;
    let r = room();
    let u = user("pub");
    store.subscribe(&r).await.unwrap();
    let data = json("\"hi\"");
    let frame = RoomEventFrame::message(&r, &u, &data);
    let a = store.publish(&r, &frame, Some((&u, "k1"))).await.unwrap();
    let b = store.publish(&r, &frame, Some((&u, "k1"))).await.unwrap();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!(a.seq, b.seq);
    let other = user("other");
    let c = store
        .publish(&r, &frame, Some((&other, "k1")))
        .await
        .unwrap();
    assert!(!c.duplicate, "keys are per user");
    assert_eq!(next_room_event(&mut events).await.0, a.seq);
    assert_eq!(next_room_event(&mut events).await.0, c.seq);
    assert_quiet(&mut events).await;
    store.unsubscribe(&r).await.unwrap();
}

/// A pipelined batch is sequenced in order, delivered in order, and its idempotency keys
/// behave as for single publishes (also against a key used earlier in the same batch).
async fn batched_publishes_keep_order(h: &dyn Harness) {
    let (store, mut events) = h.node(StoreLimits::default()).await;
    let r = room();
    let u = user("batch");
    store.subscribe(&r).await.unwrap();
    let before = store
        .publish(
            &r,
            &RoomEventFrame::message(&r, &u, &json("0")),
            Some((&u, "k0")),
        )
        .await
        .unwrap();
    let frames: Vec<RoomEventFrame> = (1..=5)
        .map(|i| RoomEventFrame::message(&r, &u, &json(&i.to_string())))
        .collect();
    let keys = [None, Some("k1"), Some("k1"), Some("k0"), None];
    let items: Vec<PublishItem<'_>> = frames
        .iter()
        .zip(keys)
        .map(|(frame, key)| PublishItem {
            frame,
            idempotency: key.map(|k| (&u, k)),
        })
        .collect();
    let out = store.publish_many(&r, &items).await.unwrap();
    assert_eq!(out.len(), 5);
    let dup: Vec<bool> = out.iter().map(|p| p.duplicate).collect();
    assert_eq!(dup, [false, false, true, true, false]);
    assert_eq!(out[0].seq, before.seq + 1);
    assert_eq!(out[1].seq, before.seq + 2);
    assert_eq!(
        out[2].seq, out[1].seq,
        "a key repeated in the batch answers its first use"
    );
    assert_eq!(
        out[3].seq, before.seq,
        "a key used before the batch answers that publish"
    );
    assert_eq!(out[4].seq, before.seq + 3);
    assert!(out.iter().all(|p| p.epoch == before.epoch));
    assert_eq!(next_room_event(&mut events).await.0, before.seq);
    for (want, data) in [(out[0].seq, 1), (out[1].seq, 2), (out[4].seq, 5)] {
        let (seq, v) = next_room_event(&mut events).await;
        assert_eq!(seq, want);
        assert_eq!(v["data"], data, "delivered in the order published");
    }
    assert_quiet(&mut events).await;
    assert!(store.publish_many(&r, &[]).await.unwrap().is_empty());
    store.unsubscribe(&r).await.unwrap();
}

async fn members_paginate_in_order(h: &dyn Harness) {
    let (store, _events) = h.node(StoreLimits::default()).await;
    let r = room();
    let mut users: Vec<UserId> = (0..25)
        .map(|i| UserId::new(format!("m{i:02}")).unwrap())
        .collect();
    for (i, u) in users.iter().enumerate() {
        store
            .join(&r, &conn(&*store, i as u64, u), 0)
            .await
            .unwrap();
    }
    users.sort();
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = store.members(&r, after.as_ref(), 10).await.unwrap();
        pages += 1;
        assert!(page.members.len() <= 10);
        seen.extend(page.members.iter().map(|m| m.user.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, users);
}

async fn room_full_is_refused(h: &dyn Harness) {
    let (store, _events) = h.node(StoreLimits::default()).await;
    let r = room();
    let (a, b, c) = (user("a"), user("b"), user("c"));
    store.join(&r, &conn(&*store, 1, &a), 2).await.unwrap();
    store.join(&r, &conn(&*store, 2, &b), 2).await.unwrap();
    assert!(matches!(
        store.join(&r, &conn(&*store, 3, &c), 2).await,
        Err(StoreError::RoomFull { max: 2 })
    ));
    // Another connection of an existing member still fits.
    assert!(
        !store
            .join(&r, &conn(&*store, 4, &a), 2)
            .await
            .unwrap()
            .first
    );
    assert_eq!(store.members(&r, None, 10).await.unwrap().members.len(), 2);
}

async fn presence_and_direct_messages(h: &dyn Harness) {
    let (sender, _s_rx) = h.node(StoreLimits::default()).await;
    let (holder, mut h_rx) = h.node(StoreLimits::default()).await;
    sender.renew_lease().await.unwrap();
    holder.renew_lease().await.unwrap();
    let bob = user("bob");
    let nobody = user("nobody");
    let c = conn(&*holder, 1, &bob);
    holder.connect(&c).await.unwrap();
    let p = sender
        .presence(&[bob.clone(), nobody.clone()])
        .await
        .unwrap();
    assert!(
        p[0].online && p[0].connections == 1 && p[0].regions == vec![holder.region().to_owned()]
    );
    assert!(!p[1].online);

    assert!(sender
        .send_direct(&bob, "{\"type\":\"direct\",\"n\":1}")
        .await
        .unwrap());
    assert!(sender
        .send_direct(&bob, "{\"type\":\"direct\",\"n\":2}")
        .await
        .unwrap());
    for n in 1..=2 {
        match tokio::time::timeout(Duration::from_secs(3), h_rx.recv()).await {
            Ok(Some(Inbound::Direct { user, frame })) => {
                assert_eq!(user, bob);
                let v: serde_json::Value = serde_json::from_slice(&frame).unwrap();
                assert_eq!(v["n"], n, "direct messages arrive in order");
            }
            other => panic!("expected a direct message, got {other:?}"),
        }
    }
    assert!(!sender.send_direct(&nobody, "{}").await.unwrap());
    holder.disconnect(&c).await.unwrap();
    assert!(!sender.presence(std::slice::from_ref(&bob)).await.unwrap()[0].online);
    assert!(!sender.send_direct(&bob, "{}").await.unwrap());
    holder.release_lease().await.unwrap();
    sender.release_lease().await.unwrap();
}

async fn state_versions_and_cas(h: &dyn Harness) {
    let (store, mut events) = h.node(StoreLimits::default()).await;
    let r = room();
    let u = user("w");
    store.subscribe(&r).await.unwrap();
    assert_eq!(
        store
            .state_set(&r, "topic", &json("\"a\""), Some(0), &u)
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        store
            .state_set(&r, "topic", &json("\"b\""), Some(0), &u)
            .await,
        Err(StoreError::VersionConflict { current: 1 })
    ));
    assert_eq!(
        store
            .state_set(&r, "topic", &json("\"b\""), Some(1), &u)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .state_set(&r, "mode", &json("{\"x\":[1]}"), None, &u)
            .await
            .unwrap(),
        1
    );
    let all = store.state_get(&r, None).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|e| (e.key.as_str(), e.version, e.value.get()))
            .collect::<Vec<_>>(),
        vec![("mode", 1, "{\"x\":[1]}"), ("topic", 2, "\"b\"")]
    );
    assert_eq!(
        store.state_get(&r, Some("topic")).await.unwrap()[0].version,
        2
    );
    assert!(store.state_get(&r, Some("nope")).await.unwrap().is_empty());
    assert!(matches!(
        store.state_delete(&r, "topic", Some(1), &u).await,
        Err(StoreError::VersionConflict { current: 2 })
    ));
    assert!(store.state_delete(&r, "topic", Some(2), &u).await.unwrap());
    assert!(!store.state_delete(&r, "topic", None, &u).await.unwrap());
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (_, ev) = next_room_event(&mut events).await;
        assert_eq!(ev["type"], "state_changed");
        seen.push((
            ev["key"].as_str().unwrap_or("").to_owned(),
            ev["version"].as_u64(),
            ev["value"].clone(),
        ));
    }
    assert_eq!(seen[0], ("topic".into(), Some(1), serde_json::json!("a")));
    assert_eq!(seen[3], ("topic".into(), Some(3), serde_json::Value::Null));
    store.unsubscribe(&r).await.unwrap();
}

async fn dead_node_is_reaped(h: &dyn Harness) {
    let short = StoreLimits {
        lease_ttl: Duration::from_millis(300),
        ..StoreLimits::default()
    };
    let (survivor, mut events) = h.node(short.clone()).await;
    let (doomed, _d_rx) = h.node(short).await;
    survivor.renew_lease().await.unwrap();
    doomed.renew_lease().await.unwrap();
    let r = room();
    let (alice, bob) = (user("alice"), user("bob"));
    let a = conn(&*survivor, 1, &alice);
    let b = conn(&*doomed, 1, &bob);
    survivor.connect(&a).await.unwrap();
    doomed.connect(&b).await.unwrap();
    survivor.subscribe(&r).await.unwrap();
    survivor.join(&r, &a, 0).await.unwrap();
    doomed.join(&r, &b, 0).await.unwrap();
    let _ = next_room_event(&mut events).await;
    let _ = next_room_event(&mut events).await;
    assert!(
        survivor.reap_dead_nodes().await.unwrap().is_empty(),
        "a live lease is not reaped"
    );

    // The doomed node stops renewing; the survivor keeps its own lease alive and reaps.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let reaped = loop {
        survivor.renew_lease().await.unwrap();
        let r = survivor.reap_dead_nodes().await.unwrap();
        if !r.is_empty() || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reaped.len(), 1);
    assert_eq!(&reaped[0].node, doomed.node());
    assert_eq!((reaped[0].memberships, reaped[0].left_events), (1, 1));
    let (_, ev) = next_room_event(&mut events).await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["user"].as_str(),
            ev["reason"].as_str()
        ),
        (Some("left"), Some(bob.as_str()), Some("node_lost"))
    );
    let members = survivor.members(&r, None, 10).await.unwrap().members;
    assert_eq!(
        members.iter().map(|m| &m.user).collect::<Vec<_>>(),
        vec![&alice]
    );
    let p = survivor
        .presence(&[alice.clone(), bob.clone()])
        .await
        .unwrap();
    assert!(p[0].online && !p[1].online);
    assert!(
        survivor.reap_dead_nodes().await.unwrap().is_empty(),
        "reaped once"
    );
    survivor.unsubscribe(&r).await.unwrap();
    survivor.release_lease().await.unwrap();
    let _ = NodeId::random();
}

async fn unsubscribe_stops_events(h: &dyn Harness) {
    let (store, mut events) = h.node(StoreLimits::default()).await;
    let r = room();
    let u = user("u");
    let data = json("0");
    store.subscribe(&r).await.unwrap();
    store.subscribe(&r).await.unwrap();
    store.unsubscribe(&r).await.unwrap();
    store
        .publish(&r, &RoomEventFrame::message(&r, &u, &data), None)
        .await
        .unwrap();
    let _ = next_room_event(&mut events).await; // still one subscription left
    store.unsubscribe(&r).await.unwrap();
    store
        .publish(&r, &RoomEventFrame::message(&r, &u, &data), None)
        .await
        .unwrap();
    assert_quiet(&mut events).await;
}

async fn shares_room_sees_members_of_any_listed_room(h: &dyn Harness) {
    let (store, _events) = h.node(StoreLimits::default()).await;
    let (r1, r2, r3) = (room(), room(), room());
    let (a, b, c) = (user("a"), user("b"), user("c"));
    store.join(&r1, &conn(&*store, 1, &a), 0).await.unwrap();
    store.join(&r2, &conn(&*store, 2, &b), 0).await.unwrap();
    let users = [a.clone(), b.clone(), c.clone()];
    assert_eq!(
        store
            .shares_room(&[r1.clone(), r2.clone()], &users)
            .await
            .unwrap(),
        vec![true, true, false]
    );
    assert_eq!(
        store.shares_room(&[r3], &users).await.unwrap(),
        vec![false, false, false]
    );
    assert_eq!(
        store.shares_room(&[], &users).await.unwrap(),
        vec![false; 3]
    );
    store
        .leave(&r1, &conn(&*store, 1, &a), LeftReason::Leave)
        .await
        .unwrap();
    assert_eq!(store.shares_room(&[r1], &[a]).await.unwrap(), vec![false]);
}

async fn budgets_are_shared_and_all_or_none(h: &dyn Harness) {
    let (one, _e1) = h.node(StoreLimits::default()).await;
    let (two, _e2) = h.node(StoreLimits::default()).await;
    let (x, y) = (
        format!("x-{}", random_token(6)),
        format!("y-{}", random_token(6)),
    );
    let window = Duration::from_secs(30);
    fn spend(name: &str, cost: u64, limit: u64) -> Budget<'_> {
        Budget { name, cost, limit }
    }
    // Two nodes draw from one budget.
    for _ in 0..3 {
        assert_eq!(one.spend(&[spend(&x, 1, 5)], window).await.unwrap(), None);
    }
    for _ in 0..2 {
        assert_eq!(two.spend(&[spend(&x, 1, 5)], window).await.unwrap(), None);
    }
    assert_eq!(
        one.spend(&[spend(&x, 1, 5)], window).await.unwrap(),
        Some(0)
    );
    // All or none: y is not charged when x is overdrawn.
    assert_eq!(
        two.spend(&[spend(&y, 4, 4), spend(&x, 1, 5)], window)
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(two.spend(&[spend(&y, 4, 4)], window).await.unwrap(), None);
    // A cost larger than the limit never fits.
    let z = format!("z-{}", random_token(6));
    assert_eq!(
        one.spend(&[spend(&z, 9, 8)], window).await.unwrap(),
        Some(0)
    );
}

async fn budgeted_publishes_stop_at_the_budget(h: &dyn Harness) {
    let (one, _e1) = h.node(StoreLimits::default()).await;
    let (two, _e2) = h.node(StoreLimits::default()).await;
    let r = room();
    let u = user("p");
    let data = RawValue::from_string("1".into()).unwrap();
    let frame = RoomEventFrame::message(&r, &u, &data);
    let item = PublishItem {
        frame: &frame,
        idempotency: None,
    };
    let name = format!("pub:{}", random_token(6));
    let window = Duration::from_secs(30);
    let budget = Some((name.as_str(), 5));
    // 3 on one node and 2 on the other fill the budget; a batch is all or none.
    let three = [item; 3];
    assert_eq!(
        one.publish_budgeted(&r, &three, budget, window)
            .await
            .unwrap()
            .len(),
        3
    );
    assert!(matches!(
        two.publish_budgeted(&r, &three, budget, window).await,
        Err(StoreError::BudgetSpent { limit: 5 })
    ));
    let two_items = [item; 2];
    let out = two
        .publish_budgeted(&r, &two_items, budget, window)
        .await
        .unwrap();
    assert_eq!(out.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![4, 5]);
    assert!(matches!(
        one.publish_budgeted(&r, std::slice::from_ref(&item), budget, window)
            .await,
        Err(StoreError::BudgetSpent { limit: 5 })
    ));
    // Nothing refused was published; without a budget publishing goes on.
    let next = one
        .publish_budgeted(&r, std::slice::from_ref(&item), None, window)
        .await
        .unwrap();
    assert_eq!(next[0].seq, 6);
}
