//! A user-space UDP impairment proxy, for tests and demos of a WAN between regions on one
//! machine (the kernel's netem is not available here).
//!
//! The proxy listens on one address and forwards every datagram to `upstream`; each client
//! address gets its own upstream socket, so replies find their way back. Every datagram, in
//! both directions, is dropped with probability `loss`, then delivered after `delay_ms` plus a
//! uniform jitter in `[-jitter_ms, +jitter_ms]` (never below zero; jitter may reorder, as a real
//! path does). So the round trip through the proxy is at least `2 × (delay_ms − jitter_ms)`.
//! [`ProxyHandle::set_partitioned`] drops everything, including datagrams already queued,
//! until it is switched off. Settings change at run time through the handle or, in the
//! `impair-proxy` binary, through [`control_router`]'s HTTP endpoints.
//!
//! Test and dev tooling, kept out of the product crates: the relay's link tests and the
//! end-to-end mesh tests start it in-process ([`start`]); `meridian up --wan` starts the
//! `impair-proxy` binary beside the relays (`docs/relay.md`, "Impairment proxy").
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Most client addresses one proxy serves; datagrams from further clients are dropped.
pub const MAX_CLIENTS: usize = 1024;
/// Largest datagram forwarded.
const MAX_DATAGRAM: usize = 65_535;

/// How the path is impaired, per direction.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Impairment {
    /// One-way delay added to every datagram, ms.
    pub delay_ms: u64,
    /// Uniform jitter around the delay, ms (clamped so the delay never goes below zero).
    pub jitter_ms: u64,
    /// Probability in [0, 1] that a datagram is dropped.
    pub loss: f64,
}

impl Impairment {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.loss) {
            return Err(format!("loss {} must be in [0, 1]", self.loss));
        }
        if self.delay_ms > 60_000 || self.jitter_ms > 60_000 {
            return Err("delay_ms and jitter_ms must be at most 60000".into());
        }
        Ok(())
    }
}

/// Counters and settings of a running proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyState {
    /// Current impairment.
    pub impairment: Impairment,
    /// Whether everything is dropped.
    pub partitioned: bool,
    /// Datagrams delivered.
    pub forwarded: u64,
    /// Datagrams dropped (loss, partition, too many clients).
    pub dropped: u64,
}

struct Shared {
    impairment: Mutex<Impairment>,
    partitioned: AtomicBool,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    rng: Mutex<StdRng>,
}

/// Controls a running proxy; cheap to clone.
#[derive(Clone)]
pub struct ProxyHandle {
    shared: Arc<Shared>,
    /// Where clients send (the proxy's listening address).
    pub listen_addr: SocketAddr,
    /// Where the proxy forwards.
    pub upstream: SocketAddr,
}

