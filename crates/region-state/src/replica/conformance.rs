//! The conformance suite of the replica's apply rules: every [`ReplicaApply`] (the Redis
//! scripts, the Rust model) must give the same outcomes, watermarks, members, state and
//! history for the same replicated events. The model runs it in a unit test
//! (`model::tests`), Redis in `tests/replica_conformance.rs` against a real `redis-server`.
//!
//! Rooms get random names, so checks never see each other's data.

// A test suite: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use meridian_protocol::relay::{epoch_code, EventKind, RoomEvent, Snapshot};
use meridian_protocol::{
    Hlc, JsonText, LeftReason, RoomEventFrame, RoomEventKind, RoomId, StateRecord, UserId,
};

use super::{Applied, ReplicaApply};
use crate::random_token;

const EPOCH: &str = "k3v9x0qa";

fn room() -> RoomId {
    RoomId::new(format!("rc-{}", random_token(8))).unwrap()
}

fn user(u: &str) -> UserId {
    UserId::new(u).unwrap()
}

fn stamp(ms: u64) -> Hlc {
    Hlc {
        wall_ms: 1_700_000_000_000 + ms,
        logical: 0,
    }
}

fn event(room: &RoomId, origin: &str, seq: u64, prev: u64, kind: EventKind) -> RoomEvent {
    RoomEvent {
        room: room.clone(),
        origin_region: origin.into(),
        origin_epoch: epoch_code(EPOCH),
        origin_seq: seq,
        prev_seq: prev,
        hlc: stamp(seq),
        kind,
    }
}

fn message(n: u64, idempotency: Option<&str>) -> EventKind {
    EventKind::Event(RoomEventKind::Message {
        from: user("bob"),
        data: JsonText::new(format!("{{\"n\":{n}}}")).unwrap(),
        idempotency: idempotency.map(str::to_owned),
    })
}

fn snapshot(members: &[(&str, u64)], state: Vec<StateRecord>) -> EventKind {
    EventKind::Snapshot(Snapshot {
        members: members.iter().map(|(u, s)| (user(u), stamp(*s))).collect(),
        state,
    })
}

fn set(key: &str, value: &str) -> EventKind {
    EventKind::Event(RoomEventKind::StateSet {
        key: key.into(),
        value: JsonText::new(value).unwrap(),
        by: user("bob"),
    })
}

/// The room's history, decoded: `(kind, origin region)` of each entry.
async fn history(s: &dyn ReplicaApply, room: &RoomId) -> Vec<(RoomEventKind, Option<String>)> {
    let batch = s.read_local(room, 0, 1000).await.unwrap();
    batch
        .entries
        .iter()
        .map(|e| {
            let d = RoomEventFrame::decode(&e.frame).unwrap();
            assert_eq!(d.seq, e.seq, "the frame's seq is the entry's");
            assert_eq!(d.epoch, batch.epoch);
            assert_eq!(
                d.origin
                    .as_ref()
                    .map(|o| format!("{} {} {}", o.region, o.epoch, o.seq)),
                e.origin,
                "the history tag names the frame's origin"
            );
            (d.kind, d.origin.map(|o| o.region))
        })
        .collect()
}

async fn members(s: &dyn ReplicaApply, room: &RoomId) -> Vec<(String, String)> {
    s.members(room)
        .await
        .unwrap()
        .into_iter()
        .map(|(u, h)| (u.as_str().to_owned(), h))
        .collect()
}

async fn state(s: &dyn ReplicaApply, room: &RoomId) -> Vec<(String, Option<String>)> {
    let mut st: Vec<(String, Option<String>)> = s
        .snapshot(room)
        .await
        .unwrap()
        .state
        .into_iter()
        .map(|r| (r.key, r.value.map(|v| v.get().to_owned())))
        .collect();
    st.sort();
    st
}

/// Runs every check, printing each name so a failure is easy to place.
pub async fn run_all(s: &dyn ReplicaApply) {
    macro_rules! check {
        ($($name:ident),* $(,)?) => {$(
            eprintln!("replica conformance: {}", stringify!($name));
            $name(s).await;
        )*};
    }
    check!(
        nothing_applies_before_a_snapshot,
        watermark_dedupes_and_prev_seq_finds_gaps,
        a_batch_applies_like_one_at_a_time,
        a_snapshot_may_repeat_its_position,
        a_new_epoch_needs_a_snapshot,
        state_merges_by_last_writer,
        equal_stamps_break_on_the_region,
        membership_merges_by_last_writer,
        a_snapshot_replaces_the_origins_members,
        a_publish_is_applied_once_across_origins,
        region_down_removes_the_regions_members,
    );
}

