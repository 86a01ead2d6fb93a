//! The router's live state and the one routing function the DNS and HTTP front ends share.
//!
//! [`RouterState::route`] gathers the inputs of [`decide`] (GeoIP location, measured RTTs of the
//! client's network, operator pin, every region's health, load and control), ranks, and sizes
//! the ECS scope:
//!
//! * pinned: the pin's network (narrowed past any more specific pin inside it);
//! * the client's network has RTT data: that aggregation network (/24, /48);
//! * otherwise the geographic supernet from [`ScopeIndex`], or just the matched database network
//!   while a load penalty or a weight below 1 is in force anywhere (those make answers depend on
//!   the exact distance, not only on the distance order), narrowed until the block holds no
//!   network with RTT data and no pin;
//! * a near tie broken by the client network's hash: at least that network's prefix.
//!
//! The background tasks that keep the state fresh ([`spawn_health_checks`],
//! [`spawn_control_poller`], [`spawn_geoip_reloader`], [`spawn_rtt_sweeper`]) are here too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meridian_catalogue::Region;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::RouterConfig;
use crate::controls::{ControlSnapshot, ControlStore};
use crate::decision::{decide, ClientView, ControlState, Decision, Health, Reason, RegionView};
use crate::geoip::{GeoDb, GeoHit, GeoIpError, ReloadingGeoDb};
use crate::health::{FailureKind, Hysteresis, ProbeResult};
use crate::metrics::Metrics;
use crate::probe::Prober;
use crate::quick_hash::QuickHash;
use crate::rtt::{Prefix, RttConfig, RttTable};
use crate::scope::{block, ScopeIndex, ScopeStats};
use prometheus_client::metrics::counter::Counter;

/// What the router currently knows about one region.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RegionLive {
    /// Health with its hysteresis counters.
    #[serde(skip)]
    pub hysteresis: Hysteresis,
    /// Reported load (connections / capacity).
    pub load: Option<f64>,
    /// When the last probe finished, ms since the Unix epoch.
    pub last_check_ms: Option<u64>,
    /// Why the last probe failed.
    pub last_error: Option<String>,
    /// How long the last probe took, ms.
    pub last_latency_ms: Option<f64>,
    /// The kind of the last failure while failing (to log each new kind once).
    #[serde(skip)]
    pub last_failure: Option<FailureKind>,
}

/// The GeoIP database with its scope index.
#[derive(Debug)]
pub struct GeoView {
    /// The database, when one is configured.
    pub db: Option<Arc<GeoDb>>,
    /// Supernets for ECS scopes.
    pub scopes: ScopeIndex,
    /// How well they merged.
    pub stats: Option<ScopeStats>,
}

impl GeoView {
    /// Builds the scope index for `db` against `regions` (walks the whole database: run it on
    /// a blocking thread).
    pub fn build(db: Option<Arc<GeoDb>>, regions: &[Region]) -> Result<GeoView, GeoIpError> {
        let positions: Vec<(&str, f64, f64)> = regions
            .iter()
            .map(|r| (r.name.as_str(), r.latitude, r.longitude))
            .collect();
        match db {
            Some(db) => {
                let networks = db.networks()?;
                let scopes = ScopeIndex::build(&networks, &positions);
                let stats = Some(scopes.stats(&networks));
                Ok(GeoView {
                    db: Some(db),
                    scopes,
                    stats,
                })
            }
            None => Ok(GeoView {
                db: None,
                scopes: ScopeIndex::empty(),
                stats: None,
            }),
        }
    }
}

/// One routing answer with what went into it.
#[derive(Debug, Clone)]
pub struct Route {
    /// The ranking.
    pub decision: Decision,
    /// The ECS scope the answer holds for.
    pub scope: u8,
    /// The GeoIP record used.
    pub hit: Option<GeoHit>,
    /// The client's aggregation network.
    pub network: Prefix,
}

#[derive(Debug, Clone)]
struct PinEntry {
    v6: bool,
    start: u128,
    end: u128,
    len: u8,
    region: String,
}

