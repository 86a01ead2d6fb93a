//! GeoIP lookup: where is this client address, roughly, and how wide is the network that says so.
//!
//! [`GeoDb`] reads a MaxMind DB (`.mmdb`) file through the `maxminddb` crate and turns one record
//! into a [`GeoHit`]: coordinates for [`crate::choose_region`]'s geographic estimate, country and
//! continent for reporting, and the matched network's prefix length, which the DNS front end will
//! use as the EDNS Client Subnet scope. [`ReloadingGeoDb`] swaps in a new file when it changes.
//!
//! **Record shapes** are detected per record, so one reader handles every supported database
//! whatever its metadata `database_type` says:
//!
//! * GeoIP2 / GeoLite2 City (and DB-IP City Lite in MaxMind format): `location.latitude`,
//!   `location.longitude`, `country.iso_code` (falling back to `registered_country.iso_code`, which
//!   is all some anycast and satellite networks have), `continent.code`;
//! * the flat shape of the free ip-location-db packages: top-level `latitude`, `longitude`,
//!   `country_code`.
//!
//! When a record has both, the nested GeoIP2 fields win. Coordinates may be stored as doubles,
//! floats, integers or decimal strings. A record without usable coordinates (missing, not finite
//! or out of range) is no hit: a country alone does not place a client on the map.
//!
//! **Validation.** Opening a database runs `maxminddb`'s full verification (search tree, data
//! section and metadata), so a corrupt or truncated file is rejected at open or reload time, while
//! the old database is still serving, rather than failing lookups later. That walks the whole file
//! once per open or reload (never per lookup); its cost on a full-size city database has not been
//! measured yet.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Why a GeoIP database could not be loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeoIpError {
    /// The database file could not be opened, inspected or read. Retrying may help (the file may
    /// be in the middle of being replaced).
    #[error("reading GeoIP database {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid MaxMind DB (garbage, truncated, corrupt tree or data). Retrying
    /// the same file cannot help; a new file is needed.
    #[error("invalid GeoIP database {origin}: {reason}")]
    InvalidDatabase {
        /// Where the bytes came from: a file path, or `<bytes>`.
        origin: String,
        /// What the reader found wrong.
        reason: String,
    },
}

impl GeoIpError {
    /// Whether trying the same operation again later could succeed without anyone changing the
    /// file's contents.
    pub fn is_retryable(&self) -> bool {
        matches!(self, GeoIpError::Io { .. })
    }

    fn invalid(origin: &str, error: maxminddb::MaxMindDbError) -> GeoIpError {
        GeoIpError::InvalidDatabase {
            origin: origin.to_owned(),
            reason: error.to_string(),
        }
    }

    fn io(path: &Path, source: std::io::Error) -> GeoIpError {
        GeoIpError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// What the database says about one address.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoHit {
    /// Degrees north, in [-90, 90].
    pub latitude: f64,
    /// Degrees east, in [-180, 180].
    pub longitude: f64,
    /// ISO 3166-1 alpha-2 country code, when the record has one.
    pub country: Option<String>,
    /// Two-letter continent code (`EU`, `NA`, ...), when the record has one.
    pub continent: Option<String>,
    /// Prefix length of the database network that matched, in the address family of the
    /// looked-up address (0..=32 for IPv4, 0..=128 for IPv6): every address in that network gets
    /// this same answer, so it is the EDNS Client Subnet scope to return. It is the search tree's
    /// network, which is narrower than the network the database was built from when a more
    /// specific network sits inside that one (a /24 holding a /27 answers /25, /26 or /27).
    pub prefix_len: u8,
}

/// An opened, verified GeoIP database. Lookups are lock-free and cheap; share it in an `Arc`.
pub struct GeoDb {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl fmt::Debug for GeoDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let metadata = self.reader.metadata();
        f.debug_struct("GeoDb")
            .field("database_type", &metadata.database_type)
            .field("build_epoch", &metadata.build_epoch)
            .field("node_count", &metadata.node_count)
            .finish_non_exhaustive()
    }
}

