//! Every breaker transition and the outlier detector, with time driven by hand.

use std::time::Duration;

use super::*;

fn breaker_cfg() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 3,
        failure_rate: None,
        window: Duration::from_secs(10),
        min_requests: 10,
        open_for: Duration::from_secs(5),
        half_open_probes: 2,
    }
}

#[test]
fn closed_stays_closed_below_the_threshold_and_successes_reset_the_count() {
    let b = Breaker::default();
    let c = breaker_cfg();
    for _ in 0..2 {
        b.record(&c, b.admit(&c, 0), false, 0);
    }
    b.record(&c, b.admit(&c, 0), true, 0);
    for _ in 0..2 {
        b.record(&c, b.admit(&c, 0), false, 0);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn closed_to_open_on_consecutive_failures_then_rejects() {
    let b = Breaker::default();
    let c = breaker_cfg();
    for _ in 0..3 {
        assert_eq!(b.admit(&c, 100), Admission::Allowed);
        b.record(&c, Admission::Allowed, false, 100);
    }
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.admit(&c, 100), Admission::Rejected);
    assert_eq!(
        b.admit(&c, 5_099),
        Admission::Rejected,
        "still open just before open_for"
    );
    assert_eq!(b.opened_total.load(Ordering::Relaxed), 1);
}

#[test]
fn closed_to_open_on_failure_rate() {
    let b = Breaker::default();
    let c = BreakerConfig {
        consecutive_failures: 0,
        failure_rate: Some(0.5),
        ..breaker_cfg()
    };
    // Alternate so that consecutive failures never pile up: 5 of 10 fail.
    for i in 0..10 {
        b.record(&c, Admission::Allowed, i % 2 == 0, 1_000);
    }
    assert_eq!(b.state(), BreakerState::Open);
    // Below min_requests nothing is judged.
    let b = Breaker::default();
    for i in 0..8 {
        b.record(&c, Admission::Allowed, i % 2 == 0, 1_000);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

fn open_breaker(c: &BreakerConfig) -> Breaker {
    let b = Breaker::default();
    for _ in 0..3 {
        b.record(c, Admission::Allowed, false, 0);
    }
    assert_eq!(b.state(), BreakerState::Open);
    b
}

#[test]
fn open_to_half_open_admits_a_limited_number_of_probes() {
    let c = breaker_cfg();
    let b = open_breaker(&c);
    assert_eq!(b.admit(&c, 5_000), Admission::Probe);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(b.admit(&c, 5_000), Admission::Probe);
    assert_eq!(
        b.admit(&c, 5_000),
        Admission::Rejected,
        "only half_open_probes at once"
    );
}

#[test]
fn half_open_to_closed_after_enough_successful_probes() {
    let c = breaker_cfg();
    let b = open_breaker(&c);
    let p1 = b.admit(&c, 5_000);
    let p2 = b.admit(&c, 5_000);
    b.record(&c, p1, true, 5_001);
    assert_eq!(
        b.state(),
        BreakerState::HalfOpen,
        "one success of two needed"
    );
    b.record(&c, p2, true, 5_002);
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.admit(&c, 5_003), Admission::Allowed);
}

#[test]
fn half_open_to_open_again_on_a_failed_probe() {
    let c = breaker_cfg();
    let b = open_breaker(&c);
    let p = b.admit(&c, 6_000);
    b.record(&c, p, false, 6_000);
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(
        b.admit(&c, 10_999),
        Admission::Rejected,
        "open_for counts from the new opening"
    );
    assert_eq!(b.admit(&c, 11_000), Admission::Probe);
    assert_eq!(b.opened_total.load(Ordering::Relaxed), 2);
}

fn outlier_cfg() -> OutlierConfig {
    OutlierConfig {
        consecutive_5xx: 3,
        consecutive_connect_failures: 2,
        error_rate: None,
        window: Duration::from_secs(10),
        min_requests: 10,
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(75),
        max_ejected_percent: 50,
    }
}

fn ep() -> EndpointState {
    EndpointState::new("127.0.0.1:1".parse().unwrap())
}

#[test]
fn ejection_after_consecutive_5xx_grows_on_repeat_offenders() {
    let e = ep();
    let c = outlier_cfg();
    assert!(!e.record_outlier(&c, Outcome::ServerError, 0, 0, 4));
    assert!(!e.record_outlier(&c, Outcome::ServerError, 0, 0, 4));
    assert!(e.record_outlier(&c, Outcome::ServerError, 0, 0, 4));
    assert!(!e.is_available(29_999));
    assert!(e.is_available(30_000));
    for _ in 0..3 {
        e.record_outlier(&c, Outcome::ServerError, 30_000, 0, 4);
    }
    assert_eq!(
        e.ejected_for(30_000),
        60_000,
        "second ejection lasts twice as long"
    );
    for _ in 0..3 {
        e.record_outlier(&c, Outcome::ServerError, 90_000, 0, 4);
    }
    assert_eq!(e.ejected_for(90_000), 75_000, "capped at max_ejection_time");
}

#[test]
fn ejection_on_connect_failures_and_success_resets() {
    let e = ep();
    let c = outlier_cfg();
    e.record_outlier(&c, Outcome::ConnectFailure, 0, 0, 4);
    e.record_outlier(&c, Outcome::Success, 0, 0, 4);
    assert!(!e.record_outlier(&c, Outcome::ConnectFailure, 0, 0, 4));
    assert!(e.record_outlier(&c, Outcome::ConnectFailure, 0, 0, 4));
}

#[test]
fn ejection_on_error_rate() {
    let e = ep();
    let c = OutlierConfig {
        consecutive_5xx: 0,
        error_rate: Some(0.5),
        ..outlier_cfg()
    };
    let mut ejected = false;
    for i in 0..10 {
        let o = if i % 2 == 0 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        ejected |= e.record_outlier(&c, o, 500, 0, 4);
    }
    assert!(ejected);
}

#[test]
fn ejection_is_capped_by_max_ejected_percent() {
    let c = outlier_cfg();
    let e = ep();
    for _ in 0..5 {
        // 2 of 4 already ejected: a third would be 75% > 50%.
        assert!(!e.record_outlier(&c, Outcome::ServerError, 0, 2, 4));
    }
    assert!(e.is_available(0));
    assert!(
        e.record_outlier(&c, Outcome::ServerError, 0, 1, 4),
        "2 of 4 is within 50%"
    );
}

#[test]
fn active_checks_need_thresholds_to_flip() {
    let e = ep();
    assert_eq!(e.record_check(false, 2, 3), None);
    assert_eq!(e.record_check(false, 2, 3), None);
    assert_eq!(e.record_check(false, 2, 3), Some(false));
    assert!(!e.is_available(0));
    assert_eq!(e.record_check(true, 2, 3), None);
    assert_eq!(e.record_check(true, 2, 3), Some(true));
    assert!(e.is_available(0));
}

#[test]
fn window_forgets_old_buckets() {
    let w = RateWindow::default();
    w.record(0, 1000, false);
    w.record(50, 1000, true);
    assert_eq!(w.totals(60, 1000), (1, 1));
    assert_eq!(w.totals(2_000, 1000), (0, 0));
}
