//! The cost of durable mode: publish latency as a client sees it (publish sent → `ok`), with
//! and without `store.durable`, on the same primary + replica, in the same run.
//!
//! Run: `cargo build --release --bins && cargo bench -p meridian-e2e --bench durable`
//! Env: `DURABLE_ROUNDS` (default 6) rounds of `DURABLE_BATCH` (default 500) sequential
//! publishes per mode, interleaved so that drift on a shared machine hits both modes alike;
//! `DURABLE_CONCURRENCY` (default 16) clients per mode for the throughput phase of
//! `DURABLE_SECONDS` (default 3).
//!
//! Topology: one `redis-server` primary, one replica (loopback, so replication costs one
//! local round trip), two release-built `region-node` processes on the primary — one plain,
//! one durable (`WAIT 1 500` after every publish) — and the clients in this process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use meridian_e2e::{redis_info, token, NodeProcess, RedisServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn request(ws: &mut Ws, id: u64, req: Value) -> Result<Value> {
    let mut req = req;
    req["id"] = json!(id);
    ws.send(Message::Text(req.to_string().into())).await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(t) = msg? else { continue };
        let v: Value = serde_json::from_str(&t)?;
        if v["id"] == id {
            if v["type"] != "ok" {
                bail!("request failed: {v}");
            }
            return Ok(v);
        }
    }
    bail!("connection closed")
}

/// A publisher in its own room (so it receives only its own events).
async fn publisher(url: &str, user: &str) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    request(&mut ws, 1, json!({"op": "hello", "token": token(user)})).await?;
    request(
        &mut ws,
        2,
        json!({"op": "join", "room": format!("bench-{user}")}),
    )
    .await?;
    Ok(ws)
}

async fn publish_batch(ws: &mut Ws, user: &str, n: u64, next: &mut u64) -> Result<Vec<u64>> {
    let mut lat = Vec::with_capacity(n as usize);
    for _ in 0..n {
        *next += 1;
        let started = Instant::now();
        request(
            ws,
            *next + 10,
            json!({"op": "publish", "room": format!("bench-{user}"), "data": {"n": *next}, "idempotency_key": format!("k{next}")}),
        )
        .await?;
        lat.push(started.elapsed().as_micros() as u64);
    }
    Ok(lat)
}

fn summary(name: &str, mut lat: Vec<u64>) -> (f64, f64) {
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    let mean = lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0;
    println!(
        "{name:>8}: n={} mean {mean:.3} ms, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        lat.len(),
        p(0.5),
        p(0.99),
        p(0.999),
        p(1.0)
    );
    (p(0.5), p(0.99))
}

async fn throughput(url: &str, tag: &str, clients: u64, seconds: u64) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = url.to_owned();
        let done = done.clone();
        let user = format!("{tag}-t{c}");
        tasks.push(tokio::spawn(async move {
            let mut ws = publisher(&url, &user).await?;
            let mut next = 0;
            while Instant::now() < stop {
                publish_batch(&mut ws, &user, 1, &mut next).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / seconds as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rounds = env_u64("DURABLE_ROUNDS", 6);
    let batch = env_u64("DURABLE_BATCH", 500);
    let clients = env_u64("DURABLE_CONCURRENCY", 16);
    let seconds = env_u64("DURABLE_SECONDS", 3);
    let primary = RedisServer::start_with_args(&["--repl-diskless-sync-delay", "0"])?;
    let port = primary.port().to_string();
    let _replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &port])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !redis_info(primary.port(), "replication")?.contains("state=online") {
        if Instant::now() > deadline {
            bail!("replica did not come online");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let limits = "[limits]\nrequests_per_second = 1000000.0\nrequest_burst = 1000000.0";
    let plain_store = format!(
        "store = {{ kind = \"redis\", url = \"{}\" }}",
        primary.url()
    );
    let durable_store = format!(
        "store = {{ kind = \"redis\", url = \"{}\", durable = true, durable_timeout_ms = 500 }}",
        primary.url()
    );
    let plain = NodeProcess::start_with_store("bench", &plain_store, limits, &[])
        .context("build release binaries first")?;
    let durable = NodeProcess::start_with_store("bench", &durable_store, limits, &[])?;
    let mut a = publisher(&plain.ws_url(), "plain").await?;
    let mut b = publisher(&durable.ws_url(), "durable").await?;
    let (mut na, mut nb) = (0, 0);
    // Right after a full sync the primary reports the replica online before it streams to it
    // (it starts on the replica's first ACK, within a second): until then WAIT times out.
    let ready_by = Instant::now() + Duration::from_secs(10);
    let mut id = 1_000_000;
    loop {
        id += 1;
        let r = request(
            &mut b,
            id,
            json!({"op": "publish", "room": "bench-durable", "data": 0, "idempotency_key": "warm"}),
        )
        .await;
        match r {
            Ok(_) => break,
            Err(_) if Instant::now() < ready_by => continue,
            Err(e) => return Err(e),
        }
    }
    // Warm-up.
    publish_batch(&mut a, "plain", 200, &mut na).await?;
    publish_batch(&mut b, "durable", 200, &mut nb).await?;
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        la.extend(publish_batch(&mut a, "plain", batch, &mut na).await?);
        lb.extend(publish_batch(&mut b, "durable", batch, &mut nb).await?);
    }
    println!("sequential publishes, one client per mode (publish sent -> ok):");
    let (p50a, p99a) = summary("plain", la);
    let (p50b, p99b) = summary("durable", lb);
    println!(
        "durable-mode cost: +{:.3} ms at p50, +{:.3} ms at p99",
        p50b - p50a,
        p99b - p99a
    );
    let ta = throughput(&plain.ws_url(), "plain", clients, seconds).await?;
    let tb = throughput(&durable.ws_url(), "durable", clients, seconds).await?;
    println!(
        "throughput, {clients} clients publishing back to back for {seconds} s: plain {ta:.0}/s, durable {tb:.0}/s"
    );
    Ok(())
}
