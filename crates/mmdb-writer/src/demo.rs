//! The synthetic demo GeoIP database: a few hundred networks placed in cities on every
//! continent, so a local mesh routes "users" from different places without a licensed database.
//! **Synthetic**: the networks are not where the real internet has them; the database says so
//! in its metadata (`database_type` `Meridian-Demo-Synthetic-City`) and description.
//!
//! Layout: for each city, 16 consecutive /24 networks `a.b.0.0/24 .. a.b.15.0/24` with the
//! city's record (GeoLite2 City shape), plus one IPv6 /40 under the documentation prefix
//! `2001:db8::/32`. The table below is the single source for the tests, the docs and
//! `meridian up`'s walk-through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{MmdbValue, MmdbWriteError, MmdbWriter};

/// One demo city.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoCity {
    /// City name.
    pub name: &'static str,
    /// ISO country code.
    pub country: &'static str,
    /// Continent code.
    pub continent: &'static str,
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
    /// First IPv4 network: `a.b.0.0`, then 16 /24s `a.b.0.0/24 .. a.b.15.0/24`.
    pub v4: [u8; 2],
    /// Index of the city's /40 under `2001:db8::/32`.
    pub v6_index: u8,
}

/// The demo cities. Each v4 block sits where that part of the world's address space roughly
/// is (RIPE space for Europe, APNIC for Asia-Pacific, ARIN for North America, LACNIC, AFRINIC),
/// but the exact networks are made up.
pub const CITIES: [DemoCity; 12] = [
    city("New York", "US", "NA", 40.7128, -74.0060, [23, 10], 1),
    city("Chicago", "US", "NA", 41.8781, -87.6298, [23, 20], 2),
    city("San Francisco", "US", "NA", 37.7749, -122.4194, [23, 30], 3),
    city("Sao Paulo", "BR", "SA", -23.5505, -46.6333, [177, 10], 4),
    city("London", "GB", "EU", 51.5074, -0.1278, [81, 10], 5),
    city("Berlin", "DE", "EU", 52.52, 13.405, [81, 20], 6),
    city("Madrid", "ES", "EU", 40.4168, -3.7038, [81, 30], 7),
    city("Lagos", "NG", "AF", 6.5244, 3.3792, [105, 10], 8),
    city("Mumbai", "IN", "AS", 19.076, 72.8777, [103, 10], 9),
    city("Singapore", "SG", "AS", 1.3521, 103.8198, [103, 20], 10),
    city("Tokyo", "JP", "AS", 35.6762, 139.6503, [103, 30], 11),
    city("Sydney", "AU", "OC", -33.8688, 151.2093, [103, 40], 12),
];

#[allow(clippy::too_many_arguments)]
const fn city(
    name: &'static str,
    country: &'static str,
    continent: &'static str,
    latitude: f64,
    longitude: f64,
    v4: [u8; 2],
    v6_index: u8,
) -> DemoCity {
    DemoCity {
        name,
        country,
        continent,
        latitude,
        longitude,
        v4,
        v6_index,
    }
}

/// /24 networks per city.
pub const NETWORKS_PER_CITY: u8 = 16;

impl DemoCity {
    /// An address inside the city's `n`th /24 (`n` < 16).
    pub fn v4_address(&self, n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(
            self.v4[0],
            self.v4[1],
            n % NETWORKS_PER_CITY,
            1,
        ))
    }

    /// An address inside the city's IPv6 /40.
    pub fn v6_address(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0x0db8,
            u16::from(self.v6_index) << 8,
            0,
            0,
            0,
            0,
            1,
        ))
    }

    /// Every network of the city with its prefix length.
    pub fn networks(&self) -> Vec<(IpAddr, u8)> {
        let mut networks: Vec<(IpAddr, u8)> = (0..NETWORKS_PER_CITY)
            .map(|n| (IpAddr::V4(Ipv4Addr::new(self.v4[0], self.v4[1], n, 0)), 24))
            .collect();
        networks.push((
            IpAddr::V6(Ipv6Addr::new(
                0x2001,
                0x0db8,
                u16::from(self.v6_index) << 8,
                0,
                0,
                0,
                0,
                0,
            )),
            40,
        ));
        networks
    }
}

/// The demo database as MaxMind DB bytes.
pub fn demo_database() -> Result<Vec<u8>, MmdbWriteError> {
    let mut writer = MmdbWriter::new("Meridian-Demo-Synthetic-City");
    writer.description(
        "SYNTHETIC demo data for local Meridian meshes: made-up networks placed in real cities. \
         Not a real GeoIP database.",
    );
    for city in CITIES {
        for network in city.networks() {
            writer.insert(
                network,
                MmdbValue::city_record(
                    city.latitude,
                    city.longitude,
                    Some(city.country),
                    Some(city.continent),
                ),
            )?;
        }
    }
    writer.to_bytes()
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Location {
        latitude: f64,
        longitude: f64,
    }

    #[derive(Debug, Deserialize)]
    struct Country {
        iso_code: String,
    }

    #[derive(Debug, Deserialize)]
    struct City {
        location: Location,
        country: Country,
    }

    /// Read back with MaxMind's own reader (the router's `GeoDb` has its own test of this
    /// database): every network of every city, and nothing outside them.
    #[test]
    fn every_network_of_every_city_reads_back_with_its_record() {
        let reader = maxminddb::Reader::from_source(demo_database().unwrap()).unwrap();
        reader.verify().unwrap();
        assert_eq!(
            reader.metadata().database_type,
            "Meridian-Demo-Synthetic-City"
        );
        for city in CITIES {
            let mut addresses: Vec<IpAddr> =
                (0..NETWORKS_PER_CITY).map(|n| city.v4_address(n)).collect();
            addresses.push(city.v6_address());
            for address in addresses {
                let result = reader.lookup(address).unwrap();
                let record: City = result.decode().unwrap().unwrap();
                assert_eq!(
                    (
                        record.location.latitude,
                        record.location.longitude,
                        record.country.iso_code.as_str()
                    ),
                    (city.latitude, city.longitude, city.country),
                    "{} {address}",
                    city.name
                );
            }
            assert_eq!(city.networks().len(), usize::from(NETWORKS_PER_CITY) + 1);
        }
        let outside = reader.lookup("192.0.2.1".parse().unwrap()).unwrap();
        assert!(outside.decode::<City>().unwrap().is_none());
    }
}
