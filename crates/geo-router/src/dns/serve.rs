//! The socket shells: UDP on blocking threads, TCP on tokio tasks, both with the per-source
//! limits ([`SourceLimits`]); see the module documentation of [`super`].

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Answerer, Router, FLAG_QR, FLAG_RD, FLAG_TC, MAX_MESSAGE_SIZE};

/// Open TCP connections served at once; further connections are closed straight away.
const MAX_TCP_CONNECTIONS: usize = 256;
/// Queries answered on one TCP connection before the server closes it.
const MAX_QUERIES_PER_TCP_CONNECTION: usize = 100;
/// How long a TCP connection may sit idle, or take to send one message or accept one response.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// The per-source limits of [`serve_udp_limited`] and [`serve_tcp_limited`]; see the module
/// documentation.
#[derive(Debug)]
pub struct SourceLimits {
    rate: Option<crate::limit::RateLimiter>,
    tcp: crate::limit::ConcurrencyLimiter,
}

/// Client networks a [`SourceLimits`] keeps buckets for (about 48 bytes each).
const RATE_LIMITED_NETWORKS: usize = 262_144;

impl SourceLimits {
    /// Limits as configured.
    pub fn new(config: &crate::config::DnsLimits) -> SourceLimits {
        SourceLimits {
            rate: (config.rate_per_s > 0).then(|| {
                crate::limit::RateLimiter::new(
                    f64::from(config.rate_per_s),
                    f64::from(config.burst),
                    RATE_LIMITED_NETWORKS,
                )
            }),
            tcp: crate::limit::ConcurrencyLimiter::new(config.tcp_per_network),
        }
    }

    /// No rate limit, and a TCP network may hold every slot.
    pub fn unlimited() -> SourceLimits {
        SourceLimits {
            rate: None,
            tcp: crate::limit::ConcurrencyLimiter::new(MAX_TCP_CONNECTIONS),
        }
    }

    fn network(source: IpAddr) -> crate::rtt::Prefix {
        crate::rtt::Prefix::of(source, 24, 48)
    }

    /// Whether a UDP request from `source` may be answered in full now.
    pub fn allow_udp(&self, source: IpAddr) -> bool {
        self.rate
            .as_ref()
            .is_none_or(|rate| rate.check(Self::network(source), std::time::Instant::now()))
    }
}

/// The reply to a UDP request over the rate limit: its header and question with QR, AA and TC
/// set and no other records (so never longer than the request); `None` when the request would
/// not get an answer at all (no header, QR set, not one plain question), which is then dropped.
pub fn truncated_reply(request: &[u8]) -> Option<Vec<u8>> {
    let header = request.get(..12)?;
    let flags = header[2];
    // A response, or an opcode other than QUERY: leave it to the answerer's usual path.
    if flags & 0xf8 != 0 || header[4..6] != [0, 1] {
        return None;
    }
    let mut end = 12;
    loop {
        let length = usize::from(*request.get(end)?);
        if length == 0 {
            end += 1;
            break;
        }
        // A compression pointer or reserved label type has no place in a question.
        if length > 63 || end > 12 + 255 {
            return None;
        }
        end += 1 + length;
    }
    let question = request.get(12..end + 4)?;
    let mut reply = Vec::with_capacity(12 + question.len());
    reply.extend_from_slice(&header[..2]);
    reply.push(FLAG_QR | 0x04 | FLAG_TC | (flags & FLAG_RD));
    reply.push(0);
    reply.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    reply.extend_from_slice(question);
    Some(reply)
}

/// Answers queries arriving on `socket` until `shutdown` completes.
///
/// The socket is served by plain threads doing blocking `recv_from`/`send_to` (one per CPU this
/// process may run on, at most [`MAX_UDP_THREADS`], sharing the socket), not by tokio tasks:
/// answering is a quick synchronous computation, and a blocking receive costs one system call
/// per datagram where the async loop paid for readiness polls, an extra failed `recvfrom` and
/// wake-ups of the runtime between bursts (gdnsd serves UDP the same way). Each thread checks
/// for shutdown at least every `UDP_SHUTDOWN_POLL` (100 ms); this returns once all of them have
/// stopped. Receive errors (such as ICMP port-unreachable reports surfacing on some platforms)
/// and send errors concern one client, so they are skipped rather than ending the loop.
pub async fn serve_udp<R: Router + 'static>(
    socket: UdpSocket,
    answerer: Arc<Answerer<R>>,
    shutdown: impl Future<Output = ()>,
) {
    serve_udp_limited(
        socket,
        answerer,
        Arc::new(SourceLimits::unlimited()),
        shutdown,
    )
    .await;
}