async fn nothing_applies_before_a_snapshot(s: &dyn ReplicaApply) {
    let r = room();
    assert_eq!(
        s.apply(&event(&r, "eu", 3, 2, message(3, None)))
            .await
            .unwrap(),
        Applied::Gap
    );
    assert_eq!(
        s.apply(&event(&r, "eu", 1, 0, message(1, None)))
            .await
            .unwrap(),
        Applied::Gap,
        "prev_seq 0 is no predecessor without a watermark"
    );
    assert!(history(s, &r).await.is_empty());
    assert_eq!(
        s.watermarks("eu", std::slice::from_ref(&r)).await.unwrap(),
        vec![None]
    );
}

async fn watermark_dedupes_and_prev_seq_finds_gaps(s: &dyn ReplicaApply) {
    let r = room();
    let snap = snapshot(&[("bob", 1)], Vec::new());
    assert_eq!(
        s.apply(&event(&r, "eu", 5, 0, snap)).await.unwrap(),
        Applied::Applied
    );
    assert_eq!(members(s, &r).await, vec![("bob".into(), "eu".into())]);
    let m7 = event(&r, "eu", 7, 5, message(7, None));
    assert_eq!(s.apply(&m7).await.unwrap(), Applied::Applied);
    assert_eq!(s.apply(&m7).await.unwrap(), Applied::Duplicate);
    assert_eq!(
        s.apply(&event(&r, "eu", 6, 5, message(6, None)))
            .await
            .unwrap(),
        Applied::Duplicate,
        "below the watermark"
    );
    assert_eq!(
        s.apply(&event(&r, "eu", 9, 8, message(9, None)))
            .await
            .unwrap(),
        Applied::Gap
    );
    assert_eq!(
        s.watermarks("eu", std::slice::from_ref(&r)).await.unwrap(),
        vec![Some((EPOCH.to_owned(), 7))],
        "a gap moves nothing"
    );
    assert_eq!(
        s.apply(&event(&r, "eu", 9, 7, message(9, None)))
            .await
            .unwrap(),
        Applied::Applied
    );
    let h = history(s, &r).await;
    assert_eq!(h.len(), 3, "{h:?}");
    assert!(
        matches!(&h[0], (RoomEventKind::Joined { user }, Some(o)) if user.as_str() == "bob" && o == "eu")
    );
    assert!(
        matches!(&h[1], (RoomEventKind::Message { data, .. }, Some(_)) if data.get() == "{\"n\":7}")
    );
    assert!(
        matches!(&h[2], (RoomEventKind::Message { data, .. }, Some(_)) if data.get() == "{\"n\":9}")
    );
    // Watermarks are per origin.
    assert_eq!(
        s.watermarks("us", std::slice::from_ref(&r)).await.unwrap(),
        vec![None]
    );
}

async fn a_batch_applies_like_one_at_a_time(s: &dyn ReplicaApply) {
    let r = room();
    assert!(s.apply_batch(&[]).await.unwrap().is_empty());
    let m7 = event(&r, "eu", 7, 5, message(7, None));
    let batch = [
        event(&r, "eu", 5, 0, snapshot(&[("bob", 1)], Vec::new())),
        m7.clone(),
        m7,
        event(&r, "eu", 6, 5, message(6, None)),
        event(&r, "eu", 9, 8, message(9, None)),
        event(&r, "eu", 9, 7, message(9, None)),
        event(&r, "eu", 10, 9, set("topic", "\"x\"")),
    ];
    assert_eq!(
        s.apply_batch(&batch).await.unwrap(),
        vec![
            Applied::Applied,
            Applied::Applied,
            Applied::Duplicate,
            Applied::Duplicate,
            Applied::Gap,
            Applied::Applied,
            Applied::Applied,
        ],
        "each event sees the ones before it in the batch"
    );
    assert_eq!(
        s.watermarks("eu", std::slice::from_ref(&r)).await.unwrap(),
        vec![Some((EPOCH.to_owned(), 10))]
    );
    assert_eq!(history(s, &r).await.len(), 4, "joined, 7, 9, topic");
    assert_eq!(
        state(s, &r).await,
        vec![("topic".to_owned(), Some("\"x\"".to_owned()))]
    );
}

async fn a_snapshot_may_repeat_its_position(s: &dyn ReplicaApply) {
    let r = room();
    let snap = || snapshot(&[("bob", 1)], Vec::new());
    assert_eq!(
        s.apply(&event(&r, "eu", 5, 0, snap())).await.unwrap(),
        Applied::Applied
    );
    assert_eq!(
        s.apply(&event(&r, "eu", 5, 0, snap())).await.unwrap(),
        Applied::Applied,
        "a resume point's reconciliation snapshot carries the watermark's seq"
    );
    assert_eq!(
        s.apply(&event(&r, "eu", 4, 0, snap())).await.unwrap(),
        Applied::Duplicate
    );
    assert_eq!(history(s, &r).await.len(), 1, "bob joined once");
}

