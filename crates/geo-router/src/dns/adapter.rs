//! [`DnsRouter`]: the DNS answerer's [`Router`] over the live [`RouterState`], with a cache of
//! routing answers per client address.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;

use super::{RouteAnswer, Router};
use crate::router::{AnswerCache, RouterState};
/// The DNS front end's view of the router, with a cache of routing answers per client address.
///
/// Resolvers ask again and again for the same few networks (an ECS address is a network's
/// start; without ECS the key is the resolver's own address), and a decision costs a GeoIP
/// lookup, a great-circle distance per region and a scope search; see [`AnswerCache`].
#[derive(Debug)]
pub struct DnsRouter {
    state: Arc<RouterState>,
    routes: AnswerCache<RouteAnswer>,
    /// `dns_queries` counters by (query type, rcode) label index, created on first use.
    query_counters: [[OnceLock<Counter>; RCODE_LABELS.len()]; QTYPE_LABELS.len()],
}

const RCODE_LABELS: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "OTHER",
];
const QTYPE_LABELS: [&str; 7] = ["A", "AAAA", "NS", "SOA", "ANY", "OTHER", "NONE"];

impl DnsRouter {
    /// The DNS view of `state`.
    pub fn new(state: Arc<RouterState>) -> DnsRouter {
        DnsRouter {
            state,
            routes: AnswerCache::new(),
            query_counters: Default::default(),
        }
    }

    /// The state it routes with.
    pub fn state(&self) -> &Arc<RouterState> {
        &self.state
    }
}

impl Router for DnsRouter {
    fn route(&self, client: IpAddr, ecs_prefix: Option<u8>) -> RouteAnswer {
        let client = client.to_canonical();
        // Read before deciding: a change while deciding leaves the entry stale, never wrong.
        let generation = self.state.generation();
        if let Some(answer) = self.routes.get(&self.state, client, generation) {
            return answer;
        }
        let route = self.state.route(client, ecs_prefix);
        let winner = route.decision.ranked.first();
        let addresses: Arc<[IpAddr]> = winner.and_then(|w| self.state.region(&w.name)).map_or_else(
            || Arc::from([]),
            |r| Arc::from(r.ingress.addresses.as_slice()),
        );
        let answer = RouteAnswer {
            region: winner.map_or_else(|| Arc::from(""), |w| Arc::from(w.name.as_str())),
            addresses,
            scope_prefix: route.scope,
        };
        self.routes
            .keep(&self.state, client, generation, &route, answer.clone());
        answer
    }

    fn region_addresses(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.state.region(name).map(|r| r.ingress.addresses.clone())
    }

    fn limited(&self, action: &'static str) {
        self.state
            .metrics
            .dns_limited
            .get_or_create(&vec![("action", action.to_owned())])
            .inc();
    }

    fn observe(&self, request: &[u8], response: Option<&[u8]>) {
        let metrics = &self.state.metrics;
        let Some(response) = response else {
            metrics.dns_dropped.inc();
            return;
        };
        let rcode = match response.get(3).map(|b| b & 0x0f) {
            Some(code @ 0..=5) => usize::from(code),
            _ => 6,
        };
        let qtype = match question_type(request) {
            Some(1) => 0,
            Some(28) => 1,
            Some(2) => 2,
            Some(6) => 3,
            Some(255) => 4,
            Some(_) => 5,
            None => 6,
        };
        let Some(slot) = self
            .query_counters
            .get(qtype)
            .and_then(|row| row.get(rcode))
        else {
            return;
        };
        slot.get_or_init(|| {
            metrics
                .dns_queries
                .get_or_create(&vec![
                    ("qtype", QTYPE_LABELS[qtype].to_owned()),
                    ("rcode", RCODE_LABELS[rcode].to_owned()),
                ])
                .clone()
        })
        .inc();
    }
}

