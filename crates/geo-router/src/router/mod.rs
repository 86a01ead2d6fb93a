//! The router's live state and the one routing function the DNS and HTTP front ends share.
//!
//! [`RouterState::route`] gathers the inputs of [`decide`](crate::decide) (GeoIP location, measured RTTs of the
//! client's network, operator pin, every region's health, load and control), ranks, and sizes
//! the ECS scope:
//!
//! * pinned: the pin's network (narrowed past any more specific pin inside it);
//! * the client's network has RTT data: that aggregation network (/24, /48);
//! * otherwise the geographic supernet from [`ScopeIndex`](crate::ScopeIndex), or just the matched database network
//!   while a load penalty or a weight below 1 is in force anywhere (those make answers depend on
//!   the exact distance, not only on the distance order), narrowed until the block holds no
//!   network with RTT data and no pin;
//! * a near tie broken by the client network's hash: at least that network's prefix.
//!
//! Files: `state.rs` holds [`RouterState`] and the routing function; `tasks.rs` the background
//! tasks that keep it fresh ([`spawn_health_checks`], [`spawn_control_poller`],
//! [`spawn_geoip_reloader`], [`spawn_rtt_sweeper`]); `cache.rs` the [`AnswerCache`] of finished
//! answers that both front ends use. The DNS front end's adapter, `DnsRouter`, lives beside the
//! answerer in [`crate::dns`].

mod cache;
mod state;
mod tasks;

pub use cache::AnswerCache;
pub use state::{GeoView, RegionLive, Route, RouterState};
pub use tasks::{
    open_geoip, spawn_control_poller, spawn_geoip_reloader, spawn_health_checks, spawn_rtt_sweeper,
};
