//! The answerer's unit tests: every rule of the module documentation, the fast path against
//! the full path, and random and damaged packets.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use super::fast::TEMPLATE_CACHE_CAPACITY;
use super::*;

const ZONE: &str = "mesh.example.net.";
/// A packet source outside every network the fake router knows: routed to `us`.
const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 77));

/// Routes by fixed networks and records every call.
struct FakeRouter {
    regions: HashMap<&'static str, Vec<IpAddr>>,
    calls: Mutex<Vec<(IpAddr, Option<u8>)>>,
}

impl FakeRouter {
    fn new() -> Self {
        let ip = |text: &str| IpAddr::from_str(text).unwrap();
        let mut regions = HashMap::new();
        regions.insert(
            "eu",
            vec![
                ip("203.0.113.10"),
                ip("2001:db8:e0::10"),
                ip("203.0.113.11"),
            ],
        );
        regions.insert("us", vec![ip("198.18.0.10"), ip("2001:db8:5::10")]);
        regions.insert("v4only", vec![ip("198.18.4.4")]);
        regions.insert("empty", Vec::new());
        regions.insert("ws", vec![ip("198.18.99.99")]);
        // 40 A records: more than 512 bytes, less than 1232.
        regions.insert(
            "mid",
            (0..40u8)
                .map(|i| IpAddr::V4(Ipv4Addr::new(198, 18, 40, i)))
                .collect(),
        );
        // 100 A records (more than 1232 bytes) and 10 AAAA (less than 512).
        regions.insert(
            "big",
            (0..100u8)
                .map(|i| IpAddr::V4(Ipv4Addr::new(198, 18, 100, i)))
                .chain(
                    (0..10u16)
                        .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, i))),
                )
                .collect(),
        );
        FakeRouter {
            regions,
            calls: Mutex::new(Vec::new()),
        }
    }

    fn calls(&self) -> Vec<(IpAddr, Option<u8>)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Router for FakeRouter {
    fn route(&self, client: IpAddr, ecs_prefix: Option<u8>) -> RouteAnswer {
        self.calls.lock().unwrap().push((client, ecs_prefix));
        if let IpAddr::V4(v4) = client {
            if v4.octets()[..2] == [10, 9] {
                // A router whose answer differs for every client: a new template each.
                return RouteAnswer {
                    region: "churn".into(),
                    addresses: vec![client].into(),
                    scope_prefix: 32,
                };
            }
        }
        let (region, scope_prefix) = match client {
            IpAddr::V4(v4) => match v4.octets() {
                [198, 51, 100, _] => ("eu", 24),
                [100, 64..=127, _, _] => ("v4only", 10),
                [10, 1, _, _] => ("eu", 200), // beyond 32: the echo caps it
                [10, 2, _, _] => ("mid", 16),
                [10, 3, _, _] => ("big", 16),
                [172, 16..=31, _, _] => ("empty", 12),
                _ => ("us", 16),
            },
            IpAddr::V6(v6) => match v6.segments() {
                [0x2001, 0xdb8, 0xe0, ..] => ("eu", 48),
                [0x2001, 0xdb8, 0xbad, ..] => ("empty", 40),
                [0x2001, 0xdb8, 0xb16, ..] => ("big", 255),
                [0x2001, 0xdb8, 0x4, ..] => ("v4only", 36),
                _ => ("us", 32),
            },
        };
        RouteAnswer {
            region: region.into(),
            addresses: self.regions[region].clone().into(),
            scope_prefix,
        }
    }

    fn region_addresses(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.regions.get(name).cloned()
    }
}

fn zone_config() -> ZoneConfig {
    ZoneConfig::new(
        Name::from_ascii(ZONE).unwrap(),
        vec![
            Name::from_ascii("ns1.mesh.example.net.").unwrap(),
            Name::from_ascii("ns2.example.org.").unwrap(),
        ],
    )
}

fn answerer() -> Answerer<FakeRouter> {
    Answerer::new(zone_config(), FakeRouter::new())
}

fn ip(text: &str) -> IpAddr {
    IpAddr::from_str(text).unwrap()
}

fn request(name: &str, qtype: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.id = 0x4d52;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message
}

fn with_edns(mut message: Message, payload: u16) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    message.set_edns(edns);
    message
}

/// `message` with EDNS (payload 1232) and an ECS option for `network` (`address/prefix`).
fn with_ecs(message: Message, network: &str) -> Message {
    let (address, prefix) = network.split_once('/').unwrap();
    let mut message = with_edns(message, 1232);
    let subnet = ClientSubnet::new(ip(address), prefix.parse().unwrap(), 0);
    message
        .edns
        .as_mut()
        .unwrap()
        .options_mut()
        .insert(EdnsOption::Subnet(subnet));
    message
}

