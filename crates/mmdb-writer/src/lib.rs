//! A small writer for the MaxMind DB (`.mmdb`) format, and the synthetic demo database
//! ([`demo`]): test and dev tooling for the geo-router's `geoip` reader, kept out of the router
//! itself (the router's tests use it as a dev-dependency; the `geo-router demo-geoip` and
//! `meridian up` commands write the demo database with it).
//!
//! The geo-router only *reads* GeoIP databases in production (GeoLite2 / DB-IP / ip-location-db
//! files, through the `maxminddb` crate). Its tests, and the synthetic demo database we ship, need
//! small databases with known networks and coordinates, so this crate writes them. This crate
//! depends on nothing but `thiserror`. The crates.io
//! writers we looked at (`maxminddb-writer` 0.1.3, `mmdb-writer` 0.1.0) are young single-author
//! crates with no release history, and the format is small and stable, so we keep our own.
//!
//! What it writes, following the "MaxMind DB File Format Specification" (v2.0):
//!
//! * an **IPv6 search tree** (`ip_version` 6) with IPv4 networks placed at `::a.b.c.d/(96 + len)`,
//!   as MaxMind's own databases do (the `::ffff:0:0/96` and `2002::/16` aliases are not written;
//!   the geo-router's `GeoDb` canonicalises IPv4-mapped addresses before looking up instead);
//! * 24-, 28- or 32-bit records, the smallest that fits unless [`MmdbWriter::record_size`] forces one;
//! * a data section with maps, arrays, UTF-8 strings, doubles, booleans and unsigned integers
//!   (the types [`MmdbValue`] can hold), identical records stored once;
//! * the metadata section after the `\xAB\xCD\xEFMaxMind.com` marker.
//!
//! Networks are applied in insertion order and a later network replaces everything it covers, so
//! insert broad networks before the more specific ones inside them.

#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![forbid(unsafe_code)]

pub mod demo;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Marks the start of the metadata section.
const METADATA_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";
/// Zero bytes between the search tree and the data section.
const DATA_SECTION_SEPARATOR: usize = 16;
/// Depth of the IPv4 subtree root in the IPv6 tree (`::/96`).
const IPV4_SUBTREE_DEPTH: u8 = 96;

/// A value in the MaxMind DB data section.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MmdbValue {
    /// A map with UTF-8 keys (type 7).
    Map(BTreeMap<String, MmdbValue>),
    /// An array (type 11).
    Array(Vec<MmdbValue>),
    /// A UTF-8 string (type 2).
    String(String),
    /// An IEEE 754 double (type 3).
    Double(f64),
    /// A boolean (type 14).
    Bool(bool),
    /// An unsigned 16-bit integer (type 5).
    Uint16(u16),
    /// An unsigned 32-bit integer (type 6).
    Uint32(u32),
    /// An unsigned 64-bit integer (type 9).
    Uint64(u64),
}

impl MmdbValue {
    /// Builds a map from `(key, value)` pairs.
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, MmdbValue)>) -> MmdbValue {
        MmdbValue::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// A record in the GeoIP2/GeoLite2 City shape (also used by DB-IP City Lite):
    /// `location.latitude`, `location.longitude`, `country.iso_code`, `continent.code`.
    pub fn city_record(
        latitude: f64,
        longitude: f64,
        country_iso_code: Option<&str>,
        continent_code: Option<&str>,
    ) -> MmdbValue {
        let mut record = BTreeMap::new();
        record.insert(
            "location".to_owned(),
            MmdbValue::map([
                ("latitude", MmdbValue::Double(latitude)),
                ("longitude", MmdbValue::Double(longitude)),
                ("accuracy_radius", MmdbValue::Uint16(100)),
            ]),
        );
        if let Some(code) = country_iso_code {
            record.insert(
                "country".to_owned(),
                MmdbValue::map([("iso_code", MmdbValue::String(code.to_owned()))]),
            );
        }
        if let Some(code) = continent_code {
            record.insert(
                "continent".to_owned(),
                MmdbValue::map([("code", MmdbValue::String(code.to_owned()))]),
            );
        }
        MmdbValue::Map(record)
    }

    /// A record in the flat shape of the free ip-location-db packages: top-level `latitude`,
    /// `longitude` and `country_code`.
    pub fn flat_record(latitude: f64, longitude: f64, country_code: Option<&str>) -> MmdbValue {
        let mut record = BTreeMap::new();
        record.insert("latitude".to_owned(), MmdbValue::Double(latitude));
        record.insert("longitude".to_owned(), MmdbValue::Double(longitude));
        if let Some(code) = country_code {
            record.insert(
                "country_code".to_owned(),
                MmdbValue::String(code.to_owned()),
            );
        }
        MmdbValue::Map(record)
    }
}