/// Everything the front ends read. Shared in an `Arc`.
#[derive(Debug)]
pub struct RouterState {
    /// The validated configuration.
    pub config: RouterConfig,
    /// The catalogue, sorted by name.
    pub regions: Vec<Region>,
    live: RwLock<Vec<RegionLive>>,
    controls: RwLock<ControlSnapshot>,
    geo: RwLock<Arc<GeoView>>,
    /// Measured RTTs.
    pub rtt: RttTable,
    /// Most specific first.
    pins: Vec<PinEntry>,
    /// Metrics.
    pub metrics: Metrics,
    /// Where controls live.
    pub store: ControlStore,
    /// A load penalty or a weight below 1 is in force: geographic supernets do not hold.
    dynamic: AtomicBool,
    /// Controls have been read at least once.
    controls_loaded: AtomicBool,
    /// Counts changes to what decisions depend on (health, load, controls, the GeoIP view);
    /// with [`RttTable::changes`] it makes [`RouterState::generation`].
    changes: AtomicU64,
    /// `answers` series by winner (index in `regions`) and reason, created on first use; the
    /// last row is for answers without a winner.
    answer_counters: Vec<[OnceLock<Counter>; Reason::ALL.len()]>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn family(ip: IpAddr) -> (bool, u128, u8) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (true, u128::from(v6), 128),
    }
}

impl RouterState {
    /// State for `regions` with `geo` loaded and controls from `store` (read later by the
    /// poller, or now by [`RouterState::refresh_controls`]).
    pub fn new(
        config: RouterConfig,
        mut regions: Vec<Region>,
        geo: GeoView,
        store: ControlStore,
    ) -> RouterState {
        regions.sort_by(|a, b| a.name.cmp(&b.name));
        let mut pins: Vec<PinEntry> = config
            .pins
            .iter()
            .map(|pin| {
                let (start, end) = pin.network.range();
                PinEntry {
                    v6: pin.network.address.is_ipv6(),
                    start,
                    end,
                    len: pin.network.prefix_len,
                    region: pin.region.clone(),
                }
            })
            .collect();
        pins.sort_by_key(|p| std::cmp::Reverse(p.len));
        let rtt = RttTable::new(RttConfig {
            prefix_v4: config.rtt.prefix_v4,
            prefix_v6: config.rtt.prefix_v6,
            max_prefixes: config.rtt.max_prefixes,
            half_life: Duration::from_secs(config.rtt.half_life_s),
        });
        let live = vec![RegionLive::default(); regions.len()];
        let state = RouterState {
            config,
            live: RwLock::new(live),
            controls: RwLock::new(ControlSnapshot::default()),
            geo: RwLock::new(Arc::new(geo)),
            rtt,
            pins,
            metrics: Metrics::new(),
            store,
            dynamic: AtomicBool::new(false),
            controls_loaded: AtomicBool::new(false),
            changes: AtomicU64::new(0),
            answer_counters: (0..=regions.len()).map(|_| Default::default()).collect(),
            regions,
        };
        state.publish_region_metrics();
        state
    }

    /// Catalogue names, sorted.
    pub fn region_names(&self) -> Vec<&str> {
        self.regions.iter().map(|r| r.name.as_str()).collect()
    }

