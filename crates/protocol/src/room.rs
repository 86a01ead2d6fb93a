//! The room-event vocabulary, defined once: what can happen in a room ([`RoomEventKind`]),
//! the clock that orders it across regions ([`Hlc`]), a room-state key with its stamp
//! ([`StateRecord`]), client JSON carried inside them ([`JsonText`]), and the client JSON frame
//! of a room event ([`RoomEventFrame`]: built here, sequenced by the state store, decoded
//! here with [`RoomEventFrame::decode`]).
//!
//! The same types travel in the relay's postcard frames ([`crate::relay`]), so a new kind of
//! room event is added in this file and the compiler finds every place that must handle it.
//! The Redis scripts build the `joined`/`left` frames in Lua; a region-state test pins their
//! bytes to [`RoomEventFrame`]'s.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::json_rules::{self, JsonRuleError};
use crate::{OriginPosition, RoomId, UserId};

/// Why a member left a room.
///
/// On the wire (JSON and the relay's postcard frames alike) it is its name as a string. A
/// name this version does not know (sent by a newer peer) reads as
/// [`LeftReason::Disconnect`]: the member is gone either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeftReason {
    /// The user sent `leave`.
    Leave,
    /// The user's last connection closed.
    Disconnect,
    /// The node holding the user's connections stopped renewing its lease.
    NodeLost,
    /// The user's region was declared down by the other regions.
    RegionDown,
}

impl LeftReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leave => "leave",
            Self::Disconnect => "disconnect",
            Self::NodeLost => "node_lost",
            Self::RegionDown => "region_down",
        }
    }

    /// The reason named `name`; unknown names read as [`LeftReason::Disconnect`].
    pub fn from_name(name: &str) -> Self {
        match name {
            "leave" => Self::Leave,
            "node_lost" => Self::NodeLost,
            "region_down" => Self::RegionDown,
            _ => Self::Disconnect,
        }
    }
}

impl fmt::Display for LeftReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for LeftReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LeftReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = LeftReason;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a left reason")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LeftReason, E> {
                Ok(LeftReason::from_name(v))
            }
        }
        d.deserialize_str(Name)
    }
}

/// Hybrid logical clock timestamp: wall-clock milliseconds and a logical counter. Ordered
/// first by `wall_ms`, then `logical`; ties between regions break on the origin region name.
///
/// Its text form ([`fmt::Display`], [`Hlc::parse`]) is `"%013d.%05d"`, fixed width so that
/// stamps compare as strings (the Redis scripts store and compare it so).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// Logical counter within one `wall_ms` (at most 99999 in the text form).
    pub logical: u32,
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:013}.{:05}", self.wall_ms, self.logical.min(99_999))
    }
}

impl Hlc {
    /// Parses `"%013d.%05d"` (anything after the 5 digits of the counter is ignored).
    pub fn parse(s: &str) -> Option<Self> {
        let (wall, rest) = s.split_once('.')?;
        let logical = rest.get(..5).unwrap_or(rest);
        Some(Self {
            wall_ms: wall.parse().ok()?,
            logical: logical.parse().ok()?,
        })
    }
}

/// Why a text is not a [`JsonText`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonTextError {
    /// It breaks the rule for client JSON ([`json_rules`]).
    #[error("{0}")]
    Rule(#[from] JsonRuleError),
}

/// Client JSON carried by a room event (a message's `data`, a state key's `value`): a whole
/// JSON value that follows [`json_rules`], kept as its text and forwarded byte for byte.
///
/// Serialized raw in JSON (the value itself, not a string holding it) and as a string in the
/// relay's postcard frames; deserializing checks the rule again, so a frame with bad JSON
/// inside is malformed.
#[derive(Clone)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// Checks `text` against the rule for client JSON.
    pub fn new(text: impl Into<String>) -> Result<Self, JsonTextError> {
        let text = text.into();
        json_rules::check(&text)?;
        // The rule's grammar is RFC 8259's, which serde_json reads; a mismatch would be a bug
        // in the checker, and is refused the same way.
        RawValue::from_string(text)
            .map(Self)
            .map_err(|_| JsonTextError::Rule(JsonRuleError::Syntax { at: 0 }))
    }

    /// Checks raw JSON (already valid JSON) against the rule for client JSON.
    pub fn from_raw(raw: Box<RawValue>) -> Result<Self, JsonTextError> {
        json_rules::check(raw.get())?;
        Ok(Self(raw))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The value as [`RawValue`].
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// The value as an owned [`RawValue`].
    pub fn into_raw(self) -> Box<RawValue> {
        self.0
    }
}

