//! State of endpoints and clusters that outlives snapshots and is shared by all workers:
//! in-flight counts, health, outlier ejection and the failure breaker. All atomics: workers
//! record outcomes without locks. Every decision takes `now` (milliseconds, see
//! [`crate::clock`]) so that tests can drive time.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::upstream::policy::{BreakerConfig, OutlierConfig};

/// Buckets in a sliding window.
const BUCKETS: u64 = 10;

/// Successes and failures over a sliding window of `BUCKETS` buckets.
#[derive(Debug, Default)]
pub struct RateWindow {
    slots: [WindowSlot; BUCKETS as usize],
}

#[derive(Debug, Default)]
struct WindowSlot {
    epoch: AtomicU64,
    ok: AtomicU32,
    err: AtomicU32,
}

impl RateWindow {
    pub fn record(&self, now: u64, window_ms: u64, ok: bool) {
        let width = (window_ms / BUCKETS).max(1);
        let epoch = now / width;
        let slot = &self.slots[(epoch % BUCKETS) as usize];
        if slot.epoch.swap(epoch, Ordering::Relaxed) != epoch {
            // A new bucket: races between workers lose a count or two, never corrupt.
            slot.ok.store(0, Ordering::Relaxed);
            slot.err.store(0, Ordering::Relaxed);
        }
        if ok {
            slot.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            slot.err.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (successes, failures) within the window ending at `now`.
    pub fn totals(&self, now: u64, window_ms: u64) -> (u32, u32) {
        let width = (window_ms / BUCKETS).max(1);
        let epoch = now / width;
        self.slots
            .iter()
            .filter(|s| epoch.saturating_sub(s.epoch.load(Ordering::Relaxed)) < BUCKETS)
            .fold((0, 0), |(o, e), s| {
                (
                    o + s.ok.load(Ordering::Relaxed),
                    e + s.err.load(Ordering::Relaxed),
                )
            })
    }

    pub fn reset(&self) {
        for s in &self.slots {
            s.ok.store(0, Ordering::Relaxed);
            s.err.store(0, Ordering::Relaxed);
        }
    }
}

/// Breaker states, stored as `u8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    fn from_u8(v: u8) -> BreakerState {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What the breaker said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// Half-open: go ahead as one of the limited probes.
    Probe,
    /// Open, or half-open with every probe slot taken.
    Rejected,
}

/// The failure breaker of one endpoint.
#[derive(Debug, Default)]
pub struct Breaker {
    state: AtomicU8,
    opened_at: AtomicU64,
    consecutive: AtomicU32,
    window: RateWindow,
    probes_in_flight: AtomicU32,
    probe_successes: AtomicU32,
    /// Times it opened, for the admin view and metrics.
    pub opened_total: AtomicU64,
}

impl Breaker {
    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Asks to send one request at `now`.
    pub fn admit(&self, cfg: &BreakerConfig, now: u64) -> Admission {
        match self.state() {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open => {
                let until =
                    self.opened_at.load(Ordering::Acquire) + cfg.open_for.as_millis() as u64;
                if now < until {
                    return Admission::Rejected;
                }
                if self
                    .state
                    .compare_exchange(
                        BreakerState::Open as u8,
                        BreakerState::HalfOpen as u8,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    self.probes_in_flight.store(0, Ordering::Release);
                    self.probe_successes.store(0, Ordering::Release);
                }
                self.admit(cfg, now)
            }
            BreakerState::HalfOpen => {
                let taken = self.probes_in_flight.fetch_add(1, Ordering::AcqRel);
                if taken < cfg.half_open_probes {
                    Admission::Probe
                } else {
                    self.probes_in_flight.fetch_sub(1, Ordering::AcqRel);
                    Admission::Rejected
                }
            }
        }
    }

