//! Relay links end to end, in process, on loopback: mTLS, ALPN, lanes, bad frames, partitions
//! through the impairment proxy, shutdown. Every wait is bounded; ports are 0.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use interregion_relay::certs::{self, DevCa};
use interregion_relay::config::{Limits, Timing};
use interregion_relay::link::codes;
use interregion_relay::sink::{LinkEvent, Received};
use interregion_relay::tls::{self, TlsFiles, TlsIdentity};
use interregion_relay::{EventSink, MemorySink, Mesh, RelayOptions, RunningRelay};
use meridian_protocol::relay::{
    self as frame, Direct, EventKind, Frame, Hello, RoomEvent, ALPN, PROTOCOL_VERSION,
};
use meridian_protocol::{Hlc, JsonText, RoomEventKind, RoomId, UserId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wan_impair::{self as impair, Impairment};

const EU: &str = "eu-central";
const US: &str = "us-east";
const LIMIT: Duration = Duration::from_secs(15);

/// Keep-alive 1 s, idle timeout 3 s: the timers the detection bound is documented for.
fn test_timing() -> Timing {
    Timing {
        keep_alive_ms: 1_000,
        idle_timeout_ms: 3_000,
        handshake_timeout_ms: 2_000,
        backoff_initial_ms: 50,
        backoff_max_ms: 500,
        rtt_sample_ms: 100,
        shutdown_grace_ms: 1_000,
    }
}

fn options(region: &str) -> RelayOptions {
    RelayOptions {
        region: region.into(),
        timing: test_timing(),
        limits: Limits::default(),
    }
}

fn udp() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
}

fn mesh(regions: &[(&str, SocketAddr)]) -> Mesh {
    Mesh {
        regions: regions
            .iter()
            .map(|(r, a)| (r.to_string(), *a))
            .collect::<BTreeMap<_, _>>(),
    }
}

struct Pki {
    ca: DevCa,
}

impl Pki {
    fn new() -> Self {
        Self {
            ca: DevCa::generate("test mesh CA").unwrap(),
        }
    }
    fn identity(&self, region: &str) -> TlsIdentity {
        let c = self.ca.issue(region).unwrap();
        TlsIdentity::from_pem(self.ca.cert_pem(), &c.cert_pem, &c.key_pem).unwrap()
    }
}

async fn start(
    region: &str,
    mesh: Mesh,
    identity: &TlsIdentity,
    socket: std::net::UdpSocket,
    sink: Arc<dyn EventSink>,
    http: bool,
) -> (RunningRelay, CancellationToken) {
    let stop = CancellationToken::new();
    let http = if http {
        Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    } else {
        None
    };
    let r = interregion_relay::start(
        options(region),
        mesh,
        identity,
        sink,
        socket,
        http,
        stop.clone(),
    )
    .await
    .unwrap();
    (r, stop)
}