impl std::fmt::Debug for ProxyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHandle")
            .field("listen_addr", &self.listen_addr)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl ProxyHandle {
    /// Drops everything (true) or heals the path (false).
    pub fn set_partitioned(&self, partitioned: bool) {
        self.shared.partitioned.store(partitioned, Ordering::SeqCst);
        tracing::info!(partitioned, upstream = %self.upstream, "impairment proxy partition switched");
    }

    /// Replaces the impairment.
    pub fn set_impairment(&self, impairment: Impairment) -> Result<(), String> {
        impairment.validate()?;
        *self
            .shared
            .impairment
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = impairment;
        Ok(())
    }

    /// Current settings and counters.
    pub fn state(&self) -> ProxyState {
        ProxyState {
            impairment: self.impairment(),
            partitioned: self.shared.partitioned.load(Ordering::SeqCst),
            forwarded: self.shared.forwarded.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    fn impairment(&self) -> Impairment {
        *self
            .shared
            .impairment
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn partitioned(&self) -> bool {
        self.shared.partitioned.load(Ordering::SeqCst)
    }

    fn drop_one(&self) {
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Decides the fate of one datagram: `None` to drop it, else its delay.
    fn schedule(&self) -> Option<Duration> {
        if self.partitioned() {
            return None;
        }
        let imp = self.impairment();
        let mut rng = self.shared.rng.lock().unwrap_or_else(|p| p.into_inner());
        if imp.loss > 0.0 && rng.gen_bool(imp.loss.clamp(0.0, 1.0)) {
            return None;
        }
        let jitter = if imp.jitter_ms > 0 {
            rng.gen_range(-(imp.jitter_ms as i64)..=imp.jitter_ms as i64)
        } else {
            0
        };
        let ms = (imp.delay_ms as i64 + jitter).max(0) as u64;
        Some(Duration::from_millis(ms))
    }
}

/// A datagram waiting in the delay line.
struct Delayed {
    due: Instant,
    seq: u64,
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    data: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Starts a proxy on `listen` forwarding to `upstream`. `seed` fixes the loss and jitter
/// sequence. Runs until `shutdown` is cancelled.
pub async fn start(
    listen: SocketAddr,
    upstream: SocketAddr,
    impairment: Impairment,
    seed: u64,
    shutdown: CancellationToken,
) -> std::io::Result<(ProxyHandle, tokio::task::JoinHandle<()>)> {
    impairment
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let front = Arc::new(UdpSocket::bind(listen).await?);
    let handle = ProxyHandle {
        shared: Arc::new(Shared {
            impairment: Mutex::new(impairment),
            partitioned: AtomicBool::new(false),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }),
        listen_addr: front.local_addr()?,
        upstream,
    };
    let (line_tx, line_rx) = mpsc::channel::<Delayed>(65_536);
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(delay_line(handle.clone(), line_rx, shutdown.clone()));
    let h = handle.clone();
    let task = tokio::spawn(async move {
        front_loop(h, front, line_tx, &tasks, shutdown).await;
        tasks.close();
        tasks.wait().await;
    });
    Ok((handle, task))
}

async fn front_loop(
    handle: ProxyHandle,
    front: Arc<UdpSocket>,
    line: mpsc::Sender<Delayed>,
    tasks: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) {
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let bind_ip: SocketAddr = if handle.upstream.is_ipv4() {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
    };
    loop {
        let (n, client) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = front.recv_from(&mut buf) => match r {
                Ok(r) => r,
                // ICMP errors surface here on some platforms; the path stays up.
                Err(e) => {
                    tracing::debug!(error = %e, "impairment proxy: receive error");
                    continue;
                }
            },
        };
        let back = match sessions.get(&client) {
            Some(s) => s.clone(),
            None if sessions.len() >= MAX_CLIENTS => {
                handle.drop_one();
                continue;
            }
            None => {
                let back = match UdpSocket::bind(bind_ip).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "impairment proxy: cannot bind an upstream socket");
                        handle.drop_one();
                        continue;
                    }
                };
                if let Err(e) = back.connect(handle.upstream).await {
                    tracing::warn!(error = %e, "impairment proxy: cannot reach upstream");
                    handle.drop_one();
                    continue;
                }
                let back = Arc::new(back);
                sessions.insert(client, back.clone());
                tasks.spawn(back_loop(
                    handle.clone(),
                    back.clone(),
                    front.clone(),
                    client,
                    line.clone(),
                    shutdown.clone(),
                ));
                back
            }
        };
        seq += 1;
        forward(&handle, &line, back, None, &buf[..n], seq << 1).await;
    }
}

async fn back_loop(
    handle: ProxyHandle,
    back: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    line: mpsc::Sender<Delayed>,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut seq = 0u64;
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = back.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "impairment proxy: upstream receive error");
                    continue;
                }
            },
        };
        seq += 1;
        forward(
            &handle,
            &line,
            front.clone(),
            Some(client),
            &buf[..n],
            (seq << 1) | 1,
        )
        .await;
    }
}

async fn forward(
    handle: &ProxyHandle,
    line: &mpsc::Sender<Delayed>,
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    data: &[u8],
    seq: u64,
) {
    match handle.schedule() {
        None => handle.drop_one(),
        Some(d) if d.is_zero() => send(handle, &socket, to, data).await,
        Some(d) => {
            let item = Delayed {
                due: Instant::now() + d,
                seq,
                socket,
                to,
                data: data.to_vec(),
            };
            if line.try_send(item).is_err() {
                handle.drop_one();
            }
        }
    }
}

