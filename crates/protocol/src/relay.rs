//! Relay frames: what two regions' relays say to each other, and how it is put on a QUIC
//! stream. The relay (`crates/interregion-relay`) owns the links; this module owns the bytes.
//!
//! **Wire format.** A frame is `u32` big-endian payload length, then the payload: the
//! [postcard](https://postcard.jamesmunns.com/wire-format) encoding of [`Frame`]. The length
//! excludes the 4-byte prefix and is capped by the receiver's `limits.max_frame_bytes`; a frame
//! over the cap is rejected from its prefix alone, before anything is buffered.
//!
//! **Versioning.** The schema version is the ALPN protocol id, [`ALPN`] (`meridian-relay/1`),
//! and is repeated in [`Hello::protocol_version`]. Variants and fields are append-only within a
//! version: postcard encodes an enum variant by its index and a struct by field order, so
//! reordering, removing or retyping anything is a new ALPN id. A peer that receives a variant it
//! does not know treats the frame as malformed (the stream is closed and counted), so a new
//! variant is only sent once every region runs a relay that knows it. The room events inside
//! carry the one room-event vocabulary, [`RoomEventKind`] (see [`EventKind`] for how it keeps
//! the `meridian-relay/1` bytes; a test pins them).
//!
//! Identifiers reuse the client protocol's validated [`RoomId`] and [`UserId`], and client JSON
//! its [`JsonText`](crate::JsonText): a frame with an invalid id or JSON that breaks the rule
//! fails to decode like any other malformed frame.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, VariantAccess};
use serde::{Deserialize, Serialize, Serializer};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::room::{Hlc, RoomEventKind, StateRecord};
use crate::{RoomId, UserId};

/// ALPN id of this relay protocol version; a peer that offers no matching id is refused.
pub const ALPN: &[u8] = b"meridian-relay/1";
/// The version number carried in [`Hello`]; always equal to the number in [`ALPN`].
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Everything a relay sends to another relay.
///
/// On the control stream (one bidirectional stream per link, opened by the dialer): `Hello`
/// first in each direction, then `Interest`, `InterestSnapshot`, `Presence`, `Ping`, `Pong`.
/// On the lanes (unidirectional streams): `RoomEvent` and `Direct`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Frame {
    /// First frame on the control stream, both ways.
    Hello(Hello),
    /// The sender gained (`interested`) or lost its last local member in `room`. With
    /// interest, `since` is the last event of the receiver's that the sender has applied in
    /// the room (`None`: nothing, send a snapshot first); the receiver then sends the room's
    /// events after it, or a snapshot when its history no longer reaches back. Also sent to
    /// ask again after a gap.
    Interest {
        /// The room.
        room: RoomId,
        /// Whether the sender wants the room's events.
        interested: bool,
        /// Where to resume.
        since: Option<Position>,
    },
    /// Every room the sender is interested in, with where to resume each; replaces what the
    /// receiver knew (rooms not listed are no longer followed). Sent on every (re)connect.
    InterestSnapshot {
        /// The rooms.
        rooms: Vec<Follow>,
    },
    /// An event of a room, published in `origin_region`.
    RoomEvent(RoomEvent),
    /// A message to one user (WebRTC offer/answer/ICE), routed to the user's region.
    Direct(Direct),
    /// Users whose first connection in the sender's region opened (`online`) or whose last
    /// closed (`offline`). With `reset`, `online` is the whole list (sent on every connect).
    Presence(Presence),
    /// Application-level round trip probe; the peer answers `Pong` with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The `Ping`'s nonce.
        nonce: u64,
    },
}

impl Frame {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Interest { .. } => "interest",
            Frame::InterestSnapshot { .. } => "interest_snapshot",
            Frame::RoomEvent(_) => "room_event",
            Frame::Direct(_) => "direct",
            Frame::Presence(_) => "presence",
            Frame::Ping { .. } => "ping",
            Frame::Pong { .. } => "pong",
        }
    }
}

/// Who is speaking. Sent once per link in each direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's region; must match the region in its certificate.
    pub region: String,
    /// [`PROTOCOL_VERSION`].
    pub protocol_version: u16,
    /// Random id of this relay process (tells the active and a standby relay apart).
    pub relay_id: String,
    /// Changes on every relay start (milliseconds since the Unix epoch at start), so a peer
    /// can tell a restarted relay from a reconnecting one.
    pub epoch: u64,
}

