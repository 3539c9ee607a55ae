//! Choosing an endpoint within a cluster. Round robin for now; the balancing issue adds
//! weighted, least-connections, P2C, random and Maglev behind the same call.

use std::cell::Cell;

/// Picks the next endpoint index in round-robin order, skipping those in `exclude`.
/// `cursor` is worker-local, so workers never contend on a shared counter.
pub fn round_robin(len: usize, cursor: &Cell<usize>, exclude: &[usize]) -> Option<usize> {
    for _ in 0..len {
        let i = cursor.get() % len.max(1);
        cursor.set(i + 1);
        if !exclude.contains(&i) {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_and_skips() {
        let c = Cell::new(0);
        let picks: Vec<_> = (0..6).map(|_| round_robin(3, &c, &[]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(round_robin(3, &c, &[0]), Some(1));
        assert_eq!(round_robin(2, &c, &[0, 1]), None);
        assert_eq!(round_robin(0, &c, &[]), None);
    }
}
