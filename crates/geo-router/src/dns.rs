//! The authoritative DNS front end for the routing zone: [`Answerer::answer`] turns one request
//! packet into one response packet (or nothing) and is pure apart from the [`Router`] callback it
//! asks where a client should go; [`serve_udp`] and [`serve_tcp`] are the thin tokio shells that
//! move packets between sockets and the answerer. The geo-router binary will implement
//! [`Router`] with [`crate::geoip`] and [`crate::choose_region`]; tests use a fake.
//!
//! **Why not `hickory-server`.** Its `Catalog` rebuilds the response EDNS record itself and drops
//! the EDNS Client Subnet option, which is the one thing this server must echo. Decoding with
//! `hickory-proto`'s `Message::from_vec`, answering here and encoding with `to_vec` is smaller
//! than fighting that, and keeps the answering logic a plain function with fast tests.
//!
//! **What is answered** (zone `Z`, every rule unit-tested below):
//!
//! * `ws.Z` `A`/`AAAA`: the routed region's addresses of that family (the router is asked once
//!   per query). A region with no address of the family gives NODATA (NOERROR, no answers, the
//!   SOA in the authority section). A router answer with no addresses at all means no region is
//!   usable: SERVFAIL, so resolvers retry rather than cache a negative answer.
//! * `<region>.Z` `A`/`AAAA`: that region's addresses directly (`Router::region_addresses`),
//!   NODATA when it has none of the family. `ws` wins over a region of that name.
//! * `Z` (the apex): `SOA` and `NS` from [`ZoneConfig`].
//! * Other query types on those names: NODATA with the SOA.
//! * `ANY` on an existing name: per RFC 8482 §4.2, a single synthesised
//!   `HINFO "RFC8482" ""` record instead of everything, so the zone is no amplifier.
//! * Any other name inside the zone: NXDOMAIN with the SOA. Names outside the zone, and classes
//!   other than `IN`: REFUSED (not authoritative).
//! * Answers carry the configured TTL; the SOA in a negative answer carries
//!   `min(ttl, minimum)` (RFC 2308 §3). AA is set on every answer except REFUSED and errors.
//! * Names are matched case-insensitively; the question is echoed as asked.
//!
//! **EDNS.** When the request has an OPT record, the response has one too, advertising
//! [`UDP_PAYLOAD_SIZE`] (1232) and copying the DO bit (RFC 3225). A version other than 0 gets
//! BADVERS (RFC 6891 §6.1.3).
//!
//! **EDNS Client Subnet** (RFC 7871, option 8). hickory's `ClientSubnet` decoder silently ignores
//! extra address octets, so the option is parsed here from the raw OPT RDATA. An option with an
//! unknown family, a source prefix longer than the family, an address that is not exactly
//! `ceil(source / 8)` octets, or bits set beyond the source prefix is FORMERR (§7.1.1), as are
//! two ECS options. With a source prefix above 0 the router is asked about the ECS address and
//! prefix, and the response echoes family, source prefix and address with SCOPE set to what the
//! router reports (capped at the family's length; RFC 7871 allows scope > source). Answers that
//! do not depend on the client (static names, NODATA for other types, NXDOMAIN) echo scope 0.
//! With no ECS, or a source prefix of 0 (the client opting out, §7.1.2), the packet's source
//! address is routed and no ECS option is added.
//!
//! **Malformed requests.** Fewer than 12 bytes (no header): dropped. A request with QR set is
//! dropped too, not answered: replying to a response invites loops between two servers that
//! both answer errors. Opcode other than QUERY: NOTIMP. `qdcount != 1` or a body that does not
//! decode: FORMERR. These errors are a bare 12-byte header echoing ID, opcode and RD, since the
//! rest of the packet cannot be trusted. Nothing here panics on input (a test feeds random and
//! truncated packets).
//!
//! **Size.** Over UDP a response longer than the client's payload size (512 without EDNS, and
//! never above our 1232, to stay clear of fragmentation) is replaced by the header, question and
//! OPT with TC set and no records, and the client retries over TCP, where the limit is 65535.
//!
//! **Left to do.** Encoded answers are not cached: the SOA and NS records are built once, but
//! every response is encoded afresh (cheap at this zone's size; a bounded cache keyed by
//! qname, qtype, region and scope is the next step if profiles show it). No DNS cookies, no
//! per-client rate limiting, no TSIG.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, HINFO, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The EDNS UDP payload size this server advertises and the most it sends over UDP (the DNS
/// flag day 2020 value, which avoids IP fragmentation on common paths).
pub const UDP_PAYLOAD_SIZE: u16 = 1232;
/// The answer TTL when the configuration does not say otherwise: short, so routing changes
/// (drains, failovers) reach clients quickly.
pub const DEFAULT_TTL: u32 = 30;
/// The UDP response limit for a client without EDNS (RFC 1035).
const CLASSIC_UDP_LIMIT: usize = 512;
/// The largest DNS message (TCP framing is a 16-bit length).
const MAX_MESSAGE_SIZE: usize = 65535;
/// Open TCP connections served at once; further connections are closed straight away.
const MAX_TCP_CONNECTIONS: usize = 256;
/// Queries answered on one TCP connection before the server closes it.
const MAX_QUERIES_PER_TCP_CONNECTION: usize = 100;
/// How long a TCP connection may sit idle, or take to send one message or accept one response.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// EDNS option code of Client Subnet (RFC 7871).
const ECS_OPTION_CODE: u16 = 8;
/// DNS type code of OPT.
const OPT_TYPE_CODE: u16 = 41;

