//! Publishing room events: one script sequences a batch atomically, charges its budget and
//! honours idempotency keys; durable mode then waits for replicas. Also the shared budgets
//! (`spend`).

use std::time::Duration;

use meridian_protocol::RoomId;

use super::keys::fence_key;
use super::RedisStore;
use crate::link::LinkConn;
use crate::scripts::{k, RoomKeys};
use crate::{now_ms, Budget, PublishItem, Published, StoreError, StoreResult};

pub(super) async fn publish_budgeted(
    store: &RedisStore,
    room: &RoomId,
    items: &[PublishItem<'_>],
    budget: Option<(&str, u64)>,
    budget_window: Duration,
) -> StoreResult<Vec<Published>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    // One script for the batch: the budget is charged, the items are sequenced in order
    // and atomically, and a NOSCRIPT retry (after a restart or failover) repeats all of
    // them or none.
    let keys = RoomKeys::new(room);
    let mut inv = store.room_script(&store.scripts.publish, &keys);
    match budget {
        Some((name, limit)) => {
            let window_ms = (budget_window.as_millis() as u64).max(1);
            let slot = now_ms() / window_ms;
            inv.arg(limit)
                .arg(window_ms * 2)
                .key(format!("mb:{{{name}}}:{slot}"));
        }
        None => {
            inv.arg("").arg(0).key(&keys.keys[k::IDEM]);
        }
    }
    let window = store.config.limits.idempotency_window.as_millis() as u64;
    for item in items {
        inv.arg(item.frame.head());
        match item.idempotency {
            Some((user, key)) => {
                inv.arg(window);
                inv.key(format!("{}{}|{}", keys.keys[k::IDEM], user, key));
            }
            None => {
                inv.arg("");
                inv.key(&keys.keys[k::IDEM]);
            }
        }
    }
    let published = |rows: Vec<(i64, String, u64)>| {
        if let [(-1, _, limit)] = rows[..] {
            return Err(StoreError::BudgetSpent { limit });
        }
        if rows.len() != items.len() {
            return Err(StoreError::Corrupt(format!(
                "publish script returned {} results for {} publishes",
                rows.len(),
                items.len()
            )));
        }
        Ok(rows
            .into_iter()
            .map(|(status, epoch, seq)| Published {
                seq,
                epoch,
                duplicate: status == 0,
            })
            .collect::<Vec<_>>())
    };
    let Some((durability, link)) = store.config.durable.zip(store.durable_link.as_ref()) else {
        return published(inv.invoke_async(&mut store.conn()).await?);
    };
    // One pinned connection for the script and its WAIT: WAIT counts the replicas that
    // have this connection's writes.
    let mut conn = LinkConn::new(link.clone());
    let out = published(inv.invoke_async(&mut conn).await?)?;
    let timeout_ms = durability.timeout.as_millis() as u64;
    let acked: u64 = if out.iter().all(|p| p.duplicate) {
        // Retries answered from their idempotency keys wrote nothing on this connection,
        // so a bare WAIT would not cover the first attempts. Any write moves this
        // connection's replication offset past them (they are already in the data set).
        let (acked,): (u64,) = redis::pipe()
            .cmd("SET")
            .arg(fence_key(&store.config.node))
            .arg(out.last().map_or(0, |p| p.seq))
            .arg("PX")
            .arg(60_000)
            .ignore()
            .cmd("WAIT")
            .arg(durability.replicas)
            .arg(timeout_ms)
            .query_async(&mut conn)
            .await?;
        acked
    } else {
        redis::cmd("WAIT")
            .arg(durability.replicas)
            .arg(timeout_ms)
            .query_async(&mut conn)
            .await?
    };
    if acked < u64::from(durability.replicas) {
        return Err(StoreError::NotDurable {
            acked,
            wanted: durability.replicas,
        });
    }
    Ok(out)
}

pub(super) async fn spend(
    store: &RedisStore,
    budgets: &[Budget<'_>],
    window: Duration,
) -> StoreResult<Option<usize>> {
    if budgets.is_empty() {
        return Ok(None);
    }
    let window_ms = (window.as_millis() as u64).max(1);
    let slot = now_ms() / window_ms;
    let mut inv = store.scripts.spend.prepare_invoke();
    inv.arg(window_ms * 2);
    for b in budgets {
        inv.key(format!("mb:{{{}}}:{slot}", b.name))
            .arg(b.cost)
            .arg(b.limit);
    }
    let over: usize = inv.invoke_async(&mut store.conn()).await?;
    Ok(over.checked_sub(1))
}
