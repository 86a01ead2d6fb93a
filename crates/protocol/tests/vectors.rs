//! The wire test vectors in `tests/vectors/` (shared with the JavaScript SDK's tests) checked
//! against this crate: request frames parse (or fail with the listed code), room and other
//! events encode byte for byte as listed, error replies and their retryability match, and the
//! resume entries a client sends are valid `hello.resume` entries.

use std::path::PathBuf;

use meridian_protocol::{
    ErrorCode, Event, JoinResult, LeftReason, OriginPosition, Reply, Request, RequestId,
    ResumedRoom, RoomEventFrame, RoomId, UserId,
};
use serde_json::{json, Value};

fn load(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn op_name(request: &Request) -> String {
    let debug = format!("{request:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn valid_request_frames_parse_as_their_op() {
    let vectors = load("requests.json");
    let valid = vectors["valid"].as_array().unwrap();
    assert!(valid.len() >= 10);
    for v in valid {
        let mut frame = v["frame"].clone();
        frame["id"] = json!(7);
        let text = frame.to_string();
        let (id, request) = Request::parse(&text)
            .unwrap_or_else(|e| panic!("{text}: {} {}", e.code.as_str(), e.message));
        assert_eq!(id, RequestId::Num(7));
        assert_eq!(op_name(&request), v["op"].as_str().unwrap(), "{text}");
        if let Request::Hello { resume, .. } = &request {
            assert_eq!(resume.len(), 1);
            assert_eq!(resume[0].origins.len(), 2);
        }
    }
}

#[test]
fn invalid_request_frames_fail_with_the_listed_code() {
    let vectors = load("requests.json");
    for v in vectors["invalid"].as_array().unwrap() {
        let text = v["frame"].as_str().unwrap();
        let Err(e) = Request::parse(text) else {
            panic!("{text} must be refused");
        };
        assert_eq!(
            e.code.as_str(),
            v["code"].as_str().unwrap(),
            "{text}: {}",
            e.message
        );
        assert_eq!(e.id.is_some(), v["has_id"].as_bool().unwrap(), "{text}");
    }
}

fn room(v: &Value) -> RoomId {
    RoomId::new(v["room"].as_str().unwrap()).unwrap()
}

fn user(v: &Value, field: &str) -> UserId {
    UserId::new(v[field].as_str().unwrap()).unwrap()
}

#[test]
fn room_events_encode_byte_for_byte() {
    let vectors = load("events.json");
    for v in vectors["room_events"].as_array().unwrap() {
        let b = &v["build"];
        let raw = |field: &str| serde_json::value::to_raw_value(&b[field]).unwrap();
        let mut head = match b["kind"].as_str().unwrap() {
            "message" => RoomEventFrame::message(&room(b), &user(b, "from"), &raw("data")),
            "joined" => {
                RoomEventFrame::joined(&room(b), &user(b, "user"), b["region"].as_str().unwrap())
            }
            "left" => {
                let reason: LeftReason = serde_json::from_value(b["reason"].clone()).unwrap();
                RoomEventFrame::left(
                    &room(b),
                    &user(b, "user"),
                    b["region"].as_str().unwrap(),
                    reason,
                )
            }
            "state_changed" => {
                let value = (!b["value"].is_null()).then(|| raw("value"));
                RoomEventFrame::state_changed(
                    &room(b),
                    b["key"].as_str().unwrap(),
                    value.as_deref(),
                    &user(b, "by"),
                )
                .with_version(b["version"].as_u64().unwrap())
            }
            other => panic!("unknown kind {other}"),
        };
        if !b["origin"].is_null() {
            let origin: OriginPosition = serde_json::from_value(b["origin"].clone()).unwrap();
            head = head.with_origin(&origin);
        }
        let frame = head.finish(b["seq"].as_u64().unwrap(), b["epoch"].as_str().unwrap());
        assert_eq!(frame, v["frame"].as_str().unwrap());
    }
}

#[test]
fn other_events_encode_byte_for_byte() {
    let vectors = load("events.json");
    for v in vectors["other_events"].as_array().unwrap() {
        let b = &v["build"];
        let data = serde_json::value::to_raw_value(&b["data"]).unwrap();
        let from = UserId::new(b["from"].as_str().unwrap_or("x")).unwrap();
        let code: Option<ErrorCode> = serde_json::from_value(b["code"].clone()).ok();
        let event = match b["kind"].as_str().unwrap() {
            "direct" => Event::Direct {
                from: &from,
                data: &data,
            },
            "reconnect" => Event::Reconnect {
                after_ms: b["after_ms"].as_u64().unwrap(),
                reason: b["reason"].as_str().unwrap(),
                url: b["url"].as_str(),
                region: b["region"].as_str(),
            },
            "error" => Event::Error {
                code: code.unwrap(),
                message: b["message"].as_str().unwrap(),
            },
            other => panic!("unknown kind {other}"),
        };
        assert_eq!(event.encode(), v["frame"].as_str().unwrap());
    }
}

#[test]
fn error_replies_and_retryability_match_every_code() {
    let vectors = load("errors.json");
    let replies = vectors["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 22, "one vector per protocol error code");
    for v in replies {
        let code: ErrorCode = serde_json::from_value(v["code"].clone()).unwrap();
        assert_eq!(
            code.is_retryable(),
            v["retryable"].as_bool().unwrap(),
            "{code:?}"
        );
        let frame: Value = serde_json::from_str(v["frame"].as_str().unwrap()).unwrap();
        let id = RequestId::Num(frame["id"].as_u64().unwrap());
        let reply: Reply<'_, ()> = Reply::Error {
            id: Some(&id),
            code,
            message: "m",
        };
        assert_eq!(reply.encode(), v["frame"].as_str().unwrap());
    }
}

#[test]
fn resume_entries_a_client_sends_are_valid_hello_entries() {
    let vectors = load("resume.json");
    let mut checked = 0;
    for scenario in vectors["scenarios"].as_array().unwrap() {
        for step in scenario["steps"].as_array().unwrap() {
            if let Some(entry) = step.get("resume") {
                let hello = json!({"id": 1, "op": "hello", "token": "t", "resume": [entry]});
                let (_, request) = Request::parse(&hello.to_string())
                    .unwrap_or_else(|e| panic!("{entry}: {}", e.message));
                let Request::Hello { resume, .. } = request else {
                    panic!("not a hello");
                };
                assert_eq!(resume[0].seq, entry["seq"].as_u64().unwrap());
                assert_eq!(
                    resume[0].origins.len(),
                    entry["origins"].as_array().map_or(0, Vec::len)
                );
                checked += 1;
            }
            if let Some(event) = step.get("event") {
                // Every event in a scenario is a well-formed room event frame.
                for field in ["type", "room", "seq", "epoch"] {
                    assert!(!event[field].is_null(), "{event}: {field}");
                }
            }
        }
    }
    assert!(checked >= 7);
}

#[test]
fn resumed_entries_are_typed_hello_results() {
    let vectors = load("resume.json");
    let mut checked = 0;
    for scenario in vectors["scenarios"].as_array().unwrap() {
        for step in scenario["steps"].as_array().unwrap() {
            if let Some(resumed) = step.get("resumed") {
                let entry = &resumed["entry"];
                let typed: ResumedRoom = serde_json::from_value(entry.clone())
                    .unwrap_or_else(|e| panic!("{entry}: {e}"));
                assert_eq!(typed.status(), entry["status"].as_str().unwrap());
                // What the node writes for it is the same JSON value.
                assert_eq!(&serde_json::to_value(&typed).unwrap(), entry);
                checked += 1;
            }
            if let Some(join) = step.get("join") {
                // The `join` result a client reads in that region.
                let mut result = join.clone();
                result["room"] = scenario["room"].clone();
                result["first"] = json!(true);
                let region = result.as_object_mut().unwrap().remove("region").unwrap();
                assert!(region.is_string());
                let typed: JoinResult = serde_json::from_value(result.clone()).unwrap();
                assert_eq!(typed.seq, join["seq"].as_u64().unwrap());
                if typed.origins.is_empty() {
                    result.as_object_mut().unwrap().remove("origins");
                }
                assert_eq!(serde_json::to_value(&typed).unwrap(), result);
                checked += 1;
            }
        }
    }
    assert!(checked >= 7, "{checked}");
}