/// The zone this server is authoritative for and the data of its apex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The zone, fully qualified (`mesh.example.net.`).
    pub zone: Name,
    /// TTL of every answer, seconds.
    pub ttl: u32,
    /// SOA MNAME: the primary name server.
    pub mname: Name,
    /// SOA RNAME: the responsible mailbox, as a name (`hostmaster.mesh.example.net.`).
    pub rname: Name,
    /// SOA SERIAL.
    pub serial: u32,
    /// SOA REFRESH, seconds.
    pub refresh: i32,
    /// SOA RETRY, seconds.
    pub retry: i32,
    /// SOA EXPIRE, seconds.
    pub expire: i32,
    /// SOA MINIMUM: the negative-caching TTL (RFC 2308), seconds.
    pub minimum: u32,
    /// The zone's name servers, answered for `NS` at the apex.
    pub ns: Vec<Name>,
}

impl ZoneConfig {
    /// A zone with default TTL and SOA timers: MNAME is the first name server (or the apex when
    /// there is none), RNAME `hostmaster.<zone>`, serial 1.
    pub fn new(zone: Name, ns: Vec<Name>) -> Self {
        let mname = ns.first().cloned().unwrap_or_else(|| zone.clone());
        let rname = zone
            .prepend_label("hostmaster")
            .unwrap_or_else(|_| zone.clone());
        ZoneConfig {
            zone,
            ttl: DEFAULT_TTL,
            mname,
            rname,
            serial: 1,
            refresh: 3600,
            retry: 600,
            expire: 86400,
            minimum: DEFAULT_TTL,
            ns,
        }
    }
}

/// Where a client should go, as the router decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAnswer {
    /// The chosen region's name (for logs and metrics).
    pub region: String,
    /// The region's ingress addresses, both families; empty when no region is usable.
    pub addresses: Vec<IpAddr>,
    /// How wide a network the decision holds for (the GeoIP network's prefix length): the ECS
    /// scope prefix of the response.
    pub scope_prefix: u8,
}

/// The routing decisions the DNS answerer needs. Implementations must be quick and must not
/// block: they are called on the serving task for every `ws` query.
pub trait Router: Send + Sync {
    /// The region for a client at `client`; `ecs_prefix` is the ECS source prefix when `client`
    /// came from an ECS option (a network, not a host), `None` when it is the packet source.
    fn route(&self, client: IpAddr, ecs_prefix: Option<u8>) -> RouteAnswer;
    /// The addresses of the region called `name` (lower case), `None` when there is no such
    /// region.
    fn region_addresses(&self, name: &str) -> Option<Vec<IpAddr>>;
}

/// Answers DNS requests for one zone. Cheap to share behind an [`Arc`].
#[derive(Debug)]
pub struct Answerer<R> {
    config: ZoneConfig,
    router: R,
    /// The apex SOA with the answer TTL.
    soa: Record,
    /// The apex SOA with the negative-caching TTL, for authority sections.
    negative_soa: Record,
    ns: Vec<Record>,
}

/// A validated ECS option with a source prefix above 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientNetwork {
    address: IpAddr,
    source_prefix: u8,
}

/// The request is malformed beyond what hickory checks.
#[derive(Debug)]
struct Malformed;

/// The records and code of one response, before encoding.
struct Outcome {
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    /// ECS scope to echo; 0 when the answer does not depend on the client.
    scope: u8,
}

impl Outcome {
    fn code(rcode: ResponseCode) -> Self {
        Outcome {
            rcode,
            answers: Vec::new(),
            authorities: Vec::new(),
            scope: 0,
        }
    }
}