impl GeoDb {
    /// Reads and verifies the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GeoDb, GeoIpError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| GeoIpError::io(path, e))?;
        GeoDb::parse(bytes, &path.display().to_string())
    }

    /// Verifies and wraps a database already in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GeoDb, GeoIpError> {
        GeoDb::parse(bytes, "<bytes>")
    }

    fn parse(bytes: Vec<u8>, origin: &str) -> Result<GeoDb, GeoIpError> {
        let reader =
            maxminddb::Reader::from_source(bytes).map_err(|e| GeoIpError::invalid(origin, e))?;
        reader
            .verify()
            .map_err(|e| GeoIpError::invalid(origin, e))?;
        Ok(GeoDb { reader })
    }

    /// The metadata's `database_type`, e.g. `GeoLite2-City` (for logs and metrics).
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// When the database was built, in seconds since the Unix epoch (from its metadata).
    pub fn build_epoch(&self) -> u64 {
        self.reader.metadata().build_epoch
    }

    /// Looks `ip` up. `None` when no network covers it, its record has no usable coordinates, or
    /// the record cannot be decoded (see [`GeoDb::try_lookup`] to tell those apart). IPv4-mapped
    /// IPv6 addresses (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers) are looked up
    /// as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> Option<GeoHit> {
        self.try_lookup(ip).ok().flatten()
    }

    /// Like [`GeoDb::lookup`], but a record the database cannot decode is an error.
    pub fn try_lookup(&self, ip: IpAddr) -> Result<Option<GeoHit>, GeoIpError> {
        let ip = ip.to_canonical();
        let invalid = |e| GeoIpError::invalid("<lookup>", e);
        let result = self.reader.lookup(ip).map_err(invalid)?;
        let Some(record) = result.decode::<RawRecord>().map_err(invalid)? else {
            return Ok(None);
        };
        let network = result.network().map_err(invalid)?;
        let prefix_len = match (ip, network) {
            // Matched above the IPv4 subtree (a network such as ::/64 that contains all of
            // ::/96): the answer holds for the whole IPv4 space.
            (IpAddr::V4(_), maxminddb_network) if maxminddb_network.is_ipv6() => 0,
            (_, network) => network.prefix(),
        };
        Ok(record.into_hit(prefix_len))
    }
}

/// One network of the database and the location its record gives (`None`: no usable
/// coordinates). Addresses are in their own family: IPv4 networks come from the IPv4 subtree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoNetwork {
    /// The network's first address.
    pub first: IpAddr,
    /// Its prefix length in that family.
    pub prefix_len: u8,
    /// (latitude, longitude) in degrees.
    pub location: Option<(f64, f64)>,
}

impl GeoDb {
    /// Every network with data, IPv4 first, each family in address order. The IPv6 list leaves
    /// out the IPv4 subtree (`::/96`) and its aliases, which the IPv4 list already covers. A
    /// record is decoded once however many networks point at it.
    pub fn networks(&self) -> Result<Vec<GeoNetwork>, GeoIpError> {
        let invalid = |e| GeoIpError::invalid("<networks>", e);
        let mut located: std::collections::HashMap<usize, Option<(f64, f64)>> =
            std::collections::HashMap::new();
        let mut out = Vec::new();
        let mut walk =
            |cidr: &str, v6: bool, out: &mut Vec<GeoNetwork>| -> Result<(), GeoIpError> {
                let Ok(cidr) = cidr.parse() else {
                    return Ok(());
                };
                let iter = self
                    .reader
                    .within(cidr, maxminddb::WithinOptions::default())
                    .map_err(invalid)?;
                for item in iter {
                    let item = item.map_err(invalid)?;
                    let network = item.network().map_err(invalid)?;
                    let first = network.network();
                    let in_ipv4_space = match first {
                        IpAddr::V4(_) => v6,
                        IpAddr::V6(a) => u128::from(a) >> 32 == 0 || u128::from(a) >> 32 == 0xffff,
                    };
                    if in_ipv4_space {
                        continue;
                    }
                    let location = match item.offset().and_then(|o| located.get(&o).copied()) {
                        Some(location) => location,
                        None => {
                            let location = item
                                .decode::<RawRecord>()
                                .map_err(invalid)?
                                .and_then(|record| record.into_hit(0))
                                .map(|hit| (hit.latitude, hit.longitude));
                            if let Some(offset) = item.offset() {
                                located.insert(offset, location);
                            }
                            location
                        }
                    };
                    out.push(GeoNetwork {
                        first,
                        prefix_len: network.prefix(),
                        location,
                    });
                }
                Ok(())
            };
        walk("0.0.0.0/0", false, &mut out)?;
        if self.reader.metadata().ip_version == 6 {
            walk("::/0", true, &mut out)?;
        }
        out.sort_by_key(|n| (n.first.is_ipv6(), n.first, n.prefix_len));
        Ok(out)
    }
}