/// A position in one region's room sequence: its epoch (as base-36 code) and sequence number.
///
/// With `epoch = 0` (no position: the sender has applied nothing of the receiver's in the
/// room) a non-zero `seq` is a **join time** instead, in wall-clock milliseconds: the moment
/// from which the sender has had local members (see [`Position::joined_at`]). The receiver
/// then replays its history from just before that moment, so every message published after a
/// remote join was acknowledged reaches the joiner. A relay that predates this reads it as
/// "no position" and sends a snapshot as of now, as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The room epoch, base-36 decoded (0: none).
    pub epoch: u64,
    /// The sequence number (with `epoch = 0`: the join time in ms, or 0).
    pub seq: u64,
}

impl Position {
    /// "Nothing applied yet; local members since `wall_ms`" (milliseconds since the epoch).
    pub fn joined_at(wall_ms: u64) -> Self {
        Self {
            epoch: 0,
            seq: wall_ms,
        }
    }

    /// The join time of a position made by [`Position::joined_at`].
    pub fn join_time(&self) -> Option<u64> {
        (self.epoch == 0 && self.seq > 0).then_some(self.seq)
    }
}

/// One room of an [`Frame::InterestSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Follow {
    /// The room.
    pub room: RoomId,
    /// Where to resume (see [`Frame::Interest`]).
    pub since: Option<Position>,
}

/// A room event replicated from the region where it was published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvent {
    /// The room.
    pub room: RoomId,
    /// Region that published it (the only one that may send it).
    pub origin_region: String,
    /// Epoch of the origin's sequence; changes whenever the sequence could restart.
    pub origin_epoch: u64,
    /// Sequence number at the origin, per (origin, epoch). Not contiguous: the origin's room
    /// sequence also numbers events it received from other regions, which it never forwards.
    pub origin_seq: u64,
    /// The `origin_seq` of the event sent before this one in the room (or of the snapshot or
    /// resume point it follows): a receiver whose watermark is not this has a gap and asks
    /// again with `Interest`.
    pub prev_seq: u64,
    /// When, for last-writer-wins merges.
    pub hlc: Hlc,
    /// What happened.
    pub kind: EventKind,
}

/// What a [`RoomEvent`] says: a room event, or the origin's share of the room.
///
/// On the wire this is one enum: the variants of [`RoomEventKind`] keep their indices (0 to
/// 4) and the snapshot is index 5, exactly as `meridian-relay/1` has always encoded them, so
/// relays built before the vocabulary moved here read these frames unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Something that happened in the room at the origin.
    Event(RoomEventKind),
    /// The origin's members of the room and every state key it knows, as of `origin_seq`:
    /// replaces what the receiver holds from the origin. Sent first when a region starts
    /// following a room, and when the origin's history no longer reaches a resume point.
    Snapshot(Snapshot),
}

/// The origin's share of a room ([`EventKind::Snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Members homed in the origin, with the stamp of their membership.
    pub members: Vec<(UserId, Hlc)>,
    /// State keys (deleted ones as tombstones), with last-writer-wins stamps.
    pub state: Vec<StateRecord>,
}

/// The wire index of [`EventKind::Snapshot`], after [`RoomEventKind`]'s five variants.
const SNAPSHOT_INDEX: u32 = 5;
/// Every variant of the flattened wire enum, by index.
const KIND_VARIANTS: &[&str] = &[
    "Joined",
    "Left",
    "Message",
    "StateSet",
    "StateDelete",
    "Snapshot",
];

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // Its own variant index and fields, as if it were declared inline.
            EventKind::Event(kind) => kind.serialize(s),
            // A newtype variant of a struct is encoded like a struct variant.
            EventKind::Snapshot(snap) => {
                s.serialize_newtype_variant("EventKind", SNAPSHOT_INDEX, "Snapshot", snap)
            }
        }
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_enum("EventKind", KIND_VARIANTS, KindVisitor)
    }
}

/// Reads the variant index, then the snapshot, or hands the rest to [`RoomEventKind`]'s own
/// `Deserialize` through [`Replay`].
struct KindVisitor;

impl<'de> de::Visitor<'de> for KindVisitor {
    type Value = EventKind;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a relay event kind")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<EventKind, A::Error> {
        let (VariantIndex(index), variant) = data.variant()?;
        if index == SNAPSHOT_INDEX {
            return variant.newtype_variant().map(EventKind::Snapshot);
        }
        RoomEventKind::deserialize(Replay { index, variant }).map(EventKind::Event)
    }
}