/// `message` (which must carry EDNS without options) encoded with `options` as the raw
/// OPT RDATA.
fn with_raw_options(message: Message, options: &[u8]) -> Vec<u8> {
    let mut bytes = message.to_vec().unwrap();
    let end = bytes.len();
    assert_eq!(bytes[end - 2..], [0, 0], "OPT must be last and empty");
    bytes[end - 2..].copy_from_slice(&u16::try_from(options.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(options);
    bytes
}

fn ecs_option(family: u16, source: u8, scope: u8, address: &[u8]) -> Vec<u8> {
    let mut option = vec![0, 8];
    option.extend_from_slice(&u16::try_from(4 + address.len()).unwrap().to_be_bytes());
    option.extend_from_slice(&family.to_be_bytes());
    option.extend_from_slice(&[source, scope]);
    option.extend_from_slice(address);
    option
}

fn ask(answerer: &Answerer<FakeRouter>, message: &Message, source: IpAddr) -> Message {
    let bytes = answerer.answer(&message.to_vec().unwrap(), source).unwrap();
    Message::from_vec(&bytes).unwrap()
}

fn ask_raw(answerer: &Answerer<FakeRouter>, request: &[u8]) -> Message {
    let bytes = answerer.answer(request, ELSEWHERE).unwrap();
    Message::from_vec(&bytes).unwrap()
}

fn answer_addresses(response: &Message) -> Vec<IpAddr> {
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

/// Checks a negative answer: `rcode`, AA, no answers and the SOA with the negative TTL.
fn assert_negative(response: &Message, rcode: ResponseCode, negative_ttl: u32) {
    assert_eq!(response.metadata.response_code, rcode);
    assert!(response.metadata.authoritative);
    assert!(response.answers.is_empty());
    assert_eq!(response.authorities.len(), 1);
    let soa = &response.authorities[0];
    assert_eq!(soa.name, Name::from_ascii(ZONE).unwrap());
    assert_eq!(soa.ttl, negative_ttl);
    assert!(matches!(&soa.data, RData::SOA(soa) if soa.minimum == zone_config().minimum));
}

#[test]
fn ws_a_is_routed_by_packet_source_without_ecs() {
    let answerer = answerer();
    let response = ask(
        &answerer,
        &request("ws.mesh.example.net.", RecordType::A),
        ip("198.51.100.7"),
    );
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.metadata.authoritative);
    assert_eq!(
        response.metadata.message_type,
        hickory_proto::op::MessageType::Response
    );
    assert_eq!(response.metadata.id, 0x4d52);
    assert!(response.metadata.recursion_desired);
    assert!(!response.metadata.recursion_available);
    assert_eq!(
        answer_addresses(&response),
        [ip("203.0.113.10"), ip("203.0.113.11")]
    );
    assert!(response
        .answers
        .iter()
        .all(|record| record.ttl == DEFAULT_TTL));
    assert!(response.edns.is_none(), "no OPT without one in the request");
    assert_eq!(answerer.router.calls(), [(ip("198.51.100.7"), None)]);
}

#[test]
fn ws_aaaa_is_routed_by_packet_source_mapped_to_ipv4() {
    let answerer = answerer();
    let response = ask(
        &answerer,
        &request("ws.mesh.example.net.", RecordType::AAAA),
        ip("::ffff:198.51.100.7"),
    );
    assert_eq!(answer_addresses(&response), [ip("2001:db8:e0::10")]);
    assert_eq!(answerer.router.calls(), [(ip("198.51.100.7"), None)]);
}

#[test]
fn ws_is_routed_by_ecs_address_not_packet_source() {
    let answerer = answerer();
    let message = with_ecs(
        request("ws.mesh.example.net.", RecordType::A),
        "198.51.100.0/24",
    );
    let response = ask(&answerer, &message, ip("2001:db8:5::1"));
    assert_eq!(
        answer_addresses(&response),
        [ip("203.0.113.10"), ip("203.0.113.11")]
    );
    assert_eq!(answerer.router.calls(), [(ip("198.51.100.0"), Some(24))]);
    assert_eq!(
        subnet(&response),
        Some(ClientSubnet::new(ip("198.51.100.0"), 24, 24))
    );

    let message = with_ecs(
        request("ws.mesh.example.net.", RecordType::AAAA),
        "2001:db8:e0::/48",
    );
    let response = ask(&answerer, &message, ip("198.18.1.1"));
    assert_eq!(answer_addresses(&response), [ip("2001:db8:e0::10")]);
    assert_eq!(
        subnet(&response),
        Some(ClientSubnet::new(ip("2001:db8:e0::"), 48, 48))
    );
    assert_eq!(answerer.router.calls()[1], (ip("2001:db8:e0::"), Some(48)));
}

#[test]
fn ecs_echo_keeps_source_and_address_and_sets_router_scope() {
    let answerer = answerer();
    // Source /20 with an odd last octet: the address is echoed as sent, scope is the
    // router's (16), smaller than the source prefix.
    let message = with_ecs(
        request("ws.mesh.example.net.", RecordType::A),
        "192.0.16.0/20",
    );
    let response = ask(&answerer, &message, ELSEWHERE);
    assert_eq!(
        subnet(&response),
        Some(ClientSubnet::new(ip("192.0.16.0"), 20, 16))
    );
    let bytes = answerer
        .answer(&message.to_vec().unwrap(), ELSEWHERE)
        .unwrap();
    assert_eq!(bytes[bytes.len() - 7..], [0, 1, 20, 16, 192, 0, 16]);
}

#[test]
fn ecs_scope_is_capped_at_the_family_length() {
    let answerer = answerer();
    let message = with_ecs(
        request("ws.mesh.example.net.", RecordType::A),
        "10.1.0.0/16",
    );
    let response = ask(&answerer, &message, ELSEWHERE);
    assert_eq!(
        subnet(&response),
        Some(ClientSubnet::new(ip("10.1.0.0"), 16, 32))
    );
    let message = with_ecs(
        request("ws.mesh.example.net.", RecordType::AAAA),
        "2001:db8:b16::/56",
    );
    let response = ask_tcp(&answerer, &message);
    assert_eq!(
        subnet(&response),
        Some(ClientSubnet::new(ip("2001:db8:b16::"), 56, 128))
    );
}

fn ask_tcp(answerer: &Answerer<FakeRouter>, message: &Message) -> Message {
    let bytes = answerer
        .answer_tcp(&message.to_vec().unwrap(), ELSEWHERE)
        .unwrap();
    Message::from_vec(&bytes).unwrap()
}

#[test]
fn ecs_source_prefix_zero_routes_by_packet_source_and_adds_no_ecs() {
    let answerer = answerer();
    let message = with_ecs(request("ws.mesh.example.net.", RecordType::A), "0.0.0.0/0");
    let response = ask(&answerer, &message, ip("198.51.100.9"));
    assert_eq!(
        answer_addresses(&response),
        [ip("203.0.113.10"), ip("203.0.113.11")]
    );
    assert_eq!(answerer.router.calls(), [(ip("198.51.100.9"), None)]);
    let edns = response.edns.as_ref().expect("OPT echoed");
    assert!(edns.options().as_ref().is_empty());
    // The same with IPv6 family.
    let message = with_ecs(request("ws.mesh.example.net.", RecordType::A), "::/0");
    let response = ask(&answerer, &message, ip("198.51.100.9"));
    assert!(subnet(&response).is_none());
}

#[test]
fn edns_without_ecs_gets_opt_without_ecs() {
    let answerer = answerer();
    let message = with_edns(request("ws.mesh.example.net.", RecordType::A), 4096);
    let response = ask(&answerer, &message, ELSEWHERE);
    let edns = response.edns.as_ref().expect("OPT echoed");
    assert_eq!(edns.max_payload(), UDP_PAYLOAD_SIZE);
    assert_eq!(edns.version(), 0);
    assert!(!edns.flags().dnssec_ok);
    assert!(edns.options().as_ref().is_empty());
    assert_eq!(answer_addresses(&response), [ip("198.18.0.10")]);
}

#[test]
fn dnssec_ok_rd_cd_and_id_are_copied() {
    let answerer = answerer();
    for (dnssec_ok, rd, cd) in [(true, false, true), (false, true, false)] {
        let mut message = with_ecs(
            request("ws.mesh.example.net.", RecordType::A),
            "198.51.100.0/24",
        );
        message.metadata.id = 0xbeef;
        message.metadata.recursion_desired = rd;
        message.metadata.checking_disabled = cd;
        message.edns.as_mut().unwrap().set_dnssec_ok(dnssec_ok);
        // Twice: the second answer comes from the fast path's template.
        for _ in 0..2 {
            let response = ask(&answerer, &message, ELSEWHERE);
            assert_eq!(response.metadata.id, 0xbeef);
            assert_eq!(response.metadata.recursion_desired, rd);
            assert_eq!(response.metadata.checking_disabled, cd);
            assert_eq!(response.edns.as_ref().unwrap().flags().dnssec_ok, dnssec_ok);
        }
    }
}

#[test]
fn static_and_negative_answers_echo_scope_zero() {
    let answerer = answerer();
    for (name, qtype) in [
        ("mesh.example.net.", RecordType::SOA),
        ("mesh.example.net.", RecordType::NS),
        ("ws.mesh.example.net.", RecordType::TXT),
        ("ws.mesh.example.net.", RecordType::ANY),
        ("eu.mesh.example.net.", RecordType::A),
        ("eu.mesh.example.net.", RecordType::MX),
        ("nowhere.mesh.example.net.", RecordType::A),
        ("a.ws.mesh.example.net.", RecordType::AAAA),
        ("example.org.", RecordType::A),
    ] {
        let message = with_ecs(request(name, qtype), "198.51.100.0/24");
        let response = ask(&answerer, &message, ELSEWHERE);
        assert_eq!(
            subnet(&response),
            Some(ClientSubnet::new(ip("198.51.100.0"), 24, 0)),
            "{name} {qtype}"
        );
    }
    assert!(answerer.router.calls().is_empty(), "only ws A/AAAA route");
}

#[test]
fn ws_nodata_when_the_region_lacks_the_family_carries_the_router_scope() {
    let answerer = answerer();
    let message = with_ecs(
        request("ws.mesh.example.net.", RecordType::AAAA),
        "100.64.0.0/10",
    );
    let response = ask(&answerer, &message, ELSEWHERE);
    assert_negative(&response, ResponseCode::NoError, DEFAULT_TTL);
    assert_eq!(
        subnet(&response),
        Some(ClientSubnet::new(ip("100.64.0.0"), 10, 10))
    );
}

#[test]
fn servfail_when_the_router_has_no_addresses() {
    let answerer = answerer();
    for message in [
        request("ws.mesh.example.net.", RecordType::A),
        with_ecs(
            request("ws.mesh.example.net.", RecordType::AAAA),
            "172.16.0.0/12",
        ),
    ] {
        let response = ask(&answerer, &message, ip("172.20.0.1"));
        assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
        assert!(!response.metadata.authoritative);
        assert!(response.answers.is_empty() && response.authorities.is_empty());
    }
}

/// Raw ECS options that RFC 7871 §7.1.1 makes FORMERR.
fn malformed_ecs_options() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "bits beyond the source prefix",
            ecs_option(1, 20, 0, &[198, 51, 101]),
        ),
        (
            "address longer than the prefix",
            ecs_option(1, 24, 0, &[198, 51, 100, 0]),
        ),
        (
            "address shorter than the prefix",
            ecs_option(1, 24, 0, &[198, 51]),
        ),
        ("address with source prefix 0", ecs_option(1, 0, 0, &[198])),
        ("unknown family", ecs_option(3, 24, 0, &[198, 51, 100])),
        (
            "IPv4 source prefix over 32",
            ecs_option(1, 33, 0, &[198, 51, 100, 7, 0]),
        ),
        (
            "IPv6 source prefix over 128",
            ecs_option(2, 129, 0, &[0x20; 17]),
        ),
        ("option too short for a header", vec![0, 8, 0, 2, 0, 1]),
        ("option longer than the RDATA", vec![0, 8, 0, 9, 0, 1, 8, 0]),
        ("two ECS options", {
            let mut options = ecs_option(1, 24, 0, &[198, 51, 100]);
            options.extend(ecs_option(1, 24, 0, &[198, 51, 100]));
            options
        }),
    ]
}

