//! Cross-region benchmark: two regions (ap-southeast, eu-central), each a real redis-server,
//! a release-built region-node and interregion-relay, with the impairment proxy between the
//! relays adding `RELAY_RTT_MS` (default 80) of round-trip time.
//!
//! Run: `cargo build --release --bins && cargo bench -p meridian-e2e --bench relay`
//! Env: `RELAY_RTT_MS` (80), `RELAY_RATE` msgs/s for the latency phase (200), `RELAY_SECONDS`
//! per phase (5), `RELAY_KILL=0` skips the region-kill phase (it takes ~20 s: default timers).
//!
//! 1. Latency: a publisher in ap-southeast at a fixed rate, one subscriber in ap-southeast and
//!    one in eu-central. Reports end-to-end latency (publish sent → event received, one clock)
//!    for both, and what crossing regions adds over the emulated one-way link delay (RTT/2):
//!    the remote p50/p99 minus RTT/2.
//! 2. Throughput: publishers in ap-southeast with 64 publishes in flight; counts the events
//!    eu-central's relay received from ap-southeast (`meridian_relay_events_total`) per second,
//!    and the messages its subscriber got.
//! 3. Region kill: every process of eu-central is killed; time until ap-southeast's member
//!    sees `left {reason: region_down}` with the default timers (idle 4 s, keep-alive 1 s,
//!    grace 15 s).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use meridian_e2e::mesh::{MeshTiming, TestMesh};
use meridian_e2e::token;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const AP: &str = "ap-southeast";
const EU: &str = "eu-central";
const ROOM: &str = "bench";

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

#[derive(Default)]
struct Stats {
    delivered: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    record: std::sync::atomic::AtomicBool,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, user: &str) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    ws.send(Message::Text(
        json!({"id":1,"op":"hello","token":token(user)})
            .to_string()
            .into(),
    ))
    .await?;
    ws.send(Message::Text(
        json!({"id":2,"op":"join","room":ROOM}).to_string().into(),
    ))
    .await?;
    while let Some(msg) = ws.next().await {
        let Message::Text(t) = msg? else { continue };
        let v: Value = serde_json::from_str(&t)?;
        if v["id"] == 2 {
            anyhow::ensure!(v["type"] == "ok", "join failed: {v}");
            return Ok(ws);
        }
    }
    anyhow::bail!("closed before the join reply")
}

