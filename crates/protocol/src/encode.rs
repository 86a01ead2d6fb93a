//! The client side of [`Request`]: one request as the text frame a client sends. The node
//! parses frames with [`Request::parse`]; Rust clients (`crates/client`, the load generator)
//! write them with [`Request::encode`], so the request vocabulary has one owner and a new op
//! is a compile error here until it can be sent.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::{Request, RequestId, ResumePoint, RoomId, UserId};

/// The flat object every request frame is, borrowed from the typed request: `id` and `op`
/// first, absent fields left out (the parser counts a `null` as absent anyway).
#[derive(Serialize, Default)]
struct RequestFrame<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a RequestId>,
    op: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resume: Option<&'a [ResumePoint]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a RoomId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<&'a UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<&'a [UserId]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    if_version: Option<u64>,
}

impl Request {
    /// The wire name of the request's `op`.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Join { .. } => "join",
            Self::Leave { .. } => "leave",
            Self::Publish { .. } => "publish",
            Self::Send { .. } => "send",
            Self::Members { .. } => "members",
            Self::Presence { .. } => "presence",
            Self::StateSet { .. } => "state_set",
            Self::StateGet { .. } => "state_get",
            Self::StateDelete { .. } => "state_delete",
            Self::Ping => "ping",
        }
    }

    /// Encodes the request as the text frame a client sends, with `id` (which the node echoes
    /// in the reply). [`Request::parse`] reads it back as the same request.
    pub fn encode(&self, id: &RequestId) -> String {
        let mut frame = RequestFrame {
            id: Some(id),
            op: self.op(),
            ..RequestFrame::default()
        };
        match self {
            Self::Hello { token, resume } => {
                frame.token = token.as_deref();
                frame.resume = Some(resume.as_slice()).filter(|r| !r.is_empty());
            }
            Self::Join { room } | Self::Leave { room } => frame.room = Some(room),
            Self::Publish {
                room,
                data,
                idempotency_key,
            } => {
                frame.room = Some(room);
                frame.data = Some(data);
                frame.idempotency_key = idempotency_key.as_deref();
            }
            Self::Send { to, data } => {
                frame.to = Some(to);
                frame.data = Some(data);
            }
            Self::Members { room, after, limit } => {
                frame.room = Some(room);
                frame.after = after.as_ref();
                frame.limit = *limit;
            }
            Self::Presence { users } => frame.users = Some(users),
            Self::StateSet {
                room,
                key,
                value,
                if_version,
            } => {
                frame.room = Some(room);
                frame.key = Some(key);
                frame.value = Some(value);
                frame.if_version = *if_version;
            }
            Self::StateGet { room, key } => {
                frame.room = Some(room);
                frame.key = key.as_deref();
            }
            Self::StateDelete {
                room,
                key,
                if_version,
            } => {
                frame.room = Some(room);
                frame.key = Some(key);
                frame.if_version = *if_version;
            }
            Self::Ping => {}
        }
        // Every field is a string, a number or JSON that was valid when it was built: writing
        // it to a string cannot fail.
        serde_json::to_string(&frame).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OriginPosition;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn every_op() -> Vec<Request> {
        let room = RoomId::new("lobby").unwrap();
        let bob = UserId::new("bob").unwrap();
        vec![
            Request::Hello {
                token: Some("t".into()),
                resume: vec![ResumePoint {
                    room: room.clone(),
                    epoch: "k3v9x0qa".into(),
                    seq: 41,
                    origins: vec![OriginPosition {
                        region: "eu".into(),
                        epoch: "p0x8d2rt".into(),
                        seq: 3,
                    }],
                }],
            },
            Request::Hello {
                token: None,
                resume: Vec::new(),
            },
            Request::Join { room: room.clone() },
            Request::Leave { room: room.clone() },
            Request::Publish {
                room: room.clone(),
                data: raw(r#"{"text":"hi"}"#),
                idempotency_key: Some("k-1".into()),
            },
            Request::Send {
                to: bob.clone(),
                data: raw(r#"[1,{"a":null}]"#),
            },
            Request::Members {
                room: room.clone(),
                after: Some(bob.clone()),
                limit: Some(2),
            },
            Request::Presence {
                users: vec![bob.clone()],
            },
            Request::StateSet {
                room: room.clone(),
                key: "topic".into(),
                value: raw(r#""launch""#),
                if_version: Some(0),
            },
            Request::StateGet {
                room: room.clone(),
                key: None,
            },
            Request::StateDelete {
                room,
                key: "topic".into(),
                if_version: None,
            },
            Request::Ping,
        ]
    }

    #[test]
    fn every_encoded_request_parses_back_as_itself() {
        for (n, request) in every_op().into_iter().enumerate() {
            let id = RequestId::Num(n as u64);
            let text = request.encode(&id);
            let (back_id, back) = Request::parse(&text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(back_id, id);
            assert_eq!(back.op(), request.op(), "{text}");
            // `Request` holds raw JSON, so compare through the encoding.
            assert_eq!(back.encode(&id), text);
        }
    }

    #[test]
    fn frames_are_the_documented_ones() {
        let publish = Request::Publish {
            room: RoomId::new("lobby").unwrap(),
            data: raw(r#"{"text":"hi"}"#),
            idempotency_key: Some("msg-0001".into()),
        };
        assert_eq!(
            publish.encode(&RequestId::Num(4)),
            r#"{"id":4,"op":"publish","room":"lobby","data":{"text":"hi"},"idempotency_key":"msg-0001"}"#
        );
        assert_eq!(
            Request::Ping.encode(&RequestId::Str("p".into())),
            r#"{"id":"p","op":"ping"}"#
        );
        // The shared vectors' frames (docs and the JS SDK): the same object, minus `id`.
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../tests/vectors/requests.json")).unwrap();
        for case in vectors["valid"].as_array().unwrap() {
            let mut frame = case["frame"].clone();
            frame["id"] = 1.into();
            let text = frame.to_string();
            let (_, request) = Request::parse(&text).unwrap();
            let encoded: serde_json::Value =
                serde_json::from_str(&request.encode(&RequestId::Num(1))).unwrap();
            assert_eq!(encoded, frame, "{}", case["op"]);
        }
    }
}
