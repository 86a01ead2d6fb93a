//! The geo-router: the front door that sends every user to the nearest healthy region, by
//! authoritative DNS (`ws.<zone>`) and over HTTP (`/v1/route`, `/v1/connect`). See
//! "The geo-router" in `docs/architecture.md` and `docs/geo-router.md`.
//!
//! * [`decision`]: the pure ranking core ([`choose_region`], [`decide`]), no I/O;
//! * [`geoip`]: client address → location ([`GeoDb`], file-watching [`ReloadingGeoDb`]);
//!   [`scope`]: ECS scopes from merged supernets; [`rtt`]: measured RTTs per client network;
//! * [`health`]: probes with hysteresis, [`probe`]: their HTTP/HTTPS fetch; [`controls`]: drain/undrain/disable/weight shared
//!   through Redis, with the audit log and the safety rule;
//! * [`router`]: the live state, the one routing function and the background tasks; [`dns`]
//!   and [`http`]: the two front ends, each a folder by layer; [`metrics`]; [`config`];
//!   [`service`]: the wiring, [`service::run`]`(config, listeners, shutdown)`;
//! * [`quick_hash`]: the seeded hasher of the DNS hot path's maps; [`limit`]: per-source rate
//!   and concurrency limits (DNS, RTT reports); [`report_token`]: the signed RTT report token.
//!
//! The MaxMind DB writer and the synthetic demo database live in the `mmdb-writer` crate: the
//! library does not use it; its tests and the binary's `demo-geoip` subcommand do.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![forbid(unsafe_code)]

pub mod config;
pub mod controls;
pub mod decision;
pub mod dns;
pub mod geoip;
pub mod health;
pub mod http;
pub mod limit;
pub mod metrics;
pub mod probe;
pub mod quick_hash;
pub mod report_token;
pub mod router;
pub mod rtt;
pub mod scope;
pub mod service;

pub use decision::{
    choose_region, decide, ClientView, Control, ControlState, Decision, Health, MeasuredRtt,
    Policy, PolicyError, Ranked, Reason, RegionView,
};
pub use geoip::{GeoDb, GeoHit, GeoIpError, GeoNetwork, ReloadingGeoDb};
pub use scope::{ScopeIndex, ScopeStats};
