//! What each workload client saw (its [`ClientLog`]) and the pure accounting that turns the logs
//! into the drill's numbers: messages published / expected / delivered / lost / duplicated per
//! origin region, direct messages, re-home times. No I/O here, so the rules are unit-tested.
//!
//! Counting rules (also in `docs/drills.md`):
//! - A room message is **published** when its publisher got an `ok` for it (a retry with the
//!   same idempotency key is the same message). Its origin is the region the publisher was
//!   connected to when the `ok` arrived.
//! - Every other client of the room is an **expected** receiver (all clients join before the
//!   first publish and stay members to the end). A receiver that got the message's key at least
//!   once **delivered** it; never: **lost**; more than once: each extra copy is **duplicated**.
//! - A lost message is classed by where the receiver was when it was published: in the same
//!   region, in another region (needs cross-region replication), or reconnecting.
//! - Direct messages: **acked** when `send` answered `ok`; lost if the partner never got it;
//!   `user_offline` answers are **refused** (the sender knows; they are retried, not lost).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

/// One interruption of a client's connection and how it ended.
#[derive(Debug, Clone, Serialize)]
pub struct Disruption {
    /// When the client learnt it had to leave (a `reconnect` event) or lost the socket.
    #[serde(serialize_with = "secs")]
    pub lost_at: Duration,
    /// `reconnect:<reason>`, `closed:<code>` or `error:<text>`.
    pub cause: String,
    /// The region it was connected to.
    pub from: Option<String>,
    /// When `hello` (with `resume`) succeeded again.
    #[serde(serialize_with = "opt_secs")]
    pub resumed_at: Option<Duration>,
    /// Where it resumed.
    pub to: Option<String>,
    /// Connection attempts it took (regions tried, over all rounds).
    pub attempts: u32,
}

/// A room message the client published and got `ok` for.
#[derive(Debug, Clone)]
pub struct Published {
    /// The idempotency key (also carried in the message data).
    pub key: String,
    /// Region of the connection that got the `ok`.
    pub region: String,
    /// When the `ok` arrived.
    pub at: Duration,
}

/// A direct message that got `ok`.
#[derive(Debug, Clone)]
pub struct DirectSent {
    /// Its id (carried in the data).
    pub id: String,
    /// Region of the sender's connection.
    pub region: String,
    /// When the `ok` arrived.
    pub at: Duration,
}

/// Everything one client records; shared with the orchestrator behind a mutex.
#[derive(Debug, Clone, Default)]
pub struct ClientLog {
    /// The region of the current connection (`None` while (re)connecting).
    pub region: Option<String>,
    /// The room was joined on the first connection.
    pub joined: bool,
    /// Every change of `region`, with its time.
    pub history: Vec<(Duration, Option<String>)>,
    /// Every interruption.
    pub disruptions: Vec<Disruption>,
    /// Room messages published (acked).
    pub published: Vec<Published>,
    /// Keys of other clients' room messages received, with how many times.
    pub received: HashMap<String, u32>,
    /// Direct messages acked.
    pub directs_acked: Vec<DirectSent>,
    /// `user_offline` answers to `send`, by the sender's region.
    pub direct_refused: BTreeMap<String, u64>,
    /// Direct message ids received, with how many times.
    pub directs_received: HashMap<String, u32>,
    /// `resumed[].status` values seen on reconnects.
    pub resume_status: BTreeMap<String, u64>,
    /// Error replies to publish / send / join, by code.
    pub request_errors: BTreeMap<String, u64>,
    /// A publish still without `ok` when the workload stopped.
    pub publish_pending_at_end: bool,
    /// A direct message still without `ok` when the workload stopped.
    pub direct_pending_at_end: bool,
    /// The last few connection errors, for the report.
    pub errors: Vec<String>,
    /// Origin regions in the client's version vector.
    pub origins: Vec<String>,
    /// Publishes sent again on a new connection after no `ok` (key, region of the retry).
    pub retried: Vec<(String, String)>,
    /// Room events dropped as already seen (origin position at or below the vector).
    pub deduped: u64,
    /// Publishes without `ok` whose own message came back after reconnecting (so they were
    /// published and are not retried).
    pub recovered_acks: u64,
}