async fn a_new_epoch_needs_a_snapshot(s: &dyn ReplicaApply) {
    let r = room();
    s.apply(&event(&r, "eu", 5, 0, snapshot(&[], Vec::new())))
        .await
        .unwrap();
    let mut other = event(&r, "eu", 6, 5, message(6, None));
    other.origin_epoch = epoch_code("zzzz0000");
    assert_eq!(s.apply(&other).await.unwrap(), Applied::Gap);
    let mut snap = event(&r, "eu", 2, 0, snapshot(&[], Vec::new()));
    snap.origin_epoch = epoch_code("zzzz0000");
    assert_eq!(
        s.apply(&snap).await.unwrap(),
        Applied::Applied,
        "another epoch starts over, also below the old seq"
    );
    let mut next = event(&r, "eu", 3, 2, message(3, None));
    next.origin_epoch = epoch_code("zzzz0000");
    assert_eq!(s.apply(&next).await.unwrap(), Applied::Applied);
    assert_eq!(
        s.watermarks("eu", std::slice::from_ref(&r)).await.unwrap(),
        vec![Some(("zzzz0000".to_owned(), 3))]
    );
}

async fn state_merges_by_last_writer(s: &dyn ReplicaApply) {
    let r = room();
    s.apply(&event(&r, "eu", 1, 0, snapshot(&[], Vec::new())))
        .await
        .unwrap();
    assert_eq!(
        s.apply(&event(&r, "eu", 5, 1, set("topic", "\"a\"")))
            .await
            .unwrap(),
        Applied::Applied
    );
    let mut older = event(&r, "eu", 6, 5, set("topic", "\"stale\""));
    older.hlc = stamp(2);
    assert_eq!(s.apply(&older).await.unwrap(), Applied::Superseded);
    assert_eq!(
        s.watermarks("eu", std::slice::from_ref(&r)).await.unwrap(),
        vec![Some((EPOCH.to_owned(), 6))],
        "a superseded write still moves the watermark"
    );
    assert_eq!(
        state(s, &r).await,
        vec![("topic".into(), Some("\"a\"".into()))]
    );
    let delete = EventKind::Event(RoomEventKind::StateDelete {
        key: "topic".into(),
        by: user("bob"),
    });
    assert_eq!(
        s.apply(&event(&r, "eu", 8, 6, delete)).await.unwrap(),
        Applied::Applied
    );
    assert_eq!(
        state(s, &r).await,
        vec![("topic".into(), None)],
        "a tombstone stays"
    );
    // A delete of a key never set: recorded, nothing in the history.
    let before = history(s, &r).await.len();
    let delete = EventKind::Event(RoomEventKind::StateDelete {
        key: "never".into(),
        by: user("bob"),
    });
    assert_eq!(
        s.apply(&event(&r, "eu", 9, 8, delete)).await.unwrap(),
        Applied::Applied
    );
    assert_eq!(history(s, &r).await.len(), before);
    // A snapshot's state merges key by key by the same rule.
    let rec = |key: &str, value: &str, at: u64| StateRecord {
        key: key.into(),
        value: Some(JsonText::new(value).unwrap()),
        hlc: stamp(at),
        region: "eu".into(),
        by: user("bob"),
    };
    let snap = snapshot(&[], vec![rec("topic", "\"old\"", 3), rec("mood", "1", 20)]);
    assert_eq!(
        s.apply(&event(&r, "eu", 10, 0, snap)).await.unwrap(),
        Applied::Applied
    );
    assert_eq!(
        state(s, &r).await,
        vec![
            ("mood".into(), Some("1".into())),
            ("never".into(), None),
            ("topic".into(), None)
        ]
    );
    let versions: Vec<Option<u64>> = s
        .read_local(&r, 0, 100)
        .await
        .unwrap()
        .entries
        .iter()
        .map(|e| RoomEventFrame::decode(&e.frame).unwrap().version)
        .collect();
    assert_eq!(versions, vec![Some(1), Some(2), Some(1)]);
}

async fn equal_stamps_break_on_the_region(s: &dyn ReplicaApply) {
    for order in [["eu", "us"], ["us", "eu"]] {
        let r = room();
        for origin in order {
            s.apply(&event(&r, origin, 1, 0, snapshot(&[], Vec::new())))
                .await
                .unwrap();
            let mut e = event(&r, origin, 2, 1, set("k", &format!("\"{origin}\"")));
            e.hlc = stamp(50);
            s.apply(&e).await.unwrap();
        }
        assert_eq!(
            state(s, &r).await,
            vec![("k".into(), Some("\"us\"".into()))],
            "order {order:?}"
        );
    }
}