/// A variant named by index (postcard) or by name (self-describing formats).
struct VariantIndex(u32);

impl<'de> Deserialize<'de> for VariantIndex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Id;
        impl de::Visitor<'_> for Id {
            type Value = VariantIndex;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a relay event kind variant")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<VariantIndex, E> {
                match u32::try_from(v) {
                    Ok(i) if (i as usize) < KIND_VARIANTS.len() => Ok(VariantIndex(i)),
                    _ => Err(E::invalid_value(
                        de::Unexpected::Unsigned(v),
                        &"a variant index 0 <= i < 6",
                    )),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<VariantIndex, E> {
                KIND_VARIANTS
                    .iter()
                    .position(|n| *n == v)
                    .and_then(|i| u32::try_from(i).ok())
                    .map(VariantIndex)
                    .ok_or_else(|| E::unknown_variant(v, KIND_VARIANTS))
            }
        }
        d.deserialize_identifier(Id)
    }
}

/// A deserializer that is an enum whose variant index was already read: it gives that index
/// back, then the rest of the input, to [`RoomEventKind`]'s derived `Deserialize`.
struct Replay<A> {
    index: u32,
    variant: A,
}

impl<'de, A: VariantAccess<'de>> Deserializer<'de> for Replay<A> {
    type Error = A::Error;

    fn deserialize_any<W: de::Visitor<'de>>(self, visitor: W) -> Result<W::Value, A::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de, A: VariantAccess<'de>> EnumAccess<'de> for Replay<A> {
    type Error = A::Error;
    type Variant = A;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, A), A::Error> {
        let index: de::value::U32Deserializer<A::Error> = self.index.into_deserializer();
        Ok((seed.deserialize(index)?, self.variant))
    }
}

/// A room history epoch (8 characters of `[0-9a-z]`) as the number relay frames carry. `""`
/// (and anything that is not base 36) is 0.
pub fn epoch_code(epoch: &str) -> u64 {
    u64::from_str_radix(epoch, 36).unwrap_or(0)
}

/// The inverse of [`epoch_code`]: 8 characters, zero-padded; 0 is `""`.
pub fn epoch_text(code: u64) -> String {
    if code == 0 {
        return String::new();
    }
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 8];
    let mut n = code;
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A message to one user in another region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Direct {
    /// Recipient.
    pub to_user: UserId,
    /// Sender.
    pub from_user: UserId,
    /// The client frame (`{"type":"direct",...}` JSON bytes), delivered as is.
    pub payload: Vec<u8>,
}

/// A change of which users are connected in the sender's region.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Presence {
    /// `online` is the complete list; forget every other user of the sender's region.
    pub reset: bool,
    /// Users now connected there.
    pub online: Vec<UserId>,
    /// Users no longer connected there.
    pub offline: Vec<UserId>,
}

/// Why a frame could not be sent or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix (or an outgoing frame) exceeds the limit. From the peer: not retryable.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced or encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not a valid postcard [`Frame`] (or has bytes after it). From the peer.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream failed underneath (connection lost, stream reset): not the frame's fault.
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// True when the peer sent bytes that break the protocol (counted as malformed frames).
    pub fn is_protocol_violation(&self) -> bool {
        !matches!(self, FrameError::Io(_))
    }
}

/// Encodes `frame` with its length prefix, once, into shareable bytes.
pub fn encode(frame: &Frame, max_frame_bytes: usize) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::with_capacity(64).writer();
    out.get_mut().put_u32(0);
    let out = postcard::to_io(frame, out)
        .map_err(|e| FrameError::Malformed(format!("cannot encode {}: {e}", frame.name())))?;
    let mut buf = out.into_inner();
    let len = buf.len() - LENGTH_PREFIX_BYTES;
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: max_frame_bytes,
    })?;
    buf[..LENGTH_PREFIX_BYTES].copy_from_slice(&prefix.to_be_bytes());
    Ok(buf.freeze())
}

/// Decodes one payload (without its length prefix); trailing bytes are an error.
pub fn decode(payload: &[u8]) -> Result<Frame, FrameError> {
    let (frame, rest) = postcard::take_from_bytes::<Frame>(payload)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after a {} frame",
            rest.len(),
            frame.name()
        )));
    }
    Ok(frame)
}