/// The fields we read from either record shape; everything else in the record is skipped.
#[derive(Debug, Default, Deserialize)]
struct RawRecord {
    location: Option<RawLocation>,
    country: Option<RawCountry>,
    registered_country: Option<RawCountry>,
    continent: Option<RawContinent>,
    #[serde(default, deserialize_with = "lenient_coordinate")]
    latitude: Option<f64>,
    #[serde(default, deserialize_with = "lenient_coordinate")]
    longitude: Option<f64>,
    country_code: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawLocation {
    #[serde(default, deserialize_with = "lenient_coordinate")]
    latitude: Option<f64>,
    #[serde(default, deserialize_with = "lenient_coordinate")]
    longitude: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawCountry {
    iso_code: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawContinent {
    code: Option<String>,
}

impl RawRecord {
    fn into_hit(self, prefix_len: u8) -> Option<GeoHit> {
        let nested = self
            .location
            .and_then(|l| Some((l.latitude?, l.longitude?)));
        let flat = self.latitude.zip(self.longitude);
        let (latitude, longitude) = nested.or(flat)?;
        if !(latitude.is_finite()
            && longitude.is_finite()
            && latitude.abs() <= 90.0
            && longitude.abs() <= 180.0)
        {
            return None;
        }
        let country = self
            .country
            .and_then(|c| c.iso_code)
            .or_else(|| self.registered_country.and_then(|c| c.iso_code))
            .or(self.country_code)
            .filter(|code| !code.is_empty());
        let continent = self
            .continent
            .and_then(|c| c.code)
            .filter(|code| !code.is_empty());
        Some(GeoHit {
            latitude,
            longitude,
            country,
            continent,
            prefix_len,
        })
    }
}

/// Accepts a coordinate stored as any MaxMind DB number type or as a decimal string (some
/// converted databases store CSV fields verbatim). Anything else is a decoding error.
fn lenient_coordinate<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    struct Coordinate;

    impl Visitor<'_> for Coordinate {
        type Value = Option<f64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a coordinate as a number or a decimal string")
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            // An unparseable string is "no coordinate", not a broken record.
            Ok(v.trim().parse().ok())
        }
    }

    deserializer.deserialize_any(Coordinate)
}

/// The file identity we compare to decide whether to reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// A [`GeoDb`] loaded from a file, replaced when the file changes.
///
/// Readers call [`ReloadingGeoDb::current`] and keep the `Arc` for as long as they like; a reload
/// swaps the pointer and never blocks on them. The server calls
/// [`ReloadingGeoDb::reload_if_changed`] on a timer.
#[derive(Debug)]
pub struct ReloadingGeoDb {
    path: PathBuf,
    current: RwLock<Arc<GeoDb>>,
    /// The stamp of the file last *tried*, good or bad, so a corrupt file is reported once and
    /// not re-read on every tick; the next change to it is tried again.
    last_seen: Mutex<FileStamp>,
}

impl ReloadingGeoDb {
    /// Loads the database at `path`; fails if it cannot be read or is invalid.
    pub fn open(path: impl Into<PathBuf>) -> Result<ReloadingGeoDb, GeoIpError> {
        let path = path.into();
        let (bytes, stamp) = read_with_stamp(&path)?;
        let db = GeoDb::parse(bytes, &path.display().to_string())?;
        Ok(ReloadingGeoDb {
            path,
            current: RwLock::new(Arc::new(db)),
            last_seen: Mutex::new(stamp),
        })
    }

    /// The file this database is loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database currently in use.
    pub fn current(&self) -> Arc<GeoDb> {
        // A poisoned lock still holds a valid Arc: the swap is a single assignment.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reloads the file if its modification time or size changed since the last attempt.
    /// `Ok(true)` means a new database is now in use, `Ok(false)` that nothing changed. On error
    /// the previous database stays in use. An invalid file is reported once: later calls return
    /// `Ok(false)` until the file changes again (I/O errors, which may be transient, repeat).
    /// Concurrent calls are serialised; [`ReloadingGeoDb::current`] never waits on a reload.
    ///
    /// Replace the file atomically (write a temporary file, then rename it over the old one):
    /// a change that keeps both the size and the modification time is not noticed.
    pub fn reload_if_changed(&self) -> Result<bool, GeoIpError> {
        let mut last_seen = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stamp = stamp_of(&self.path)?;
        if stamp == *last_seen {
            return Ok(false);
        }
        // Read through one handle so the stamp we record belongs to the bytes we parse.
        let (bytes, stamp) = read_with_stamp(&self.path)?;
        *last_seen = stamp;
        let db = GeoDb::parse(bytes, &self.path.display().to_string())?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(db);
        Ok(true)
    }
}

fn stamp_of(path: &Path) -> Result<FileStamp, GeoIpError> {
    let metadata = std::fs::metadata(path).map_err(|e| GeoIpError::io(path, e))?;
    Ok(FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
    })
}

