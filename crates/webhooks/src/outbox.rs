//! The region's webhook outbox in Redis: `K` partition streams `mw:wh:p<i>`, a marker key
//! `mw:wh:on` (the partition count, kept alive by nodes with webhooks on: without it the Lua
//! scripts write nothing) and per-endpoint partition leases `mw:wh:lease:<endpoint>:<i>`.
//!
//! Events of one room hash (djb2 of `r:<room>`) to one partition, events of one user
//! (`u:<user>`) to one partition, so a single owner per partition delivers them in order.
//! The production writer is the Lua `wh_emit` in `region_state::WEBHOOK_LUA`, called inside
//! the join, leave, region-down and presence scripts (atomic with the change); [`append`] is
//! its Rust twin for tests.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::event::EventKind;

/// The marker key: its value is the partition count.
pub const ON_KEY: &str = "mw:wh:on";

/// Stream key of partition `p`.
pub fn stream_key(p: u16) -> String {
    format!("mw:wh:p{p}")
}

/// Lease key of `endpoint` on partition `p`.
pub fn lease_key(endpoint: &str, p: u16) -> String {
    format!("mw:wh:lease:{endpoint}:{p}")
}

/// djb2 modulo 2^32, the same arithmetic as the Lua side (exact in doubles).
pub fn partition_of(key: &str, partitions: u16) -> u16 {
    let mut h: u64 = 5381;
    for b in key.bytes() {
        h = (h * 33 + u64::from(b)) % 4_294_967_296;
    }
    (h % u64::from(partitions.max(1))) as u16
}

/// Appends one event from Rust (tests, and producers outside Lua). Returns the entry id.
pub async fn append(
    conn: &mut impl redis::aio::ConnectionLike,
    partitions: u16,
    region: &str,
    kind: EventKind,
    room: Option<&str>,
    user: Option<&str>,
    reason: Option<&str>,
) -> redis::RedisResult<String> {
    let pkey = match (room, user) {
        (Some(r), _) => format!("r:{r}"),
        (None, Some(u)) => format!("u:{u}"),
        (None, None) => String::new(),
    };
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream_key(partition_of(&pkey, partitions)))
        .arg("*")
        .arg("t")
        .arg(kind.as_str())
        .arg("g")
        .arg(region)
        .arg("at")
        .arg(at);
    for (f, v) in [("r", room), ("u", user), ("why", reason)] {
        if let Some(v) = v {
            cmd.arg(f).arg(v);
        }
    }
    cmd.query_async(conn).await
}

/// Marks webhooks on for `ttl_ms` (nodes with endpoints refresh it).
pub async fn mark_on(
    conn: &mut impl redis::aio::ConnectionLike,
    partitions: u16,
    stream_max_len: u64,
    ttl_ms: u64,
) -> redis::RedisResult<()> {
    redis::pipe()
        .cmd("SET")
        .arg(ON_KEY)
        .arg(partitions)
        .arg("PX")
        .arg(ttl_ms)
        .ignore()
        .cmd("SET")
        .arg("mw:wh:max")
        .arg(stream_max_len)
        .arg("PX")
        .arg(ttl_ms)
        .ignore()
        .query_async(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_in_range() {
        assert_eq!(partition_of("r:lobby", 8), partition_of("r:lobby", 8));
        for i in 0..100 {
            assert!(partition_of(&format!("r:{i}"), 8) < 8);
        }
        assert_eq!(partition_of("x", 0), 0);
    }
}
