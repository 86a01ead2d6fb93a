//! The DNS answerer behind real sockets: `serve_udp` and `serve_tcp` on 127.0.0.1 port 0, queried
//! with hickory-net's client (the same library resolvers built on hickory use) and, for packets
//! a well-behaved client never sends, with a raw `UdpSocket`. Loopback only; every wait is
//! bounded by a timeout.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use geo_router::dns::{serve_tcp, serve_udp, Answerer, RouteAnswer, Router, ZoneConfig};
use hickory_net::client::Client;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::DnsHandle;
use hickory_proto::op::{
    DnsRequest, DnsRequestOptions, DnsResponse, Edns, Message, Query, ResponseCode,
};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const ZONE: &str = "mesh.example.net.";
const TTL: u32 = 42;
const NEGATIVE_TTL: u32 = 15;
/// The most any one test may take, start to finish.
const TEST_LIMIT: Duration = Duration::from_secs(30);
/// The most one query may take.
const QUERY_LIMIT: Duration = Duration::from_secs(5);

fn ip(text: &str) -> IpAddr {
    IpAddr::from_str(text).unwrap()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Routes by fixed networks; the packet source (loopback) goes to `local`.
struct FakeRouter;

impl FakeRouter {
    fn region(name: &str) -> Option<Vec<IpAddr>> {
        Some(match name {
            "eu" => vec![
                ip("203.0.113.10"),
                ip("203.0.113.11"),
                ip("2001:db8:e0::10"),
            ],
            "us" => vec![ip("198.18.0.10")],
            "local" => vec![ip("192.0.2.1")],
            "big" => (0..100u8)
                .map(|i| IpAddr::V4(Ipv4Addr::new(198, 18, 100, i)))
                .collect(),
            _ => return None,
        })
    }
}

impl Router for FakeRouter {
    fn route(&self, client: IpAddr, ecs_prefix: Option<u8>) -> RouteAnswer {
        let (region, scope_prefix) = match (client, ecs_prefix) {
            (_, None) if client.is_loopback() => ("local", 0),
            (IpAddr::V4(v4), Some(_)) if v4.octets()[..3] == [198, 51, 100] => ("eu", 22),
            (IpAddr::V4(v4), Some(_)) if v4.octets()[..2] == [10, 3] => ("big", 16),
            (IpAddr::V6(v6), Some(_)) if v6.segments()[..3] == [0x2001, 0xdb8, 0xe0] => ("eu", 40),
            _ => ("us", 8),
        };
        RouteAnswer {
            region: region.into(),
            addresses: Self::region(region).unwrap().into(),
            scope_prefix,
        }
    }

    fn region_addresses(&self, name: &str) -> Option<Vec<IpAddr>> {
        Self::region(name)
    }
}

/// `serve_udp` and `serve_tcp` on loopback port 0; stopped (and awaited) by `stop`.
struct Server {
    udp: SocketAddr,
    tcp: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    async fn start() -> Self {
        let mut config = ZoneConfig::new(
            Name::from_ascii(ZONE).unwrap(),
            vec![Name::from_ascii("ns1.mesh.example.net.").unwrap()],
        );
        config.ttl = TTL;
        config.minimum = NEGATIVE_TTL;
        let answerer = Arc::new(Answerer::new(config, FakeRouter));
        // Bound before the serving tasks start, so queries sent at once wait in the socket.
        let udp = UdpSocket::bind(loopback(0)).await.unwrap();
        let tcp = TcpListener::bind(loopback(0)).await.unwrap();
        let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let (stop, stopped) = watch::channel(false);
        let shutdown = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let tasks = vec![
            tokio::spawn(serve_udp(
                udp,
                Arc::clone(&answerer),
                shutdown(stopped.clone()),
            )),
            tokio::spawn(serve_tcp(tcp, answerer, shutdown(stopped))),
        ];
        Server {
            udp: udp_addr,
            tcp: tcp_addr,
            stop,
            tasks,
        }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            tokio::time::timeout(QUERY_LIMIT, task)
                .await
                .expect("server stops promptly")
                .expect("server task ends without panicking");
        }
    }

    fn udp_client(&self) -> Client<TokioRuntimeProvider> {
        let stream = UdpClientStream::builder(self.udp, TokioRuntimeProvider::default())
            .with_bind_addr(Some(loopback(0)))
            .with_timeout(Some(QUERY_LIMIT))
            .build();
        let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
        tokio::spawn(background);
        client
    }

    async fn tcp_client(&self) -> Client<TokioRuntimeProvider> {
        let (connect, handle) = TcpClientStream::new(
            self.tcp,
            Some(loopback(0)),
            Some(QUERY_LIMIT),
            TokioRuntimeProvider::default(),
        );
        let stream = tokio::time::timeout(QUERY_LIMIT, connect)
            .await
            .expect("TCP connect in time")
            .expect("TCP connect");
        let (client, background) = Client::<TokioRuntimeProvider>::new(stream, handle);
        tokio::spawn(background);
        client
    }
}