async fn send(handle: &ProxyHandle, socket: &UdpSocket, to: Option<SocketAddr>, data: &[u8]) {
    if handle.partitioned() {
        handle.drop_one();
        return;
    }
    let sent = match to {
        Some(to) => socket.send_to(data, to).await,
        None => socket.send(data).await,
    };
    match sent {
        Ok(_) => {
            handle.shared.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => handle.drop_one(),
    }
}

async fn delay_line(
    handle: ProxyHandle,
    mut rx: mpsc::Receiver<Delayed>,
    shutdown: CancellationToken,
) {
    let mut queue: BinaryHeap<Reverse<Delayed>> = BinaryHeap::new();
    loop {
        let next_due = queue.peek().map(|Reverse(d)| d.due);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            item = rx.recv() => match item {
                Some(item) => queue.push(Reverse(item)),
                None => return,
            },
            _ = async {
                match next_due {
                    Some(due) => tokio::time::sleep_until(due).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                while queue.peek().is_some_and(|Reverse(d)| d.due <= now) {
                    if let Some(Reverse(d)) = queue.pop() {
                        send(&handle, &d.socket, d.to, &d.data).await;
                    }
                }
            }
        }
    }
}

/// HTTP control of a proxy: `GET /state`, `POST /partition`, `POST /heal`,
/// `POST /impairment?delay_ms=50&jitter_ms=5&loss=0.01` (missing keys become 0).
pub fn control_router(handle: ProxyHandle) -> Router {
    Router::new()
        .route(
            "/state",
            get(|State(h): State<ProxyHandle>| async move { Json(h.state()) }),
        )
        .route(
            "/partition",
            post(|State(h): State<ProxyHandle>| async move {
                h.set_partitioned(true);
                Json(h.state())
            }),
        )
        .route(
            "/heal",
            post(|State(h): State<ProxyHandle>| async move {
                h.set_partitioned(false);
                Json(h.state())
            }),
        )
        .route(
            "/impairment",
            post(
                |State(h): State<ProxyHandle>, Query(imp): Query<Impairment>| async move {
                    match h.set_impairment(imp) {
                        Ok(()) => Ok(Json(h.state())),
                        Err(e) => Err((axum::http::StatusCode::BAD_REQUEST, e)),
                    }
                },
            ),
        )
        .with_state(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let _ = sock.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    async fn round_trip(client: &UdpSocket, msg: &[u8], limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        client.send(msg).await.unwrap();
        let mut buf = [0u8; 2048];
        match tokio::time::timeout(limit, client.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                assert_eq!(&buf[..n], msg);
                Some(start.elapsed())
            }
            _ => None,
        }
    }

    async fn post(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn http_control_switches_partition_and_impairment() {
        let stop = CancellationToken::new();
        let (h, _task) = start(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            Impairment::default(),
            1,
            stop.clone(),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = control_router(h.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let out = post(addr, "/partition").await;
        assert!(
            out.starts_with("HTTP/1.1 200") && out.contains("\"partitioned\":true"),
            "{out}"
        );
        assert!(h.state().partitioned);
        post(addr, "/heal").await;
        assert!(!h.state().partitioned);
        let out = post(addr, "/impairment?delay_ms=25&jitter_ms=5&loss=0.5").await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert_eq!(
            h.state().impairment,
            Impairment {
                delay_ms: 25,
                jitter_ms: 5,
                loss: 0.5
            }
        );
        let out = post(addr, "/impairment?loss=3").await;
        assert!(
            out.starts_with("HTTP/1.1 400") && out.contains("loss"),
            "{out}"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn delays_drops_partitions_and_heals() {
        let stop = CancellationToken::new();
        let upstream = echo_server().await;
        let (h, task) = start(
            "127.0.0.1:0".parse().unwrap(),
            upstream,
            Impairment {
                delay_ms: 40,
                ..Default::default()
            },
            1,
            stop.clone(),
        )
        .await
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(h.listen_addr).await.unwrap();
        let limit = Duration::from_secs(5);
        for i in 0..3u8 {
            let rtt = round_trip(&client, &[i], limit).await.expect("echo");
            assert!(rtt >= Duration::from_millis(80), "rtt {rtt:?}");
        }
        h.set_partitioned(true);
        assert_eq!(
            round_trip(&client, b"x", Duration::from_millis(300)).await,
            None
        );
        h.set_partitioned(false);
        h.set_impairment(Impairment::default()).unwrap();
        assert!(round_trip(&client, b"y", limit).await.is_some());
        h.set_impairment(Impairment {
            loss: 1.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            round_trip(&client, b"z", Duration::from_millis(200)).await,
            None
        );
        let s = h.state();
        assert!(s.dropped >= 2 && s.forwarded >= 8, "{s:?}");
        assert!(h
            .set_impairment(Impairment {
                loss: 2.0,
                ..Default::default()
            })
            .is_err());
        stop.cancel();
        tokio::time::timeout(limit, task).await.unwrap().unwrap();
    }
}
