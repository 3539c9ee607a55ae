//! Distribution of every balancer, with fixed seeds and stated tolerances.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::WorkerBalancer;
use crate::config::Config;
use crate::snapshot::{Cluster, Snapshot, StateRegistry};

fn cluster(balancer: &str, weights: &[u32]) -> Cluster {
    let eps: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!("{{ addr = \"127.0.0.{}:80\", weight = {w} }}", i + 1))
        .collect();
    let text = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[[clusters]]\nname = \"c\"\nbalancer = \"{balancer}\"\nhash_key = \"header:x-user\"\nendpoints = [{}]\n",
        eps.join(", ")
    );
    let config = Config::parse(&text, Path::new("t")).unwrap_or_else(|e| panic!("{e}"));
    let snap = Snapshot::build(config, &text, &StateRegistry::default()).expect("snapshot");
    snap.clusters[0].clone()
}

fn counts(
    c: &Cluster,
    b: &WorkerBalancer,
    n: usize,
    usable: impl Fn(usize) -> bool + Copy,
) -> Vec<usize> {
    let mut counts = vec![0; c.endpoints.len()];
    for _ in 0..n {
        counts[b.pick(&c.choice(), None, usable).unwrap()] += 1;
    }
    counts
}

fn within(counts: &[usize], expected: &[f64], tolerance: f64) {
    let total: usize = counts.iter().sum();
    for (c, e) in counts.iter().zip(expected) {
        let share = *c as f64 / total as f64;
        assert!(
            (share - e).abs() <= tolerance,
            "shares {counts:?} vs expected {expected:?}"
        );
    }
}

#[test]
fn round_robin_is_exact_and_skips_unusable() {
    let c = cluster("round_robin", &[1, 1, 1]);
    let b = WorkerBalancer::new(3, 0);
    let picks: Vec<_> = (0..6)
        .map(|_| b.pick(&c.choice(), None, |_| true).unwrap())
        .collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    assert_eq!(counts(&c, &b, 300, |i| i != 1), [150, 0, 150]);
    assert_eq!(b.pick(&c.choice(), None, |_| false), None);
}

#[test]
fn smooth_weighted_interleaves() {
    let c = cluster("weighted_round_robin", &[5, 1, 1]);
    let b = WorkerBalancer::new(3, 0);
    let picks: Vec<_> = (0..7)
        .map(|_| b.pick(&c.choice(), None, |_| true).unwrap())
        .collect();
    assert_eq!(
        picks,
        [0, 0, 1, 0, 2, 0, 0],
        "nginx's smooth sequence for 5:1:1"
    );
    assert_eq!(counts(&c, &b, 7000, |_| true), [5000, 1000, 1000]);
}

#[test]
fn random_follows_weights() {
    let c = cluster("random", &[3, 1]);
    let b = WorkerBalancer::new(2, 42);
    within(&counts(&c, &b, 20_000, |_| true), &[0.75, 0.25], 0.02);
}

#[test]
fn least_connections_prefers_the_idle_and_breaks_ties_randomly() {
    let c = cluster("least_connections", &[1, 1, 1]);
    let b = WorkerBalancer::new(3, 7);
    c.endpoints[0].state.in_flight.store(5, Ordering::Relaxed);
    c.endpoints[1].state.in_flight.store(2, Ordering::Relaxed);
    c.endpoints[2].state.in_flight.store(2, Ordering::Relaxed);
    let got = counts(&c, &b, 10_000, |_| true);
    assert_eq!(got[0], 0);
    within(&got, &[0.0, 0.5, 0.5], 0.03);
    // Weighted: 4 in flight on weight 4 beats 2 on weight 1.
    let w = cluster("least_connections", &[4, 1]);
    w.endpoints[0].state.in_flight.store(4, Ordering::Relaxed);
    w.endpoints[1].state.in_flight.store(2, Ordering::Relaxed);
    assert_eq!(b.pick(&w.choice(), None, |_| true), Some(0));
}

#[test]
fn power_of_two_avoids_the_loaded() {
    let c = cluster("power_of_two", &[1, 1, 1, 1]);
    let b = WorkerBalancer::new(4, 3);
    c.endpoints[2].state.in_flight.store(100, Ordering::Relaxed);
    let got = counts(&c, &b, 20_000, |_| true);
    // Endpoint 2 wins only when drawn twice: about 1/16 of picks.
    assert!(got[2] < 20_000 / 10, "{got:?}");
    within(&got, &[0.3125, 0.3125, 0.0625, 0.3125], 0.03);
}

#[test]
fn maglev_is_sticky_per_key() {
    let c = cluster("maglev", &[1, 1, 1]);
    let b = WorkerBalancer::new(3, 0);
    let h = super::maglev::key_hash(b"user-42");
    let first = b.pick(&c.choice(), Some(h), |_| true).unwrap();
    for _ in 0..100 {
        assert_eq!(b.pick(&c.choice(), Some(h), |_| true), Some(first));
    }
    let table = c.maglev.as_ref().unwrap();
    assert!(table.size() >= super::maglev::MIN_TABLE_SIZE);
}