impl ClientLog {
    /// Records the current region (a new connection, or `None` when it ended).
    pub fn set_region(&mut self, at: Duration, region: Option<String>) {
        if self.region != region {
            self.region = region.clone();
            self.history.push((at, region));
        }
    }

    /// The region the client was connected to at `at`.
    pub fn region_at(&self, at: Duration) -> Option<&str> {
        self.history
            .iter()
            .take_while(|(t, _)| *t <= at)
            .last()
            .and_then(|(_, r)| r.as_deref())
    }

    /// Keeps the last 20 errors.
    pub fn error(&mut self, text: String) {
        if self.errors.len() >= 20 {
            self.errors.remove(0);
        }
        self.errors.push(text);
    }
}

/// A client as the accounting sees it.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    /// User id.
    pub user: String,
    /// Its room.
    pub room: String,
    /// Whose direct messages it receives from it: its partner (user id).
    pub partner: Option<String>,
    /// Its log at the end.
    pub log: ClientLog,
}

/// Room or direct message counts of one origin region.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Acked messages.
    pub published: u64,
    /// (message, receiver) pairs that should be delivered.
    pub expected: u64,
    /// Pairs delivered at least once.
    pub delivered: u64,
    /// Pairs never delivered.
    pub lost: u64,
    /// Lost while receiver and publisher were connected to the same region.
    pub lost_same_region: u64,
    /// Lost while the receiver was connected to another region (needs replication).
    pub lost_cross_region: u64,
    /// Lost while the receiver was reconnecting.
    pub lost_reconnecting: u64,
    /// Extra copies received.
    pub duplicated: u64,
    /// Of those, copies of a message its publisher sent again on a new connection in another
    /// region after the first one's `ok` was lost (idempotency keys are per region).
    pub duplicated_retried: u64,
    /// Direct messages only: `user_offline` answers (retried by the sender).
    pub refused: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.published += other.published;
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.lost += other.lost;
        self.lost_same_region += other.lost_same_region;
        self.lost_cross_region += other.lost_cross_region;
        self.lost_reconnecting += other.lost_reconnecting;
        self.duplicated += other.duplicated;
        self.duplicated_retried += other.duplicated_retried;
        self.refused += other.refused;
    }
}

/// Message accounting of a whole drill.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MessageStats {
    /// Room messages by origin region.
    pub rooms: BTreeMap<String, Counts>,
    /// Sum of `rooms`.
    pub rooms_total: Counts,
    /// Direct messages by the sender's region.
    pub direct: BTreeMap<String, Counts>,
    /// Sum of `direct`.
    pub direct_total: Counts,
    /// Keys received by someone but never acked to their publisher (e.g. the ack was lost in
    /// a kill): not counted as published; a retry of one in another region shows as duplicated.
    pub unacked_delivered: u64,
    /// Clients whose last publish / direct message never got `ok` before the workload stopped.
    pub pending_at_end: u64,
    /// A few lost or duplicated room messages (`key -> receiver: what`), for the report.
    pub examples: Vec<String>,
    /// Room events the clients received twice from the mesh and dropped by origin position
    /// (not counted as duplicated: a client that keeps the version vector never shows them).
    pub deduped_by_clients: u64,
    /// Publishes whose `ok` was lost but whose message came back to the publisher after it
    /// reconnected: counted as published, not retried.
    pub acks_recovered: u64,
}

