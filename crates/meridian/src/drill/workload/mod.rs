//! The drill's workload: synthetic users placed over the world with the demo cities, grouped in
//! rooms, each publishing room messages (with idempotency keys) and sending direct messages to a
//! partner, and behaving like a well-written client when its region goes away:
//!
//! - on `reconnect` (go-away) it stops starting new requests, keeps reading the old connection
//!   for `after_ms` (in-flight events still arrive), then closes it;
//! - on a closed socket, or after that wait, it asks the router again (`/v1/route?ip=` with its
//!   synthetic address), tries the ranked regions in order, with full-jitter exponential
//!   backoff between rounds, and says `hello` with `resume`;
//! - it keeps a version vector per room (as the reference client in `tests/tests/mesh.rs`
//!   does): for each origin region, the last position (epoch, seq) of that region's own events
//!   it received. Events with an `"origin"` count for their origin; events without one for the
//!   region it is connected to (the hello reply's `region`). It is seeded from the `origins` of
//!   the join reply (and of each `resumed` entry) plus the join's own position. `hello` carries
//!   `resume: [{room, epoch, seq, origins}]`, `epoch`/`seq` being the last position in the
//!   region it was connected to: the same region replays from there, another region replays
//!   exactly what the vector says is missing (`docs/protocol.md` §7);
//! - a publish or direct message that got no `ok` is sent again after reconnecting, with the
//!   same idempotency key / id.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::mesh::RouterApi;

mod client;

pub use client::run_client;

/// Where the workload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting and joining; nothing is published yet.
    Setup,
    /// Publishing and sending.
    Running,
    /// No new requests; in-flight ones finish, events are still read.
    Stopping,
    /// Close and exit.
    Done,
}

/// One synthetic user.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    /// Index in the workload.
    pub index: usize,
    /// User id.
    pub user: String,
    /// Its synthetic address (a demo city network).
    pub address: IpAddr,
    /// The router's ranking for it at the start (also the fallback when the router is down).
    pub ranking: Vec<(String, String)>,
    /// Its room.
    pub room: String,
    /// Whom it sends direct messages to.
    pub partner: Option<String>,
    /// Whether it publishes and sends (return-of-traffic clients only connect and join).
    pub active: bool,
    /// Wait until the router ranks this region first before the first connection.
    pub wait_for_region: Option<String>,
}

/// A client before rooms are assigned: address, city and the router's ranking.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Synthetic address.
    pub address: IpAddr,
    /// (region, ws_url), best first.
    pub ranking: Vec<(String, String)>,
}

/// Rooms and partners for `placed` clients: `rooms` rooms; with `per_region_only`, only
/// clients the router ranks identically share a room (so they stay together in one region
/// even when their first region fails), else each room mixes home regions.
pub fn assign_rooms(
    run: &str,
    placed: &[Placed],
    rooms: usize,
    per_region_only: bool,
) -> (Vec<ClientPlan>, Vec<String>) {
    let rooms = rooms.max(1);
    let mut names = Vec::new();
    let mut room_of = vec![String::new(); placed.len()];
    if per_region_only {
        // Groups of identically ranked clients, each split over rooms proportional to its size.
        let mut by_ranking: BTreeMap<Vec<&str>, Vec<usize>> = BTreeMap::new();
        for (i, p) in placed.iter().enumerate() {
            let key: Vec<&str> = p.ranking.iter().map(|(r, _)| r.as_str()).collect();
            by_ranking.entry(key).or_default().push(i);
        }
        let total = placed.len().max(1);
        for group in by_ranking.values() {
            let n = ((rooms * group.len()) as f64 / total as f64).round() as usize;
            let n = n.clamp(1, group.len().max(1));
            let size = group.len().div_ceil(n);
            for chunk in group.chunks(size.max(1)) {
                let name = format!("drill-{run}-r{}", names.len());
                for &i in chunk {
                    if let Some(slot) = room_of.get_mut(i) {
                        slot.clone_from(&name);
                    }
                }
                names.push(name);
            }
        }
    } else {
        // Each home region's clients go round the rooms, each region starting one room
        // further, so every room holds clients of every region (when a region has at least as
        // many clients as there are rooms).
        names = (0..rooms).map(|r| format!("drill-{run}-r{r}")).collect();
        let mut by_home: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, p) in placed.iter().enumerate() {
            let home = p.ranking.first().map_or("", |(r, _)| r.as_str());
            by_home.entry(home).or_default().push(i);
        }
        for (h, list) in by_home.values().enumerate() {
            for (q, &i) in list.iter().enumerate() {
                if let (Some(slot), Some(name)) = (room_of.get_mut(i), names.get((q + h) % rooms)) {
                    slot.clone_from(name);
                }
            }
        }
    }
    // Partner: the next member of the same room, cyclically.
    let mut members: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, room) in room_of.iter().enumerate() {
        members.entry(room.as_str()).or_default().push(i);
    }
    let user = |i: usize| format!("drill-{run}-c{i}");
    let mut plans: Vec<ClientPlan> = placed
        .iter()
        .enumerate()
        .map(|(i, p)| ClientPlan {
            index: i,
            user: user(i),
            address: p.address,
            ranking: p.ranking.clone(),
            room: room_of.get(i).cloned().unwrap_or_default(),
            partner: None,
            active: true,
            wait_for_region: None,
        })
        .collect();
    for list in members.values() {
        if list.len() < 2 {
            continue;
        }
        for (k, &i) in list.iter().enumerate() {
            let next = list.get((k + 1) % list.len()).copied().unwrap_or(i);
            if let Some(plan) = plans.get_mut(i) {
                plan.partner = Some(user(next));
            }
        }
    }
    (plans, names)
}

