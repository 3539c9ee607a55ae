//! Split assignment and canary analysis.

use std::time::Duration;

use super::analysis::{judge, Verdict};
use super::state::{SplitState, WindowStats};
use super::*;

#[test]
fn buckets_are_stable_and_salted() {
    assert_eq!(bucket("s1", b"user-1"), bucket("s1", b"user-1"));
    let moved = (0..1000)
        .filter(|i| {
            let k = format!("user-{i}");
            bucket("s1", k.as_bytes()) != bucket("s2", k.as_bytes())
        })
        .count();
    assert!(moved > 990, "changing the salt re-randomizes: {moved}");
}

#[test]
fn raising_a_canary_keeps_earlier_assignments() {
    // canary is target 1, stable (default) is target 0.
    let at_5 = [950_000, 50_000];
    let at_10 = [900_000, 100_000];
    let mut kept = 0;
    let mut canary_at_5 = 0;
    for i in 0..20_000 {
        let b = bucket("salt", format!("u{i}").as_bytes());
        if target_for(b, &at_5, 0) == 1 {
            canary_at_5 += 1;
            assert_eq!(
                target_for(b, &at_10, 0),
                1,
                "a 5% user left the canary at 10%"
            );
            kept += 1;
        }
    }
    assert_eq!(kept, canary_at_5);
    assert!((800..1200).contains(&canary_at_5), "{canary_at_5}");
}

#[test]
fn zero_weight_means_no_traffic_and_fine_weights_work() {
    for b in (0..PPM).step_by(997) {
        assert_eq!(target_for(b, &[1_000_000, 0], 0), 0);
    }
    let tenth = (0..PPM)
        .filter(|&b| target_for(b, &[999_000, 1_000], 0) == 1)
        .count();
    assert_eq!(tenth, 1_000, "0.1% is exactly 1000 ppm");
    // Three-way: targets 1 and 2 take the low ranges in order, default 0 the rest.
    assert_eq!(target_for(0, &[500_000, 250_000, 250_000], 0), 1);
    assert_eq!(target_for(250_000, &[500_000, 250_000, 250_000], 0), 2);
    assert_eq!(target_for(500_000, &[500_000, 250_000, 250_000], 0), 0);
}

fn analysis() -> AnalysisConfig {
    AnalysisConfig {
        baseline: 0,
        canary: 1,
        window: Duration::from_secs(60),
        interval: Duration::from_secs(1),
        min_requests: 50,
        max_error_rate: Some(0.5),
        max_error_rate_increase: Some(0.05),
        max_p99: None,
        max_p99_ratio: Some(2.0),
    }
}

fn stats(requests: u64, errors: u64, p99_ms: u64) -> WindowStats {
    WindowStats {
        requests,
        errors,
        p99: Some(Duration::from_millis(p99_ms)),
    }
}

#[test]
fn judge_breaches_on_errors_and_latency() {
    let a = analysis();
    assert!(
        matches!(judge(&a, &stats(1000, 10, 20), &stats(100, 20, 20)), Verdict::Breach(r) if r.contains("5xx"))
    );
    assert!(
        matches!(judge(&a, &stats(1000, 10, 20), &stats(100, 1, 100)), Verdict::Breach(r) if r.contains("p99"))
    );
    assert_eq!(
        judge(&a, &stats(1000, 10, 20), &stats(100, 2, 25)),
        Verdict::Healthy
    );
}

#[test]
fn judge_waits_for_data_and_compares_with_the_baseline() {
    let a = analysis();
    assert_eq!(
        judge(&a, &stats(1000, 0, 20), &stats(49, 49, 900)),
        Verdict::NotEnoughData
    );
    // Stable equally bad: no rollback on the relative thresholds.
    assert_eq!(
        judge(&a, &stats(1000, 300, 200), &stats(100, 31, 210)),
        Verdict::Healthy
    );
    // But the absolute limit still holds.
    assert!(matches!(
        judge(&a, &stats(1000, 600, 20), &stats(100, 60, 20)),
        Verdict::Breach(_)
    ));
}

#[test]
fn window_statistics_and_p99() {
    let s = SplitState::new(vec![PPM, 0], 1);
    let w = Duration::from_secs(10);
    for i in 0..100u64 {
        let latency = if i < 98 {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(500)
        };
        s.stats[0].record(i as usize, 1_000, w, i % 10 == 0, latency);
    }
    let st = s.stats[0].window(1_000, w);
    assert_eq!((st.requests, st.errors), (100, 10));
    let p99 = st.p99.unwrap();
    assert!(
        p99 >= Duration::from_millis(400) && p99 <= Duration::from_millis(750),
        "{p99:?}"
    );
    assert_eq!(
        s.stats[0].window(1_000 + 20_000, w).requests,
        0,
        "old buckets age out"
    );
}