fn read_with_stamp(path: &Path) -> Result<(Vec<u8>, FileStamp), GeoIpError> {
    let mut file = File::open(path).map_err(|e| GeoIpError::io(path, e))?;
    let metadata = file.metadata().map_err(|e| GeoIpError::io(path, e))?;
    let stamp = FileStamp {
        modified: metadata.modified().ok(),
        len: metadata.len(),
    };
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)
        .map_err(|e| GeoIpError::io(path, e))?;
    Ok((bytes, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmdb_writer::{MmdbValue, MmdbWriter};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn net(text: &str) -> (IpAddr, u8) {
        let (addr, len) = text.split_once('/').unwrap();
        (ip(addr), len.parse().unwrap())
    }

    /// Networks in the GeoIP2 City shape, one deliberately without coordinates.
    fn city_db() -> Vec<u8> {
        let mut writer = MmdbWriter::new("GeoLite2-City");
        let city = MmdbValue::city_record;
        let rows = [
            (
                "81.2.69.0/24",
                city(51.5142, -0.0931, Some("GB"), Some("EU")),
            ),
            (
                "81.2.69.160/27",
                city(53.4808, -2.2426, Some("GB"), Some("EU")),
            ),
            (
                "175.16.199.0/24",
                city(43.88, 125.3228, Some("CN"), Some("AS")),
            ),
            (
                "2001:db8::/32",
                city(-33.8688, 151.2093, Some("AU"), Some("OC")),
            ),
            ("2001:db8:ab::/48", city(40.7128, -74.006, None, None)),
            (
                "203.0.113.0/24",
                MmdbValue::map([(
                    "country",
                    MmdbValue::map([("iso_code", MmdbValue::String("JP".into()))]),
                )]),
            ),
            (
                "198.51.100.0/24",
                MmdbValue::map([
                    (
                        "location",
                        MmdbValue::map([
                            ("latitude", MmdbValue::Double(35.0)),
                            ("longitude", MmdbValue::Double(139.0)),
                        ]),
                    ),
                    (
                        "registered_country",
                        MmdbValue::map([("iso_code", MmdbValue::String("JP".into()))]),
                    ),
                ]),
            ),
            ("192.0.2.0/24", city(91.0, 0.0, Some("XX"), None)),
        ];
        for (network, record) in rows {
            writer.insert(net(network), record).unwrap();
        }
        writer.to_bytes().unwrap()
    }

    fn flat_db(extra: &[(&str, MmdbValue)]) -> Vec<u8> {
        let mut writer = MmdbWriter::new("ip-location-db-city");
        writer
            .insert(
                net("1.0.0.0/24"),
                MmdbValue::flat_record(-27.4679, 153.0281, Some("AU")),
            )
            .unwrap();
        writer
            .insert(
                net("2a00:1450::/32"),
                MmdbValue::flat_record(37.422, -122.084, Some("US")),
            )
            .unwrap();
        for (network, record) in extra {
            writer.insert(net(network), record.clone()).unwrap();
        }
        writer.to_bytes().unwrap()
    }

    fn hit(lat: f64, lon: f64, country: Option<&str>, continent: Option<&str>, len: u8) -> GeoHit {
        GeoHit {
            latitude: lat,
            longitude: lon,
            country: country.map(str::to_owned),
            continent: continent.map(str::to_owned),
            prefix_len: len,
        }
    }

    #[test]
    fn networks_lists_each_family_in_order_with_locations() {
        let db = GeoDb::from_bytes(city_db()).unwrap();
        let networks = db.networks().unwrap();
        let v4: Vec<_> = networks.iter().filter(|n| n.first.is_ipv4()).collect();
        let v6: Vec<_> = networks.iter().filter(|n| n.first.is_ipv6()).collect();
        assert!(
            networks.iter().take(v4.len()).all(|n| n.first.is_ipv4()),
            "v4 first"
        );
        assert!(v4.windows(2).all(|w| w[0].first < w[1].first), "sorted");
        // The /24 holding a /27 comes back as the tree's pieces around it, all London.
        let london: Vec<_> = v4
            .iter()
            .filter(|n| matches!(n.first, IpAddr::V4(a) if a.octets()[..3] == [81, 2, 69]))
            .collect();
        assert!(london.len() >= 2, "{london:?}");
        assert!(london
            .iter()
            .any(|n| n.prefix_len == 27 && n.location == Some((53.4808, -2.2426))));
        // A record without coordinates is listed without a location.
        let japan = v4.iter().find(|n| n.first == ip("203.0.113.0")).unwrap();
        assert_eq!((japan.prefix_len, japan.location), (24, None));
        // IPv6 networks, and nothing from the IPv4 subtree among them.
        assert!(v6
            .iter()
            .any(|n| n.first == ip("2001:db8:ab::") && n.prefix_len == 48));
        assert!(v6
            .iter()
            .all(|n| matches!(n.first, IpAddr::V6(a) if u128::from(a) >> 32 != 0)));
    }

    #[test]
    fn city_shape_resolves_ipv4_and_ipv6_with_the_matched_prefix() {
        let db = GeoDb::from_bytes(city_db()).unwrap();
        assert_eq!(db.database_type(), "GeoLite2-City");
        assert_eq!(
            db.lookup(ip("81.2.69.1")),
            Some(hit(51.5142, -0.0931, Some("GB"), Some("EU"), 25))
        );
        assert_eq!(
            db.lookup(ip("81.2.69.170")),
            Some(hit(53.4808, -2.2426, Some("GB"), Some("EU"), 27))
        );
        assert_eq!(
            db.lookup(ip("175.16.199.255")),
            Some(hit(43.88, 125.3228, Some("CN"), Some("AS"), 24))
        );
        // 2001:db8::/32 is split around the /48 inside it: an address reports the widest piece
        // of the tree that holds it, here 2001:db8::/41 beside 2001:db8:80::/41, then /33.
        assert_eq!(
            db.lookup(ip("2001:db8:1::1")),
            Some(hit(-33.8688, 151.2093, Some("AU"), Some("OC"), 41))
        );
        assert_eq!(db.lookup(ip("2001:db8:8000::1")).unwrap().prefix_len, 33);
        assert_eq!(
            db.lookup(ip("2001:db8:ab:cd::1")),
            Some(hit(40.7128, -74.006, None, None, 48))
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_is_looked_up_as_ipv4() {
        let db = GeoDb::from_bytes(city_db()).unwrap();
        assert_eq!(
            db.lookup(ip("::ffff:175.16.199.9")),
            db.lookup(ip("175.16.199.9"))
        );
        assert_eq!(db.lookup(ip("::ffff:175.16.199.9")).unwrap().prefix_len, 24);
    }

    #[test]
    fn an_address_outside_every_network_is_none() {
        let db = GeoDb::from_bytes(city_db()).unwrap();
        for outside in [
            "8.8.8.8",
            "81.2.70.1",
            "0.0.0.0",
            "2001:db9::1",
            "::1",
            "ff02::1",
        ] {
            assert_eq!(db.lookup(ip(outside)), None, "{outside}");
            assert!(db.try_lookup(ip(outside)).unwrap().is_none(), "{outside}");
        }
    }

    #[test]
    fn records_without_usable_coordinates_are_none() {
        let db = GeoDb::from_bytes(city_db()).unwrap();
        // Country only.
        assert_eq!(db.lookup(ip("203.0.113.5")), None);
        // Latitude out of range.
        assert_eq!(db.lookup(ip("192.0.2.5")), None);
    }

    #[test]
    fn registered_country_stands_in_for_a_missing_country() {
        let db = GeoDb::from_bytes(city_db()).unwrap();
        assert_eq!(
            db.lookup(ip("198.51.100.1")),
            Some(hit(35.0, 139.0, Some("JP"), None, 24))
        );
    }

    #[test]
    fn flat_shape_resolves_ipv4_and_ipv6() {
        let db = GeoDb::from_bytes(flat_db(&[])).unwrap();
        assert_eq!(
            db.lookup(ip("1.0.0.200")),
            Some(hit(-27.4679, 153.0281, Some("AU"), None, 24))
        );
        assert_eq!(
            db.lookup(ip("2a00:1450:4001::200e")),
            Some(hit(37.422, -122.084, Some("US"), None, 32))
        );
        assert_eq!(db.lookup(ip("1.0.1.0")), None);
    }

    #[test]
    fn flat_coordinates_may_be_strings_or_integers() {
        let db = GeoDb::from_bytes(flat_db(&[
            (
                "10.0.0.0/8",
                MmdbValue::map([
                    ("latitude", MmdbValue::String(" 48.8566 ".into())),
                    ("longitude", MmdbValue::String("2.3522".into())),
                    ("country_code", MmdbValue::String("FR".into())),
                ]),
            ),
            (
                "11.0.0.0/8",
                MmdbValue::map([
                    ("latitude", MmdbValue::Uint16(52)),
                    ("longitude", MmdbValue::Uint32(13)),
                ]),
            ),
            (
                "12.0.0.0/8",
                MmdbValue::map([
                    ("latitude", MmdbValue::String("unknown".into())),
                    ("longitude", MmdbValue::String("2.3522".into())),
                ]),
            ),
            ("13.0.0.0/8", MmdbValue::String("not a map".into())),
        ]))
        .unwrap();
        assert_eq!(
            db.lookup(ip("10.1.1.1")),
            Some(hit(48.8566, 2.3522, Some("FR"), None, 8))
        );
        assert_eq!(
            db.lookup(ip("11.1.1.1")),
            Some(hit(52.0, 13.0, None, None, 8))
        );
        assert_eq!(db.lookup(ip("12.1.1.1")), None);
        // A record of the wrong type is a decoding error for try_lookup, None for lookup.
        assert!(matches!(
            db.try_lookup(ip("13.1.1.1")),
            Err(GeoIpError::InvalidDatabase { .. })
        ));
        assert_eq!(db.lookup(ip("13.1.1.1")), None);
    }

    #[test]
    fn a_network_above_the_ipv4_subtree_gives_ipv4_scope_zero() {
        let mut writer = MmdbWriter::new("Test-Everything");
        writer
            .insert(net("::/0"), MmdbValue::flat_record(0.0, 0.0, None))
            .unwrap();
        let db = GeoDb::from_bytes(writer.to_bytes().unwrap()).unwrap();
        assert_eq!(db.lookup(ip("192.0.2.1")).unwrap().prefix_len, 0);
    }

    #[test]
    fn garbage_bytes_are_an_invalid_database() {
        for garbage in [
            Vec::new(),
            vec![0u8; 1024],
            b"not a maxmind database at all".to_vec(),
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
            // A marker followed by nonsense metadata.
            [&[1u8, 2, 3][..], b"\xAB\xCD\xEFMaxMind.com", &[0xFF; 8]].concat(),
        ] {
            let err = GeoDb::from_bytes(garbage).unwrap_err();
            assert!(matches!(err, GeoIpError::InvalidDatabase { .. }), "{err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn every_truncation_of_a_valid_database_is_an_error() {
        let bytes = city_db();
        for len in 0..bytes.len() {
            assert!(
                GeoDb::from_bytes(bytes[..len].to_vec()).is_err(),
                "truncated to {len} of {} bytes",
                bytes.len()
            );
        }
    }

    #[test]
    fn corrupt_bytes_never_panic() {
        let bytes = city_db();
        let probes = [
            "81.2.69.170",
            "175.16.199.1",
            "2001:db8:ab::1",
            "203.0.113.1",
        ];
        for position in 0..bytes.len() {
            for flip in [0xFF, 0x01, 0x80] {
                let mut corrupt = bytes.clone();
                corrupt[position] ^= flip;
                // Either rejected at open, or every lookup answers without panicking.
                if let Ok(db) = GeoDb::from_bytes(corrupt) {
                    for probe in probes {
                        let _ = db.lookup(ip(probe));
                    }
                }
            }
        }
    }

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "geo-router-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        /// Replaces `file` atomically, as operators are told to.
        fn write(&self, file: &str, bytes: &[u8]) -> PathBuf {
            let tmp = self.0.join(format!("{file}.tmp"));
            let path = self.0.join(file);
            std::fs::write(&tmp, bytes).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn open_reads_a_file_and_a_missing_file_is_a_retryable_io_error() {
        let dir = TempDir::new("open");
        let path = dir.write("city.mmdb", &city_db());
        let db = GeoDb::open(&path).unwrap();
        assert_eq!(
            db.lookup(ip("175.16.199.1")).unwrap().country.as_deref(),
            Some("CN")
        );

        let err = GeoDb::open(dir.0.join("missing.mmdb")).unwrap_err();
        assert!(matches!(err, GeoIpError::Io { .. }), "{err}");
        assert!(err.is_retryable());
        assert!(err.to_string().contains("missing.mmdb"), "{err}");

        let bad = dir.write("bad.mmdb", b"garbage");
        let err = GeoDb::open(&bad).unwrap_err();
        assert!(err.to_string().contains("bad.mmdb"), "{err}");
        assert!(ReloadingGeoDb::open(&bad).is_err());
    }

    #[test]
    fn reload_picks_up_a_changed_file_and_keeps_the_old_one_on_a_corrupt_write() {
        let dir = TempDir::new("reload");
        let first = flat_db(&[]);
        let second = flat_db(&[(
            "9.9.9.0/24",
            MmdbValue::flat_record(47.3769, 8.5417, Some("CH")),
        )]);
        let corrupt = &second[..second.len() / 2];
        let third = flat_db(&[
            ("9.9.9.0/24", MmdbValue::flat_record(1.0, 1.0, Some("CH"))),
            ("8.8.8.0/24", MmdbValue::flat_record(2.0, 2.0, Some("US"))),
        ]);
        // The change detector compares size and mtime; distinct sizes make this test independent
        // of the file system's timestamp granularity.
        let sizes = [first.len(), second.len(), corrupt.len(), third.len()];
        for (i, a) in sizes.iter().enumerate() {
            assert!(!sizes[i + 1..].contains(a), "{sizes:?}");
        }

        let path = dir.write("geo.mmdb", &first);
        let reloading = ReloadingGeoDb::open(&path).unwrap();
        assert_eq!(reloading.path(), path);
        let before = reloading.current();
        assert_eq!(before.lookup(ip("9.9.9.9")), None);
        assert!(
            !reloading.reload_if_changed().unwrap(),
            "nothing changed yet"
        );

        dir.write("geo.mmdb", &second);
        assert!(reloading.reload_if_changed().unwrap());
        let swiss = reloading.current().lookup(ip("9.9.9.9")).unwrap();
        assert_eq!(swiss.country.as_deref(), Some("CH"));
        // Holders of the old Arc keep a working database.
        assert_eq!(before.lookup(ip("9.9.9.9")), None);
        assert!(!reloading.reload_if_changed().unwrap());

        dir.write("geo.mmdb", corrupt);
        let err = reloading.reload_if_changed().unwrap_err();
        assert!(matches!(err, GeoIpError::InvalidDatabase { .. }), "{err}");
        assert_eq!(
            reloading.current().lookup(ip("9.9.9.9")),
            Some(swiss.clone())
        );
        // Reported once, not re-read on every tick.
        assert!(!reloading.reload_if_changed().unwrap());
        assert_eq!(reloading.current().lookup(ip("9.9.9.9")), Some(swiss));

        dir.write("geo.mmdb", &third);
        assert!(reloading.reload_if_changed().unwrap());
        let current = reloading.current();
        assert_eq!(
            current.lookup(ip("8.8.8.8")).unwrap().country.as_deref(),
            Some("US")
        );
        assert_eq!(current.lookup(ip("9.9.9.9")).unwrap().latitude, 1.0);

        std::fs::remove_file(&path).unwrap();
        let err = reloading.reload_if_changed().unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert_eq!(
            reloading.current().lookup(ip("8.8.8.8")).unwrap().latitude,
            2.0
        );
    }

    #[test]
    fn every_demo_city_address_is_found_where_the_table_says() {
        use mmdb_writer::demo::{demo_database, CITIES};
        let db = GeoDb::from_bytes(demo_database().unwrap()).unwrap();
        assert_eq!(db.database_type(), "Meridian-Demo-Synthetic-City");
        for city in CITIES {
            for address in [city.v4_address(0), city.v4_address(15), city.v6_address()] {
                let hit = db.lookup(address).unwrap();
                assert_eq!(
                    (hit.latitude, hit.longitude, hit.country.as_deref()),
                    (city.latitude, city.longitude, Some(city.country)),
                    "{} {address}",
                    city.name
                );
            }
        }
        assert!(db.lookup("192.0.2.1".parse().unwrap()).is_none());
    }
}