impl fmt::Debug for JsonText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JsonText({})", self.get())
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for JsonText {}

impl std::hash::Hash for JsonText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.get().hash(state);
    }
}

impl Serialize for JsonText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            s.serialize_str(self.get())
        }
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let raw = Box::<RawValue>::deserialize(d)?;
            Self::from_raw(raw).map_err(de::Error::custom)
        } else {
            let text = String::deserialize(d)?;
            Self::new(text).map_err(de::Error::custom)
        }
    }
}

/// What happened in a room: the one room-event vocabulary of the mesh.
///
/// The node publishes these as client frames ([`RoomEventFrame`]), the relay replicates them
/// between regions ([`crate::relay::RoomEvent`]) and the relay's store applies them. The
/// room, sequence, epoch and origin are the frame's, not the kind's.
///
/// **Wire format.** In the relay's postcard frames a kind is its variant index and fields in
/// order, so variants and fields are append-only (see [`crate::relay`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomEventKind {
    /// A user's first connection entered the room (`joined`).
    Joined {
        /// The user.
        user: UserId,
    },
    /// A member's last connection left the room (`left`).
    Left {
        /// The user.
        user: UserId,
        /// Why.
        reason: LeftReason,
    },
    /// A message published to the room (`message`).
    Message {
        /// The publisher.
        from: UserId,
        /// The message body as the publisher sent it.
        data: JsonText,
        /// The publish's `<user>|<key>` idempotency id, so that a publish its client retried
        /// in another region is applied once everywhere. Not part of the client frame (the
        /// history keeps it beside the frame).
        idempotency: Option<String>,
    },
    /// A room-state key was written (`state_changed` with a value).
    StateSet {
        /// The key.
        key: String,
        /// The new value.
        value: JsonText,
        /// The writer.
        by: UserId,
    },
    /// A room-state key was deleted (`state_changed` with `value: null`).
    StateDelete {
        /// The key.
        key: String,
        /// The writer.
        by: UserId,
    },
}

/// One room-state key with its last-writer-wins stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    /// The key.
    pub key: String,
    /// The value; `None` for a deleted key (a tombstone).
    pub value: Option<JsonText>,
    /// Last write's stamp.
    pub hlc: Hlc,
    /// Region of the last write (ties between equal stamps break on the region name).
    pub region: String,
    /// Writer of the last write.
    pub by: UserId,
}

/// A room event (`joined`, `left`, `message`, `state_changed`) encoded once, up to but not
/// including its `seq` and `epoch`: the state store assigns those atomically with the history
/// append and closes the object with [`RoomEventFrame::finish`] (or the same splice in Lua).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEventFrame(String);

/// The client JSON of a room event's head, field order included (the Lua `member_head` builds
/// the same bytes; a region-state test pins them).
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum RoomEventHead<'a> {
    Joined {
        room: &'a RoomId,
        user: &'a UserId,
        region: &'a str,
    },
    Left {
        room: &'a RoomId,
        user: &'a UserId,
        region: &'a str,
        reason: LeftReason,
    },
    Message {
        room: &'a RoomId,
        from: &'a UserId,
        data: &'a RawValue,
    },
    StateChanged {
        room: &'a RoomId,
        key: &'a str,
        value: Option<&'a RawValue>,
        by: &'a UserId,
    },
}

/// The `type` of a room-event frame, as [`RoomEventHead`] writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FrameType {
    Joined,
    Left,
    Message,
    StateChanged,
}

/// A room-event frame as stored and delivered, read field by field (any order; unknown
/// fields are ignored so that a field added later does not break an older reader).
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type")]
    kind: FrameType,
    room: RoomId,
    #[serde(default)]
    user: Option<UserId>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    reason: Option<LeftReason>,
    #[serde(default)]
    from: Option<UserId>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default, borrow)]
    value: Option<&'a RawValue>,
    #[serde(default)]
    by: Option<UserId>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    origin: Option<OriginPosition>,
    seq: u64,
    epoch: String,
}

/// Just the `origin` of a room-event frame (the fan-out's hot path reads nothing else).
#[derive(Deserialize)]
struct OriginOnly {
    #[serde(default)]
    origin: Option<OriginPosition>,
}

