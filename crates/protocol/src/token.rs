//! Connection tokens: HS256 JWTs signed with the mesh's shared secret, verified statelessly by
//! every node.
//!
//! Claims: `sub` (user id), `exp` (seconds since the epoch), and `rooms`, the room patterns the
//! user may join, each saying whether the user may publish there. A pattern is either an exact
//! room id or a prefix ending in `*` (`"lobby/*"`; `"*"` allows every room).

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, RoomId, UserId};

/// One grant of a token: a room pattern and whether publishing is allowed there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomGrant {
    /// Exact room id, or a prefix ending in `*`.
    pub pattern: String,
    /// Whether `publish` and `state_set`/`state_delete` are allowed in matching rooms.
    #[serde(default)]
    pub publish: bool,
}

impl RoomGrant {
    fn matches(&self, room: &RoomId) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => room.as_str().starts_with(prefix),
            None => self.pattern == room.as_str(),
        }
    }
}

/// The claims Meridian reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: UserId,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Room grants.
    #[serde(default)]
    pub rooms: Vec<RoomGrant>,
    /// Not before, seconds since the Unix epoch: a token whose `nbf` is more than
    /// [`CLOCK_LEEWAY_SECS`] ahead of the node's clock is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch: a token "issued" more than
    /// [`CLOCK_LEEWAY_SECS`] in the future is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Whether the user may contact users it shares no room with: `send` to them and see
    /// their `presence`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dm: bool,
}

/// How far ahead of a node's clock a token's `nbf` or `iat` may be (clock skew between the
/// issuer and the node).
pub const CLOCK_LEEWAY_SECS: u64 = 60;

impl Claims {
    /// Whether the token allows joining `room`.
    pub fn may_join(&self, room: &RoomId) -> bool {
        self.rooms.iter().any(|g| g.matches(room))
    }
    /// Whether the token allows publishing in `room`.
    pub fn may_publish(&self, room: &RoomId) -> bool {
        self.rooms.iter().any(|g| g.publish && g.matches(room))
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token's `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` lies more than [`CLOCK_LEEWAY_SECS`] in the future.
    #[error("token not valid yet ({0} is in the future)")]
    NotYetValid(&'static str),
    /// Bad signature, wrong algorithm, malformed, or bad claims.
    #[error("token invalid: {0}")]
    Invalid(String),
}

impl TokenError {
    /// The client-facing error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Expired => ErrorCode::TokenExpired,
            Self::Invalid(_) | Self::NotYetValid(_) => ErrorCode::TokenInvalid,
        }
    }
}

/// Verifies tokens with one shared secret. Cheap to clone the keys once per node.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier")
    }
}

impl TokenVerifier {
    /// A verifier for HS256 tokens signed with `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Checks signature, algorithm, expiry, `nbf` and `iat`, and returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.verify_at(token, now)
    }

    /// [`TokenVerifier::verify`] at `now` (seconds since the epoch) for the time claims
    /// other than `exp` (the JWT library reads the clock for `exp` itself).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > 8192 {
            return Err(TokenError::Invalid("token longer than 8192 bytes".into()));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })?;
        let horizon = now.saturating_add(CLOCK_LEEWAY_SECS);
        if claims.nbf.is_some_and(|t| t > horizon) {
            return Err(TokenError::NotYetValid("nbf"));
        }
        if claims.iat.is_some_and(|t| t > horizon) {
            return Err(TokenError::NotYetValid("iat"));
        }
        Ok(claims)
    }
}

/// Signs a token (for the `meridian token` command, tests and the dev region).
pub fn issue(secret: &[u8], claims: &Claims) -> Result<String, TokenError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| TokenError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: UserId::new("alice").unwrap(),
            exp,
            rooms: vec![
                RoomGrant {
                    pattern: "lobby/*".into(),
                    publish: true,
                },
                RoomGrant {
                    pattern: "stage".into(),
                    publish: false,
                },
            ],
            nbf: None,
            iat: None,
            dm: false,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn round_trip_and_scopes() {
        let t = issue(b"s3cret", &claims(now() + 60)).unwrap();
        let c = TokenVerifier::new(b"s3cret").verify(&t).unwrap();
        assert_eq!(c.sub.as_str(), "alice");
        let r = |s: &str| RoomId::new(s).unwrap();
        assert!(c.may_join(&r("lobby/1")) && c.may_publish(&r("lobby/1")));
        assert!(c.may_join(&r("stage")) && !c.may_publish(&r("stage")));
        assert!(!c.may_join(&r("stage2")) && !c.may_join(&r("other")));
    }

    #[test]
    fn forged_and_expired_are_refused() {
        let t = issue(b"other", &claims(now() + 60)).unwrap();
        assert!(matches!(
            TokenVerifier::new(b"s3cret").verify(&t),
            Err(TokenError::Invalid(_))
        ));
        let t = issue(b"s3cret", &claims(now() - 1)).unwrap();
        assert_eq!(
            TokenVerifier::new(b"s3cret").verify(&t),
            Err(TokenError::Expired)
        );
        assert!(matches!(
            TokenVerifier::new(b"s3cret").verify("a.b.c"),
            Err(TokenError::Invalid(_))
        ));
        // A token from the future (beyond the leeway) is refused; within it, accepted.
        let verifier = TokenVerifier::new(b"s3cret");
        for (nbf, iat) in [(Some(now() + 120), None), (None, Some(now() + 120))] {
            let t = issue(
                b"s3cret",
                &Claims {
                    nbf,
                    iat,
                    ..claims(now() + 600)
                },
            )
            .unwrap();
            let e = verifier.verify(&t).unwrap_err();
            assert!(matches!(e, TokenError::NotYetValid(_)), "{e:?}");
            assert_eq!(e.code(), ErrorCode::TokenInvalid);
        }
        let t = issue(
            b"s3cret",
            &Claims {
                nbf: Some(now() + 30),
                iat: Some(now() + 30),
                dm: true,
                ..claims(now() + 600)
            },
        )
        .unwrap();
        assert!(verifier.verify(&t).unwrap().dm);
        // alg=none is refused.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(TokenVerifier::new(b"s3cret").verify(none).is_err());
    }
}