impl<R: Router> Answerer<R> {
    /// An answerer for `config`'s zone asking `router` where clients go.
    pub fn new(config: ZoneConfig, router: R) -> Self {
        let soa_data = RData::SOA(SOA::new(
            config.mname.clone(),
            config.rname.clone(),
            config.serial,
            config.refresh,
            config.retry,
            config.expire,
            config.minimum,
        ));
        let soa = Record::from_rdata(config.zone.clone(), config.ttl, soa_data.clone());
        let negative_soa = Record::from_rdata(
            config.zone.clone(),
            config.ttl.min(config.minimum),
            soa_data,
        );
        let ns = config
            .ns
            .iter()
            .map(|name| {
                Record::from_rdata(config.zone.clone(), config.ttl, RData::NS(NS(name.clone())))
            })
            .collect();
        Answerer {
            config,
            router,
            soa,
            negative_soa,
            ns,
        }
    }

    /// The zone this answerer serves.
    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// The response to a request that arrived over UDP from `source`, truncated to the client's
    /// payload size; `None` means send nothing.
    pub fn answer(&self, request: &[u8], source: IpAddr) -> Option<Vec<u8>> {
        self.answer_within(request, source, true)
    }

    /// The response to a request that arrived over TCP from `source` (limit 65535 bytes).
    pub fn answer_tcp(&self, request: &[u8], source: IpAddr) -> Option<Vec<u8>> {
        self.answer_within(request, source, false)
    }

    fn answer_within(&self, request: &[u8], source: IpAddr, udp: bool) -> Option<Vec<u8>> {
        let header: &[u8; 12] = request.get(..12)?.try_into().ok()?;
        if header[2] & 0x80 != 0 {
            return None;
        }
        let opcode = (header[2] >> 3) & 0x0f;
        if opcode != 0 {
            return Some(bare_error(header, ResponseCode::NotImp));
        }
        if u16::from_be_bytes([header[4], header[5]]) != 1 {
            return Some(bare_error(header, ResponseCode::FormErr));
        }
        let Ok(message) = Message::from_vec(request) else {
            return Some(bare_error(header, ResponseCode::FormErr));
        };
        let Some(query) = message.queries.first() else {
            return Some(bare_error(header, ResponseCode::FormErr));
        };

        let limit = if !udp {
            MAX_MESSAGE_SIZE
        } else {
            match &message.edns {
                Some(edns) => {
                    usize::from(edns.max_payload().min(UDP_PAYLOAD_SIZE)).max(CLASSIC_UDP_LIMIT)
                }
                None => CLASSIC_UDP_LIMIT,
            }
        };

        let (outcome, network) = match message.edns.as_ref().map(Edns::version) {
            Some(version) if version != 0 => (Outcome::code(ResponseCode::BADVERS), None),
            _ => match client_network(request) {
                Err(Malformed) => (Outcome::code(ResponseCode::FormErr), None),
                Ok(network) => {
                    let outcome = match network {
                        Some(net) => self.resolve(query, net.address, Some(net.source_prefix)),
                        None => self.resolve(query, source.to_canonical(), None),
                    };
                    (outcome, network)
                }
            },
        };

        let response = self.build_response(&message, query, outcome, network);
        let encoded = match response.to_vec() {
            Ok(encoded) => encoded,
            Err(_) => return Some(bare_error(header, ResponseCode::ServFail)),
        };
        if encoded.len() <= limit {
            return Some(encoded);
        }
        let mut truncated = response;
        truncated.answers.clear();
        truncated.authorities.clear();
        truncated.metadata.truncation = true;
        match truncated.to_vec() {
            Ok(encoded) if encoded.len() <= limit => Some(encoded),
            _ => {
                let mut bare = bare_error(header, ResponseCode::NoError);
                bare[2] |= 0x02; // TC
                Some(bare)
            }
        }
    }

