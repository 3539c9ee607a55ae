//! Rate limits that hold across all workers: GCRA (the generic cell rate algorithm) over a
//! lock-free table of atomics. Each key's state is one theoretical arrival time, updated by
//! compare-and-swap, so N workers share one limit exactly and nothing takes a lock.

pub mod fleet;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Keys tracked at once. A full table admits untracked keys rather than refusing them.
const SLOTS: usize = 1 << 16;
/// Slots probed for a key before giving up.
const PROBES: usize = 32;

struct Slot {
    key: AtomicU64,
    /// Theoretical arrival time in microseconds since the process started.
    tat: AtomicU64,
}

/// The process-wide table.
pub struct Table {
    slots: Vec<Slot>,
}

/// What a limit said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until a request would be allowed again (0 if allowed).
    pub retry_after: u64,
    /// Seconds until the bucket is full again.
    pub reset: u64,
}

/// A limit: `requests` per `period`, with bursts up to `burst`.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub requests: u32,
    pub period: Duration,
    pub burst: u32,
}

pub fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| Table {
        slots: (0..SLOTS)
            .map(|_| Slot {
                key: AtomicU64::new(0),
                tat: AtomicU64::new(0),
            })
            .collect(),
    })
}

impl Verdict {
    /// A refusal with nothing left, to try again in a second.
    pub fn refused(limit: u32) -> Verdict {
        Verdict {
            allowed: false,
            limit,
            remaining: 0,
            retry_after: 1,
            reset: 1,
        }
    }
}

/// What a request arriving at `now_us` against theoretical arrival time `tat` gets, and the
/// new theoretical arrival time if it is allowed.
fn decide(tat: u64, rate: Rate, now_us: u64) -> (Verdict, u64) {
    let interval = (rate.period.as_micros() as u64 / rate.requests.max(1) as u64).max(1);
    let tolerance = interval * rate.burst.max(1) as u64;
    let new_tat = tat.max(now_us) + interval;
    if new_tat > now_us + tolerance {
        let retry_us = new_tat - (now_us + tolerance);
        let refused = Verdict {
            allowed: false,
            limit: rate.burst,
            remaining: 0,
            retry_after: retry_us.div_ceil(1_000_000).max(1),
            reset: (tat.saturating_sub(now_us)).div_ceil(1_000_000),
        };
        return (refused, tat);
    }
    let used = (new_tat - now_us).div_ceil(interval);
    let allowed = Verdict {
        allowed: true,
        limit: rate.burst,
        remaining: (rate.burst as u64).saturating_sub(used) as u32,
        retry_after: 0,
        reset: (new_tat - now_us).div_ceil(1_000_000),
    };
    (allowed, new_tat)
}

impl Table {
    /// Takes one token for `key` (a non-zero hash) at `now_us`; under [`crate::dryrun::run`] only says
    /// whether it could.
    pub fn check(&self, key: u64, rate: Rate, now_us: u64) -> Verdict {
        let key = key.max(1);
        if crate::dryrun::active() {
            let tat = self
                .find(key, now_us)
                .map_or(0, |s| s.tat.load(Ordering::Acquire));
            return decide(tat, rate, now_us).0;
        }
        let Some(slot) = self.slot(key, now_us) else {
            return Verdict {
                allowed: true,
                limit: rate.burst,
                remaining: 0,
                retry_after: 0,
                reset: 0,
            };
        };
        loop {
            let tat = slot.tat.load(Ordering::Acquire);
            let (verdict, new_tat) = decide(tat, rate, now_us);
            if !verdict.allowed
                || slot
                    .tat
                    .compare_exchange(tat, new_tat, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return verdict;
            }
        }
    }

    /// Every key that owes time at `now_us`, and how much (µs): what a binary upgrade
    /// hands over, so that a client limited before it is still limited after.
    pub fn export(&self, now_us: u64) -> Vec<(u64, u64)> {
        self.slots
            .iter()
            .filter_map(|s| {
                let key = s.key.load(Ordering::Acquire);
                let tat = s.tat.load(Ordering::Acquire);
                (key != 0 && tat > now_us).then(|| (key, tat - now_us))
            })
            .collect()
    }

    /// Takes keys an old process handed over: each owes, from `now_us`, what it owed then.
    /// Returns how many found a slot.
    pub fn import(&self, owed: &[(u64, u64)], now_us: u64) -> usize {
        let mut taken = 0;
        for &(key, owes) in owed {
            if let Some(slot) = self.slot(key.max(1), now_us) {
                slot.tat.fetch_max(now_us + owes, Ordering::AcqRel);
                taken += 1;
            }
        }
        taken
    }

