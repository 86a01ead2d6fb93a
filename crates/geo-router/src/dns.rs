//! The authoritative DNS front end for the routing zone: [`Answerer::answer`] turns one request
//! packet into one response packet (or nothing) and is pure apart from the [`Router`] callback it
//! asks where a client should go; [`serve_udp`] (blocking threads, one per CPU) and [`serve_tcp`]
//! (tokio tasks) are the thin shells that move packets between sockets and the answerer. The geo-router binary will implement
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
//! * Any other name inside the zone (deeper names, and `*.Z`, which is a name like any other
//!   here): NXDOMAIN with the SOA. Names outside the zone, and classes other than `IN`: REFUSED
//!   (not authoritative).
//! * Answers carry the configured TTL; the SOA in a negative answer carries
//!   `min(ttl, minimum)` (RFC 2308 §3). AA is set on every answer except REFUSED and errors.
//! * Names are matched case-insensitively; the question is echoed as asked.
//!
//! **EDNS.** When the request has an OPT record, the response has one too, advertising
//! [`UDP_PAYLOAD_SIZE`] (1232) and copying the DO bit (RFC 3225). A version other than 0 gets
//! BADVERS (RFC 6891 §6.1.3).
//!
//! **EDNS Client Subnet** (RFC 7871, option 8). hickory's `ClientSubnet` decoder silently ignores
//! extra address octets and rejects some other faults by failing the whole message, so the
//! option is parsed here from the raw OPT RDATA. An option with an unknown family, a source
//! prefix longer than the family, an address that is not exactly `ceil(source / 8)` octets, or
//! bits set beyond the source prefix is FORMERR (§7.1.1), as are two ECS options; whichever the
//! fault, that FORMERR echoes the question and carries an OPT record (without ECS), so clients
//! can match it to their query. With a source prefix above 0 the router is asked about the ECS
//! address and prefix, and the response echoes family, source prefix and address with SCOPE set
//! to what the router reports (capped at the family's length; RFC 7871 allows scope > source).
//! Answers that do not depend on the client (static names, NODATA for other types, NXDOMAIN)
//! echo scope 0. With no ECS, or a source prefix of 0 (the client opting out, §7.1.2), the
//! packet's source address is routed and no ECS option is added.
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
//! **Fast path.** Nearly all traffic is `ws.Z` `A`/`AAAA` from resolvers that send one plain
//! question and at most an OPT record holding one ECS option. Such a request is recognised from
//! its bytes without decoding it, the router is asked as usual, and the response is copied from
//! a template: a response the full path encoded earlier for the same query type, router answer
//! (addresses and capped scope), EDNS presence, DO bit and ECS family and source prefix. Only the
//! ID, the RD and CD bits, the question name's bytes (its case) and the echoed ECS address
//! octets differ between requests with the same key, and those sit at fixed offsets: the
//! answers' owner names are compression pointers to the question and the OPT record, with ECS
//! as its only option, ends the packet. A NODATA template also holds names (the SOA's) whose
//! compression depends on the question's exact bytes, so it serves only byte-equal questions.
//! Everything else, and a template too large for the client's limit, takes the full path, which
//! fills the cache. The cache holds at most 1024 templates and is emptied when full; its keys
//! hold everything a response's bytes depend on, so a router that changes its answers gets new
//! templates and never a stale one. A test checks that both paths give byte-identical responses
//! for random and malformed requests; [`Answerer::answer_uncached`] is the full path alone. With
//! the geo-router's [`Router`] (`router::DnsRouter`, which keeps its routing answers per client
//! address until the router's inputs change), a cached answer costs about 2,200 instructions
//! from `recvfrom` to `sendto` (`bench/dns/profile.sh`).
//!
//! **Per-source limits** ([`SourceLimits`], config `dns_limits`), keyed by the client network of
//! the packet's source address (/24 for IPv4, /48 for IPv6; never the ECS address, which anyone
//! can write). Over UDP, a token bucket per network (default 1000 responses/s, bursts of 2000):
//! over the limit a request gets a truncated reply instead of its answer: the header and the
//! question with TC=1 and no records or OPT, never bigger than the request. A real resolver then
//! asks again over TCP, which needs a handshake a spoofed source cannot complete, so a flood
//! with forged sources reflects at most 1:1 and amplifies nothing, and a real resolver over the
//! limit is slowed, not cut off (BIND's RRL "slip 1"). Requests the answerer would drop are
//! still dropped. Over TCP, at most `tcp_per_network` (default 32) of the 256 connection slots
//! are held by one network at once; a connection over that is closed on accept.
//!
//! **Left to do.** No DNS cookies, no TSIG.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, HINFO, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::quick_hash::QuickHash;

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
/// Fast-path templates kept before the cache is emptied: far more than the distinct
/// (region, scope, ECS shape) combinations a zone sees, and a bound on memory when a router's
/// answers churn.
const TEMPLATE_CACHE_CAPACITY: usize = 1024;
/// Header flag bits (third and fourth octets).
const FLAG_QR: u8 = 0x80;
const FLAG_TC: u8 = 0x02;
const FLAG_RD: u8 = 0x01;
const FLAG_CD: u8 = 0x10;

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
    pub region: Arc<str>,
    /// The region's ingress addresses, both families; empty when no region is usable. Shared,
    /// so that a router can hand out a cached answer without copying it.
    pub addresses: Arc<[IpAddr]>,
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
    /// Called by [`serve_udp`] and [`serve_tcp`] once per request packet with its response
    /// (`None`: dropped), for metrics. Must be quick. The default does nothing.
    fn observe(&self, _request: &[u8], _response: Option<&[u8]>) {}
    /// Called when a per-network limit acted (`truncated` or `tcp_refused`), for metrics.
    fn limited(&self, _action: &'static str) {}
}

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
    /// The labels of `ws.Z` in lower case: the name the fast path recognises (`None` when the
    /// name would be too long, so every request takes the full path).
    ws_labels: Option<Vec<Vec<u8>>>,
    /// Encoded `ws` responses for the fast path.
    templates: TemplateCache,
    /// Requests the fast path answered from a template (tests check it is taken).
    #[cfg(test)]
    template_hits: std::sync::atomic::AtomicUsize,
}

