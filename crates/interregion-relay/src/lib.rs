//! Meridian's inter-region relay: the QUIC mesh between the regions' relays, and replication
//! of room events between the regions' Redis.
//!
//! Every region runs a relay (two for availability: one active, one standby); every pair of
//! active relays keeps one QUIC connection (mutual TLS with certificates from the mesh CA,
//! ALPN = protocol version) carrying binary frames. The relay follows its region's Redis and
//! sends the rooms other regions follow; it applies what they send into its own Redis, where
//! the region's nodes see it. It does not talk to clients (that is `region-node`). Design
//! notes: `docs/relay.md`.
//!
//! - [`service`]: [`run`], a region's relay whole (the active-relay lease, standby,
//!   replication wiring), on sockets `main` bound; [`role`]: its pure role machine.
//! - [`link`]: dialing, accepting, Hello, lanes, keep-alive, reconnect backoff ([`backoff`]).
//! - [`replicate`]: interest, sending, applying, presence, region loss; the [`EventSink`]
//!   ([`sink`]) the links hand received frames to.
//! - [`relay`]: config → catalogue, certificates ([`relay::prepare`]); the links alone on a
//!   bound socket ([`start`], for tests); `ops`: `/healthz` `/readyz` `/metrics` ([`metrics`]).
//! - The frames themselves and their length-prefixed postcard encoding are the protocol
//!   crate's: [`meridian_protocol::relay`].
//! - [`certs`]: the mesh CA and region certificates (SAN `<region>.relay.meridian`).
//! - [`tls`]: rustls configs with the catalogue-aware certificate verifiers.
//! - [`config`]: the TOML/env configuration, validated at start.
//!
//! The WAN impairment proxy the tests put between relays is its own crate, `wan-impair`.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod backoff;
pub mod certs;
pub mod config;
pub mod link;
pub mod metrics;
mod ops;
pub mod relay;
pub mod replicate;
pub mod role;
pub mod service;
pub mod sink;
pub mod tls;

pub use config::{Mesh, RelayConfig, RelayOptions};
pub use link::{RelayError, RelayHandle};
pub use relay::{start, RunningRelay};
pub use service::{run, Announcement, Listeners, QuicSocket, RunError, RunningService};
pub use sink::{EventSink, LogSink, MemorySink};
