//! Consistent hashing through a Maglev-style lookup table, with weights.
//!
//! Like Maglev, a request key hashes to one slot of a prime-sized table that names its
//! endpoint, so a lookup is O(1). Unlike classic Maglev, which fills the table by letting
//! endpoints take turns along their permutations (and so moves some keys of endpoints that did
//! not change when one is removed: envoy#20703, #22558), each slot here is owned by the
//! endpoint with the highest weighted rendezvous score for that slot. Removing an endpoint
//! changes exactly the slots it owned; every other key stays put. The same scores give each
//! key a fixed order of next preferences, used when its endpoint is unusable.
//!
//! The table is a pure function of the endpoints' identities (their addresses as text) and
//! weights: every `lb` host with the same config builds the same table. It is built when the
//! snapshot is built, never on the request path.

use crate::hash::{fnv1a_of, mix};

/// Smallest table size: a prime, as in Maglev, so that key hashes spread evenly over slots.
pub const MIN_TABLE_SIZE: usize = 65_537;

/// Hash of a request key, the same on every host.
pub fn key_hash(key: &[u8]) -> u64 {
    mix(fnv1a_of(key))
}

/// The smallest prime at or above `n`.
pub fn prime_at_least(n: usize) -> usize {
    let is_prime = |k: usize| {
        k >= 2
            && (2..)
                .take_while(|d| d * d <= k)
                .all(|d| !k.is_multiple_of(d))
    };
    (n..).find(|&k| is_prime(k)).unwrap_or(n)
}

/// A built lookup table: slot -> endpoint index.
#[derive(Debug, Clone)]
pub struct MaglevTable {
    slots: Vec<u16>,
    ids: Vec<u64>,
    weights: Vec<u32>,
}

/// The usable endpoint with the highest score for `slot`.
fn best(slot: u64, ids: &[u64], weights: &[u32], usable: impl Fn(usize) -> bool) -> Option<usize> {
    let mut top: Option<(u32, u64, usize)> = None;
    for (i, (&id, &w)) in ids.iter().zip(weights).enumerate() {
        if !usable(i) {
            continue;
        }
        let l = neg_log(slot, id);
        if top.is_none_or(|(tw, tl, _)| beats(w, l, tw, tl)) {
            top = Some((w, l, i));
        }
    }
    top.map(|(_, _, i)| i)
}

/// `log2(h)` in 32.32 fixed point, by integer arithmetic only, so that the table is the
/// same bit for bit on every host whatever its floating-point library.
fn log2_fixed(h: u64) -> u64 {
    let h = h.max(1);
    let lz = h.leading_zeros();
    let int = 63 - lz as u64;
    // Mantissa in [1, 2) as Q1.63; squaring it doubles the log, one fraction bit per round.
    let mut m = ((h << lz) as u128) & ((1u128 << 64) - 1);
    let mut frac = 0u64;
    for bit in (0..32).rev() {
        m = (m * m) >> 63;
        if m >= 1u128 << 64 {
            m >>= 1;
            frac |= 1 << bit;
        }
    }
    (int << 32) | frac
}

/// `-log2(u)` for `u = h / 2^64`, the denominator of the weighted rendezvous score
/// `weight / -ln(u)` (the base of the log does not change the order).
fn neg_log(slot: u64, id: u64) -> u64 {
    let h = mix(slot.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ id);
    (64u64 << 32) - log2_fixed(h)
}

/// True if (weight `wa`, denominator `la`) scores higher than (`wb`, `lb`): `wa/la > wb/lb`.
fn beats(wa: u32, la: u64, wb: u32, lb: u64) -> bool {
    (wa.max(1) as u128) * (lb as u128) > (wb.max(1) as u128) * (la as u128)
}

impl MaglevTable {
    /// Builds the table for endpoints named `names` with `weights` (same length).
    /// `size` must be a prime.
    pub fn build(names: &[String], weights: &[u32], size: usize) -> MaglevTable {
        let ids: Vec<u64> = names.iter().map(|n| mix(fnv1a_of(n.as_bytes()))).collect();
        let weights: Vec<u32> = weights.to_vec();
        let slots = (0..size as u64)
            .map(|slot| best(slot, &ids, &weights, |_| true).map_or(u16::MAX, |i| i as u16))
            .collect();
        MaglevTable {
            slots,
            ids,
            weights,
        }
    }

    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// The endpoint for `hash`. If `usable` rejects it, the key goes to its next preference:
    /// the usable endpoint with the next highest score for the same slot. Only that
    /// endpoint's keys move, each always to the same place.
    pub fn lookup(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let m = self.slots.len() as u64;
        if m == 0 {
            return None;
        }
        let slot = hash % m;
        let first = self.slots[slot as usize] as usize;
        if first < self.ids.len() && usable(first) {
            return Some(first);
        }
        best(slot, &self.ids, &self.weights, usable)
    }