/// A validated ECS option with a source prefix above 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClientNetwork {
    address: IpAddr,
    source_prefix: u8,
}

/// The request is malformed beyond what hickory checks.
#[derive(Debug, Clone, Copy)]
struct Malformed;

/// The request's question and OPT record, read from the raw packet.
struct ScannedRequest {
    query: Query,
    opt: Option<RawOpt>,
}

/// The first OPT record of a request's additional section.
struct RawOpt {
    /// The requestor's UDP payload size (the record's CLASS).
    max_payload: u16,
    version: u8,
    dnssec_ok: bool,
    /// The ECS option: `Ok(None)` without one or with source prefix 0, `Err` when it (or the
    /// option list holding it) is malformed.
    ecs: Result<Option<ClientNetwork>, Malformed>,
}

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

/// A `ws.Z` `A`/`AAAA` request in the shape the fast path serves: QR clear, opcode QUERY, one
/// question written without compression, class IN, no answer or authority records, and at most
/// one OPT record (version 0, root owner) whose RDATA is empty or one valid ECS option, ending
/// the packet.
struct FastRequest<'a> {
    /// Where the question name ends (it starts at 12, right after the header).
    name_end: usize,
    qtype: u16,
    /// The OPT record's payload size and DO bit; `None` without EDNS.
    edns: Option<(u16, bool)>,
    network: Option<ClientNetwork>,
    /// The ECS address octets as sent, echoed unchanged; empty without ECS.
    ecs_address: &'a [u8],
}

/// Everything the bytes of a fast-path response depend on, apart from what is patched in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TemplateKey {
    qtype: u16,
    /// The router's addresses, both families, in its order.
    addresses: Arc<[IpAddr]>,
    /// The ECS scope echoed (capped at the family's length); 0 without ECS.
    scope: u8,
    /// DO bit and ECS (family, source prefix); `None` without EDNS.
    edns: Option<(bool, Option<(u16, u8)>)>,
}

