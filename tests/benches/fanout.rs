//! Quick fan-out benchmark of one region: a real redis-server and two release-built
//! region-node processes, N subscribers in one room spread over both nodes, one publisher.
//!
//! Run: `cargo build --release --bins && cargo bench -p meridian-e2e --bench fanout`
//! Env: `FANOUT_SUBSCRIBERS` (default 200), `FANOUT_RATE` msgs/s for the fixed-rate phase
//! (default 200), `FANOUT_SECONDS` per phase (default 5).
//!
//! Phase 1 publishes at a fixed rate and reports end-to-end latency (publish sent → event
//! received, same clock) at p50/p99/p99.9. Phase 2 publishes as fast as acks return (64 in
//! flight) and reports delivered messages per second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use meridian_e2e::{token, NodeProcess, RedisServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct Stats {
    delivered: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    record: std::sync::atomic::AtomicBool,
}

async fn subscriber(
    url: String,
    user: String,
    stats: Arc<Stats>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true).await?;
    ws.send(Message::Text(
        json!({"id":1,"op":"hello","token":token(&user)})
            .to_string()
            .into(),
    ))
    .await?;
    ws.send(Message::Text(
        json!({"id":2,"op":"join","room":"fanout"})
            .to_string()
            .into(),
    ))
    .await?;
    let mut joined = false;
    while let Some(msg) = ws.next().await {
        let Message::Text(t) = msg? else { continue };
        if !joined {
            let v: Value = serde_json::from_str(&t)?;
            if v["id"] == 2 {
                joined = true;
                let _ = ready.send(()).await;
            }
            continue;
        }
        // Cheap check first: only message events carry "sent_us".
        if let Some(i) = t.find("\"sent_us\":") {
            let rest = &t[i + 10..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if let Ok(sent) = rest[..end].parse::<u64>() {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                if stats.record.load(Ordering::Relaxed) {
                    let lat = now_us().saturating_sub(sent);
                    if let Ok(mut l) = stats.latencies_us.lock() {
                        l.push(lat);
                    }
                }
            }
        }
    }
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let subscribers = env_u64("FANOUT_SUBSCRIBERS", 200);
    let rate = env_u64("FANOUT_RATE", 200);
    let seconds = env_u64("FANOUT_SECONDS", 5);
    let redis = RedisServer::start()?;
    let limits = "[limits]\nrequests_per_second = 1000000.0\nrequest_burst = 1000000.0\nsend_queue = 8192\nmax_members_per_room = 0";
    let nodes = [
        NodeProcess::start("bench", &redis.url(), limits)
            .context("build release binaries first")?,
        NodeProcess::start("bench", &redis.url(), limits)?,
    ];
    let stats = Arc::new(Stats {
        delivered: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::new()),
        record: false.into(),
    });
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subscribers as usize);
    for i in 0..subscribers {
        let url = nodes[(i % 2) as usize].ws_url();
        tokio::spawn(subscriber(
            url,
            format!("sub{i}"),
            stats.clone(),
            ready_tx.clone(),
        ));
    }
    for _ in 0..subscribers {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv()).await?;
    }
    let (mut publisher, _) =
        tokio_tungstenite::connect_async_with_config(nodes[0].ws_url(), None, true).await?;
    publisher
        .send(Message::Text(
            json!({"id":0,"op":"hello","token":token("publisher")})
                .to_string()
                .into(),
        ))
        .await?;
    publisher
        .send(Message::Text(
            json!({"id":1,"op":"join","room":"fanout"})
                .to_string()
                .into(),
        ))
        .await?;
    let (mut sink, mut stream) = publisher.split();
    let acks = Arc::new(AtomicU64::new(0));
    let acks_reader = acks.clone();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Text(t) = msg {
                if t.starts_with("{\"type\":\"ok\"") || t.starts_with("{\"type\":\"error\"") {
                    acks_reader.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base_acks = acks.load(Ordering::Relaxed);

    // Phase 1: fixed rate, latency.
    stats.record.store(true, Ordering::Relaxed);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let start = Instant::now();
    let mut id = 10u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        id += 1;
        let req = format!(
            r#"{{"id":{id},"op":"publish","room":"fanout","data":{{"sent_us":{}}}}}"#,
            now_us()
        );
        sink.send(Message::Text(req.into())).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stats.record.store(false, Ordering::Relaxed);
    let published1 = id - 10;
    let mut lat = std::mem::take(
        &mut *stats
            .latencies_us
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?,
    );
    lat.sort_unstable();
    let delivered1 = stats.delivered.swap(0, Ordering::Relaxed);

    // Phase 2: saturation, 64 publishes in flight.
    let start = Instant::now();
    let mut sent = 0u64;
    let sent_before = acks.load(Ordering::Relaxed);
    while start.elapsed() < Duration::from_secs(seconds) {
        while sent - (acks.load(Ordering::Relaxed) - sent_before) < 64 {
            id += 1;
            sent += 1;
            let req = format!(
                r#"{{"id":{id},"op":"publish","room":"fanout","data":{{"sent_us":{}}}}}"#,
                now_us()
            );
            sink.send(Message::Text(req.into())).await?;
        }
        tokio::task::yield_now().await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let delivered2 = stats.delivered.load(Ordering::Relaxed);
    let _ = base_acks;

    println!("fan-out benchmark: {subscribers} subscribers over 2 nodes, 1 publisher, 1 redis (release build)");
    println!(
        "fixed rate {rate} msg/s for {seconds}s: published {published1}, delivered {delivered1} (expected {}), latency ms p50 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}",
        published1 * subscribers,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
    );
    println!(
        "saturation: published {sent} in {elapsed:.1}s ({:.0} msg/s), delivered {delivered2} ({:.0} deliveries/s)",
        sent as f64 / elapsed,
        delivered2 as f64 / elapsed,
    );
    drop(nodes);
    drop(redis);
    Ok(())
}