    /// The region called `name`.
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Current per-region live state, in catalogue order.
    pub fn live(&self) -> Vec<RegionLive> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Current controls.
    pub fn controls(&self) -> ControlSnapshot {
        self.controls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The GeoIP view in use.
    pub fn geo(&self) -> Arc<GeoView> {
        Arc::clone(&self.geo.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Swaps in a new GeoIP view.
    pub fn set_geo(&self, view: GeoView) {
        *self.geo.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
        self.changed();
    }

    /// A number that changes whenever anything a routing decision depends on may have changed:
    /// a region's health or load, the controls, the GeoIP view, the RTT table. The inputs are
    /// swapped before the number moves, so an answer computed after reading a generation is at
    /// least as new as that generation.
    pub fn generation(&self) -> u64 {
        self.changes
            .load(Ordering::Acquire)
            .wrapping_add(self.rtt.changes())
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// Whether the controls have been read (always true without a shared store).
    pub fn controls_loaded(&self) -> bool {
        self.controls_loaded.load(Ordering::Relaxed)
    }

    /// Names of regions whose health checks say down.
    pub fn down_regions(&self) -> Vec<&str> {
        let live = self.live.read().unwrap_or_else(PoisonError::into_inner);
        self.regions
            .iter()
            .zip(live.iter())
            .filter(|(_, l)| l.hysteresis.health == Health::Down)
            .map(|(r, _)| r.name.as_str())
            .collect()
    }

    /// Ranks the regions for a client at `client` (`ecs_prefix`: the ECS source prefix when
    /// the address came from ECS, which does not change the decision: the network's address
    /// stands for it).
    pub fn route(&self, client: IpAddr, _ecs_prefix: Option<u8>) -> Route {
        let started = Instant::now();
        let ip = client.to_canonical();
        let geo = self.geo();
        let hit = geo.db.as_ref().and_then(|db| db.lookup(ip));
        let now = Instant::now();
        let network = self.rtt.prefix_of(ip);
        let measured = self.rtt.lookup(ip, now);
        let (v6, x, bits) = family(ip);
        let pin = self
            .pins
            .iter()
            .find(|p| p.v6 == v6 && p.start <= x && x <= p.end);
        let client_view = ClientView {
            location: hit.as_ref().map(|h| (h.latitude, h.longitude)),
            measured_rtt_ms: measured,
            pin: pin.map(|p| p.region.clone()),
            tie_key: network.hash64(),
        };
        let decision = {
            let live = self.live.read().unwrap_or_else(PoisonError::into_inner);
            let controls = self.controls.read().unwrap_or_else(PoisonError::into_inner);
            let views: Vec<RegionView<'_>> = self
                .regions
                .iter()
                .zip(live.iter())
                .map(|(region, live)| RegionView {
                    region,
                    health: live.hysteresis.health,
                    control: controls.control(&region.name),
                    load: live.load,
                })
                .collect();
            decide(&views, &client_view, &self.config.policy)
        };

        let mut scope = if decision.pinned {
            let pin_len = pin.map_or(bits, |p| p.len);
            self.narrow(v6, x, bits, pin_len, |start, end| {
                self.pins
                    .iter()
                    .any(|p| p.v6 == v6 && p.len > pin_len && start <= p.start && p.end <= end)
            })
        } else if !client_view.measured_rtt_ms.is_empty() {
            network.len
        } else {
            let base = match (&hit, self.dynamic.load(Ordering::Relaxed)) {
                (Some(hit), true) => hit.prefix_len,
                _ => geo.scopes.geo_scope(ip),
            };
            self.narrow(v6, x, bits, base, |start, end| {
                self.rtt.any_within(v6, start, end)
                    || self
                        .pins
                        .iter()
                        .any(|p| p.v6 == v6 && start <= p.start && p.end <= end)
            })
        };
        if decision.tie_broken {
            scope = scope.max(network.len);
        }
        let scope = scope.min(bits);

        self.answer_counter(&decision).inc();
        if decision.all_down {
            self.metrics.all_down_answers.inc();
        }
        self.metrics.decided(started.elapsed());
        Route {
            decision,
            scope,
            hit,
            network,
        }
    }

    /// The `answers` counter of `decision`'s winner and reason.
    fn answer_counter(&self, decision: &Decision) -> Counter {
        let winner = decision.ranked.first();
        let (row, reason) = match winner {
            Some(w) => match self.regions.iter().position(|r| r.name == w.name) {
                Some(row) => (row, w.reason),
                None => (self.regions.len(), w.reason),
            },
            None => (self.regions.len(), Reason::Default),
        };
        let make = || {
            let labels = match winner {
                Some(w) => vec![
                    ("region", w.name.clone()),
                    ("reason", reason.as_str().into()),
                ],
                None => vec![("region", String::new()), ("reason", "none".into())],
            };
            self.metrics.answers.get_or_create(&labels).clone()
        };
        match self.answer_counters.get(row) {
            Some(cells) => cells[reason.index()].get_or_init(make).clone(),
            None => make(),
        }
    }

    /// Lengthens `scope` until the block around `x` holds nothing `inside` reports.
    fn narrow(
        &self,
        _v6: bool,
        x: u128,
        bits: u8,
        mut scope: u8,
        inside: impl Fn(u128, u128) -> bool,
    ) -> u8 {
        while scope < bits {
            let (start, end) = block(x, scope, bits);
            if !inside(start, end) {
                break;
            }
            scope += 1;
        }
        scope
    }

    /// Records one probe of region `index`; logs health transitions.
    pub fn record_probe(&self, index: usize, result: &ProbeResult) {
        let Some(region) = self.regions.get(index) else {
            return;
        };
        let health = &self.config.health;
        let (before, after, new_failure, load_changed) = {
            let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
            let Some(entry) = live.get_mut(index) else {
                return;
            };
            let before = entry.hysteresis.health;
            let load_before = entry.load;
            let new_failure = result
                .failure
                .filter(|&kind| entry.last_failure != Some(kind));
            entry.last_failure = result.failure;
            entry.hysteresis = entry.hysteresis.step(result.ok, health.fall, health.rise);
            if result.ok {
                entry.load = result.load;
                entry.last_error = None;
            } else {
                entry.last_error = result.error.clone();
            }
            entry.last_check_ms = Some(now_ms());
            entry.last_latency_ms = Some(result.latency.as_secs_f64() * 1000.0);
            let load_changed = entry.load != load_before;
            (before, entry.hysteresis.health, new_failure, load_changed)
        };

        if let Some(kind) = result.failure {
            self.metrics
                .health_check_failures
                .get_or_create(&vec![
                    ("region", region.name.clone()),
                    ("reason", kind.label().into()),
                ])
                .inc();
        }
        if let Some(kind) = new_failure {
            // Once per new kind of failure, not every second: the transition to DOWN and the
            // failure counter carry the rest.
            tracing::warn!(
                region = %region.name,
                url = %region.ingress.health_url,
                reason = kind.label(),
                error = result.error.as_deref().unwrap_or(""),
                "health probe failed"
            );
        }
        self.metrics
            .health_checks
            .get_or_create(&vec![
                ("region", region.name.clone()),
                ("result", if result.ok { "ok" } else { "fail" }.into()),
            ])
            .inc();
        if before != after {
            match after {
                Health::Down => tracing::warn!(
                    region = %region.name,
                    error = result.error.as_deref().unwrap_or(""),
                    "region is DOWN: no new users go there"
                ),
                _ => {
                    tracing::info!(region = %region.name, health = ?after, "region health changed")
                }
            }
        }
        self.publish_region_metrics();
        // After the `dynamic` flag is republished: it decides scopes too.
        if before != after || load_changed {
            self.changed();
        }
    }

    /// Replaces the controls (from the poller or after a change).
    pub fn set_controls(&self, snapshot: ControlSnapshot) {
        let changed = {
            let mut controls = self
                .controls
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let changed =
                controls.version != snapshot.version || controls.entries != snapshot.entries;
            *controls = snapshot;
            changed
        };
        self.controls_loaded.store(true, Ordering::Relaxed);
        if changed {
            self.publish_region_metrics();
            self.changed();
        }
    }

    /// Reads the controls from the store now.
    pub async fn refresh_controls(&self) -> Result<(), crate::controls::ControlError> {
        let snapshot = self.store.snapshot().await?;
        self.set_controls(snapshot);
        Ok(())
    }

    /// Recomputes gauges and the `dynamic` flag from live state and controls.
    fn publish_region_metrics(&self) {
        let live = self.live.read().unwrap_or_else(PoisonError::into_inner);
        let controls = self.controls.read().unwrap_or_else(PoisonError::into_inner);
        let policy = &self.config.policy;
        let mut dynamic = false;
        let mut routable_up = 0;
        let mut routable = 0;
        let mut drill = 0;
        for (region, live) in self.regions.iter().zip(live.iter()) {
            let name = region.name.clone();
            let health = live.hysteresis.health;
            self.metrics
                .region_healthy
                .get_or_create(&vec![("region", name.clone())])
                .set(i64::from(health != Health::Down));
            let control = controls.control(&region.name);
            for (state, label) in [
                (ControlState::Active, "active"),
                (ControlState::Drained, "drained"),
                (ControlState::Disabled, "disabled"),
            ] {
                self.metrics
                    .region_control
                    .get_or_create(&vec![("region", name.clone()), ("state", label.into())])
                    .set(i64::from(control.state == state));
            }
            if let Some(load) = live.load {
                self.metrics
                    .region_load_permille
                    .get_or_create(&vec![("region", name.clone())])
                    .set((load * 1000.0).round() as i64);
                if load > policy.load_penalty_start {
                    dynamic = true;
                }
            }
            if control.weight < 1.0 {
                dynamic = true;
            }
            if control.state == ControlState::Active && control.weight > 0.0 {
                routable += 1;
                if health != Health::Down {
                    routable_up += 1;
                }
            }
            if controls
                .entries
                .get(&region.name)
                .is_some_and(|e| e.drill && e.state != ControlState::Active)
            {
                drill += 1;
            }
        }
        self.dynamic.store(dynamic, Ordering::Relaxed);
        self.metrics
            .all_regions_down
            .set(i64::from(routable > 0 && routable_up == 0));
        self.metrics.drill_in_progress.set(drill);
        self.metrics
            .control_version
            .set(i64::try_from(controls.version).unwrap_or(i64::MAX));
    }
}

/// Probes every region every `health.interval_ms` until `shutdown`.
pub fn spawn_health_checks(
    state: Arc<RouterState>,
    prober: Prober,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let interval = Duration::from_millis(state.config.health.interval_ms);
    let timeout = Duration::from_millis(state.config.health.timeout_ms);
    (0..state.regions.len())
        .map(|index| {
            let state = Arc::clone(&state);
            let prober = prober.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let Some(region) = state.regions.get(index) else {
                    return;
                };
                let url = region.ingress.health_url.clone();
                let capacity = region.capacity;
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        _ = ticker.tick() => {}
                    }
                    let result = tokio::select! {
                        () = shutdown.cancelled() => return,
                        result = prober.probe(&url, timeout, capacity) => result,
                    };
                    state.record_probe(index, &result);
                }
            })
        })
        .collect()
}

