//! The background tasks that keep the [`RouterState`] fresh: health probes, the control
//! poller, the GeoIP file watcher and the RTT sweeper.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{GeoView, RouterState};
use crate::geoip::{GeoIpError, ReloadingGeoDb};
use crate::probe::Prober;
/// Probes every region every `health.interval_ms` until `shutdown` (each probe within the
/// prober's timeout, `health.timeout_ms`).
pub fn spawn_health_checks(
    state: Arc<RouterState>,
    prober: Prober,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let interval = Duration::from_millis(state.config.health.interval_ms);
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
                        result = prober.probe(&url, capacity) => result,
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
