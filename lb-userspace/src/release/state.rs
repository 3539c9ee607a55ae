//! Live state of a split, shared by all workers: weights (swapped as a whole), per-target
//! window statistics, and what the analysis decided last.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

/// Window buckets.
const BUCKETS: usize = 10;
/// Latency histogram: bucket k holds latencies up to `100 µs * sqrt(2)^k`.
pub const LATENCY_BUCKETS: usize = 44;

fn latency_bound_us(k: usize) -> f64 {
    100.0 * 2f64.powf(k as f64 / 2.0)
}

fn latency_bucket(d: Duration) -> usize {
    let us = d.as_secs_f64() * 1e6;
    (0..LATENCY_BUCKETS)
        .find(|&k| us <= latency_bound_us(k))
        .unwrap_or(LATENCY_BUCKETS - 1)
}

struct Slot {
    epoch: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU32; LATENCY_BUCKETS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            epoch: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// One worker's window of one target, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
struct Cell {
    slots: [Slot; BUCKETS],
}

/// Requests, 5xx responses and latencies of one target over a sliding window. Each worker
/// records into a cell of its own (one per core; more workers than cores share, which stays
/// exact), so the request path writes no cache line another core writes; readers sum cells.
pub struct TargetStats {
    cells: Vec<Cell>,
}

impl Default for TargetStats {
    fn default() -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        TargetStats {
            cells: (0..n).map(|_| Cell::default()).collect(),
        }
    }
}

/// A window's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowStats {
    pub requests: u64,
    pub errors: u64,
    pub p99: Option<Duration>,
}

impl WindowStats {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// A window's requests, 5xx responses and latency histogram: sums of these over
/// appliances are the fleet's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub latency: [u64; LATENCY_BUCKETS],
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            requests: 0,
            errors: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

impl Counts {
    pub fn add(&mut self, other: &Counts) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            *a += b;
        }
    }

    pub fn stats(&self) -> WindowStats {
        WindowStats {
            requests: self.requests,
            errors: self.errors,
            p99: p99_of(&self.latency),
        }
    }
}

/// One window bucket summed over workers.
struct Bucket {
    requests: u64,
    errors: u64,
    latency: [u64; LATENCY_BUCKETS],
}

impl Default for Bucket {
    fn default() -> Self {
        Bucket {
            requests: 0,
            errors: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

/// The 99th percentile of a latency histogram, as its bucket's upper bound.
fn p99_of(hist: &[u64; LATENCY_BUCKETS]) -> Option<Duration> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total * 99).div_ceil(100);
    let mut seen = 0;
    for (k, &n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(Duration::from_secs_f64(latency_bound_us(k) / 1e6));
        }
    }
    None
}

