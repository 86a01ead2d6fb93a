//! Frames from the node, decoded: replies (by request id) and server events
//! (`docs/protocol.md` §1, §5). Unknown event types and unknown fields are tolerated, as the
//! versioning rules ask of clients.

use std::borrow::Cow;

use meridian_protocol::{LeftReason, OriginPosition, RequestId, RoomId, UserId};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::error::{ClientError, ServerError};

/// One frame from the node.
#[derive(Debug, Clone)]
pub enum Frame {
    /// The reply to one request.
    Reply(Reply),
    /// A server event.
    Event(Event),
}

impl Frame {
    /// The frame's `type` on the wire (`ok`, `error`, `message`, `joined`, …).
    pub fn kind(&self) -> &str {
        match self {
            Self::Reply(r) if r.outcome.is_ok() => "ok",
            Self::Reply(_) => "error",
            Self::Event(e) => e.kind(),
        }
    }
}

/// A reply: `ok` with its `result`, or `error`.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The request's id; `None` when the node could not read one (`"id":null`).
    pub id: Option<RequestId>,
    /// The raw `result` object, or the error.
    pub outcome: Result<Box<RawValue>, ServerError>,
}

/// A server event.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// `joined`, `left`, `message` or `state_changed`: an event of a room's sequence.
    Room(RoomEvent),
    /// A direct message from another user.
    Direct {
        /// The sender.
        from: UserId,
        /// The payload as sent.
        data: Box<RawValue>,
    },
    /// Go away: reconnect after `after_ms` (and resume).
    Reconnect(Reconnect),
    /// A connection-level error that answers no request (`not_authenticated`, `draining`,
    /// `token_expired`); the node closes the connection after it.
    Error(ServerError),
    /// An event type this client does not know (a newer node's); ignore it.
    Other {
        /// Its `type`.
        kind: String,
    },
}

impl Event {
    /// The event's `type` on the wire.
    pub fn kind(&self) -> &str {
        match self {
            Self::Room(e) => e.kind.name(),
            Self::Direct { .. } => "direct",
            Self::Reconnect(_) => "reconnect",
            Self::Error(_) => "error",
            Self::Other { kind } => kind,
        }
    }
}

/// `reconnect`: the node wants the client elsewhere, or later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconnect {
    /// Wait this long (ms) before reconnecting.
    pub after_ms: u64,
    /// `draining`, `slow_consumer`, `resync` or `overloaded`.
    pub reason: String,
    /// Where to reconnect, when the node knows better than the load balancer.
    pub url: Option<String>,
    /// The region `url` belongs to.
    pub region: Option<String>,
}

/// An event of a room's sequence: where it sits (`seq`, `epoch`, and `origin` when it was
/// replicated from another region) and what happened.
#[derive(Debug, Clone)]
pub struct RoomEvent {
    /// The room.
    pub room: RoomId,
    /// Its position in this region's sequence of the room.
    pub seq: u64,
    /// This region's history epoch of the room.
    pub epoch: String,
    /// Its position in the sequence of the region where it happened, if that is another one.
    pub origin: Option<OriginPosition>,
    /// What happened.
    pub kind: RoomEventKind,
}

/// What a [`RoomEvent`] reports.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RoomEventKind {
    /// A user's first connection entered the room.
    Joined {
        /// The user.
        user: UserId,
        /// The user's home region.
        region: String,
    },
    /// A user's last connection left the room.
    Left {
        /// The user.
        user: UserId,
        /// The user's home region.
        region: String,
        /// Why.
        reason: LeftReason,
    },
    /// A room message.
    Message {
        /// The publisher.
        from: UserId,
        /// The payload as published.
        data: Box<RawValue>,
    },
    /// A state key was written (`value: Some`) or deleted (`None`).
    StateChanged {
        /// The key.
        key: String,
        /// The new value as written; `None` for a delete.
        value: Option<Box<RawValue>>,
        /// The writer.
        by: UserId,
        /// The key's version after the change.
        version: u64,
    },
}

