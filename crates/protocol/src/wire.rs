//! Frames: requests from clients, replies and events from the node.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{json_rules, ErrorCode, IdError, RoomId, UserId};

/// The protocol version spoken at `/v1/ws`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Most users a single `presence` request may ask about.
pub const MAX_PRESENCE_USERS: usize = 100;

/// The client-chosen id of a request, echoed in its reply: a number or a short string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// A numeric id.
    Num(u64),
    /// A string id (at most 64 bytes).
    Str(String),
}

/// Where a client left a room: the room's epoch and the last sequence number it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumePoint {
    /// The room.
    pub room: RoomId,
    /// The room's history epoch the client saw.
    pub epoch: String,
    /// The last sequence number the client received.
    pub seq: u64,
    /// Cross-region resume: for each other region whose events the client received (events
    /// carrying an `origin`), the last origin position seen. Lets a region the client was
    /// not connected to work out what the client missed (`docs/protocol.md` §7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<OriginPosition>,
}

/// A position in the room sequence of the region where an event was published: the
/// `origin` of replicated room events, and the entries of a resume's `origins` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginPosition {
    /// The region that published the event.
    pub region: String,
    /// That region's history epoch of the room.
    pub epoch: String,
    /// The event's sequence number in that region.
    pub seq: u64,
}

/// A parsed, validated request.
///
/// Exhaustive on purpose: a new op is a compile error in the node until it has a handler.
#[derive(Debug, Clone)]
pub enum Request {
    /// Authenticate, optionally resuming rooms from an earlier connection.
    Hello {
        /// The connection token.
        token: Option<String>,
        /// Rooms to rejoin and the positions to resume from.
        resume: Vec<ResumePoint>,
    },
    /// Join a room.
    Join {
        /// The room.
        room: RoomId,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: RoomId,
    },
    /// Publish a message to a room.
    Publish {
        /// The room.
        room: RoomId,
        /// Opaque JSON payload, forwarded byte for byte.
        data: Box<RawValue>,
        /// Retries with the same key within the dedupe window publish once.
        idempotency_key: Option<String>,
    },
    /// Send a direct message to every connection of a user.
    Send {
        /// The target user.
        to: UserId,
        /// Opaque JSON payload (an SDP offer, answer or ICE candidate).
        data: Box<RawValue>,
    },
    /// List a room's members, a page at a time.
    Members {
        /// The room.
        room: RoomId,
        /// Return members whose id sorts after this one.
        after: Option<UserId>,
        /// Page size (the node caps it).
        limit: Option<u32>,
    },
    /// Online status of some users.
    Presence {
        /// The users (at most 100).
        users: Vec<UserId>,
    },
    /// Set a room state key.
    StateSet {
        /// The room.
        room: RoomId,
        /// The key.
        key: String,
        /// The new value.
        value: Box<RawValue>,
        /// Compare-and-set: the version the key must have now (0: must not exist).
        if_version: Option<u64>,
    },
    /// Read one room state key, or all of them.
    StateGet {
        /// The room.
        room: RoomId,
        /// The key; `None` reads all keys.
        key: Option<String>,
    },
    /// Delete a room state key.
    StateDelete {
        /// The room.
        room: RoomId,
        /// The key.
        key: String,
        /// Compare-and-set: the version the key must have now.
        if_version: Option<u64>,
    },
    /// Liveness check at the protocol level.
    Ping,
}

/// A request that could not be parsed. `id` is set when the frame had a usable one, so the
/// error reply can carry it.
#[derive(Debug, Clone)]
pub struct RequestError {
    /// The request's id, when it could be read.
    pub id: Option<RequestId>,
    /// The error code.
    pub code: ErrorCode,
    /// What was wrong, for humans.
    pub message: String,
}

/// The flat shape every request frame is first read into: borrowed, so parsing allocates
/// only what the typed request keeps, and `data` stays raw JSON.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest<'a> {
    id: Option<RequestId>,
    #[serde(borrow)]
    op: Option<std::borrow::Cow<'a, str>>,
    token: Option<String>,
    resume: Option<Vec<ResumePoint>>,
    room: Option<String>,
    to: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    idempotency_key: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
    users: Option<Vec<String>>,
    key: Option<String>,
    if_version: Option<u64>,
}

