//! Meridian's wire vocabularies: the client protocol (version 1), room events, relay frames.
//!
//! Clients speak JSON text frames over a WebSocket at `/v1/ws` (see `docs/protocol.md`). This
//! crate owns everything about those frames and no sockets or servers (its one I/O helper,
//! [`relay::read_frame`], reads a frame from any async stream): validated identifiers
//! ([`RoomId`], [`UserId`]), request parsing ([`Request::parse`]), the rule for client JSON
//! ([`json_rules`]), replies and server events ([`Reply`], [`Event`]), the typed `result` of
//! each op's reply, which the node writes and clients read ([`HelloResult`], [`JoinResult`],
//! [`PublishResult`], …), the stable error codes ([`ErrorCode`]) and connection tokens
//! ([`token`]). The region node (`crates/region-node`) drives it; the regional state store
//! (`crates/region-state`) uses [`RoomEventFrame`] to put sequence numbers into room events
//! without decoding them again.
//!
//! It also owns the mesh's other wire vocabularies, so each is defined once:
//! - [`room`]: the room-event vocabulary ([`RoomEventKind`], [`Hlc`], [`StateRecord`],
//!   [`JsonText`]) and the client frame of a room event ([`RoomEventFrame`], with
//!   [`RoomEventFrame::decode`]), shared by the node, the state store and the relay;
//! - [`relay`]: the frames regions' relays exchange (postcard), carrying those room events;
//! - [`health`]: the readiness report a node's `/readyz` writes and the geo-router reads.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod encode;
mod error;
pub mod health;
mod ids;
pub mod json_rules;
pub mod relay;
mod results;
pub mod room;
pub mod server_api;
pub mod token;
mod wire;

pub use error::ErrorCode;
pub use ids::{IdError, RoomId, UserId};
pub use results::{
    HelloResult, JoinResult, LeaveResult, MemberEntry, MembersResult, PingResult, PresenceEntry,
    PresenceResult, PublishResult, ResumedRoom, SendResult, StateDeleteResult, StateGetResult,
    StateSetResult,
};
pub use room::{
    DecodedRoomEvent, Hlc, JsonText, JsonTextError, LeftReason, RoomEventError, RoomEventFrame,
    RoomEventKind, StateRecord,
};
pub use wire::{
    Event, OriginPosition, Reply, Request, RequestError, RequestId, ResumePoint, StateEntry,
    PROTOCOL_VERSION,
};
