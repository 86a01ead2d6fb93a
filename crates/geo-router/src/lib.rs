//! The geo-router's decision core: given the region catalogue (`meridian-catalogue`), each
//! region's health and routing controls, and what is known about one client (GeoIP location,
//! measured RTTs), [`choose_region`] returns every usable region ranked best first. It is a pure,
//! deterministic function with no sockets, clocks or runtime inside; the future router binary
//! (DNS answers, the HTTP ranking endpoint, health checks with hysteresis, controls shared through
//! Redis) is the I/O shell around it. See "Geo-routing front door" in `ARCHITECTURE.md`.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![forbid(unsafe_code)]

pub mod decision;

pub use decision::{
    choose_region, haversine_km, ClientView, Control, ControlState, Health, MeasuredRtt, Policy,
    PolicyError, Ranked, Reason, RegionView,
};