fn event(room: &str, seq: u64) -> RoomEvent {
    RoomEvent {
        room: RoomId::new(room).unwrap(),
        origin_region: EU.into(),
        origin_epoch: 1,
        origin_seq: seq,
        prev_seq: seq.saturating_sub(1),
        hlc: Hlc {
            wall_ms: 1_700_000_000_000 + seq,
            logical: 0,
        },
        kind: EventKind::Event(RoomEventKind::Message {
            from: UserId::new("alice").unwrap(),
            data: JsonText::new(format!(r#"{{"n":{seq}}}"#)).unwrap(),
            idempotency: None,
        }),
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = tokio::time::timeout(LIMIT, client.get(format!("http://{addr}{path}")).send())
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A sink that holds back events of room `slow` until the gate opens.
struct GatedSink {
    inner: MemorySink,
    gate: watch::Receiver<bool>,
}

#[async_trait]
impl EventSink for GatedSink {
    async fn room_event(&self, peer: &str, event: RoomEvent) {
        if event.room.as_str() == "slow" {
            let mut gate = self.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        }
        self.inner.room_event(peer, event).await;
    }
    async fn direct(&self, peer: &str, direct: Direct) {
        self.inner.direct(peer, direct).await;
    }
    async fn control(&self, peer: &str, frame: Frame) {
        self.inner.control(peer, frame).await;
    }
    async fn link(&self, peer: &str, event: LinkEvent) {
        self.inner.link(peer, event).await;
    }
}

fn seqs(items: &[Received], room: &str) -> Vec<u64> {
    items
        .iter()
        .filter_map(|i| match i {
            Received::RoomEvent(_, e) if e.room.as_str() == room => Some(e.origin_seq),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_link_with_mtls_and_keep_per_room_order_without_blocking_other_rooms() {
    // Certificates as the operator gets them: PEM files from gen-certs' library function.
    let dir = std::env::temp_dir().join(format!("relay-links-{}", std::process::id()));
    let files = certs::generate_dev_mesh([EU, US], &dir, true).unwrap();
    let load = |r: &str| {
        let (cert, key) = files.regions[r].clone();
        TlsIdentity::load(&TlsFiles {
            ca: files.ca_cert.clone(),
            cert,
            key,
        })
        .unwrap()
    };
    let (eu_sock, us_sock) = (udp(), udp());
    let m = mesh(&[
        (EU, eu_sock.local_addr().unwrap()),
        (US, us_sock.local_addr().unwrap()),
    ]);
    let (open_gate, gate) = watch::channel(false);
    let us_sink = Arc::new(GatedSink {
        inner: MemorySink::default(),
        gate,
    });
    let eu_sink = Arc::new(MemorySink::default());
    let (us, us_stop) = start(US, m.clone(), &load(US), us_sock, us_sink.clone(), true).await;
    let (eu, eu_stop) = start(EU, m, &load(EU), eu_sock, eu_sink.clone(), false).await;
    std::fs::remove_dir_all(&dir).unwrap();

    assert!(eu.handle.wait_link(US, true, LIMIT).await, "eu dials us");
    assert!(us.handle.wait_link(EU, true, LIMIT).await);
    // Both sides saw the other's Hello.
    assert!(
        eu_sink
            .wait_until(LIMIT, |items| items.iter().any(|i| matches!(
                i,
                Received::Link(p, LinkEvent::Up { hello }) if p == US && hello.region == US
                    && hello.protocol_version == PROTOCOL_VERSION
            )))
            .await
    );

    // One event each way.
    eu.handle
        .send_room_event(US, &event("lobby", 1))
        .await
        .unwrap();
    assert!(
        us_sink
            .inner
            .wait_until(LIMIT, |items| seqs(items, "lobby") == [1])
            .await
    );
    us.handle
        .send_room_event(EU, &event("lobby", 2))
        .await
        .unwrap();
    assert!(
        eu_sink
            .wait_until(LIMIT, |items| seqs(items, "lobby") == [2])
            .await
    );
    let got = us_sink.inner.room_events();
    assert_eq!(got[0], (EU.to_string(), event("lobby", 1)));

    // 1,000 events on room `slow`, whose sink is held back; room `fast` must still flow.
    let sender = eu.handle.clone();
    let slow = tokio::spawn(async move {
        for seq in 1..=1000 {
            sender
                .send_room_event(US, &event("slow", seq))
                .await
                .unwrap();
        }
    });
    for seq in 1..=100 {
        eu.handle
            .send_room_event(US, &event("fast", seq))
            .await
            .unwrap();
    }
    assert!(
        us_sink
            .inner
            .wait_until(LIMIT, |items| seqs(items, "fast").len() == 100)
            .await,
        "room fast is not blocked by room slow"
    );
    assert!(seqs(&us_sink.inner.items(), "slow").is_empty(), "gate held");
    open_gate.send_replace(true);
    tokio::time::timeout(LIMIT, slow).await.unwrap().unwrap();
    assert!(
        us_sink
            .inner
            .wait_until(LIMIT, |items| seqs(items, "slow").len() == 1000)
            .await
    );
    let items = us_sink.inner.items();
    assert_eq!(seqs(&items, "slow"), (1..=1000).collect::<Vec<_>>());
    assert_eq!(seqs(&items, "fast"), (1..=100).collect::<Vec<_>>());

    // A direct message and a control frame arrive too.
    let direct = Direct {
        to_user: UserId::new("bob").unwrap(),
        from_user: UserId::new("alice").unwrap(),
        payload: b"offer".to_vec(),
    };
    eu.handle.send_direct(US, &direct).await.unwrap();
    let interest = Frame::Interest {
        room: RoomId::new("lobby").unwrap(),
        interested: true,
        since: None,
    };
    eu.handle.send_control(US, &interest).await.unwrap();
    assert!(
        us_sink
            .inner
            .wait_until(LIMIT, |items| {
                items.contains(&Received::Direct(EU.into(), direct.clone()))
                    && items.contains(&Received::Control(EU.into(), interest.clone()))
            })
            .await
    );

    // The metrics, with their exact names, over HTTP.
    let http = us.http_addr.unwrap();
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await.0, 200);
    let (status, text) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "meridian_relay_link_up{peer=\"eu-central\"} 1",
        "meridian_relay_events_total{peer=\"eu-central\",direction=\"in\"} 1102",
        "meridian_relay_malformed_frames_total{peer=\"eu-central\"} 0",
        "meridian_relay_active 1",
        "meridian_relay_link_rtt_seconds{peer=\"eu-central\"}",
        "meridian_relay_bytes_total{peer=\"eu-central\",direction=\"in\"}",
        "meridian_relay_bytes_total{peer=\"eu-central\",direction=\"out\"}",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    eu_stop.cancel();
    us_stop.cancel();
    tokio::time::timeout(LIMIT, eu.done).await.unwrap().unwrap();
    tokio::time::timeout(LIMIT, us.done).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_form_a_full_mesh_with_one_connection_per_pair() {
    let pki = Pki::new();
    let names = ["ap-southeast", EU, US];
    let socks: Vec<_> = names.iter().map(|_| udp()).collect();
    let m = mesh(
        &names
            .iter()
            .zip(&socks)
            .map(|(n, s)| (*n, s.local_addr().unwrap()))
            .collect::<Vec<_>>(),
    );
    let mut relays = Vec::new();
    for (name, sock) in names.iter().zip(socks) {
        let sink = Arc::new(MemorySink::default());
        relays.push(start(name, m.clone(), &pki.identity(name), sock, sink, false).await);
    }
    for (i, (r, _)) in relays.iter().enumerate() {
        for (j, peer) in names.iter().enumerate() {
            if i != j {
                assert!(
                    r.handle.wait_link(peer, true, LIMIT).await,
                    "{} -> {peer}",
                    names[i]
                );
            }
        }
    }
    // Each relay holds exactly two connections: the smaller name dialed, the larger accepted.
    for (r, _) in &relays {
        assert_eq!(r.handle.links().values().filter(|up| **up).count(), 2);
        assert_eq!(r.handle.open_connections(), 2, "no duplicate connections");
    }
    for (_, stop) in &relays {
        stop.cancel();
    }
    for (r, _) in relays {
        tokio::time::timeout(LIMIT, r.done).await.unwrap().unwrap();
    }
}

/// A hand-driven peer: dials with any identity and ALPN, speaks raw frames.
struct RawPeer {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

async fn raw_connect(
    identity: &TlsIdentity,
    regions: &[&str],
    alpn: &[u8],
    to: SocketAddr,
    server_region: &str,
) -> Result<RawPeer, quinn::ConnectionError> {
    let names = Arc::new(regions.iter().map(|r| r.to_string()).collect());
    let client = interregion_relay::link::quic_client_config(
        tls::client_config(identity, names, alpn).unwrap(),
        &test_timing(),
        &Limits::default(),
    )
    .unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(client, to, &certs::region_dns_name(server_region))
        .unwrap()
        .await?;
    Ok(RawPeer {
        conn,
        _endpoint: endpoint,
    })
}

impl RawPeer {
    /// Sends our Hello and reads the relay's; errors if the relay closes the connection.
    async fn hello(&self, region: &str) -> Result<Hello, String> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
        let hello = Frame::Hello(Hello {
            region: region.into(),
            protocol_version: PROTOCOL_VERSION,
            relay_id: "raw".into(),
            epoch: 1,
        });
        send.write_all(&frame::encode(&hello, 1 << 20).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let read = tokio::time::timeout(LIMIT, frame::read_frame(&mut recv, 1 << 20))
            .await
            .map_err(|_| "timeout".to_string())?;
        // Keep the control stream open for the rest of the test.
        std::mem::forget(send);
        std::mem::forget(recv);
        match read {
            Ok(Some((Frame::Hello(h), _))) => Ok(h),
            other => Err(format!(
                "{other:?}; close reason {:?}",
                self.conn.close_reason()
            )),
        }
    }
}

/// Starts the `us-east` relay of a mesh {eu-central, us-east, us-west} and returns it.
async fn us_relay(pki: &Pki, sink: Arc<dyn EventSink>) -> (RunningRelay, CancellationToken) {
    let sock = udp();
    let m = mesh(&[
        (EU, "127.0.0.1:9".parse().unwrap()),
        (US, sock.local_addr().unwrap()),
        ("us-west", "127.0.0.1:9".parse().unwrap()),
    ]);
    start(US, m, &pki.identity(US), sock, sink, false).await
}

async fn wait_metric(f: impl Fn() -> u64, want: u64) -> bool {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if f() >= want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let (us, stop) = us_relay(&pki, Arc::new(MemorySink::default())).await;
    // Its own certificate comes from another CA; it trusts the mesh CA so only our side fails.
    let other = DevCa::generate("rogue CA").unwrap();
    let c = other.issue(EU).unwrap();
    let rogue = TlsIdentity::from_pem(pki.ca.cert_pem(), &c.cert_pem, &c.key_pem).unwrap();
    let result = match raw_connect(&rogue, &[EU, US], ALPN, us.quic_addr, US).await {
        Ok(peer) => peer.hello(EU).await,
        Err(e) => Err(e.to_string()),
    };
    assert!(result.is_err(), "{result:?}");
    assert!(wait_metric(|| us.handle.metrics().refused_count("certificate"), 1).await);
    assert!(!us.handle.is_up(EU));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_without_a_client_certificate_is_refused_and_counted() {
    use rustls::pki_types::pem::PemObject;
    let pki = Pki::new();
    let (us, stop) = us_relay(&pki, Arc::new(MemorySink::default())).await;
    // A client that trusts the mesh CA and speaks our ALPN, but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut crypto = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap(),
    ));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let result: Result<(), Option<quinn::ConnectionError>> = match endpoint
        .connect_with(client, us.quic_addr, &certs::region_dns_name(US))
        .unwrap()
        .await
    {
        Ok(conn) => match conn.open_bi().await {
            Ok((mut send, _recv)) => {
                let _ = send.write_all(b"x").await;
                conn.closed().await;
                Err(conn.close_reason())
            }
            Err(e) => Err(Some(e)),
        },
        Err(e) => Err(Some(e)),
    };
    assert!(result.is_err());
    assert!(
        wait_metric(|| us.handle.metrics().refused_count("certificate"), 1).await,
        "a handshake without a client certificate is counted as refused (reason certificate)"
    );
    assert!(!us.handle.is_up(EU));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_certificate_of_a_region_outside_the_catalogue_is_refused() {
    let pki = Pki::new();
    let (us, stop) = us_relay(&pki, Arc::new(MemorySink::default())).await;
    let mars = pki.identity("mars");
    let result = match raw_connect(&mars, &[EU, US], ALPN, us.quic_addr, US).await {
        Ok(peer) => peer.hello("mars").await,
        Err(e) => Err(e.to_string()),
    };
    assert!(result.is_err(), "{result:?}");
    assert!(wait_metric(|| us.handle.metrics().refused_count("unknown_region"), 1).await);
    assert_eq!(us.handle.metrics().refused_count("certificate"), 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_that_should_be_dialed_is_refused_when_it_dials() {
    let pki = Pki::new();
    let (us, stop) = us_relay(&pki, Arc::new(MemorySink::default())).await;
    // "us-west" sorts after "us-east", so us-east dials it, never the other way.
    let west = pki.identity("us-west");
    let peer = raw_connect(&west, &[EU, US, "us-west"], ALPN, us.quic_addr, US)
        .await
        .unwrap();
    let e = peer.hello("us-west").await.unwrap_err();
    assert!(e.contains("sorts first"), "{e}");
    match peer.conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code, codes::WRONG_DIALER)
        }
        other => panic!("{other:?}"),
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_connection_from_a_restarted_peer_replaces_the_old_one() {
    let pki = Pki::new();
    let sink = Arc::new(MemorySink::default());
    let (us, stop) = us_relay(&pki, sink.clone()).await;
    let eu = pki.identity(EU);
    let first = raw_connect(&eu, &[EU, US], ALPN, us.quic_addr, US)
        .await
        .unwrap();
    first.hello(EU).await.unwrap();
    assert!(us.handle.wait_link(EU, true, LIMIT).await);
    // The peer restarts: a new connection while the old one has not timed out yet.
    let second = raw_connect(&eu, &[EU, US], ALPN, us.quic_addr, US)
        .await
        .unwrap();
    second.hello(EU).await.unwrap();
    let closed = tokio::time::timeout(LIMIT, first.conn.closed())
        .await
        .unwrap();
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, codes::REPLACED),
        other => panic!("{other:?}"),
    }
    assert!(us.handle.is_up(EU));
    us.handle
        .send_room_event(EU, &event("lobby", 1))
        .await
        .unwrap();
    let mut lane = tokio::time::timeout(LIMIT, second.conn.accept_uni())
        .await
        .unwrap()
        .unwrap();
    let (got, _) = frame::read_frame(&mut lane, 1 << 20)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, Frame::RoomEvent(event("lobby", 1)));
    // The sink saw two Ups and no Down: the link never went down.
    let links: Vec<_> = sink
        .items()
        .into_iter()
        .filter_map(|i| match i {
            Received::Link(_, e) => Some(matches!(e, LinkEvent::Up { .. })),
            _ => None,
        })
        .collect();
    assert_eq!(links, [true, true]);
    stop.cancel();
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Current-thread runtime: every task runs on this thread, so the thread-local subscriber sees
// the relay's log lines.
#[tokio::test(flavor = "current_thread")]
async fn peer_with_another_protocol_version_is_refused_with_a_clear_log_line() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let pki = Pki::new();
    let (us, stop) = us_relay(&pki, Arc::new(MemorySink::default())).await;
    let eu = pki.identity(EU);
    let err = match raw_connect(&eu, &[EU, US], b"meridian-relay/2", us.quic_addr, US).await {
        Ok(_) => panic!("a relay speaking meridian-relay/2 was accepted"),
        Err(e) => e,
    };
    // TLS alert no_application_protocol (120) as QUIC crypto error 0x178.
    match &err {
        quinn::ConnectionError::ConnectionClosed(c) => {
            assert_eq!(
                c.error_code,
                quinn::TransportErrorCode::crypto(120),
                "{err}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(us.handle.metrics().refused_count("protocol_version"), 1);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("relay protocol version mismatch"))
        .unwrap_or_else(|| panic!("no refusal line in:\n{text}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("meridian-relay/2") && line.contains("meridian-relay/1"),
        "{line}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_close_only_their_stream() {
    let pki = Pki::new();
    let sink = Arc::new(MemorySink::default());
    let (us, stop) = us_relay(&pki, sink.clone()).await;
    let peer = raw_connect(&pki.identity(EU), &[EU, US], ALPN, us.quic_addr, US)
        .await
        .unwrap();
    let hello = peer.hello(EU).await.unwrap();
    assert_eq!(hello.region, US);
    assert!(us.handle.wait_link(EU, true, LIMIT).await);

    let stopped_with = |bytes: Vec<u8>| {
        let conn = peer.conn.clone();
        async move {
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(&bytes).await.unwrap();
            tokio::time::timeout(LIMIT, s.stopped())
                .await
                .unwrap()
                .unwrap()
        }
    };
    // Garbage after a valid-looking prefix.
    let code = stopped_with(vec![0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
    assert_eq!(code, Some(codes::MALFORMED_FRAME));
    // A prefix over the limit: refused before any payload is read.
    let too_big = (Limits::default().max_frame_bytes as u32 + 1).to_be_bytes();
    let code = stopped_with(too_big.to_vec()).await;
    assert_eq!(code, Some(codes::FRAME_TOO_LARGE));
    // A control frame on a lane.
    let ping = frame::encode(&Frame::Ping { nonce: 1 }, 1 << 20).unwrap();
    let code = stopped_with(ping.to_vec()).await;
    assert_eq!(code, Some(codes::UNEXPECTED_FRAME));
    assert_eq!(us.handle.metrics().malformed_count(EU), 3);

    // The link survives: a good frame on a new lane arrives, the link is still up.
    let mut good = peer.conn.open_uni().await.unwrap();
    let bytes = frame::encode(&Frame::RoomEvent(event("lobby", 7)), 1 << 20).unwrap();
    good.write_all(&bytes).await.unwrap();
    assert!(
        sink.wait_until(LIMIT, |items| seqs(items, "lobby") == [7])
            .await
    );
    assert!(us.handle.is_up(EU));
    assert!(peer.conn.close_reason().is_none());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_is_detected_within_the_idle_timeout_and_the_link_reconnects_after_healing() {
    let pki = Pki::new();
    let (eu_sock, us_sock) = (udp(), udp());
    let us_addr = us_sock.local_addr().unwrap();
    let proxy_stop = CancellationToken::new();
    let (proxy, proxy_task) = impair::start(
        "127.0.0.1:0".parse().unwrap(),
        us_addr,
        Impairment::default(),
        7,
        proxy_stop.clone(),
    )
    .await
    .unwrap();
    // eu-central dials us-east through the proxy.
    let eu_mesh = mesh(&[(EU, eu_sock.local_addr().unwrap()), (US, proxy.listen_addr)]);
    let us_mesh = mesh(&[(EU, eu_sock.local_addr().unwrap()), (US, us_addr)]);
    let us_sink = Arc::new(MemorySink::default());
    let (us, us_stop) = start(US, us_mesh, &pki.identity(US), us_sock, us_sink, false).await;
    let (eu, eu_stop) = start(
        EU,
        eu_mesh,
        &pki.identity(EU),
        eu_sock,
        Arc::new(MemorySink::default()),
        false,
    )
    .await;
    assert!(eu.handle.wait_link(US, true, LIMIT).await);
    assert!(us.handle.wait_link(EU, true, LIMIT).await);

    let timing = test_timing();
    let bound = Duration::from_millis(timing.idle_timeout_ms);
    let partitioned_at = Instant::now();
    proxy.set_partitioned(true);
    let (eu_down, us_down) = tokio::join!(
        eu.handle.wait_link(US, false, LIMIT),
        us.handle.wait_link(EU, false, LIMIT)
    );
    let detected = partitioned_at.elapsed();
    assert!(eu_down && us_down);
    eprintln!("link death detected after {detected:?} (idle timeout {bound:?})");
    // Bound: QUIC restarts the idle timer when it sends the first ack-eliciting packet after
    // the last one it received, i.e. at the latest at the next keep-alive after the partition,
    // so detection takes at most idle_timeout + keep_alive. The margin covers scheduling on a
    // loaded machine.
    let bound = bound + Duration::from_millis(timing.keep_alive_ms);
    assert!(
        detected <= bound + Duration::from_millis(1_000),
        "detected after {detected:?}"
    );
    assert!(
        detected >= Duration::from_millis(timing.idle_timeout_ms - timing.keep_alive_ms - 100),
        "not before the idle timeout: {detected:?}"
    );
    assert!(us
        .handle
        .metrics()
        .render()
        .contains("meridian_relay_link_up{peer=\"eu-central\"} 0"));

    // Stay partitioned a little longer so the dialer is in backoff, then heal.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let healed_at = Instant::now();
    proxy.set_partitioned(false);
    assert!(eu.handle.wait_link(US, true, LIMIT).await);
    let reconnected = healed_at.elapsed();
    eprintln!("link re-established {reconnected:?} after healing");
    let reconnect_bound =
        Duration::from_millis(timing.handshake_timeout_ms + timing.backoff_max_ms + 1_000);
    assert!(reconnected <= reconnect_bound, "{reconnected:?}");
    assert!(us.handle.wait_link(EU, true, LIMIT).await);
    eu.handle
        .send_room_event(US, &event("after-heal", 1))
        .await
        .unwrap();

    eu_stop.cancel();
    us_stop.cancel();
    proxy_stop.cancel();
    tokio::time::timeout(LIMIT, proxy_task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impairment_proxy_delay_shows_in_the_link_rtt() {
    let pki = Pki::new();
    let (eu_sock, us_sock) = (udp(), udp());
    let us_addr = us_sock.local_addr().unwrap();
    let proxy_stop = CancellationToken::new();
    let delay = Duration::from_millis(60);
    let (proxy, _task) = impair::start(
        "127.0.0.1:0".parse().unwrap(),
        us_addr,
        Impairment {
            delay_ms: delay.as_millis() as u64,
            jitter_ms: 0,
            loss: 0.0,
        },
        7,
        proxy_stop.clone(),
    )
    .await
    .unwrap();
    let eu_mesh = mesh(&[(EU, eu_sock.local_addr().unwrap()), (US, proxy.listen_addr)]);
    let us_mesh = mesh(&[(EU, eu_sock.local_addr().unwrap()), (US, us_addr)]);
    let sink = || Arc::new(MemorySink::default());
    let (_us, us_stop) = start(US, us_mesh, &pki.identity(US), us_sock, sink(), false).await;
    let (eu, eu_stop) = start(EU, eu_mesh, &pki.identity(EU), eu_sock, sink(), false).await;
    assert!(eu.handle.wait_link(US, true, LIMIT).await);
    // Application round trips cross the proxy twice.
    for _ in 0..5 {
        let rtt = eu.handle.ping(US, LIMIT).await.unwrap();
        assert!(rtt >= 2 * delay, "ping {rtt:?}");
    }
    let quic_rtt = eu.handle.rtt(US).unwrap();
    eprintln!("QUIC smoothed RTT through a {delay:?} one-way proxy: {quic_rtt:?}");
    assert!(quic_rtt >= 2 * delay, "quic rtt {quic_rtt:?}");
    assert!(
        wait_metric(
            || {
                let text = eu.handle.metrics().render();
                text.lines()
                    .find(|l| l.starts_with("meridian_relay_link_rtt_seconds{peer=\"us-east\"}"))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= 2.0 * delay.as_secs_f64()) as u64
            },
            1
        )
        .await
    );
    eu_stop.cancel();
    us_stop.cancel();
    proxy_stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_links_with_the_application_code_within_the_grace_period() {
    let pki = Pki::new();
    let (eu_sock, us_sock) = (udp(), udp());
    let m = mesh(&[
        (EU, eu_sock.local_addr().unwrap()),
        (US, us_sock.local_addr().unwrap()),
    ]);
    let eu_sink = Arc::new(MemorySink::default());
    let (us, us_stop) = start(
        US,
        m.clone(),
        &pki.identity(US),
        us_sock,
        Arc::new(MemorySink::default()),
        true,
    )
    .await;
    let (eu, eu_stop) = start(EU, m, &pki.identity(EU), eu_sock, eu_sink.clone(), false).await;
    assert!(eu.handle.wait_link(US, true, LIMIT).await);
    let http = us.http_addr.unwrap();
    assert_eq!(http_get(http, "/readyz").await.0, 200);

    let started = Instant::now();
    us_stop.cancel();
    tokio::time::timeout(
        Duration::from_millis(test_timing().shutdown_grace_ms + 2_000),
        us.done,
    )
    .await
    .expect("relay stops within its grace period")
    .unwrap();
    // The peer learns at once (application close), not after its idle timeout.
    assert!(eu.handle.wait_link(US, false, LIMIT).await);
    assert!(started.elapsed() < Duration::from_millis(test_timing().idle_timeout_ms));
    assert!(
        eu_sink
            .wait_until(LIMIT, |items| items.iter().any(|i| matches!(
                i,
                Received::Link(p, LinkEvent::Down { reason })
                    if p == US && reason.contains("code 0") && reason.contains("relay shutting down")
            )))
            .await,
        "{:?}",
        eu_sink.items()
    );
    eu_stop.cancel();
    tokio::time::timeout(LIMIT, eu.done).await.unwrap().unwrap();
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_generates_certificates_validates_config_and_stops_on_sigterm() {
    use std::io::BufRead;
    let bin = env!("CARGO_BIN_EXE_interregion-relay");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::temp_dir().join(format!("relay-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(bin)
        .args(["gen-certs", "--regions"])
        .arg(root.join("regions"))
        .arg("--out")
        .arg(dir.join("certs"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(dir.join("certs/us-east.key.pem").exists());

    let config = dir.join("relay.toml");
    let write = |extra: &str| {
        let mut f = std::fs::File::create(&config).unwrap();
        write!(
            f,
            "region = \"us-east\"\ncatalogue_dir = {:?}\nlisten = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\n{extra}\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            root.join("regions"),
            dir.join("certs/ca.pem"),
            dir.join("certs/us-east.cert.pem"),
            dir.join("certs/us-east.key.pem"),
        )
        .unwrap();
    };
    write("");
    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("--validate")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    write("bogus = 1");
    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("--validate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus") && err.lines().count() == 1, "{err}");

    // Serve, then SIGTERM: exits 0 within the grace period.
    write("");
    let mut child = Child(
        std::process::Command::new(bin)
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let quic = lines.next().unwrap().unwrap();
    let http = lines.next().unwrap().unwrap();
    assert!(quic.starts_with("quic on 127.0.0.1:"), "{quic}");
    let http: SocketAddr = http.trim_start_matches("http on ").parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = rt.block_on(http_get(http, "/metrics"));
    assert_eq!(status, 200);
    assert!(
        body.contains("meridian_relay_link_up{peer=\"eu-central\"} 0"),
        "{body}"
    );
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "relay did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn relay_tls_configs_never_allow_0rtt() {
    let pki = Pki::new();
    let id = pki.identity(US);
    let names: Arc<std::collections::BTreeSet<String>> =
        Arc::new([US.to_owned(), EU.to_owned()].into());
    let hook: tls::RefusalHook = Arc::new(|_, _| {});
    let server = tls::server_config(&id, names.clone(), hook).unwrap();
    assert_eq!(server.max_early_data_size, 0, "no 0-RTT accepted");
    let client = tls::client_config(&id, names, ALPN).unwrap();
    assert!(!client.enable_early_data, "no 0-RTT offered");
}