#[test]
fn malformed_ecs_is_formerr_echoing_question_and_opt() {
    let answerer = answerer();
    for (what, options) in malformed_ecs_options() {
        let message = with_edns(request("ws.mesh.example.net.", RecordType::A), 1232);
        let bytes = with_raw_options(message, &options);
        let response = ask_raw(&answerer, &bytes);
        assert_eq!(
            response.metadata.response_code,
            ResponseCode::FormErr,
            "{what}"
        );
        assert!(!response.metadata.authoritative, "{what}");
        assert_eq!(response.metadata.id, 0x4d52, "{what}");
        assert_eq!(response.queries.len(), 1, "{what}");
        assert!(response.answers.is_empty(), "{what}");
        let edns = response.edns.as_ref().expect(what);
        assert!(edns.options().as_ref().is_empty(), "{what}");
    }
    assert!(answerer.router.calls().is_empty());
}

#[test]
fn edns_version_other_than_zero_is_badvers() {
    let answerer = answerer();
    let mut message = with_ecs(
        request("ws.mesh.example.net.", RecordType::A),
        "198.51.100.0/24",
    );
    message.edns.as_mut().unwrap().set_version(1);
    let response = ask(&answerer, &message, ELSEWHERE);
    // BADVERS shares the value 16 with BADSIG, which hickory decodes it as.
    assert_eq!(u16::from(response.metadata.response_code), 16);
    assert!(!response.metadata.authoritative);
    assert!(response.answers.is_empty());
    let edns = response.edns.as_ref().expect("OPT in BADVERS");
    assert_eq!(edns.version(), 0);
    assert!(subnet(&response).is_none());
    assert!(answerer.router.calls().is_empty());
}

