//! Meridian's client wire protocol, version 1.
//!
//! Clients speak JSON text frames over a WebSocket at `/v1/ws` (see `docs/protocol.md`). This
//! crate owns everything about those frames and nothing about I/O: validated identifiers
//! ([`RoomId`], [`UserId`]), request parsing ([`Request::parse`]), the rule for client JSON
//! ([`json_rules`]), replies and server events ([`Reply`], [`Event`]), the typed `result` of
//! each op's reply, which the node writes and clients read ([`HelloResult`], [`JoinResult`],
//! [`PublishResult`], …), the stable error codes ([`ErrorCode`]) and connection tokens
//! ([`token`]). The region node (`crates/region-node`) drives it; the regional state store
//! (`crates/region-state`) uses [`RoomEventFrame`] to put sequence numbers into room events
//! without decoding them again.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod encode;
mod error;
mod ids;
pub mod json_rules;
mod results;
pub mod token;
mod wire;

pub use error::ErrorCode;
pub use ids::{IdError, RoomId, UserId};
pub use results::{
    HelloResult, JoinResult, LeaveResult, MemberEntry, MembersResult, PingResult, PresenceEntry,
    PresenceResult, PublishResult, ResumedRoom, SendResult, StateDeleteResult, StateGetResult,
    StateSetResult,
};
pub use wire::{
    Event, LeftReason, OriginPosition, Reply, Request, RequestError, RequestId, ResumePoint,
    RoomEventFrame, StateEntry, PROTOCOL_VERSION,
};
