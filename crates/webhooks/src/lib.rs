//! Meridian webhooks: the events a region reports to HTTP endpoints, signed and batched.
//!
//! The region's Lua scripts (in `region-state`) append each event once, atomically with the
//! change that causes it, to a partitioned Redis Stream outbox ([`outbox`]); the nodes'
//! delivery workers ([`deliver`]) read it through one consumer group per endpoint, one lease
//! holder per partition, and POST signed batches ([`signature`]) with retries. Event shapes
//! are in [`event`], settings in [`config`]; `docs/webhooks.md` is the receiver's guide.
//!
//! Neighbours: `region-node` starts the workers and registers [`WebhookMetrics`];
//! `region-state` writes the outbox from its Lua scripts (`region_state::WEBHOOK_LUA`).
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod deliver;
pub mod event;
mod metrics;
pub mod outbox;
pub mod signature;
#[cfg(feature = "test-support")]
pub mod testing;

/// The Redis client the workers take ([`deliver::spawn`]).
pub use redis;

pub use config::{EndpointConfig, RetryConfig, WebhooksConfig, WebhooksConfigError};
pub use event::{Batch, EventKind, WebhookEvent};
pub use metrics::WebhookMetrics;
pub use signature::{sign, Verifier, VerifyError};
