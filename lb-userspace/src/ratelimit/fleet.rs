//! Fleet-scoped rate limits, the request path's half (the Redis side is `fleet::ratelimit`,
//! on control threads). Each appliance's GCRA decides every request from its own table, as
//! for a local limit, and notes here what it admitted for each fleet-scoped key; a strict
//! limit's question is handed to the Redis thread and its answer awaited with a timeout.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::{Rate, Verdict};

/// Fleet keys tracked between syncs.
const SLOTS: usize = 1 << 14;
const PROBES: usize = 32;
/// A key neither seen nor owing a count for this long gives its slot up.
const IDLE_MS: u64 = 60_000;

struct Slot {
    key: AtomicU64,
    /// Requests admitted here since the last sync.
    delta: AtomicU64,
    /// The limit's emission interval (µs per request).
    interval_us: AtomicU64,
    seen_ms: AtomicU64,
}

fn slots() -> &'static [Slot] {
    static SLOTS_: OnceLock<Vec<Slot>> = OnceLock::new();
    SLOTS_.get_or_init(|| {
        (0..SLOTS)
            .map(|_| Slot {
                key: AtomicU64::new(0),
                delta: AtomicU64::new(0),
                interval_us: AtomicU64::new(0),
                seen_ms: AtomicU64::new(0),
            })
            .collect()
    })
}

fn slot(key: u64, now_ms: u64) -> Option<&'static Slot> {
    let all = slots();
    let start = (crate::hash::mix(key) as usize) % all.len();
    for i in 0..PROBES {
        let s = &all[(start + i) % all.len()];
        let owner = s.key.load(Ordering::Acquire);
        if owner == key {
            return Some(s);
        }
        let idle = owner != 0
            && s.delta.load(Ordering::Acquire) == 0
            && now_ms.saturating_sub(s.seen_ms.load(Ordering::Acquire)) > IDLE_MS;
        if (owner == 0 || idle)
            && s.key
                .compare_exchange(owner, key, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Some(s);
        }
    }
    None
}

/// Notes one request of fleet key `key` (the local table's key): seen, and counted if it
/// was admitted.
pub fn note(key: u64, rate: &Rate, admitted: bool) {
    let now = crate::clock::now_ms();
    let Some(s) = slot(key, now) else {
        return;
    };
    let interval = (rate.period.as_micros() as u64 / rate.requests.max(1) as u64).max(1);
    s.interval_us.store(interval, Ordering::Relaxed);
    s.seen_ms.store(now, Ordering::Relaxed);
    if admitted {
        s.delta.fetch_add(1, Ordering::AcqRel);
    }
}

/// One key's share of a sync.
pub struct Pending {
    pub key: u64,
    pub delta: u64,
    pub interval_us: u64,
}

/// The keys seen since `since_ms` or owing a count, their counts taken.
pub fn take(since_ms: u64) -> Vec<Pending> {
    slots()
        .iter()
        .filter_map(|s| {
            let key = s.key.load(Ordering::Acquire);
            if key == 0 {
                return None;
            }
            let seen = s.seen_ms.load(Ordering::Acquire) >= since_ms;
            if !seen && s.delta.load(Ordering::Acquire) == 0 {
                return None;
            }
            Some(Pending {
                key,
                delta: s.delta.swap(0, Ordering::AcqRel),
                interval_us: s.interval_us.load(Ordering::Relaxed),
            })
        })
        .collect()
}

/// Set while Redis is unreachable and `on_failure = "fail_closed"`.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// Set while the sync thread finds Redis unreachable: strict checks do not wait for it.
static DOWN: AtomicBool = AtomicBool::new(false);

/// Whether fleet-scoped limits refuse everything now (Redis down, `fail_closed`).
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// What the sync thread found: Redis reachable or not (and, if not, whether fleet limits
/// then refuse everything).
pub fn set_reachable(up: bool, fail_closed: bool) {
    DOWN.store(!up, Ordering::SeqCst);
    CLOSED.store(!up && fail_closed, Ordering::SeqCst);
}

/// A `strict` limit to ask Redis about: the key (as in the local table) and its rate.
#[derive(Debug, Clone, Copy)]
pub struct StrictCheck {
    pub key: u64,
    pub rate: Rate,
    /// The route, for its rate-limited count.
    pub route: usize,
}

/// One strict question for the Redis thread, and where its answer goes.
pub struct Ask {
    pub check: StrictCheck,
    pub reply: futures::channel::oneshot::Sender<Result<Verdict, String>>,
}

struct Strict {
    /// Bounded: past `STRICT_BACKLOG` questions waiting, a request does not queue behind
    /// them (it is decided as if Redis were down).
    asks: std::sync::mpsc::SyncSender<Ask>,
    timeout: Duration,
    fail_closed: bool,
}

static STRICT: OnceLock<Strict> = OnceLock::new();

/// Strict questions that may wait for the Redis thread at once.
const STRICT_BACKLOG: usize = 256;

/// Sets up strict checks: their questions come out of the returned queue, for the thread
/// that asks Redis. `None` if they were set up already.
pub fn install_strict(
    timeout: Duration,
    fail_closed: bool,
) -> Option<std::sync::mpsc::Receiver<Ask>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(STRICT_BACKLOG);
    STRICT
        .set(Strict {
            asks: tx,
            timeout,
            fail_closed,
        })
        .ok()
        .map(|_| rx)
}

/// Asks Redis whether one request of a strict limit may pass: `None` if it may, the refusal
/// if not. Redis unreachable or slower than `[redis] timeout`: `fail_closed` refuses,
/// `fail_open` falls back to this appliance's own count.
pub async fn strict(check: &StrictCheck) -> Option<Verdict> {
    let local = |c: &StrictCheck| {
        let v = super::table().check(c.key, c.rate, super::now_us());
        (!v.allowed).then_some(v)
    };
    let Some(st) = STRICT.get() else {
        return local(check);
    };
    let (reply, answer) = futures::channel::oneshot::channel();
    let sent = !DOWN.load(Ordering::Relaxed)
        && st
            .asks
            .try_send(Ask {
                check: *check,
                reply,
            })
            .is_ok();
    let answer = if DOWN.load(Ordering::Relaxed) {
        Err("Redis is unreachable".to_string())
    } else if sent {
        match crate::timer::timeout(st.timeout, answer).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err("the Redis thread stopped".to_string()),
            Err(_) => Err(format!("no answer within {:?}", st.timeout)),
        }
    } else {
        Err("the Redis thread is busy or stopped".to_string())
    };
    match answer {
        Ok(v) => (!v.allowed).then_some(v),
        Err(_) if st.fail_closed => {
            crate::metrics::fleet_limit_refused();
            Some(Verdict::refused(check.rate.burst))
        }
        Err(_) => {
            crate::metrics::redis_strict_fallback();
            local(check)
        }
    }
}
