//! The events a receiver gets, and how they are stored in the outbox streams.
//!
//! An outbox entry (written by the region's Lua scripts, or [`crate::outbox::append`]) has the
//! fields `t` (kind), `g` (the producing region), `at` (Unix ms), and by kind `r` (room), `u`
//! (user), `why` (a `member.left` reason). The event id is `<region>.<partition>.<entry id>`:
//! unique per mesh, since only the producing region writes its outbox.

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EventKind {
    /// A room got its first member (mesh-wide).
    #[serde(rename = "room.occupied")]
    RoomOccupied,
    /// A room lost its last member (mesh-wide).
    #[serde(rename = "room.vacated")]
    RoomVacated,
    /// A user became a member of a room.
    #[serde(rename = "member.joined")]
    MemberJoined,
    /// A user stopped being a member (`reason`: `leave`, `disconnect`, `region_down`, …).
    #[serde(rename = "member.left")]
    MemberLeft,
    /// A user's first connection.
    #[serde(rename = "user.online")]
    UserOnline,
    /// A user's last connection closed.
    #[serde(rename = "user.offline")]
    UserOffline,
    /// Events this endpoint will never get: its backlog was full, or a batch gave up.
    #[serde(rename = "dropped")]
    Dropped,
}

impl EventKind {
    /// The wire name (`room.occupied`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoomOccupied => "room.occupied",
            Self::RoomVacated => "room.vacated",
            Self::MemberJoined => "member.joined",
            Self::MemberLeft => "member.left",
            Self::UserOnline => "user.online",
            Self::UserOffline => "user.offline",
            Self::Dropped => "dropped",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "room.occupied" => Self::RoomOccupied,
            "room.vacated" => Self::RoomVacated,
            "member.joined" => Self::MemberJoined,
            "member.left" => Self::MemberLeft,
            "user.online" => Self::UserOnline,
            "user.offline" => Self::UserOffline,
            "dropped" => Self::Dropped,
            _ => return None,
        })
    }
}

/// One event as a receiver gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique per mesh: deduplicate on it.
    pub id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// When it happened (the producing Redis' clock), Unix ms.
    pub at: u64,
    /// The region that produced it.
    pub region: String,
    /// The room (room and member events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The user (member and user events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Why a member left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many events were dropped (`dropped` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// The body of one POST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Same as the `Meridian-Webhook-Id` header: stable across retries.
    pub id: String,
    /// In order per room and per user.
    pub events: Vec<WebhookEvent>,
}

/// An outbox entry that cannot be an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed outbox entry {entry}: {problem}")]
pub struct MalformedEntry {
    /// The stream entry id.
    pub entry: String,
    /// What is wrong.
    pub problem: &'static str,
}

impl WebhookEvent {
    /// The event of outbox entry `entry` of `partition`, from its field/value pairs.
    pub fn from_entry(
        partition: u16,
        entry: &str,
        fields: &[(String, String)],
    ) -> Result<Self, MalformedEntry> {
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
        let bad = |problem| MalformedEntry {
            entry: entry.to_owned(),
            problem,
        };
        let kind = get("t")
            .and_then(|t| EventKind::parse(&t))
            .ok_or_else(|| bad("missing or unknown kind `t`"))?;
        let region = get("g").ok_or_else(|| bad("missing region `g`"))?;
        let at = get("at")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| bad("missing or non-numeric `at`"))?;
        let room = get("r");
        let user = get("u");
        let needs_room = matches!(
            kind,
            EventKind::RoomOccupied
                | EventKind::RoomVacated
                | EventKind::MemberJoined
                | EventKind::MemberLeft
        );
        let needs_user = matches!(
            kind,
            EventKind::MemberJoined
                | EventKind::MemberLeft
                | EventKind::UserOnline
                | EventKind::UserOffline
        );
        if needs_room && room.is_none() {
            return Err(bad("missing room `r`"));
        }
        if needs_user && user.is_none() {
            return Err(bad("missing user `u`"));
        }
        Ok(Self {
            id: format!("{region}.{partition}.{entry}"),
            kind,
            at,
            region,
            room,
            user,
            reason: get("why"),
            count: get("n").and_then(|n| n.parse().ok()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn parses_a_left_event_and_encodes_its_shape() {
        let e = WebhookEvent::from_entry(
            3,
            "17-0",
            &f(&[
                ("t", "member.left"),
                ("g", "eu"),
                ("at", "1700000000000"),
                ("r", "lobby"),
                ("u", "alice"),
                ("why", "region_down"),
            ]),
        )
        .unwrap();
        assert_eq!(e.id, "eu.3.17-0");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"id":"eu.3.17-0","type":"member.left","at":1700000000000,"region":"eu","room":"lobby","user":"alice","reason":"region_down"}"#
        );
    }

    #[test]
    fn refuses_malformed_entries() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("t", "nope"), ("g", "eu"), ("at", "1")],
            &[("t", "room.occupied"), ("at", "1"), ("r", "x")],
            &[("t", "room.occupied"), ("g", "eu"), ("at", "x"), ("r", "x")],
            &[("t", "room.occupied"), ("g", "eu"), ("at", "1")],
            &[("t", "user.online"), ("g", "eu"), ("at", "1")],
        ];
        for c in cases {
            let err = WebhookEvent::from_entry(0, "1-0", &f(c)).unwrap_err();
            assert_eq!(err.entry, "1-0");
        }
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            EventKind::RoomOccupied,
            EventKind::RoomVacated,
            EventKind::MemberJoined,
            EventKind::MemberLeft,
            EventKind::UserOnline,
            EventKind::UserOffline,
            EventKind::Dropped,
        ] {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }
}