    /// Records the outcome of a request that was admitted as `admission`.
    pub fn record(&self, cfg: &BreakerConfig, admission: Admission, ok: bool, now: u64) {
        let window = cfg.window.as_millis() as u64;
        match admission {
            Admission::Rejected => {}
            Admission::Probe => {
                self.probes_in_flight.fetch_sub(1, Ordering::AcqRel);
                if !ok {
                    self.open(now);
                } else if self.probe_successes.fetch_add(1, Ordering::AcqRel) + 1
                    >= cfg.half_open_probes
                    && self
                        .state
                        .compare_exchange(
                            BreakerState::HalfOpen as u8,
                            BreakerState::Closed as u8,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                {
                    self.consecutive.store(0, Ordering::Release);
                    self.window.reset();
                }
            }
            Admission::Allowed => {
                self.window.record(now, window, ok);
                if ok {
                    self.consecutive.store(0, Ordering::Relaxed);
                    return;
                }
                let consecutive = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                let by_count =
                    cfg.consecutive_failures > 0 && consecutive >= cfg.consecutive_failures;
                let by_rate = cfg.failure_rate.is_some_and(|threshold| {
                    let (good, bad) = self.window.totals(now, window);
                    let total = good + bad;
                    total >= cfg.min_requests.max(1) && bad as f64 / total as f64 >= threshold
                });
                if (by_count || by_rate) && self.state() == BreakerState::Closed {
                    self.open(now);
                }
            }
        }
    }

    fn open(&self, now: u64) {
        self.opened_at.store(now, Ordering::Release);
        if self.state.swap(BreakerState::Open as u8, Ordering::AcqRel) != BreakerState::Open as u8 {
            self.opened_total.fetch_add(1, Ordering::Relaxed);
        }
        self.consecutive.store(0, Ordering::Release);
    }
}

/// How one upstream attempt ended, as health, outlier detection and the breaker see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response below 500.
    Success,
    /// A 5xx response.
    ServerError,
    /// Connect refused, reset or timed out.
    ConnectFailure,
    /// Reset, closed or timed out after connecting, before a full response.
    Failure,
}

impl Outcome {
    pub fn ok(self) -> bool {
        self == Outcome::Success
    }
}

/// State of one endpoint, shared by all workers and kept across reloads by address.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    /// Requests in flight to this endpoint across all workers.
    pub in_flight: AtomicU64,
    /// Open upstream connections (in use or pooled) across all workers.
    pub connections: AtomicU64,
    /// Requests waiting for a connection.
    pub pending: AtomicU64,
    /// Retries in flight to this endpoint (for `endpoint_limits.max_retries`).
    pub retries_in_flight: AtomicU64,
    /// Verdict of active health checks; true until a check says otherwise.
    pub healthy: AtomicBool,
    pub check_successes: AtomicU32,
    pub check_failures: AtomicU32,
    consecutive_5xx: AtomicU32,
    consecutive_connect: AtomicU32,
    outlier_window: RateWindow,
    ejected_until: AtomicU64,
    /// Times outlier detection ejected this endpoint.
    pub ejections: AtomicU32,
    pub breaker: Breaker,
    pub requests_total: AtomicU64,
    pub failures_total: AtomicU64,
}