/// Reads the next frame. `Ok(None)` when the stream ended cleanly between frames. Returns the
/// frame and its size on the wire (prefix included).
pub async fn read_frame<R: AsyncRead + Unpin>(
    stream: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<(Frame, usize)>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    let mut filled = 0;
    while filled < LENGTH_PREFIX_BYTES {
        match stream.read(&mut prefix[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            n => filled += n,
        }
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_bytes,
        });
    }
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some((decode(&payload)?, len + LENGTH_PREFIX_BYTES)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::{JsonText, LeftReason};

    fn event(seq: u64) -> Frame {
        Frame::RoomEvent(RoomEvent {
            room: RoomId::new("lobby").unwrap(),
            origin_region: "us-east".into(),
            origin_epoch: 7,
            origin_seq: seq,
            prev_seq: seq.saturating_sub(1),
            hlc: Hlc {
                wall_ms: 1_700_000_000_000,
                logical: 3,
            },
            kind: EventKind::Event(RoomEventKind::Message {
                from: UserId::new("alice").unwrap(),
                data: JsonText::new(r#"{"text":"hi"}"#).unwrap(),
                idempotency: Some("alice|k1".into()),
            }),
        })
    }

    fn with_kind(seq: u64, kind: EventKind) -> Frame {
        match event(seq) {
            Frame::RoomEvent(e) => Frame::RoomEvent(RoomEvent { kind, ..e }),
            _ => unreachable!(),
        }
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// The `meridian-relay/1` bytes of every room event kind, as relays built before the
    /// vocabulary moved into `protocol` encode them (`EventKind::Join { user }`,
    /// `Leave { user, reason: String }`, `Message { from_user, data: Vec<u8>, idempotency }`,
    /// `StateSet`, `StateDelete`, `Snapshot { members, state }`): written out by hand from
    /// postcard's wire format, so that old and new relays keep understanding each other.
    #[test]
    fn room_events_keep_their_relay_1_bytes() {
        let bob = || UserId::new("bob").unwrap();
        let ev = |kind: EventKind| {
            Frame::RoomEvent(RoomEvent {
                room: RoomId::new("r").unwrap(),
                origin_region: "eu".into(),
                origin_epoch: 7,
                origin_seq: 3,
                prev_seq: 2,
                hlc: Hlc {
                    wall_ms: 1,
                    logical: 2,
                },
                kind,
            })
        };
        // Frame::RoomEvent (3), room "r", origin "eu", epoch 7, seq 3, prev 2, hlc (1, 2).
        let prefix: &[u8] = &[3, 1, b'r', 2, b'e', b'u', 7, 3, 2, 1, 2];
        let record = |value: Option<&str>| StateRecord {
            key: "k".into(),
            value: value.map(|v| JsonText::new(v).unwrap()),
            hlc: Hlc {
                wall_ms: 3,
                logical: 4,
            },
            region: "eu".into(),
            by: bob(),
        };
        let cases: Vec<(EventKind, Vec<u8>)> = vec![
            (
                EventKind::Event(RoomEventKind::Joined { user: bob() }),
                cat(&[&[0, 3], b"bob"]),
            ),
            (
                EventKind::Event(RoomEventKind::Left {
                    user: bob(),
                    reason: LeftReason::NodeLost,
                }),
                cat(&[&[1, 3], b"bob", &[9], b"node_lost"]),
            ),
            (
                EventKind::Event(RoomEventKind::Message {
                    from: bob(),
                    data: JsonText::new("{}").unwrap(),
                    idempotency: Some("k".into()),
                }),
                cat(&[&[2, 3], b"bob", &[2], b"{}", &[1, 1], b"k"]),
            ),
            (
                EventKind::Event(RoomEventKind::Message {
                    from: bob(),
                    data: JsonText::new("1").unwrap(),
                    idempotency: None,
                }),
                cat(&[&[2, 3], b"bob", &[1], b"1", &[0]]),
            ),
            (
                EventKind::Event(RoomEventKind::StateSet {
                    key: "k".into(),
                    value: JsonText::new("[1]").unwrap(),
                    by: bob(),
                }),
                cat(&[&[3, 1], b"k", &[3], b"[1]", &[3], b"bob"]),
            ),
            (
                EventKind::Event(RoomEventKind::StateDelete {
                    key: "k".into(),
                    by: bob(),
                }),
                cat(&[&[4, 1], b"k", &[3], b"bob"]),
            ),
            (
                EventKind::Snapshot(Snapshot {
                    members: vec![(
                        bob(),
                        Hlc {
                            wall_ms: 1,
                            logical: 2,
                        },
                    )],
                    state: vec![record(Some("1")), record(None)],
                }),
                cat(&[
                    // variant 5; one member: "bob", hlc (1, 2); two records:
                    &[5, 1, 3],
                    b"bob",
                    &[1, 2, 2],
                    // key "k", Some("1"), hlc (3, 4), region "eu", by "bob";
                    &[1, b'k', 1, 1, b'1', 3, 4, 2, b'e', b'u', 3],
                    b"bob",
                    // key "k", None (a tombstone), the same stamp, region and writer.
                    &[1, b'k', 0, 3, 4, 2, b'e', b'u', 3],
                    b"bob",
                ]),
            ),
        ];
        for (kind, tail) in cases {
            let frame = ev(kind);
            let bytes = encode(&frame, 1024).unwrap();
            assert_eq!(&bytes[4..], &cat(&[prefix, &tail])[..], "{frame:?}");
            assert_eq!(decode(&bytes[4..]).unwrap(), frame);
        }
        // There is no kind 6, and a reason this version does not know is a disconnect.
        assert!(decode(&cat(&[prefix, &[6]])).is_err());
        let evicted = cat(&[prefix, &[1, 3], b"bob", &[7], b"evicted"]);
        assert_eq!(
            decode(&evicted).unwrap(),
            ev(EventKind::Event(RoomEventKind::Left {
                user: bob(),
                reason: LeftReason::Disconnect
            }))
        );
        // Client JSON that breaks the rule makes the frame malformed.
        let nan = cat(&[prefix, &[2, 3], b"bob", &[3], b"NaN", &[0]]);
        assert!(matches!(decode(&nan), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn event_kinds_round_trip_through_json_too() {
        for frame in all_frames() {
            if let Frame::RoomEvent(e) = frame {
                let text = serde_json::to_string(&e.kind).unwrap();
                let back: EventKind = serde_json::from_str(&text).unwrap();
                assert_eq!(back, e.kind, "{text}");
            }
        }
    }

    fn room_user(room: &RoomId) -> UserId {
        UserId::new(room.as_str()).unwrap()
    }

    fn all_frames() -> Vec<Frame> {
        let room = RoomId::new("r1").unwrap();
        let user = UserId::new("bob").unwrap();
        vec![
            Frame::Hello(Hello {
                region: "eu-central".into(),
                protocol_version: PROTOCOL_VERSION,
                relay_id: "abc".into(),
                epoch: 1,
            }),
            Frame::Interest {
                room: room.clone(),
                interested: true,
                since: Some(Position { epoch: 3, seq: 9 }),
            },
            Frame::InterestSnapshot {
                rooms: vec![Follow {
                    room: room.clone(),
                    since: None,
                }],
            },
            event(1),
            Frame::RoomEvent(RoomEvent {
                kind: EventKind::Event(RoomEventKind::StateDelete {
                    key: "k".into(),
                    by: user.clone(),
                }),
                ..match event(2) {
                    Frame::RoomEvent(e) => e,
                    _ => unreachable!(),
                }
            }),
            Frame::Direct(Direct {
                to_user: user.clone(),
                from_user: user.clone(),
                payload: vec![1, 2, 3],
            }),
            with_kind(
                4,
                EventKind::Event(RoomEventKind::Joined { user: user.clone() }),
            ),
            with_kind(
                5,
                EventKind::Event(RoomEventKind::Left {
                    user: user.clone(),
                    reason: LeftReason::RegionDown,
                }),
            ),
            with_kind(
                6,
                EventKind::Event(RoomEventKind::StateSet {
                    key: "k".into(),
                    value: JsonText::new("[1,{\"a\":null}]").unwrap(),
                    by: user.clone(),
                }),
            ),
            Frame::RoomEvent(RoomEvent {
                kind: EventKind::Snapshot(Snapshot {
                    members: vec![(user.clone(), Hlc::default())],
                    state: vec![StateRecord {
                        key: "k".into(),
                        value: None,
                        hlc: Hlc {
                            wall_ms: 1,
                            logical: 2,
                        },
                        region: "us-east".into(),
                        by: user.clone(),
                    }],
                }),
                ..match event(3) {
                    Frame::RoomEvent(e) => e,
                    _ => unreachable!(),
                }
            }),
            Frame::Presence(Presence {
                reset: true,
                online: vec![user.clone()],
                offline: vec![room_user(&room)],
            }),
            Frame::Ping { nonce: 5 },
            Frame::Pong { nonce: 5 },
        ]
    }

    #[tokio::test]
    async fn every_frame_round_trips_through_a_stream() {
        let mut wire = Vec::new();
        for f in all_frames() {
            wire.extend_from_slice(&encode(&f, 1 << 20).unwrap());
        }
        let mut r = &wire[..];
        for f in all_frames() {
            let (got, _) = read_frame(&mut r, 1 << 20).await.unwrap().unwrap();
            assert_eq!(got, f);
        }
        assert!(read_frame(&mut r, 1 << 20).await.unwrap().is_none());
    }

    #[test]
    fn prefix_is_big_endian_payload_length() {
        let bytes = encode(&Frame::Ping { nonce: 1 }, 1024).unwrap();
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4);
        // Postcard: variant index 6 (Ping) then varint 1.
        assert_eq!(&bytes[4..], &[6, 1]);
    }

    #[tokio::test]
    async fn bad_input_is_an_error_never_a_panic() {
        // Oversized prefix: rejected before reading the payload.
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(FrameError::TooLarge { .. })
        ));
        // Garbage payload.
        let mut r: &[u8] = &[0, 0, 0, 3, 0xff, 0xff, 0xff];
        let e = read_frame(&mut r, 1024).await.unwrap_err();
        assert!(e.is_protocol_violation(), "{e}");
        // Truncated in the prefix and in the payload.
        let mut r: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(FrameError::Truncated)
        ));
        let mut r: &[u8] = &[0, 0, 0, 9, 6];
        assert!(matches!(
            read_frame(&mut r, 1024).await,
            Err(FrameError::Truncated)
        ));
        // Trailing bytes after a valid frame.
        assert!(decode(&[6, 1, 0]).is_err());
        // An invalid room id inside an otherwise valid frame.
        let mut payload = postcard::to_allocvec(&event(1)).unwrap();
        let pos = payload.iter().position(|b| *b == b'l').unwrap();
        payload[pos] = b'{';
        assert!(matches!(decode(&payload), Err(FrameError::Malformed(_))));
        // Every truncation and every single-byte corruption of a valid frame is an error or a
        // different frame, never a panic.
        let valid = postcard::to_allocvec(&event(3)).unwrap();
        for cut in 0..valid.len() {
            let _ = decode(&valid[..cut]);
        }
        for i in 0..valid.len() {
            for b in [0u8, 0x7f, 0x80, 0xff] {
                let mut v = valid.clone();
                v[i] = b;
                let _ = decode(&v);
            }
        }
    }

    #[test]
    fn encode_refuses_frames_over_the_limit() {
        let big = Frame::Direct(Direct {
            to_user: UserId::new("a").unwrap(),
            from_user: UserId::new("b").unwrap(),
            payload: vec![0; 2000],
        });
        assert!(matches!(
            encode(&big, 1000),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_join_time_is_a_position_without_an_epoch() {
        let p = Position::joined_at(1_700_000_000_123);
        assert_eq!(p.join_time(), Some(1_700_000_000_123));
        assert_eq!(
            Position {
                epoch: epoch_probe(),
                seq: 5
            }
            .join_time(),
            None,
            "a real position is not a join time"
        );
        assert_eq!(Position::joined_at(0).join_time(), None);
        let f = Frame::Interest {
            room: RoomId::new("r").unwrap(),
            interested: true,
            since: Some(p),
        };
        assert_eq!(decode(&encode(&f, 1024).unwrap()[4..]).unwrap(), f);
    }

    fn epoch_probe() -> u64 {
        epoch_code("k3v9x0qa")
    }

    #[test]
    fn epochs_round_trip_through_their_code() {
        for e in ["k3v9x0qa", "00000001", "zzzzzzzz", "a0000000"] {
            assert_eq!(epoch_text(epoch_code(e)), e);
        }
        assert_eq!(epoch_code(""), 0);
        assert_eq!(epoch_text(0), "");
        assert!(epoch_code("zzzzzzzz") < u64::MAX / 1000);
    }
}
