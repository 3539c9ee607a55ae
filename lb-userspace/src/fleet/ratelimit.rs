//! Rate limits shared by the fleet (`scope = "fleet"`), through Redis.
//!
//! The request path stays local and exact: each appliance's GCRA decides every request
//! from its own table, as for a local limit, and notes what it admitted for each
//! fleet-scoped key. Every `sync_interval` a control thread brings those counts to Redis in
//! one Lua script per batch: the script charges them to the key's shared theoretical
//! arrival time (in Redis's clock) and answers how far ahead of now that time is, which the
//! appliance then raises its own key to. So every admission anywhere is eventually charged
//! everywhere, and what the fleet admits beyond the limit is what its appliances admit
//! between two syncs (see `docs/fleet.md` for the bound).
//!
//! Redis down: with `fail_open` each appliance goes on enforcing the limit alone; with
//! `fail_closed` fleet-scoped limits refuse every request until a sync succeeds again.
//! Either way, local limits are untouched.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::source::{RedisConfig, RedisTarget};
use crate::control::Control;
use crate::ratelimit::Rate;

/// Fleet keys tracked between syncs.
const SLOTS: usize = 1 << 14;
const PROBES: usize = 32;
/// A key neither seen nor owing a count for this long gives its slot up.
const IDLE_MS: u64 = 60_000;
/// Keys per script call.
const BATCH: usize = 512;

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

/// Set while Redis is unreachable and `on_failure = "fail_closed"`.
static CLOSED: AtomicBool = AtomicBool::new(false);
/// Set while the sync thread finds Redis unreachable: strict checks do not wait for it.
static DOWN: AtomicBool = AtomicBool::new(false);

/// Whether fleet-scoped limits refuse everything now (Redis down, `fail_closed`).
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
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
struct Pending {
    key: u64,
    delta: u64,
    interval_us: u64,
}

/// The keys seen since `since_ms` or owing a count, their counts taken.
fn take(since_ms: u64) -> Vec<Pending> {
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

/// Counts that could not be synced go back, to be charged next time.
fn give_back(batch: &[Pending]) {
    let now = crate::clock::now_ms();
    for p in batch.iter().filter(|p| p.delta > 0) {
        if let Some(s) = slot(p.key, now) {
            s.delta.fetch_add(p.delta, Ordering::AcqRel);
        }
    }
}

/// Charges each key's count to its shared theoretical arrival time (µs, Redis's clock) and
/// answers how far ahead of now each stands. Keys expire once their time has passed.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local delta = tonumber(ARGV[2 * i - 1])
  local interval = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or '0')
  if delta > 0 then
    if tat < now then tat = now end
    tat = tat + delta * interval
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
  end
  out[i] = tat - now
end
return out
"#;

