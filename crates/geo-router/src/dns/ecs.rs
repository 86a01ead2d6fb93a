//! EDNS Client Subnet (RFC 7871): the option parser, shared by the full and the fast path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// EDNS option code of Client Subnet (RFC 7871).
pub(super) const ECS_OPTION_CODE: u16 = 8;

/// A validated ECS option with a source prefix above 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ClientNetwork {
    pub(super) address: IpAddr,
    pub(super) source_prefix: u8,
}

/// The request is malformed beyond what hickory checks.
#[derive(Debug, Clone, Copy)]
pub(super) struct Malformed;

/// The ECS network in an OPT record's RDATA: `None` without ECS or with a source prefix of 0;
/// `Err` for a malformed option list, a malformed ECS option or two of them.
pub(super) fn client_network(rdata: &[u8]) -> Result<Option<ClientNetwork>, Malformed> {
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

pub(super) fn split_u16(bytes: &[u8]) -> Result<(u16, &[u8]), Malformed> {
    match bytes {
        [high, low, rest @ ..] => Ok((u16::from_be_bytes([*high, *low]), rest)),
        _ => Err(Malformed),
    }
}

/// RFC 7871 §6 option data: FAMILY, SOURCE PREFIX, SCOPE PREFIX, then exactly
/// `ceil(source / 8)` address octets with no bits set past the source prefix.
pub(super) fn parse_ecs(data: &[u8]) -> Result<Option<ClientNetwork>, Malformed> {
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