/// Polls the control version every `controls.poll_ms` and reloads on change.
pub fn spawn_control_poller(
    state: Arc<RouterState>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker =
            tokio::time::interval(Duration::from_millis(state.config.controls.poll_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let seen = state.controls().version;
            let result = match state.store.version().await {
                Ok(version) if version == seen && state.controls_loaded() => Ok(()),
                Ok(_) => state.refresh_controls().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!("control store reachable again");
                    }
                    failing = false;
                    state.metrics.controls_stale.set(0);
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read routing controls; routing on the last ones seen");
                    }
                    failing = true;
                    state.metrics.controls_stale.set(1);
                }
            }
        }
    })
}

/// Checks the GeoIP file every `geoip_reload_ms`; a changed valid file replaces the database
/// (queries keep using the old one until the new index is built), an invalid one is logged and
/// ignored.
pub fn spawn_geoip_reloader(
    state: Arc<RouterState>,
    db: Arc<ReloadingGeoDb>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(state.config.geoip_reload_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let worker_state = Arc::clone(&state);
            let worker_db = Arc::clone(&db);
            let outcome =
                tokio::task::spawn_blocking(move || match worker_db.reload_if_changed()? {
                    false => Ok(None),
                    true => {
                        GeoView::build(Some(worker_db.current()), &worker_state.regions).map(Some)
                    }
                })
                .await;
            match outcome {
                Ok(Ok(None)) => {}
                Ok(Ok(Some(view))) => {
                    tracing::info!(path = %db.path().display(), stats = ?view.stats, "GeoIP database reloaded");
                    state.set_geo(view);
                    state
                        .metrics
                        .geoip_reloads
                        .get_or_create(&vec![("result", "ok".into())])
                        .inc();
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "GeoIP reload rejected; the previous database stays in use");
                    state
                        .metrics
                        .geoip_reloads
                        .get_or_create(&vec![("result", "rejected".into())])
                        .inc();
                }
                Err(e) => tracing::error!(error = %e, "GeoIP reload task failed"),
            }
        }
    })
}

