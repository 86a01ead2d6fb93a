//! The region catalogue: `regions/*.toml`, one file per region, read by every Meridian binary
//! (the geo-router routes to these regions, relays connect to their `relay.address`, the dev
//! scripts start their nodes and Redis) and by the terraform rollout. Keys are documented in
//! `regions/README.md`; [`load_dir`] parses and validates the whole directory.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where users connect to a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    /// Addresses a DNS answer for this region returns (the load balancer's).
    pub addresses: Vec<IpAddr>,
    /// WebSocket URL clients connect to (`ws://` or `wss://`, path `/v1/ws`).
    pub ws_url: String,
    /// URL whose 200 means the region takes users (a node's or the balancer's `/readyz`).
    pub health_url: String,
}

/// The region's end of the inter-region mesh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// QUIC `host:port` of the region's relay.
    pub address: SocketAddr,
}

/// How the region is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cloud {
    /// Amazon Web Services.
    Aws,
    /// Google Cloud.
    Gcp,
    /// This machine (dev catalogue).
    Local,
}

/// Settings for running the region locally (dev scripts, `meridian up`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Local {
    /// Port of the region's local `redis-server`.
    pub redis_port: u16,
    /// Ports of the region's local nodes (the first is behind `ingress.ws_url`).
    pub node_ports: Vec<u16>,
    /// Port of the region's local load balancer (HAProxy in `meridian up`).
    #[serde(default)]
    pub lb_port: Option<u16>,
}

/// One region file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// Short name, equal to the file name without `.toml` (`us-east`).
    pub name: String,
    /// Human-readable name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Latitude of the region's data centre, degrees.
    pub latitude: f64,
    /// Longitude, degrees.
    pub longitude: f64,
    /// Connections the region is sized for; routing penalises a region near it.
    pub capacity: u64,
    /// Where it runs.
    pub cloud: Cloud,
    /// The cloud's own region id (`us-east-1`), empty for `local`.
    #[serde(default)]
    pub cloud_region: String,
    /// User ingress.
    pub ingress: Ingress,
    /// Inter-region relay.
    pub relay: Relay,
    /// Local dev settings.
    #[serde(default)]
    pub local: Option<Local>,
}

/// Errors in the catalogue, naming the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogueError {
    /// The directory or a file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid TOML for the schema (unknown keys included).
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Mean Earth radius (IUGG), km.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Great-circle (haversine) distance in km between two (latitude, longitude) points in degrees.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    // Rounding can push h a hair past 1 for antipodal points; asin would then return NaN.
    2.0 * EARTH_RADIUS_KM * h.sqrt().clamp(0.0, 1.0).asin()
}

impl Region {
    /// The region's (latitude, longitude) in degrees.
    pub fn position(&self) -> (f64, f64) {
        (self.latitude, self.longitude)
    }

    /// Great-circle distance in km from the region's data centre to `at` (latitude, longitude
    /// in degrees); see [`distance_km`].
    pub fn distance_km(&self, at: (f64, f64)) -> f64 {
        distance_km(self.position(), at)
    }

    /// Parses and validates one region file's text; `file_stem` must equal `name`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, CatalogueError> {
        let region: Region = toml::from_str(text).map_err(|e| CatalogueError::Parse {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        let invalid = |message: String| CatalogueError::Invalid {
            path: path.to_owned(),
            message,
        };
        let valid_name = !region.name.is_empty()
            && region.name.len() <= 32
            && region
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_name {
            return Err(invalid(format!(
                "name {:?}: use 1-32 of a-z 0-9 -",
                region.name
            )));
        }
        if path.file_stem().and_then(|s| s.to_str()) != Some(region.name.as_str()) {
            return Err(invalid(format!(
                "name {:?} must match the file name",
                region.name
            )));
        }
        if !(-90.0..=90.0).contains(&region.latitude)
            || !(-180.0..=180.0).contains(&region.longitude)
        {
            return Err(invalid(
                "latitude must be in [-90, 90] and longitude in [-180, 180]".into(),
            ));
        }
        if region.capacity == 0 {
            return Err(invalid("capacity must be at least 1".into()));
        }
        if region.ingress.addresses.is_empty() {
            return Err(invalid(
                "ingress.addresses needs at least one address".into(),
            ));
        }
        if !(region.ingress.ws_url.starts_with("ws://")
            || region.ingress.ws_url.starts_with("wss://"))
        {
            return Err(invalid(
                "ingress.ws_url must start with ws:// or wss://".into(),
            ));
        }
        // The router sends it as a `Location` header: visible ASCII only (percent-encode the
        // rest), no spaces or control characters.
        if !region.ingress.ws_url.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "ingress.ws_url may hold only visible ASCII (percent-encode anything else, no spaces)"
                    .into(),
            ));
        }
        if !(region.ingress.health_url.starts_with("http://")
            || region.ingress.health_url.starts_with("https://"))
        {
            return Err(invalid(
                "ingress.health_url must start with http:// or https://".into(),
            ));
        }
        if let Some(local) = &region.local {
            if local.node_ports.is_empty() {
                return Err(invalid("local.node_ports needs at least one port".into()));
            }
        }
        Ok(region)
    }
}