async fn membership_merges_by_last_writer(s: &dyn ReplicaApply) {
    let r = room();
    s.apply(&event(&r, "eu", 1, 0, snapshot(&[], Vec::new())))
        .await
        .unwrap();
    let join = EventKind::Event(RoomEventKind::Joined { user: user("bob") });
    assert_eq!(
        s.apply(&event(&r, "eu", 5, 1, join)).await.unwrap(),
        Applied::Applied
    );
    let leave = || {
        EventKind::Event(RoomEventKind::Left {
            user: user("bob"),
            reason: LeftReason::Leave,
        })
    };
    let mut stale = event(&r, "eu", 6, 5, leave());
    stale.hlc = stamp(4);
    assert_eq!(s.apply(&stale).await.unwrap(), Applied::Superseded);
    assert_eq!(members(s, &r).await, vec![("bob".into(), "eu".into())]);
    // A member homed elsewhere is not the origin's to remove.
    s.apply(&event(&r, "us", 1, 0, snapshot(&[], Vec::new())))
        .await
        .unwrap();
    let mut foreign = event(&r, "us", 9, 1, leave());
    foreign.hlc = stamp(99);
    assert_eq!(s.apply(&foreign).await.unwrap(), Applied::Superseded);
    assert_eq!(
        s.apply(&event(&r, "eu", 8, 6, leave())).await.unwrap(),
        Applied::Applied
    );
    assert!(members(s, &r).await.is_empty());
    let h = history(s, &r).await;
    assert!(
        matches!(h.last(), Some((RoomEventKind::Left { reason: LeftReason::Leave, .. }, Some(o))) if o == "eu"),
        "{h:?}"
    );
}

async fn a_snapshot_replaces_the_origins_members(s: &dyn ReplicaApply) {
    let r = room();
    s.apply(&event(
        &r,
        "eu",
        4,
        0,
        snapshot(&[("bob", 1), ("carol", 1)], Vec::new()),
    ))
    .await
    .unwrap();
    s.apply(&event(&r, "us", 2, 0, snapshot(&[("dave", 1)], Vec::new())))
        .await
        .unwrap();
    assert_eq!(
        s.apply(&event(&r, "eu", 9, 0, snapshot(&[("bob", 1)], Vec::new())))
            .await
            .unwrap(),
        Applied::Applied
    );
    assert_eq!(
        members(s, &r).await,
        vec![("bob".into(), "eu".into()), ("dave".into(), "us".into())]
    );
    let h = history(s, &r).await;
    assert!(
        matches!(h.last(), Some((RoomEventKind::Left { user, reason: LeftReason::Disconnect }, _)) if user.as_str() == "carol"),
        "{h:?}"
    );
}

async fn a_publish_is_applied_once_across_origins(s: &dyn ReplicaApply) {
    let r = room();
    for origin in ["eu", "us"] {
        s.apply(&event(&r, origin, 1, 0, snapshot(&[], Vec::new())))
            .await
            .unwrap();
    }
    assert_eq!(
        s.apply(&event(&r, "eu", 2, 1, message(1, Some("bob|k1"))))
            .await
            .unwrap(),
        Applied::Applied
    );
    assert_eq!(
        s.apply(&event(&r, "us", 7, 1, message(1, Some("bob|k1"))))
            .await
            .unwrap(),
        Applied::Superseded
    );
    let messages = history(s, &r)
        .await
        .into_iter()
        .filter(|(k, _)| matches!(k, RoomEventKind::Message { .. }))
        .count();
    assert_eq!(messages, 1);
    assert_eq!(
        s.watermarks("us", std::slice::from_ref(&r)).await.unwrap(),
        vec![Some((EPOCH.to_owned(), 7))]
    );
}

async fn region_down_removes_the_regions_members(s: &dyn ReplicaApply) {
    let r = room();
    s.apply(&event(
        &r,
        "eu",
        4,
        0,
        snapshot(&[("bob", 1), ("carol", 1)], Vec::new()),
    ))
    .await
    .unwrap();
    s.apply(&event(&r, "us", 2, 0, snapshot(&[("dave", 1)], Vec::new())))
        .await
        .unwrap();
    assert_eq!(s.region_down(&r, "eu").await.unwrap(), 2);
    assert_eq!(members(s, &r).await, vec![("dave".into(), "us".into())]);
    let downs = history(s, &r)
        .await
        .into_iter()
        .filter(|(k, o)| {
            o.is_none()
                && matches!(
                    k,
                    RoomEventKind::Left {
                        reason: LeftReason::RegionDown,
                        ..
                    }
                )
        })
        .count();
    assert_eq!(downs, 2, "local events, not replicated ones");
    assert_eq!(
        s.watermarks("eu", std::slice::from_ref(&r)).await.unwrap(),
        vec![Some((EPOCH.to_owned(), 4))],
        "the watermark stays for the region's return"
    );
    assert_eq!(s.region_down(&r, "eu").await.unwrap(), 0);
}
