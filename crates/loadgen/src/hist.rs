//! Latency histograms in microseconds (`hdrhistogram`, every recorded value kept within 1 %),
//! and the per-phase recorder the scenarios share between connection tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Significant decimal digits kept per value: 2 keeps every value within 1 % (the
/// home-made histogram this replaced kept 1.6 %).
const SIGFIGS: u8 = 2;

/// Latency values (µs): an HdrHistogram (the `hdrhistogram` crate) plus the exact sum and
/// largest value (HdrHistogram keeps them only within its precision), so the mean and the max
/// are exact.
#[derive(Clone)]
pub struct Histogram {
    inner: hdrhistogram::Histogram<u64>,
    sum: u128,
    max: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.inner.len())
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram (it grows to hold any value).
    pub fn new() -> Self {
        let mut inner = hdrhistogram::Histogram::new_with_max(2, SIGFIGS)
            .unwrap_or_else(|_| unreachable!("2 significant digits are in range"));
        inner.auto(true);
        Self {
            inner,
            sum: 0,
            max: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, us: u64) {
        // `record` grows the histogram; beyond what it can ever hold, the largest value it can.
        if self.inner.record(us).is_err() {
            self.inner.saturating_record(us);
        }
        self.sum += u128::from(us);
        self.max = self.max.max(us);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        if self.inner.add(&other.inner).is_err() {
            // Only when a histogram cannot grow; never with `auto`. Value by value then.
            for v in other.inner.iter_recorded() {
                let (value, count) = (v.value_iterated_to(), v.count_at_value());
                if self.inner.record_n(value, count).is_err() {
                    self.inner.saturating_record_n(value, count);
                }
            }
        }
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    /// How many values were recorded.
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The value at quantile `q` (0..=1): the highest value equivalent to the one holding it
    /// (within 1 %), capped at the largest value recorded.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.inner.is_empty() {
            return 0;
        }
        self.inner.value_at_quantile(q).min(self.max)
    }

    /// p50/p99/p99.9/max in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        let total = self.inner.len();
        LatencySummary {
            count: total,
            mean_ms: if total == 0 {
                0.0
            } else {
                (self.sum as f64 / total as f64) / 1000.0
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
    fn values_are_kept_within_one_percent() {
        for v in (1..200_000u64).step_by(7).chain([1 << 40, u64::MAX / 4]) {
            let mut h = Histogram::new();
            h.record(v);
            h.record(v.saturating_mul(4));
            let kept = h.quantile(0.5);
            assert!(kept >= v, "value {v} below its bucket's bound {kept}");
            assert!((kept - v) as f64 <= v as f64 / 100.0, "{v}: {kept}");
        }
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
