//! Ranking regions for one client.
//!
//! [`choose_region`] applies these rules, each covered by a unit test below:
//!
//! 1. **Candidates** are the regions whose health is not [`Health::Down`] ([`Health::Unknown`]
//!    counts as up, so a router that has just started still routes) and whose control is
//!    [`ControlState::Active`] with a weight above 0. Drained, disabled and zero-weight regions
//!    are never returned.
//! 2. **Base estimate.** Measured RTT for the region, when it has at least
//!    [`Policy::min_rtt_samples`] samples (reason [`Reason::Rtt`]); otherwise the great-circle
//!    distance from the client's GeoIP location divided by [`Policy::fiber_km_per_ms`]
//!    (reason [`Reason::Geo`]).
//! 3. **Load penalty.** Above [`Policy::load_penalty_start`] the estimate grows linearly, reaching
//!    [`Policy::load_penalty_ms_at_full`] at load 1.0 and continuing past it: a full region sinks
//!    towards the bottom of the list but stays usable, since a slow answer beats none.
//! 4. **Weight.** The (penalised) estimate is divided by the control's weight, so a weight of 0.5
//!    makes a region look twice as far away.
//! 5. **Order.** Lowest estimate first; equal estimates by region name, so the answer never
//!    depends on the order of the input.
//! 6. **No data.** A candidate with neither enough RTT samples nor a client location has no
//!    estimate: it gets reason [`Reason::Default`] and ranks after every estimated candidate, the
//!    policy's [`Policy::default_region`] first, then by name.
//! 7. **Displacement.** When the client's natural region, the nearest by pure geography among the
//!    regions that are not disabled, is drained the winner's reason becomes [`Reason::Drain`]; when
//!    it is down, [`Reason::Failover`]. The reason says why the user is not at their natural
//!    region. A disabled region is out of service altogether, so it is nobody's natural region.
//! 8. **Near ties.** Estimates within [`Policy::tie_window_ms`] of the best count as tied: the
//!    winner among them is picked by rendezvous hashing of the client's network
//!    ([`ClientView::tie_key`]) with each region's name, so one network always gets the same
//!    region, different networks spread over the tied regions, and noise in the estimates does
//!    not make answers flap. Exact ties otherwise order by name.
//! 9. **Operator pins** come before everything else: when [`ClientView::pin`] names a candidate,
//!    it is ranked first with reason [`Reason::Pin`]. A pin to a region that cannot take users
//!    (down, drained, disabled) is ignored rather than black-holing its network.
//! 10. **All down.** When no region is a candidate only because every region that is neither
//!     drained nor disabled is down, those regions are ranked as if they were up, every entry
//!     with reason [`Reason::Failover`], and [`Decision::all_down`] is set: a least-bad answer
//!     beats no answer, and the flag goes to metrics and alerts.
//! 11. **Nothing usable.** No candidates otherwise (every region drained or disabled, or an
//!     empty catalogue) gives an empty list; the caller answers SERVFAIL / 503.
//!
//! Inputs come from GeoIP, RTT beacons and load reports; numbers that are not finite (or negative
//! RTTs and loads) are ignored rather than trusted, and nothing here panics.

use meridian_catalogue::Region;
use serde::{Deserialize, Serialize};

/// A region's health as the router's checks currently see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Health {
    /// Checks pass.
    Up,
    /// Checks fail; the region gets no users.
    Down,
    /// Not checked yet; routed to as if up.
    Unknown,
}

/// The operator's routing control for a region, shared by every router instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ControlState {
    /// Takes users normally.
    Active,
    /// Takes no new users (existing sessions move away on their own schedule).
    Drained,
    /// Out of service; not even counted as anyone's natural region.
    Disabled,
}

/// A routing control: the state and a weight in (0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Whether the region takes users.
    pub state: ControlState,
    /// In (0, 1]; the estimate is divided by it. Above 1 counts as 1; 0, below or NaN as drained.
    pub weight: f64,
}

impl Control {
    /// Active at full weight: the control a region has when the operator has said nothing.
    pub const ACTIVE: Control = Control {
        state: ControlState::Active,
        weight: 1.0,
    };
}

impl Default for Control {
    fn default() -> Self {
        Self::ACTIVE
    }
}

/// One catalogue region with the router's live view of it.
#[derive(Debug, Clone, Copy)]
pub struct RegionView<'a> {
    /// The catalogue entry (name and coordinates are what routing reads).
    pub region: &'a Region,
    /// Health-check state.
    pub health: Health,
    /// Operator control.
    pub control: Control,
    /// Connections / capacity, 0 upwards (can exceed 1); `None` when no report has arrived.
    pub load: Option<f64>,
}

impl<'a> RegionView<'a> {
    /// An up, active, full-weight region with no load report.
    pub fn new(region: &'a Region) -> Self {
        Self {
            region,
            health: Health::Up,
            control: Control::ACTIVE,
            load: None,
        }
    }