/// Reads every `*.toml` in `dir`, keyed by region name. Fails on the first bad file.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, Region>, CatalogueError> {
    let io = |path: &Path, source| CatalogueError::Io {
        path: path.to_owned(),
        source,
    };
    let mut regions = BTreeMap::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        let region = Region::parse(&text, &path)?;
        regions.insert(region.name.clone(), region);
    }
    if regions.is_empty() {
        return Err(CatalogueError::Invalid {
            path: dir.to_owned(),
            message: "no region files (*.toml)".into(),
        });
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRANKFURT: (f64, f64) = (50.1109, 8.6821);
    const NEW_YORK: (f64, f64) = (40.7128, -74.0060);
    const SINGAPORE: (f64, f64) = (1.3521, 103.8198);
    const SYDNEY: (f64, f64) = (-33.8688, 151.2093);
    const LONDON: (f64, f64) = (51.5074, -0.1278);

    #[test]
    fn haversine_matches_known_distances() {
        let london_new_york = distance_km(LONDON, NEW_YORK);
        assert!(
            (london_new_york - 5570.0).abs() < 55.7,
            "London-New York {london_new_york} km"
        );
        assert_eq!(distance_km(FRANKFURT, FRANKFURT), 0.0);
        assert_eq!(
            distance_km(SYDNEY, SINGAPORE),
            distance_km(SINGAPORE, SYDNEY)
        );
        let antipodes = distance_km((0.0, 0.0), (0.0, 180.0));
        assert!((antipodes - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6);
    }

    #[test]
    fn region_distance_is_from_its_data_centre() {
        let regions = load_dir(&repo_regions()).unwrap();
        for region in regions.values() {
            assert_eq!(
                region.distance_km(region.position()),
                0.0,
                "{}",
                region.name
            );
            assert_eq!(
                region.distance_km(SYDNEY),
                distance_km((region.latitude, region.longitude), SYDNEY)
            );
        }
    }

    fn repo_regions() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../regions")
    }

    #[test]
    fn dev_catalogue_parses() {
        let regions = load_dir(&repo_regions()).unwrap();
        assert!(regions.len() >= 3, "{:?}", regions.keys());
        for r in regions.values() {
            assert!(
                r.ingress.addresses.iter().all(|a| a.is_loopback()),
                "dev catalogue stays on loopback: {}",
                r.name
            );
            assert!(r.relay.address.ip().is_loopback());
        }
        let ports: Vec<u16> = regions
            .values()
            .flat_map(|r| r.local.iter().flat_map(|l| l.node_ports.clone()))
            .collect();
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(ports.len(), unique.len(), "node ports do not collide");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let path = repo_regions().join("us-east.toml");
        let good = std::fs::read_to_string(&path).unwrap();
        Region::parse(&good, &path).unwrap();
        let e = Region::parse(&format!("bogus = 1\n{good}"), &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Region::parse(&good.replace("latitude = ", "latitude = 1"), &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("latitude"), "{e}");
        let e = Region::parse(&good, Path::new("regions/other.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("file name"), "{e}");
        let ws_url = good
            .lines()
            .find(|l| l.starts_with("ws_url"))
            .unwrap()
            .to_owned();
        for bad in ["ws://a b/v1/ws", r"ws://h\u00e9te/v1/ws", r"ws://h/\t"] {
            let e = Region::parse(
                &good.replace(&ws_url, &format!("ws_url = \"{bad}\"")),
                &path,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("visible ASCII"), "{bad}: {e}");
        }
    }
}
