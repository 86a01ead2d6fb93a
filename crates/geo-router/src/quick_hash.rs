//! A fast seeded hasher for the DNS hot path's small maps (route answers per client address,
//! response templates), where std's SipHash cost more than the rest of a cached answer.
//!
//! Each integer written is mixed with a folded 64×64→128-bit multiply (the construction of
//! foldhash and wyhash) under a seed drawn once per map from std's `RandomState`, so keys chosen
//! by a client (ECS addresses) cannot be made to collide without knowing the seed. It is not a
//! cryptographic MAC; the maps that use it are bounded and emptied when full, which caps what a
//! flood of distinct keys can cost anyway.

use std::hash::{BuildHasher, Hasher};

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// Builds [`QuickHasher`]s with one random seed.
#[derive(Debug, Clone, Copy)]
pub struct QuickHash {
    seed: u64,
}

impl Default for QuickHash {
    fn default() -> Self {
        QuickHash {
            seed: std::collections::hash_map::RandomState::new()
                .hash_one(0x6d65_7269_6469_616e_u64),
        }
    }
}

impl BuildHasher for QuickHash {
    type Hasher = QuickHasher;

    fn build_hasher(&self) -> QuickHasher {
        QuickHasher { state: self.seed }
    }
}

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct QuickHasher {
    state: u64,
}

fn fold_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a).wrapping_mul(u128::from(b));
    // Truncation intended: the low and high halves are folded together.
    (full as u64) ^ ((full >> 64) as u64)
}

impl Hasher for QuickHasher {
    fn finish(&self) -> u64 {
        fold_multiply(self.state, MULTIPLIER)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.write_u64(u64::from(value));
    }

    fn write_u16(&mut self, value: u16) {
        self.write_u64(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.state = fold_multiply(self.state ^ value, MULTIPLIER);
    }

    fn write_u128(&mut self, value: u128) {
        // Truncation intended: both halves are written.
        self.write_u64(value as u64);
        self.write_u64((value >> 64) as u64);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn distinct_addresses_rarely_share_a_hash() {
        let build = QuickHash::default();
        let hashes: HashSet<u64> = (0..65_536u32)
            .map(|i| build.hash_one(IpAddr::V4(Ipv4Addr::from(i << 8))))
            .collect();
        assert!(hashes.len() > 65_500, "{} distinct", hashes.len());
    }

    #[test]
    fn equal_keys_hash_equal_and_seeds_differ() {
        let build = QuickHash::default();
        let key = (28u16, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)], 24u8);
        assert_eq!(build.hash_one(&key), build.hash_one(key.clone()));
        let other = QuickHash::default();
        assert_ne!(build.hash_one(&key), other.hash_one(&key));
    }
}