#[test]
fn region_names_answer_their_addresses() {
    let answerer = answerer();
    let response = ask(
        &answerer,
        &request("eu.mesh.example.net.", RecordType::A),
        ELSEWHERE,
    );
    assert_eq!(
        answer_addresses(&response),
        [ip("203.0.113.10"), ip("203.0.113.11")]
    );
    assert!(response.metadata.authoritative);
    let response = ask(
        &answerer,
        &request("EU.mesh.example.net.", RecordType::AAAA),
        ELSEWHERE,
    );
    assert_eq!(answer_addresses(&response), [ip("2001:db8:e0::10")]);
    for (name, qtype) in [
        ("v4only.mesh.example.net.", RecordType::AAAA),
        ("empty.mesh.example.net.", RecordType::A),
        ("eu.mesh.example.net.", RecordType::TXT),
    ] {
        let response = ask(&answerer, &request(name, qtype), ELSEWHERE);
        assert_negative(&response, ResponseCode::NoError, DEFAULT_TTL);
    }
    assert!(answerer.router.calls().is_empty());
}

#[test]
fn ws_wins_over_a_region_called_ws() {
    let answerer = answerer();
    let response = ask(
        &answerer,
        &request("ws.mesh.example.net.", RecordType::A),
        ip("198.51.100.1"),
    );
    assert!(!answer_addresses(&response).contains(&ip("198.18.99.99")));
    assert_eq!(answerer.router.calls().len(), 1);
}

#[test]
fn apex_answers_soa_and_ns() {
    let answerer = answerer();
    let response = ask(
        &answerer,
        &request("mesh.example.net.", RecordType::SOA),
        ELSEWHERE,
    );
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.metadata.authoritative);
    assert_eq!(response.answers.len(), 1);
    let record = &response.answers[0];
    assert_eq!(record.ttl, DEFAULT_TTL);
    let RData::SOA(soa) = &record.data else {
        panic!("not a SOA: {record:?}");
    };
    assert_eq!(
        soa.mname,
        Name::from_ascii("ns1.mesh.example.net.").unwrap()
    );
    assert_eq!(
        soa.rname,
        Name::from_ascii("hostmaster.mesh.example.net.").unwrap()
    );
    assert_eq!((soa.serial, soa.minimum), (1, DEFAULT_TTL));

    let response = ask(
        &answerer,
        &request("mesh.example.net.", RecordType::NS),
        ELSEWHERE,
    );
    let names: Vec<String> = response
        .answers
        .iter()
        .map(|record| match &record.data {
            RData::NS(ns) => ns.0.to_string(),
            other => panic!("not NS: {other:?}"),
        })
        .collect();
    assert_eq!(names, ["ns1.mesh.example.net.", "ns2.example.org."]);
    assert!(response
        .answers
        .iter()
        .all(|record| record.ttl == DEFAULT_TTL));

    // A zone without name servers has no NS records: NODATA.
    let mut config = zone_config();
    config.ns.clear();
    let bare = Answerer::new(config, FakeRouter::new());
    let response = ask(
        &bare,
        &request("mesh.example.net.", RecordType::NS),
        ELSEWHERE,
    );
    assert_negative(&response, ResponseCode::NoError, DEFAULT_TTL);
}