/// Drops faded RTT networks every minute.
pub fn spawn_rtt_sweeper(
    state: Arc<RouterState>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let left = state.rtt.sweep(Instant::now());
            state
                .metrics
                .rtt_networks
                .set(i64::try_from(left).unwrap_or(i64::MAX));
        }
    })
}

/// Loads the GeoIP file named in the config, if any.
pub fn open_geoip(path: Option<&PathBuf>) -> Result<Option<Arc<ReloadingGeoDb>>, GeoIpError> {
    path.map(|p| ReloadingGeoDb::open(p.clone()).map(Arc::new))
        .transpose()
}

/// Client addresses whose answers an [`AnswerCache`] keeps before emptying itself.
const ROUTE_CACHE_CAPACITY: usize = 65_536;

/// Finished routing answers per client address (a DNS answer, a rendered HTTP body), reused
/// while [`RouterState::generation`] is unchanged, i.e. until health, load, controls, the GeoIP
/// database or the RTT table change. Answers that used measured RTTs are not kept, since those
/// estimates fade with time and no event says so. A reused answer still counts in `answers`
/// (and `all_down_answers`); `decision_seconds` times the decisions actually computed. Full, it
/// empties itself (a bound, not an eviction policy: clients ask again and again for the same
/// few networks, and a miss costs one decision).
#[derive(Debug)]
pub struct AnswerCache<T> {
    entries: RwLock<HashMap<IpAddr, Cached<T>, QuickHash>>,
}