impl RoomEventKind {
    /// The event's `type` on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Joined { .. } => "joined",
            Self::Left { .. } => "left",
            Self::Message { .. } => "message",
            Self::StateChanged { .. } => "state_changed",
        }
    }
}

/// The flat shape every frame from the node is first read into (like the node's own request
/// parsing): one pass, no `deny_unknown_fields` (a newer node may add fields).
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    /// Absent (an event) is not `null` (a reply whose id could not be read).
    #[serde(default, deserialize_with = "present")]
    id: Option<Option<RequestId>>,
    result: Option<Box<RawValue>>,
    code: Option<String>,
    message: Option<String>,
    room: Option<RoomId>,
    user: Option<UserId>,
    region: Option<String>,
    reason: Option<String>,
    from: Option<UserId>,
    data: Option<Box<RawValue>>,
    key: Option<String>,
    value: Option<Box<RawValue>>,
    by: Option<UserId>,
    version: Option<u64>,
    seq: Option<u64>,
    epoch: Option<String>,
    origin: Option<OriginPosition>,
    after_ms: Option<u64>,
    url: Option<String>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<RequestId>>, D::Error> {
    Option::<RequestId>::deserialize(d).map(Some)
}

fn missing(kind: &str, field: &str) -> ClientError {
    ClientError::Protocol(format!("a `{kind}` frame without `{field}`"))
}

fn server_error(code: Option<String>, message: Option<String>) -> ServerError {
    let name = code.unwrap_or_default();
    ServerError {
        code: serde_json::from_value(serde_json::Value::String(name.clone())).ok(),
        name,
        message: message.unwrap_or_default(),
    }
}

/// Decodes one text frame from the node.
pub fn decode(text: &str) -> Result<Frame, ClientError> {
    let raw: RawFrame<'_> = serde_json::from_str(text)
        .map_err(|e| ClientError::Protocol(format!("{e}: {}", preview(text))))?;
    let kind = raw.kind.as_ref();
    let need = |field: &str| missing(kind, field);
    let room_event = |raw_kind: RoomEventKind, room, seq, epoch, origin| {
        Ok(Frame::Event(Event::Room(RoomEvent {
            room,
            seq,
            epoch,
            origin,
            kind: raw_kind,
        })))
    };
    match kind {
        "ok" => Ok(Frame::Reply(Reply {
            id: raw.id.flatten(),
            outcome: Ok(raw.result.ok_or_else(|| need("result"))?),
        })),
        "error" => {
            let error = server_error(raw.code, raw.message);
            Ok(match raw.id {
                Some(id) => Frame::Reply(Reply {
                    id,
                    outcome: Err(error),
                }),
                None => Frame::Event(Event::Error(error)),
            })
        }
        "joined" | "left" | "message" | "state_changed" => {
            let room = raw.room.ok_or_else(|| need("room"))?;
            let seq = raw.seq.ok_or_else(|| need("seq"))?;
            let epoch = raw.epoch.ok_or_else(|| need("epoch"))?;
            let what = match kind {
                "joined" => RoomEventKind::Joined {
                    user: raw.user.ok_or_else(|| need("user"))?,
                    region: raw.region.ok_or_else(|| need("region"))?,
                },
                "left" => {
                    let reason = raw.reason.ok_or_else(|| need("reason"))?;
                    RoomEventKind::Left {
                        user: raw.user.ok_or_else(|| need("user"))?,
                        region: raw.region.ok_or_else(|| need("region"))?,
                        reason: serde_json::from_value(serde_json::Value::String(reason.clone()))
                            .map_err(|_| {
                            ClientError::Protocol(format!("unknown `left` reason {reason:?}"))
                        })?,
                    }
                }
                "message" => RoomEventKind::Message {
                    from: raw.from.ok_or_else(|| need("from"))?,
                    data: raw.data.ok_or_else(|| need("data"))?,
                },
                _ => RoomEventKind::StateChanged {
                    key: raw.key.ok_or_else(|| need("key"))?,
                    value: raw.value,
                    by: raw.by.ok_or_else(|| need("by"))?,
                    version: raw.version.ok_or_else(|| need("version"))?,
                },
            };
            room_event(what, room, seq, epoch, raw.origin)
        }
        "direct" => Ok(Frame::Event(Event::Direct {
            from: raw.from.ok_or_else(|| need("from"))?,
            data: raw.data.ok_or_else(|| need("data"))?,
        })),
        "reconnect" => Ok(Frame::Event(Event::Reconnect(Reconnect {
            after_ms: raw.after_ms.ok_or_else(|| need("after_ms"))?,
            reason: raw.reason.unwrap_or_default(),
            url: raw.url,
            region: raw.region,
        }))),
        other => Ok(Frame::Event(Event::Other {
            kind: other.to_owned(),
        })),
    }
}

