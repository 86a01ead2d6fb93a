//! Per-source limits shared by the front ends: [`RateLimiter`], token buckets keyed by a client
//! network (DNS response rate limiting, RTT reports), and [`ConcurrencyLimiter`], a cap on what
//! one network holds at once (DNS-over-TCP connections).
//!
//! Both are bounded whatever the traffic. A [`RateLimiter`] keeps its buckets in shards, each a
//! pair of maps (current and previous generation): a key seen again moves to the current map,
//! and when the current map of a shard fills up it becomes the previous one and the old previous
//! one is dropped. That is an approximate LRU in O(1) per check: the keys forgotten are the ones
//! not seen for a whole generation, and a forgotten key only gets a fresh (full) bucket back, so
//! a flood of new keys can make the limiter more lenient for quiet sources, never stricter.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::quick_hash::QuickHash;
use crate::rtt::Prefix;

/// Shards of a [`RateLimiter`]: several UDP threads check at once.
const SHARDS: usize = 32;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Nanoseconds since the limiter's epoch at the last refill. An integer, so that the time
    /// between two checks is exact: seconds as `f64` lose the last digits to rounding and a
    /// bucket refilled for exactly 0.5 s could come out a fraction of a token short.
    at: u64,
}

#[derive(Debug, Default)]
struct Shard {
    current: HashMap<Prefix, Bucket, QuickHash>,
    previous: HashMap<Prefix, Bucket, QuickHash>,
}

/// Token buckets per key: `rate_per_s` tokens a second, holding at most `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate_per_s: f64,
    burst: f64,
    per_shard: usize,
    hasher: QuickHash,
    epoch: Instant,
    shards: Box<[Mutex<Shard>]>,
}

impl RateLimiter {
    /// A limiter allowing `rate_per_s` a second with bursts of `burst` per key, remembering
    /// about `max_keys` keys (at least one per shard).
    pub fn new(rate_per_s: f64, burst: f64, max_keys: usize) -> RateLimiter {
        RateLimiter {
            rate_per_s: rate_per_s.max(0.0),
            burst: burst.max(1.0),
            per_shard: (max_keys / SHARDS).max(1),
            hasher: QuickHash::default(),
            epoch: Instant::now(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes one token from `key`'s bucket; false when it is empty (over the limit).
    pub fn check(&self, key: Prefix, now: Instant) -> bool {
        let at =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let index = (self.hasher.hash_one(key) as usize) % SHARDS;
        let Some(shard) = self.shards.get(index) else {
            return true;
        };
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = match shard.current.get_mut(&key) {
            Some(bucket) => bucket,
            None => {
                let bucket = shard.previous.remove(&key).unwrap_or(Bucket {
                    tokens: self.burst,
                    at,
                });
                if shard.current.len() >= self.per_shard {
                    shard.previous = std::mem::take(&mut shard.current);
                }
                shard.current.entry(key).or_insert(bucket)
            }
        };
        let elapsed_s = at.saturating_sub(bucket.at) as f64 / 1e9;
        bucket.tokens = (bucket.tokens + elapsed_s * self.rate_per_s).min(self.burst);
        bucket.at = bucket.at.max(at);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Keys remembered now (both generations), for tests and metrics.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// At most `per_key` things held at once per key (connections per client network). The map
/// holds only keys with something held, so it is bounded by what the caller bounds in total.
#[derive(Debug)]
pub struct ConcurrencyLimiter {
    per_key: usize,
    held: Arc<Mutex<HashMap<Prefix, usize>>>,
}

/// One thing held; released when dropped.
#[derive(Debug)]
pub struct Held {
    key: Prefix,
    held: Arc<Mutex<HashMap<Prefix, usize>>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

impl ConcurrencyLimiter {
    /// At most `per_key` at once per key.
    pub fn new(per_key: usize) -> ConcurrencyLimiter {
        ConcurrencyLimiter {
            per_key,
            held: Arc::default(),
        }
    }

    /// One more for `key`, or `None` when it already holds `per_key`.
    pub fn try_acquire(&self, key: Prefix) -> Option<Held> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(key).or_insert(0);
        if *count >= self.per_key {
            return None;
        }
        *count += 1;
        Some(Held {
            key,
            held: Arc::clone(&self.held),
        })
    }

    /// What `key` holds now.
    pub fn holding(&self, key: Prefix) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(text: &str) -> Prefix {
        Prefix::of(text.parse().unwrap(), 24, 48)
    }

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(10.0, 5.0, 1000);
        let start = Instant::now();
        let allowed = (0..20)
            .filter(|_| limiter.check(key("192.0.2.1"), start))
            .count();
        assert_eq!(allowed, 5);
        // Another network has its own bucket.
        assert!(limiter.check(key("192.0.3.1"), start));
        // 0.5 s later: 5 more tokens.
        let later = start + Duration::from_millis(500);
        let allowed = (0..20)
            .filter(|_| limiter.check(key("192.0.2.9"), later))
            .count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn the_limiter_is_bounded_and_forgets_only_into_leniency() {
        let limiter = RateLimiter::new(1.0, 1.0, 64);
        let now = Instant::now();
        assert!(limiter.check(key("10.0.0.1"), now));
        assert!(!limiter.check(key("10.0.0.1"), now));
        for n in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0b00_0000 + (n << 8));
            limiter.check(Prefix::of(ip.into(), 24, 48), now);
        }
        assert!(limiter.len() <= 2 * 64 + 2 * SHARDS, "{}", limiter.len());
        // The first key was forgotten: it gets a full bucket, not a refusal.
        assert!(limiter.check(key("10.0.0.1"), now));
    }

    #[test]
    fn concurrency_is_capped_per_key_and_released_on_drop() {
        let limiter = ConcurrencyLimiter::new(2);
        let a = limiter.try_acquire(key("192.0.2.1")).unwrap();
        let b = limiter.try_acquire(key("192.0.2.2")).unwrap();
        assert!(limiter.try_acquire(key("192.0.2.3")).is_none());
        assert!(limiter.try_acquire(key("198.51.100.1")).is_some());
        drop(a);
        assert_eq!(limiter.holding(key("192.0.2.0")), 1);
        let _c = limiter.try_acquire(key("192.0.2.3")).unwrap();
        drop(b);
        assert_eq!(limiter.holding(key("192.0.2.0")), 1);
    }
}