/// Longest idempotency key and state key, in bytes.
pub const MAX_KEY_LEN: usize = 128;

impl Request {
    /// Parses one text frame. Returns the request id with the request so the reply can echo it.
    pub fn parse(text: &str) -> Result<(RequestId, Request), RequestError> {
        let bad = |message: String| RequestError {
            id: None,
            code: ErrorCode::BadRequest,
            message,
        };
        // serde maps a JSON array onto the struct's fields in order; the spec says a request
        // is an object.
        if !text
            .trim_start_matches([' ', '\t', '\n', '\r'])
            .starts_with('{')
        {
            return Err(bad("a request must be a JSON object".into()));
        }
        let raw: RawRequest<'_> = serde_json::from_str(text).map_err(|e| {
            // Name the JSON rule the frame breaks when there is one (`NaN`, a lone surrogate,
            // a too-deep value); serde's own message otherwise.
            match json_rules::check_with_depth(text, json_rules::MAX_DEPTH + 1) {
                // The frame's own object is the one level more: name the values' limit.
                Err(json_rules::JsonRuleError::TooDeep { .. }) => bad(format!(
                    "malformed request: {}",
                    json_rules::JsonRuleError::TooDeep {
                        max: json_rules::MAX_DEPTH
                    }
                )),
                Err(rule) => bad(format!("malformed request: {rule}")),
                Ok(()) => bad(format!("malformed request: {e}")),
            }
        })?;
        let id = match raw.id.clone() {
            Some(RequestId::Str(s)) if s.len() > 64 => {
                return Err(RequestError {
                    id: None,
                    code: ErrorCode::BadRequest,
                    message: "request id longer than 64 bytes".into(),
                })
            }
            Some(id) => id,
            None => {
                return Err(RequestError {
                    id: None,
                    code: ErrorCode::BadRequest,
                    message: "missing field `id`".into(),
                })
            }
        };
        let fail = |code: ErrorCode, message: String| RequestError {
            id: Some(id.clone()),
            code,
            message,
        };
        let op = raw
            .op
            .ok_or_else(|| fail(ErrorCode::BadRequest, "missing field `op`".into()))?;
        let op: &str = &op;
        if raw.if_version.is_some_and(|v| v > i64::MAX as u64) {
            return Err(fail(
                ErrorCode::BadRequest,
                "`if_version` is out of range".into(),
            ));
        }
        let need = |field: &'static str| {
            fail(
                ErrorCode::BadRequest,
                format!("op `{op}` needs field `{field}`"),
            )
        };
        // The one rule for client JSON that is stored or relayed (`json_rules`).
        let client_json = |v: Option<&RawValue>, field: &'static str| {
            let v = v.ok_or_else(|| need(field))?;
            json_rules::check(v.get()).map_err(|rule| {
                fail(
                    ErrorCode::BadRequest,
                    format!("`{field}` breaks the JSON rules: {rule}"),
                )
            })?;
            Ok::<Box<RawValue>, RequestError>(v.to_owned())
        };
        let room = |r: Option<String>| -> Result<RoomId, RequestError> {
            let r = r.ok_or_else(|| need("room"))?;
            RoomId::new(r).map_err(|e: IdError| fail(ErrorCode::InvalidId, format!("room: {e}")))
        };
        let user = |u: String| -> Result<UserId, RequestError> {
            UserId::new(u).map_err(|e| fail(ErrorCode::InvalidId, format!("user: {e}")))
        };
        let short_key =
            |k: Option<String>, field: &'static str| -> Result<Option<String>, RequestError> {
                match k {
                    Some(k) if k.is_empty() || k.len() > MAX_KEY_LEN => Err(fail(
                        ErrorCode::BadRequest,
                        format!("`{field}` must be 1 to {MAX_KEY_LEN} bytes"),
                    )),
                    k => Ok(k),
                }
            };
        let request = match op {
            "hello" => Request::Hello {
                token: raw.token,
                resume: raw.resume.unwrap_or_default(),
            },
            "join" => Request::Join {
                room: room(raw.room)?,
            },
            "leave" => Request::Leave {
                room: room(raw.room)?,
            },
            "publish" => Request::Publish {
                room: room(raw.room)?,
                data: client_json(raw.data, "data")?,
                idempotency_key: short_key(raw.idempotency_key, "idempotency_key")?,
            },
            "send" => Request::Send {
                to: user(raw.to.ok_or_else(|| need("to"))?)?,
                data: client_json(raw.data, "data")?,
            },
            "members" => Request::Members {
                room: room(raw.room)?,
                after: raw.after.map(user).transpose()?,
                limit: raw.limit,
            },
            "presence" => {
                let users = raw.users.ok_or_else(|| need("users"))?;
                if users.len() > MAX_PRESENCE_USERS {
                    return Err(fail(
                        ErrorCode::TooLarge,
                        format!("at most {MAX_PRESENCE_USERS} users per presence request"),
                    ));
                }
                Request::Presence {
                    users: users.into_iter().map(user).collect::<Result<_, _>>()?,
                }
            }
            "state_set" => Request::StateSet {
                room: room(raw.room)?,
                key: short_key(raw.key, "key")?.ok_or_else(|| need("key"))?,
                value: client_json(raw.value, "value")?,
                if_version: raw.if_version,
            },
            "state_get" => Request::StateGet {
                room: room(raw.room)?,
                key: short_key(raw.key, "key")?,
            },
            "state_delete" => Request::StateDelete {
                room: room(raw.room)?,
                key: short_key(raw.key, "key")?.ok_or_else(|| need("key"))?,
                if_version: raw.if_version,
            },
            "ping" => Request::Ping,
            other => {
                return Err(fail(
                    ErrorCode::UnknownOp,
                    format!(
                        "unknown op `{}`",
                        other.chars().take(32).collect::<String>()
                    ),
                ))
            }
        };
        Ok((id, request))
    }
}