/// A response encoded by the full path, to be copied and patched.
#[derive(Debug)]
struct Template {
    bytes: Vec<u8>,
    /// The response holds names besides the answers' owners (a NODATA SOA), whose compression
    /// depends on the question's exact bytes: it serves only a byte-equal question.
    question_exact: bool,
}

impl Template {
    /// A template from a full-path response to a fast-path request, if that response can be
    /// one: complete (not truncated) and a NOERROR or SERVFAIL answer.
    fn from_response(response: &[u8]) -> Option<Self> {
        let flags = *response.get(2)?;
        let rcode = response.get(3)? & 0x0f;
        let authorities = response.get(8..10)?;
        if response.len() <= 12
            || flags & FLAG_TC != 0
            || !(rcode == ResponseCode::NoError.low() || rcode == ResponseCode::ServFail.low())
        {
            return None;
        }
        Some(Template {
            question_exact: authorities != [0, 0],
            bytes: response.to_vec(),
        })
    }

    /// This template as the response to `request`, `None` when it does not fit `limit` or
    /// needs a byte-equal question and `request` has another.
    fn respond(&self, request: &[u8], fast: &FastRequest<'_>, limit: usize) -> Option<Vec<u8>> {
        if self.bytes.len() > limit {
            return None;
        }
        let question = request.get(12..fast.name_end)?;
        if self.question_exact && self.bytes.get(12..fast.name_end)? != question {
            return None;
        }
        let mut response = self.bytes.clone();
        response.get_mut(..2)?.copy_from_slice(request.get(..2)?);
        let (request_flags, request_flags2) = (*request.get(2)?, *request.get(3)?);
        let flags = response.get_mut(2)?;
        *flags = (*flags & !FLAG_RD) | (request_flags & FLAG_RD);
        let flags2 = response.get_mut(3)?;
        *flags2 = (*flags2 & !FLAG_CD) | (request_flags2 & FLAG_CD);
        response
            .get_mut(12..fast.name_end)?
            .copy_from_slice(question);
        if !fast.ecs_address.is_empty() {
            let start = response.len().checked_sub(fast.ecs_address.len())?;
            response.get_mut(start..)?.copy_from_slice(fast.ecs_address);
        }
        Some(response)
    }
}

/// The fast path's templates: a small map behind a read-mostly lock, emptied when full.
#[derive(Debug, Default)]
struct TemplateCache {
    map: RwLock<HashMap<TemplateKey, Template, QuickHash>>,
}

impl TemplateCache {
    fn respond(
        &self,
        key: &TemplateKey,
        request: &[u8],
        fast: &FastRequest<'_>,
        limit: usize,
    ) -> Option<Vec<u8>> {
        // A panic elsewhere cannot leave the map half-updated in a way that matters: at worst
        // a template is missing.
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        map.get(key)?.respond(request, fast, limit)
    }

