//! Connection limits shared by all workers: the total, and concurrent connections per client
//! IP. Every accepted connection is counted, whether or not a limit is set, so that a limit a
//! reload turns on applies to the connections already open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Independent locks for the per-IP counts, so that workers rarely contend.
const SHARDS: usize = 64;

/// Which limit refused a connection; the `reason` label of the refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Worker,
    Total,
    PerIp,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Worker => "worker",
            Refusal::Total => "total",
            Refusal::PerIp => "per_ip",
        }
    }

    /// The answer a refused client gets: 429 when it is the one holding too much, 503 when
    /// the appliance is full.
    pub fn status(self) -> u16 {
        match self {
            Refusal::PerIp => 429,
            Refusal::Worker | Refusal::Total => 503,
        }
    }
}

/// The limits in force; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub total: Option<usize>,
    pub per_worker: Option<usize>,
    pub per_ip: Option<usize>,
}

/// Open connections across workers.
pub struct Connections {
    total: AtomicUsize,
    per_ip: Box<[Mutex<HashMap<IpAddr, usize>>]>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            total: AtomicUsize::new(0),
            per_ip: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

/// One admitted connection; dropping it gives its place back.
pub struct Admitted {
    conns: Arc<Connections>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.conns.total.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.conns.shard(self.ip);
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Connections {
    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        let h = match ip {
            IpAddr::V4(a) => crate::hash::fnv1a_of(&a.octets()),
            IpAddr::V6(a) => crate::hash::fnv1a_of(&a.octets()),
        };
        // A poisoned shard only means a panic elsewhere while holding it; the counts are
        // still whole numbers, so keep using them.
        self.per_ip[(h % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip` when the worker holds `worker_open` connections, or
    /// says which limit refuses it.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        worker_open: usize,
        limits: &Limits,
    ) -> Result<Admitted, Refusal> {
        if limits.per_worker.is_some_and(|max| worker_open >= max) {
            return Err(Refusal::Worker);
        }
        let total = self.total.fetch_add(1, Ordering::Relaxed);
        if limits.total.is_some_and(|max| total >= max) {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Total);
        }
        let mut map = self.shard(ip);
        let n = map.entry(ip).or_insert(0);
        if limits.per_ip.is_some_and(|max| *n >= max) {
            if *n == 0 {
                map.remove(&ip);
            }
            drop(map);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::PerIp);
        }
        *n += 1;
        drop(map);
        Ok(Admitted {
            conns: self.clone(),
            ip,
        })
    }

    /// Connections open now across workers.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections open now from `ip`.
    pub fn from_ip(&self, ip: IpAddr) -> usize {
        self.shard(ip).get(&ip).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_refuse_and_places_come_back() {
        let c = Arc::new(Connections::default());
        let l = Limits {
            total: Some(3),
            per_worker: Some(10),
            per_ip: Some(2),
        };
        let a1 = c.admit(ip("10.0.0.1"), 0, &l).unwrap();
        let a2 = c.admit(ip("10.0.0.1"), 1, &l).unwrap();
        assert_eq!(c.admit(ip("10.0.0.1"), 2, &l).err(), Some(Refusal::PerIp));
        let b1 = c.admit(ip("10.0.0.2"), 2, &l).unwrap();
        assert_eq!(c.admit(ip("10.0.0.3"), 3, &l).err(), Some(Refusal::Total));
        assert_eq!(c.total(), 3);
        drop(a1);
        assert_eq!(c.from_ip(ip("10.0.0.1")), 1);
        let a3 = c.admit(ip("10.0.0.1"), 2, &l).unwrap();
        assert_eq!(c.admit(ip("10.0.0.4"), 10, &l).err(), Some(Refusal::Worker));
        drop((a2, a3, b1));
        assert_eq!(c.total(), 0);
        assert_eq!(c.from_ip(ip("10.0.0.1")), 0);
        // Refusals leave no trace.
        assert!(c.per_ip.iter().all(|s| s.lock().unwrap().is_empty()));
    }

    #[test]
    fn unlimited_still_counts() {
        let c = Arc::new(Connections::default());
        let held: Vec<_> = (0..100)
            .map(|_| c.admit(ip("::1"), 0, &Limits::default()).unwrap())
            .collect();
        assert_eq!(c.from_ip(ip("::1")), 100);
        drop(held);
        assert_eq!(c.total(), 0);
    }
}
