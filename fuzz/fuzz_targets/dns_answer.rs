//! The DNS request path of the geo-router. Every input is answered twice: by `Answerer::answer`
//! (the fast path with its template cache when the request is a plain `ws` query, the full
//! path otherwise) and by `Answerer::answer_uncached` (the full path alone). The two must give
//! the same bytes for every input; TCP must answer exactly when UDP does; every response echoes
//! the ID, has QR set, and a UDP one fits the advertised payload size.
//!
//! Input: byte 0 picks the packet source (bit 0: IPv6, else IPv4), followed by its 4 or 16
//! address bytes, then the request packet.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, OnceLock};

use geo_router::dns::{Answerer, RouteAnswer, Router, ZoneConfig, UDP_PAYLOAD_SIZE};
use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;

const ZONE: &str = "mesh.example.net.";

/// Routes by the client address alone (deterministic, so both paths get the same answer),
/// covering: two regions with both families, one with IPv4 only, one with no addresses
/// (SERVFAIL), one with more A records than fit 512 and 1232 bytes (truncation), a scope
/// beyond the family length, and a region called `ws`.
struct FuzzRouter;

fn region(name: &str) -> Option<Vec<IpAddr>> {
    let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
    let v6 = |s: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, s, 0, 0, 0, 0, 0x10));
    Some(match name {
        "eu" => vec![v4(203, 0, 113, 10), v6(0xe0), v4(203, 0, 113, 11)],
        "us" => vec![v4(198, 18, 0, 10), v6(5)],
        "v4only" => vec![v4(198, 18, 4, 4)],
        "empty" => Vec::new(),
        "ws" => vec![v4(198, 18, 99, 99)],
        "big" => (0..100u8)
            .map(|i| v4(198, 18, 100, i))
            .chain((0..10u16).map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, i))))
            .collect(),
        _ => return None,
    })
}

impl Router for FuzzRouter {
    fn route(&self, client: IpAddr, _ecs_prefix: Option<u8>) -> RouteAnswer {
        let (name, scope_prefix) = match client {
            IpAddr::V4(v4) => match v4.octets()[0] % 6 {
                0 => ("eu", 24),
                1 => ("us", 16),
                2 => ("v4only", 10),
                3 => ("empty", 12),
                4 => ("big", 16),
                _ => ("eu", 200),
            },
            IpAddr::V6(v6) => match v6.octets()[0] % 6 {
                0 => ("eu", 48),
                1 => ("us", 32),
                2 => ("v4only", 36),
                3 => ("empty", 40),
                4 => ("big", 255),
                _ => ("ws", 0),
            },
        };
        RouteAnswer {
            region: name.into(),
            addresses: Arc::from(region(name).unwrap_or_default()),
            scope_prefix,
        }
    }

    fn region_addresses(&self, name: &str) -> Option<Vec<IpAddr>> {
        region(name)
    }
}

fn answerer() -> &'static Answerer<FuzzRouter> {
    static ANSWERER: OnceLock<Answerer<FuzzRouter>> = OnceLock::new();
    ANSWERER.get_or_init(|| {
        let name = |s: &str| Name::from_ascii(s).expect("static name");
        let config = ZoneConfig::new(
            name(ZONE),
            vec![name("ns1.mesh.example.net."), name("ns2.example.org.")],
        );
        Answerer::new(config, FuzzRouter)
    })
}

fn split(data: &[u8]) -> Option<(IpAddr, &[u8])> {
    let (&selector, rest) = data.split_first()?;
    if selector & 1 == 0 {
        let (address, request) = rest.split_first_chunk::<4>()?;
        Some((IpAddr::V4(Ipv4Addr::from(*address)), request))
    } else {
        let (address, request) = rest.split_first_chunk::<16>()?;
        Some((IpAddr::V6(Ipv6Addr::from(*address)), request))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((source, request)) = split(data) else {
        return;
    };
    let answerer = answerer();
    let udp = answerer.answer(request, source);
    let full = answerer.answer_uncached(request, source);
    assert_eq!(udp, full, "fast and full paths differ");
    // Twice more: the second `answer` of a `ws` query comes from the template the first made.
    assert_eq!(
        answerer.answer(request, source),
        full,
        "template answer differs"
    );
    let tcp = answerer.answer_tcp(request, source);
    assert_eq!(
        udp.is_some(),
        tcp.is_some(),
        "UDP and TCP disagree on answering"
    );
    for response in udp.iter().chain(tcp.iter()) {
        assert!(response.len() >= 12, "response shorter than a header");
        assert_eq!(response[..2], request[..2], "ID not echoed");
        assert_ne!(response[2] & 0x80, 0, "QR not set");
    }
    if let Some(response) = &udp {
        assert!(
            response.len() <= usize::from(UDP_PAYLOAD_SIZE),
            "UDP response too big"
        );
    }
});