#[test]
fn other_types_are_nodata_with_soa_ttl_min_of_ttl_and_minimum() {
    for (ttl, minimum, expected) in [(300, 60, 60), (20, 60, 20), (30, 30, 30)] {
        let mut config = zone_config();
        config.ttl = ttl;
        config.minimum = minimum;
        let answerer = Answerer::new(config, FakeRouter::new());
        for (name, qtype) in [
            ("mesh.example.net.", RecordType::A),
            ("mesh.example.net.", RecordType::TXT),
            ("ws.mesh.example.net.", RecordType::MX),
            ("ws.mesh.example.net.", RecordType::CNAME),
            ("us.mesh.example.net.", RecordType::SRV),
        ] {
            let response = ask(&answerer, &request(name, qtype), ELSEWHERE);
            assert_eq!(response.metadata.response_code, ResponseCode::NoError);
            assert!(response.metadata.authoritative);
            assert!(response.answers.is_empty(), "{name} {qtype}");
            assert_eq!(response.authorities.len(), 1);
            assert_eq!(response.authorities[0].ttl, expected, "{name} {qtype}");
        }
    }
}

#[test]
fn unknown_and_deeper_names_are_nxdomain_with_soa() {
    let answerer = answerer();
    for name in [
        "nowhere.mesh.example.net.",
        "a.b.mesh.example.net.",
        "x.ws.mesh.example.net.",
        "x.eu.mesh.example.net.",
        "*.mesh.example.net.",
        "*.ws.mesh.example.net.",
    ] {
        for qtype in [RecordType::A, RecordType::SOA, RecordType::ANY] {
            let response = ask(&answerer, &request(name, qtype), ELSEWHERE);
            assert_negative(&response, ResponseCode::NXDomain, DEFAULT_TTL);
        }
    }
    assert!(answerer.router.calls().is_empty());
}

#[test]
fn outside_the_zone_and_other_classes_are_refused() {
    let answerer = answerer();
    let mut chaos = request("ws.mesh.example.net.", RecordType::A);
    chaos.queries[0].set_query_class(DNSClass::CH);
    let mut any_class = request("mesh.example.net.", RecordType::SOA);
    any_class.queries[0].set_query_class(DNSClass::ANY);
    for message in [
        request("example.net.", RecordType::SOA),
        request("net.", RecordType::NS),
        request("ws.mesh.example.org.", RecordType::A),
        request("xmesh.example.net.", RecordType::A),
        request(".", RecordType::NS),
        chaos,
        any_class,
    ] {
        let response = ask(&answerer, &message, ELSEWHERE);
        assert_eq!(response.metadata.response_code, ResponseCode::Refused);
        assert!(!response.metadata.authoritative);
        assert!(response.answers.is_empty() && response.authorities.is_empty());
        assert_eq!(response.queries, message.queries);
    }
    assert!(answerer.router.calls().is_empty());
}

#[test]
fn any_gets_a_single_rfc8482_hinfo() {
    let answerer = answerer();
    for name in [
        "mesh.example.net.",
        "ws.mesh.example.net.",
        "Eu.Mesh.example.net.",
    ] {
        let response = ask(&answerer, &request(name, RecordType::ANY), ELSEWHERE);
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.metadata.authoritative);
        assert_eq!(response.answers.len(), 1, "{name}");
        let record = &response.answers[0];
        assert!(record.name.eq_case(&Name::from_ascii(name).unwrap()));
        assert_eq!(record.ttl, DEFAULT_TTL);
        let RData::HINFO(hinfo) = &record.data else {
            panic!("not HINFO: {record:?}");
        };
        assert_eq!((&*hinfo.cpu, &*hinfo.os), (&b"RFC8482"[..], &b""[..]));
    }
    assert!(answerer.router.calls().is_empty());
}

#[test]
fn names_match_case_insensitively_and_the_question_is_echoed_as_asked() {
    let answerer = answerer();
    for name in [
        "WS.MESH.EXAMPLE.NET.",
        "wS.MeSh.ExAmPlE.nEt.",
        "ws.mesh.example.net.",
    ] {
        for ecs in [false, true] {
            let mut message = request(name, RecordType::A);
            if ecs {
                message = with_ecs(message, "198.51.100.0/24");
            }
            let request_bytes = message.to_vec().unwrap();
            // Twice, so that the second goes through the fast path's template.
            for _ in 0..2 {
                let bytes = answerer.answer(&request_bytes, ip("198.51.100.1")).unwrap();
                let name_end = 12 + name.len() + 1;
                assert_eq!(bytes[12..name_end], request_bytes[12..name_end], "{name}");
                let response = Message::from_vec(&bytes).unwrap();
                assert!(response.queries[0]
                    .name()
                    .eq_case(&Name::from_ascii(name).unwrap()));
                assert_eq!(answer_addresses(&response).len(), 2, "{name}");
                assert!(response
                    .answers
                    .iter()
                    .all(|record| record.name.eq_case(response.queries[0].name())));
            }
        }
    }
    // NODATA and NXDOMAIN too.
    for (name, code) in [
        ("MESH.Example.NET.", ResponseCode::NoError),
        ("Nowhere.MESH.example.net.", ResponseCode::NXDomain),
    ] {
        let response = ask(&answerer, &request(name, RecordType::TXT), ELSEWHERE);
        assert_eq!(response.metadata.response_code, code);
        assert!(response.queries[0]
            .name()
            .eq_case(&Name::from_ascii(name).unwrap()));
    }
}

#[test]
fn ttl_is_configurable() {
    let mut config = zone_config();
    config.ttl = 5;
    let answerer = Answerer::new(config, FakeRouter::new());
    for (name, qtype) in [
        ("ws.mesh.example.net.", RecordType::A),
        ("ws.mesh.example.net.", RecordType::AAAA),
        ("eu.mesh.example.net.", RecordType::A),
        ("mesh.example.net.", RecordType::SOA),
        ("mesh.example.net.", RecordType::NS),
        ("mesh.example.net.", RecordType::ANY),
    ] {
        let response = ask(&answerer, &request(name, qtype), ELSEWHERE);
        assert!(!response.answers.is_empty(), "{name} {qtype}");
        assert!(
            response.answers.iter().all(|record| record.ttl == 5),
            "{name} {qtype}"
        );
    }
}

