//! The `result` object of each op's `ok` reply (`docs/protocol.md` §4), one type per shape.
//!
//! The node serializes these into [`Reply::Ok`](crate::Reply) and clients deserialize them, so
//! a reply's shape has one owner. Fields are declared in the order the node has always written
//! them: for most results that is the alphabetical order of the `serde_json::Value` object the
//! node used to build, nested objects included (`sorted_origins`). Clients must not
//! depend on the order. Deserializing ignores fields a newer node may add.

use serde::{Deserialize, Serialize, Serializer};

use crate::{ErrorCode, OriginPosition, RoomId, StateEntry, UserId};

/// One member of a room, as `members` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The region whose node holds the user's connection(s).
    pub region: String,
    /// The user.
    pub user: UserId,
}

/// One user's online status, as `presence` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// Live connections.
    pub connections: u32,
    /// Whether the user has at least one live connection.
    pub online: bool,
    /// Regions holding those connections.
    pub regions: Vec<String>,
    /// The user.
    pub user: UserId,
}

/// Writes a list of [`OriginPosition`]s with each object's keys in alphabetical order
/// (`epoch`, `region`, `seq`), as results have always carried them; room events carry the
/// struct's own order (`region`, `epoch`, `seq`), which the shared vectors pin.
mod sorted_origins {
    use serde::{Serialize, Serializer};

    use crate::OriginPosition;

    #[derive(Serialize)]
    struct Sorted<'a> {
        epoch: &'a str,
        region: &'a str,
        seq: u64,
    }

    pub(super) fn serialize<S: Serializer>(
        origins: &[OriginPosition],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(origins.iter().map(|o| Sorted {
            epoch: &o.epoch,
            region: &o.region,
            seq: o.seq,
        }))
    }

    /// A `serialize_with` wrapper for a borrowed list.
    pub(super) struct Wrap<'a>(pub(super) &'a [OriginPosition]);

    impl Serialize for Wrap<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serialize(self.0, serializer)
        }
    }
}

/// `hello`: the connection is authenticated; `resumed` reports each `resume` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloResult {
    /// This connection's number on the node.
    pub conn: u64,
    /// The node's id (random per process start).
    pub node: String,
    /// The protocol version ([`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION)).
    pub protocol: u32,
    /// The node's region.
    pub region: String,
    /// One entry per processed `resume` entry, in order (empty without `resume`).
    pub resumed: Vec<ResumedRoom>,
    /// The token's `sub`.
    pub user: UserId,
}

/// One room of a `hello` resume list (`docs/protocol.md` §7): on the wire an object whose
/// `status` is `recovered`, `history_lost` or `error`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ResumedRoomWire")]
pub enum ResumedRoom {
    /// Joined; `replayed` events follow the `hello` reply, before live events.
    Recovered {
        /// The room.
        room: RoomId,
        /// The room's epoch in this region.
        epoch: String,
        /// The last position the replay covers.
        seq: u64,
        /// How many events were replayed.
        replayed: u64,
        /// Other regions' positions in the room (empty, and absent on the wire, when the room
        /// is not shared with other regions).
        origins: Vec<OriginPosition>,
    },
    /// Joined, but the events since the client's position cannot be replayed.
    HistoryLost {
        /// The room.
        room: RoomId,
        /// The join's epoch.
        epoch: String,
        /// The join's position: events after it are delivered live.
        seq: u64,
        /// Other regions' positions in the room, as for `Recovered`.
        origins: Vec<OriginPosition>,
    },
    /// The join itself failed; the connection is not in the room.
    Error {
        /// The room.
        room: RoomId,
        /// Why (`forbidden`, `too_many_rooms`, `room_full`, `unavailable`).
        code: ErrorCode,
        /// Human-readable text.
        message: String,
    },
}

impl ResumedRoom {
    /// The room this entry reports on.
    pub fn room(&self) -> &RoomId {
        match self {
            Self::Recovered { room, .. }
            | Self::HistoryLost { room, .. }
            | Self::Error { room, .. } => room,
        }
    }

    /// The wire name of the entry's `status`.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Recovered { .. } => "recovered",
            Self::HistoryLost { .. } => "history_lost",
            Self::Error { .. } => "error",
        }
    }
}