    fn build_response(
        &self,
        request: &Message,
        query: &Query,
        outcome: Outcome,
        network: Option<ClientNetwork>,
    ) -> Message {
        let mut response = Message::response(request.metadata.id, OpCode::Query);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        response.metadata.authoritative = matches!(
            outcome.rcode,
            ResponseCode::NoError | ResponseCode::NXDomain
        );
        response.metadata.response_code = outcome.rcode;
        response.add_query(query.clone());
        response.answers = outcome.answers;
        response.authorities = outcome.authorities;
        if let Some(request_edns) = &request.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(UDP_PAYLOAD_SIZE);
            edns.set_version(0);
            edns.set_dnssec_ok(request_edns.flags().dnssec_ok);
            if let Some(net) = network {
                let scope = outcome.scope.min(family_bits(net.address));
                edns.options_mut()
                    .insert(EdnsOption::Subnet(ClientSubnet::new(
                        net.address,
                        net.source_prefix,
                        scope,
                    )));
            }
            response.set_edns(edns);
        }
        response
    }

    fn resolve(&self, query: &Query, client: IpAddr, ecs_prefix: Option<u8>) -> Outcome {
        let zone = &self.config.zone;
        let qname = query.name();
        if query.query_class() != DNSClass::IN || !zone.zone_of(qname) {
            return Outcome::code(ResponseCode::Refused);
        }
        let qtype = query.query_type();
        match qname.num_labels().saturating_sub(zone.num_labels()) {
            0 => match qtype {
                RecordType::SOA => self.positive(vec![self.soa.clone()], 0),
                RecordType::NS if !self.ns.is_empty() => self.positive(self.ns.clone(), 0),
                RecordType::ANY => self.positive(vec![self.rfc8482(qname)], 0),
                _ => self.nodata(0),
            },
            1 => {
                let label = qname
                    .iter()
                    .next()
                    .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
                    .unwrap_or_default();
                if label == "ws" {
                    match qtype {
                        RecordType::A | RecordType::AAAA => {
                            let route = self.router.route(client, ecs_prefix);
                            if route.addresses.is_empty() {
                                let mut outcome = Outcome::code(ResponseCode::ServFail);
                                outcome.scope = route.scope_prefix;
                                return outcome;
                            }
                            self.addresses(qname, qtype, &route.addresses, route.scope_prefix)
                        }
                        RecordType::ANY => self.positive(vec![self.rfc8482(qname)], 0),
                        _ => self.nodata(0),
                    }
                } else {
                    match self.router.region_addresses(&label) {
                        None => {
                            let mut outcome = Outcome::code(ResponseCode::NXDomain);
                            outcome.authorities.push(self.negative_soa.clone());
                            outcome
                        }
                        Some(addresses) => match qtype {
                            RecordType::A | RecordType::AAAA => {
                                self.addresses(qname, qtype, &addresses, 0)
                            }
                            RecordType::ANY => self.positive(vec![self.rfc8482(qname)], 0),
                            _ => self.nodata(0),
                        },
                    }
                }
            }
            _ => {
                let mut outcome = Outcome::code(ResponseCode::NXDomain);
                outcome.authorities.push(self.negative_soa.clone());
                outcome
            }
        }
    }

    /// `A` or `AAAA` records for the addresses of `qtype`'s family, or NODATA.
    fn addresses(
        &self,
        qname: &Name,
        qtype: RecordType,
        addresses: &[IpAddr],
        scope: u8,
    ) -> Outcome {
        let records: Vec<Record> = addresses
            .iter()
            .filter_map(|address| match (qtype, address) {
                (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(*v4))),
                (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(*v6))),
                _ => None,
            })
            .map(|data| Record::from_rdata(qname.clone(), self.config.ttl, data))
            .collect();
        if records.is_empty() {
            self.nodata(scope)
        } else {
            self.positive(records, scope)
        }
    }

    fn positive(&self, answers: Vec<Record>, scope: u8) -> Outcome {
        Outcome {
            rcode: ResponseCode::NoError,
            answers,
            authorities: Vec::new(),
            scope,
        }
    }

    fn nodata(&self, scope: u8) -> Outcome {
        Outcome {
            rcode: ResponseCode::NoError,
            answers: Vec::new(),
            authorities: vec![self.negative_soa.clone()],
            scope,
        }
    }

    /// RFC 8482 §4.2's minimal answer to `ANY`.
    fn rfc8482(&self, qname: &Name) -> Record {
        Record::from_rdata(
            qname.clone(),
            self.config.ttl,
            RData::HINFO(HINFO::new("RFC8482".to_owned(), String::new())),
        )
    }
}

/// A 12-byte response echoing the request's ID, opcode and RD with `rcode` and no sections.
fn bare_error(header: &[u8; 12], rcode: ResponseCode) -> Vec<u8> {
    let mut response = vec![0u8; 12];
    response[0] = header[0];
    response[1] = header[1];
    // QR, the request's opcode and RD.
    response[2] = 0x80 | (header[2] & 0x79);
    response[3] = rcode.low() & 0x0f;
    response
}