fn connect(cfg: &RedisConfig) -> redis::RedisResult<redis::Connection> {
    let conn = match &cfg.target {
        RedisTarget::Url(url) => {
            redis::Client::open(url.as_str())?.get_connection_with_timeout(cfg.timeout)?
        }
        RedisTarget::Sentinel { sentinels, master } => redis::sentinel::SentinelClient::build(
            sentinels.clone(),
            master.clone(),
            None,
            redis::sentinel::SentinelServerType::Master,
        )?
        .get_connection()?,
    };
    conn.set_read_timeout(Some(cfg.timeout))?;
    conn.set_write_timeout(Some(cfg.timeout))?;
    Ok(conn)
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
struct Ask {
    check: StrictCheck,
    reply: futures::channel::oneshot::Sender<Result<crate::ratelimit::Verdict, String>>,
}

struct Strict {
    asks: std::sync::Mutex<std::sync::mpsc::Sender<Ask>>,
    timeout: Duration,
    fail_closed: bool,
}

static STRICT: OnceLock<Strict> = OnceLock::new();

/// GCRA in Redis for one request of a strict limit: `{allowed, remaining, retry µs, reset µs}`.
const STRICT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + interval
if new - now > tolerance then
  return {0, 0, new - now - tolerance, tat - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
return {1, math.floor((tolerance - (new - now)) / interval), 0, new - now}
"#;

/// Asks Redis whether one request of a strict limit may pass: `None` if it may, the refusal
/// if not. Redis unreachable or slower than `[redis] timeout`: `fail_closed` refuses,
/// `fail_open` falls back to this appliance's own count.
pub async fn strict(check: &StrictCheck) -> Option<crate::ratelimit::Verdict> {
    let local = |c: &StrictCheck| {
        let v = crate::ratelimit::table().check(c.key, c.rate, crate::ratelimit::now_us());
        (!v.allowed).then_some(v)
    };
    let Some(st) = STRICT.get() else {
        return local(check);
    };
    let (reply, answer) = futures::channel::oneshot::channel();
    let sent = !DOWN.load(Ordering::Relaxed)
        && st
            .asks
            .lock()
            .map(|tx| {
                tx.send(Ask {
                    check: *check,
                    reply,
                })
                .is_ok()
            })
            .unwrap_or(false);
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
        Err("the Redis thread stopped".to_string())
    };
    match answer {
        Ok(v) => (!v.allowed).then_some(v),
        Err(_) if st.fail_closed => {
            crate::metrics::fleet_limit_refused();
            Some(crate::ratelimit::Verdict::refused(check.rate.burst))
        }
        Err(_) => {
            crate::metrics::redis_strict_fallback();
            local(check)
        }
    }
}

/// The thread that answers strict questions, one Redis call each, on a connection of its
/// own (a slow sync never delays them).
fn strict_loop(cfg: &RedisConfig, asks: std::sync::mpsc::Receiver<Ask>) {
    let script = redis::Script::new(STRICT_SCRIPT);
    let mut conn: Option<redis::Connection> = None;
    while let Ok(ask) = asks.recv() {
        if ask.reply.is_canceled() {
            continue;
        }
        let c = ask.check;
        let interval = (c.rate.period.as_micros() as u64 / c.rate.requests.max(1) as u64).max(1);
        let tolerance = interval * c.rate.burst.max(1) as u64;
        let result = (|| -> Result<crate::ratelimit::Verdict, String> {
            if conn.is_none() {
                conn = Some(connect(cfg).map_err(|e| format!("connecting: {e}"))?);
            }
            let Some(conn) = conn.as_mut() else {
                return Err("no connection".into());
            };
            let r: Vec<i64> = script
                .key(format!("{}:{:016x}", cfg.prefix, c.key))
                .arg(interval)
                .arg(tolerance)
                .invoke(conn)
                .map_err(|e| e.to_string())?;
            let [allowed, remaining, retry, reset] = r[..] else {
                return Err(format!("unexpected answer {r:?}"));
            };
            let secs = |us: i64| (us.max(0) as u64).div_ceil(1_000_000);
            Ok(crate::ratelimit::Verdict {
                allowed: allowed == 1,
                limit: c.rate.burst,
                remaining: remaining.max(0) as u32,
                retry_after: if allowed == 1 { 0 } else { secs(retry).max(1) },
                reset: secs(reset),
            })
        })();
        if result.is_err() {
            conn = None;
            crate::metrics::redis_error();
        }
        let _ = ask.reply.send(result);
    }
}

/// Starts the control threads that sync fleet-scoped counts with Redis and answer strict
/// limits' questions.
pub fn spawn(control: Arc<Control>, cfg: RedisConfig) -> std::io::Result<()> {
    crate::metrics::redis_up(false);
    let (tx, rx) = std::sync::mpsc::channel();
    let first = STRICT
        .set(Strict {
            asks: std::sync::Mutex::new(tx),
            timeout: cfg.timeout,
            fail_closed: cfg.fail_closed,
        })
        .is_ok();
    if first {
        let c = cfg.clone();
        std::thread::Builder::new()
            .name("lb-redis-strict".into())
            .spawn(move || {
                crate::control::background_thread();
                strict_loop(&c, rx);
            })?;
    }
    std::thread::Builder::new()
        .name("lb-redis".into())
        .spawn(move || {
            crate::control::background_thread();
            sync_loop(&control, &cfg);
        })
        .map(|_| ())
}

fn sync_loop(control: &Control, cfg: &RedisConfig) {
    let script = redis::Script::new(SCRIPT);
    let mut conn: Option<redis::Connection> = None;
    let mut since = 0u64;
    let mut up = None::<bool>;
    let mut last_ping = Instant::now() - Duration::from_secs(10);
    tracing::info!(redis = %cfg.describe(), "fleet rate limits sync through Redis");
    loop {
        std::thread::sleep(cfg.sync_interval);
        if control.draining.load(Ordering::SeqCst) {
            return;
        }
        let round = crate::clock::now_ms();
        let batch = take(since);
        since = round;
        let result = (|| -> Result<(), String> {
            if conn.is_none() {
                conn = Some(connect(cfg).map_err(|e| format!("connecting: {e}"))?);
            }
            let Some(c) = conn.as_mut() else {
                return Err("no connection".into());
            };
            if batch.is_empty() {
                // Nothing to sync: a ping now and then keeps the health current.
                if last_ping.elapsed() >= Duration::from_secs(1) {
                    redis::cmd("PING")
                        .query::<String>(c)
                        .map_err(|e| e.to_string())?;
                    last_ping = Instant::now();
                }
                return Ok(());
            }
            let now_us = crate::ratelimit::now_us();
            for chunk in batch.chunks(BATCH) {
                let mut call = script.prepare_invoke();
                for p in chunk {
                    call.key(format!("{}:{:016x}", cfg.prefix, p.key));
                    call.arg(p.delta).arg(p.interval_us);
                }
                let ahead: Vec<i64> = call.invoke(c).map_err(|e| e.to_string())?;
                for (p, a) in chunk.iter().zip(ahead) {
                    if a > 0 {
                        crate::ratelimit::table().raise(p.key, now_us + a as u64);
                    }
                }
            }
            crate::metrics::redis_synced(batch.len());
            last_ping = Instant::now();
            Ok(())
        })();
        match result {
            Ok(()) => {
                if up != Some(true) {
                    tracing::info!(redis = %cfg.describe(), "Redis reachable: fleet rate limits are shared");
                    crate::metrics::redis_up(true);
                    CLOSED.store(false, Ordering::SeqCst);
                    DOWN.store(false, Ordering::SeqCst);
                    up = Some(true);
                }
            }
            Err(e) => {
                conn = None;
                give_back(&batch);
                crate::metrics::redis_error();
                if up != Some(false) {
                    if cfg.fail_closed {
                        tracing::error!(redis = %cfg.describe(), "Redis unreachable ({e}): fleet-scoped rate limits refuse every request until it is back (fail_closed)");
                    } else {
                        tracing::error!(redis = %cfg.describe(), "Redis unreachable ({e}): each appliance enforces fleet-scoped limits alone until it is back (fail_open)");
                    }
                    crate::metrics::redis_up(false);
                    CLOSED.store(cfg.fail_closed, Ordering::SeqCst);
                    DOWN.store(true, Ordering::SeqCst);
                    up = Some(false);
                }
            }
        }
    }
}