/// Runs a test body within [`TEST_LIMIT`].
async fn bounded(body: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .expect("test finished in time");
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut message = Message::query();
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message
}

fn with_ecs(mut message: Message, address: &str, source_prefix: u8) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::new(
            ip(address),
            source_prefix,
            0,
        )));
    message.set_edns(edns);
    message
}

async fn exchange(client: &Client<TokioRuntimeProvider>, message: Message) -> DnsResponse {
    let request = DnsRequest::new(message, DnsRequestOptions::default());
    tokio::time::timeout(QUERY_LIMIT, client.send(request).next())
        .await
        .expect("answer in time")
        .expect("a response")
        .expect("a valid response")
}

fn addresses(response: &Message) -> Vec<IpAddr> {
    response
        .answers
        .iter()
        .map(|record| match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            other => panic!("unexpected answer {other:?}"),
        })
        .collect()
}

fn subnet(response: &Message) -> Option<ClientSubnet> {
    match response.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(subnet) => Some(*subnet),
        other => panic!("unexpected option {other:?}"),
    }
}

#[tokio::test]
async fn udp_ecs_query_is_routed_by_the_subnet_with_scope_and_ttl() {
    bounded(async {
        let server = Server::start().await;
        let client = server.udp_client();
        // Twice: the first is encoded by the full path, the second comes from its template.
        for _ in 0..2 {
            let response = exchange(
                &client,
                with_ecs(
                    query("ws.mesh.example.net.", RecordType::A),
                    "198.51.100.0",
                    24,
                ),
            )
            .await;
            assert_eq!(response.metadata.response_code, ResponseCode::NoError);
            assert!(response.metadata.authoritative);
            assert_eq!(
                addresses(&response),
                [ip("203.0.113.10"), ip("203.0.113.11")]
            );
            assert!(response.answers.iter().all(|record| record.ttl == TTL));
            assert_eq!(
                subnet(&response),
                Some(ClientSubnet::new(ip("198.51.100.0"), 24, 22))
            );
        }
        let response = exchange(
            &client,
            with_ecs(
                query("ws.mesh.example.net.", RecordType::AAAA),
                "2001:db8:e0::",
                48,
            ),
        )
        .await;
        assert_eq!(addresses(&response), [ip("2001:db8:e0::10")]);
        assert_eq!(
            subnet(&response),
            Some(ClientSubnet::new(ip("2001:db8:e0::"), 48, 40))
        );
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn udp_query_without_ecs_is_routed_by_the_packet_source() {
    bounded(async {
        let server = Server::start().await;
        let client = server.udp_client();
        let response = exchange(&client, query("ws.mesh.example.net.", RecordType::A)).await;
        assert_eq!(addresses(&response), [ip("192.0.2.1")]);
        assert!(response.edns.is_none());
        // The client's own high-level lookup: EDNS without ECS, and a randomised question case
        // the client checks is echoed exactly.
        let mut options = DnsRequestOptions::default();
        options.case_randomization = true;
        let response = tokio::time::timeout(
            QUERY_LIMIT,
            client
                .lookup(
                    Query::query(
                        Name::from_ascii("ws.mesh.example.net.").unwrap(),
                        RecordType::A,
                    ),
                    options,
                )
                .next(),
        )
        .await
        .expect("answer in time")
        .expect("a response")
        .expect("question case echoed");
        assert_eq!(addresses(&response), [ip("192.0.2.1")]);
        assert!(response.edns.is_some());
        assert_eq!(subnet(&response), None);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn negative_answers_carry_the_soa_with_the_negative_ttl() {
    bounded(async {
        let server = Server::start().await;
        let client = server.udp_client();
        for (name, qtype, code) in [
            (
                "nowhere.mesh.example.net.",
                RecordType::A,
                ResponseCode::NXDomain,
            ),
            (
                "a.ws.mesh.example.net.",
                RecordType::AAAA,
                ResponseCode::NXDomain,
            ),
            (
                "ws.mesh.example.net.",
                RecordType::TXT,
                ResponseCode::NoError,
            ),
            ("mesh.example.net.", RecordType::A, ResponseCode::NoError),
        ] {
            let response =
                exchange(&client, with_ecs(query(name, qtype), "198.51.100.0", 24)).await;
            assert_eq!(response.metadata.response_code, code, "{name}");
            assert!(response.metadata.authoritative);
            assert!(response.answers.is_empty());
            assert_eq!(response.authorities.len(), 1);
            let soa = &response.authorities[0];
            assert_eq!(soa.record_type(), RecordType::SOA);
            assert_eq!(
                soa.ttl, NEGATIVE_TTL,
                "min(ttl {TTL}, minimum {NEGATIVE_TTL})"
            );
            assert_eq!(
                subnet(&response),
                Some(ClientSubnet::new(ip("198.51.100.0"), 24, 0)),
                "negative answers do not depend on the client"
            );
        }
        let response = exchange(&client, query("example.org.", RecordType::A)).await;
        assert_eq!(response.metadata.response_code, ResponseCode::Refused);
        assert!(!response.metadata.authoritative);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn tcp_answers_in_full_what_udp_truncates() {
    bounded(async {
        let server = Server::start().await;
        let tcp = server.tcp_client().await;
        let response = exchange(
            &tcp,
            with_ecs(
                query("ws.mesh.example.net.", RecordType::A),
                "198.51.100.0",
                24,
            ),
        )
        .await;
        assert_eq!(
            addresses(&response),
            [ip("203.0.113.10"), ip("203.0.113.11")]
        );
        assert_eq!(
            subnet(&response),
            Some(ClientSubnet::new(ip("198.51.100.0"), 24, 22))
        );

        // "big" has 100 addresses: over 1232 bytes.
        let big = || with_ecs(query("ws.mesh.example.net.", RecordType::A), "10.3.0.0", 16);
        let udp = server.udp_client();
        let response = exchange(&udp, big()).await;
        assert!(response.metadata.truncation);
        assert!(response.answers.is_empty());
        assert!(response.as_buffer().len() <= 1232);
        for _ in 0..2 {
            let response = exchange(&tcp, big()).await;
            assert!(!response.metadata.truncation);
            assert_eq!(response.answers.len(), 100);
            assert_eq!(
                subnet(&response),
                Some(ClientSubnet::new(ip("10.3.0.0"), 16, 16))
            );
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn malformed_packets_over_raw_udp_get_formerr_or_nothing() {
    bounded(async {
        let server = Server::start().await;
        let socket = UdpSocket::bind(loopback(0)).await.unwrap();
        socket.connect(server.udp).await.unwrap();

        // ECS 198.51.101.0/20 written with a bit set beyond the prefix.
        let mut message = query("ws.mesh.example.net.", RecordType::A);
        message.metadata.id = 0x0bad;
        message.set_edns(Edns::new());
        let mut bad_ecs = message.to_vec().unwrap();
        let option = [0, 8, 0, 7, 0, 1, 20, 0, 198, 51, 101];
        let end = bad_ecs.len();
        bad_ecs[end - 2..].copy_from_slice(&[0, option.len() as u8]);
        bad_ecs.extend_from_slice(&option);

        // A header too short to answer, then a packet with two questions: only the second
        // gets a response, so the first datagram received is its FORMERR.
        let mut two_questions = query("ws.mesh.example.net.", RecordType::A);
        two_questions.metadata.id = 0x0002;
        two_questions.add_query(Query::query(
            Name::from_ascii(ZONE).unwrap(),
            RecordType::SOA,
        ));
        let mut buffer = vec![0u8; 2048];
        for (packet, id, bare) in [
            (bad_ecs, 0x0bad, false),
            (two_questions.to_vec().unwrap(), 0x0002, true),
        ] {
            if bare {
                socket.send(&[0x12, 0x34, 0x01, 0x00, 0, 1]).await.unwrap();
            }
            socket.send(&packet).await.unwrap();
            let length = tokio::time::timeout(QUERY_LIMIT, socket.recv(&mut buffer))
                .await
                .expect("answer in time")
                .unwrap();
            let response = Message::from_vec(&buffer[..length]).unwrap();
            assert_eq!(response.metadata.id, id);
            assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
            if bare {
                assert_eq!(length, 12);
            } else {
                assert_eq!(response.queries, message.queries);
                assert!(response.edns.is_some());
                assert_eq!(subnet(&response), None);
            }
        }
        server.stop().await;
    })
    .await;
}
