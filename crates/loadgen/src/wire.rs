//! The two wire protocols the load generator speaks, as pure functions from text frames to
//! meaning and back: Meridian's protocol v1 (JSON objects over `/v1/ws`, docs/protocol.md) and
//! Socket.IO v5 over Engine.IO v4 on a WebSocket (`/socket.io/?EIO=4&transport=websocket`).
//!
//! The load generator's own payloads are small JSON objects with a send timestamp `t` (µs on
//! the load generator's monotonic clock), a phase tag `ph` and, for signaling pairs, a kind `k`
//! and burst number `b`. They are found with a byte scan, not a JSON parse, so the receive path
//! costs little next to the servers'.

use serde_json::value::RawValue;

/// Which server a run talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// Meridian region nodes (`/v1/ws`).
    Meridian,
    /// Socket.IO 4 servers (bench/socketio/server.js).
    #[value(name = "socketio")]
    #[serde(rename = "socketio")]
    SocketIo,
}

impl System {
    /// The WebSocket URL path on a server.
    pub fn ws_path(self) -> &'static str {
        match self {
            Self::Meridian => "/v1/ws",
            Self::SocketIo => "/socket.io/?EIO=4&transport=websocket",
        }
    }
}

/// What one received text frame is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// The reply to request `id` (`ok` true) or its error (`ok` false, with the code).
    Reply {
        /// Request id.
        id: u64,
        /// Whether it succeeded.
        ok: bool,
        /// The error code or text when it did not.
        error: Option<String>,
    },
    /// A room `message` or `direct` event; `body` is the whole frame (scan it with [`stamp`]).
    Delivery {
        /// `message` or `direct`.
        direct: bool,
        /// The frame.
        body: &'a str,
    },
    /// Engine.IO heartbeat: answer with [`socketio::PONG`].
    Ping,
    /// The Engine.IO open packet or the Socket.IO connect acknowledgement.
    Connected,
    /// The server refused the connection (Socket.IO connect error, Meridian `reconnect`, …).
    Refused(String),
    /// Anything else (`joined`/`left` events, …).
    Other,
}

/// The retry delay of a `reconnect` refusal (`reconnect:REASON:AFTER_MS`), if it is one.
pub fn reconnect_after(refusal: &str) -> Option<std::time::Duration> {
    let rest = refusal.strip_prefix("reconnect:")?;
    let ms = rest.rsplit(':').next()?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// The load generator's stamp inside a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Send time, µs on the load generator's clock.
    pub sent_us: u64,
    /// Phase tag.
    pub phase: usize,
    /// Burst number (signaling pairs), 0 otherwise.
    pub burst: u64,
    /// Kind byte (signaling pairs: `o`ffer, `a`nswer, `i`ce), 0 otherwise.
    pub kind: u8,
}

/// The decimal number at the start of `b`.
fn leading_number(b: &[u8]) -> Option<u64> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&b[..digits]).ok()?.parse().ok()
}

/// Where `key` ends in `hay`: a SIMD substring search, made once per key (the load generator
/// runs this on every delivery).
fn end_of(hay: &[u8], finder: &memchr::memmem::Finder<'_>) -> Option<usize> {
    Some(finder.find(hay)? + finder.needle().len())
}

/// Finds the stamp in a delivered frame (both systems keep the payload's keys and order:
/// `"k"` and `"b"` come before `"t"`, `"ph"` after it).
pub fn stamp(body: &str) -> Option<Stamp> {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    static T: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"t\":"));
    static PH: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"ph\":"));
    static B: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"b\":"));
    static K: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"k\":\""));
    let b = body.as_bytes();
    let t = end_of(b, &T)?;
    let sent_us = leading_number(&b[t..])?;
    let phase = end_of(&b[t..], &PH)
        .and_then(|i| leading_number(&b[t + i..]))
        .unwrap_or(0) as usize;
    let before = &b[..t];
    let burst = end_of(before, &B)
        .and_then(|i| leading_number(&before[i..]))
        .unwrap_or(0);
    let kind = end_of(before, &K)
        .and_then(|i| before.get(i).copied())
        .unwrap_or(0);
    Some(Stamp {
        sent_us,
        phase,
        burst,
        kind,
    })
}

