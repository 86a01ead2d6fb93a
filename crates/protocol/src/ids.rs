//! Identifiers that reach Redis keys and JSON frames, validated once at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest room or user id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The id is empty.
    #[error("id is empty")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    #[error("id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// The id holds a character outside `A-Z a-z 0-9 - _ . : @ / = +`.
    #[error("id contains {0:?}; allowed are A-Z a-z 0-9 and - _ . : @ / = +")]
    BadChar(char),
}

fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    // Braces would break the Redis Cluster hash tag and `|` is our key separator, so the
    // alphabet is closed rather than open.
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:@/=+".contains(*c)))
    {
        Some(c) => Err(IdError::BadChar(c)),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate(&s)?;
                Ok(Self(s))
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A room's id: 1 to 128 bytes of `A-Z a-z 0-9 - _ . : @ / = +`.
    RoomId
);
id_type!(
    /// A user's id (the token's `sub`): same alphabet and length as [`RoomId`].
    UserId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_alphabet() {
        assert!(RoomId::new("lobby/eu:game-1_x.y@z=+").is_ok());
        assert!(UserId::new("a").is_ok());
    }

    #[test]
    fn rejects_bad_ids() {
        assert_eq!(RoomId::new(""), Err(IdError::Empty));
        assert_eq!(RoomId::new("x".repeat(129)), Err(IdError::TooLong));
        assert_eq!(RoomId::new("a{b}"), Err(IdError::BadChar('{')));
        assert_eq!(UserId::new("a|b"), Err(IdError::BadChar('|')));
        assert_eq!(UserId::new("a b"), Err(IdError::BadChar(' ')));
        assert!(serde_json::from_str::<RoomId>("\"a\\nb\"").is_err());
    }
}