/// The start of a frame, for error messages.
fn preview(text: &str) -> String {
    text.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_protocol::ErrorCode;

    #[test]
    fn replies_and_their_ids() {
        let Frame::Reply(r) = decode(r#"{"type":"ok","id":3,"result":{"pong":true}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(r.id, Some(RequestId::Num(3)));
        assert_eq!(r.outcome.unwrap().get(), r#"{"pong":true}"#);
        let Frame::Reply(r) =
            decode(r#"{"type":"error","id":null,"code":"bad_request","message":"x","extra":1}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(r.id, None);
        let e = r.outcome.unwrap_err();
        assert_eq!(e.code, Some(ErrorCode::BadRequest));
        // An error without an id key is a connection-level event.
        let f =
            decode(r#"{"type":"error","code":"not_authenticated","message":"no hello"}"#).unwrap();
        assert!(
            matches!(f, Frame::Event(Event::Error(ref e)) if e.code == Some(ErrorCode::NotAuthenticated))
        );
        // A code this client does not know is kept by name.
        let Frame::Reply(r) =
            decode(r#"{"type":"error","id":"a","code":"brand_new","message":"m"}"#).unwrap()
        else {
            panic!()
        };
        let e = r.outcome.unwrap_err();
        assert_eq!((e.code, e.name.as_str()), (None, "brand_new"));
        assert!(!e.is_retryable());
    }

    /// Every event of the shared vectors (what the node's encoder writes, byte for byte).
    #[test]
    fn the_shared_event_vectors_decode() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../protocol/tests/vectors/events.json")).unwrap();
        let mut seen = 0;
        for list in vectors.as_object().unwrap().values() {
            for case in list.as_array().unwrap() {
                let text = case["frame"].as_str().unwrap();
                let frame = decode(text).unwrap_or_else(|e| panic!("{text}: {e}"));
                let v: serde_json::Value = serde_json::from_str(text).unwrap();
                assert_eq!(frame.kind(), v["type"].as_str().unwrap(), "{text}");
                if let Frame::Event(Event::Room(e)) = &frame {
                    assert_eq!(e.seq, v["seq"].as_u64().unwrap());
                    assert_eq!(e.room.as_str(), v["room"].as_str().unwrap());
                    assert_eq!(e.origin.is_some(), v.get("origin").is_some(), "{text}");
                    if let RoomEventKind::StateChanged { value, .. } = &e.kind {
                        assert_eq!(value.is_none(), v["value"].is_null(), "{text}");
                    }
                }
                seen += 1;
            }
        }
        assert!(seen >= 6, "{seen} vectors");
    }

    #[test]
    fn unknown_events_and_fields_are_tolerated_and_garbage_is_not() {
        assert!(
            matches!(decode(r#"{"type":"typing","room":"r"}"#).unwrap(), Frame::Event(Event::Other { ref kind }) if kind == "typing")
        );
        assert!(decode(r#"{"type":"message","room":"r","seq":1,"epoch":"e"}"#).is_err());
        assert!(decode("[1,2]").is_err());
    }
}