/// The load generator's payload: its fields in the order [`stamp`] scans them.
#[derive(serde::Serialize)]
struct Payload<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    k: Option<char>,
    #[serde(skip_serializing_if = "Option::is_none")]
    b: Option<u64>,
    t: u64,
    ph: usize,
    #[serde(skip_serializing_if = "str::is_empty")]
    pad: &'a str,
}

/// A payload with a stamp and `pad` bytes of filler, as the JSON value a request carries
/// (serialized once, never re-parsed).
pub fn payload(sent_us: u64, phase: usize, kind: Option<(char, u64)>, pad: usize) -> Box<RawValue> {
    use std::sync::LazyLock;
    /// Filler to slice from, so a payload costs one allocation.
    static FILLER: LazyLock<String> = LazyLock::new(|| "x".repeat(4096));
    let long;
    let pad = match FILLER.get(..pad) {
        Some(p) => p,
        None => {
            long = "x".repeat(pad);
            &long
        }
    };
    let p = Payload {
        k: kind.map(|(k, _)| k),
        b: kind.map(|(_, b)| b),
        t: sent_us,
        ph: phase,
        pad,
    };
    // Numbers, a char and x's: serializing cannot fail.
    serde_json::value::to_raw_value(&p).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// Meridian protocol v1 frames.
pub mod meridian {
    use super::Incoming;

    use meridian_protocol::{Request, RequestId, RoomId, UserId};
    use serde_json::value::RawValue;

    /// `hello` with a token.
    pub fn hello(id: u64, token: &str) -> String {
        Request::Hello {
            token: Some(token.to_owned()),
            resume: Vec::new(),
        }
        .encode(&RequestId::Num(id))
    }

    /// `join` a room.
    pub fn join(id: u64, room: RoomId) -> String {
        Request::Join { room }.encode(&RequestId::Num(id))
    }

    /// `publish` a JSON payload to a room.
    pub fn publish(id: u64, room: RoomId, data: Box<RawValue>) -> String {
        Request::Publish {
            room,
            data,
            idempotency_key: None,
        }
        .encode(&RequestId::Num(id))
    }

    /// `send` a JSON payload to a user.
    pub fn send(id: u64, to: UserId, data: Box<RawValue>) -> String {
        Request::Send { to, data }.encode(&RequestId::Num(id))
    }

    /// Classifies a frame from a node.
    pub fn classify(text: &str) -> Incoming<'_> {
        // The node writes `type` first; fall back to a parse for anything unexpected.
        if let Some(rest) = text.strip_prefix(r#"{"type":""#) {
            if rest.starts_with("message\"") {
                return Incoming::Delivery {
                    direct: false,
                    body: text,
                };
            }
            if rest.starts_with("direct\"") {
                return Incoming::Delivery {
                    direct: true,
                    body: text,
                };
            }
            if rest.starts_with("joined\"")
                || rest.starts_with("left\"")
                || rest.starts_with("state_changed\"")
            {
                return Incoming::Other;
            }
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
            return Incoming::Other;
        };
        match v["type"].as_str() {
            Some("ok") => match v["id"].as_u64() {
                Some(id) => Incoming::Reply {
                    id,
                    ok: true,
                    error: None,
                },
                None => Incoming::Other,
            },
            Some("error") => match v.get("id").map(|i| i.as_u64()) {
                Some(Some(id)) => Incoming::Reply {
                    id,
                    ok: false,
                    error: v["code"].as_str().map(str::to_owned),
                },
                _ => Incoming::Refused(v["code"].as_str().unwrap_or("error").to_owned()),
            },
            Some("reconnect") => Incoming::Refused(format!(
                "reconnect:{}:{}",
                v["reason"].as_str().unwrap_or(""),
                v["after_ms"].as_u64().unwrap_or(0)
            )),
            Some("message") => Incoming::Delivery {
                direct: false,
                body: text,
            },
            Some("direct") => Incoming::Delivery {
                direct: true,
                body: text,
            },
            _ => Incoming::Other,
        }
    }
}

