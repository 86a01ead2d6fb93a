//! The server API's wire vocabulary (`docs/server-api.md`, `docs/server-api.openapi.json`):
//! the request body and the result of every method, as the region node reads and writes them
//! and the Rust client (`meridian_client::server`) sends and reads them. Bodies refuse unknown
//! fields; JSON payloads stay raw text, checked by the node's client JSON rules.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{PublishResult, RoomId, UserId};

/// `publish`: one message into a room.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// The room.
    pub room: RoomId,
    /// The message (any JSON value).
    pub data: Box<RawValue>,
    /// Repeats with the same key publish once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `broadcast`: one message into several rooms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    /// The rooms.
    pub rooms: Vec<RoomId>,
    /// The message (any JSON value).
    pub data: Box<RawValue>,
    /// Repeats with the same key publish once per room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// The result of `broadcast`: one publish result per room, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastResult {
    /// Per room.
    pub results: Vec<PublishResult>,
}

/// `send`: a direct message to a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    /// The user.
    pub to: UserId,
    /// The message (any JSON value).
    pub data: Box<RawValue>,
}

/// The result of `send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendOutcome {
    /// The user.
    pub to: UserId,
    /// Whether a node of the region held a connection of the user.
    pub delivered: bool,
}

/// `members`: one page of a room's members.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersBody {
    /// The room.
    pub room: RoomId,
    /// The page starts after this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<UserId>,
    /// Members per page at most (the node caps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// `presence`: the online status of users.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceBody {
    /// The users.
    pub users: Vec<UserId>,
}

/// `state_get`: one state key of a room, or all of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateGetBody {
    /// The room.
    pub room: RoomId,
    /// The key (`None`: every key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `state_set`: writes a state key, with compare-and-set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSetBody {
    /// The room.
    pub room: RoomId,
    /// The key.
    pub key: String,
    /// The value (any JSON value).
    pub value: Box<RawValue>,
    /// Only if the key is at this version (0: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u64>,
}

/// `state_delete`: deletes a state key, with compare-and-set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDeleteBody {
    /// The room.
    pub room: RoomId,
    /// The key.
    pub key: String,
    /// Only if the key is at this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u64>,
}

/// `history`: a room's events after a position.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryBody {
    /// The room.
    pub room: RoomId,
    /// The history's epoch (`None`: the current one, from its start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Events after this sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

/// The result of `history`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryResult {
    /// The room.
    pub room: RoomId,
    /// The room history's epoch.
    pub epoch: String,
    /// True when the history no longer reaches back to `since` in `epoch`.
    pub lost: bool,
    /// With `lost`: the room's current sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The room events (as clients receive them), in order.
    pub events: Vec<Box<RawValue>>,
}

/// `info`: no arguments.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfoBody {}

/// The result of `info`: the node and its region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoResult {
    /// The node's region.
    pub region: String,
    /// The node's id.
    pub node: String,
    /// This node's connections.
    pub connections: u64,
    /// The region's connections.
    pub region_connections: u64,
    /// The region's live nodes.
    pub region_nodes: u64,
}

/// `disconnect`: closes every connection of a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectBody {
    /// The user.
    pub user: UserId,
    /// What the client is told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The result of `disconnect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisconnectResult {
    /// The user.
    pub user: UserId,
    /// Whether a node of the region held a connection of the user.
    pub disconnected: bool,
}

/// `batch`: several calls in one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// The calls, run in order.
    pub calls: Vec<BatchCall>,
}

/// One call of a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchCall {
    /// The method's name (`publish`, `members`, …).
    pub method: String,
    /// Its body (`None`: `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Box<RawValue>>,
}

/// The error of a failed call: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// The error.
    pub error: ApiErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorDetail {
    /// The error code (`unauthorized`, `forbidden`, `version_conflict`, …).
    pub code: String,
    /// For people.
    pub message: String,
}

/// One reply of a batch: `{"result": …}` or `{"error": …}`. (A struct rather than an
/// untagged enum: serde cannot buffer a raw JSON value while it tries an enum's variants.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchReply {
    /// The call's result, as the method alone would return it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    /// The call's error, as the method alone would return it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiErrorDetail>,
}

/// The result of `batch`: one reply per call, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchResult {
    /// Per call.
    pub replies: Vec<BatchReply>,
}