fn family_bits(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The request's ECS network, read from the raw packet (which `Message::from_vec` has already
/// accepted, so only the OPT record is looked at closely). `None` without ECS or with a source
/// prefix of 0.
fn client_network(request: &[u8]) -> Result<Option<ClientNetwork>, Malformed> {
    let mut decoder = BinDecoder::new(request);
    let header = hickory_proto::op::Header::read(&mut decoder).map_err(|_| Malformed)?;
    for _ in 0..header.counts.queries {
        Query::read(&mut decoder).map_err(|_| Malformed)?;
    }
    let records = usize::from(header.counts.answers)
        + usize::from(header.counts.authorities)
        + usize::from(header.counts.additionals);
    let mut network = None;
    let mut seen_ecs = false;
    for _ in 0..records {
        Name::read(&mut decoder).map_err(|_| Malformed)?;
        let rtype = read_u16(&mut decoder)?;
        decoder.read_slice(6).map_err(|_| Malformed)?; // class, TTL
        let length = read_u16(&mut decoder)?;
        let rdata = decoder
            .read_slice(usize::from(length))
            .map_err(|_| Malformed)?
            .unverified();
        if rtype != OPT_TYPE_CODE {
            continue;
        }
        let mut options = rdata;
        while !options.is_empty() {
            let (code, rest) = split_u16(options)?;
            let (length, rest) = split_u16(rest)?;
            let data = rest.get(..usize::from(length)).ok_or(Malformed)?;
            options = rest.get(usize::from(length)..).ok_or(Malformed)?;
            if code == ECS_OPTION_CODE {
                if seen_ecs {
                    return Err(Malformed);
                }
                seen_ecs = true;
                network = parse_ecs(data)?;
            }
        }
    }
    Ok(network)
}

fn read_u16(decoder: &mut BinDecoder<'_>) -> Result<u16, Malformed> {
    decoder
        .read_u16()
        .map(|value| value.unverified())
        .map_err(|_| Malformed)
}

fn split_u16(bytes: &[u8]) -> Result<(u16, &[u8]), Malformed> {
    match bytes {
        [high, low, rest @ ..] => Ok((u16::from_be_bytes([*high, *low]), rest)),
        _ => Err(Malformed),
    }
}

/// RFC 7871 §6 option data: FAMILY, SOURCE PREFIX, SCOPE PREFIX, then exactly
/// `ceil(source / 8)` address octets with no bits set past the source prefix.
fn parse_ecs(data: &[u8]) -> Result<Option<ClientNetwork>, Malformed> {
    let (family, rest) = split_u16(data)?;
    let [source_prefix, _scope, address @ ..] = rest else {
        return Err(Malformed);
    };
    let source_prefix = *source_prefix;
    let max_bits: u8 = match family {
        1 => 32,
        2 => 128,
        _ => return Err(Malformed),
    };
    if source_prefix > max_bits || address.len() != usize::from(source_prefix).div_ceil(8) {
        return Err(Malformed);
    }
    let spare_bits = source_prefix % 8;
    if spare_bits != 0 {
        let last = address.last().copied().unwrap_or(0);
        if last & (0xff >> spare_bits) != 0 {
            return Err(Malformed);
        }
    }
    if source_prefix == 0 {
        return Ok(None);
    }
    let address = if family == 1 {
        let mut octets = [0u8; 4];
        octets[..address.len()].copy_from_slice(address);
        IpAddr::V4(Ipv4Addr::from(octets))
    } else {
        let mut octets = [0u8; 16];
        octets[..address.len()].copy_from_slice(address);
        IpAddr::V6(Ipv6Addr::from(octets))
    };
    Ok(Some(ClientNetwork {
        address,
        source_prefix,
    }))
}

/// Answers queries arriving on `socket` until `shutdown` completes. Each datagram is answered
/// inline: answering is a quick synchronous computation, so a task per packet would cost more
/// than it saves. Receive errors (such as ICMP port-unreachable reports surfacing on some
/// platforms) and send errors concern one client, so they are skipped rather than ending the
/// loop.
pub async fn serve_udp<R: Router>(
    socket: UdpSocket,
    answerer: Arc<Answerer<R>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut buffer = vec![0u8; MAX_MESSAGE_SIZE];
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            received = socket.recv_from(&mut buffer) => {
                let Ok((length, peer)) = received else { continue };
                let request = buffer.get(..length).unwrap_or_default();
                if let Some(response) = answerer.answer(request, peer.ip().to_canonical()) {
                    let _ = socket.send_to(&response, peer).await;
                }
            }
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
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        continue; // dropping the stream closes it
                    };
                    let answerer = Arc::clone(&answerer);
                    connections.spawn(async move {
                        let _slot = slot;
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
        let Some(response) = answerer.answer_tcp(request, source) else {
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
