//! Batch signatures: `v1=<hex hmac_sha256(secret, "<timestamp>.<body>")>`, and the reference
//! verifier (tolerance window, replay refusal by batch id).

use std::collections::HashMap;

use ring::hmac;

/// Header carrying the batch id (stable across retries of the same batch).
pub const HEADER_ID: &str = "Meridian-Webhook-Id";
/// Header carrying the signing time, Unix seconds.
pub const HEADER_TIMESTAMP: &str = "Meridian-Webhook-Timestamp";
/// Header carrying `v1=<hex>`.
pub const HEADER_SIGNATURE: &str = "Meridian-Webhook-Signature";

/// The signature header value of `body` signed at `timestamp` (Unix seconds).
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1={}", hex(ctx.sign().as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The timestamp header is not a number.
    #[error("malformed timestamp header")]
    MalformedTimestamp,
    /// The signature header has no `v1=<hex>`.
    #[error("malformed signature header")]
    MalformedSignature,
    /// The timestamp is outside the tolerance window (a replay, or a skewed clock).
    #[error("timestamp outside the tolerance window")]
    Stale,
    /// The signature does not match the body and timestamp.
    #[error("signature mismatch")]
    BadSignature,
    /// A batch with this id was already accepted: a replay, or a retry after a lost answer
    /// (answer 2xx without processing it again).
    #[error("batch already accepted")]
    Replayed,
}

/// The reference verifier: checks the signature, that the timestamp is within `tolerance_s`
/// of now, and refuses a batch id it has already accepted (ids are remembered for twice the
/// tolerance, after which the timestamp check refuses them anyway).
#[derive(Debug)]
pub struct Verifier {
    secret: String,
    tolerance_s: u64,
    seen: HashMap<String, u64>,
}

impl Verifier {
    /// A verifier for `secret` accepting timestamps within `tolerance_s` seconds of now.
    pub fn new(secret: impl Into<String>, tolerance_s: u64) -> Self {
        Self {
            secret: secret.into(),
            tolerance_s,
            seen: HashMap::new(),
        }
    }

    /// Verifies one batch given its three headers and body at time `now` (Unix seconds), and
    /// remembers its id on success.
    pub fn verify(
        &mut self,
        id: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
        now: u64,
    ) -> Result<(), VerifyError> {
        let ts: u64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::MalformedTimestamp)?;
        if ts.abs_diff(now) > self.tolerance_s {
            return Err(VerifyError::Stale);
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, self.secret.as_bytes());
        let mut msg = Vec::with_capacity(body.len() + 24);
        msg.extend_from_slice(ts.to_string().as_bytes());
        msg.push(b'.');
        msg.extend_from_slice(body);
        // Several `v1=` values may be sent (secret rotation): any match is enough.
        let mut any = false;
        let mut ok = false;
        for part in signature.split([',', ' ']) {
            if let Some(hexed) = part.trim().strip_prefix("v1=") {
                let mac = unhex(hexed).ok_or(VerifyError::MalformedSignature)?;
                any = true;
                ok |= hmac::verify(&key, &msg, &mac).is_ok();
            }
        }
        if !any {
            return Err(VerifyError::MalformedSignature);
        }
        if !ok {
            return Err(VerifyError::BadSignature);
        }
        let horizon = now.saturating_sub(2 * self.tolerance_s);
        self.seen.retain(|_, at| *at >= horizon);
        if self.seen.contains_key(id) {
            return Err(VerifyError::Replayed);
        }
        self.seen.insert(id.to_owned(), now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // python3: hmac.new(b'whsec', b'1700000000.{}', hashlib.sha256).hexdigest()
        let sig = sign("whsec", 1_700_000_000, b"{}");
        assert_eq!(
            sig,
            "v1=7d44587dddbaf4c7f70fef20f48cd594834ffea1641e3ac227b84408298738af"
        );
        assert_ne!(sig, sign("whsec", 1_700_000_001, b"{}"));
    }

    #[test]
    fn verifies_and_refuses_a_replay() {
        let mut v = Verifier::new("s3cret", 300);
        let sig = sign("s3cret", 1000, b"body");
        assert_eq!(v.verify("b1", "1000", &sig, b"body", 1010), Ok(()));
        assert_eq!(
            v.verify("b1", "1000", &sig, b"body", 1011),
            Err(VerifyError::Replayed)
        );
    }

    #[test]
    fn refuses_bad_input() {
        let mut v = Verifier::new("s3cret", 300);
        let sig = sign("s3cret", 1000, b"body");
        assert_eq!(
            v.verify("b", "1000", &sig, b"bodY", 1000),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            v.verify("b", "1000", &sign("other", 1000, b"body"), b"body", 1000),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            v.verify("b", "1000", &sig, b"body", 2000),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            v.verify("b", "x", &sig, b"body", 1000),
            Err(VerifyError::MalformedTimestamp)
        );
        assert_eq!(
            v.verify("b", "1000", "v1=zz", b"body", 1000),
            Err(VerifyError::MalformedSignature)
        );
        assert_eq!(
            v.verify("b", "1000", "sha=00", b"body", 1000),
            Err(VerifyError::MalformedSignature)
        );
        assert_eq!(
            v.verify("b", "1000", "v1=abc", b"body", 1000),
            Err(VerifyError::MalformedSignature)
        );
        // A multi-byte character must not panic the hex decoder.
        assert_eq!(
            v.verify("b", "1000", "v1=é0", b"body", 1000),
            Err(VerifyError::MalformedSignature)
        );
    }
}