/// Socket.IO v5 packets inside Engine.IO v4 `message` packets (`4` + Socket.IO packet), as sent
/// on a WebSocket transport (one packet per frame).
pub mod socketio {
    use super::Incoming;

    /// Engine.IO `pong`, the answer to the server's `ping` (`2`).
    pub const PONG: &str = "3";

    /// Socket.IO CONNECT to the main namespace with an auth object (`40{...}`).
    pub fn connect(token: &str) -> String {
        format!(r#"40{{"token":"{token}"}}"#)
    }

    /// An EVENT with an ack id: `42<id>["name",<arg>]`.
    pub fn event(id: u64, name: &str, arg: &str) -> String {
        format!(r#"42{id}["{name}",{arg}]"#)
    }

    /// `join` a room (server.js replies through the ack).
    pub fn join(id: u64, room: &str) -> String {
        event(id, "join", &format!(r#""{room}""#))
    }

    /// `publish` to a room.
    pub fn publish(id: u64, room: &str, data: &str) -> String {
        event(
            id,
            "publish",
            &format!(r#"{{"room":"{room}","data":{data}}}"#),
        )
    }

    /// `send` to a user.
    pub fn send(id: u64, to: &str, data: &str) -> String {
        event(id, "send", &format!(r#"{{"to":"{to}","data":{data}}}"#))
    }

    /// Classifies a frame from a Socket.IO server.
    pub fn classify(text: &str) -> Incoming<'_> {
        let b = text.as_bytes();
        match b.first() {
            Some(b'2') if b.len() == 1 => return Incoming::Ping,
            Some(b'0') => return Incoming::Other, // Engine.IO open: wait for the connect reply
            Some(b'1') => return Incoming::Refused("engine.io close".into()),
            Some(b'4') => {}
            _ => return Incoming::Other,
        }
        match b.get(1) {
            Some(b'0') => Incoming::Connected,
            Some(b'1') => Incoming::Refused("disconnected by server".into()),
            Some(b'4') => Incoming::Refused(format!("connect_error {}", &text[2..])),
            Some(b'2') => {
                let rest = &text[2..];
                if rest.starts_with(r#"["message""#) {
                    Incoming::Delivery {
                        direct: false,
                        body: text,
                    }
                } else if rest.starts_with(r#"["direct""#) {
                    Incoming::Delivery {
                        direct: true,
                        body: text,
                    }
                } else {
                    Incoming::Other
                }
            }
            Some(b'3') => {
                let rest = &text[2..];
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let Ok(id) = rest[..digits].parse() else {
                    return Incoming::Other;
                };
                let args = &rest[digits..];
                // server.js acks `[{"ok":true}]` or `[{"error":"code"}]`.
                if args.contains(r#""error""#) {
                    let error = serde_json::from_str::<serde_json::Value>(args)
                        .ok()
                        .and_then(|v| v[0]["error"].as_str().map(str::to_owned))
                        .or_else(|| Some(args.to_owned()));
                    Incoming::Reply {
                        id,
                        ok: false,
                        error,
                    }
                } else {
                    Incoming::Reply {
                        id,
                        ok: true,
                        error: None,
                    }
                }
            }
            _ => Incoming::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let p = payload(123_456, 3, Some(('o', 9)), 8);
        let p = p.get();
        assert_eq!(p, r#"{"k":"o","b":9,"t":123456,"ph":3,"pad":"xxxxxxxx"}"#);
        let v: serde_json::Value = serde_json::from_str(p).unwrap();
        assert_eq!(v["t"], 123_456);
        let frame = format!(r#"{{"type":"direct","from":"alice","data":{p}}}"#);
        assert_eq!(
            stamp(&frame),
            Some(Stamp {
                sent_us: 123_456,
                phase: 3,
                burst: 9,
                kind: b'o'
            })
        );
        let plain = payload(5, 0, None, 0);
        let plain = plain.get();
        assert_eq!(plain, r#"{"t":5,"ph":0}"#);
        assert_eq!(
            payload(1, 0, None, 5000).get().len(),
            r#"{"t":1,"ph":0,"pad":""}"#.len() + 5000
        );
        let socketio = format!(r#"42["message",{{"room":"r","from":"u","data":{plain}}}]"#);
        assert_eq!(
            stamp(&socketio),
            Some(Stamp {
                sent_us: 5,
                phase: 0,
                burst: 0,
                kind: 0
            })
        );
        assert_eq!(stamp(r#"{"type":"joined"}"#), None);
    }

    #[test]
    fn meridian_frames() {
        use meridian::*;
        assert!(matches!(
            classify(
                r#"{"type":"message","room":"r","from":"u","data":{"t":1,"ph":0},"seq":3,"epoch":"e"}"#
            ),
            Incoming::Delivery { direct: false, .. }
        ));
        assert_eq!(
            classify(r#"{"type":"ok","id":7,"result":{}}"#),
            Incoming::Reply {
                id: 7,
                ok: true,
                error: None
            }
        );
        assert_eq!(
            classify(r#"{"type":"error","id":8,"code":"rate_limited","message":"x"}"#),
            Incoming::Reply {
                id: 8,
                ok: false,
                error: Some("rate_limited".into())
            }
        );
        assert_eq!(
            classify(r#"{"type":"reconnect","after_ms":3,"reason":"slow_consumer"}"#),
            Incoming::Refused("reconnect:slow_consumer:3".into())
        );
        assert_eq!(classify(r#"{"type":"joined","room":"r"}"#), Incoming::Other);
        let Incoming::Refused(why) =
            classify(r#"{"type":"reconnect","after_ms":250,"reason":"overloaded"}"#)
        else {
            panic!("not a refusal")
        };
        assert_eq!(
            super::reconnect_after(&why),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(super::reconnect_after("token_invalid"), None);
        let room = meridian_protocol::RoomId::new("room").unwrap();
        let frame = publish(3, room.clone(), payload(1, 0, None, 0));
        assert_eq!(
            frame,
            r#"{"id":3,"op":"publish","room":"room","data":{"t":1,"ph":0}}"#
        );
        let bob = meridian_protocol::UserId::new("bob").unwrap();
        let s: serde_json::Value =
            serde_json::from_str(&send(4, bob, payload(2, 1, None, 0))).unwrap();
        assert_eq!(
            (s["op"].as_str(), s["to"].as_str()),
            (Some("send"), Some("bob"))
        );
        assert_eq!(join(5, room), r#"{"id":5,"op":"join","room":"room"}"#);
        assert_eq!(hello(1, "tok"), r#"{"id":1,"op":"hello","token":"tok"}"#);
    }

    #[test]
    fn socketio_frames() {
        use socketio::*;
        assert_eq!(classify("2"), Incoming::Ping);
        assert_eq!(
            classify(r#"0{"sid":"x","pingInterval":25000}"#),
            Incoming::Other
        );
        assert_eq!(classify(r#"40{"sid":"abc"}"#), Incoming::Connected);
        assert!(matches!(
            classify(r#"44{"message":"token_invalid"}"#),
            Incoming::Refused(_)
        ));
        assert!(matches!(
            classify(r#"42["message",{"room":"r","from":"u","data":{"t":5,"ph":1}}]"#),
            Incoming::Delivery { direct: false, .. }
        ));
        assert!(matches!(
            classify(r#"42["direct",{"from":"u","data":{"t":5}}]"#),
            Incoming::Delivery { direct: true, .. }
        ));
        assert_eq!(classify(r#"42["joined",{"room":"r"}]"#), Incoming::Other);
        assert_eq!(
            classify(r#"4312[{"ok":true}]"#),
            Incoming::Reply {
                id: 12,
                ok: true,
                error: None
            }
        );
        assert_eq!(
            classify(r#"4313[{"error":"forbidden"}]"#),
            Incoming::Reply {
                id: 13,
                ok: false,
                error: Some("forbidden".into())
            }
        );
        assert_eq!(join(5, "lobby"), r#"425["join","lobby"]"#);
        assert_eq!(connect("tok"), r#"40{"token":"tok"}"#);
        assert_eq!(
            send(6, "bob", "{}"),
            r#"426["send",{"to":"bob","data":{}}]"#
        );
    }
}
