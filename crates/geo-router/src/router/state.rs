//! [`RouterState`]: everything the front ends read, and [`RouterState::route`], the one routing
//! function (see the module documentation of [`super`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meridian_catalogue::Region;
use serde::Serialize;

use crate::config::RouterConfig;
use crate::controls::{ControlSnapshot, ControlStore};
use crate::decision::{decide, ClientView, ControlState, Decision, Health, Reason, RegionView};
use crate::geoip::{GeoDb, GeoHit, GeoIpError};
use crate::health::{FailureKind, Hysteresis, ProbeResult};
use crate::metrics::Metrics;
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
    pub(super) fn answer_counter(&self, decision: &Decision) -> Counter {
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
