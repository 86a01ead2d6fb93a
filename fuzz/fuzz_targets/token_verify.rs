//! The token parser and validator. Two shapes of input:
//! - first byte even: the rest is the token text, as a client sends it in `hello` (reaches the
//!   JWT splitter, base64 and header decoding, and the signature check);
//! - first byte odd: the rest is a JWT payload (the claims JSON), signed here with the
//!   verifier's secret, so the fuzzer reaches the claims decoding (ids, grants, expiry) that
//!   only a correctly signed token reaches.
//!
//! Never a panic; an accepted token's claims hold a valid user id and an expiry in the future.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use meridian_protocol::token::TokenVerifier;
use meridian_protocol::{RoomId, UserId};
use std::sync::OnceLock;

const SECRET: &[u8] = b"fuzz-secret-0123456789";

fn verifier() -> &'static TokenVerifier {
    static VERIFIER: OnceLock<TokenVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| TokenVerifier::new(SECRET))
}

fn signed(payload: &[u8]) -> Option<String> {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .ok()?;
    Some(format!("{message}.{signature}"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        match std::str::from_utf8(rest) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        }
    } else {
        match signed(rest) {
            Some(token) => token,
            None => return,
        }
    };
    let Ok(claims) = verifier().verify(&token) else {
        return;
    };
    assert!(
        UserId::new(claims.sub.as_str()).is_ok(),
        "accepted sub {:?}",
        claims.sub
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    assert!(
        claims.exp > now,
        "accepted an expired token (exp {})",
        claims.exp
    );
    // Grant matching must not panic on any pattern.
    if let Ok(room) = RoomId::new("lobby/1") {
        let _ = claims.may_join(&room);
        let _ = claims.may_publish(&room);
    }
});
