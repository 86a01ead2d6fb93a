//! The node's session semantics, fast: an in-process node on the memory store (port 0), the
//! typed client (`meridian-client`), and virtual time (`start_paused`) for the heartbeat, idle
//! and drain timers. One test binary made of modules.

#[path = "session/support.rs"]
mod support;

#[path = "session/hello.rs"]
mod hello;
#[path = "session/rooms.rs"]
mod rooms;
#[path = "session/timers.rs"]
mod timers;