/// Counts every room message and direct message of `clients`.
pub fn account(clients: &[ClientRecord]) -> MessageStats {
    let mut stats = MessageStats::default();
    let mut by_room: BTreeMap<&str, Vec<&ClientRecord>> = BTreeMap::new();
    for c in clients {
        by_room.entry(c.room.as_str()).or_default().push(c);
    }
    let by_user: HashMap<&str, &ClientRecord> =
        clients.iter().map(|c| (c.user.as_str(), c)).collect();
    let mut acked_keys = std::collections::HashSet::new();
    for publisher in clients {
        let members = by_room.get(publisher.room.as_str()).map_or(&[][..], |v| v);
        for p in &publisher.log.published {
            acked_keys.insert(p.key.as_str());
            let row = stats.rooms.entry(p.region.clone()).or_default();
            row.published += 1;
            for receiver in members.iter().filter(|m| m.user != publisher.user) {
                row.expected += 1;
                match receiver.log.received.get(&p.key).copied().unwrap_or(0) {
                    0 => {
                        row.lost += 1;
                        let class = match receiver.log.region_at(p.at) {
                            None => {
                                row.lost_reconnecting += 1;
                                "reconnecting"
                            }
                            Some(r) if r == p.region => {
                                row.lost_same_region += 1;
                                "same region"
                            }
                            Some(_) => {
                                row.lost_cross_region += 1;
                                "cross region"
                            }
                        };
                        if stats.examples.len() < 10 {
                            stats.examples.push(format!(
                                "{} -> {}: lost ({class}; acked in {} at {:.3}s)",
                                p.key,
                                receiver.user,
                                p.region,
                                p.at.as_secs_f64()
                            ));
                        }
                    }
                    n => {
                        row.delivered += 1;
                        if n > 1 {
                            let extra = u64::from(n - 1);
                            row.duplicated += extra;
                            let retried = publisher.log.retried.iter().any(|(k, _)| *k == p.key);
                            if retried {
                                row.duplicated_retried += extra;
                            }
                            if stats.examples.len() < 10 {
                                stats.examples.push(format!(
                                    "{} -> {}: {n} copies ({}acked in {} at {:.3}s)",
                                    p.key,
                                    receiver.user,
                                    if retried {
                                        "retried after a lost ok; "
                                    } else {
                                        ""
                                    },
                                    p.region,
                                    p.at.as_secs_f64()
                                ));
                            }
                        }
                    }
                }
            }
        }
        if publisher.log.publish_pending_at_end || publisher.log.direct_pending_at_end {
            stats.pending_at_end += 1;
        }
        for (region, n) in &publisher.log.direct_refused {
            stats.direct.entry(region.clone()).or_default().refused += n;
        }
        let partner = publisher
            .partner
            .as_deref()
            .and_then(|p| by_user.get(p).copied());
        for d in &publisher.log.directs_acked {
            let row = stats.direct.entry(d.region.clone()).or_default();
            row.published += 1;
            row.expected += 1;
            let got = partner.map_or(0, |p| {
                p.log.directs_received.get(&d.id).copied().unwrap_or(0)
            });
            match got {
                0 => {
                    row.lost += 1;
                    match partner.and_then(|p| p.log.region_at(d.at)) {
                        None => row.lost_reconnecting += 1,
                        Some(r) if r == d.region => row.lost_same_region += 1,
                        Some(_) => row.lost_cross_region += 1,
                    }
                }
                n => {
                    row.delivered += 1;
                    row.duplicated += u64::from(n - 1);
                }
            }
        }
    }
    let mut unacked = std::collections::HashSet::new();
    for c in clients {
        for key in c.log.received.keys() {
            if !acked_keys.contains(key.as_str()) {
                unacked.insert(key.as_str());
            }
        }
    }
    stats.unacked_delivered = unacked.len() as u64;
    stats.deduped_by_clients = clients.iter().map(|c| c.log.deduped).sum();
    stats.acks_recovered = clients.iter().map(|c| c.log.recovered_acks).sum();
    for row in stats.rooms.values() {
        stats.rooms_total.add(row);
    }
    for row in stats.direct.values() {
        stats.direct_total.add(row);
    }
    stats
}

/// Percentiles of a set of durations (nearest rank).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: usize,
    /// Median, seconds.
    pub p50_s: Option<f64>,
    /// 95th percentile, seconds.
    pub p95_s: Option<f64>,
    /// 99th percentile, seconds.
    pub p99_s: Option<f64>,
    /// Largest, seconds.
    pub max_s: Option<f64>,
}

/// Nearest-rank percentiles of `samples`.
pub fn percentiles(samples: &[Duration]) -> Percentiles {
    let mut sorted: Vec<f64> = samples.iter().map(Duration::as_secs_f64).collect();
    sorted.sort_by(f64::total_cmp);
    let rank = |q: f64| -> Option<f64> {
        if sorted.is_empty() {
            return None;
        }
        let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted.get(i).copied().map(round3)
    };
    Percentiles {
        count: sorted.len(),
        p50_s: rank(0.50),
        p95_s: rank(0.95),
        p99_s: rank(0.99),
        max_s: sorted.last().copied().map(round3),
    }
}

