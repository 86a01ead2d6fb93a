//! A log-linear latency histogram in microseconds (the HdrHistogram layout with 64 sub-buckets
//! per power of two: every recorded value is kept within 1.6 %), and the per-phase recorder the
//! scenarios share between connection tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
const HALF: u64 = SUB / 2;
const BUCKETS: usize = (SUB + (64 - SUB_BITS as u64) * HALF) as usize;

/// Counts of values (µs) in log-linear buckets.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb + 1 - SUB_BITS;
    let mantissa = v >> shift;
    (SUB + u64::from(shift - 1) * HALF + (mantissa - HALF)) as usize
}

/// The largest value that falls in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i - SUB) / HALF + 1;
    let mantissa = (i - SUB) % HALF + HALF;
    (mantissa << shift) + ((1u64 << shift) - 1)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
            sum: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, us: u64) {
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
        self.sum += u128::from(us);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    /// How many values were recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The value at quantile `q` (0..=1): the upper bound of the bucket holding it, capped at
    /// the largest value recorded.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_bound(i).min(self.max);
            }
        }
        self.max
    }

    /// p50/p99/p99.9/max in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: self.total,
            mean_ms: if self.total == 0 {
                0.0
            } else {
                (self.sum as f64 / self.total as f64) / 1000.0
            },
            p50_ms: ms(self.quantile(0.50)),
            p90_ms: ms(self.quantile(0.90)),
            p99_ms: ms(self.quantile(0.99)),
            p999_ms: ms(self.quantile(0.999)),
            max_ms: ms(self.max),
        }
    }
}

/// Latency percentiles of one phase.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms, self.count
        )
    }
}

/// The most phases one run can tag its messages with.
pub const MAX_PHASES: usize = 64;

/// Deliveries and their latency, per phase tag. Connection tasks record into it; the scenario
/// reads and resets it between phases. Messages carry the tag of the phase that sent them, so a
/// late delivery counts for the phase it belongs to.
#[derive(Debug)]
pub struct Recorder {
    received: AtomicU64,
    phases: Vec<Mutex<Histogram>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder with [`MAX_PHASES`] phases.
    pub fn new() -> Self {
        Self {
            received: AtomicU64::new(0),
            phases: (0..MAX_PHASES)
                .map(|_| Mutex::new(Histogram::new()))
                .collect(),
        }
    }

    /// One delivery of a message of `phase` that took `latency_us`.
    pub fn record(&self, phase: usize, latency_us: u64) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = self.phases.get(phase) {
            if let Ok(mut h) = h.lock() {
                h.record(latency_us);
            }
        }
    }

    /// Deliveries of any phase so far (for rates over a wall-clock window).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// A copy of `phase`'s histogram.
    pub fn phase(&self, phase: usize) -> Histogram {
        self.phases
            .get(phase)
            .and_then(|h| h.lock().ok().map(|h| h.clone()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev = None;
        for v in (0..200_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let i = index(v);
            assert!(upper_bound(i) >= v, "value {v} above its bucket's bound");
            if let Some((pv, pi)) = prev {
                if v == pv + 1 {
                    assert!(i == pi || i == pi + 1, "gap at {v}");
                }
            }
            if v >= SUB {
                let lower = if i == 0 { 0 } else { upper_bound(i - 1) + 1 };
                assert!((upper_bound(i) - lower) as f64 <= v as f64 / 60.0, "{v}");
            }
            prev = Some((v, i));
        }
        assert!(index(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.len(), 1000);
        assert!((500..=508).contains(&h.quantile(0.5)));
        assert!((990..=1000).contains(&h.quantile(0.99)));
        assert_eq!(h.quantile(1.0), 1000);
        let s = h.summary();
        assert!((s.mean_ms - 0.5005).abs() < 1e-9);
        let mut other = Histogram::new();
        other.record(5_000_000);
        h.merge(&other);
        assert_eq!(h.summary().max_ms, 5000.0);
    }
}