/// One room state key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateEntry {
    /// The key.
    pub key: String,
    /// The value, as the writer sent it.
    pub value: Box<RawValue>,
    /// Version: 1 on first write, +1 on every write.
    pub version: u64,
}

impl PartialEq for StateEntry {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
            && self.value.get() == other.value.get()
            && self.version == other.version
    }
}

/// A reply to one request.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply<'a, T: Serialize> {
    /// Success with a result object.
    Ok {
        /// The request id.
        id: &'a RequestId,
        /// Op-specific result.
        result: T,
    },
    /// Failure.
    Error {
        /// The request id, when the frame had one.
        id: Option<&'a RequestId>,
        /// Stable code.
        code: ErrorCode,
        /// Human-readable text.
        message: &'a str,
    },
}

impl<T: Serialize> Reply<'_, T> {
    /// Encodes the reply as a text frame.
    pub fn encode(&self) -> String {
        // Serializing these types cannot fail: every field is a string, number or raw JSON.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","id":null,"code":"internal","message":"encode failed"}"#.into()
        })
    }
}

/// Why a member left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
}

/// A server event that is not tied to a room sequence (room events are built through
/// [`RoomEventFrame`]).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event<'a> {
    /// A direct message from another user.
    Direct {
        /// The sender.
        from: &'a UserId,
        /// The payload as sent.
        data: &'a RawValue,
    },
    /// Go away: reconnect after `after_ms`, optionally to `url` / `region`.
    Reconnect {
        /// Wait this long before reconnecting (jittered by the node).
        after_ms: u64,
        /// Why.
        reason: &'a str,
        /// Where to reconnect, when the node knows better than the load balancer.
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<&'a str>,
        /// The region `url` belongs to.
        #[serde(skip_serializing_if = "Option::is_none")]
        region: Option<&'a str>,
    },
    /// A connection-level error that answers no request.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Human-readable text.
        message: &'a str,
    },
}

impl Event<'_> {
    /// Encodes the event as a text frame.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"type":"error","code":"internal","message":"encode failed"}"#.into()
        })
    }
}

/// A room event (`joined`, `left`, `message`, `state_changed`) encoded once, up to but not
/// including its `seq` and `epoch`: the state store assigns those atomically with the history
/// append and closes the object with [`RoomEventFrame::finish`] (or the same splice in Lua).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEventFrame(String);

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

