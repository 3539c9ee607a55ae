//! Choosing an endpoint within a cluster.
//!
//! Every balancer picks among the endpoints `usable` accepts (healthy, not ejected, not
//! already tried), so health, outlier ejection and retries compose with any algorithm.
//! Per-worker state (cursors, smooth weights, the random generator) lives in
//! [`WorkerBalancer`]; shared load (in-flight counts) is read from the endpoints' atomics, so
//! `least_connections` sees every worker's requests.

pub mod maglev;

use std::cell::{Cell, RefCell};

use std::net::IpAddr;

/// Balancing algorithm of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalancerKind {
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    PowerOfTwo,
    Random,
    Maglev,
}

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// Lower-case header name.
    Header(String),
    Cookie(String),
    Query(String),
    ClientIp,
    Path,
    /// A claim of the route's verified JWT (`jwt:NAME`; splits only).
    Claim(String),
    /// The client's country or continent (`[geoip]`; splits only).
    Country,
    Continent,
}

/// What a balancer needs to know of an endpoint.
pub trait Candidate {
    /// Its configured weight (at least 1).
    fn weight(&self) -> u32;
    /// Requests in flight to it now, across workers.
    fn load(&self) -> u64;
}

/// The endpoints of one cluster as a balancer sees them.
pub struct Choice<'a, E> {
    pub kind: BalancerKind,
    pub endpoints: &'a [E],
    pub maglev: Option<&'a maglev::MaglevTable>,
}

/// Per-worker, per-cluster balancing state.
pub struct WorkerBalancer {
    cursor: Cell<usize>,
    /// Smooth weighted round-robin current weights.
    current: RefCell<Vec<i64>>,
    rng: RefCell<fastrand::Rng>,
}

impl WorkerBalancer {
    pub fn new(endpoints: usize, seed: u64) -> WorkerBalancer {
        WorkerBalancer {
            cursor: Cell::new(seed as usize % endpoints.max(1)),
            current: RefCell::new(vec![0; endpoints]),
            rng: RefCell::new(fastrand::Rng::with_seed(seed)),
        }
    }

    /// Picks one of `choice`'s endpoints among those `usable` accepts. `key_hash` is the
    /// hashed request key for `maglev` (a missing key picks at random).
    pub fn pick<E: Candidate>(
        &self,
        choice: &Choice<'_, E>,
        key_hash: Option<u64>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let eps = choice.endpoints;
        let n = eps.len();
        if n == 0 {
            return None;
        }
        match choice.kind {
            BalancerKind::RoundRobin => self.round_robin(n, usable),
            BalancerKind::WeightedRoundRobin => self.smooth_weighted(eps, usable),
            BalancerKind::LeastConnections => self.least_connections(eps, usable),
            BalancerKind::PowerOfTwo => self.power_of_two(eps, usable),
            BalancerKind::Random => self.weighted_random(eps, usable),
            BalancerKind::Maglev => match (key_hash, choice.maglev) {
                (Some(h), Some(table)) => table.lookup(h, usable),
                _ => self.weighted_random(eps, usable),
            },
        }
    }

    fn round_robin(&self, n: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
        for _ in 0..n {
            let i = self.cursor.get() % n;
            self.cursor.set(i + 1);
            if usable(i) {
                return Some(i);
            }
        }
        None
    }

    /// nginx's smooth weighted round robin: weights 5:1:1 give a a b a c a a, interleaved.
    fn smooth_weighted<E: Candidate>(
        &self,
        eps: &[E],
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut current = self.current.borrow_mut();
        current.resize(eps.len(), 0);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, ep) in eps.iter().enumerate() {
            if !usable(i) {
                continue;
            }
            let w = ep.weight() as i64;
            current[i] += w;
            total += w;
            if best.is_none_or(|b| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        current[b] -= total;
        Some(b)
    }

    /// Fewest in-flight requests per unit of weight, across all workers; ties at random.
    fn least_connections<E: Candidate>(
        &self,
        eps: &[E],
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let mut rng = self.rng.borrow_mut();
        let mut best: Option<(u64, u64, usize)> = None; // (load, weight, index)
        let mut ties = 0u32;
        for (i, ep) in eps.iter().enumerate() {
            if !usable(i) {
                continue;
            }
            let load = ep.load();
            let w = ep.weight() as u64;
            match best {
                None => {
                    best = Some((load, w, i));
                    ties = 1;
                }
                Some((bl, bw, _)) => {
                    // load/w < bl/bw without division.
                    let (lhs, rhs) = (load * bw, bl * w);
                    if lhs < rhs {
                        best = Some((load, w, i));
                        ties = 1;
                    } else if lhs == rhs {
                        ties += 1;
                        if rng.u32(0..ties) == 0 {
                            best = Some((load, w, i));
                        }
                    }
                }
            }
        }
        best.map(|(_, _, i)| i)
    }

    /// Two random usable endpoints; the one with less load per weight.
    fn power_of_two<E: Candidate>(
        &self,
        eps: &[E],
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = eps.len();
        let mut rng = self.rng.borrow_mut();
        let mut draw = || {
            let start = rng.usize(0..n);
            (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
        };
        let a = draw()?;
        let b = draw().unwrap_or(a);
        let load = |i: usize| {
            let ep = &eps[i];
            (ep.load(), ep.weight() as u64)
        };
        let ((la, wa), (lb, wb)) = (load(a), load(b));
        Some(if lb * wa < la * wb { b } else { a })
    }

    fn weighted_random<E: Candidate>(
        &self,
        eps: &[E],
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let total: u64 = eps
            .iter()
            .enumerate()
            .filter(|(i, _)| usable(*i))
            .map(|(_, e)| e.weight() as u64)
            .sum();
        if total == 0 {
            return None;
        }
        let mut r = self.rng.borrow_mut().u64(0..total);
        for (i, ep) in eps.iter().enumerate() {
            if !usable(i) {
                continue;
            }
            if r < ep.weight() as u64 {
                return Some(i);
            }
            r -= ep.weight() as u64;
        }
        None
    }
}

/// The hash of a request's consistent-hashing key, or `None` if the request lacks the key.
pub fn request_key_hash(
    key: &HashKey,
    headers: &[httparse::Header<'_>],
    path: &[u8],
    query: Option<&[u8]>,
    client: IpAddr,
) -> Option<u64> {
    let value: &[u8] = match key {
        HashKey::Header(name) => {
            headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))?
                .value
        }
        HashKey::Cookie(name) => headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .find_map(|h| crate::http::cookie_value(h.value, name.as_bytes()))?,
        HashKey::Query(name) => crate::http::query_param(query?, name.as_bytes())?,
        HashKey::Path => path,
        // Clusters do not see claims (config refuses it there).
        HashKey::Claim(_) | HashKey::Country | HashKey::Continent => return None,
        HashKey::ClientIp => {
            return Some(match client {
                IpAddr::V4(v4) => maglev::key_hash(&v4.octets()),
                IpAddr::V6(v6) => maglev::key_hash(&v6.octets()),
            })
        }
    };
    Some(maglev::key_hash(value))
}

#[cfg(test)]
mod tests;
