//! Meridian's typed Rust client for protocol v1 (`docs/protocol.md`).
//!
//! [`Connection`] opens a node's `/v1/ws` (`ws://`, or `wss://` with rustls), says `hello`
//! (with resume points and their version vectors, so a reconnect recovers what it missed),
//! sends typed [`Request`](meridian_protocol::Request)s written by the protocol crate's own
//! encoder, matches replies to requests by id and decodes them into the protocol's result
//! types, and reads server events as typed values ([`Event`]). Errors are typed
//! ([`ClientError`]) and carry the node's error code. There is no background task: one owner
//! drives the connection, which keeps tests deterministic (and virtual-time friendly).
//!
//! Neighbours: `meridian-protocol` owns the wire vocabulary; users are the `meridian` CLI
//! (`chat`, `drill`), the end-to-end tests (`tests/src`) and the node's session tests
//! (`crates/region-node/tests/session.rs`). The load generator keeps its own hot path but
//! encodes with the same protocol types.
//!
//! - `connection`: [`Connection`], request/reply correlation, the event stream.
//! - `ops`: one typed method per op (`join`, `publish`, …).
//! - `position`: [`RoomPosition`], a room's cursor and version vector for resuming (§7).
//! - `frame`: decoding the node's frames ([`Frame`], [`Event`], [`RoomEvent`]).
//! - `transport`: TCP/TLS and the WebSocket upgrade ([`ConnectOptions`]).
//! - `error`: [`ClientError`], [`ServerError`], [`CloseInfo`].
//! - [`server`]: helpers for an application backend calling a node's server API
//!   (`docs/server-api.md`), over HTTP+JSON rather than the WebSocket.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod connection;
mod error;
mod frame;
mod ops;
mod position;
pub mod server;
mod transport;

pub use connection::{Connection, Received, CLOSE_WAIT};
pub use error::{ClientError, CloseInfo, ServerError};
pub use frame::{
    decode, room_event_type, Event, Frame, Reconnect, Reply, RoomEvent, RoomEventKind,
};
pub use meridian_protocol as protocol;
pub use position::RoomPosition;
pub use transport::{platform_tls, ConnectOptions};
