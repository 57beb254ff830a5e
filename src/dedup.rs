//! Deduplication: the same entry delivered twice counts once (CONTRACT section 1).
//!
//! Pub/Sub delivers at least once and overlapping log sinks publish an entry twice, usually
//! within minutes of each other. The window remembers the last `capacity` keys at least and
//! `2 × capacity` at most, in two generations: when the young one fills, the old one is
//! dropped. Memory is bounded (8 bytes a key plus the table's overhead) and no clock is read.

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
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The low 64 bits of each 128-bit key: half the memory, and a false duplicate among a
/// million keys has a chance of about 3 in 100 million.
type KeySet = HashSet<u64, BuildHasherDefault<PreHashed>>;

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
            // Sized once: growing by doubling would rehash every key and, for a moment, hold
            // both tables. Untouched pages of the table cost no memory until used.
            young: KeySet::with_capacity_and_hasher(capacity, Default::default()),
            old: KeySet::default(),
        }
    }

    /// Records `key`; false when it was seen within the window (a duplicate).
    pub fn insert(&mut self, key: u128) -> bool {
        let key = key as u64;
        if self.old.contains(&key) {
            return false;
        }
        // One probe of the young table in the common case: `insert` says whether it was there.
        if self.young.len() >= self.capacity {
            if self.young.contains(&key) {
                return false;
            }
            // The old generation goes first, so two full tables are the most ever held.
            self.old = KeySet::default();
            let fresh = KeySet::with_capacity_and_hasher(self.capacity, Default::default());
            self.old = std::mem::replace(&mut self.young, fresh);
        }
        self.young.insert(key)
    }

    /// Keys currently remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
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
