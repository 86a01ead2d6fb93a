//! Meridian's region node: a stateless WebSocket signaling server.
//!
//! A node holds only sockets and the list of rooms its sockets are in ([`fanout`]); presence,
//! membership, history and room state live in the region's state store (`region-state`,
//! Redis in production). Any node serves any user; a node that dies loses only sockets, and
//! the others reap its members once its lease expires.
//!
//! - [`api`]: the server API for application backends (HTTP+JSON on `api.listen`).
//! - [`config`]: the TOML/env configuration, validated at start.
//! - [`admission`]: the node's bounded accept rate (sheds reconnect storms).
//! - [`context`]: the [`Node`] every session, loop and handler shares.
//! - [`node`]: start-up, the HTTP routes (`/v1/ws`, `/readyz`, …) and the drain.
//! - `listen`: the client and ops listeners (fd budget, header timeouts).
//! - `dispatch`: fan-out of what the store pushes, and the catch-up after a pub/sub outage.
//! - `lease`: the node lease, the re-assert after a lapse, and the reaper of dead nodes.
//! - `session`: one client connection (protocol v1, `docs/protocol.md`), a folder by layer:
//!   hello, the request loop, requests and the publish batch, join, access rules, socket.
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`signal`]: node-wide drain and close flags, cheap to read per frame.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod admission;
pub mod api;
pub mod config;
pub mod context;
mod dispatch;
pub mod fanout;
mod lease;
mod listen;
pub mod metrics;
pub mod node;
mod session;
pub mod signal;

pub use config::NodeConfig;
pub use context::Node;
pub use node::{start, start_with_store, NodeError, RunningNode};
