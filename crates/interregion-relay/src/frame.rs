//! Relay frames: what two relays say to each other, and how it is put on a QUIC stream.
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
//! variant is only sent once every region runs a relay that knows it.
//!
//! Identifiers reuse the client protocol's validated [`RoomId`] and [`UserId`]: a frame with an
//! invalid id fails to decode like any other malformed frame.

use bytes::{BufMut, Bytes, BytesMut};
use meridian_protocol::{RoomId, UserId};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

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

/// Hybrid logical clock timestamp: wall-clock milliseconds and a logical counter. Ordered
/// first by `wall_ms`, then `logical`; ties between regions break on the origin region name.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Logical counter within one `wall_ms`.
    pub logical: u32,
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

/// What a [`RoomEvent`] says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A user homed in the origin region became a member.
    Join {
        /// The user.
        user: UserId,
    },
    /// A member homed in the origin region left.
    Leave {
        /// The user.
        user: UserId,
        /// Why (`leave`, `disconnect`, `node_lost`, `region_down`).
        reason: String,
    },
    /// A message published to the room.
    Message {
        /// The publisher.
        from_user: UserId,
        /// The message body (JSON bytes).
        data: Vec<u8>,
        /// The publish's `<user>|<key>` idempotency id, so that a publish its client retried
        /// in another region is applied once everywhere.
        idempotency: Option<String>,
    },
    /// A room-state key was set.
    StateSet {
        /// The key.
        key: String,
        /// The value (JSON bytes).
        value: Vec<u8>,
        /// The writer.
        by: UserId,
    },
    /// A room-state key was deleted.
    StateDelete {
        /// The key.
        key: String,
        /// The writer.
        by: UserId,
    },
    /// The origin's members of the room and every state key it knows, as of `origin_seq`:
    /// replaces what the receiver holds from the origin. Sent first when a region starts
    /// following a room, and when the origin's history no longer reaches a resume point.
    Snapshot {
        /// Members homed in the origin, with the stamp of their membership.
        members: Vec<(UserId, Hlc)>,
        /// State keys (deleted ones as tombstones), with last-writer-wins stamps.
        state: Vec<StateRecord>,
    },
}

/// One state key in a [`EventKind::Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    /// The key.
    pub key: String,
    /// JSON bytes; `None` for a deleted key.
    pub value: Option<Vec<u8>>,
    /// Last write's stamp.
    pub hlc: Hlc,
    /// Region of the last write.
    pub region: String,
    /// Writer of the last write.
    pub by: UserId,
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
            kind: EventKind::Message {
                from_user: UserId::new("alice").unwrap(),
                data: br#"{"text":"hi"}"#.to_vec(),
                idempotency: Some("alice|k1".into()),
            },
        })
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
                kind: EventKind::StateDelete {
                    key: "k".into(),
                    by: user.clone(),
                },
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
            Frame::RoomEvent(RoomEvent {
                kind: EventKind::Snapshot {
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
                },
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
        region_state::replica::epoch_code("k3v9x0qa")
    }
}