/// Why a database could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MmdbWriteError {
    /// The prefix length is longer than the address (over 32 for IPv4, 128 for IPv6).
    #[error("prefix length /{prefix_len} is too long for {address}")]
    PrefixTooLong {
        /// The network address given.
        address: IpAddr,
        /// The prefix length given.
        prefix_len: u8,
    },
    /// The forced record size is not 24, 28 or 32 bits.
    #[error("record size {0} is not 24, 28 or 32 bits")]
    InvalidRecordSize(u16),
    /// The tree and data do not fit in the record size (forced, or 32 bits at most).
    #[error("database too large for {record_size}-bit records")]
    TooLarge {
        /// The record size that was too small.
        record_size: u16,
    },
    /// A string, map or array is longer than the format can encode (16,843,036 items or bytes).
    #[error("a value is too long for the MaxMind DB format ({0} bytes or items)")]
    ValueTooLong(usize),
}

/// One child pointer of a tree node while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// No network here: lookups find nothing.
    Empty,
    /// Another node, by index into `MmdbWriter::nodes`.
    Node(usize),
    /// A record, by index into `MmdbWriter::records`.
    Data(usize),
}

/// Builds a MaxMind DB file in memory. See the module docs for the layout it writes.
#[derive(Debug, Clone)]
pub struct MmdbWriter {
    database_type: String,
    description: String,
    build_epoch: Option<u64>,
    forced_record_size: Option<u16>,
    /// Node 0 is the root. Replaced subtrees stay here unreachable; `to_bytes` writes only the
    /// nodes reachable from the root.
    nodes: Vec<[Slot; 2]>,
    records: Vec<MmdbValue>,
}

impl MmdbWriter {
    /// An empty database whose metadata `database_type` is `database_type` (e.g.
    /// `"GeoLite2-City"`, `"Meridian-Demo-City"`).
    pub fn new(database_type: impl Into<String>) -> MmdbWriter {
        let database_type = database_type.into();
        MmdbWriter {
            description: database_type.clone(),
            database_type,
            build_epoch: None,
            forced_record_size: None,
            nodes: vec![[Slot::Empty, Slot::Empty]],
            records: Vec::new(),
        }
    }

    /// Sets the English description in the metadata (defaults to the database type).
    pub fn description(&mut self, description: impl Into<String>) -> &mut MmdbWriter {
        self.description = description.into();
        self
    }

    /// Sets the metadata `build_epoch` (seconds since the Unix epoch); defaults to the time of
    /// [`MmdbWriter::to_bytes`]. Set it for byte-for-byte reproducible output.
    pub fn build_epoch(&mut self, epoch_seconds: u64) -> &mut MmdbWriter {
        self.build_epoch = Some(epoch_seconds);
        self
    }

    /// Forces the record size (24, 28 or 32 bits) instead of the smallest that fits.
    pub fn record_size(&mut self, bits: u16) -> Result<&mut MmdbWriter, MmdbWriteError> {
        if !matches!(bits, 24 | 28 | 32) {
            return Err(MmdbWriteError::InvalidRecordSize(bits));
        }
        self.forced_record_size = Some(bits);
        Ok(self)
    }