/// The flat object a [`ResumedRoom`] is on the wire, fields in the order the node writes them.
#[derive(Serialize)]
struct ResumedRoomRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<ErrorCode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "origins_empty")]
    origins: sorted_origins::Wrap<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<u64>,
    room: &'a RoomId,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    status: &'static str,
}

fn origins_empty(origins: &sorted_origins::Wrap<'_>) -> bool {
    origins.0.is_empty()
}

impl Serialize for ResumedRoom {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let status = self.status();
        let wire = match self {
            Self::Recovered {
                room,
                epoch,
                seq,
                replayed,
                origins,
            } => ResumedRoomRef {
                code: None,
                epoch: Some(epoch),
                message: None,
                origins: sorted_origins::Wrap(origins),
                replayed: Some(*replayed),
                room,
                seq: Some(*seq),
                status,
            },
            Self::HistoryLost {
                room,
                epoch,
                seq,
                origins,
            } => ResumedRoomRef {
                code: None,
                epoch: Some(epoch),
                message: None,
                origins: sorted_origins::Wrap(origins),
                replayed: None,
                room,
                seq: Some(*seq),
                status,
            },
            Self::Error {
                room,
                code,
                message,
            } => ResumedRoomRef {
                code: Some(*code),
                epoch: None,
                message: Some(message),
                origins: sorted_origins::Wrap(&[]),
                replayed: None,
                room,
                seq: None,
                status,
            },
        };
        wire.serialize(serializer)
    }
}

/// What a client reads a [`ResumedRoom`] from, before its fields are checked against `status`.
#[derive(Deserialize)]
struct ResumedRoomWire {
    status: String,
    room: RoomId,
    epoch: Option<String>,
    seq: Option<u64>,
    replayed: Option<u64>,
    #[serde(default)]
    origins: Vec<OriginPosition>,
    code: Option<ErrorCode>,
    message: Option<String>,
}

impl TryFrom<ResumedRoomWire> for ResumedRoom {
    type Error = String;

    fn try_from(w: ResumedRoomWire) -> Result<Self, String> {
        let need = |field: &str| format!("a `{}` resume entry needs `{field}`", w.status);
        Ok(match w.status.as_str() {
            "recovered" => Self::Recovered {
                epoch: w.epoch.ok_or_else(|| need("epoch"))?,
                seq: w.seq.ok_or_else(|| need("seq"))?,
                replayed: w.replayed.ok_or_else(|| need("replayed"))?,
                room: w.room,
                origins: w.origins,
            },
            "history_lost" => Self::HistoryLost {
                epoch: w.epoch.ok_or_else(|| need("epoch"))?,
                seq: w.seq.ok_or_else(|| need("seq"))?,
                room: w.room,
                origins: w.origins,
            },
            "error" => Self::Error {
                code: w.code.ok_or_else(|| need("code"))?,
                message: w.message.ok_or_else(|| need("message"))?,
                room: w.room,
            },
            other => return Err(format!("unknown resume status `{other}`")),
        })
    }
}

/// `join`: the connection's position in the room; events after `seq` are new to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResult {
    /// The room's history epoch.
    pub epoch: String,
    /// Whether this was the user's first connection in the room (a `joined` was sent).
    pub first: bool,
    /// Other regions' positions in the room as of the join (the seed of the client's version
    /// vector); empty, and absent on the wire, without replication.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "sorted_origins::serialize"
    )]
    pub origins: Vec<OriginPosition>,
    /// The room.
    pub room: RoomId,
    /// The join's position in the room's sequence.
    pub seq: u64,
}

/// `leave`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveResult {
    /// Whether this was the user's last connection in the room (a `left` was sent).
    pub left: bool,
    /// The room.
    pub room: RoomId,
}

/// `publish`: where the message was sequenced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResult {
    /// The room.
    pub room: RoomId,
    /// The message's sequence number.
    pub seq: u64,
    /// The room's history epoch.
    pub epoch: String,
    /// True when the idempotency key matched an earlier publish: nothing new was sent.
    pub duplicate: bool,
}

/// `send`: the direct message reached the target's node(s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResult {
    /// The target user.
    pub to: UserId,
}