/// What every client shares.
#[derive(Debug)]
pub struct Shared {
    /// Run id (in user ids, rooms and message data).
    pub run: String,
    /// The router.
    pub router: RouterApi,
    /// Phase changes.
    pub phase: watch::Receiver<Phase>,
    /// Mean interval between room publishes of one client.
    pub publish_every: Duration,
    /// Mean interval between direct messages of one client.
    pub direct_every: Duration,
    /// The drill's clock origin.
    pub start: Instant,
    /// Seed for jitter.
    pub seed: u64,
}

impl Shared {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placed(_city: &'static str, ranking: &[&str]) -> Placed {
        Placed {
            address: "10.0.0.1".parse().unwrap(),
            ranking: ranking
                .iter()
                .map(|r| ((*r).to_owned(), format!("ws://{r}/v1/ws")))
                .collect(),
        }
    }

    fn clients() -> Vec<Placed> {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(placed("New York", &["us", "eu", "ap"]));
            v.push(placed("Berlin", &["eu", "us", "ap"]));
            v.push(placed("Singapore", &["ap", "eu", "us"]));
            v.push(placed("Sydney", &["ap", "us", "eu"]));
        }
        v
    }

    #[test]
    fn per_region_rooms_hold_identically_ranked_clients_only() {
        let placed = clients();
        let (plans, rooms) = assign_rooms("t", &placed, 8, true);
        assert!(rooms.len() >= 4);
        for room in &rooms {
            let rankings: std::collections::BTreeSet<Vec<String>> = plans
                .iter()
                .filter(|p| &p.room == room)
                .map(|p| p.ranking.iter().map(|(r, _)| r.clone()).collect())
                .collect();
            assert_eq!(rankings.len(), 1, "room {room} mixes rankings");
        }
        // Every client has a partner in its own room.
        for p in &plans {
            let partner = p.partner.as_ref().expect("partner");
            let q = plans
                .iter()
                .find(|q| &q.user == partner)
                .expect("partner exists");
            assert_eq!(q.room, p.room);
            assert_ne!(&q.user, &p.user);
        }
    }

    #[test]
    fn default_rooms_mix_home_regions() {
        let placed = clients();
        let (plans, rooms) = assign_rooms("t", &placed, 4, false);
        assert_eq!(rooms.len(), 4);
        for room in &rooms {
            let homes: std::collections::BTreeSet<&str> = plans
                .iter()
                .filter(|p| &p.room == room)
                .map(|p| p.ranking[0].0.as_str())
                .collect();
            assert!(homes.len() >= 2, "room {room} is single-region");
        }
    }
}