    /// Moves `key`'s theoretical arrival time up to `tat` (µs, this process's clock) if it
    /// is behind: what the fleet's count says the key has used.
    pub fn raise(&self, key: u64, tat: u64) {
        let key = key.max(1);
        if let Some(slot) = self.slot(key, crate::ratelimit::now_us()) {
            slot.tat.fetch_max(tat, Ordering::AcqRel);
        }
    }

    /// The slot that holds `key`, without claiming one.
    fn find(&self, key: u64, now_us: u64) -> Option<&Slot> {
        let n = self.slots.len();
        let start = (crate::hash::mix(key) as usize) % n;
        (0..PROBES).map(|i| &self.slots[(start + i) % n]).find(|s| {
            s.key.load(Ordering::Acquire) == key && s.tat.load(Ordering::Acquire) >= now_us
        })
    }

    /// The slot for `key`, claiming a free or expired one if needed.
    fn slot(&self, key: u64, now_us: u64) -> Option<&Slot> {
        let n = self.slots.len();
        let start = (crate::hash::mix(key) as usize) % n;
        for i in 0..PROBES {
            let slot = &self.slots[(start + i) % n];
            let owner = slot.key.load(Ordering::Acquire);
            if owner == key {
                return Some(slot);
            }
            // A slot whose time has passed holds no tokens owed: free to take over.
            let expired = owner != 0 && slot.tat.load(Ordering::Acquire) < now_us;
            if (owner == 0 || expired)
                && slot
                    .key
                    .compare_exchange(owner, key, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                slot.tat.store(0, Ordering::Release);
                return Some(slot);
            }
        }
        None
    }
}

/// Microseconds since the process started.
pub fn now_us() -> u64 {
    crate::clock::now_ms() * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_count_then_refill() {
        let t = Table {
            slots: (0..1024)
                .map(|_| Slot {
                    key: AtomicU64::new(0),
                    tat: AtomicU64::new(0),
                })
                .collect(),
        };
        let rate = Rate {
            requests: 10,
            period: Duration::from_secs(60),
            burst: 10,
        };
        let now = 1_000_000_000;
        let allowed = (0..25).filter(|_| t.check(42, rate, now).allowed).count();
        assert_eq!(allowed, 10);
        let v = t.check(42, rate, now);
        assert!(!v.allowed);
        assert_eq!(v.retry_after, 6, "one token every 6 s");
        assert!(t.check(42, rate, now + 6_000_000).allowed);
        assert!(t.check(43, rate, now).allowed, "keys are independent");
        let before = t.check(44, rate, now).remaining;
        let looked = crate::dryrun::run(|| t.check(44, rate, now));
        assert_eq!(
            looked.remaining,
            before - 1,
            "a dry run says what the next one gets"
        );
        assert_eq!(
            t.check(44, rate, now).remaining,
            before - 1,
            "and takes nothing"
        );

        // Handed over to another table later (as an upgrade does), key 42 is still limited.
        let owed = t.export(now);
        assert!(owed.iter().any(|(k, _)| *k == 42));
        let u = Table {
            slots: (0..1024)
                .map(|_| Slot {
                    key: AtomicU64::new(0),
                    tat: AtomicU64::new(0),
                })
                .collect(),
        };
        let later = 5_000_000;
        assert_eq!(u.import(&owed, later), owed.len());
        let v = u.check(42, rate, later);
        assert!(!v.allowed, "still limited after the handover");
        assert!(u.check(43, rate, later).allowed);
    }
}

/// What requests are counted together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    /// Lower-case header name; requests without it share one bucket.
    Header(String),
    /// The consumer's name; anonymous requests share one bucket.
    Consumer,
    /// A claim of the route's verified JWT; requests without it share one bucket.
    Claim(String),
    /// The client's country (`[geoip]`); unknown addresses share the default's bucket.
    Country,
}

/// One rule of a route's rate limit.
#[derive(Debug, Clone)]
pub struct RateRule {
    /// Consumer metadata that must match; empty matches everyone.
    pub when: Vec<(String, String)>,
    /// Conditions on the route's verified JWT claims; empty matches everyone.
    pub when_claims: Vec<crate::client::jwt::ClaimCond>,
    pub rate: Rate,
}

/// A route's rate limit: the first rule whose `when` matches applies.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub key: RateKey,
    pub rules: Vec<RateRule>,
    /// Counted across the fleet through `[redis]` (`scope = "fleet"`).
    pub fleet: bool,
    /// Fleet-scoped and checked in Redis on each request (`strict = true`).
    pub strict: bool,
}