/// `members`: one page of the room's members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersResult {
    /// The members, ordered by user id.
    pub members: Vec<MemberEntry>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next: Option<UserId>,
    /// The room.
    pub room: RoomId,
}

/// `presence`: one entry per asked user, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceResult {
    /// The users' online status.
    pub users: Vec<PresenceEntry>,
}

/// `state_set`: the key's new version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSetResult {
    /// The key.
    pub key: String,
    /// The room.
    pub room: RoomId,
    /// The key's version after the write.
    pub version: u64,
}

/// `state_get`: the key asked for, or every key of the room, sorted by key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateGetResult {
    /// The room.
    pub room: RoomId,
    /// The entries (none when the key does not exist).
    pub entries: Vec<StateEntry>,
}

/// `state_delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDeleteResult {
    /// Whether the key existed.
    pub deleted: bool,
    /// The key.
    pub key: String,
    /// The room.
    pub room: RoomId,
}

/// `ping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResult {
    /// Always `true`.
    pub pong: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Reply, RequestId};
    use serde::de::DeserializeOwned;
    use serde_json::value::RawValue;

    fn room(s: &str) -> RoomId {
        RoomId::new(s).unwrap()
    }

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn origin(region: &str, epoch: &str, seq: u64) -> OriginPosition {
        OriginPosition {
            region: region.into(),
            epoch: epoch.into(),
            seq,
        }
    }

    /// `result` encodes as exactly `json` inside an `ok` reply, and decodes back to itself.
    fn pin<T>(result: T, json: &str)
    where
        T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let id = RequestId::Num(1);
        let frame = Reply::Ok {
            id: &id,
            result: &result,
        }
        .encode();
        assert_eq!(frame, format!(r#"{{"type":"ok","id":1,"result":{json}}}"#));
        let back: T = serde_json::from_str(json).unwrap();
        assert_eq!(back, result, "{json}");
    }

    #[test]
    fn hello_with_every_resume_status() {
        // docs/protocol.md §7, byte for byte.
        pin(
            HelloResult {
                conn: 7,
                node: "q7m2c9x4p1ab".into(),
                protocol: crate::PROTOCOL_VERSION,
                region: "us-east".into(),
                resumed: vec![
                    ResumedRoom::Recovered {
                        room: room("lobby"),
                        epoch: "k3v9x0qa".into(),
                        seq: 44,
                        replayed: 2,
                        origins: vec![],
                    },
                    ResumedRoom::HistoryLost {
                        room: room("stage"),
                        epoch: "p0x8d2rt".into(),
                        seq: 12,
                        origins: vec![],
                    },
                    ResumedRoom::Error {
                        room: room("secret"),
                        code: ErrorCode::Forbidden,
                        message: "the token does not cover room secret".into(),
                    },
                ],
                user: user("alice"),
            },
            r#"{"conn":7,"node":"q7m2c9x4p1ab","protocol":1,"region":"us-east","resumed":[{"epoch":"k3v9x0qa","replayed":2,"room":"lobby","seq":44,"status":"recovered"},{"epoch":"p0x8d2rt","room":"stage","seq":12,"status":"history_lost"},{"code":"forbidden","message":"the token does not cover room secret","room":"secret","status":"error"}],"user":"alice"}"#,
        );
        pin(
            HelloResult {
                conn: 1,
                node: "n".into(),
                protocol: 1,
                region: "eu".into(),
                resumed: vec![],
                user: user("bob"),
            },
            r#"{"conn":1,"node":"n","protocol":1,"region":"eu","resumed":[],"user":"bob"}"#,
        );
    }

    #[test]
    fn resume_entries_with_origins() {
        pin(
            ResumedRoom::Recovered {
                room: room("lobby"),
                epoch: "e".into(),
                seq: 14,
                replayed: 0,
                origins: vec![origin("ap", "k", 7)],
            },
            r#"{"epoch":"e","origins":[{"epoch":"k","region":"ap","seq":7}],"replayed":0,"room":"lobby","seq":14,"status":"recovered"}"#,
        );
        pin(
            ResumedRoom::HistoryLost {
                room: room("lobby"),
                epoch: "e".into(),
                seq: 3,
                origins: vec![origin("ap", "k", 7)],
            },
            r#"{"epoch":"e","origins":[{"epoch":"k","region":"ap","seq":7}],"room":"lobby","seq":3,"status":"history_lost"}"#,
        );
        for bad in [
            r#"{"room":"lobby","status":"recovered","epoch":"e","seq":1}"#,
            r#"{"room":"lobby","status":"error","message":"m"}"#,
            r#"{"room":"lobby","status":"resting"}"#,
            r#"{"room":"a b","status":"history_lost","epoch":"e","seq":1}"#,
        ] {
            assert!(serde_json::from_str::<ResumedRoom>(bad).is_err(), "{bad}");
        }
        // A field a newer node adds is ignored.
        let newer: ResumedRoom = serde_json::from_str(
            r#"{"room":"r","status":"history_lost","epoch":"e","seq":1,"hint":"x"}"#,
        )
        .unwrap();
        assert_eq!(newer.room(), &room("r"));
    }

    #[test]
    fn join_leave_publish_send() {
        pin(
            JoinResult {
                epoch: "k3v9x0qa".into(),
                first: true,
                origins: vec![],
                room: room("lobby"),
                seq: 45,
            },
            r#"{"epoch":"k3v9x0qa","first":true,"room":"lobby","seq":45}"#,
        );
        pin(
            JoinResult {
                epoch: "e".into(),
                first: false,
                origins: vec![origin("ap", "k", 5)],
                room: room("lobby"),
                seq: 10,
            },
            r#"{"epoch":"e","first":false,"origins":[{"epoch":"k","region":"ap","seq":5}],"room":"lobby","seq":10}"#,
        );
        pin(
            LeaveResult {
                left: true,
                room: room("lobby"),
            },
            r#"{"left":true,"room":"lobby"}"#,
        );
        pin(
            PublishResult {
                room: room("lobby"),
                seq: 46,
                epoch: "k3v9x0qa".into(),
                duplicate: false,
            },
            r#"{"room":"lobby","seq":46,"epoch":"k3v9x0qa","duplicate":false}"#,
        );
        pin(SendResult { to: user("bob") }, r#"{"to":"bob"}"#);
    }

    #[test]
    fn members_and_presence() {
        // docs/protocol.md `members`, byte for byte.
        let member = |name: &str| MemberEntry {
            region: "us-east".into(),
            user: user(name),
        };
        pin(
            MembersResult {
                members: vec![member("alice"), member("bob")],
                next: Some(user("bob")),
                room: room("lobby"),
            },
            r#"{"members":[{"region":"us-east","user":"alice"},{"region":"us-east","user":"bob"}],"next":"bob","room":"lobby"}"#,
        );
        pin(
            MembersResult {
                members: vec![],
                next: None,
                room: room("lobby"),
            },
            r#"{"members":[],"next":null,"room":"lobby"}"#,
        );
        // docs/protocol.md `presence`, byte for byte.
        pin(
            PresenceResult {
                users: vec![
                    PresenceEntry {
                        connections: 2,
                        online: true,
                        regions: vec!["us-east".into()],
                        user: user("bob"),
                    },
                    PresenceEntry {
                        connections: 0,
                        online: false,
                        regions: vec![],
                        user: user("carol"),
                    },
                ],
            },
            r#"{"users":[{"connections":2,"online":true,"regions":["us-east"],"user":"bob"},{"connections":0,"online":false,"regions":[],"user":"carol"}]}"#,
        );
    }

    #[test]
    fn state_and_ping() {
        pin(
            StateSetResult {
                key: "topic".into(),
                room: room("lobby"),
                version: 1,
            },
            r#"{"key":"topic","room":"lobby","version":1}"#,
        );
        pin(
            StateGetResult {
                room: room("lobby"),
                entries: vec![StateEntry {
                    key: "mode".into(),
                    value: RawValue::from_string(r#"{"x":[1]}"#.into()).unwrap(),
                    version: 1,
                }],
            },
            r#"{"room":"lobby","entries":[{"key":"mode","value":{"x":[1]},"version":1}]}"#,
        );
        pin(
            StateDeleteResult {
                deleted: true,
                key: "topic".into(),
                room: room("lobby"),
            },
            r#"{"deleted":true,"key":"topic","room":"lobby"}"#,
        );
        pin(PingResult { pong: true }, r#"{"pong":true}"#);
    }
}
