//! The authoritative DNS front end for the routing zone: [`Answerer::answer`] turns one request
//! packet into one response packet (or nothing) and is pure apart from the [`Router`] callback it
//! asks where a client should go; [`serve_udp`] (blocking threads, one per CPU) and [`serve_tcp`]
//! (tokio tasks) are the thin shells that move packets between sockets and the answerer. The
//! geo-router implements [`Router`] with [`DnsRouter`] over the live
//! [`RouterState`](crate::router::RouterState); tests use a fake.
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
//! the geo-router's [`Router`] ([`DnsRouter`], which keeps its routing answers per client
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
//!
//! **Files.** This module holds the [`Answerer`], the [`Router`] trait and the zone's data;
//! `answer.rs` is the full path (decode, resolve, encode), `fast.rs` the byte
//! templates, `ecs.rs` the Client Subnet option parser, `serve.rs` the UDP/TCP shells and the
//! per-source limits, `adapter.rs` the [`DnsRouter`] over the live router state, and `tests.rs`
//! the answerer's unit tests.

mod adapter;
mod answer;
mod ecs;
mod fast;
mod serve;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{NS, SOA};
use hickory_proto::rr::{Name, RData, Record};

pub use crate::config::DEFAULT_TTL;
pub use adapter::DnsRouter;
use fast::TemplateCache;
pub use serve::{
    serve_tcp, serve_tcp_limited, serve_udp, serve_udp_limited, truncated_reply, SourceLimits,
    MAX_UDP_THREADS,
};

/// The EDNS UDP payload size this server advertises and the most it sends over UDP (the DNS
/// flag day 2020 value, which avoids IP fragmentation on common paths).
pub const UDP_PAYLOAD_SIZE: u16 = 1232;
/// The UDP response limit for a client without EDNS (RFC 1035).
const CLASSIC_UDP_LIMIT: usize = 512;
/// The largest DNS message (TCP framing is a 16-bit length).
const MAX_MESSAGE_SIZE: usize = 65535;
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
}
