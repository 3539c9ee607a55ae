//! A coarse monotonic clock in milliseconds since the process started. Policies take `now`
//! as an argument, so tests drive time by hand instead of sleeping.

use std::sync::OnceLock;
use std::time::Instant;

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds since the process started (at least 1, so 0 can mean "never").
pub fn now_ms() -> u64 {
    start().elapsed().as_millis() as u64 + 1
}

/// A precise timestamp for latency figures (request and upstream durations), read from the
/// CPU's time-stamp counter where it is reliable: cheaper than the system clock on the
/// request path, which reads it several times per request.
pub type Stamp = quanta::Instant;

pub fn stamp() -> Stamp {
    quanta::Instant::now()
}
