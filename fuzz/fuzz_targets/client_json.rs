//! PLACEHOLDER for the client-JSON validator that the `node-input` helper is adding to
//! crates/protocol (issue 20, findings 1 and 2: one depth/size rule for every client JSON value,
//! `data` and state values, and only RFC 8259 JSON that a standard parser reads).
//!
//! TODO(coordinator): once that validator exists, call it here on every `data`/`value` that
//! `Request::parse` accepts and assert the rule it promises, e.g.:
//!
//! ```ignore
//! if let Some(value) = client_value(&request) {
//!     assert!(meridian_protocol::validate_client_json(value.get()).is_ok());   // the real name
//!     // and: what is accepted is readable by serde_json (no depth-limit error on re-read),
//!     // has no lone surrogate escapes, and is within the size rule.
//!     assert!(serde_json::from_str::<serde_json::Value>(value.get()).is_ok());
//! }
//! ```
//!
//! Until then it fuzzes what exists: the `serde_json` decode of a request (`Request::parse`)
//! and, for every value the parser accepts, that a value `serde_json` can read re-encodes to
//! text it reads back as the same value (what the node does with state values it stores).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_protocol::Request;
use serde_json::value::RawValue;

fn client_value(request: &Request) -> Option<&RawValue> {
    match request {
        Request::Publish { data, .. } | Request::Send { data, .. } => Some(data),
        Request::StateSet { value, .. } => Some(value),
        _ => None,
    }
}

fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("MERIDIAN_FUZZ_STRICT").is_some_and(|v| v == "1"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((_, request)) = Request::parse(text) else {
        return;
    };
    let Some(value) = client_value(&request) else {
        return;
    };
    // The raw value is a slice of the frame, forwarded byte for byte.
    assert!(text.contains(value.get()));
    // TODO(coordinator): once the validator refuses what serde_json cannot read (deeper than
    // 128 levels; lone surrogate escapes, which the raw-value scan lets through), make this
    // assertion unconditional. Until then it runs only with MERIDIAN_FUZZ_STRICT=1
    // (it fails within seconds on `main` at 35f3da1: issue 20, findings 1 and 2).
    let read = serde_json::from_str::<serde_json::Value>(value.get());
    if strict() {
        assert!(
            read.is_ok(),
            "accepted client JSON a JSON parser refuses: {read:?}"
        );
    }
    if let Ok(parsed) = read {
        let encoded = serde_json::to_string(&parsed).unwrap_or_default();
        let again: serde_json::Value =
            serde_json::from_str(&encoded).unwrap_or(serde_json::Value::Null);
        assert_eq!(parsed, again, "re-encoded value reads back differently");
    }
});
