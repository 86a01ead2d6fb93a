//! The delivery workers: for every endpoint and partition, the node holding the partition's
//! lease reads the endpoint's consumer group, batches, signs, POSTs, retries with exponential
//! backoff and acknowledges (`XACK`) before reading on. Entries read but not acknowledged stay
//! pending in Redis: a node that dies mid-batch leaves them to the next lease holder, which
//! claims them (`XAUTOCLAIM`) and sends them again (at least once; receivers deduplicate by
//! event id). Only the worker of a failing endpoint waits; signaling never does.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamReadReply};
use redis::{AsyncCommands, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use region_state::lease::LeaseScripts;

use crate::config::{EndpointConfig, WebhooksConfig};
use crate::event::{Batch, EventKind, WebhookEvent};
use crate::metrics::WebhookMetrics;
use crate::outbox::{lease_key, mark_on, stream_key};
use crate::signature::{sign, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};

/// The delay before retry `attempt` (0-based): `base · 2^attempt`, capped at `max`.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(max)
}

struct Shared {
    redis: redis::Client,
    cfg: WebhooksConfig,
    region: String,
    node: String,
    metrics: WebhookMetrics,
    http: reqwest::Client,
    lease: LeaseScripts,
}

/// Starts the outbox marker and one worker per endpoint and partition, under `shutdown`.
/// `node` names this node's consumer (unique per process); `region` prefixes event ids.
pub fn spawn(
    redis: redis::Client,
    cfg: WebhooksConfig,
    region: String,
    node: String,
    metrics: WebhookMetrics,
    shutdown: CancellationToken,
) -> JoinSet<()> {
    let mut set = JoinSet::new();
    if !cfg.enabled() {
        return set;
    }
    let shared = Arc::new(Shared {
        redis,
        cfg,
        region,
        node,
        metrics,
        http: reqwest::Client::new(),
        lease: LeaseScripts::default(),
    });
    set.spawn(mark(shared.clone(), shutdown.clone()));
    for ep in 0..shared.cfg.endpoints.len() {
        for p in 0..shared.cfg.partitions {
            set.spawn(partition_worker(shared.clone(), ep, p, shutdown.clone()));
        }
    }
    set
}

async fn connect(shared: &Shared) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(
            Duration::from_millis(shared.cfg.lease_ttl_ms) + Duration::from_secs(5),
        ));
    shared
        .redis
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Keeps `mw:wh:on` alive, so the Lua scripts write events while some node delivers them.
async fn mark(shared: Arc<Shared>, shutdown: CancellationToken) {
    let ttl = shared.cfg.lease_ttl_ms.max(10_000) * 3;
    let mut conn = None;
    loop {
        if conn.is_none() {
            conn = connect(&shared).await.ok();
        }
        if let Some(c) = conn.as_mut() {
            let r = mark_on(c, shared.cfg.partitions, shared.cfg.stream_max_len, ttl).await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "webhooks: cannot refresh the outbox marker");
                conn = None;
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(ttl / 6)) => {}
        }
    }
}

async fn partition_worker(shared: Arc<Shared>, ep: usize, p: u16, shutdown: CancellationToken) {
    let mut worker = Worker {
        shared: shared.clone(),
        ep,
        p,
        stream: stream_key(p),
        lease: lease_key(&shared.cfg.endpoints[ep].name, p),
        dropped_unreported: 0,
    };
    let idle = Duration::from_millis(shared.cfg.lease_ttl_ms / 3);
    // One connection per worker (its blocking reads would hold up a shared one), kept
    // until it fails.
    let mut conn: Option<MultiplexedConnection> = None;
    while !shutdown.is_cancelled() {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&shared).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::debug!(error = %e, "webhooks: no Redis connection");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(idle) => continue,
                    }
                }
            },
        };
        let failed = match worker.own(c, &shutdown).await {
            Ok(true) => false,
            Ok(false) => {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(idle) => {}
                }
                false
            }
            Err(e) => {
                tracing::warn!(endpoint = %worker.endpoint().name, partition = p, error = %e,
                    "webhooks: worker error, retrying");
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = tokio::time::sleep(idle) => {}
                }
                true
            }
        };
        let _ = shared.lease.release(c, &worker.lease, &shared.node).await;
        if failed {
            conn = None;
        }
    }
}

/// Why a batch was not acknowledged.
enum Outcome {
    Acked,
    LostLease,
    Shutdown,
}

struct Worker {
    shared: Arc<Shared>,
    ep: usize,
    p: u16,
    stream: String,
    lease: String,
    /// Events dropped since the last `dropped` event went out (lost on a crash: the metric
    /// and log line stay).
    dropped_unreported: u64,
}

impl Worker {
    fn endpoint(&self) -> &EndpointConfig {
        &self.shared.cfg.endpoints[self.ep]
    }