    /// Maps every address in `network` (address, prefix length) to `record`. Host bits past the
    /// prefix are ignored. IPv4 networks go in the IPv4 subtree at `::/96`.
    pub fn insert(
        &mut self,
        network: (IpAddr, u8),
        record: MmdbValue,
    ) -> Result<(), MmdbWriteError> {
        let (address, prefix_len) = network;
        let (key, depth) = match address {
            IpAddr::V4(v4) if prefix_len <= 32 => {
                (u128::from(u32::from(v4)), IPV4_SUBTREE_DEPTH + prefix_len)
            }
            IpAddr::V6(v6) if prefix_len <= 128 => (u128::from(v6), prefix_len),
            _ => {
                return Err(MmdbWriteError::PrefixTooLong {
                    address,
                    prefix_len,
                })
            }
        };
        let slot = Slot::Data(self.records.len());
        self.records.push(record);
        self.set_subtree(key, depth, slot);
        Ok(())
    }

    /// Points the subtree for the first `depth` bits of `key` at `slot`, splitting any broader
    /// network on the way so it keeps covering the rest of its range.
    fn set_subtree(&mut self, key: u128, depth: u8, slot: Slot) {
        if depth == 0 {
            self.nodes[0] = [slot, slot];
            return;
        }
        let mut node = 0;
        for level in 0..depth {
            let bit = usize::from((key >> (127 - u32::from(level))) & 1 == 1);
            if level + 1 == depth {
                self.nodes[node][bit] = slot;
                return;
            }
            node = match self.nodes[node][bit] {
                Slot::Node(child) => child,
                covering => {
                    let child = self.nodes.len();
                    self.nodes.push([covering, covering]);
                    self.nodes[node][bit] = Slot::Node(child);
                    child
                }
            };
        }
    }

    /// Serialises the database: search tree, separator, data section, metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>, MmdbWriteError> {
        // Number the reachable nodes breadth-first so the root is node 0.
        let mut order = vec![0usize];
        let mut new_index = HashMap::from([(0usize, 0usize)]);
        let mut next = 0;
        while next < order.len() {
            for slot in self.nodes[order[next]] {
                if let Slot::Node(child) = slot {
                    new_index.entry(child).or_insert_with(|| {
                        order.push(child);
                        order.len() - 1
                    });
                }
            }
            next += 1;
        }
        let node_count = order.len();

        // Encode the reachable records, each distinct encoding once.
        let mut data = Vec::new();
        let mut offset_of_record = HashMap::new();
        let mut offset_of_encoding: HashMap<Vec<u8>, usize> = HashMap::new();
        for &node in &order {
            for slot in self.nodes[node] {
                if let Slot::Data(record) = slot {
                    if offset_of_record.contains_key(&record) {
                        continue;
                    }
                    let mut encoded = Vec::new();
                    encode_value(&self.records[record], &mut encoded)?;
                    let offset = match offset_of_encoding.get(&encoded) {
                        Some(&offset) => offset,
                        None => {
                            let offset = data.len();
                            data.extend_from_slice(&encoded);
                            offset_of_encoding.insert(encoded, offset);
                            offset
                        }
                    };
                    offset_of_record.insert(record, offset);
                }
            }
        }

        let max_value = (node_count + DATA_SECTION_SEPARATOR + data.len()) as u64;
        let record_size = match self.forced_record_size {
            Some(bits) => bits,
            None if max_value < 1 << 24 => 24,
            None if max_value < 1 << 28 => 28,
            None => 32,
        };
        if max_value >= 1u64 << record_size {
            return Err(MmdbWriteError::TooLarge { record_size });
        }

        let record_value = |slot: Slot| -> u32 {
            // Every value is below 2^record_size <= 2^32 (checked above), so `as u32` is exact.
            let value = match slot {
                Slot::Empty => node_count,
                Slot::Node(child) => new_index.get(&child).copied().unwrap_or(node_count),
                Slot::Data(record) => {
                    node_count
                        + DATA_SECTION_SEPARATOR
                        + offset_of_record.get(&record).copied().unwrap_or(0)
                }
            };
            value as u32
        };