    /// Slots owned by each of `n` endpoints.
    pub fn shares(&self, n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &s in &self.slots {
            if let Some(c) = counts.get_mut(s as usize) {
                *c += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digest of the 5-endpoint table above, pinned so that cross-host determinism cannot
    /// silently change between versions.
    const TABLE_DIGEST: u64 = 9_263_941_041_514_508_684;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn owner(t: &MaglevTable, names: &[String], key: u64) -> String {
        names[t.lookup(key_hash(&key.to_le_bytes()), |_| true).unwrap()].clone()
    }

    #[test]
    fn deterministic_and_balanced() {
        let n = names(5);
        let a = MaglevTable::build(&n, &[1; 5], MIN_TABLE_SIZE);
        let b = MaglevTable::build(&n, &[1; 5], MIN_TABLE_SIZE);
        assert_eq!(a.slots, b.slots);
        // Pinned: a change here changes where every user's key lands on upgrade.
        assert_eq!(
            crate::hash::fnv1a_of(
                &a.slots
                    .iter()
                    .flat_map(|s| s.to_le_bytes())
                    .collect::<Vec<_>>()
            ),
            TABLE_DIGEST
        );
        for share in a.shares(5) {
            let ideal = MIN_TABLE_SIZE / 5;
            assert!(
                share.abs_diff(ideal) < ideal / 20,
                "share {share} vs {ideal}"
            );
        }
    }

    #[test]
    fn weights_are_honoured() {
        let n = names(3);
        let t = MaglevTable::build(&n, &[3, 1, 1], MIN_TABLE_SIZE);
        let s = t.shares(3);
        let ratio = s[0] as f64 / s[1] as f64;
        assert!((2.8..3.2).contains(&ratio), "shares {s:?}");
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let n = names(10);
        let before = MaglevTable::build(&n, &[1; 10], MIN_TABLE_SIZE);
        let mut fewer = n.clone();
        let removed = fewer.remove(3);
        let after = MaglevTable::build(&fewer, &[1; 9], MIN_TABLE_SIZE);
        let keys = 20_000u64;
        let (mut moved, mut moved_untouched) = (0, 0);
        for k in 0..keys {
            let (a, b) = (owner(&before, &n, k), owner(&after, &fewer, k));
            if a != b {
                moved += 1;
                if a != removed {
                    moved_untouched += 1;
                }
            }
        }
        let share = moved as f64 / keys as f64;
        println!("removing 1 of 10 moved {:.1}% of keys, {moved_untouched} of them from untouched endpoints", share * 100.0);
        assert!((0.08..0.16).contains(&share), "moved {share}");
        assert_eq!(moved_untouched, 0, "keys of untouched endpoints moved");
    }

    #[test]
    fn unusable_endpoint_keys_fall_through_alone() {
        let n = names(6);
        let t = MaglevTable::build(&n, &[1; 6], MIN_TABLE_SIZE);
        let mut spread = [0usize; 6];
        for k in 0..12_000u64 {
            let h = key_hash(&k.to_le_bytes());
            let primary = t.lookup(h, |_| true).unwrap();
            let fallback = t.lookup(h, |i| i != 2).unwrap();
            if primary != 2 {
                assert_eq!(primary, fallback, "a key of a healthy endpoint moved");
            } else {
                assert_ne!(fallback, 2);
                assert_eq!(
                    fallback,
                    t.lookup(h, |i| i != 2).unwrap(),
                    "fallback is stable"
                );
                spread[fallback] += 1;
            }
        }
        assert!(
            spread
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 2)
                .all(|(_, &c)| c > 100),
            "{spread:?}"
        );
    }

    #[test]
    fn fixed_point_log() {
        assert_eq!(log2_fixed(1), 0);
        assert_eq!(log2_fixed(2), 1 << 32);
        assert_eq!(log2_fixed(1 << 40), 40 << 32);
        let l3 = log2_fixed(3) as f64 / (1u64 << 32) as f64;
        assert!((l3 - 3f64.log2()).abs() < 1e-8, "{l3}");
    }

    #[test]
    fn primes() {
        assert_eq!(prime_at_least(65_537), 65_537);
        assert_eq!(prime_at_least(65_538), 65_539);
    }
}