    /// The weight to divide by, or `None` when the region takes no new users.
    fn usable_weight(&self, ignore_health: bool) -> Option<f64> {
        if (self.health == Health::Down && !ignore_health) || self.is_drained() {
            return None;
        }
        match self.control.state {
            ControlState::Active => Some(self.control.weight.min(1.0)),
            ControlState::Drained | ControlState::Disabled => None,
        }
    }

    /// Drained by state, or by a weight that leaves nothing to route.
    fn is_drained(&self) -> bool {
        let weight = self.control.weight;
        self.control.state == ControlState::Drained || weight.is_nan() || weight <= 0.0
    }
}

/// RTT measured from the client's network to one region (from beacons, aggregated elsewhere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasuredRtt {
    /// Region name.
    pub region: String,
    /// Round-trip time, milliseconds.
    pub rtt_ms: f64,
    /// How many measurements the figure is built from.
    pub samples: u32,
}

/// What the router knows about the client asking.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientView {
    /// (latitude, longitude) in degrees from GeoIP; `None` when the address is not in the
    /// database (out-of-range values are treated the same way).
    pub location: Option<(f64, f64)>,
    /// Measured RTTs for the client's network. With several entries for one region, the one with
    /// the most samples is used (the first of equals).
    pub measured_rtt_ms: Vec<MeasuredRtt>,
    /// The region an operator pinned the client's network to, if any.
    pub pin: Option<String>,
    /// A stable hash of the client's network (e.g. its /24 or /48), used to break near ties.
    pub tie_key: u64,
}

/// Tunables of the decision, from the router's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Measured RTT replaces geography only with at least this many samples.
    pub min_rtt_samples: u32,
    /// Load (connections / capacity) at which the penalty starts, in [0, 1).
    pub load_penalty_start: f64,
    /// Penalty added at load 1.0, ms; it keeps growing at the same slope beyond.
    pub load_penalty_ms_at_full: f64,
    /// Great-circle km per ms of RTT. Light in fibre covers ~200 km/ms one way; a round trip
    /// halves that and real routes are not great circles, so ~100 is a fair default.
    pub fiber_km_per_ms: f64,
    /// Region ranked first among those with no estimate (unknown client location, no RTT data).
    pub default_region: Option<String>,
    /// Estimates this close to the best one (ms) count as a tie, broken by the client's network.
    pub tie_window_ms: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            min_rtt_samples: 10,
            load_penalty_start: 0.8,
            load_penalty_ms_at_full: 100.0,
            fiber_km_per_ms: 100.0,
            default_region: None,
            tie_window_ms: 1.0,
        }
    }
}

/// A policy value out of range; comes from the router's config, so fix the config and retry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `fiber_km_per_ms` must be finite and above 0.
    #[error("fiber_km_per_ms = {0}: must be finite and above 0")]
    FiberKmPerMs(f64),
    /// `load_penalty_start` must be in [0, 1).
    #[error("load_penalty_start = {0}: must be in [0, 1)")]
    LoadPenaltyStart(f64),
    /// `load_penalty_ms_at_full` must be finite and at least 0.
    #[error("load_penalty_ms_at_full = {0}: must be finite and at least 0")]
    LoadPenaltyMsAtFull(f64),
    /// `tie_window_ms` must be finite and at least 0.
    #[error("tie_window_ms = {0}: must be finite and at least 0")]
    TieWindowMs(f64),
}

impl Policy {
    /// Checks the ranges documented on each field. `choose_region` does not panic on an invalid
    /// policy, but its ranking would be meaningless, so the router validates at start-up.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !(self.fiber_km_per_ms.is_finite() && self.fiber_km_per_ms > 0.0) {
            return Err(PolicyError::FiberKmPerMs(self.fiber_km_per_ms));
        }
        if !(0.0..1.0).contains(&self.load_penalty_start) {
            return Err(PolicyError::LoadPenaltyStart(self.load_penalty_start));
        }
        if !(self.load_penalty_ms_at_full.is_finite() && self.load_penalty_ms_at_full >= 0.0) {
            return Err(PolicyError::LoadPenaltyMsAtFull(
                self.load_penalty_ms_at_full,
            ));
        }
        if !(self.tie_window_ms.is_finite() && self.tie_window_ms >= 0.0) {
            return Err(PolicyError::TieWindowMs(self.tie_window_ms));
        }
        Ok(())
    }
}

/// Why a region sits where it does in the ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// Estimated from great-circle distance.
    Geo,
    /// Estimated from measured RTT.
    Rtt,
    /// Winner because the client's natural region is down.
    Failover,
    /// Winner because the client's natural region is drained.
    Drain,
    /// No estimate possible; ordered by the policy's default region, then name.
    Default,
    /// Winner because an operator pinned the client's network to it.
    Pin,
}

impl Reason {
    /// Every reason, in [`Reason::index`] order.
    pub const ALL: [Reason; 6] = [
        Reason::Geo,
        Reason::Rtt,
        Reason::Failover,
        Reason::Drain,
        Reason::Default,
        Reason::Pin,
    ];

