//! The node's lease in the store and what hangs on it: renewal, the re-assert of this node's
//! sessions after a lapse, and the reaper that removes the members of dead nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_protocol::{LeftReason, RoomId};
use region_state::StoreError;
use tokio_util::sync::CancellationToken;

use crate::context::Node;

/// Renews the node's lease. While Redis is away, clients stay connected (their requests fail
/// with `unavailable`); when it answers again and the lease had lapsed — another node may have
/// reaped this node's members meanwhile — [`reassert`] writes every local session's presence
/// and memberships again.
pub(crate) async fn lease_loop(node: Arc<Node>, stop: CancellationToken) {
    let ttl = Duration::from_millis(node.config.timing.lease_ttl_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(node.config.timing.lease_renew_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = Instant::now();
    let mut lapsed = false;
    let mut sweep = false;
    let mut expired_warned = false;
    let mut failing_since: Option<Instant> = None;
    let mut last_warning: Option<Instant> = None;
    let mut reasserting: Option<tokio::task::JoinHandle<Result<Reasserted, StoreError>>> = None;
    loop {
        // While renewals fail, retry every 200 ms: a failover's new primary should see this
        // node's lease as soon as it is reachable, well before the lease runs out.
        let retry = tokio::time::sleep(Duration::from_millis(200));
        tokio::select! {
            _ = stop.cancelled() => {
                if let Some(task) = reasserting.take() {
                    task.abort();
                }
                return;
            }
            _ = tick.tick() => {}
            _ = node.renew_now.notified() => {}
            _ = retry, if failing_since.is_some() || reasserting.is_some() => {}
        }
        if let Some(task) = reasserting.take_if(|t| t.is_finished()) {
            if reasserted(&node, task).await {
                // A sweep that was owed is done (a failed one is retried with it).
                sweep = false;
            } else {
                lapsed = true;
            }
        }
        match node
            .timed("renew_lease", node.store.renew_lease_checked())
            .await
        {
            Ok(alive) => {
                let down_for = failing_since.take().map(|since| since.elapsed());
                if let Some(down) = down_for {
                    tracing::info!(down_ms = down.as_millis() as u64, "lease renewed again");
                    // Sessions closed during an outage this long may have given up their own
                    // clean-up: the re-assert then sweeps their entries.
                    if down >= ORPHAN_SWEEP_AFTER {
                        sweep = true;
                    }
                }
                node.metrics.redis_up.set(1);
                expired_warned = false;
                // `SET ... GET` says exactly whether the lease had lapsed.
                if !alive {
                    lapsed = true;
                }
                renewed = Instant::now();
                if lapsed && reasserting.is_none() {
                    lapsed = false;
                    node.set_lease_healthy(false);
                    tracing::warn!("this node's lease had lapsed: re-asserting its sessions");
                    reasserting = Some(tokio::spawn(reassert(node.clone(), sweep)));
                } else if reasserting.is_none() {
                    node.set_lease_healthy(true);
                }
                // Keep this node's connection count current for the region's load report.
                let mine = u64::try_from(node.metrics.connections.get()).unwrap_or(0);
                if let Err(e) = node.store.region_load(mine).await {
                    tracing::debug!(error = %e, "cannot record the connection count");
                }
            }
            Err(e) => {
                failing_since.get_or_insert_with(Instant::now);
                node.set_lease_healthy(false);
                node.metrics.redis_up.set(0);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(error = %e, "lease renewal failed; clients stay connected, requests fail with `unavailable` until Redis answers");
                }
                if !expired_warned && renewed.elapsed() >= ttl {
                    // Another node may reap this node's members now. Clients stay: once Redis
                    // answers, the renewal says whether the lease lapsed, and if so the node
                    // writes their presence and memberships again.
                    expired_warned = true;
                    tracing::warn!(
                        connections = node.metrics.connections.get(),
                        "lease expired while Redis is away; keeping clients, will re-assert them"
                    );
                }
            }
        }
    }
}

/// The outcome of a finished re-assert task, logged: `false` when it must be retried.
async fn reasserted(
    node: &Node,
    task: tokio::task::JoinHandle<Result<Reasserted, StoreError>>,
) -> bool {
    match task.await {
        Ok(Ok(r)) => {
            node.metrics.lease_reasserts.inc();
            tracing::info!(
                connections = r.connections,
                memberships = r.memberships,
                rejoined = r.rejoined,
                removed = r.removed,
                "re-asserted this node's sessions after the lease lapsed"
            );
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "re-asserting sessions failed; retrying");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "re-assert task failed; retrying");
            false
        }
    }
}