#[test]
fn requests_with_qr_set_and_short_packets_are_dropped() {
    let answerer = answerer();
    let mut response_like = request("ws.mesh.example.net.", RecordType::A);
    response_like.metadata.message_type = hickory_proto::op::MessageType::Response;
    let bytes = response_like.to_vec().unwrap();
    assert_eq!(answerer.answer(&bytes, ELSEWHERE), None);
    assert_eq!(answerer.answer_tcp(&bytes, ELSEWHERE), None);
    let good = request("ws.mesh.example.net.", RecordType::A)
        .to_vec()
        .unwrap();
    for length in 0..12 {
        assert_eq!(
            answerer.answer(&good[..length], ELSEWHERE),
            None,
            "{length} bytes"
        );
    }
    assert!(answerer.router.calls().is_empty());
}

#[test]
fn other_opcodes_are_notimp_with_a_bare_header() {
    let answerer = answerer();
    for opcode in [
        OpCode::Status,
        OpCode::Notify,
        OpCode::Update,
        OpCode::Unknown(9),
    ] {
        let mut message = request("ws.mesh.example.net.", RecordType::A);
        message.metadata.op_code = opcode;
        let bytes = answerer
            .answer(&message.to_vec().unwrap(), ELSEWHERE)
            .unwrap();
        assert_eq!(bytes.len(), 12);
        let response = Message::from_vec(&bytes).unwrap();
        assert_eq!(response.metadata.response_code, ResponseCode::NotImp);
        assert_eq!(response.metadata.op_code, opcode);
        assert_eq!(response.metadata.id, 0x4d52);
        assert!(response.metadata.recursion_desired);
        assert!(!response.metadata.authoritative);
    }
}

#[test]
fn question_count_other_than_one_is_formerr_with_a_bare_header() {
    let answerer = answerer();
    let mut none = request("ws.mesh.example.net.", RecordType::A);
    none.queries.clear();
    let mut two = request("ws.mesh.example.net.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("eu.mesh.example.net.").unwrap(),
        RecordType::A,
    ));
    // Header says one question, body ends after the header.
    let mut lying = request("ws.mesh.example.net.", RecordType::A)
        .to_vec()
        .unwrap();
    lying.truncate(12);
    for bytes in [none.to_vec().unwrap(), two.to_vec().unwrap(), lying] {
        let response = answerer.answer(&bytes, ELSEWHERE).unwrap();
        assert_eq!(response.len(), 12);
        let response = Message::from_vec(&response).unwrap();
        assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(response.metadata.id, 0x4d52);
    }
    assert!(answerer.router.calls().is_empty());
}

#[test]
fn udp_responses_are_truncated_to_the_client_limit_and_tcp_ones_are_not() {
    let answerer = answerer();
    let truncated = |response: &[u8], limit: usize| {
        assert!(response.len() <= limit, "{} > {limit}", response.len());
        let message = Message::from_vec(response).unwrap();
        assert!(message.metadata.truncation);
        assert!(message.answers.is_empty() && message.authorities.is_empty());
        assert_eq!(message.queries.len(), 1);
        message
    };
    let mid = request("ws.mesh.example.net.", RecordType::A);
    let source = ip("10.2.0.1"); // routed to "mid": about 680 bytes of answer

    // No EDNS: 512.
    let response = answerer.answer(&mid.to_vec().unwrap(), source).unwrap();
    let message = truncated(&response, 512);
    assert!(message.edns.is_none());
    // EDNS 1232: it fits.
    let with_1232 = with_edns(mid.clone(), 1232).to_vec().unwrap();
    let response = answerer.answer(&with_1232, source).unwrap();
    assert!(response.len() > 512);
    let message = Message::from_vec(&response).unwrap();
    assert!(!message.metadata.truncation);
    assert_eq!(message.answers.len(), 40);
    // EDNS 600: truncated, OPT (and ECS) kept.
    let with_600 = with_ecs(mid.clone(), "10.2.0.0/16");
    let mut with_600 = with_600;
    with_600.edns.as_mut().unwrap().set_max_payload(600);
    let response = answerer
        .answer(&with_600.to_vec().unwrap(), source)
        .unwrap();
    let message = truncated(&response, 600);
    assert_eq!(
        subnet(&message),
        Some(ClientSubnet::new(ip("10.2.0.0"), 16, 16))
    );
    // EDNS below 512 counts as 512.
    let response = answerer
        .answer(&with_edns(mid.clone(), 100).to_vec().unwrap(), source)
        .unwrap();
    truncated(&response, 512);

    // "big": over 1232 even when the client offers 4096; TCP carries it all.
    let big = with_edns(request("ws.mesh.example.net.", RecordType::A), 4096);
    let big_source = ip("10.3.0.1");
    for _ in 0..2 {
        let response = answerer.answer(&big.to_vec().unwrap(), big_source).unwrap();
        truncated(&response, usize::from(UDP_PAYLOAD_SIZE));
        let response = answerer
            .answer_tcp(&big.to_vec().unwrap(), big_source)
            .unwrap();
        assert!(response.len() > usize::from(UDP_PAYLOAD_SIZE));
        let message = Message::from_vec(&response).unwrap();
        assert!(!message.metadata.truncation);
        assert_eq!(message.answers.len(), 100);
    }
    // Region names are truncated the same way.
    let response = answerer
        .answer(
            &request("big.mesh.example.net.", RecordType::AAAA)
                .to_vec()
                .unwrap(),
            ELSEWHERE,
        )
        .unwrap();
    let message = Message::from_vec(&response).unwrap();
    assert!(!message.metadata.truncation, "10 AAAA fit in 512");
    let response = answerer
        .answer(
            &request("big.mesh.example.net.", RecordType::A)
                .to_vec()
                .unwrap(),
            ELSEWHERE,
        )
        .unwrap();
    truncated(&response, 512);
}

