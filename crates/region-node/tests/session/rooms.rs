//! Rooms: join, pipelined publishes in order, idempotent publish, resume with the version
//! vector (docs/protocol.md §4, §6, §7).

use meridian_client::protocol::{
    LeftReason, OriginPosition, PublishResult, Request, ResumePoint, ResumedRoom, RoomId,
};
use meridian_client::{Connection, Event, RoomEvent, RoomEventKind};
use serde_json::value::RawValue;

use crate::support::{self, event, token};

fn room_event(e: Event) -> RoomEvent {
    match e {
        Event::Room(r) => r,
        other => panic!("expected a room event, got {other:?}"),
    }
}

/// The next `message` event's sequence number and data.
async fn message(c: &mut Connection) -> (u64, String) {
    loop {
        let e = room_event(event(c).await);
        if let RoomEventKind::Message { data, .. } = e.kind {
            return (e.seq, data.get().to_owned());
        }
    }
}

fn publish(room: &RoomId, data: &str) -> Request {
    Request::Publish {
        room: room.clone(),
        data: RawValue::from_string(data.to_owned()).unwrap(),
        idempotency_key: None,
    }
}

#[tokio::test]
async fn pipelined_publishes_are_sequenced_in_order_and_delivered_in_order() {
    let node = support::start(|_| {}).await;
    let room = RoomId::new("lobby").unwrap();
    let mut alice = support::connect(&node, "alice").await;
    let mut bob = support::connect(&node, "bob").await;
    let joined = alice.join(&room).await.unwrap();
    assert!(joined.first);
    let bob_joined = bob.join(&room).await.unwrap();
    assert_eq!(bob_joined.epoch, joined.epoch);
    assert!(bob_joined.seq > joined.seq);
    // alice sees bob's `joined`.
    let e = room_event(event(&mut alice).await);
    assert!(matches!(e.kind, RoomEventKind::Joined { ref user, .. } if user.as_str() == "bob"));
    assert_eq!(e.seq, bob_joined.seq);

    let requests: Vec<Request> = (0..10)
        .map(|i| publish(&room, &format!(r#"{{"n":{i}}}"#)))
        .collect();
    let ids = alice.send_all(&requests).await.unwrap();
    let mut seqs = Vec::new();
    for id in &ids {
        let result = alice.reply(id).await.unwrap();
        let result: PublishResult = serde_json::from_str(result.get()).unwrap();
        assert!(!result.duplicate);
        seqs.push(result.seq);
    }
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(seqs[0], bob_joined.seq + 1);
    for (i, seq) in seqs.iter().enumerate() {
        assert_eq!(message(&mut bob).await, (*seq, format!(r#"{{"n":{i}}}"#)));
    }
    // The publisher gets its own messages too, in the same order.
    for seq in &seqs {
        assert_eq!(message(&mut alice).await.0, *seq);
    }
    // Leaving is announced with its reason.
    assert!(bob.leave(&room).await.unwrap().left);
    loop {
        let e = room_event(event(&mut alice).await);
        if let RoomEventKind::Left { user, reason, .. } = e.kind {
            assert_eq!((user.as_str(), reason), ("bob", LeftReason::Leave));
            break;
        }
    }
}

#[tokio::test]
async fn a_publish_retried_with_its_key_is_published_once() {
    let node = support::start(|_| {}).await;
    let room = RoomId::new("lobby").unwrap();
    let mut alice = support::connect(&node, "alice").await;
    let mut bob = support::connect(&node, "bob").await;
    alice.join(&room).await.unwrap();
    bob.join(&room).await.unwrap();
    let first = alice.publish(&room, &"once", Some("key-1")).await.unwrap();
    let again = alice.publish(&room, &"once", Some("key-1")).await.unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!((again.seq, &again.epoch), (first.seq, &first.epoch));
    let other = alice.publish(&room, &"twice", Some("key-2")).await.unwrap();
    assert_eq!(other.seq, first.seq + 1);
    // bob sees "once" one time, then "twice".
    assert_eq!(message(&mut bob).await, (first.seq, r#""once""#.into()));
    assert_eq!(message(&mut bob).await, (other.seq, r#""twice""#.into()));
}

#[tokio::test]
async fn resume_replays_what_was_missed_in_order() {
    let node = support::start(|_| {}).await;
    let room = RoomId::new("lobby").unwrap();
    let mut alice = support::connect(&node, "alice").await;
    alice.join(&room).await.unwrap();
    let mut bob = support::connect(&node, "bob").await;
    let joined = bob.join(&room).await.unwrap();
    bob.close().await.unwrap();
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(alice.publish(&room, &i, None).await.unwrap().seq);
    }

    // Same region: resume from the join position.
    let mut bob = Connection::connect(&node.url).await.unwrap();
    let point = ResumePoint {
        room: room.clone(),
        epoch: joined.epoch.clone(),
        seq: joined.seq,
        origins: Vec::new(),
    };
    let hello = bob.hello(&token("bob"), vec![point]).await.unwrap();
    let [ResumedRoom::Recovered {
        replayed, epoch, ..
    }] = hello.resumed.as_slice()
    else {
        panic!("{:?}", hello.resumed)
    };
    assert_eq!(epoch, &joined.epoch);
    // bob's own `left` (disconnect) and `joined` (the resume) come before or among them;
    // the messages come in order.
    assert!(*replayed >= 3, "{replayed}");
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(message(&mut bob).await.0);
    }
    assert_eq!(got, missed);
    bob.close().await.unwrap();

    // With the version vector and a position in another region's sequence (a client that
    // comes from another region): the memory store does not replicate, so it reports the
    // history lost, at this region's position, and the client is live from there.
    let mut carol = Connection::connect(&node.url).await.unwrap();
    let point = ResumePoint {
        room: room.clone(),
        epoch: "zzzzzzzz".into(),
        seq: 999,
        origins: vec![OriginPosition {
            region: "elsewhere".into(),
            epoch: "yyyyyyyy".into(),
            seq: 7,
        }],
    };
    let hello = carol.hello(&token("carol"), vec![point]).await.unwrap();
    let [ResumedRoom::HistoryLost { epoch, seq, .. }] = hello.resumed.as_slice() else {
        panic!("{:?}", hello.resumed)
    };
    assert_eq!(
        epoch, &joined.epoch,
        "the client switches to this region's epoch"
    );
    assert!(*seq > missed[2]);
    let live = alice.publish(&room, &"live", None).await.unwrap();
    assert_eq!(message(&mut carol).await, (live.seq, r#""live""#.into()));

    // A position in an epoch the room never had, without a vector: history lost.
    let mut dave = Connection::connect(&node.url).await.unwrap();
    let point = ResumePoint {
        room: room.clone(),
        epoch: "zzzzzzzz".into(),
        seq: 1,
        origins: Vec::new(),
    };
    let hello = dave.hello(&token("dave"), vec![point]).await.unwrap();
    assert!(
        matches!(hello.resumed.as_slice(), [ResumedRoom::HistoryLost { .. }]),
        "{:?}",
        hello.resumed
    );
}
