//! Deduplication: the same entry delivered twice counts once (CONTRACT section 1).
//!
//! Pub/Sub delivers at least once and overlapping log sinks publish an entry twice, usually
//! within minutes of each other. The window remembers the last `capacity` keys at least and
//! `2 × capacity` at most, in two generations: when the young one fills, the old one is
//! dropped. Memory is bounded (16 bytes a key plus the table's overhead) and no clock is read.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// Keys are already xxh3 hashes: hashing them again would only cost time.
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys are hashed; fold whatever comes in, to stay correct if that changes.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

type KeySet = HashSet<u128, BuildHasherDefault<PreHashed>>;

/// The dedup window.
pub struct Dedup {
    capacity: usize,
    young: KeySet,
    old: KeySet,
}

/// Default window: half a million entries, about an hour of a busy organisation's scheduler
/// logs, and ~20 MiB at most — far wider than Pub/Sub's redelivery delays.
pub const DEFAULT_CAPACITY: usize = 500_000;

impl Dedup {
    /// A window that remembers at least `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Dedup {
            capacity,
            young: KeySet::default(),
            old: KeySet::default(),
        }
    }

    /// Records `key`; false when it was seen within the window (a duplicate).
    pub fn insert(&mut self, key: u128) -> bool {
        if self.young.contains(&key) || self.old.contains(&key) {
            return false;
        }
        if self.young.len() >= self.capacity {
            self.old = std::mem::take(&mut self.young);
            self.young.reserve(self.capacity.min(1 << 16));
        }
        self.young.insert(key)
    }

    /// Whether `key` is within the window, without recording it.
    pub fn contains(&self, key: u128) -> bool {
        self.young.contains(&key) || self.old.contains(&key)
    }

    /// Keys currently remembered.
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup::new(DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_counts_once_within_the_window() {
        let mut d = Dedup::new(4);
        assert!(d.insert(1));
        assert!(!d.insert(1));
        for k in 2..=8 {
            assert!(d.insert(k));
        }
        assert!(
            !d.insert(5),
            "the last `capacity` keys are always remembered"
        );
        assert!(d.len() <= 8);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut d = Dedup::new(1000);
        for k in 0..100_000u128 {
            d.insert(k * 0x9E37_79B9_7F4A_7C15);
        }
        assert!(d.len() <= 2000);
    }
}