    async fn hold_lease(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<bool> {
        let ttl = Duration::from_millis(self.shared.cfg.lease_ttl_ms);
        self.shared
            .lease
            .hold(conn, &self.lease, &self.shared.node, ttl)
            .await
    }

    /// Delivers while it holds the lease. `Ok(false)`: another node holds it.
    async fn own(
        &mut self,
        conn: &mut MultiplexedConnection,
        shutdown: &CancellationToken,
    ) -> redis::RedisResult<bool> {
        if !self.hold_lease(conn).await? {
            return Ok(false);
        }
        let group = self.endpoint().name.clone();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        if let Err(e) = created {
            if e.code() != Some("BUSYGROUP") {
                return Err(e);
            }
        }
        // Whatever a previous holder read and did not acknowledge is ours now.
        let mut cursor = "0-0".to_owned();
        loop {
            let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&group)
                .arg(&self.shared.node)
                .arg(0)
                .arg(&cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            if claimed.next_stream_id == "0-0" || claimed.claimed.is_empty() {
                break;
            }
            cursor = claimed.next_stream_id;
        }
        while !shutdown.is_cancelled() {
            if !self.hold_lease(conn).await? {
                return Ok(true);
            }
            let mut entries = self
                .read(conn, "0", self.endpoint().batch_max_events, 0)
                .await?;
            if entries.is_empty() {
                self.trim_backlog(conn).await?;
                entries = self.read_new_batch(conn).await?;
            }
            if entries.is_empty() && self.dropped_unreported == 0 {
                continue;
            }
            match self.deliver(conn, &entries, shutdown).await? {
                Outcome::Acked => {}
                Outcome::LostLease => return Ok(true),
                Outcome::Shutdown => return Ok(true),
            }
        }
        Ok(true)
    }

    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        from: &str,
        count: usize,
        block_ms: u64,
    ) -> redis::RedisResult<Vec<StreamId>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.endpoint().name)
            .arg(&self.shared.node)
            .arg("COUNT")
            .arg(count);
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(from);
        let reply: Option<StreamReadReply> = cmd.query_async(conn).await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// New entries: waits up to a third of the lease for the first, then up to
    /// `batch_max_ms` for more, until `batch_max_events`.
    async fn read_new_batch(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> redis::RedisResult<Vec<StreamId>> {
        let ep = self.endpoint();
        let mut got = self
            .read(
                conn,
                ">",
                ep.batch_max_events,
                (self.shared.cfg.lease_ttl_ms / 3).max(1),
            )
            .await?;
        if got.is_empty() {
            return Ok(got);
        }
        let deadline = Instant::now() + Duration::from_millis(ep.batch_max_ms);
        while got.len() < ep.batch_max_events {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            if left == 0 {
                break;
            }
            let more = self
                .read(conn, ">", ep.batch_max_events - got.len(), left)
                .await?;
            if more.is_empty() {
                break;
            }
            got.extend(more);
        }
        Ok(got)
    }

    /// Enforces `backlog_limit`: when the group lags by more, skips the oldest undelivered
    /// entries, counts them, and reports them in a `dropped` event.
    async fn trim_backlog(&mut self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let info: StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async(conn)
            .await?;
        let name = self.endpoint().name.clone();
        let Some(group) = info.groups.into_iter().find(|g| g.name == name) else {
            return Ok(());
        };
        // Lag is unknown after the stream was trimmed past the cursor (`MAXLEN`): skip the
        // check then; the entries are gone already.
        let Some(lag) = group.lag else { return Ok(()) };
        let limit = self.endpoint().backlog_limit as usize;
        self.shared.metrics.set_backlog(&name, lag as i64);
        if lag <= limit {
            return Ok(());
        }
        let over = lag - limit;
        let skipped: Vec<(String, Value)> = {
            let v: Value = redis::cmd("XRANGE")
                .arg(&self.stream)
                .arg(format!("({}", group.last_delivered_id))
                .arg("+")
                .arg("COUNT")
                .arg(over)
                .query_async(conn)
                .await?;
            match v {
                Value::Array(items) => items
                    .into_iter()
                    .filter_map(|item| match item {
                        Value::Array(mut pair) if pair.len() == 2 => {
                            let fields = pair.pop()?;
                            let id: String = redis::from_redis_value(pair.pop()?).ok()?;
                            Some((id, fields))
                        }
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            }
        };
        let Some((last, _)) = skipped.last() else {
            return Ok(());
        };
        let _: () = redis::cmd("XGROUP")
            .arg("SETID")
            .arg(&self.stream)
            .arg(&name)
            .arg(last)
            .query_async(conn)
            .await?;
        let n = skipped.len() as u64;
        self.dropped_unreported += n;
        self.shared.metrics.dropped(&name, n);
        tracing::warn!(endpoint = %name, partition = self.p, dropped = n, backlog_limit = limit,
            "webhooks: backlog full, dropped the oldest undelivered events");
        Ok(())
    }

    fn events_of(&self, entries: &[StreamId]) -> Vec<WebhookEvent> {
        let ep = self.endpoint();
        let mut events = Vec::with_capacity(entries.len() + 1);
        if self.dropped_unreported > 0 {
            events.push(WebhookEvent {
                id: format!(
                    "{}.{}.dropped.{}",
                    self.shared.region,
                    self.p,
                    entries.first().map_or("-", |e| e.id.as_str())
                ),
                kind: EventKind::Dropped,
                at: now_ms(),
                region: self.shared.region.clone(),
                room: None,
                user: None,
                reason: Some("backlog_full".into()),
                count: Some(self.dropped_unreported),
            });
        }
        for entry in entries {
            let fields: Vec<(String, String)> = entry
                .map
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), redis::from_redis_value_ref(v).ok()?)))
                .collect();
            match WebhookEvent::from_entry(self.p, &entry.id, &fields) {
                Ok(e) if ep.events.contains(&e.kind) => events.push(e),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "webhooks: skipping a malformed outbox entry"),
            }
        }
        events
    }

    /// Sends one batch until it is accepted (then `XACK`s it), the retry budget is spent (then
    /// drops it, reported), the lease is lost or the node shuts down (then leaves it pending).
    async fn deliver(
        &mut self,
        conn: &mut MultiplexedConnection,
        entries: &[StreamId],
        shutdown: &CancellationToken,
    ) -> redis::RedisResult<Outcome> {
        let ep = self.endpoint().clone();
        let events = self.events_of(entries);
        let reported = events
            .first()
            .filter(|e| e.kind == EventKind::Dropped)
            .and_then(|e| e.count)
            .unwrap_or(0);
        if !events.is_empty() {
            let batch = Batch {
                // Stable across retries and owners: the same first event and length are the
                // same events (a group's entries are read in stream order).
                id: format!(
                    "{}.{}.{}.{}.{}",
                    self.shared.region,
                    ep.name,
                    self.p,
                    events.first().map_or("-", |e| e.id.as_str()),
                    events.len()
                ),
                events,
            };
            let body = match serde_json::to_vec(&batch) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "webhooks: cannot encode a batch");
                    return Ok(Outcome::Shutdown);
                }
            };
            let started = Instant::now();
            let give_up = Duration::from_secs(ep.retry.give_up_after_s);
            let mut attempt = 0u32;
            loop {
                if self.post(&ep, &batch.id, &body).await {
                    self.shared.metrics.batch(&ep.name, "ok");
                    self.shared
                        .metrics
                        .delivered(&ep.name, batch.events.len() as u64);
                    // Drops counted while this batch was retried go in the next one.
                    self.dropped_unreported = self.dropped_unreported.saturating_sub(reported);
                    break;
                }
                self.shared.metrics.batch(&ep.name, "failed");
                let delay = backoff(
                    Duration::from_millis(ep.retry.base_ms),
                    Duration::from_millis(ep.retry.max_ms),
                    attempt,
                );
                if started.elapsed() + delay > give_up {
                    let n = batch.events.len() as u64;
                    self.shared.metrics.batch(&ep.name, "gave_up");
                    self.shared.metrics.dropped(&ep.name, n);
                    self.dropped_unreported += n;
                    tracing::warn!(endpoint = %ep.name, batch = %batch.id, events = n,
                        "webhooks: retries exhausted, dropped the batch");
                    break;
                }
                attempt += 1;
                // Wait in slices of a third of the lease, renewing it.
                let until = Instant::now() + delay;
                let slice = Duration::from_millis(self.shared.cfg.lease_ttl_ms / 3);
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(Outcome::Shutdown),
                        () = tokio::time::sleep(left.min(slice)) => {}
                    }
                    if !self.hold_lease(conn).await? {
                        return Ok(Outcome::LostLease);
                    }
                    // The backlog grows while we wait: keep it bounded.
                    self.trim_backlog(conn).await?;
                }
                self.shared.metrics.batch(&ep.name, "retried");
            }
        }
        if !entries.is_empty() {
            let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
            let _: i64 = conn.xack(&self.stream, &ep.name, &ids).await?;
        }
        Ok(Outcome::Acked)
    }

    async fn post(&self, ep: &EndpointConfig, batch_id: &str, body: &[u8]) -> bool {
        let ts = now_ms() / 1000;
        let r = self
            .shared
            .http
            .post(&ep.url)
            .timeout(Duration::from_millis(ep.timeout_ms))
            .header("content-type", "application/json")
            .header(HEADER_ID, batch_id)
            .header(HEADER_TIMESTAMP, ts.to_string())
            .header(HEADER_SIGNATURE, sign(&ep.secret, ts, body))
            .body(body.to_vec())
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => true,
            Ok(resp) => {
                tracing::debug!(endpoint = %ep.name, status = %resp.status(), "webhooks: refused");
                false
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep.name, error = %e, "webhooks: unreachable");
                false
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let b = |n| backoff(Duration::from_millis(100), Duration::from_secs(2), n);
        assert_eq!(b(0), Duration::from_millis(100));
        assert_eq!(b(1), Duration::from_millis(200));
        assert_eq!(b(4), Duration::from_millis(1600));
        assert_eq!(b(5), Duration::from_secs(2));
        assert_eq!(b(1000), Duration::from_secs(2));
    }
}