async fn subscriber(mut ws: Ws, stats: Arc<Stats>, left: tokio::sync::mpsc::Sender<Value>) {
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(t) = msg else { continue };
        if let Some(i) = t.find("\"sent_us\":") {
            let rest = &t[i + 10..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if let Ok(sent) = rest[..end].parse::<u64>() {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                if stats.record.load(Ordering::Relaxed) {
                    if let Ok(mut l) = stats.latencies_us.lock() {
                        l.push(now_us().saturating_sub(sent));
                    }
                }
            }
        } else if t.contains("\"type\":\"left\"") {
            if let Ok(v) = serde_json::from_str::<Value>(&t) {
                let _ = left.send(v).await;
            }
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

async fn events_in(mesh: &TestMesh) -> Result<u64> {
    let text = mesh.region(EU)?.relays[0].metrics().await?;
    Ok(text
        .lines()
        .find(|l| {
            l.starts_with("meridian_relay_events_total{")
                && l.contains("peer=\"ap-southeast\"")
                && l.contains("direction=\"in\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as u64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rtt = env_u64("RELAY_RTT_MS", 80);
    let rate = env_u64("RELAY_RATE", 200).max(1);
    let seconds = env_u64("RELAY_SECONDS", 5).max(1);
    let kill = env_u64("RELAY_KILL", 1) == 1;
    let timing = MeshTiming {
        grace_ms: 15_000,
        interest_linger_ms: 5_000,
        idle_timeout_ms: 4_000,
        keep_alive_ms: 1_000,
        presence_ttl_ms: 4_000,
        node_extra: "[limits]\nrequests_per_second = 1000000.0\nrequest_burst = 1000000.0\nsend_queue = 8192\n".into(),
    };
    let mut mesh = TestMesh::start(&[AP, EU], rtt, 1, timing).await?;
    mesh.wait_links(Duration::from_secs(10)).await?;
    let ap_url = mesh.region(AP)?.node.ws_url();
    let eu_url = mesh.region(EU)?.node.ws_url();

    let local = Arc::new(Stats::default());
    let remote = Arc::new(Stats::default());
    let (left_tx, mut left_rx) = tokio::sync::mpsc::channel(16);
    let ws = connect(&eu_url, "remote-sub").await?;
    tokio::spawn(subscriber(ws, remote.clone(), left_tx.clone()));
    let ws = connect(&ap_url, "local-sub").await?;
    tokio::spawn(subscriber(ws, local.clone(), left_tx));
    // The room's interest and snapshot have to cross first.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Phase 0: what the emulator itself adds to its nominal one-way delay (a second proxy
    // with the same settings between two local sockets, the same rate).
    let emulator = {
        let stop = tokio_util::sync::CancellationToken::new();
        let sink = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let (proxy, _task) = wan_impair::start(
            "127.0.0.1:0".parse()?,
            sink.local_addr()?,
            wan_impair::Impairment {
                delay_ms: rtt / 2,
                jitter_ms: 0,
                loss: 0.0,
            },
            1,
            stop.clone(),
        )
        .await?;
        let src = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let n = (rate * 2).min(1000);
        let recv = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut lat = Vec::new();
            while lat.len() < n as usize {
                let Ok(Ok((len, _))) =
                    tokio::time::timeout(Duration::from_secs(5), sink.recv_from(&mut buf)).await
                else {
                    break;
                };
                if let Some(sent) = std::str::from_utf8(&buf[..len])
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                {
                    lat.push(now_us().saturating_sub(sent));
                }
            }
            lat
        });
        let gap = Duration::from_secs_f64(1.0 / rate as f64);
        for _ in 0..n {
            src.send_to(now_us().to_string().as_bytes(), proxy.listen_addr)
                .await?;
            tokio::time::sleep(gap).await;
        }
        let mut lat = recv.await?;
        stop.cancel();
        lat.sort_unstable();
        lat
    };
    let emu_p50 = percentile(&emulator, 0.5);
    let emu_p99 = percentile(&emulator, 0.99);

    // Phase 1: fixed rate.
    let mut publisher = connect(&ap_url, "publisher").await?;
    local.record.store(true, Ordering::Relaxed);
    remote.record.store(true, Ordering::Relaxed);
    let total = rate * seconds;
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    for n in 0..total {
        let due = start + gap * n as u32;
        tokio::time::sleep_until(due.into()).await;
        publisher
            .send(Message::Text(
                json!({"id": 100 + n, "op": "publish", "room": ROOM, "data": {"sent_us": now_us()}})
                    .to_string()
                    .into(),
            ))
            .await?;
        // Drain acks so the socket never backs up.
        while let Some(Ok(_)) = tokio::time::timeout(Duration::ZERO, publisher.next())
            .await
            .ok()
            .flatten()
        {}
    }
    tokio::time::sleep(Duration::from_millis(rtt * 2 + 500)).await;
    local.record.store(false, Ordering::Relaxed);
    remote.record.store(false, Ordering::Relaxed);
    let mut l = local
        .latencies_us
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    let mut r = remote
        .latencies_us
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    l.sort_unstable();
    r.sort_unstable();
    let one_way = rtt as f64 / 2.0;
    // The RTT the relays actually see through the emulator (QUIC smoothed RTT).
    let srtt_ms = {
        let text = mesh.region(AP)?.relays[0].metrics().await?;
        text.lines()
            .find(|l| l.starts_with("meridian_relay_link_rtt_seconds{") && l.contains("eu-central"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            * 1000.0
    };
    println!("cross-region latency, {rate} msg/s for {seconds} s, emulated RTT {rtt} ms (one way {one_way} ms):");
    println!(
        "  same region (ap -> ap):   {} of {total} delivered; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        l.len(),
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        percentile(&l, 1.0)
    );
    println!(
        "  cross region (ap -> eu):  {} of {total} delivered; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.len(),
        percentile(&r, 0.5),
        percentile(&r, 0.99),
        percentile(&r, 1.0)
    );
    println!(
        "  added over the nominal one-way delay (RTT/2): p50 {:.2} ms, p99 {:.2} ms",
        percentile(&r, 0.5) - one_way,
        percentile(&r, 0.99) - one_way
    );
    println!(
        "  the emulator alone (one way, same rate): p50 {emu_p50:.2} ms, p99 {emu_p99:.2} ms; QUIC srtt through it {srtt_ms:.2} ms"
    );
    println!(
        "  added over the emulated one-way delay as delivered: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&r, 0.5) - emu_p50,
        percentile(&r, 0.99) - emu_p99
    );

    // Phase 2: throughput over the link.
    let before_events = events_in(&mesh).await?;
    let before_remote = remote.delivered.load(Ordering::Relaxed);
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for p in 0..4 {
        let url = ap_url.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(&url, &format!("blaster-{p}")).await?;
            let mut id = 1000u64;
            let mut in_flight = 0u32;
            while Instant::now() < stop_at {
                while in_flight < 16 {
                    id += 1;
                    ws.send(Message::Text(
                        json!({"id": id, "op": "publish", "room": ROOM, "data": {"sent_us": now_us()}})
                            .to_string()
                            .into(),
                    ))
                    .await?;
                    in_flight += 1;
                }
                match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) if t.contains("\"type\":\"ok\"") => {
                        in_flight -= 1
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break,
                }
            }
            Ok::<_, anyhow::Error>(id - 1000)
        }));
    }
    let mut published = 0;
    for t in tasks {
        published += t.await.context("publisher task")??;
    }
    let elapsed = seconds as f64;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = events_in(&mesh).await? - before_events;
    let got = remote.delivered.load(Ordering::Relaxed) - before_remote;
    println!(
        "throughput over one relay link ({seconds} s, 4 publishers x 16 in flight): {published} published ({:.0}/s), \
         {events} events received by eu-central's relay ({:.0}/s), {got} delivered to the eu subscriber",
        published as f64 / elapsed,
        events as f64 / elapsed
    );

    // Phase 3: region kill → region_down.
    if kill {
        while left_rx.try_recv().is_ok() {}
        mesh.region_mut(EU)?.kill_all()?;
        let killed = Instant::now();
        let down = tokio::time::timeout(Duration::from_secs(40), async {
            while let Some(v) = left_rx.recv().await {
                if v["user"] == "remote-sub" {
                    return Some(v);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        match down {
            Some(v) => println!(
                "region kill -> left {{reason: {}}} at ap-southeast after {:.2} s (idle 4 s + keep-alive 1 s + grace 15 s)",
                v["reason"],
                killed.elapsed().as_secs_f64()
            ),
            None => println!("region kill: no left event within 40 s"),
        }
    }
    Ok(())
}