/// [`serve_udp`] with per-network response rate limiting (see the module documentation).
pub async fn serve_udp_limited<R: Router + 'static>(
    socket: UdpSocket,
    answerer: Arc<Answerer<R>>,
    limits: Arc<SourceLimits>,
    shutdown: impl Future<Output = ()>,
) {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .clamp(1, MAX_UDP_THREADS);
    let socket = match socket.into_std().and_then(|socket| {
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(UDP_SHUTDOWN_POLL))?;
        socket.set_write_timeout(Some(UDP_SHUTDOWN_POLL))?;
        Ok(socket)
    }) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve DNS over UDP");
            return;
        }
    };
    // Set on shutdown, and also when this future is dropped unfinished, so that no thread
    // outlives it by more than one poll interval.
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let mut workers = JoinSet::new();
    for _ in 0..threads {
        let Ok(socket) = socket.try_clone() else {
            break;
        };
        let answerer = Arc::clone(&answerer);
        let limits = Arc::clone(&limits);
        let stop = Arc::clone(&stop.0);
        workers.spawn_blocking(move || serve_udp_blocking(&socket, &answerer, &limits, &stop));
    }
    drop(socket);
    shutdown.await;
    stop.0.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
}

/// The most threads [`serve_udp`] starts.
pub const MAX_UDP_THREADS: usize = 8;
/// How often a blocked UDP thread looks at the shutdown flag.
const UDP_SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn serve_udp_blocking<R: Router>(
    socket: &std::net::UdpSocket,
    answerer: &Answerer<R>,
    limits: &SourceLimits,
    stop: &AtomicBool,
) {
    let mut buffer = vec![0u8; MAX_MESSAGE_SIZE];
    while !stop.load(Ordering::Relaxed) {
        // A timeout (WouldBlock/TimedOut) only brings the loop back to the flag.
        let Ok((length, peer)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        let request = buffer.get(..length).unwrap_or_default();
        let source = peer.ip().to_canonical();
        let response = if limits.allow_udp(source) {
            answerer.answer(request, source)
        } else {
            answerer.router.limited("truncated");
            truncated_reply(request)
        };
        answerer.router.observe(request, response.as_deref());
        if let Some(response) = response {
            let _ = socket.send_to(&response, peer);
        }
    }
}

/// Answers length-framed queries on connections accepted from `listener` until `shutdown`
/// completes, then aborts the connections still open (each holds at most one short exchange).
/// At most 256 connections are served at once (more are closed on accept), each for up to 100
/// queries, with a 10-second limit on idling, reading a message and writing a response.
pub async fn serve_tcp<R: Router + 'static>(
    listener: TcpListener,
    answerer: Arc<Answerer<R>>,
    shutdown: impl Future<Output = ()>,
) {
    serve_tcp_limited(
        listener,
        answerer,
        Arc::new(SourceLimits::unlimited()),
        shutdown,
    )
    .await;
}

/// [`serve_tcp`] with at most `tcp_per_network` connections per client network (see the
/// module documentation).
pub async fn serve_tcp_limited<R: Router + 'static>(
    listener: TcpListener,
    answerer: Arc<Answerer<R>>,
    limits: Arc<SourceLimits>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let source = peer.ip().to_canonical();
                    let Some(held) = limits.tcp.try_acquire(SourceLimits::network(source)) else {
                        answerer.router.limited("tcp_refused");
                        continue; // dropping the stream closes it
                    };
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        continue;
                    };
                    let answerer = Arc::clone(&answerer);
                    connections.spawn(async move {
                        let _slot = slot;
                        let _held = held;
                        let _ = serve_tcp_connection(stream, peer.ip().to_canonical(), &answerer)
                            .await;
                    });
                }
                // Usually out of file descriptors: wait for some to free rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
        }
    }
    connections.shutdown().await;
}

async fn serve_tcp_connection<R: Router>(
    mut stream: TcpStream,
    source: IpAddr,
    answerer: &Answerer<R>,
) -> io::Result<()> {
    let mut buffer = vec![0u8; MAX_MESSAGE_SIZE];
    for _ in 0..MAX_QUERIES_PER_TCP_CONNECTION {
        let mut length = [0u8; 2];
        match tokio::time::timeout(TCP_TIMEOUT, stream.read_exact(&mut length)).await {
            Ok(Ok(_)) => {}
            // Closed, failed or idle too long: end the connection quietly.
            Ok(Err(_)) | Err(_) => return Ok(()),
        }
        let length = usize::from(u16::from_be_bytes(length));
        let request = buffer.get_mut(..length).unwrap_or_default();
        tokio::time::timeout(TCP_TIMEOUT, stream.read_exact(request))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        let response = answerer.answer_tcp(request, source);
        answerer.router.observe(request, response.as_deref());
        let Some(response) = response else {
            continue;
        };
        let Ok(response_length) = u16::try_from(response.len()) else {
            return Ok(());
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&response_length.to_be_bytes());
        framed.extend_from_slice(&response);
        tokio::time::timeout(TCP_TIMEOUT, stream.write_all(&framed))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    }
    Ok(())
}
