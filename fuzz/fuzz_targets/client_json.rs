//! The client JSON rule (`meridian_protocol::json_rules`, issue 20 findings 1 and 2): every
//! `data`/`value` that `Request::parse` accepts passes the rule and is readable by a standard
//! JSON parser (serde_json: no recursion-limit error, no lone surrogate, finite numbers); the
//! rule itself never accepts what serde_json refuses; and the room event frame the node builds
//! around an accepted value carries it verbatim and is valid JSON holding the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_protocol::{Request, RoomEventFrame, RoomId, UserId};
use serde_json::value::RawValue;

fn client_value(request: &Request) -> Option<&RawValue> {
    match request {
        Request::Publish { data, .. } | Request::Send { data, .. } => Some(data),
        Request::StateSet { value, .. } => Some(value),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The rule alone: what it accepts, serde_json reads.
    if meridian_protocol::json_rules::check(text).is_ok() {
        assert!(
            serde_json::from_str::<serde_json::Value>(text).is_ok(),
            "json_rules accepted what serde_json refuses"
        );
    }
    let Ok((_, request)) = Request::parse(text) else {
        return;
    };
    let Some(value) = client_value(&request) else {
        return;
    };
    // The raw value is a slice of the frame, forwarded byte for byte.
    assert!(text.contains(value.get()));
    // Accepted means within the rule, and readable by a standard parser.
    assert!(
        meridian_protocol::json_rules::check(value.get()).is_ok(),
        "accepted client JSON outside the rule"
    );
    let read = serde_json::from_str::<serde_json::Value>(value.get());
    assert!(
        read.is_ok(),
        "accepted client JSON a JSON parser refuses: {read:?}"
    );
    // The event frame the node builds around the value (what every subscriber parses) carries
    // it verbatim, and is valid JSON whenever the value is.
    let (Ok(room), Ok(user)) = (RoomId::new("lobby"), UserId::new("alice")) else {
        return;
    };
    let (frame, field) = match &request {
        Request::StateSet { key, .. } => (
            RoomEventFrame::state_changed(&room, key, Some(value), &user),
            "value",
        ),
        _ => (RoomEventFrame::message(&room, &user, value), "data"),
    };
    let event = frame.finish(42, "k3v9x0qa");
    assert!(event.contains(value.get()), "value not carried verbatim");
    if let Ok(parsed) = read {
        let event: serde_json::Value = match serde_json::from_str(&event) {
            Ok(event) => event,
            Err(e) => panic!("event frame around a valid value is not JSON: {e}: {event}"),
        };
        assert_eq!(
            event.get(field),
            Some(&parsed),
            "value changed in the event frame"
        );
    }
});
