//! An established link, from the `Hello` exchange until the connection closes: registers it
//! (replacing an older connection from the same peer), starts its control, lane, RTT and
//! last-heard tasks, and reports up and down to the sink.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, ConnectionError, RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::control::{control_reader, control_writer};
use super::lanes::{accept_lanes, Lanes};
use super::{codes, lock, Link, Shared};
use crate::sink::LinkEvent;
use meridian_protocol::relay::Hello;

/// Runs an established link until it closes.
pub(super) async fn run_link(
    shared: Arc<Shared>,
    conn: Connection,
    peer: String,
    hello: Hello,
    control_send: SendStream,
    control_recv: RecvStream,
) {
    if shared.shutdown.is_cancelled() {
        conn.close(codes::SHUTDOWN, b"relay shutting down");
        return;
    }
    let generation = shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
    let (control_tx, control_rx) = mpsc::channel(1024);
    let link = Arc::new(Link {
        peer: peer.clone(),
        generation,
        conn: conn.clone(),
        control: control_tx,
        lanes: Mutex::new(Lanes {
            by_key: HashMap::new(),
            senders: Vec::new(),
        }),
        heard: Mutex::new(std::time::Instant::now()),
    });
    let replaced = lock(&shared.links).insert(peer.clone(), link.clone());
    if let Some(old) = replaced {
        old.conn
            .close(codes::REPLACED, b"replaced by a newer connection");
    }
    shared.metrics.set_link(&peer, true);
    shared.metrics.set_rtt(&peer, conn.rtt().as_secs_f64());
    shared.states.send_modify(|m| {
        m.insert(peer.clone(), true);
    });
    tracing::info!(
        %peer,
        remote = %conn.remote_address(),
        relay_id = %hello.relay_id,
        epoch = hello.epoch,
        "link up"
    );
    shared
        .sink
        .link(
            &peer,
            LinkEvent::Up {
                hello: hello.clone(),
            },
        )
        .await;

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(control_writer(
        control_send,
        control_rx,
        peer.clone(),
        shared.metrics.clone(),
        stop.clone(),
    ));
    tasks.spawn(control_reader(
        shared.clone(),
        link.clone(),
        control_recv,
        stop.clone(),
    ));
    tasks.spawn(accept_lanes(
        shared.clone(),
        conn.clone(),
        peer.clone(),
        stop.clone(),
    ));
    tasks.spawn(sample_rtt(
        shared.clone(),
        conn.clone(),
        peer.clone(),
        stop.clone(),
    ));
    tasks.spawn(watch_heard(link.clone(), stop.clone()));
    tasks.close();

    let reason = conn.closed().await;
    stop.cancel();
    // Lane senders live in the link; dropping it lets idle lane writers end.
    drop(link);
    let reason = describe_close(&reason);
    let current = {
        let mut links = lock(&shared.links);
        if links.get(&peer).is_some_and(|l| l.generation == generation) {
            links.remove(&peer);
            true
        } else {
            false
        }
    };
    if current {
        shared.metrics.set_link(&peer, false);
        shared.states.send_modify(|m| {
            m.insert(peer.clone(), false);
        });
        tracing::warn!(%peer, %reason, "link down");
        shared.sink.link(&peer, LinkEvent::Down { reason }).await;
    } else {
        // A newer connection to the same peer took over: the link never went down.
        tracing::info!(%peer, %reason, "replaced connection closed");
    }
    tasks.wait().await;
}

fn describe_close(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(c) => format!(
            "closed by peer with code {}: {}",
            c.error_code,
            String::from_utf8_lossy(&c.reason)
        ),
        ConnectionError::TimedOut => "timed out (idle timeout: no packets from the peer)".into(),
        other => other.to_string(),
    }
}

/// Keeps `link.heard` current: every 200 ms, if the connection received datagrams since the
/// last check, they arrived after that check, so the check's time is a safe "heard by".
async fn watch_heard(link: Arc<Link>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_millis(200));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = link.conn.stats().udp_rx.datagrams;
    let mut checked = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = std::time::Instant::now();
        let count = link.conn.stats().udp_rx.datagrams;
        if count != seen {
            seen = count;
            *lock(&link.heard) = checked;
        }
        checked = now;
    }
}

async fn sample_rtt(shared: Arc<Shared>, conn: Connection, peer: String, stop: CancellationToken) {
    let mut every =
        tokio::time::interval(Duration::from_millis(shared.options.timing.rtt_sample_ms));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => shared.metrics.set_rtt(&peer, conn.rtt().as_secs_f64()),
        }
    }
}
