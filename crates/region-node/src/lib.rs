//! Meridian's region node: a stateless WebSocket signaling server.
//!
//! A node holds only sockets and the list of rooms its sockets are in ([`fanout`]); presence,
//! membership, history and room state live in the region's state store (`region-state`,
//! Redis in production). Any node serves any user; a node that dies loses only sockets, and
//! the others reap its members once its lease expires.
//!
//! - [`config`]: the TOML/env configuration, validated at start.
//! - [`admission`]: the node's bounded accept rate (sheds reconnect storms).
//! - [`node`]: start-up, background loops (lease, reaper, fan-out), HTTP endpoints, drain.
//! - `session`: one client connection (protocol v1, `docs/protocol.md`).
//! - [`metrics`]: the Prometheus registry behind `/metrics`.
//! - [`signal`]: node-wide drain and close flags, cheap to read per frame.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod admission;
pub mod config;
pub mod fanout;
pub mod metrics;
pub mod node;
mod session;
pub mod signal;

pub use config::NodeConfig;
pub use node::{start, start_with_store, Node, NodeError, RunningNode};