        let mut out = Vec::with_capacity(
            node_count * usize::from(record_size) / 4 + DATA_SECTION_SEPARATOR + data.len() + 256,
        );
        for &node in &order {
            let [left, right] = self.nodes[node].map(record_value);
            let (l, r) = (left.to_be_bytes(), right.to_be_bytes());
            match record_size {
                24 => {
                    out.extend_from_slice(&l[1..]);
                    out.extend_from_slice(&r[1..]);
                }
                28 => {
                    // The middle byte holds the top nibble of each record, left's first.
                    out.extend_from_slice(&l[1..]);
                    out.push((l[0] << 4) | (r[0] & 0x0F));
                    out.extend_from_slice(&r[1..]);
                }
                _ => {
                    out.extend_from_slice(&l);
                    out.extend_from_slice(&r);
                }
            }
        }
        out.extend_from_slice(&[0; DATA_SECTION_SEPARATOR]);
        out.extend_from_slice(&data);

        out.extend_from_slice(METADATA_MARKER);
        let build_epoch = self.build_epoch.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
        let metadata = MmdbValue::map([
            ("binary_format_major_version", MmdbValue::Uint16(2)),
            ("binary_format_minor_version", MmdbValue::Uint16(0)),
            ("build_epoch", MmdbValue::Uint64(build_epoch)),
            (
                "database_type",
                MmdbValue::String(self.database_type.clone()),
            ),
            (
                "description",
                MmdbValue::map([("en", MmdbValue::String(self.description.clone()))]),
            ),
            ("ip_version", MmdbValue::Uint16(6)),
            (
                "languages",
                MmdbValue::Array(vec![MmdbValue::String("en".to_owned())]),
            ),
            ("node_count", MmdbValue::Uint32(node_count as u32)),
            ("record_size", MmdbValue::Uint16(record_size)),
        ]);
        encode_value(&metadata, &mut out)?;
        Ok(out)
    }
}

/// Type numbers from the specification.
mod type_code {
    pub const UTF8_STRING: u8 = 2;
    pub const DOUBLE: u8 = 3;
    pub const UINT16: u8 = 5;
    pub const UINT32: u8 = 6;
    pub const MAP: u8 = 7;
    pub const UINT64: u8 = 9;
    pub const ARRAY: u8 = 11;
    pub const BOOLEAN: u8 = 14;
}

/// Writes the control byte(s) for a value of `type_code` with payload size (or item count) `size`.
fn encode_control(type_code: u8, size: usize, out: &mut Vec<u8>) -> Result<(), MmdbWriteError> {
    let (size_bits, extra): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, Vec::new()),
        29..=284 => (29, vec![(size - 29) as u8]),
        285..=65_820 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        65_821..=16_843_036 => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
        _ => return Err(MmdbWriteError::ValueTooLong(size)),
    };
    if type_code <= 7 {
        out.push((type_code << 5) | size_bits);
    } else {
        // Extended type: 0 in the type bits, then the type minus 7 in its own byte.
        out.push(size_bits);
        out.push(type_code - 7);
    }
    out.extend_from_slice(&extra);
    Ok(())
}

/// Writes an unsigned integer big-endian without leading zero bytes, as the spec asks.
fn encode_uint(type_code: u8, value: u64, out: &mut Vec<u8>) -> Result<(), MmdbWriteError> {
    let bytes = value.to_be_bytes();
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    encode_control(type_code, bytes.len() - first, out)?;
    out.extend_from_slice(&bytes[first..]);
    Ok(())
}

