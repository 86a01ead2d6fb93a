//! The fast path: a `ws.Z` `A`/`AAAA` request recognised from its bytes and answered from a
//! template that the full path encoded earlier (see the module documentation of [`super`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::answer::{family_bits, family_number, response_limit};
use super::ecs::{parse_ecs, ClientNetwork};
use super::{Answerer, RouteAnswer, Router, FLAG_CD, FLAG_RD, FLAG_TC};
use crate::quick_hash::QuickHash;

/// Fast-path templates kept before the cache is emptied: far more than the distinct
/// (region, scope, ECS shape) combinations a zone sees, and a bound on memory when a router's
/// answers churn.
pub(super) const TEMPLATE_CACHE_CAPACITY: usize = 1024;

/// A `ws.Z` `A`/`AAAA` request in the shape the fast path serves: QR clear, opcode QUERY, one
/// question written without compression, class IN, no answer or authority records, and at most
/// one OPT record (version 0, root owner) whose RDATA is empty or one valid ECS option, ending
/// the packet.
pub(super) struct FastRequest<'a> {
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
pub(super) struct TemplateKey {
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
pub(super) struct Template {
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
pub(super) struct TemplateCache {
    pub(super) map: RwLock<HashMap<TemplateKey, Template, QuickHash>>,
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
    /// `request` as a [`FastRequest`], or `None` when it needs the full path.
    pub(super) fn fast_request<'a>(&self, request: &'a [u8]) -> Option<FastRequest<'a>> {
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
    pub(super) fn answer_fast(
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
}