impl RoomEventFrame {
    fn open(head: &RoomEventHead<'_>) -> Self {
        let mut s = serde_json::to_string(head).unwrap_or_else(|_| "{\"type\":\"invalid\"}".into());
        s.pop(); // the closing brace; `finish` adds seq, epoch and a new one
        Self(s)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, RequestError> {
        Request::parse(s).map(|(_, r)| r)
    }

    #[test]
    fn resume_points_carry_an_optional_version_vector() {
        let Ok(Request::Hello { resume, .. }) = parse(
            r#"{"id":1,"op":"hello","token":"t","resume":[{"room":"r","epoch":"e","seq":3,"origins":[{"region":"eu","epoch":"f","seq":9}]},{"room":"s","epoch":"","seq":0}]}"#,
        ) else {
            panic!("hello with origins must parse");
        };
        assert_eq!(
            resume[0].origins,
            vec![OriginPosition {
                region: "eu".into(),
                epoch: "f".into(),
                seq: 9
            }]
        );
        assert!(resume[1].origins.is_empty());
        // A malformed vector entry is a bad request, not a panic.
        for bad in [
            r#"{"id":1,"op":"hello","token":"t","resume":[{"room":"r","epoch":"e","seq":3,"origins":[{"region":"eu","seq":9}]}]}"#,
            r#"{"id":1,"op":"hello","token":"t","resume":[{"room":"r","epoch":"e","seq":3,"origins":[{"region":"eu","epoch":"f","seq":-1}]}]}"#,
            r#"{"id":1,"op":"hello","token":"t","resume":[{"room":"r","epoch":"e","seq":3,"origins":{"eu":1}}]}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn parses_every_op() {
        assert!(matches!(
            parse(r#"{"id":1,"op":"hello","token":"t"}"#),
            Ok(Request::Hello { .. })
        ));
        assert!(matches!(
            parse(r#"{"id":"a","op":"join","room":"r"}"#),
            Ok(Request::Join { .. })
        ));
        assert!(matches!(
            parse(r#"{"id":1,"op":"leave","room":"r"}"#),
            Ok(Request::Leave { .. })
        ));
        match parse(r#"{"id":1,"op":"publish","room":"r","data":{"x":[1,2]}}"#) {
            Ok(Request::Publish { data, .. }) => assert_eq!(data.get(), r#"{"x":[1,2]}"#),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"id":1,"op":"send","to":"u","data":"sdp"}"#),
            Ok(Request::Send { .. })
        ));
        assert!(matches!(
            parse(r#"{"id":1,"op":"members","room":"r","limit":5}"#),
            Ok(Request::Members { .. })
        ));
        assert!(matches!(
            parse(r#"{"id":1,"op":"presence","users":["a","b"]}"#),
            Ok(Request::Presence { .. })
        ));
        assert!(matches!(
            parse(r#"{"id":1,"op":"state_set","room":"r","key":"k","value":1,"if_version":0}"#),
            Ok(Request::StateSet { .. })
        ));
        assert!(matches!(
            parse(r#"{"id":1,"op":"state_get","room":"r"}"#),
            Ok(Request::StateGet { key: None, .. })
        ));
        assert!(matches!(
            parse(r#"{"id":1,"op":"state_delete","room":"r","key":"k"}"#),
            Ok(Request::StateDelete { .. })
        ));
        assert!(matches!(
            parse(r#"{"id":1,"op":"ping"}"#),
            Ok(Request::Ping)
        ));
    }

    #[test]
    fn rejects_bad_frames_with_codes() {
        let e = parse("{not json").unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, None));
        let e = parse(r#"{"id":7,"op":"dance"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.id),
            (ErrorCode::UnknownOp, Some(RequestId::Num(7)))
        );
        assert_eq!(
            parse(r#"{"id":7,"op":"join"}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse(r#"{"id":7,"op":"join","room":"a b"}"#)
                .unwrap_err()
                .code,
            ErrorCode::InvalidId
        );
        assert_eq!(
            parse(r#"{"id":7,"op":"join","room":"r","bogus":1}"#)
                .unwrap_err()
                .code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse(r#"{"op":"ping"}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        let many: Vec<String> = (0..101).map(|i| format!("\"u{i}\"")).collect();
        let req = format!(r#"{{"id":1,"op":"presence","users":[{}]}}"#, many.join(","));
        assert_eq!(parse(&req).unwrap_err().code, ErrorCode::TooLarge);
        assert_eq!(parse("[]").unwrap_err().code, ErrorCode::BadRequest);
        let huge = r#"{"id":1,"op":"state_set","room":"r","key":"k","value":1,"if_version":18446744073709551615}"#;
        assert_eq!(parse(huge).unwrap_err().code, ErrorCode::BadRequest);
        assert!(
            matches!(parse(r#"{"id":1,"op":"pin\u0067"}"#), Ok(Request::Ping)),
            "escaped op"
        );
        assert_eq!(parse("null").unwrap_err().code, ErrorCode::BadRequest);
    }

    #[test]
    fn a_request_must_be_an_object() {
        // 14 elements used to map onto the struct's fields in order.
        let array = r#"[1,"ping",null,null,null,null,null,null,null,null,null,null,null,null]"#;
        let e = parse(array).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("JSON object"), "{}", e.message);
        assert!(parse(" \n{\"id\":1,\"op\":\"ping\"}").is_ok());
    }

    #[test]
    fn client_json_must_follow_the_rules() {
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        let deep33 = format!("{}{}", "[".repeat(33), "]".repeat(33));
        let deep32 = format!("{}{}", "[".repeat(32), "]".repeat(32));
        for (value, rule) in [
            (deep.as_str(), "deeper than 32"),
            (deep33.as_str(), "deeper than 32"),
            ("Infinity", "NaN, Infinity"),
            ("NaN", "NaN, Infinity"),
            ("-Infinity", "NaN, Infinity"),
            (r#""\ud800""#, "surrogate"),
            (r#"{"a":"x\udc00"}"#, "surrogate"),
            ("1e999", "finite"),
        ] {
            for frame in [
                format!(r#"{{"id":1,"op":"publish","room":"r","data":{value}}}"#),
                format!(r#"{{"id":1,"op":"send","to":"u","data":{value}}}"#),
                format!(r#"{{"id":1,"op":"state_set","room":"r","key":"k","value":{value}}}"#),
            ] {
                let e = parse(&frame).unwrap_err();
                assert_eq!(e.code, ErrorCode::BadRequest, "{frame}");
                assert!(e.message.contains(rule), "{frame}: {}", e.message);
            }
        }
        let ok = format!(r#"{{"id":1,"op":"publish","room":"r","data":{deep32}}}"#);
        assert!(parse(&ok).is_ok());
        // The id of a parsable frame is echoed with the rule error.
        let e = Request::parse(r#"{"id":9,"op":"publish","room":"r","data":1e999}"#).unwrap_err();
        assert_eq!(e.id, Some(RequestId::Num(9)));
    }

    #[test]
    fn room_event_frames_are_valid_json() {
        let room = RoomId::new("r").unwrap();
        let user = UserId::new("u").unwrap();
        let data = RawValue::from_string("{\"a\":1}".into()).unwrap();
        for frame in [
            RoomEventFrame::joined(&room, &user, "eu"),
            RoomEventFrame::left(&room, &user, "eu", LeftReason::NodeLost),
            RoomEventFrame::message(&room, &user, &data),
            RoomEventFrame::state_changed(&room, "k", None, &user).with_version(2),
        ] {
            let v: serde_json::Value = serde_json::from_str(&frame.finish(9, "e1")).unwrap();
            assert_eq!(v["seq"], 9);
            assert_eq!(v["epoch"], "e1");
            assert_eq!(v["room"], "r");
        }
    }

    #[test]
    fn replies_and_events_encode() {
        let id = RequestId::Num(3);
        let ok = Reply::Ok {
            id: &id,
            result: serde_json::json!({"seq": 1}),
        }
        .encode();
        assert_eq!(ok, r#"{"type":"ok","id":3,"result":{"seq":1}}"#);
        let err: Reply<'_, ()> = Reply::Error {
            id: None,
            code: ErrorCode::RateLimited,
            message: "slow down",
        };
        let err = err.encode();
        assert_eq!(
            err,
            r#"{"type":"error","id":null,"code":"rate_limited","message":"slow down"}"#
        );
        let ev = Event::Reconnect {
            after_ms: 5,
            reason: "draining",
            url: None,
            region: None,
        }
        .encode();
        assert_eq!(
            ev,
            r#"{"type":"reconnect","after_ms":5,"reason":"draining"}"#
        );
    }
}