/// The type of a packet's first question, read without decoding the whole packet.
fn question_type(packet: &[u8]) -> Option<u16> {
    if packet.get(4..6)? == [0, 0] {
        return None;
    }
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        if len & 0xc0 != 0 {
            return None; // a pointer in a question: not worth following for a metric
        }
        at += 1 + len;
    }
    let bytes = packet.get(at..at + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use std::path::Path;

    use std::time::{Duration, Instant};

    use meridian_catalogue::Region;

    use super::*;
    use crate::config::RouterConfig;
    use crate::controls::ControlStore;
    use crate::health::{FailureKind, ProbeResult};
    use crate::router::GeoView;

    /// A router over the repository's catalogue with no GeoIP database: every client gets the
    /// default order, us-east first.
    fn state() -> Arc<RouterState> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../regions");
        let regions: Vec<Region> = meridian_catalogue::load_dir(&dir)
            .unwrap()
            .into_values()
            .collect();
        let mut config = RouterConfig::default();
        config.policy.default_region = Some("us-east".into());
        let geo = GeoView::build(None, &regions).unwrap();
        Arc::new(RouterState::new(
            config,
            regions,
            geo,
            ControlStore::memory(),
        ))
    }

    fn probe(ok: bool, load: Option<f64>) -> ProbeResult {
        ProbeResult {
            ok,
            load,
            error: (!ok).then(|| "refused".to_owned()),
            failure: (!ok).then_some(FailureKind::Connect),
            latency: Duration::from_millis(1),
        }
    }

    #[test]
    fn cached_dns_answers_follow_health_and_rtt_changes() {
        let state = state();
        let dns = DnsRouter::new(Arc::clone(&state));
        let client: IpAddr = "203.0.113.0".parse().unwrap();
        let first = dns.route(client, Some(24));
        assert_eq!(&*first.region, "us-east");
        assert_eq!(
            dns.route(client, Some(24)),
            first,
            "the cached answer is the same"
        );
        assert_eq!(dns.routes.len(), 1, "and it was cached");

        // us-east goes down after `fall` failed probes: the next answer moves at once.
        let index = state
            .regions
            .iter()
            .position(|r| r.name == "us-east")
            .unwrap();
        for _ in 0..state.config.health.fall {
            state.record_probe(index, &probe(false, None));
        }
        let moved = dns.route(client, Some(24));
        assert_ne!(&*moved.region, "us-east");
        assert_eq!(moved, state_answer(&state, client));
        // An unchanged probe result (still down) keeps the cache valid.
        let generation = state.generation();
        state.record_probe(index, &probe(false, None));
        assert_eq!(state.generation(), generation);
        // Load reported by another region's probe is a change (it can set a penalty).
        state.record_probe((index + 1) % 3, &probe(true, Some(0.5)));
        assert_ne!(state.generation(), generation);

        // Measured RTTs: a recorded report changes the answer and is never cached (the
        // estimates fade with time).
        for _ in 0..10 {
            state
                .rtt
                .record(client, "ap-southeast", 5.0, Instant::now());
        }
        let measured = dns.route(client, Some(24));
        assert_eq!(measured, state_answer(&state, client));
        assert_eq!(&*measured.region, "ap-southeast");
        assert!(!dns.routes.holds(client, state.generation()));
    }

    /// What the uncached decision says.
    fn state_answer(state: &RouterState, client: IpAddr) -> RouteAnswer {
        let route = state.route(client, Some(24));
        let winner = route.decision.ranked.first().unwrap();
        RouteAnswer {
            region: winner.name.as_str().into(),
            addresses: state
                .region(&winner.name)
                .unwrap()
                .ingress
                .addresses
                .as_slice()
                .into(),
            scope_prefix: route.scope,
        }
    }

    #[test]
    fn question_type_reads_the_first_question_or_nothing() {
        // id, flags, qdcount 1, 0, 0, 0, then "ws.x." type AAAA class IN
        let mut packet = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        packet.extend_from_slice(&[2, b'w', b's', 1, b'x', 0, 0, 28, 0, 1]);
        assert_eq!(question_type(&packet), Some(28));
        assert_eq!(
            question_type(&packet[..packet.len() - 3]),
            None,
            "truncated"
        );
        let mut none = packet.clone();
        none[5] = 0;
        assert_eq!(question_type(&none), None, "no question");
        assert_eq!(question_type(&[0; 5]), None);
    }
}
