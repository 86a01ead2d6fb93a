//! The full path: decode a request with `hickory-proto`, resolve it against the zone and the
//! [`Router`], encode the response (truncated to the client's limit over UDP).

use std::net::IpAddr;

use hickory_proto::op::{Edns, Header, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::rdata::{A, AAAA, HINFO};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::ecs::{client_network, ClientNetwork, Malformed};
use super::{
    Answerer, RouteAnswer, Router, CLASSIC_UDP_LIMIT, FLAG_CD, FLAG_QR, FLAG_RD, FLAG_TC,
    MAX_MESSAGE_SIZE, UDP_PAYLOAD_SIZE,
};

/// DNS type code of OPT.
const OPT_TYPE_CODE: u16 = 41;

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
pub(super) struct Outcome {
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
    /// The full path: decode, resolve and encode. `route` is the router's answer when the
    /// caller already asked it.
    pub(super) fn answer_full(
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
pub(super) fn response_limit(udp: bool, edns_payload: Option<u16>) -> usize {
    match (udp, edns_payload) {
        (false, _) => MAX_MESSAGE_SIZE,
        (true, Some(payload)) => usize::from(payload.min(UDP_PAYLOAD_SIZE)).max(CLASSIC_UDP_LIMIT),
        (true, None) => CLASSIC_UDP_LIMIT,
    }
}

/// A 12-byte response echoing the request's ID, opcode and RD with `rcode` and no sections.
pub(super) fn bare_error(header: &[u8; 12], rcode: ResponseCode) -> Vec<u8> {
    let mut response = vec![0u8; 12];
    response[0] = header[0];
    response[1] = header[1];
    // QR, the request's opcode and RD.
    response[2] = FLAG_QR | (header[2] & 0x79);
    response[3] = rcode.low() & 0x0f;
    response
}

pub(super) fn family_bits(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The ECS FAMILY of `address` (RFC 7871 §6, IANA address family numbers).
pub(super) fn family_number(address: IpAddr) -> u16 {
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

fn read_u16(decoder: &mut BinDecoder<'_>) -> Result<u16, Malformed> {
    decoder
        .read_u16()
        .map(|value| value.unverified())
        .map_err(|_| Malformed)
}