#[test]
fn aa_is_set_on_answers_and_clear_on_refused_and_errors() {
    let answerer = answerer();
    let cases = [
        (
            request("ws.mesh.example.net.", RecordType::A),
            ELSEWHERE,
            true,
        ),
        (
            request("mesh.example.net.", RecordType::TXT),
            ELSEWHERE,
            true,
        ),
        (
            request("no.mesh.example.net.", RecordType::A),
            ELSEWHERE,
            true,
        ),
        (request("example.com.", RecordType::A), ELSEWHERE, false),
        (
            request("ws.mesh.example.net.", RecordType::A),
            ip("172.16.0.1"),
            false,
        ),
    ];
    for (message, source, authoritative) in cases {
        let response = ask(&answerer, &message, source);
        assert_eq!(response.metadata.authoritative, authoritative, "{message}");
    }
}

#[test]
fn the_router_is_asked_once_per_ws_query_on_both_paths() {
    let answerer = answerer();
    let message = with_ecs(
        request("ws.mesh.example.net.", RecordType::A),
        "198.51.100.0/24",
    );
    for round in 1..=3 {
        ask(&answerer, &message, ELSEWHERE);
        assert_eq!(answerer.router.calls().len(), round);
    }
    assert_eq!(answerer.template_hits.load(Ordering::Relaxed), 2);
}