/// Why a room-event frame could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RoomEventError {
    /// Not a JSON object of a known room-event type, or a field has the wrong type.
    #[error("not a room event frame: {0}")]
    Json(#[from] serde_json::Error),
    /// A field the event's type needs is missing.
    #[error("a `{kind}` room event needs field `{field}`")]
    Missing {
        /// The frame's `type`.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// Its client JSON (`data`, `value`) breaks the rule.
    #[error("room event value: {0}")]
    Value(#[from] JsonTextError),
}

/// A room-event frame decoded: the typed event with its place in the room's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRoomEvent {
    /// The room.
    pub room: RoomId,
    /// What happened. A message's `idempotency` is `None` (the frame does not carry it).
    pub kind: RoomEventKind,
    /// `joined`/`left`: the member's home region.
    pub region: Option<String>,
    /// `state_changed`: the key's version after the change.
    pub version: Option<u64>,
    /// Set on an event replicated from the region where it was published.
    pub origin: Option<OriginPosition>,
    /// Sequence number in this region's room history.
    pub seq: u64,
    /// The room history's epoch.
    pub epoch: String,
}

impl RoomEventFrame {
    fn open(head: &RoomEventHead<'_>) -> Self {
        let mut s = serde_json::to_string(head).unwrap_or_else(|_| "{\"type\":\"invalid\"}".into());
        s.pop(); // the closing brace; `finish` adds seq, epoch and a new one
        Self(s)
    }

    /// The frame of `kind` in `room`. `region` is the member's home region of `joined` and
    /// `left` (other kinds do not carry one). A state write's version is only known inside
    /// the store's atomic update: the store adds it ([`RoomEventFrame::with_version`]).
    pub fn new(room: &RoomId, region: &str, kind: &RoomEventKind) -> Self {
        match kind {
            RoomEventKind::Joined { user } => Self::joined(room, user, region),
            RoomEventKind::Left { user, reason } => Self::left(room, user, region, *reason),
            RoomEventKind::Message { from, data, .. } => Self::message(room, from, data.as_raw()),
            RoomEventKind::StateSet { key, value, by } => {
                Self::state_changed(room, key, Some(value.as_raw()), by)
            }
            RoomEventKind::StateDelete { key, by } => Self::state_changed(room, key, None, by),
        }
    }

    /// `joined`: a user's first connection entered the room.
    pub fn joined(room: &RoomId, user: &UserId, region: &str) -> Self {
        Self::open(&RoomEventHead::Joined { room, user, region })
    }
    /// `left`: a user's last connection left the room.
    pub fn left(room: &RoomId, user: &UserId, region: &str, reason: LeftReason) -> Self {
        Self::open(&RoomEventHead::Left {
            room,
            user,
            region,
            reason,
        })
    }
    /// `message`: a room message.
    pub fn message(room: &RoomId, from: &UserId, data: &RawValue) -> Self {
        Self::open(&RoomEventHead::Message { room, from, data })
    }
    /// `state_changed`: a state key was written (`value: Some`) or deleted (`None`). The key's
    /// new version is only known inside the store's atomic update, so the store adds it with
    /// [`RoomEventFrame::with_version`] before sequencing.
    pub fn state_changed(room: &RoomId, key: &str, value: Option<&RawValue>, by: &UserId) -> Self {
        Self::open(&RoomEventHead::StateChanged {
            room,
            key,
            value,
            by,
        })
    }
    /// Appends `"version":N` to a `state_changed` head (the same splice the Redis script does).
    pub fn with_version(&self, version: u64) -> Self {
        Self(format!("{},\"version\":{version}", self.0))
    }
    /// Appends `"origin":{"region":..,"epoch":..,"seq":..}`: the event was published in
    /// another region and replicated here (the relay builds such heads).
    pub fn with_origin(&self, origin: &OriginPosition) -> Self {
        let json = serde_json::to_string(origin).unwrap_or_else(|_| "null".into());
        Self(format!("{},\"origin\":{json}", self.0))
    }
    /// The open JSON object, for stores that splice `seq` and `epoch` themselves.
    pub fn head(&self) -> &str {
        &self.0
    }
    /// Closes the object with its sequence number and epoch.
    pub fn finish(&self, seq: u64, epoch: &str) -> String {
        Self::close(&self.0, seq, epoch)
    }
    /// The splice itself, shared with the Redis script's `head .. ',"seq":' .. seq ..`.
    pub fn close(head: &str, seq: u64, epoch: &str) -> String {
        // Epochs are generated by the store from [0-9a-z]; no escaping needed.
        format!("{head},\"seq\":{seq},\"epoch\":\"{epoch}\"}}")
    }

    /// Decodes a finished room-event frame (as stored in a room's history and delivered to
    /// clients) into the typed event with its room, sequence, epoch and origin.
    pub fn decode(frame: &[u8]) -> Result<DecodedRoomEvent, RoomEventError> {
        let raw: RawFrame<'_> = serde_json::from_slice(frame)?;
        let missing =
            |kind: &'static str, field: &'static str| RoomEventError::Missing { kind, field };
        let json = |v: &RawValue| JsonText::from_raw(v.to_owned());
        let (kind, region) = match raw.kind {
            FrameType::Joined => (
                RoomEventKind::Joined {
                    user: raw.user.ok_or_else(|| missing("joined", "user"))?,
                },
                Some(raw.region.ok_or_else(|| missing("joined", "region"))?),
            ),
            FrameType::Left => (
                RoomEventKind::Left {
                    user: raw.user.ok_or_else(|| missing("left", "user"))?,
                    // An older writer may have left it out.
                    reason: raw.reason.unwrap_or(LeftReason::Disconnect),
                },
                Some(raw.region.ok_or_else(|| missing("left", "region"))?),
            ),
            FrameType::Message => (
                RoomEventKind::Message {
                    from: raw.from.ok_or_else(|| missing("message", "from"))?,
                    data: json(raw.data.ok_or_else(|| missing("message", "data"))?)?,
                    idempotency: None,
                },
                None,
            ),
            FrameType::StateChanged => {
                let key = raw.key.ok_or_else(|| missing("state_changed", "key"))?;
                let by = raw.by.ok_or_else(|| missing("state_changed", "by"))?;
                // `value` is null (or, from an older writer, absent) for a delete.
                let kind = match raw.value.filter(|v| v.get() != "null") {
                    Some(v) => RoomEventKind::StateSet {
                        key,
                        value: json(v)?,
                        by,
                    },
                    None => RoomEventKind::StateDelete { key, by },
                };
                (kind, None)
            }
        };
        Ok(DecodedRoomEvent {
            room: raw.room,
            kind,
            region,
            version: raw.version,
            origin: raw.origin,
            seq: raw.seq,
            epoch: raw.epoch,
        })
    }

    /// The `origin` of a room-event frame, decoded (never found by searching the text: a
    /// client can put `"origin":{...}` anywhere inside its `data`). `None` for a local event
    /// and for text that is not a JSON object.
    pub fn origin_of(frame: &[u8]) -> Option<OriginPosition> {
        serde_json::from_slice::<OriginOnly>(frame).ok()?.origin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> RoomId {
        RoomId::new("r").unwrap()
    }
    fn user(u: &str) -> UserId {
        UserId::new(u).unwrap()
    }
    fn json(t: &str) -> JsonText {
        JsonText::new(t).unwrap()
    }

    fn kinds() -> Vec<RoomEventKind> {
        vec![
            RoomEventKind::Joined { user: user("a") },
            RoomEventKind::Left {
                user: user("a"),
                reason: LeftReason::RegionDown,
            },
            RoomEventKind::Message {
                from: user("b"),
                data: json(r#"{"text":"hi","origin":{"region":"x","epoch":"y","seq":1}}"#),
                idempotency: None,
            },
            RoomEventKind::StateSet {
                key: "k".into(),
                value: json("[1,2]"),
                by: user("c"),
            },
            RoomEventKind::StateDelete {
                key: "k".into(),
                by: user("c"),
            },
        ]
    }

    #[test]
    fn every_kind_survives_its_client_frame() {
        let origin = OriginPosition {
            region: "eu".into(),
            epoch: "k3v9x0qa".into(),
            seq: 41,
        };
        for kind in kinds() {
            for replicated in [false, true] {
                let mut head = RoomEventFrame::new(&room(), "us", &kind);
                if replicated {
                    head = head.with_origin(&origin);
                }
                let text = head.finish(7, "e1");
                let got = RoomEventFrame::decode(text.as_bytes()).unwrap();
                assert_eq!(got.kind, kind, "{text}");
                assert_eq!((got.seq, got.epoch.as_str()), (7, "e1"));
                assert_eq!(got.room, room());
                assert_eq!(got.origin.as_ref(), replicated.then_some(&origin), "{text}");
                assert_eq!(
                    RoomEventFrame::origin_of(text.as_bytes()).as_ref(),
                    replicated.then_some(&origin)
                );
                let member = matches!(
                    kind,
                    RoomEventKind::Joined { .. } | RoomEventKind::Left { .. }
                );
                assert_eq!(got.region.is_some(), member, "{text}");
            }
        }
        let set = RoomEventFrame::new(&room(), "us", &kinds()[3]).with_version(3);
        let got = RoomEventFrame::decode(set.finish(1, "e").as_bytes()).unwrap();
        assert_eq!(got.version, Some(3));
    }

    #[test]
    fn an_origin_inside_client_data_is_not_the_events_origin() {
        let data = json(r#"{"origin":{"region":"eu","epoch":"p0","seq":1}}"#);
        let frame =
            RoomEventFrame::message(&room(), &user("mallory"), data.as_raw()).finish(3, "e");
        assert_eq!(RoomEventFrame::origin_of(frame.as_bytes()), None);
        assert_eq!(
            RoomEventFrame::decode(frame.as_bytes()).unwrap().origin,
            None
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        for bad in [
            "not json",
            "[]",
            r#"{"type":"joined","room":"r","user":"u","seq":1,"epoch":"e"}"#,
            r#"{"type":"message","room":"r","data":1,"seq":1,"epoch":"e"}"#,
            r#"{"type":"dance","room":"r","seq":1,"epoch":"e"}"#,
            r#"{"type":"joined","room":"a b","user":"u","region":"eu","seq":1,"epoch":"e"}"#,
            r#"{"type":"joined","room":"r","user":"u","region":"eu","epoch":"e"}"#,
        ] {
            assert!(RoomEventFrame::decode(bad.as_bytes()).is_err(), "{bad}");
        }
        let deep = format!(
            r#"{{"type":"message","room":"r","from":"u","data":{}1{},"seq":1,"epoch":"e"}}"#,
            "[".repeat(33),
            "]".repeat(33)
        );
        assert!(matches!(
            RoomEventFrame::decode(deep.as_bytes()),
            Err(RoomEventError::Value(_))
        ));
        // Unknown fields are ignored; a left without a reason is a disconnect.
        let ok =
            r#"{"type":"left","room":"r","user":"u","region":"eu","later":1,"seq":1,"epoch":"e"}"#;
        assert_eq!(
            RoomEventFrame::decode(ok.as_bytes()).unwrap().kind,
            RoomEventKind::Left {
                user: user("u"),
                reason: LeftReason::Disconnect
            }
        );
    }

    #[test]
    fn json_text_is_raw_in_json_and_a_string_in_postcard() {
        let v = json(r#"{"a":[1,"x"]}"#);
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"a":[1,"x"]}"#);
        let back: JsonText = serde_json::from_str(r#" {"a":[1,"x"]}"#).unwrap();
        assert_eq!(back.get(), r#"{"a":[1,"x"]}"#);
        let bytes = postcard::to_allocvec(&v).unwrap();
        assert_eq!(bytes[0] as usize, v.get().len());
        assert_eq!(&bytes[1..], v.get().as_bytes());
        assert_eq!(postcard::from_bytes::<JsonText>(&bytes).unwrap(), v);
        // The rule holds both ways in.
        for bad in ["NaN", "{", "1e999", r#""\ud800""#, ""] {
            assert!(JsonText::new(bad).is_err(), "{bad}");
            let bytes = postcard::to_allocvec(bad).unwrap();
            assert!(postcard::from_bytes::<JsonText>(&bytes).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<JsonText>("1e999").is_err());
    }

    #[test]
    fn left_reasons_are_names_on_every_wire() {
        for r in [
            LeftReason::Leave,
            LeftReason::Disconnect,
            LeftReason::NodeLost,
            LeftReason::RegionDown,
        ] {
            let j = serde_json::to_string(&r).unwrap();
            assert_eq!(j, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<LeftReason>(&j).unwrap(), r);
            let p = postcard::to_allocvec(&r).unwrap();
            assert_eq!(p, postcard::to_allocvec(r.as_str()).unwrap());
            assert_eq!(postcard::from_bytes::<LeftReason>(&p).unwrap(), r);
        }
        assert_eq!(
            serde_json::from_str::<LeftReason>("\"evicted\"").unwrap(),
            LeftReason::Disconnect
        );
    }

    #[test]
    fn hlc_text_is_fixed_width_and_round_trips() {
        let h = Hlc {
            wall_ms: 1_700_000_000_123,
            logical: 7,
        };
        assert_eq!(h.to_string(), "1700000000123.00007");
        assert_eq!(Hlc::parse("1700000000123.00007|eu|bob"), Some(h));
        assert_eq!(
            Hlc::parse(&Hlc::default().to_string()),
            Some(Hlc::default())
        );
        assert!(Hlc::parse("x").is_none());
        assert!(
            Hlc {
                wall_ms: 5,
                logical: 2
            }
            .to_string()
                > Hlc {
                    wall_ms: 4,
                    logical: 99
                }
                .to_string()
        );
    }
}
