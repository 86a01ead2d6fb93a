//! The geo-router's decision core: given the region catalogue (`meridian-catalogue`), each
//! region's health and routing controls, and what is known about one client (GeoIP location,
//! measured RTTs), [`choose_region`] returns every usable region ranked best first. It is a pure,
//! deterministic function with no sockets, clocks or runtime inside; the future router binary
//! (DNS answers, the HTTP ranking endpoint, health checks with hysteresis, controls shared through
//! Redis) is the I/O shell around it. See "Geo-routing front door" in `ARCHITECTURE.md`.
//!
//! Beside the core: [`dns`] answers the routing zone's DNS queries over UDP and TCP, [`geoip`]
//! turns a client address into a location ([`GeoDb`], with a file-watching [`ReloadingGeoDb`]),
//! the only module here that reads files, and [`mmdb_writer`] writes small MaxMind DB files for
//! tests and the synthetic demo database.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![forbid(unsafe_code)]

pub mod decision;
pub mod dns;
pub mod geoip;
pub mod mmdb_writer;
pub mod scope;

pub use decision::{
    choose_region, decide, haversine_km, ClientView, Control, ControlState, Decision, Health,
    MeasuredRtt, Policy, PolicyError, Ranked, Reason, RegionView,
};
pub use geoip::{GeoDb, GeoHit, GeoIpError, GeoNetwork, ReloadingGeoDb};
pub use mmdb_writer::{MmdbValue, MmdbWriteError, MmdbWriter};
pub use scope::{ScopeIndex, ScopeStats};
