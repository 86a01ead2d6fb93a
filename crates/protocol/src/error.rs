//! Stable error codes: the `code` of an `error` reply. Clients switch on these; never rename one.

use serde::{Deserialize, Serialize};

/// Every error a client can be sent. The wire form is the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON, or a field is missing or has the wrong type.
    BadRequest,
    /// The `op` is not one this protocol version knows.
    UnknownOp,
    /// The frame is larger than the node's `max_frame_bytes`.
    FrameTooLarge,
    /// A binary frame was sent; v1 is JSON text only.
    BinaryNotSupported,
    /// A room or user id is malformed.
    InvalidId,
    /// A request other than `hello` came before a successful `hello`.
    NotAuthenticated,
    /// `hello` was sent twice on one connection.
    AlreadyAuthenticated,
    /// `hello` carried no token.
    TokenMissing,
    /// The token's signature, algorithm or claims are wrong.
    TokenInvalid,
    /// The token's `exp` is in the past.
    TokenExpired,
    /// The token does not allow joining this room.
    Forbidden,
    /// The token does not allow publishing (or writing state) in this room.
    PublishForbidden,
    /// The connection is not in the room it addressed.
    NotJoined,
    /// The connection is already in as many rooms as `max_rooms_per_connection`.
    TooManyRooms,
    /// The room already has `max_members_per_room` members.
    RoomFull,
    /// The connection sent more requests than its token bucket allows.
    RateLimited,
    /// `send` found no live connection of the target user.
    UserOffline,
    /// A compare-and-set on a room state key found another version.
    VersionConflict,
    /// A list in the request is longer than allowed (`presence` takes at most 100 users).
    /// Oversized payloads are caught earlier as `frame_too_large`.
    TooLarge,
    /// The regional state store (Redis) is unreachable; retrying later can help.
    Unavailable,
    /// The node is draining and takes no new sessions; reconnect elsewhere (sent as an `error`
    /// event to a connection that had not said `hello` yet).
    Draining,
    /// A bug on the server side; the message says more.
    Internal,
}

impl ErrorCode {
    /// The wire name, e.g. `"rate_limited"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownOp => "unknown_op",
            Self::FrameTooLarge => "frame_too_large",
            Self::BinaryNotSupported => "binary_not_supported",
            Self::InvalidId => "invalid_id",
            Self::NotAuthenticated => "not_authenticated",
            Self::AlreadyAuthenticated => "already_authenticated",
            Self::TokenMissing => "token_missing",
            Self::TokenInvalid => "token_invalid",
            Self::TokenExpired => "token_expired",
            Self::Forbidden => "forbidden",
            Self::PublishForbidden => "publish_forbidden",
            Self::NotJoined => "not_joined",
            Self::TooManyRooms => "too_many_rooms",
            Self::RoomFull => "room_full",
            Self::RateLimited => "rate_limited",
            Self::UserOffline => "user_offline",
            Self::VersionConflict => "version_conflict",
            Self::TooLarge => "too_large",
            Self::Unavailable => "unavailable",
            Self::Draining => "draining",
            Self::Internal => "internal",
        }
    }

    /// Whether the same request may succeed if retried unchanged later.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::RateLimited | Self::Unavailable | Self::Draining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_name_matches_serde() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::RateLimited,
            ErrorCode::UserOffline,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