/// How the clients of the disrupted region fared.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rehome {
    /// Clients connected to the region when it was disrupted.
    pub affected: usize,
    /// Of those, resumed in another region.
    pub resumed: usize,
    /// Of those, never disrupted (still on the region at the end of the wait).
    pub stayed: usize,
    /// Of those, disrupted but not (yet) resumed elsewhere.
    pub not_resumed: usize,
    /// From the disruption (drain of the nodes / kill) to `hello` ok elsewhere.
    pub since_disruption: Percentiles,
    /// From the moment each client lost its connection (or got `reconnect`) to resumed.
    pub since_lost: Percentiles,
    /// Fraction resumed within the p95 SLO bound, and within the p99 one.
    pub within_p95_bound: f64,
    /// See `within_p95_bound`.
    pub within_p99_bound: f64,
    /// Where they went.
    pub destinations: BTreeMap<String, usize>,
    /// Connection attempts per affected client until resumed (max).
    pub max_attempts: u32,
}

/// The re-home outcome of each affected client: `Some((since disruption, since lost, to,
/// attempts))` once resumed in a region other than `region`.
pub fn rehome_of(
    log: &ClientLog,
    region: &str,
    disrupted_at: Duration,
) -> Option<(Duration, Duration, String, u32)> {
    // A client may get `reconnect` a moment before the drill notes the disruption time.
    let from = disrupted_at.saturating_sub(Duration::from_secs(1));
    let d = log.disruptions.iter().find(|d| d.lost_at >= from)?;
    let resumed = d.resumed_at?;
    let to = d.to.clone()?;
    if to == region {
        return None;
    }
    Some((
        resumed.saturating_sub(disrupted_at),
        resumed.saturating_sub(d.lost_at),
        to,
        d.attempts,
    ))
}

/// Summarises the re-homing of `affected` clients (their logs) away from `region`.
pub fn rehome(
    affected: &[&ClientLog],
    region: &str,
    disrupted_at: Duration,
    p95_bound: Duration,
    p99_bound: Duration,
) -> Rehome {
    let mut out = Rehome {
        affected: affected.len(),
        ..Rehome::default()
    };
    let (mut since_disruption, mut since_lost) = (Vec::new(), Vec::new());
    for log in affected {
        match rehome_of(log, region, disrupted_at) {
            Some((a, b, to, attempts)) => {
                out.resumed += 1;
                since_disruption.push(a);
                since_lost.push(b);
                *out.destinations.entry(to).or_default() += 1;
                out.max_attempts = out.max_attempts.max(attempts);
            }
            None if log.region.as_deref() == Some(region)
                && !log
                    .disruptions
                    .iter()
                    .any(|d| d.lost_at + Duration::from_secs(1) >= disrupted_at) =>
            {
                out.stayed += 1
            }
            None => out.not_resumed += 1,
        }
    }
    let within = |bound: Duration| {
        if affected.is_empty() {
            1.0
        } else {
            since_disruption.iter().filter(|d| **d <= bound).count() as f64 / affected.len() as f64
        }
    };
    out.within_p95_bound = within(p95_bound);
    out.within_p99_bound = within(p99_bound);
    out.since_disruption = percentiles(&since_disruption);
    out.since_lost = percentiles(&since_lost);
    out
}

/// Serialises a duration as seconds.
pub fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round3(d.as_secs_f64()))
}

/// Serialises an optional duration as seconds or null.
pub fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(round3(d.as_secs_f64())),
        None => s.serialize_none(),
    }
}

