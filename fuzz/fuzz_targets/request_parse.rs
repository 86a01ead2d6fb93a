//! The client request parser: any WebSocket text frame a client can send goes through
//! `Request::parse` before anything else looks at it. It must never panic, and what it accepts
//! must hold only validated ids and bounded keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_protocol::{Request, RequestId, RoomId, UserId};

const MAX_KEY_LEN: usize = 128;

fn valid_room(room: &RoomId) {
    assert!(
        RoomId::new(room.as_str()).is_ok(),
        "accepted invalid room {room:?}"
    );
}

fn valid_user(user: &UserId) {
    assert!(
        UserId::new(user.as_str()).is_ok(),
        "accepted invalid user {user:?}"
    );
}

fn valid_key(key: &str) {
    assert!(
        !key.is_empty() && key.len() <= MAX_KEY_LEN,
        "accepted key of {} bytes",
        key.len()
    );
}

fuzz_target!(|data: &[u8]| {
    // The node hands only text frames (valid UTF-8) to the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (id, request) = match Request::parse(text) {
        Ok(parsed) => parsed,
        Err(error) => {
            if let Some(RequestId::Str(id)) = &error.id {
                assert!(id.len() <= 64, "error echoes a {}-byte id", id.len());
            }
            return;
        }
    };
    // A request is a JSON object (issue 20: a 14-element array used to map onto the fields).
    assert!(
        text.trim_start().starts_with('{'),
        "accepted a request that is not an object"
    );
    if let RequestId::Str(id) = &id {
        assert!(id.len() <= 64, "accepted a {}-byte id", id.len());
    }
    match &request {
        Request::Hello { resume, .. } => resume.iter().for_each(|r| valid_room(&r.room)),
        Request::Join { room } | Request::Leave { room } => valid_room(room),
        Request::Publish {
            room,
            idempotency_key,
            ..
        } => {
            valid_room(room);
            if let Some(key) = idempotency_key {
                valid_key(key);
            }
        }
        Request::Send { to, .. } => valid_user(to),
        Request::Members { room, after, .. } => {
            valid_room(room);
            if let Some(after) = after {
                valid_user(after);
            }
        }
        Request::Presence { users } => {
            assert!(users.len() <= 100);
            users.iter().for_each(valid_user);
        }
        Request::StateSet {
            room,
            key,
            if_version,
            ..
        }
        | Request::StateDelete {
            room,
            key,
            if_version,
        } => {
            valid_room(room);
            valid_key(key);
            assert!(if_version.is_none_or(|v| v <= i64::MAX as u64));
        }
        Request::StateGet { room, key } => {
            valid_room(room);
            if let Some(key) = key {
                valid_key(key);
            }
        }
        Request::Ping => {}
    }
});
