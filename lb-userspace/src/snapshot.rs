//! The immutable snapshot workers route from, and its lock-free publication.
//!
//! A snapshot is built and validated off the request path, then published with one atomic
//! pointer swap. Each worker keeps an `Rc` of the snapshot it last saw and compares a
//! generation counter per request (one relaxed load, no shared write), so a request holds the
//! snapshot it started with until it ends and a reload never blocks a worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::config::{BalancerKind, ClusterConfig, Config, HttpConfig};
use crate::routing::RouteTable;

/// State of one endpoint that outlives snapshots: kept by identity (its address) so that a
/// reload which keeps an endpoint keeps its counters.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    /// Requests in flight to this endpoint across all workers.
    pub in_flight: AtomicU64,
}

/// One endpoint as a snapshot sees it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub state: Arc<EndpointState>,
}

/// A cluster with everything a worker needs to proxy to it.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub balancer: BalancerKind,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_endpoint: usize,
}

/// Everything a worker reads to decide what to do with a request.
#[derive(Debug)]
pub struct Snapshot {
    /// Content hash of the config text, hex.
    pub version: String,
    pub loaded_at: SystemTime,
    pub routes: RouteTable,
    pub clusters: Vec<Cluster>,
    pub http: HttpConfig,
    pub config: Config,
}

/// Hands out `EndpointState` by address, so that snapshots built from successive configs
/// share the state of endpoints they have in common. Only touched when building a snapshot.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    states: Mutex<HashMap<SocketAddr, Weak<EndpointState>>>,
}

impl EndpointRegistry {
    pub fn get(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = states.get(&addr).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(EndpointState {
            addr,
            in_flight: AtomicU64::new(0),
        });
        states.insert(addr, Arc::downgrade(&s));
        s
    }
}

impl Snapshot {
    /// Compiles a validated config into a snapshot.
    pub fn build(config: Config, text: &str, registry: &EndpointRegistry) -> Snapshot {
        let clusters = config
            .clusters
            .iter()
            .map(|c: &ClusterConfig| Cluster {
                name: c.name.clone(),
                endpoints: c
                    .endpoints
                    .iter()
                    .map(|e| Endpoint {
                        addr: e.addr,
                        weight: e.weight,
                        state: registry.get(e.addr),
                    })
                    .collect(),
                balancer: c.balancer,
                connect_timeout: c.connect_timeout,
                response_timeout: c.response_timeout,
                idle_timeout: c.idle_timeout,
                pool_idle_timeout: c.pool_idle_timeout,
                pool_max_idle_per_endpoint: c.pool_max_idle_per_endpoint,
            })
            .collect();
        Snapshot {
            version: content_hash(text.as_bytes()),
            loaded_at: SystemTime::now(),
            routes: RouteTable::build(&config.routes),
            clusters,
            http: config.http.clone(),
            config,
        }
    }
}

/// FNV-1a 64 of the config text: stable across builds and hosts, which is all a version needs.
pub fn content_hash(bytes: &[u8]) -> String {
    format!("{:016x}", crate::hash::fnv1a_of(bytes))
}

/// The published snapshot and its generation.
pub struct SnapshotCell {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
}

impl SnapshotCell {
    pub fn new(s: Snapshot) -> SnapshotCell {
        SnapshotCell {
            current: ArcSwap::from_pointee(s),
            generation: AtomicU64::new(1),
        }
    }

    /// Publishes a new snapshot; requests already running keep the old one.
    pub fn publish(&self, s: Snapshot) {
        self.current.store(Arc::new(s));
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const TEXT: &str = r#"
        [[listeners]]
        addr = "127.0.0.1:0"
        [[clusters]]
        name = "a"
        endpoints = [{ addr = "127.0.0.1:9001" }]
        [[routes]]
        cluster = "a"
    "#;

    #[test]
    fn endpoint_state_survives_rebuild() {
        let reg = EndpointRegistry::default();
        let c = Config::parse(TEXT, Path::new("t")).unwrap();
        let s1 = Snapshot::build(c.clone(), TEXT, &reg);
        s1.clusters[0].endpoints[0]
            .state
            .in_flight
            .store(7, Ordering::Relaxed);
        let s2 = Snapshot::build(c, TEXT, &reg);
        assert_eq!(
            s2.clusters[0].endpoints[0]
                .state
                .in_flight
                .load(Ordering::Relaxed),
            7
        );
        assert_eq!(s1.version, s2.version);
    }

    #[test]
    fn publish_bumps_generation() {
        let reg = EndpointRegistry::default();
        let c = Config::parse(TEXT, Path::new("t")).unwrap();
        let cell = SnapshotCell::new(Snapshot::build(c.clone(), TEXT, &reg));
        let g = cell.generation();
        let old = cell.load();
        cell.publish(Snapshot::build(c, "other text", &reg));
        assert_eq!(cell.generation(), g + 1);
        assert_ne!(cell.load().version, old.version);
    }
}