    /// The name used on the wire and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Geo => "geo",
            Reason::Rtt => "rtt",
            Reason::Failover => "failover",
            Reason::Drain => "drain",
            Reason::Default => "default",
            Reason::Pin => "pin",
        }
    }

    /// Position in [`Reason::ALL`].
    pub fn index(self) -> usize {
        match self {
            Reason::Geo => 0,
            Reason::Rtt => 1,
            Reason::Failover => 2,
            Reason::Drain => 3,
            Reason::Default => 4,
            Reason::Pin => 5,
        }
    }
}

/// The ranking with the facts the caller reports or uses to size the ECS scope.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decision {
    /// Best first; empty when no region can take users.
    pub ranked: Vec<Ranked>,
    /// Every routable region is down: the ranking is a least-bad answer.
    pub all_down: bool,
    /// The winner came from a near tie broken by the client's network hash, so the answer holds
    /// only for that network.
    pub tie_broken: bool,
    /// The winner is an operator pin.
    pub pinned: bool,
}

/// One entry of the ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    /// Region name.
    pub name: String,
    /// Estimated RTT in ms after load penalty and weight; `None` for [`Reason::Default`] entries,
    /// which have nothing to estimate from (a number there would be made up).
    pub estimated_rtt_ms: Option<f64>,
    /// Why it is here.
    pub reason: Reason,
}