/// Milliseconds precision is plenty for a report.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    fn client(user: &str, room: &str, partner: Option<&str>, region: &str) -> ClientRecord {
        let mut log = ClientLog::default();
        log.set_region(s(0.0), Some(region.into()));
        ClientRecord {
            user: user.into(),
            room: room.into(),
            partner: partner.map(Into::into),
            log,
        }
    }

    fn publish(c: &mut ClientRecord, key: &str, at: f64) {
        let region = c.log.region.clone().unwrap_or_default();
        c.log.published.push(Published {
            key: key.into(),
            region,
            at: s(at),
        });
    }

    #[test]
    fn counts_delivered_lost_and_duplicated_per_origin_region() {
        let mut a = client("a", "r1", Some("b"), "us-east");
        let mut b = client("b", "r1", Some("a"), "us-east");
        let mut c = client("c", "r1", None, "eu-central");
        publish(&mut a, "a-1", 1.0);
        publish(&mut a, "a-2", 2.0);
        publish(&mut c, "c-1", 1.0);
        b.log.received.insert("a-1".into(), 1);
        b.log.received.insert("a-2".into(), 2); // one duplicate
        c.log.received.insert("a-1".into(), 1); // a-2 lost cross-region
        a.log.received.insert("c-1".into(), 1); // b lost c-1 cross-region
        b.log.received.insert("zz-9".into(), 1); // never acked
        let stats = account(&[a, b, c]);
        let us = &stats.rooms["us-east"];
        assert_eq!(
            (
                us.published,
                us.expected,
                us.delivered,
                us.lost,
                us.duplicated
            ),
            (2, 4, 3, 1, 1)
        );
        assert_eq!(us.lost_cross_region, 1);
        let eu = &stats.rooms["eu-central"];
        assert_eq!(
            (eu.published, eu.expected, eu.delivered, eu.lost),
            (1, 2, 1, 1)
        );
        assert_eq!(stats.rooms_total.lost, 2);
        assert_eq!(stats.unacked_delivered, 1);
    }

    #[test]
    fn a_loss_while_reconnecting_is_classed_so() {
        let mut a = client("a", "r", None, "ap-southeast");
        let mut b = client("b", "r", None, "ap-southeast");
        b.log.set_region(s(5.0), None);
        b.log.set_region(s(6.0), Some("eu-central".into()));
        publish(&mut a, "a-1", 5.5);
        publish(&mut a, "a-2", 4.0);
        let stats = account(&[a, b]);
        let row = &stats.rooms["ap-southeast"];
        assert_eq!(row.lost_reconnecting, 1);
        assert_eq!(row.lost_same_region, 1);
    }

    #[test]
    fn direct_messages_count_refusals_apart_from_losses() {
        let mut a = client("a", "r", Some("b"), "us-east");
        let mut b = client("b", "r", Some("a"), "us-east");
        a.log.directs_acked.push(DirectSent {
            id: "a-d1".into(),
            region: "us-east".into(),
            at: s(1.0),
        });
        a.log.directs_acked.push(DirectSent {
            id: "a-d2".into(),
            region: "us-east".into(),
            at: s(2.0),
        });
        a.log.direct_refused.insert("us-east".into(), 3);
        b.log.directs_received.insert("a-d1".into(), 1);
        let stats = account(&[a, b]);
        let row = &stats.direct["us-east"];
        assert_eq!(
            (row.published, row.delivered, row.lost, row.refused),
            (2, 1, 1, 3)
        );
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(|i| s(f64::from(i))).collect();
        let p = percentiles(&samples);
        assert_eq!(p.p50_s, Some(50.0));
        assert_eq!(p.p99_s, Some(99.0));
        assert_eq!(p.max_s, Some(100.0));
        assert_eq!(percentiles(&[]).p50_s, None);
    }

    #[test]
    fn rehome_counts_only_moves_to_another_region() {
        let mut moved = ClientLog::default();
        moved.set_region(s(0.0), Some("ap-southeast".into()));
        moved.disruptions.push(Disruption {
            lost_at: s(10.5),
            cause: "reconnect:draining".into(),
            from: Some("ap-southeast".into()),
            resumed_at: Some(s(12.0)),
            to: Some("eu-central".into()),
            attempts: 1,
        });
        let mut stayed = ClientLog::default();
        stayed.set_region(s(0.0), Some("ap-southeast".into()));
        let mut back = ClientLog::default();
        back.disruptions.push(Disruption {
            lost_at: s(10.2),
            cause: "closed:1006".into(),
            from: Some("ap-southeast".into()),
            resumed_at: Some(s(11.0)),
            to: Some("ap-southeast".into()),
            attempts: 2,
        });
        let r = rehome(
            &[&moved, &stayed, &back],
            "ap-southeast",
            s(10.0),
            s(30.0),
            s(60.0),
        );
        assert_eq!(
            (r.affected, r.resumed, r.stayed, r.not_resumed),
            (3, 1, 1, 1)
        );
        assert_eq!(r.since_disruption.max_s, Some(2.0));
        assert_eq!(r.since_lost.max_s, Some(1.5));
        assert!((r.within_p95_bound - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.destinations["eu-central"], 1);
    }
}
