//! RTT report tokens: the credential a client must hold to feed the RTT table (`POST /v1/rtt`).
//!
//! `GET /v1/route` hands the asking client a token that names its own network (the RTT
//! aggregation prefix of the address that asked: /24 for IPv4, /48 for IPv6 by default) and an
//! expiry, signed with HMAC-SHA256 under `rtt.report_key`, a secret shared by every router of
//! a mesh (so a token from one router is good at another). A report counts only for the
//! token's network, and only when it comes from an address inside that network: a token
//! cannot be used to speak for anyone else, and a forged or altered one fails the MAC.
//!
//! The format is opaque to clients: `r1-<family 4|6>-<network start, hex>-<prefix length>-
//! <expiry, unix seconds>-<MAC, 64 hex digits>`. [`sign`] and [`verify`] are pure functions of
//! their arguments (the fuzz target's entry point is [`verify`]).

use ring::hmac;

use crate::rtt::Prefix;

/// Longest token [`verify`] looks at; anything longer is refused before any work.
pub const MAX_TOKEN_LEN: usize = 160;

/// Why a token was refused. Every variant ends as `401 bad_rtt_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token of this format (or longer than [`MAX_TOKEN_LEN`]).
    #[error("not an RTT report token")]
    Malformed,
    /// The MAC does not match: forged, altered, or signed with another key.
    #[error("the RTT report token's signature does not match")]
    BadSignature,
    /// Past its expiry.
    #[error("the RTT report token has expired; ask /v1/route for a new one")]
    Expired,
}

/// What a valid token grants: reports for `network` until `expires_unix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The client network the reports count for.
    pub network: Prefix,
    /// Unix seconds after which the token is refused.
    pub expires_unix: u64,
}

/// The HMAC key of `secret` (the `rtt.report_key` text, used as bytes).
pub fn key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

fn signed_part(grant: &Grant) -> String {
    format!(
        "r1-{}-{:x}-{}-{}",
        if grant.network.v6 { 6 } else { 4 },
        grant.network.start,
        grant.network.len,
        grant.expires_unix
    )
}

/// The token granting `grant`.
pub fn sign(key: &hmac::Key, grant: &Grant) -> String {
    let mut token = signed_part(grant);
    let tag = hmac::sign(key, token.as_bytes());
    token.push('-');
    for byte in tag.as_ref() {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}

/// The grant of `token` if it is well formed, signed with `key` and not expired at `now_unix`.
/// Never panics, whatever the input.
pub fn verify(key: &hmac::Key, token: &str, now_unix: u64) -> Result<Grant, TokenError> {
    if token.len() > MAX_TOKEN_LEN || !token.is_ascii() {
        return Err(TokenError::Malformed);
    }
    let (signed, tag_hex) = token.rsplit_once('-').ok_or(TokenError::Malformed)?;
    let mut parts = signed.split('-');
    let (Some("r1"), Some(family), Some(start), Some(len), Some(expires), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TokenError::Malformed);
    };
    let v6 = match family {
        "4" => false,
        "6" => true,
        _ => return Err(TokenError::Malformed),
    };
    let start = u128::from_str_radix(start, 16).map_err(|_| TokenError::Malformed)?;
    let len: u8 = len.parse().map_err(|_| TokenError::Malformed)?;
    let expires_unix: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    let bits = if v6 { 128 } else { 32 };
    if len > bits || (!v6 && start > u128::from(u32::MAX)) {
        return Err(TokenError::Malformed);
    }
    if tag_hex.len() != 64 {
        return Err(TokenError::Malformed);
    }
    let mut tag = [0u8; 32];
    for (i, byte) in tag.iter_mut().enumerate() {
        let pair = tag_hex.get(2 * i..2 * i + 2).ok_or(TokenError::Malformed)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| TokenError::Malformed)?;
    }
    // The MAC covers the text as sent; re-rendering the parsed grant must give the same text,
    // so that two spellings of one grant (leading zeros, say) cannot both be valid.
    let grant = Grant {
        network: Prefix { v6, start, len },
        expires_unix,
    };
    if signed_part(&grant) != signed {
        return Err(TokenError::Malformed);
    }
    hmac::verify(key, signed.as_bytes(), &tag).map_err(|_| TokenError::BadSignature)?;
    if now_unix > expires_unix {
        return Err(TokenError::Expired);
    }
    Ok(grant)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> Grant {
        Grant {
            network: Prefix::of(text.parse().unwrap(), 24, 48),
            expires_unix: 1_000,
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let key = key("0123456789abcdef0123456789abcdef");
        for address in ["192.0.2.77", "2001:db8:5:6::1"] {
            let g = grant(address);
            let token = sign(&key, &g);
            assert!(token.len() <= MAX_TOKEN_LEN, "{token}");
            assert_eq!(verify(&key, &token, 999), Ok(g));
            assert_eq!(verify(&key, &token, 1_000), Ok(g));
            assert_eq!(verify(&key, &token, 1_001), Err(TokenError::Expired));
        }
    }

    #[test]
    fn forged_altered_and_garbage_tokens_are_refused() {
        let key = key("0123456789abcdef0123456789abcdef");
        let other = super::key("another-key-another-key-another-k");
        let token = sign(&key, &grant("192.0.2.1"));
        assert_eq!(verify(&other, &token, 0), Err(TokenError::BadSignature));
        // Another network or a later expiry under the same MAC.
        let moved = token.replacen("-c0000200-", "-c0000300-", 1);
        assert_ne!(moved, token);
        assert_eq!(verify(&key, &moved, 0), Err(TokenError::BadSignature));
        let later = token.replacen("-1000-", "-9000-", 1);
        assert_eq!(verify(&key, &later, 0), Err(TokenError::BadSignature));
        let padded = token.replacen("-c0000200-", "-0c0000200-", 1);
        assert_eq!(verify(&key, &padded, 0), Err(TokenError::Malformed));
        for garbage in [
            "",
            "-",
            "r1",
            "r1-4-0-0-0-",
            "r1-5-c00002-24-1000-00",
            "r1-4-ffffffffff-24-1000-00",
            "r1-4-c00002-33-1000-00",
            "r1-4-c00002-24-1000-zz",
            "r1-4-c00002-24--1-aa",
            "r1-4-c00002-24-1000-é",
        ] {
            assert_eq!(
                verify(&key, garbage, 0),
                Err(TokenError::Malformed),
                "{garbage}"
            );
        }
        let long = "r".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(verify(&key, &long, 0), Err(TokenError::Malformed));
    }
}