fn encode_value(value: &MmdbValue, out: &mut Vec<u8>) -> Result<(), MmdbWriteError> {
    match value {
        MmdbValue::Map(entries) => {
            encode_control(type_code::MAP, entries.len(), out)?;
            for (key, value) in entries {
                encode_control(type_code::UTF8_STRING, key.len(), out)?;
                out.extend_from_slice(key.as_bytes());
                encode_value(value, out)?;
            }
        }
        MmdbValue::Array(items) => {
            encode_control(type_code::ARRAY, items.len(), out)?;
            for item in items {
                encode_value(item, out)?;
            }
        }
        MmdbValue::String(text) => {
            encode_control(type_code::UTF8_STRING, text.len(), out)?;
            out.extend_from_slice(text.as_bytes());
        }
        MmdbValue::Double(number) => {
            encode_control(type_code::DOUBLE, 8, out)?;
            out.extend_from_slice(&number.to_be_bytes());
        }
        // A boolean's value lives in the size bits; it has no payload.
        MmdbValue::Bool(flag) => encode_control(type_code::BOOLEAN, usize::from(*flag), out)?,
        MmdbValue::Uint16(n) => encode_uint(type_code::UINT16, u64::from(*n), out)?,
        MmdbValue::Uint32(n) => encode_uint(type_code::UINT32, u64::from(*n), out)?,
        MmdbValue::Uint64(n) => encode_uint(type_code::UINT64, *n, out)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::net::Ipv4Addr;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn reader(bytes: Vec<u8>) -> maxminddb::Reader<Vec<u8>> {
        let reader = maxminddb::Reader::from_source(bytes).unwrap();
        reader.verify().unwrap();
        reader
    }

    /// Decodes the record for `ip` and its network as "addr/len".
    fn lookup<T: for<'de> Deserialize<'de>>(
        reader: &maxminddb::Reader<Vec<u8>>,
        ip: IpAddr,
    ) -> Option<(T, String)> {
        let result = reader.lookup(ip).unwrap();
        let record: T = result.decode().unwrap()?;
        Some((record, result.network().unwrap().to_string()))
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Every {
        s: String,
        d: f64,
        b: bool,
        u16: u16,
        u32: u32,
        u64: u64,
        list: Vec<u32>,
        long: String,
        nested: BTreeMap<String, String>,
    }

    #[test]
    fn every_value_type_round_trips_through_maxminddb() {
        let long = "x".repeat(70_000);
        let mut writer = MmdbWriter::new("Test-Types");
        writer
            .insert(
                (v4(10, 0, 0, 0), 8),
                MmdbValue::map([
                    ("s", MmdbValue::String("héllo".into())),
                    ("d", MmdbValue::Double(-33.868_82)),
                    ("b", MmdbValue::Bool(true)),
                    ("u16", MmdbValue::Uint16(0)),
                    ("u32", MmdbValue::Uint32(70_000)),
                    ("u64", MmdbValue::Uint64(u64::MAX)),
                    (
                        "list",
                        MmdbValue::Array((0..300).map(MmdbValue::Uint32).collect()),
                    ),
                    ("long", MmdbValue::String(long.clone())),
                    (
                        "nested",
                        MmdbValue::map([("k", MmdbValue::String("v".into()))]),
                    ),
                ]),
            )
            .unwrap();
        let reader = reader(writer.to_bytes().unwrap());
        let (every, network) = lookup::<Every>(&reader, v4(10, 1, 2, 3)).unwrap();
        assert_eq!(network, "10.0.0.0/8");
        assert_eq!(
            every,
            Every {
                s: "héllo".into(),
                d: -33.868_82,
                b: true,
                u16: 0,
                u32: 70_000,
                u64: u64::MAX,
                list: (0..300).collect(),
                long,
                nested: BTreeMap::from([("k".into(), "v".into())]),
            }
        );
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Name {
        name: String,
    }

    fn named(name: &str) -> MmdbValue {
        MmdbValue::map([("name", MmdbValue::String(name.into()))])
    }

    fn name_at(reader: &maxminddb::Reader<Vec<u8>>, ip: IpAddr) -> Option<(String, String)> {
        lookup::<Name>(reader, ip).map(|(n, net)| (n.name, net))
    }

    #[test]
    fn ipv4_and_ipv6_networks_nest_and_report_their_prefix() {
        let mut writer = MmdbWriter::new("Test-Nesting");
        writer
            .insert((v4(192, 0, 2, 0), 24), named("outer"))
            .unwrap();
        writer
            .insert((v4(192, 0, 2, 128), 25), named("inner"))
            .unwrap();
        writer.insert((v6("2001:db8::"), 32), named("six")).unwrap();
        writer
            .insert((v4(198, 51, 100, 7), 32), named("host"))
            .unwrap();
        let reader = reader(writer.to_bytes().unwrap());
        assert_eq!(reader.metadata().ip_version, 6);
        assert_eq!(reader.metadata().database_type, "Test-Nesting");

        let at = |ip| name_at(&reader, ip);
        assert_eq!(
            at(v4(192, 0, 2, 1)),
            Some(("outer".into(), "192.0.2.0/25".into()))
        );
        assert_eq!(
            at(v4(192, 0, 2, 200)),
            Some(("inner".into(), "192.0.2.128/25".into()))
        );
        assert_eq!(
            at(v4(198, 51, 100, 7)),
            Some(("host".into(), "198.51.100.7/32".into()))
        );
        assert_eq!(at(v4(198, 51, 100, 8)), None);
        assert_eq!(
            at(v6("2001:db8:1::5")),
            Some(("six".into(), "2001:db8::/32".into()))
        );
        assert_eq!(at(v6("2001:db9::")), None);
        // The IPv4 subtree sits at ::/96.
        assert_eq!(
            at(v6("::c000:0201")),
            Some(("outer".into(), "::c000:200/121".into()))
        );
    }

    #[test]
    fn a_later_broader_network_replaces_what_it_covers() {
        let mut writer = MmdbWriter::new("Test-Replace");
        writer
            .insert((v4(10, 1, 0, 0), 16), named("narrow"))
            .unwrap();
        writer.insert((v4(10, 0, 0, 0), 8), named("broad")).unwrap();
        let reader = reader(writer.to_bytes().unwrap());
        assert_eq!(
            name_at(&reader, v4(10, 1, 2, 3)),
            Some(("broad".into(), "10.0.0.0/8".into()))
        );
    }

    #[test]
    fn every_record_size_reads_back() {
        for bits in [24, 28, 32] {
            let mut writer = MmdbWriter::new("Test-Record-Size");
            writer.record_size(bits).unwrap();
            for i in 0..50u8 {
                writer
                    .insert((v4(10, i, 0, 0), 16), named(&format!("net{i}")))
                    .unwrap();
            }
            writer.insert((v6("2001:db8::"), 48), named("six")).unwrap();
            let reader = reader(writer.to_bytes().unwrap());
            assert_eq!(reader.metadata().record_size, bits);
            assert_eq!(
                name_at(&reader, v4(10, 49, 1, 1)),
                Some(("net49".into(), "10.49.0.0/16".into()))
            );
            assert_eq!(
                name_at(&reader, v6("2001:db8:0:1::")),
                Some(("six".into(), "2001:db8::/48".into()))
            );
        }
        assert_eq!(
            MmdbWriter::new("x").record_size(20).map(|_| ()),
            Err(MmdbWriteError::InvalidRecordSize(20))
        );
    }

    #[test]
    fn identical_records_are_stored_once_and_output_is_reproducible() {
        let build = |copies: u8| {
            let mut writer = MmdbWriter::new("Test-Dedup");
            writer.build_epoch(1_700_000_000);
            for i in 0..copies {
                writer
                    .insert(
                        (v4(10, i, 0, 0), 16),
                        MmdbValue::flat_record(1.0, 2.0, None),
                    )
                    .unwrap();
            }
            writer.to_bytes().unwrap()
        };
        let many = build(40);
        let mut encoded = Vec::new();
        encode_value(&MmdbValue::flat_record(1.0, 2.0, None), &mut encoded).unwrap();
        let copies = many
            .windows(encoded.len())
            .filter(|window| *window == encoded.as_slice())
            .count();
        assert_eq!(copies, 1);
        assert_eq!(build(40), many);
        assert_eq!(reader(many).metadata().build_epoch, 1_700_000_000);
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        let mut writer = MmdbWriter::new("Test-Bad");
        assert!(matches!(
            writer.insert((v4(10, 0, 0, 0), 33), named("x")),
            Err(MmdbWriteError::PrefixTooLong { prefix_len: 33, .. })
        ));
        assert!(writer.insert((v6("::"), 129), named("x")).is_err());
    }

    #[test]
    fn whole_address_space_and_empty_databases_are_valid() {
        let mut writer = MmdbWriter::new("Test-All");
        writer.insert((v6("::"), 0), named("all")).unwrap();
        let reader_all = reader(writer.to_bytes().unwrap());
        assert_eq!(
            name_at(&reader_all, v6("2001:db8::1")).map(|(n, _)| n),
            Some("all".into())
        );

        let empty = reader(MmdbWriter::new("Test-Empty").to_bytes().unwrap());
        assert_eq!(name_at(&empty, v4(1, 2, 3, 4)), None);
    }
}