/// splitmix64: a small deterministic generator for the randomised tests.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A random, mostly well-formed request, biased towards what the fast path serves.
fn random_request(rng: &mut Prng) -> Vec<u8> {
    let label = *rng.pick(&[
        "ws", "ws", "ws", "ws", "ws", "ws", "eu", "big", "nowhere", "", "*", "x.ws",
    ]);
    let zone = *rng.pick(&[
        "mesh.example.net.",
        "mesh.example.net.",
        "mesh.example.net.",
        "mesh.example.net.",
        "example.org.",
    ]);
    let name: String = if label.is_empty() {
        zone.to_owned()
    } else {
        format!("{label}.{zone}")
    };
    let name: String = name
        .chars()
        .map(|c| {
            if rng.chance(20) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    let qtype = *rng.pick(&[
        RecordType::A,
        RecordType::A,
        RecordType::AAAA,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::ANY,
        RecordType::SOA,
    ]);
    let mut message = request(&name, qtype);
    message.metadata.id = rng.next() as u16;
    message.metadata.recursion_desired = rng.chance(50);
    message.metadata.checking_disabled = rng.chance(30);
    message.metadata.authentic_data = rng.chance(10);
    if rng.chance(3) {
        message.queries[0].set_query_class(DNSClass::CH);
    }
    if rng.chance(25) {
        return message.to_vec().unwrap();
    }
    let payload = *rng.pick(&[0u16, 512, 600, 1232, 1232, 4096]);
    let mut message = with_edns(message, payload);
    let edns = message.edns.as_mut().unwrap();
    edns.set_dnssec_ok(rng.chance(30));
    if rng.chance(3) {
        edns.set_version(1);
    }
    let options = match rng.below(10) {
        0 => Vec::new(),
        1 => rng.pick(&malformed_ecs_options()).1.clone(),
        2 => {
            // Another option before ECS: the full path handles it.
            let mut options = vec![0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
            options.extend(ecs_option(1, 24, 0, &[198, 51, 100]));
            options
        }
        _ => {
            let v6 = rng.chance(40);
            let (family, bits) = if v6 { (2u16, 128u8) } else { (1, 32) };
            let source = if rng.chance(10) {
                0
            } else {
                (rng.below(usize::from(bits)) + 1) as u8
            };
            let mut address: Vec<u8> = if v6 {
                let prefix = *rng.pick(&[
                    [0x20u8, 0x01, 0x0d, 0xb8, 0x00, 0xe0],
                    [0x20, 0x01, 0x0d, 0xb8, 0x0b, 0xad],
                    [0x20, 0x01, 0x0d, 0xb8, 0x0b, 0x16],
                    [0x20, 0x01, 0x0d, 0xb8, 0x00, 0x04],
                ]);
                prefix
                    .iter()
                    .copied()
                    .chain((0..10).map(|_| rng.next() as u8))
                    .collect()
            } else {
                let prefix = *rng.pick(&[
                    [198u8, 51, 100],
                    [100, 64, 7],
                    [10, 1, 9],
                    [10, 2, 3],
                    [10, 3, 1],
                    [172, 16, 4],
                    [192, 0, 2],
                ]);
                prefix.iter().copied().chain([rng.next() as u8]).collect()
            };
            address.truncate(usize::from(source).div_ceil(8));
            if source % 8 != 0 {
                if let Some(last) = address.last_mut() {
                    *last &= 0xff << (8 - source % 8);
                }
            }
            let scope = if rng.chance(10) { rng.next() as u8 } else { 0 };
            ecs_option(family, source, scope, &address)
        }
    };
    with_raw_options(message, &options)
}

fn random_source(rng: &mut Prng) -> IpAddr {
    *rng.pick(&[
        ip("198.51.100.20"),
        ip("::ffff:198.51.100.20"),
        ip("10.2.0.9"),
        ip("10.3.3.3"),
        ip("172.17.0.1"),
        ip("2001:db8:e0::1"),
        ip("2001:db8:4::4"),
        ELSEWHERE,
    ])
}

/// `bytes` with random damage: bit flips, truncation, bytes appended or a header count
/// changed.
fn mutate(rng: &mut Prng, mut bytes: Vec<u8>) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            for _ in 0..=rng.below(4) {
                if !bytes.is_empty() {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
        }
        1 => {
            let keep = rng.below(bytes.len() + 1);
            bytes.truncate(keep);
        }
        2 => bytes.extend((0..=rng.below(8)).map(|_| rng.next() as u8)),
        _ => {
            if bytes.len() >= 12 {
                let at = 4 + rng.below(8);
                bytes[at] = rng.next() as u8;
            }
        }
    }
    bytes
}

/// Checks what any answer to any input must satisfy, and that the fast path agrees with
/// the full path byte for byte.
fn check_any_input(answerer: &Answerer<FakeRouter>, request: &[u8], source: IpAddr) {
    let udp = answerer.answer(request, source);
    let full = answerer.answer_uncached(request, source);
    assert_eq!(udp, full, "fast and full paths differ for {request:02x?}");
    let tcp = answerer.answer_tcp(request, source);
    assert_eq!(udp.is_some(), tcp.is_some());
    for response in udp.iter().chain(tcp.iter()) {
        assert!(response.len() >= 12);
        assert_eq!(response[..2], request[..2], "ID echoed");
        assert_ne!(response[2] & FLAG_QR, 0, "QR set");
    }
    if let Some(response) = &udp {
        assert!(response.len() <= usize::from(UDP_PAYLOAD_SIZE));
    }
}

#[test]
fn fast_path_matches_full_path_byte_for_byte() {
    let answerer = answerer();
    let mut rng = Prng(7);
    for _ in 0..20_000 {
        let request = random_request(&mut rng);
        let source = random_source(&mut rng);
        check_any_input(&answerer, &request, source);
    }
    // The fast path was really taken, many times over.
    let hits = answerer.template_hits.load(Ordering::Relaxed);
    assert!(hits > 5_000, "{hits} template hits");
    let templates = answerer.templates.map.read().unwrap().len();
    assert!(
        templates > 10 && templates < TEMPLATE_CACHE_CAPACITY,
        "{templates}"
    );
}

#[test]
fn template_cache_is_bounded() {
    let answerer = answerer();
    let mut rng = Prng(11);
    let mut most = 0;
    for client in 0..3 * TEMPLATE_CACHE_CAPACITY as u32 {
        let [_, _, high, low] = client.to_be_bytes();
        let mut message = with_edns(request("ws.mesh.example.net.", RecordType::A), 1232);
        message.metadata.id = rng.next() as u16;
        let bytes = with_raw_options(message, &ecs_option(1, 32, 0, &[10, 9, high, low]));
        check_any_input(&answerer, &bytes, ELSEWHERE);
        let templates = answerer.templates.map.read().unwrap().len();
        assert!(templates <= TEMPLATE_CACHE_CAPACITY);
        most = most.max(templates);
    }
    assert_eq!(most, TEMPLATE_CACHE_CAPACITY);
}

#[test]
fn random_and_damaged_packets_never_panic() {
    let answerer = answerer();
    let mut rng = Prng(0x5eed);
    for _ in 0..5_000 {
        let length = rng.below(80);
        let noise: Vec<u8> = (0..length).map(|_| rng.next() as u8).collect();
        check_any_input(&answerer, &noise, random_source(&mut rng));
        // Noise behind a plausible query header reaches the body decoders.
        let mut headed = vec![
            rng.next() as u8,
            rng.next() as u8,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            rng.below(3) as u8,
        ];
        headed.extend_from_slice(&noise);
        check_any_input(&answerer, &headed, random_source(&mut rng));
    }
    for _ in 0..20_000 {
        let request = random_request(&mut rng);
        let damaged = mutate(&mut rng, request);
        check_any_input(&answerer, &damaged, random_source(&mut rng));
    }
}

#[test]
fn truncated_replies_echo_the_question_and_never_grow() {
    // id 0x1234, RD, one question "ws.x." A IN, plus an OPT record.
    let mut request = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    request.extend_from_slice(&[2, b'w', b's', 1, b'x', 0, 0, 1, 0, 1]);
    request.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
    let reply = super::truncated_reply(&request).unwrap();
    assert_eq!(reply[..2], [0x12, 0x34]);
    assert_eq!(reply[2], 0x80 | 0x04 | 0x02 | 0x01, "QR AA TC RD");
    assert_eq!(reply[4..12], [0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(reply[12..], request[12..22]);
    assert!(reply.len() <= request.len());
    // Nothing for what the answerer would not answer either.
    let mut response = request.clone();
    response[2] |= 0x80;
    let mut pointer = request[..12].to_vec();
    pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    let mut two = request.clone();
    two[5] = 2;
    for bad in [
        &request[..11],
        &request[..16],
        &response[..],
        &pointer[..],
        &two[..],
    ] {
        assert!(super::truncated_reply(bad).is_none(), "{bad:?}");
    }
    // Random bytes never panic.
    let mut seed = 0x9e37_79b9_u32;
    for _ in 0..10_000 {
        let len = (seed % 64) as usize;
        let packet: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        if let Some(reply) = super::truncated_reply(&packet) {
            assert!(reply.len() <= packet.len());
        }
    }
}
