//! Meridian's inter-region relay: the QUIC mesh between the regions' relays.
//!
//! Every region runs a relay; every pair of relays keeps one QUIC connection (mutual TLS with
//! certificates from the mesh CA, ALPN = protocol version) carrying binary frames. This crate
//! is the transport half of the relay: links, frames, certificates, metrics, and a seam
//! ([`sink::EventSink`]) where replication into the region's Redis plugs in next. It does not
//! talk to clients (that is `region-node`) nor to Redis (yet). Design notes: `docs/relay.md`.
//!
//! - [`certs`]: the mesh CA and region certificates (SAN `<region>.relay.meridian`).
//! - [`tls`]: rustls configs with the catalogue-aware certificate verifiers.
//! - The frames themselves and their length-prefixed postcard encoding are the protocol
//!   crate's: [`meridian_protocol::relay`].
//! - [`link`]: dialing, accepting, Hello, lanes, keep-alive, reconnect backoff ([`backoff`]).
//! - [`relay`]: start-up from config, `/healthz` `/readyz` `/metrics` ([`metrics`]), shutdown.
//! - [`impair`]: a UDP proxy adding delay, jitter, loss and partitions, for WAN tests.
//! - [`config`]: the TOML/env configuration, validated at start.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod backoff;
pub mod certs;
pub mod config;
pub mod impair;
pub mod link;
pub mod metrics;
pub mod relay;
pub mod replicate;
pub mod sink;
pub mod tls;

pub use config::{Mesh, RelayConfig, RelayOptions};
pub use link::{RelayError, RelayHandle};
pub use relay::{start, RunningRelay};
pub use sink::{EventSink, LogSink, MemorySink};
