//! The drill's timeline: connections per region sampled every second, and the notes of what the
//! drill did, each in the second it was made.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ledger::ClientLog;

/// Connections per region at one second of the drill.
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the workload started.
    pub t_s: u64,
    /// Connected clients per region.
    pub regions: BTreeMap<String, usize>,
    /// Clients between connections.
    pub reconnecting: usize,
    /// What the drill did during this second, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The timeline sampler: connections per region every second.
pub(super) fn sample(
    logs: Vec<Arc<Mutex<ClientLog>>>,
    timeline: Arc<Mutex<Vec<TimelinePoint>>>,
    names: Vec<String>,
    running_at: Instant,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let mut regions: BTreeMap<String, usize> =
                names.iter().map(|n| (n.clone(), 0)).collect();
            let mut reconnecting = 0;
            for log in &logs {
                match &log.lock().unwrap_or_else(PoisonError::into_inner).region {
                    Some(r) => *regions.entry(r.clone()).or_default() += 1,
                    None => reconnecting += 1,
                }
            }
            let point = TimelinePoint {
                t_s: running_at.elapsed().as_secs(),
                regions,
                reconnecting,
                note: None,
            };
            timeline
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(point);
        }
    })
}

/// The sampled timeline with each note in the second it was made.
pub(super) fn annotated(
    timeline: &Mutex<Vec<TimelinePoint>>,
    notes: &Mutex<Vec<(Instant, String)>>,
    running_at: Instant,
) -> Vec<TimelinePoint> {
    let mut timeline = timeline
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for (at, what) in notes.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        let second = at.saturating_duration_since(running_at).as_secs();
        if let Some(point) = timeline.iter_mut().find(|p| p.t_s == second) {
            point.note = Some(match point.note.take() {
                Some(old) => format!("{old}; {what}"),
                None => what.clone(),
            });
        }
    }
    timeline
}
