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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::source::{RedisConfig, RedisTarget};
use crate::control::Control;
use crate::ratelimit::fleet::{set_reachable, take, Ask};

/// Keys per script call.
const BATCH: usize = 512;

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

fn open(url: &str, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let conn = redis::Client::open(url)?.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    Ok(conn)
}

/// A connection to the Redis server, or to the master the sentinels name now (asked on
/// every connection, so a failover is followed on the next one). Every step is bounded by
/// the timeout.
fn connect(cfg: &RedisConfig) -> redis::RedisResult<redis::Connection> {
    match &cfg.target {
        RedisTarget::Url(url) => open(url, cfg.timeout),
        RedisTarget::Sentinel { sentinels, master } => {
            let mut last = None;
            for s in sentinels {
                let asked = open(s, cfg.timeout).and_then(|mut c| {
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(master)
                        .query::<(String, u16)>(&mut c)
                });
                match asked {
                    Ok((host, port)) => {
                        let host = if host.contains(':') {
                            format!("[{host}]")
                        } else {
                            host
                        };
                        return open(&format!("redis://{host}:{port}"), cfg.timeout);
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::Io, "no sentinel configured"))
            }))
        }
    }
}

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
    if let Some(rx) = crate::ratelimit::fleet::install_strict(cfg.timeout, cfg.fail_closed) {
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
                    set_reachable(true, cfg.fail_closed);
                    up = Some(true);
                }
            }
            Err(e) => {
                // What was admitted while Redis could not be reached is not charged later:
                // the local limit bounded it, and charging a long outage at once would lock
                // busy keys out for as long again.
                conn = None;
                crate::metrics::redis_error();
                if up != Some(false) {
                    if cfg.fail_closed {
                        tracing::error!(redis = %cfg.describe(), "Redis unreachable ({e}): fleet-scoped rate limits refuse every request until it is back (fail_closed)");
                    } else {
                        tracing::error!(redis = %cfg.describe(), "Redis unreachable ({e}): each appliance enforces fleet-scoped limits alone until it is back (fail_open)");
                    }
                    crate::metrics::redis_up(false);
                    set_reachable(false, cfg.fail_closed);
                    up = Some(false);
                }
            }
        }
    }
}