/// Ranks the candidate regions for `client`, best first; empty when no region can take users.
/// The rules are in this module's documentation.
pub fn choose_region(
    regions: &[RegionView<'_>],
    client: &ClientView,
    policy: &Policy,
) -> Vec<Ranked> {
    decide(regions, client, policy).ranked
}

/// [`choose_region`] with the facts behind the ranking.
pub fn decide(regions: &[RegionView<'_>], client: &ClientView, policy: &Policy) -> Decision {
    let mut decision = Decision {
        ranked: rank(regions, client, policy, false),
        ..Decision::default()
    };
    if decision.ranked.is_empty() {
        decision.ranked = rank(regions, client, policy, true);
        decision.all_down = !decision.ranked.is_empty();
        for entry in &mut decision.ranked {
            entry.reason = Reason::Failover;
        }
        return decision;
    }
    if let Some(pin) = client.pin.as_deref() {
        if let Some(at) = decision.ranked.iter().position(|r| r.name == pin) {
            let mut pinned = decision.ranked.remove(at);
            pinned.reason = Reason::Pin;
            decision.ranked.insert(0, pinned);
            decision.pinned = true;
            return decision;
        }
    }
    decision.tie_broken =
        break_near_tie(&mut decision.ranked, client.tie_key, policy.tie_window_ms);
    decision
}

/// Moves the rendezvous-hash winner among the entries within `window` ms of the best to the
/// front, keeping the winner's displacement reason. True when more than one entry was tied.
fn break_near_tie(ranked: &mut [Ranked], tie_key: u64, window: f64) -> bool {
    let Some(best) = ranked.first().and_then(|r| r.estimated_rtt_ms) else {
        return false;
    };
    let tied = ranked
        .iter()
        .take_while(|r| r.estimated_rtt_ms.is_some_and(|ms| ms - best <= window))
        .count();
    if tied < 2 {
        return false;
    }
    let winner = ranked
        .iter()
        .take(tied)
        .enumerate()
        .max_by_key(|(_, r)| {
            (
                rendezvous(tie_key, &r.name),
                std::cmp::Reverse(r.name.clone()),
            )
        })
        .map_or(0, |(i, _)| i);
    if winner != 0 {
        let reason = ranked[0].reason;
        ranked[..=winner].rotate_right(1);
        if matches!(reason, Reason::Drain | Reason::Failover) {
            ranked[1].reason = ranked[0].reason;
            ranked[0].reason = reason;
        }
    }
    true
}

/// FNV-1a over the key and the name: stable across processes, versions and platforms.
fn rendezvous(key: u64, name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.to_le_bytes().iter().chain(name.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly on short inputs; finish with a splitmix64 round.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// The ranking of rules 1–7; with `ignore_health`, down regions count as up (rule 10).
fn rank(
    regions: &[RegionView<'_>],
    client: &ClientView,
    policy: &Policy,
    ignore_health: bool,
) -> Vec<Ranked> {
    let location = client
        .location
        .filter(|&(lat, lon)| (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon));
    let mut estimated: Vec<(f64, &str, Reason)> = Vec::new();
    let mut unestimated: Vec<&str> = Vec::new();
    for view in regions {
        let Some(weight) = view.usable_weight(ignore_health) else {
            continue;
        };
        let name = view.region.name.as_str();
        let base = match measured_rtt_ms(client, name, policy.min_rtt_samples) {
            Some(rtt) => Some((rtt, Reason::Rtt)),
            None => location.map(|at| {
                let km = view.region.distance_km(at);
                (km / policy.fiber_km_per_ms, Reason::Geo)
            }),
        };
        match base {
            Some((ms, reason)) => {
                let estimate = (ms + load_penalty_ms(view.load, policy)) / weight;
                estimated.push((estimate, name, reason));
            }
            None => unestimated.push(name),
        }
    }
    estimated.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    let default_region = policy.default_region.as_deref();
    // `false` sorts first, so the default region leads.
    unestimated.sort_by_key(|&name| (Some(name) != default_region, name));

    let mut ranked: Vec<Ranked> = estimated
        .into_iter()
        .map(|(estimate, name, reason)| Ranked {
            name: name.to_owned(),
            estimated_rtt_ms: Some(estimate),
            reason,
        })
        .chain(unestimated.into_iter().map(|name| Ranked {
            name: name.to_owned(),
            estimated_rtt_ms: None,
            reason: Reason::Default,
        }))
        .collect();
    if let (Some(winner), Some(reason)) = (ranked.first_mut(), displacement(regions, location)) {
        winner.reason = reason;
    }
    ranked
}

/// The usable measured RTT for `region`: enough samples, a sane value, most samples wins.
fn measured_rtt_ms(client: &ClientView, region: &str, min_samples: u32) -> Option<f64> {
    client
        .measured_rtt_ms
        .iter()
        .filter(|m| {
            m.region == region
                && m.samples >= min_samples
                && m.rtt_ms.is_finite()
                && m.rtt_ms >= 0.0
        })
        .fold(None, |best: Option<&MeasuredRtt>, m| match best {
            Some(b) if b.samples >= m.samples => Some(b),
            _ => Some(m),
        })
        .map(|m| m.rtt_ms)
}

/// Linear from `load_penalty_start` (0 ms) through 1.0 (`load_penalty_ms_at_full`) and beyond.
fn load_penalty_ms(load: Option<f64>, policy: &Policy) -> f64 {
    let Some(load) = load.filter(|l| l.is_finite() && *l >= 0.0) else {
        return 0.0;
    };
    let start = policy.load_penalty_start;
    if load <= start {
        return 0.0;
    }
    let span = 1.0 - start;
    if span > 0.0 {
        (load - start) / span * policy.load_penalty_ms_at_full
    } else {
        // Invalid policy (start >= 1): no slope to follow, so a flat penalty past the start.
        policy.load_penalty_ms_at_full
    }
}

/// Why the client cannot have its natural region, if that is the case.
fn displacement(regions: &[RegionView<'_>], location: Option<(f64, f64)>) -> Option<Reason> {
    let at = location?;
    let natural = regions
        .iter()
        .filter(|v| v.control.state != ControlState::Disabled)
        .map(|v| {
            let km = v.region.distance_km(at);
            (km, v)
        })
        .min_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| a.1.region.name.cmp(&b.1.region.name))
        })
        .map(|(_, v)| v)?;
    // An operator's drain explains the move better than the health check that may have prompted it.
    if natural.is_drained() {
        Some(Reason::Drain)
    } else if natural.health == Health::Down {
        Some(Reason::Failover)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;

    #[test]
    fn reason_names_and_indexes_match_the_wire_form() {
        for (at, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), at);
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::json!(reason.as_str())
            );
        }
    }

    const FRANKFURT: (f64, f64) = (50.1109, 8.6821);
    const NEW_YORK: (f64, f64) = (40.7128, -74.0060);
    const SINGAPORE: (f64, f64) = (1.3521, 103.8198);
    const SYDNEY: (f64, f64) = (-33.8688, 151.2093);
    const LONDON: (f64, f64) = (51.5074, -0.1278);

    fn catalogue() -> BTreeMap<String, Region> {
        meridian_catalogue::load_dir(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../regions"
        )))
        .unwrap()
    }

    fn views(catalogue: &BTreeMap<String, Region>) -> Vec<RegionView<'_>> {
        catalogue.values().map(RegionView::new).collect()
    }

    fn view_mut<'v, 'a>(views: &'v mut [RegionView<'a>], name: &str) -> &'v mut RegionView<'a> {
        views.iter_mut().find(|v| v.region.name == name).unwrap()
    }

    fn at(location: (f64, f64)) -> ClientView {
        ClientView {
            location: Some(location),
            measured_rtt_ms: Vec::new(),
            ..ClientView::default()
        }
    }

    fn rtt(region: &str, rtt_ms: f64, samples: u32) -> MeasuredRtt {
        MeasuredRtt {
            region: region.into(),
            rtt_ms,
            samples,
        }
    }

    fn names(ranked: &[Ranked]) -> Vec<&str> {
        ranked.iter().map(|r| r.name.as_str()).collect()
    }

    /// A catalogue region under another name and place, for synthetic layouts.
    fn region_at(template: &Region, name: &str, (latitude, longitude): (f64, f64)) -> Region {
        Region {
            name: name.into(),
            latitude,
            longitude,
            ..template.clone()
        }
    }

    #[test]
    fn clients_get_their_nearest_dev_region() {
        let catalogue = catalogue();
        let views = views(&catalogue);
        let policy = Policy::default();
        for (city, location, expected) in [
            ("Frankfurt", FRANKFURT, "eu-central"),
            ("New York", NEW_YORK, "us-east"),
            ("Singapore", SINGAPORE, "ap-southeast"),
            ("Sydney", SYDNEY, "ap-southeast"),
        ] {
            let ranked = choose_region(&views, &at(location), &policy);
            assert_eq!(ranked.len(), catalogue.len(), "{city}: every region usable");
            assert_eq!(ranked[0].name, expected, "{city}: {ranked:?}");
            let region = &catalogue[expected];
            let km = region.distance_km(location);
            assert_eq!(
                ranked[0].estimated_rtt_ms,
                Some(km / policy.fiber_km_per_ms)
            );
            assert!(ranked.iter().all(|r| r.reason == Reason::Geo), "{ranked:?}");
            assert!(
                ranked
                    .windows(2)
                    .all(|w| w[0].estimated_rtt_ms <= w[1].estimated_rtt_ms),
                "{city}: best first: {ranked:?}"
            );
        }
        // New York is ~330 km from Washington: a few ms, not tens.
        let ranked = choose_region(&views, &at(NEW_YORK), &policy);
        let ms = ranked[0].estimated_rtt_ms.unwrap();
        assert!((3.0..4.0).contains(&ms), "{ms}");
    }

    #[test]
    fn ties_are_broken_by_client_network_whatever_the_input_order() {
        let catalogue = catalogue();
        let template = &catalogue["eu-central"];
        let b = region_at(template, "b-twin", FRANKFURT);
        let a = region_at(template, "a-twin", FRANKFURT);
        let policy = Policy::default();
        let forward = [RegionView::new(&a), RegionView::new(&b)];
        let backward = [RegionView::new(&b), RegionView::new(&a)];
        let mut winners = BTreeMap::new();
        for tie_key in 0..64u64 {
            let client = ClientView {
                tie_key,
                ..at(LONDON)
            };
            let first = decide(&forward, &client, &policy);
            let second = decide(&backward, &client, &policy);
            assert_eq!(first, second, "input order must not matter");
            assert!(first.tie_broken);
            assert_eq!(first.ranked.len(), 2);
            assert_eq!(
                first.ranked[0].estimated_rtt_ms,
                first.ranked[1].estimated_rtt_ms
            );
            // The same network always gets the same answer.
            assert_eq!(decide(&forward, &client, &policy), first);
            *winners.entry(first.ranked[0].name.clone()).or_insert(0) += 1;
        }
        // Different networks spread over the tied regions.
        assert_eq!(winners.len(), 2, "{winners:?}");
        assert!(winners.values().all(|&n| n >= 16), "{winners:?}");

        // Equal measured RTTs tie the same way.
        let client = ClientView {
            location: None,
            measured_rtt_ms: vec![rtt("b-twin", 20.0, 50), rtt("a-twin", 20.0, 50)],
            tie_key: 7,
            ..ClientView::default()
        };
        let ranked = choose_region(&backward, &client, &policy);
        assert_eq!(ranked, choose_region(&forward, &client, &policy));
        assert!(ranked.iter().all(|r| r.reason == Reason::Rtt));
    }

    #[test]
    fn near_ties_use_the_window_and_clear_winners_do_not() {
        let catalogue = catalogue();
        let template = &catalogue["eu-central"];
        let a = region_at(template, "a", FRANKFURT);
        let b = region_at(template, "b", FRANKFURT);
        let views = [RegionView::new(&a), RegionView::new(&b)];
        let client = |a_ms: f64, b_ms: f64, tie_key: u64| ClientView {
            location: None,
            measured_rtt_ms: vec![rtt("a", a_ms, 50), rtt("b", b_ms, 50)],
            tie_key,
            ..ClientView::default()
        };
        let policy = Policy::default();
        // 0.5 ms apart is within the default 1 ms window: some networks get b although a is
        // nominally faster.
        let b_wins = (0..64)
            .filter(|&key| choose_region(&views, &client(20.0, 20.5, key), &policy)[0].name == "b")
            .count();
        assert!((1..64).contains(&b_wins), "{b_wins}");
        // 5 ms apart is a clear winner for everyone.
        for key in 0..64 {
            let decision = decide(&views, &client(20.0, 25.0, key), &policy);
            assert_eq!(decision.ranked[0].name, "a");
            assert!(!decision.tie_broken);
        }
        // A zero window still treats exact ties as ties, and nothing else.
        let exact = Policy {
            tie_window_ms: 0.0,
            ..Policy::default()
        };
        assert!(!decide(&views, &client(20.0, 20.5, 3), &exact).tie_broken);
        assert!(decide(&views, &client(20.0, 20.0, 3), &exact).tie_broken);
    }

    #[test]
    fn operator_pin_beats_geography_rtt_and_ties_but_not_health() {
        let catalogue = catalogue();
        let mut views = views(&catalogue);
        let pinned = |region: &str| ClientView {
            pin: Some(region.into()),
            measured_rtt_ms: vec![rtt("eu-central", 1.0, 1000)],
            ..at(FRANKFURT)
        };
        let decision = decide(&views, &pinned("ap-southeast"), &Policy::default());
        assert!(decision.pinned);
        assert_eq!(decision.ranked[0].name, "ap-southeast");
        assert_eq!(decision.ranked[0].reason, Reason::Pin);
        assert_eq!(
            decision.ranked[1].name, "eu-central",
            "the rest keep their order"
        );
        assert_eq!(decision.ranked.len(), 3);

        // A pin to a region that cannot take users is ignored.
        view_mut(&mut views, "ap-southeast").health = Health::Down;
        let decision = decide(&views, &pinned("ap-southeast"), &Policy::default());
        assert!(!decision.pinned);
        assert_eq!(decision.ranked[0].name, "eu-central");
        view_mut(&mut views, "ap-southeast").health = Health::Up;
        view_mut(&mut views, "ap-southeast").control.state = ControlState::Drained;
        assert!(!decide(&views, &pinned("ap-southeast"), &Policy::default()).pinned);
        // A pin to a region that does not exist is ignored too.
        let decision = decide(&views, &pinned("mars-north"), &Policy::default());
        assert!(!decision.pinned);
        assert_eq!(decision.ranked[0].name, "eu-central");
    }

    #[test]
    fn unknown_client_gets_default_region_then_names() {
        let catalogue = catalogue();
        let views = views(&catalogue);
        let unknown = ClientView::default();

        let policy = Policy {
            default_region: Some("us-east".into()),
            ..Policy::default()
        };
        let ranked = choose_region(&views, &unknown, &policy);
        assert_eq!(names(&ranked), ["us-east", "ap-southeast", "eu-central"]);
        assert!(ranked
            .iter()
            .all(|r| r.reason == Reason::Default && r.estimated_rtt_ms.is_none()));

        // Without a default region, or with one that is down, names alone decide.
        let ranked = choose_region(&views, &unknown, &Policy::default());
        assert_eq!(names(&ranked), ["ap-southeast", "eu-central", "us-east"]);
        let mut us_down = views.clone();
        view_mut(&mut us_down, "us-east").health = Health::Down;
        let ranked = choose_region(&us_down, &unknown, &policy);
        assert_eq!(names(&ranked), ["ap-southeast", "eu-central"]);

        // A location outside the globe is no location at all.
        let nonsense = at((f64::NAN, 500.0));
        let ranked = choose_region(&views, &nonsense, &policy);
        assert_eq!(ranked[0].name, "us-east");
        assert_eq!(ranked[0].reason, Reason::Default);
    }

    #[test]
    fn unknown_location_with_some_rtt_ranks_measured_regions_first() {
        let catalogue = catalogue();
        let views = views(&catalogue);
        let client = ClientView {
            location: None,
            measured_rtt_ms: vec![rtt("eu-central", 80.0, 30)],
            ..ClientView::default()
        };
        let policy = Policy {
            default_region: Some("us-east".into()),
            ..Policy::default()
        };
        let ranked = choose_region(&views, &client, &policy);
        assert_eq!(names(&ranked), ["eu-central", "us-east", "ap-southeast"]);
        assert_eq!(ranked[0].reason, Reason::Rtt);
        assert_eq!(ranked[0].estimated_rtt_ms, Some(80.0));
        assert_eq!(ranked[1].reason, Reason::Default);
    }

    #[test]
    fn measured_rtt_beats_geography_only_with_enough_samples() {
        let catalogue = catalogue();
        let views = views(&catalogue);
        let policy = Policy {
            min_rtt_samples: 10,
            ..Policy::default()
        };
        // GeoIP says Frankfurt, but the address is a VPN exit in Virginia: the beacons know better.
        let mut client = at(FRANKFURT);
        client.measured_rtt_ms = vec![
            rtt("us-east", 5.0, 9),
            rtt("eu-central", 90.0, 9),
            rtt("nowhere", 0.1, 1000),
        ];
        let ranked = choose_region(&views, &client, &policy);
        assert_eq!(ranked[0].name, "eu-central");
        assert_eq!(ranked[0].estimated_rtt_ms, Some(0.0));
        assert!(
            ranked.iter().all(|r| r.reason == Reason::Geo),
            "9 samples are not enough: {ranked:?}"
        );

        for m in &mut client.measured_rtt_ms {
            m.samples = 10;
        }
        let ranked = choose_region(&views, &client, &policy);
        assert_eq!(names(&ranked), ["us-east", "eu-central", "ap-southeast"]);
        assert_eq!(ranked[0].reason, Reason::Rtt);
        assert_eq!(ranked[0].estimated_rtt_ms, Some(5.0));
        assert_eq!(ranked[1].reason, Reason::Rtt);
        assert_eq!(ranked[1].estimated_rtt_ms, Some(90.0));
        assert_eq!(ranked[2].reason, Reason::Geo, "no figure for ap-southeast");

        // With several figures for a region, the best-sampled one is used; nonsense is ignored.
        client.measured_rtt_ms = vec![
            rtt("us-east", 5.0, 10),
            rtt("us-east", 120.0, 500),
            rtt("us-east", f64::NAN, 10_000),
            rtt("us-east", -1.0, 10_000),
            rtt("eu-central", 90.0, 10),
        ];
        let ranked = choose_region(&views, &client, &policy);
        assert_eq!(names(&ranked)[..2], ["eu-central", "ap-southeast"]);
        let us = ranked.iter().find(|r| r.name == "us-east").unwrap();
        assert_eq!(us.estimated_rtt_ms, Some(120.0));
    }

    #[test]
    fn load_penalty_flips_a_near_tie() {
        let catalogue = catalogue();
        let mut views = views(&catalogue);
        let policy = Policy {
            load_penalty_start: 0.8,
            load_penalty_ms_at_full: 100.0,
            ..Policy::default()
        };
        let mut client = at(LONDON);
        client.measured_rtt_ms = vec![rtt("eu-central", 50.0, 100), rtt("us-east", 55.0, 100)];
        assert_eq!(
            choose_region(&views, &client, &policy)[0].name,
            "eu-central"
        );

        // At the start of the penalty nothing changes yet.
        view_mut(&mut views, "eu-central").load = Some(0.8);
        let ranked = choose_region(&views, &client, &policy);
        assert_eq!(ranked[0].name, "eu-central");
        assert_eq!(ranked[0].estimated_rtt_ms, Some(50.0));

        // Half-way to full: +50 ms, and us-east wins.
        view_mut(&mut views, "eu-central").load = Some(0.9);
        let ranked = choose_region(&views, &client, &policy);
        assert_eq!(names(&ranked)[..2], ["us-east", "eu-central"]);
        let eu = ranked[1].estimated_rtt_ms.unwrap();
        assert!((eu - 100.0).abs() < 1e-9, "{eu}");
        assert_eq!(
            ranked[0].reason,
            Reason::Rtt,
            "eu-central is up, not displaced"
        );
    }

    #[test]
    fn overloaded_region_ranks_last_but_stays_usable() {
        let catalogue = catalogue();
        let mut views = views(&catalogue);
        let policy = Policy::default();
        view_mut(&mut views, "eu-central").load = Some(3.0);
        let ranked = choose_region(&views, &at(FRANKFURT), &policy);
        assert_eq!(names(&ranked), ["us-east", "ap-southeast", "eu-central"]);
        // 0 km away plus (3.0 - 0.8) / 0.2 * 100 ms: the slope continues past full.
        let eu = ranked[2].estimated_rtt_ms.unwrap();
        assert!((eu - 1100.0).abs() < 1e-6, "{eu}");
        assert_eq!(
            ranked[0].reason,
            Reason::Geo,
            "a full region is not a failover"
        );
    }

    #[test]
    fn all_down_answers_the_least_bad_region_and_flags_it() {
        let catalogue = catalogue();
        let mut views = views(&catalogue);
        for view in &mut views {
            view.health = Health::Down;
        }
        let decision = decide(&views, &at(FRANKFURT), &Policy::default());
        assert!(decision.all_down);
        assert_eq!(
            names(&decision.ranked),
            ["eu-central", "us-east", "ap-southeast"],
            "still nearest first"
        );
        assert!(decision.ranked.iter().all(|r| r.reason == Reason::Failover));
        let unknown_client = ClientView::default();
        let decision = decide(&views, &unknown_client, &Policy::default());
        assert!(decision.all_down);
        assert_eq!(decision.ranked.len(), 3);

        // Drained and disabled regions stay out even then.
        view_mut(&mut views, "eu-central").control.state = ControlState::Drained;
        view_mut(&mut views, "us-east").control.state = ControlState::Disabled;
        let decision = decide(&views, &at(FRANKFURT), &Policy::default());
        assert_eq!(names(&decision.ranked), ["ap-southeast"]);
        // Nothing routable at all: empty, and not flagged as all-down.
        view_mut(&mut views, "ap-southeast").control.state = ControlState::Drained;
        let decision = decide(&views, &at(FRANKFURT), &Policy::default());
        assert!(decision.ranked.is_empty() && !decision.all_down);
        assert!(choose_region(&[], &at(FRANKFURT), &Policy::default()).is_empty());

        // One region of unknown health is routed to normally.
        let mut views = self::views(&catalogue);
        for view in &mut views {
            view.health = Health::Down;
        }
        views[0].health = Health::Unknown;
        let decision = decide(&views, &at(FRANKFURT), &Policy::default());
        assert!(!decision.all_down);
        assert_eq!(names(&decision.ranked), [views[0].region.name.as_str()]);
    }

    #[test]
    fn drained_nearest_region_gives_drain_reason() {
        let catalogue = catalogue();
        let mut views = views(&catalogue);
        view_mut(&mut views, "eu-central").control.state = ControlState::Drained;
        let ranked = choose_region(&views, &at(FRANKFURT), &Policy::default());
        assert_eq!(names(&ranked), ["us-east", "ap-southeast"]);
        assert_eq!(ranked[0].reason, Reason::Drain);
        assert_eq!(
            ranked[1].reason,
            Reason::Geo,
            "only the winner is displaced"
        );

        // A zero weight drains as well; a drain outranks a failing health check as the reason.
        let mut views = self::views(&catalogue);
        let eu = view_mut(&mut views, "eu-central");
        eu.control.weight = 0.0;
        eu.health = Health::Down;
        let ranked = choose_region(&views, &at(FRANKFURT), &Policy::default());
        assert_eq!(ranked[0].name, "us-east");
        assert_eq!(ranked[0].reason, Reason::Drain);

        // Draining a region that is not the client's natural one changes no reason.
        let mut views = self::views(&catalogue);
        view_mut(&mut views, "ap-southeast").control.state = ControlState::Drained;
        let ranked = choose_region(&views, &at(FRANKFURT), &Policy::default());
        assert_eq!(ranked[0].name, "eu-central");
        assert_eq!(ranked[0].reason, Reason::Geo);
    }

    #[test]
    fn down_nearest_region_gives_failover_reason() {
        let catalogue = catalogue();
        let mut views = views(&catalogue);
        view_mut(&mut views, "ap-southeast").health = Health::Down;
        let ranked = choose_region(&views, &at(SYDNEY), &Policy::default());
        assert_eq!(names(&ranked), ["us-east", "eu-central"]);
        assert_eq!(ranked[0].reason, Reason::Failover);
        assert_eq!(ranked[1].reason, Reason::Geo);

        // Even when measured RTT picks the winner, the reason says the natural region failed.
        let mut client = at(SYDNEY);
        client.measured_rtt_ms = vec![rtt("eu-central", 120.0, 100)];
        let ranked = choose_region(&views, &client, &Policy::default());
        assert_eq!(ranked[0].name, "eu-central");
        assert_eq!(ranked[0].reason, Reason::Failover);
        assert_eq!(ranked[0].estimated_rtt_ms, Some(120.0));
    }

    #[test]
    fn disabled_region_is_excluded_and_nobodys_natural_region() {
        let catalogue = catalogue();
        let mut views = views(&catalogue);
        view_mut(&mut views, "eu-central").control.state = ControlState::Disabled;
        let ranked = choose_region(&views, &at(FRANKFURT), &Policy::default());
        assert_eq!(names(&ranked), ["us-east", "ap-southeast"]);
        assert_eq!(ranked[0].reason, Reason::Geo);

        // Disabled even with good RTT data and as the default region.
        let client = ClientView {
            location: None,
            measured_rtt_ms: vec![rtt("eu-central", 1.0, 1000)],
            ..ClientView::default()
        };
        let policy = Policy {
            default_region: Some("eu-central".into()),
            ..Policy::default()
        };
        let ranked = choose_region(&views, &client, &policy);
        assert_eq!(names(&ranked), ["ap-southeast", "us-east"]);
    }

    #[test]
    fn weight_scales_the_estimate_up() {
        let catalogue = catalogue();
        let mut views = views(&catalogue);
        let mut client = at(LONDON);
        client.measured_rtt_ms = vec![rtt("eu-central", 50.0, 100), rtt("us-east", 80.0, 100)];
        let policy = Policy::default();

        view_mut(&mut views, "eu-central").control.weight = 0.8;
        let ranked = choose_region(&views, &client, &policy);
        assert_eq!(ranked[0].name, "eu-central");
        assert_eq!(ranked[0].estimated_rtt_ms, Some(62.5));

        view_mut(&mut views, "eu-central").control.weight = 0.5;
        let ranked = choose_region(&views, &client, &policy);
        assert_eq!(names(&ranked)[..2], ["us-east", "eu-central"]);
        assert_eq!(ranked[1].estimated_rtt_ms, Some(100.0));
        assert_eq!(
            ranked[0].reason,
            Reason::Rtt,
            "a reduced weight is not a drain"
        );

        // Weight applies after the load penalty: (50 + 50) / 0.5.
        view_mut(&mut views, "eu-central").load = Some(0.9);
        let ranked = choose_region(&views, &client, &policy);
        let eu = ranked.iter().find(|r| r.name == "eu-central").unwrap();
        assert!(
            (eu.estimated_rtt_ms.unwrap() - 200.0).abs() < 1e-9,
            "{eu:?}"
        );

        // Above 1 counts as 1: weight cannot make a region look nearer than it is.
        let eu = view_mut(&mut views, "eu-central");
        eu.load = None;
        eu.control.weight = 4.0;
        let ranked = choose_region(&views, &client, &policy);
        assert_eq!(ranked[0].estimated_rtt_ms, Some(50.0));
    }

    #[test]
    fn policy_validation_rejects_out_of_range_values() {
        assert_eq!(Policy::default().validate(), Ok(()));
        let bad = |policy: Policy| policy.validate().unwrap_err();
        assert_eq!(
            bad(Policy {
                fiber_km_per_ms: 0.0,
                ..Policy::default()
            }),
            PolicyError::FiberKmPerMs(0.0)
        );
        assert_eq!(
            bad(Policy {
                load_penalty_start: 1.0,
                ..Policy::default()
            }),
            PolicyError::LoadPenaltyStart(1.0)
        );
        let e = bad(Policy {
            load_penalty_ms_at_full: -1.0,
            ..Policy::default()
        });
        assert!(e.to_string().contains("load_penalty_ms_at_full"), "{e}");
        let e = bad(Policy {
            tie_window_ms: f64::INFINITY,
            ..Policy::default()
        });
        assert!(e.to_string().contains("tie_window_ms"), "{e}");
    }
}