    fn insert(&self, key: TemplateKey, template: Template) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= TEMPLATE_CACHE_CAPACITY && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, template);
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
        let ws_labels = config
            .zone
            .prepend_label("ws")
            .ok()
            .map(|ws| ws.iter().map(<[u8]>::to_ascii_lowercase).collect());
        Answerer {
            config,
            router,
            soa,
            negative_soa,
            ns,
            ws_labels,
            templates: TemplateCache::default(),
            #[cfg(test)]
            template_hits: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The zone this answerer serves.
    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// The router it asks.
    pub fn router(&self) -> &R {
        &self.router
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

    /// What [`Answerer::answer`] returns, computed by the full path alone (decode, resolve,
    /// encode) without the template cache: for benchmarks and for checking the fast path, which
    /// must give the same bytes.
    pub fn answer_uncached(&self, request: &[u8], source: IpAddr) -> Option<Vec<u8>> {
        self.answer_full(request, source, true, None)
    }

    fn answer_within(&self, request: &[u8], source: IpAddr, udp: bool) -> Option<Vec<u8>> {
        match self.fast_request(request) {
            Some(fast) => self.answer_fast(request, source, udp, &fast),
            None => self.answer_full(request, source, udp, None),
        }
    }

    /// `request` as a [`FastRequest`], or `None` when it needs the full path.
    fn fast_request<'a>(&self, request: &'a [u8]) -> Option<FastRequest<'a>> {
        let [_, _, flags, _, 0, 1, 0, 0, 0, 0, 0, additionals, ..] = *request else {
            return None;
        };
        // QR clear and opcode QUERY; one question and nothing else but perhaps the OPT record.
        if flags & 0xf8 != 0 || additionals > 1 {
            return None;
        }
        let mut at = 12;
        for expected in self.ws_labels.as_ref()? {
            let length = usize::from(*request.get(at)?);
            let label = request.get(at + 1..at + 1 + length)?;
            if length != expected.len() || !label.eq_ignore_ascii_case(expected) {
                return None;
            }
            at += 1 + length;
        }
        let name_end = at + 1;
        let [0, type_high, type_low, 0, 1, ref rest @ ..] = *request.get(at..)? else {
            return None;
        };
        let qtype = u16::from_be_bytes([type_high, type_low]);
        if qtype != u16::from(RecordType::A) && qtype != u16::from(RecordType::AAAA) {
            return None;
        }
        let mut fast = FastRequest {
            name_end,
            qtype,
            edns: None,
            network: None,
            ecs_address: &[],
        };
        if additionals == 0 {
            return rest.is_empty().then_some(fast);
        }
        // OPT: root owner, TYPE 41, CLASS = payload, TTL = extended RCODE, version 0 and flags.
        let [0, 0, 41, payload_high, payload_low, _, 0, flags_high, _, length_high, length_low, ref rdata @ ..] =
            *rest
        else {
            return None;
        };
        if rdata.len() != usize::from(u16::from_be_bytes([length_high, length_low])) {
            return None;
        }
        fast.edns = Some((
            u16::from_be_bytes([payload_high, payload_low]),
            flags_high & 0x80 != 0,
        ));
        if rdata.is_empty() {
            return Some(fast);
        }
        let [0, 8, option_high, option_low, ref data @ ..] = *rdata else {
            return None;
        };
        if data.len() != usize::from(u16::from_be_bytes([option_high, option_low])) {
            return None;
        }
        fast.network = parse_ecs(data).ok()?;
        if fast.network.is_some() {
            fast.ecs_address = data.get(4..)?;
        }
        Some(fast)
    }

    /// Answers a [`FastRequest`] from a template, or by the full path (with the router's
    /// answer, so the router is still asked once) and keeps the result as a template.
    fn answer_fast(
        &self,
        request: &[u8],
        source: IpAddr,
        udp: bool,
        fast: &FastRequest<'_>,
    ) -> Option<Vec<u8>> {
        let RouteAnswer {
            region,
            addresses,
            scope_prefix,
        } = match fast.network {
            Some(net) => self.router.route(net.address, Some(net.source_prefix)),
            None => self.router.route(source.to_canonical(), None),
        };
        let key = TemplateKey {
            qtype: fast.qtype,
            addresses,
            scope: fast
                .network
                .map_or(0, |net| scope_prefix.min(family_bits(net.address))),
            edns: fast.edns.map(|(_, dnssec_ok)| {
                let ecs = fast
                    .network
                    .map(|net| (family_number(net.address), net.source_prefix));
                (dnssec_ok, ecs)
            }),
        };
        let limit = response_limit(udp, fast.edns.map(|(payload, _)| payload));
        if let Some(response) = self.templates.respond(&key, request, fast, limit) {
            #[cfg(test)]
            self.template_hits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Some(response);
        }
        let route = RouteAnswer {
            region,
            addresses: Arc::clone(&key.addresses),
            scope_prefix,
        };
        let response = self.answer_full(request, source, udp, Some(route))?;
        if let Some(template) = Template::from_response(&response) {
            self.templates.insert(key, template);
        }
        Some(response)
    }

    /// The full path: decode, resolve and encode. `route` is the router's answer when the
    /// caller already asked it.
    fn answer_full(
        &self,
        request: &[u8],
        source: IpAddr,
        udp: bool,
        route: Option<RouteAnswer>,
    ) -> Option<Vec<u8>> {
        let header: &[u8; 12] = request.get(..12)?.try_into().ok()?;
        if header[2] & FLAG_QR != 0 {
            return None;
        }
        let opcode = (header[2] >> 3) & 0x0f;
        if opcode != 0 {
            return Some(bare_error(header, ResponseCode::NotImp));
        }
        if u16::from_be_bytes([header[4], header[5]]) != 1 {
            return Some(bare_error(header, ResponseCode::FormErr));
        }
        // hickory validates the whole message; the question and OPT record are read from the
        // bytes, so that a malformed ECS option that hickory rejects with the whole message
        // still gets a FORMERR that echoes the question.
        let decodes = Message::from_vec(request).is_ok();
        let Ok(ScannedRequest { query, opt }) = scan_request(request) else {
            return Some(bare_error(header, ResponseCode::FormErr));
        };

        let (outcome, network) = match &opt {
            Some(opt) if opt.version != 0 => (Outcome::code(ResponseCode::BADVERS), None),
            Some(RawOpt { ecs: Err(_), .. }) => (Outcome::code(ResponseCode::FormErr), None),
            _ if !decodes => return Some(bare_error(header, ResponseCode::FormErr)),
            _ => {
                let network = opt.as_ref().and_then(|opt| opt.ecs.ok().flatten());
                let outcome = match network {
                    Some(net) => self.resolve(&query, net.address, Some(net.source_prefix), route),
                    None => self.resolve(&query, source.to_canonical(), None, route),
                };
                (outcome, network)
            }
        };

        let limit = response_limit(udp, opt.as_ref().map(|opt| opt.max_payload));
        let response = self.build_response(header, opt.as_ref(), query, outcome, network);
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
                bare[2] |= FLAG_TC;
                Some(bare)
            }
        }
    }

    fn build_response(
        &self,
        header: &[u8; 12],
        opt: Option<&RawOpt>,
        query: Query,
        outcome: Outcome,
        network: Option<ClientNetwork>,
    ) -> Message {
        let mut response =
            Message::response(u16::from_be_bytes([header[0], header[1]]), OpCode::Query);
        response.metadata.recursion_desired = header[2] & FLAG_RD != 0;
        response.metadata.checking_disabled = header[3] & FLAG_CD != 0;
        response.metadata.authoritative = matches!(
            outcome.rcode,
            ResponseCode::NoError | ResponseCode::NXDomain
        );
        response.metadata.response_code = outcome.rcode;
        response.add_query(query);
        response.answers = outcome.answers;
        response.authorities = outcome.authorities;
        if let Some(opt) = opt {
            let mut edns = Edns::new();
            edns.set_max_payload(UDP_PAYLOAD_SIZE);
            edns.set_version(0);
            edns.set_dnssec_ok(opt.dnssec_ok);
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

    /// The outcome of `query` from `client`; `route` is the router's answer when the caller
    /// already asked it (it is only used for `ws` `A`/`AAAA`).
    fn resolve(
        &self,
        query: &Query,
        client: IpAddr,
        ecs_prefix: Option<u8>,
        route: Option<RouteAnswer>,
    ) -> Outcome {
        let zone = &self.config.zone;
        let qname = query.name();
        if query.query_class() != DNSClass::IN || !zone.zone_of(qname) {
            return Outcome::code(ResponseCode::Refused);
        }
        let qtype = query.query_type();
        // Labels are counted plainly: `Name::num_labels` does not count a leading `*`, which
        // would make `*.Z` the apex.
        match qname.iter().count().saturating_sub(zone.iter().count()) {
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
                            let route =
                                route.unwrap_or_else(|| self.router.route(client, ecs_prefix));
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

/// The most a response may take: 65535 over TCP; over UDP the client's EDNS payload size
/// (values under 512 count as 512, RFC 6891 §6.2.3) but never above ours, or 512 without EDNS.
fn response_limit(udp: bool, edns_payload: Option<u16>) -> usize {
    match (udp, edns_payload) {
        (false, _) => MAX_MESSAGE_SIZE,
        (true, Some(payload)) => usize::from(payload.min(UDP_PAYLOAD_SIZE)).max(CLASSIC_UDP_LIMIT),
        (true, None) => CLASSIC_UDP_LIMIT,
    }
}

/// A 12-byte response echoing the request's ID, opcode and RD with `rcode` and no sections.
fn bare_error(header: &[u8; 12], rcode: ResponseCode) -> Vec<u8> {
    let mut response = vec![0u8; 12];
    response[0] = header[0];
    response[1] = header[1];
    // QR, the request's opcode and RD.
    response[2] = FLAG_QR | (header[2] & 0x79);
    response[3] = rcode.low() & 0x0f;
    response
}

fn family_bits(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The ECS FAMILY of `address` (RFC 7871 §6, IANA address family numbers).
fn family_number(address: IpAddr) -> u16 {
    match address {
        IpAddr::V4(_) => 1,
        IpAddr::V6(_) => 2,
    }
}

/// The request's first question and the first OPT record of its additional section, read
/// from the raw packet with hickory's primitive decoders. Structural faults (a name or record
/// running past the end) are `Err`; a malformed ECS option is reported in [`RawOpt::ecs`].
fn scan_request(request: &[u8]) -> Result<ScannedRequest, Malformed> {
    let mut decoder = BinDecoder::new(request);
    let header = Header::read(&mut decoder).map_err(|_| Malformed)?;
    let mut query = None;
    for _ in 0..header.counts.queries {
        let read = Query::read(&mut decoder).map_err(|_| Malformed)?;
        query.get_or_insert(read);
    }
    let query = query.ok_or(Malformed)?;
    let before_additionals =
        usize::from(header.counts.answers) + usize::from(header.counts.authorities);
    let records = before_additionals + usize::from(header.counts.additionals);
    let mut opt = None;
    for index in 0..records {
        Name::read(&mut decoder).map_err(|_| Malformed)?;
        let rtype = read_u16(&mut decoder)?;
        let class = read_u16(&mut decoder)?;
        let ttl = decoder
            .read_u32()
            .map(|ttl| ttl.unverified())
            .map_err(|_| Malformed)?;
        let length = read_u16(&mut decoder)?;
        let rdata = decoder
            .read_slice(usize::from(length))
            .map_err(|_| Malformed)?
            .unverified();
        if index < before_additionals || rtype != OPT_TYPE_CODE || opt.is_some() {
            continue;
        }
        let [_, version, flags, _] = ttl.to_be_bytes();
        opt = Some(RawOpt {
            max_payload: class,
            version,
            dnssec_ok: flags & 0x80 != 0,
            ecs: client_network(rdata),
        });
    }
    Ok(ScannedRequest { query, opt })
}

/// The ECS network in an OPT record's RDATA: `None` without ECS or with a source prefix of 0;
/// `Err` for a malformed option list, a malformed ECS option or two of them.
fn client_network(rdata: &[u8]) -> Result<Option<ClientNetwork>, Malformed> {
    let mut network = None;
    let mut seen_ecs = false;
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

/// Answers queries arriving on `socket` until `shutdown` completes.
///
/// The socket is served by plain threads doing blocking `recv_from`/`send_to` (one per CPU this
/// process may run on, at most [`MAX_UDP_THREADS`], sharing the socket), not by tokio tasks:
/// answering is a quick synchronous computation, and a blocking receive costs one system call
/// per datagram where the async loop paid for readiness polls, an extra failed `recvfrom` and
/// wake-ups of the runtime between bursts (gdnsd serves UDP the same way). Each thread checks
/// for shutdown at least every [`UDP_SHUTDOWN_POLL`]; this returns once all of them have
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::str::FromStr;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    use hickory_proto::rr::rdata::opt::EdnsCode;

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
}