#[derive(Debug)]
struct Cached<T> {
    generation: u64,
    answer: T,
    /// The `answers` series this answer counts in.
    counter: Counter,
    all_down: bool,
}

impl<T: Clone> Default for AnswerCache<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone> AnswerCache<T> {
    /// An empty cache.
    pub fn new() -> Self {
        AnswerCache {
            entries: RwLock::new(HashMap::default()),
        }
    }

    /// The answer kept for `client` at `generation`, counted as given.
    pub fn get(&self, state: &RouterState, client: IpAddr, generation: u64) -> Option<T> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let cached = entries
            .get(&client)
            .filter(|c| c.generation == generation)?;
        cached.counter.inc();
        if cached.all_down {
            state.metrics.all_down_answers.inc();
        }
        Some(cached.answer.clone())
    }

    /// Keeps `answer`, made from `route` for `client` after reading `generation`, unless the
    /// route used measured RTTs.
    pub fn keep(
        &self,
        state: &RouterState,
        client: IpAddr,
        generation: u64,
        route: &Route,
        answer: T,
    ) {
        let winner = route.decision.ranked.first();
        let uses_rtt = winner.is_some_and(|w| w.reason == Reason::Rtt)
            || !state.rtt.lookup(client, Instant::now()).is_empty();
        if uses_rtt {
            return;
        }
        let entry = Cached {
            generation,
            answer,
            counter: state.answer_counter(&route.decision),
            all_down: route.decision.all_down,
        };
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= ROUTE_CACHE_CAPACITY && !entries.contains_key(&client) {
            entries.clear();
        }
        entries.insert(client, entry);
    }

    /// Addresses with an answer kept (of any generation).
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an answer for `client` at `generation` is kept.
    pub fn holds(&self, client: IpAddr, generation: u64) -> bool {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&client)
            .is_some_and(|c| c.generation == generation)
    }
}

/// The DNS front end's view of the router, with a cache of routing answers per client address.
///
/// Resolvers ask again and again for the same few networks (an ECS address is a network's
/// start; without ECS the key is the resolver's own address), and a decision costs a GeoIP
/// lookup, a great-circle distance per region and a scope search; see [`AnswerCache`].
#[derive(Debug)]
pub struct DnsRouter {
    state: Arc<RouterState>,
    routes: AnswerCache<crate::dns::RouteAnswer>,
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

impl crate::dns::Router for DnsRouter {
    fn route(&self, client: IpAddr, ecs_prefix: Option<u8>) -> crate::dns::RouteAnswer {
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
        let answer = crate::dns::RouteAnswer {
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
mod tests {
    use std::path::Path;

    use super::*;
    use crate::dns::Router as _;

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
    fn state_answer(state: &RouterState, client: IpAddr) -> crate::dns::RouteAnswer {
        let route = state.route(client, Some(24));
        let winner = route.decision.ranked.first().unwrap();
        crate::dns::RouteAnswer {
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