impl TargetStats {
    /// Records one request of `worker`.
    pub fn record(
        &self,
        worker: usize,
        now_ms: u64,
        window: Duration,
        error: bool,
        latency: Duration,
    ) {
        let width = (window.as_millis() as u64 / BUCKETS as u64).max(1);
        let epoch = now_ms / width;
        let cell = &self.cells[worker % self.cells.len()];
        let slot = &cell.slots[(epoch % BUCKETS as u64) as usize];
        if slot.epoch.swap(epoch, Ordering::AcqRel) != epoch {
            slot.requests.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
            for l in &slot.latency {
                l.store(0, Ordering::Relaxed);
            }
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// The window's totals, summed over every worker's cell.
    pub fn window(&self, now_ms: u64, window: Duration) -> WindowStats {
        self.counts(now_ms, window).stats()
    }

    /// The window's counts, summed over every worker's cell: what an appliance publishes
    /// for the fleet's analysis.
    pub fn counts(&self, now_ms: u64, window: Duration) -> Counts {
        let mut c = Counts::default();
        for b in self.buckets(now_ms, window) {
            c.requests += b.requests;
            c.errors += b.errors;
            for (h, n) in c.latency.iter_mut().zip(&b.latency) {
                *h += n;
            }
        }
        c
    }

    /// The window bucket by bucket, oldest first: what the console draws. Each bucket is a
    /// tenth of the window.
    pub fn series(&self, now_ms: u64, window: Duration) -> Vec<WindowStats> {
        self.buckets(now_ms, window)
            .iter()
            .rev()
            .map(|b| WindowStats {
                requests: b.requests,
                errors: b.errors,
                p99: p99_of(&b.latency),
            })
            .collect()
    }

    /// Each bucket's totals summed over workers, by age (the current bucket first).
    fn buckets(&self, now_ms: u64, window: Duration) -> [Bucket; BUCKETS] {
        let width = (window.as_millis() as u64 / BUCKETS as u64).max(1);
        let epoch = now_ms / width;
        let mut out: [Bucket; BUCKETS] = std::array::from_fn(|_| Bucket::default());
        for slot in self.cells.iter().flat_map(|c| &c.slots) {
            let age = epoch.saturating_sub(slot.epoch.load(Ordering::Acquire));
            let Some(b) = out.get_mut(age as usize) else {
                continue;
            };
            b.requests += slot.requests.load(Ordering::Relaxed);
            b.errors += slot.errors.load(Ordering::Relaxed);
            for (h, l) in b.latency.iter_mut().zip(&slot.latency) {
                *h += l.load(Ordering::Relaxed) as u64;
            }
        }
        out
    }

    pub fn reset(&self) {
        for slot in self.cells.iter().flat_map(|c| &c.slots) {
            slot.epoch.store(0, Ordering::Relaxed);
            slot.requests.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
        }
    }
}

/// The last decision about a split, for the admin API.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Decision {
    pub at_unix: u64,
    pub action: String,
    pub reason: String,
}

/// Live state of one split.
pub struct SplitState {
    weights: ArcSwap<Vec<u32>>,
    /// The configuration fingerprint this state follows.
    pub fingerprint: AtomicU64,
    /// Weights were set through the admin API rather than the file.
    pub runtime_weights: AtomicBool,
    pub paused: AtomicBool,
    pub rolled_back: AtomicBool,
    /// Index into the promotion steps of the step in force.
    pub step: AtomicU32,
    pub step_started_ms: AtomicU64,
    pub last_evaluated_ms: AtomicU64,
    pub stats: Vec<TargetStats>,
    pub decision: Mutex<Decision>,
    /// The analysis verdict of the last evaluation: `not_enough_data`, `healthy` or `breach`.
    pub last_verdict: Mutex<&'static str>,
    pub rollbacks: AtomicU64,
    /// Mirror copies in flight.
    pub mirror_in_flight: Arc<AtomicU64>,
}

impl SplitState {
    pub fn new(weights: Vec<u32>, fingerprint: u64) -> SplitState {
        let n = weights.len();
        SplitState {
            weights: ArcSwap::from_pointee(weights),
            fingerprint: AtomicU64::new(fingerprint),
            runtime_weights: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            rolled_back: AtomicBool::new(false),
            step: AtomicU32::new(0),
            step_started_ms: AtomicU64::new(crate::clock::now_ms()),
            last_evaluated_ms: AtomicU64::new(0),
            stats: (0..n).map(|_| TargetStats::default()).collect(),
            decision: Mutex::new(Decision::default()),
            last_verdict: Mutex::new("none"),
            rollbacks: AtomicU64::new(0),
            mirror_in_flight: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The weights in force (ppm per target), as an owned handle (off the request path).
    pub fn weights(&self) -> Arc<Vec<u32>> {
        self.weights.load_full()
    }

    /// Runs `f` on the weights in force without touching their shared reference count
    /// (the request path: no cache line written that other cores read).
    pub fn with_weights<R>(&self, f: impl FnOnce(&[u32]) -> R) -> R {
        f(&self.weights.load())
    }

    /// Replaces every weight at once: a request sees the old set or the new one, never a mix.
    pub fn set_weights(&self, w: Vec<u32>) {
        self.weights.store(Arc::new(w));
    }

    /// Records what was decided and why.
    pub fn decide(&self, split: &str, action: &str, reason: String) {
        let at_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        tracing::info!(split, action, reason = %reason, "split decision");
        *self.decision.lock().unwrap_or_else(|p| p.into_inner()) = Decision {
            at_unix,
            action: action.to_string(),
            reason,
        };
    }
}
