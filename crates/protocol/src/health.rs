//! The readiness report: the JSON body of a ready region node's `/readyz`, which the
//! geo-router's health checks read for the region's load (`crates/geo-router/src/health.rs`).
//! One type for the writer and the reader, so the two cannot drift apart.
//!
//! On the wire (kept as it was when each side had its own copy; the JavaScript SDK's tests and
//! the end-to-end tests read it too):
//!
//! ```text
//! {"status":"ready","connections":1234,"nodes":3,"node_connections":410}
//! {"status":"ready","node_connections":410}        (the region's count was not available)
//! ```
//!
//! Other health endpoints a router may probe can report `{"load":0.42}` (a fraction of
//! capacity) or `{"connections":1234,"capacity":5000}` instead; every field is optional when
//! reading, and unknown fields are ignored.

use serde::{Deserialize, Serialize};

/// The `status` a ready node reports.
pub const READY: &str = "ready";

/// A region's readiness and load, as a health endpoint reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReadyReport {
    /// `"ready"` ([`READY`]) from a region node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Live connections in the whole region (every node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Live nodes in the region (reported with `connections`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<u64>,
    /// Connections on the node that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_connections: Option<u64>,
    /// The region's load as a fraction of its capacity, from an endpoint that knows it (a
    /// node does not send it: the router divides `connections` by the catalogue's capacity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// The capacity `connections` is measured against, from an endpoint that knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<f64>,
}

/// Open connections over a region's live nodes, as the state store counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RegionLoad {
    /// Connections across the region's live nodes.
    pub connections: u64,
    /// Live nodes counted.
    pub nodes: u64,
}

impl ReadyReport {
    /// A ready node's report: its own connections, and the region's when it could count them.
    pub fn ready(node_connections: u64, region: Option<RegionLoad>) -> Self {
        Self {
            status: Some(READY.to_owned()),
            connections: region.map(|r| r.connections),
            nodes: region.map(|r| r.nodes),
            node_connections: Some(node_connections),
            load: None,
            capacity: None,
        }
    }

    /// Reads a report from a health endpoint's body; `None` when the body is not a JSON
    /// object of this shape (a plain-text `ready`, a field of the wrong type).
    pub fn parse(body: &[u8]) -> Option<Self> {
        serde_json::from_slice(body).ok()
    }

    /// The JSON body.
    pub fn encode(&self) -> String {
        // Strings and numbers only: cannot fail (a non-finite f64 is written as null).
        serde_json::to_string(self).unwrap_or_else(|_| format!("{{\"status\":\"{READY}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_report_keeps_its_wire_form() {
        let full = ReadyReport::ready(
            410,
            Some(RegionLoad {
                connections: 1234,
                nodes: 3,
            }),
        );
        assert_eq!(
            full.encode(),
            r#"{"status":"ready","connections":1234,"nodes":3,"node_connections":410}"#
        );
        assert_eq!(
            ReadyReport::ready(0, None).encode(),
            r#"{"status":"ready","node_connections":0}"#
        );
        assert_eq!(ReadyReport::parse(full.encode().as_bytes()), Some(full));
    }

    #[test]
    fn other_endpoints_reports_read_too() {
        let r = ReadyReport::parse(br#"{"load":0.5,"extra":[1]}"#).unwrap();
        assert_eq!((r.load, r.status), (Some(0.5), None));
        let r = ReadyReport::parse(br#"{"connections":25,"capacity":50}"#).unwrap();
        assert_eq!((r.connections, r.capacity), (Some(25), Some(50.0)));
        assert_eq!(ReadyReport::parse(b"ready\n"), None);
        assert_eq!(ReadyReport::parse(br#"{"load":"high"}"#), None);
    }
}
