//! Replication: what flows over the links between this region's Redis and the other regions.
//!
//! One task ([`driver::Driver`]) owns the pure [`core::ReplicationCore`] (`handle(now, input)
//! -> outputs`, no tokio, Redis or sockets inside; tested by `tests/sim.rs`). The transport
//! ([`crate::link`]) hands every received frame and link event to the driver through its
//! [`driver::DriverSink`] (a bounded channel); the driver also follows this region's Redis
//! ([`region_state::replica::ReplicaStore::start_feed`]), ticks every second, and executes the
//! core's outputs: frames go out from the task in order, store operations run concurrently (a
//! bounded `JoinSet`; applies of one room one after the other) and come back as inputs. Design
//! and bounds: `docs/relay.md` ("Replication").
//!
//! - **Interest.** The rooms with local members (announced by the nodes' join/leave scripts on
//!   `meridian:interest`, rescanned after a feed resync) are announced to every peer, each with
//!   where to resume (the last position applied from that peer, else a resuming client's
//!   position, else the first local join). A room whose last local member left is withdrawn
//!   `interest_linger` later, unless a member came back.
//! - **Sending.** A follower gets a snapshot (labelled with its resume point where the history
//!   still reaches it), then the history after it: the events that originated here, in order,
//!   each with `prev_seq`. A message appended right after a follower's cursor is sent from the
//!   feed without a history read.
//! - **Receiving.** Events are applied by one Lua script that dedupes on the per-origin
//!   watermark, checks `prev_seq` against it (a gap asks the origin again with `Interest`,
//!   at most once per `gap_retry`), and merges membership and state by last-writer-wins.
//! - **Presence and direct messages.** Each region tells the others which users are connected
//!   there; they are recorded as pseudo-connections so `presence` and `send` work for remote
//!   users. A `send` to such a user reaches this relay through its pseudo-node's inbox and
//!   goes to the user's region as a `Direct` frame (held while the link is down, bounded).
//! - **Region loss.** A peer whose link stays down for `grace` is declared down: its members
//!   leave every local room with `left {reason: region_down}` (a user connected here meanwhile
//!   stays, homed here) and its users' presence is dropped.
//! - **Redis resync.** When the feed reconnects, every peer is asked to resend every room from
//!   the watermarks (Redis may have lost data).

pub mod core;
pub mod driver;

pub use crate::config::ReplicationOptions;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use meridian_protocol::relay::{epoch_code, EventKind, Frame, RoomEvent};
    use meridian_protocol::{Hlc, RoomEventFrame, RoomEventKind, RoomId, UserId};
    use region_state::replica::LocalEntry;

    fn outgoing(entry: &LocalEntry, region: &str) -> Option<EventKind> {
        core::outgoing_kind(entry, region).map(EventKind::Event)
    }

    fn entry(frame: &str) -> LocalEntry {
        LocalEntry {
            seq: 1,
            stamp: Hlc::default(),
            origin: None,
            frame: Bytes::copy_from_slice(frame.as_bytes()),
            idempotency: None,
        }
    }

    #[test]
    fn history_entries_become_relay_events() {
        let e = entry(
            r#"{"type":"message","room":"r","from":"bob","data":{"t":1},"seq":1,"epoch":"e"}"#,
        );
        assert_eq!(
            outgoing(&e, "eu"),
            Some(EventKind::Event(RoomEventKind::Message {
                from: UserId::new("bob").unwrap(),
                data: meridian_protocol::JsonText::new(r#"{"t":1}"#).unwrap(),
                idempotency: None,
            }))
        );
        let j =
            entry(r#"{"type":"joined","room":"r","user":"a","region":"eu","seq":2,"epoch":"e"}"#);
        assert_eq!(
            outgoing(&j, "eu"),
            Some(EventKind::Event(RoomEventKind::Joined {
                user: UserId::new("a").unwrap()
            }))
        );
        // A member event of a user homed elsewhere is not this region's to send.
        assert_eq!(outgoing(&j, "us"), None);
        let l = entry(
            r#"{"type":"left","room":"r","user":"a","region":"eu","reason":"node_lost","seq":3,"epoch":"e"}"#,
        );
        assert!(
            matches!(outgoing(&l, "eu"), Some(EventKind::Event(RoomEventKind::Left { reason, .. })) if reason == meridian_protocol::LeftReason::NodeLost)
        );
        let d = entry(
            r#"{"type":"state_changed","room":"r","key":"k","value":null,"by":"a","version":2,"seq":4,"epoch":"e"}"#,
        );
        assert!(matches!(
            outgoing(&d, "eu"),
            Some(EventKind::Event(RoomEventKind::StateDelete { .. }))
        ));
        let s = entry(
            r#"{"type":"state_changed","room":"r","key":"k","value":[1],"by":"a","version":1,"seq":5,"epoch":"e"}"#,
        );
        assert!(
            matches!(outgoing(&s, "eu"), Some(EventKind::Event(RoomEventKind::StateSet { value, .. })) if value.get() == "[1]")
        );
        assert_eq!(outgoing(&entry("not json"), "eu"), None);
        assert_eq!(
            outgoing(&entry(r#"{"type":"message","room":"r"}"#), "eu"),
            None
        );
    }

    #[test]
    fn replicated_frames_are_told_apart_by_their_origin() {
        let local = RoomEventFrame::decode(
            br#"{"type":"message","room":"r","from":"b","data":1,"seq":1,"epoch":"e"}"#,
        )
        .unwrap();
        assert!(local.origin.is_none());
        let remote = RoomEventFrame::decode(
            br#"{"type":"message","room":"r","from":"b","data":1,"origin":{"region":"eu","epoch":"x","seq":3},"seq":2,"epoch":"e"}"#,
        )
        .unwrap();
        assert!(remote.origin.is_some());
        // An `origin` inside the client's data is not the event's.
        let planted = RoomEventFrame::decode(
            br#"{"type":"message","room":"r","from":"b","data":{"origin":{"region":"eu","epoch":"x","seq":3}},"seq":2,"epoch":"e"}"#,
        )
        .unwrap();
        assert!(planted.origin.is_none());
    }

    #[test]
    fn received_events_with_bad_json_are_refused() {
        let ev = RoomEvent {
            room: RoomId::new("r").unwrap(),
            origin_region: "eu".into(),
            origin_epoch: epoch_code("k3v9x0qa"),
            origin_seq: 4,
            prev_seq: 2,
            hlc: Hlc::default(),
            kind: EventKind::Event(RoomEventKind::Message {
                from: UserId::new("bob").unwrap(),
                data: meridian_protocol::JsonText::new("{\"a\":1}").unwrap(),
                idempotency: None,
            }),
        };
        // Bad JSON cannot reach the store: the frame carrying it does not decode.
        let good =
            meridian_protocol::relay::encode(&Frame::RoomEvent(ev.clone()), 1 << 20).unwrap();
        let mut bad = good[4..].to_vec();
        let at = bad.windows(7).position(|w| w == b"{\"a\":1}").unwrap();
        bad[at..at + 7].copy_from_slice(b"{not js");
        assert!(meridian_protocol::relay::decode(&bad).is_err());
        assert_eq!(
            meridian_protocol::relay::decode(&good[4..]).unwrap(),
            Frame::RoomEvent(ev.clone())
        );
        assert_eq!(
            meridian_protocol::relay::epoch_text(ev.origin_epoch),
            "k3v9x0qa"
        );
    }
}
