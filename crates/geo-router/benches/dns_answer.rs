//! Answers per second of the DNS answerer for the common query, a `ws` `A` query with EDNS Client
//! Subnet: the full path (decode, resolve, encode: `Answerer::answer_uncached`) against the
//! fast path (`Answerer::answer`, a patched template). One thread, no sockets; the router is a
//! trivial fake, so the figures are the answerer's own cost. A third figure adds the per-network
//! response rate limit's check (`SourceLimits::allow_udp`, a bucket that never runs dry) to the
//! fast path: what `dns_limits` costs a query served over UDP. Run with
//! `cargo bench -p geo-router --bench dns_answer`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use geo_router::dns::{Answerer, RouteAnswer, Router, ZoneConfig};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RecordType};

/// How long each measurement runs.
const RUN: Duration = Duration::from_secs(2);

struct OneRegion;

impl Router for OneRegion {
    fn route(&self, _client: IpAddr, _ecs_prefix: Option<u8>) -> RouteAnswer {
        RouteAnswer {
            region: "eu-west".into(),
            addresses: vec![
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)),
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, 11)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xe0, 0, 0, 0, 0, 0x10)),
            ]
            .into(),
            scope_prefix: 20,
        }
    }

    fn region_addresses(&self, _name: &str) -> Option<Vec<IpAddr>> {
        None
    }
}

/// Answers per second of `answer` over copies of `request` with a fresh ID each time.
fn measure(request: &[u8], answer: impl Fn(&[u8]) -> Option<Vec<u8>>) -> f64 {
    let mut request = request.to_vec();
    let started = Instant::now();
    let mut answered: u64 = 0;
    while started.elapsed() < RUN {
        for _ in 0..1000 {
            let id = (answered as u16).to_be_bytes();
            request[..2].copy_from_slice(&id);
            let response = answer(black_box(&request)).expect("an answer");
            black_box(response);
            answered += 1;
        }
    }
    answered as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let zone = Name::from_ascii("mesh.example.net.").expect("zone name");
    let ns = vec![Name::from_ascii("ns1.mesh.example.net.").expect("ns name")];
    let answerer = Answerer::new(ZoneConfig::new(zone, ns), OneRegion);

    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(
        Name::from_ascii("ws.mesh.example.net.").expect("ws name"),
        RecordType::A,
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::new(
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 0)),
            24,
            0,
        )));
    message.set_edns(edns);
    let request = message.to_vec().expect("request encodes");
    let source = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53));
    assert_eq!(
        answerer.answer(&request, source),
        answerer.answer_uncached(&request, source),
        "both paths give the same bytes"
    );

    let full = measure(&request, |request| {
        answerer.answer_uncached(request, source)
    });
    let fast = measure(&request, |request| answerer.answer(request, source));
    let limits = geo_router::dns::SourceLimits::new(&geo_router::config::DnsLimits {
        rate_per_s: u32::MAX,
        burst: u32::MAX,
        tcp_per_network: 32,
    });
    let limited = measure(&request, |request| {
        assert!(limits.allow_udp(source));
        answerer.answer(request, source)
    });
    println!("ws A with ECS /24, {} bytes in:", request.len());
    println!("  full path (decode, resolve, encode): {full:>12.0} answers/s");
    println!("  fast path (template, patched):       {fast:>12.0} answers/s");
    println!("  fast path + rate limit check:        {limited:>12.0} answers/s");
    println!("  speed-up: {:.1}x", fast / full);
}
