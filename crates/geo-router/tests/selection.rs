//! Selection quality: a simulated world of client networks and regions with a latency matrix
//! that geography predicts only roughly (real paths are not great circles). Measures how often
//! the router picks a region within 10 ms of the best-RTT one, geo-only versus after it learned
//! RTTs from client reports, and prints both rates (`cargo test -p geo-router --test selection
//! -- --nocapture`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use geo_router::rtt::{RttConfig, RttTable};
use geo_router::{decide, ClientView, Policy, RegionView};
use meridian_catalogue::Region;

/// Deterministic splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn regions() -> Vec<Region> {
    let dev = meridian_catalogue::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../regions"
    )))
    .unwrap();
    let template = dev.values().next().unwrap().clone();
    [
        ("us-east", 38.9, -77.0),
        ("us-west", 37.4, -122.1),
        ("sa-east", -23.5, -46.6),
        ("eu-central", 50.1, 8.7),
        ("eu-west", 53.3, -6.3),
        ("ap-south", 19.1, 72.9),
        ("ap-southeast", 1.35, 103.8),
        ("ap-northeast", 35.7, 139.7),
    ]
    .into_iter()
    .map(|(name, latitude, longitude)| Region {
        name: name.into(),
        latitude,
        longitude,
        ..template.clone()
    })
    .collect()
}

#[test]
fn learned_rtt_picks_a_near_best_region_far_more_often_than_geography() {
    let regions = regions();
    let views: Vec<RegionView<'_>> = regions.iter().map(RegionView::new).collect();
    let mut rng = Rng(0x5eed);
    let networks = 3000;
    let table = RttTable::new(RttConfig::default());
    let policy = Policy {
        min_rtt_samples: 5,
        ..Policy::default()
    };
    let now = Instant::now();
    let (mut geo_good, mut learned_good) = (0, 0);
    for i in 0..networks {
        let location = (rng.uniform(-45.0, 60.0), rng.uniform(-180.0, 180.0));
        let last_mile = rng.uniform(2.0, 25.0);
        // True RTT: distance at ~100 km/ms, inflated per path by 1.0–2.2 (detours, peering),
        // plus the network's last mile.
        let truth: Vec<f64> = regions
            .iter()
            .map(|r| {
                let km = r.distance_km(location);
                km / 100.0 * rng.uniform(1.0, 2.2) + last_mile
            })
            .collect();
        let best = truth.iter().copied().fold(f64::INFINITY, f64::min);
        let rtt_of = |name: &str| {
            regions
                .iter()
                .position(|r| r.name == name)
                .map_or(f64::INFINITY, |k| truth[k])
        };
        let ip = IpAddr::V4(Ipv4Addr::new(10, (i >> 8) as u8, (i & 0xff) as u8, 7));
        let geo_only = ClientView {
            location: Some(location),
            tie_key: i as u64,
            ..ClientView::default()
        };
        let geo_choice = decide(&views, &geo_only, &policy).ranked[0].name.clone();
        if rtt_of(&geo_choice) - best <= 10.0 {
            geo_good += 1;
        }
        // Clients report 6 measurements per region with ±15% jitter.
        for (r, region) in regions.iter().enumerate() {
            for _ in 0..6 {
                let sample = truth[r] * rng.uniform(0.85, 1.15);
                table.record(ip, &region.name, sample, now);
            }
        }
        let learned = ClientView {
            measured_rtt_ms: table.lookup(ip, now),
            ..geo_only
        };
        let choice = decide(&views, &learned, &policy).ranked[0].name.clone();
        if rtt_of(&choice) - best <= 10.0 {
            learned_good += 1;
        }
    }
    let geo_rate = f64::from(geo_good) / f64::from(networks);
    let learned_rate = f64::from(learned_good) / f64::from(networks);
    println!(
        "within 10 ms of the best region: geo-only {:.1}%, with learned RTT {:.1}% ({networks} networks, {} regions)",
        geo_rate * 100.0,
        learned_rate * 100.0,
        regions.len()
    );
    assert!(learned_rate >= 0.95, "learned {learned_rate}");
    assert!(
        learned_rate > geo_rate,
        "learned {learned_rate} vs geo {geo_rate}"
    );
}