impl EndpointState {
    pub fn new(addr: SocketAddr) -> EndpointState {
        EndpointState {
            addr,
            in_flight: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            retries_in_flight: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            consecutive_5xx: AtomicU32::new(0),
            consecutive_connect: AtomicU32::new(0),
            outlier_window: RateWindow::default(),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            breaker: Breaker::default(),
            requests_total: AtomicU64::new(0),
            failures_total: AtomicU64::new(0),
        }
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Acquire) > now
    }

    /// Healthy by active checks and not ejected by outlier detection.
    pub fn is_available(&self, now: u64) -> bool {
        self.healthy.load(Ordering::Acquire) && !self.is_ejected(now)
    }

    /// Feeds an active health check result; returns the new verdict if it changed.
    pub fn record_check(
        &self,
        ok: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        if ok {
            self.check_failures.store(0, Ordering::Relaxed);
            let n = self.check_successes.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= healthy_threshold && !self.healthy.swap(true, Ordering::AcqRel) {
                return Some(true);
            }
        } else {
            self.check_successes.store(0, Ordering::Relaxed);
            let n = self.check_failures.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= unhealthy_threshold && self.healthy.swap(false, Ordering::AcqRel) {
                return Some(false);
            }
        }
        None
    }

    /// Feeds passive outlier detection. `ejected_in_cluster` counts the cluster's endpoints
    /// ejected now, `cluster_size` all of them. Returns true if this call ejected the endpoint.
    pub fn record_outlier(
        &self,
        cfg: &OutlierConfig,
        outcome: Outcome,
        now: u64,
        ejected_in_cluster: usize,
        cluster_size: usize,
    ) -> bool {
        let window = cfg.window.as_millis() as u64;
        self.outlier_window.record(now, window, outcome.ok());
        match outcome {
            Outcome::ServerError => {
                self.consecutive_5xx.fetch_add(1, Ordering::AcqRel);
            }
            Outcome::ConnectFailure => {
                self.consecutive_connect.fetch_add(1, Ordering::AcqRel);
            }
            Outcome::Success => {
                self.consecutive_5xx.store(0, Ordering::Relaxed);
                self.consecutive_connect.store(0, Ordering::Relaxed);
            }
            Outcome::Failure => {}
        }
        if self.is_ejected(now) {
            return false;
        }
        let c5 = self.consecutive_5xx.load(Ordering::Acquire);
        let cc = self.consecutive_connect.load(Ordering::Acquire);
        let by_rate = cfg.error_rate.is_some_and(|threshold| {
            let (good, bad) = self.outlier_window.totals(now, window);
            let total = good + bad;
            total >= cfg.min_requests.max(1) && bad as f64 / total as f64 >= threshold
        });
        let trigger = (cfg.consecutive_5xx > 0 && c5 >= cfg.consecutive_5xx)
            || (cfg.consecutive_connect_failures > 0 && cc >= cfg.consecutive_connect_failures)
            || by_rate;
        if !trigger {
            return false;
        }
        // Never eject beyond the cap: detection alone must not empty a cluster.
        if (ejected_in_cluster + 1) * 100 > cfg.max_ejected_percent as usize * cluster_size {
            return false;
        }
        let times = self.ejections.fetch_add(1, Ordering::AcqRel) + 1;
        let base = cfg.base_ejection_time.as_millis() as u64;
        let duration = base
            .saturating_mul(times as u64)
            .min(cfg.max_ejection_time.as_millis() as u64);
        self.ejected_until.store(now + duration, Ordering::Release);
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_connect.store(0, Ordering::Relaxed);
        self.outlier_window.reset();
        true
    }

    /// What outlier detection and health checks know of this endpoint, to carry over a binary
    /// upgrade; `None` if it knows nothing a new process would not start with.
    pub fn carried(&self, now: u64) -> Option<Carried> {
        let c = Carried {
            addr: self.addr.to_string(),
            ejected_for_ms: self.ejected_for(now),
            ejections: self.ejections.load(Ordering::Acquire),
            healthy: self.healthy.load(Ordering::Acquire),
            check_successes: self.check_successes.load(Ordering::Acquire),
            check_failures: self.check_failures.load(Ordering::Acquire),
        };
        (c.ejected_for_ms > 0 || c.ejections > 0 || !c.healthy || c.check_failures > 0).then_some(c)
    }

    /// Takes what an old process knew of this endpoint, as of `now`.
    pub fn restore(&self, c: &Carried, now: u64) {
        if c.ejected_for_ms > 0 {
            self.ejected_until
                .store(now + c.ejected_for_ms, Ordering::Release);
        }
        self.ejections.store(c.ejections, Ordering::Release);
        self.healthy.store(c.healthy, Ordering::Release);
        self.check_successes
            .store(c.check_successes, Ordering::Release);
        self.check_failures
            .store(c.check_failures, Ordering::Release);
    }

    /// Milliseconds of ejection left at `now` (0 if not ejected).
    pub fn ejected_for(&self, now: u64) -> u64 {
        self.ejected_until
            .load(Ordering::Acquire)
            .saturating_sub(now)
    }
}

/// An endpoint's health and ejection, as a binary upgrade hands them over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Carried {
    pub addr: String,
    /// Ejection left (0: not ejected).
    pub ejected_for_ms: u64,
    pub ejections: u32,
    pub healthy: bool,
    pub check_successes: u32,
    pub check_failures: u32,
}

/// State of one cluster shared by all workers, kept across reloads by name.
#[derive(Debug, Default)]
pub struct ClusterState {
    pub in_flight: AtomicU64,
    pub retries_in_flight: AtomicU64,
    pub connections: AtomicU64,
    pub pending: AtomicU64,
}

#[cfg(test)]
mod tests;
