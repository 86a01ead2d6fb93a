//! Reconnect delays: exponential from `initial` to `max`, with "equal jitter" (each delay is
//! uniform in [d/2, d] of the exponential step d), so relays that lost each other at the same
//! moment do not all redial in lockstep, yet the delay never collapses to zero.

use std::time::Duration;

use rand::Rng;

/// The delay sequence of one peer's dial loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = step / 2;
        let nanos = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rng.gen_range(0..=nanos))
    }

    /// After a link was established: the next loss starts from `initial` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_to_the_cap_with_bounded_jitter() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay(&mut rng)).collect();
        let steps = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (d, step) in delays.iter().zip(steps) {
            assert!(
                *d >= ms(step / 2) && *d <= ms(step),
                "{d:?} for step {step}"
            );
        }
        assert!(delays.windows(2).any(|w| w[0] != w[1]), "jittered");
        b.reset();
        assert!(b.next_delay(&mut rng) <= ms(100));
        let mut huge = Backoff::new(ms(1), Duration::from_secs(3600));
        for _ in 0..100 {
            assert!(huge.next_delay(&mut rng) <= Duration::from_secs(3600));
        }
    }
}