/// Store outages at least this long make the re-assert sweep the node's index for connections
/// that closed meanwhile (a session's own clean-up retries for longer than this before it gives
/// up; a shorter lapse, e.g. a late renewal under load, has nothing to sweep).
const ORPHAN_SWEEP_AFTER: Duration = Duration::from_secs(5);

/// What [`reassert`] wrote or removed.
#[derive(Debug, Default)]
struct Reasserted {
    connections: usize,
    memberships: usize,
    rejoined: usize,
    removed: usize,
}

/// After the node's lease lapsed: waits for any reaper that claimed this node, then writes
/// every local connection's presence and live memberships again (a membership the reaper
/// removed comes back with a `joined` event), and finally removes entries of connections that
/// closed while Redis was away (their own clean-up gave up) when `sweep` is set. Every step is
/// idempotent.
async fn reassert(node: Arc<Node>, sweep: bool) -> Result<Reasserted, StoreError> {
    use region_state::ConnRef;
    let store = &node.store;
    let waited = Instant::now();
    // A reaper's claim expires after 30 s even if it died mid-way.
    while store.reaping_in_progress().await? && waited.elapsed() < Duration::from_secs(35) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let newest = node.newest_conn();
    let mut done = Reasserted::default();
    // What the store still has: a reaper removes memberships and presence first and the index
    // last, so an entry still in the index (no reaper runs now) is still in the store. Only
    // what is missing is written: after a stall nobody reaped, this is one read.
    let indexed: std::collections::HashSet<(u64, Option<RoomId>)> = store
        .own_index()
        .await?
        .into_iter()
        .map(|(conn, _, room)| (conn, room))
        .collect();
    for (user, conn_no, rooms) in node.local.connections() {
        let conn = ConnRef {
            node: store.node().clone(),
            conn: conn_no,
            user,
        };
        let wrote_presence = !indexed.contains(&(conn_no, None));
        if wrote_presence {
            store.connect(&conn).await?;
            done.connections += 1;
        }
        for room in rooms {
            if indexed.contains(&(conn_no, Some(room.clone()))) {
                continue;
            }
            // Unlimited: the connection was admitted to the room before.
            let joined = store.join(&room, &conn, 0).await?;
            done.memberships += 1;
            if joined.first {
                done.rejoined += 1;
            }
            if !node.local.has_subscriber(&room, conn_no) {
                // It left while we wrote it back.
                store.leave(&room, &conn, LeftReason::Leave).await?;
            }
        }
        if wrote_presence && !node.local.has_conn(conn_no) {
            store.disconnect(&conn).await?;
        }
    }
    // Entries of connections that are gone. Look twice, a few seconds apart, so a hello or
    // join in flight (its index entry is written before the node registers it locally) is
    // never taken for an orphan.
    let orphans = |index: Vec<(u64, meridian_protocol::UserId, Option<RoomId>)>| {
        index
            .into_iter()
            .filter(|(conn, _, room)| {
                *conn <= newest
                    && match room {
                        Some(room) => !node.local.has_subscriber(room, *conn),
                        None => !node.local.has_conn(*conn),
                    }
            })
            .collect::<Vec<_>>()
    };
    if !sweep {
        return Ok(done);
    }
    let first = orphans(store.own_index().await?);
    if !first.is_empty() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut again = orphans(store.own_index().await?);
        again.retain(|e| first.contains(e));
        // Memberships before presence.
        again.sort_by_key(|(_, _, room)| room.is_none());
        for (conn_no, user, room) in again {
            let conn = ConnRef {
                node: store.node().clone(),
                conn: conn_no,
                user,
            };
            match room {
                Some(room) => {
                    store.leave(&room, &conn, LeftReason::Disconnect).await?;
                }
                None => store.disconnect(&conn).await?,
            }
            done.removed += 1;
        }
    }
    Ok(done)
}

pub(crate) async fn reap_loop(node: Arc<Node>, stop: CancellationToken) {
    let base = node.config.timing.reap_interval_ms;
    loop {
        // Jitter so a region's nodes do not all scan at the same instant.
        let wait = base + rand::random::<u64>() % (base / 4 + 1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
        // Only a node whose own lease has been healthy for a whole TTL reaps: after a
        // region-wide Redis outage every node's lease looks expired, and each must get the
        // chance to renew before anyone takes it for dead.
        let ttl = Duration::from_millis(node.config.timing.lease_ttl_ms);
        if !node.lease_healthy_for(ttl) {
            continue;
        }
        match node.timed("reap", node.store.reap_dead_nodes()).await {
            Ok(reaped) => {
                for r in reaped {
                    node.metrics.reaped_members.inc_by(r.memberships as u64);
                    tracing::info!(dead = %r.node, memberships = r.memberships, left = r.left_events, "reaped a dead node");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reaper failed"),
        }
    }
}
