//! Connection limits shared by all workers: the total, and concurrent connections per client
//! IP. Every accepted connection is counted, whether or not a limit is set, so that a limit a
//! reload turns on applies to the connections already open.
//!
//! Nothing here locks or allocates: the total is one atomic, and the per-IP counts live in a
//! fixed table of atomic counters, each IP counted in two slots chosen by two independent
//! hashes, its count being the smaller of the two (a count-min sketch). Sharing a slot can
//! only over-count, so a client is never admitted past its limit because of another; it can
//! be refused early only if other clients fill both of its slots up to the limit (with 20,000
//! clients online and a limit of 2, about one client in two million). Concurrent arrivals
//! from one IP can pass its limit by at most the number arriving in the same instant.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// Counter slots for per-IP counts (two per IP): 4 MiB of address space, of which only the
/// pages of slots in use become resident (the table starts as zero pages).
const SLOTS: usize = 1 << 20;

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

/// Open connections across workers. Made once per process and never freed
/// ([`Connections::leak`]), so an admitted connection holds a plain reference.
pub struct Connections {
    total: AtomicUsize,
    per_ip: Box<[AtomicU32]>,
}

impl Default for Connections {
    fn default() -> Self {
        // SAFETY: an all-zero `AtomicU32` is a valid 0 (same layout as `u32`), so the
        // zeroed slice is fully initialised. Zeroed allocation leaves untouched pages unmapped.
        let per_ip = unsafe { Box::<[AtomicU32]>::new_zeroed_slice(SLOTS).assume_init() };
        Connections {
            total: AtomicUsize::new(0),
            per_ip,
        }
    }
}

/// One admitted connection; dropping it gives its place back.
pub struct Admitted {
    conns: &'static Connections,
    slots: (usize, usize),
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.conns.total.fetch_sub(1, Ordering::Relaxed);
        self.conns.per_ip[self.slots.0].fetch_sub(1, Ordering::Relaxed);
        self.conns.per_ip[self.slots.1].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The two counter slots of `ip` (always different).
fn slots(ip: IpAddr) -> (usize, usize) {
    let h = match ip {
        IpAddr::V4(a) => crate::hash::fnv1a_of(&a.octets()),
        IpAddr::V6(a) => crate::hash::fnv1a_of(&a.octets()),
    };
    let h = crate::hash::mix(h);
    let a = (h as usize) & (SLOTS - 1);
    let b = ((h >> 32) as usize) & (SLOTS - 1);
    (a, if a == b { (b + 1) & (SLOTS - 1) } else { b })
}

impl Connections {
    /// The process's connection counts, for every worker to share.
    pub fn leak() -> &'static Connections {
        Box::leak(Box::new(Connections::default()))
    }

    /// Admits a connection from `ip` when the worker holds `worker_open` connections, or
    /// says which limit refuses it.
    pub fn admit(
        &'static self,
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
        let (a, b) = slots(ip);
        let na = self.per_ip[a].fetch_add(1, Ordering::Relaxed);
        let nb = self.per_ip[b].fetch_add(1, Ordering::Relaxed);
        let admitted = Admitted {
            conns: self,
            slots: (a, b),
        };
        if limits.per_ip.is_some_and(|max| na.min(nb) as usize >= max) {
            // Dropping it gives back all three counts.
            drop(admitted);
            return Err(Refusal::PerIp);
        }
        Ok(admitted)
    }

    /// Connections open now across workers.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections open now from `ip` (exact unless other IPs fill both of its slots).
    pub fn from_ip(&self, ip: IpAddr) -> usize {
        let (a, b) = slots(ip);
        let na = self.per_ip[a].load(Ordering::Relaxed);
        let nb = self.per_ip[b].load(Ordering::Relaxed);
        na.min(nb) as usize
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
        let c = Connections::leak();
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
        assert!(c.per_ip.iter().all(|s| s.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn unlimited_still_counts() {
        let c = Connections::leak();
        let held: Vec<_> = (0..100)
            .map(|_| c.admit(ip("::1"), 0, &Limits::default()).unwrap())
            .collect();
        assert_eq!(c.from_ip(ip("::1")), 100);
        drop(held);
        assert_eq!(c.total(), 0);
    }

    #[test]
    fn many_clients_do_not_refuse_each_other() {
        // 20,000 clients with one connection each and a limit of 2: no client shares both
        // of its slots with enough others to be refused.
        let c = Connections::leak();
        let l = Limits {
            per_ip: Some(2),
            ..Limits::default()
        };
        let held: Vec<_> = (0..20_000u32)
            .map(|i| {
                let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
                c.admit(ip, 0, &l).expect("admitted")
            })
            .collect();
        assert_eq!(c.total(), 20_000);
        drop(held);
        assert!(c.per_ip.iter().all(|s| s.load(Ordering::Relaxed) == 0));
    }
}
