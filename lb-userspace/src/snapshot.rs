//! The immutable snapshot workers route from, and its lock-free publication.
//!
//! A snapshot is built and validated off the request path, then published with one atomic
//! pointer swap. Each worker keeps an `Rc` of the snapshot it last saw and compares a
//! generation counter per request (one relaxed load, no shared write), so a request holds the
//! snapshot it started with until it ends and a reload never blocks a worker.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::balancing::maglev::MaglevTable;
use crate::balancing::BalancerKind;
use crate::config::{Config, ConfigError, HttpConfig, Target};
use crate::metrics::{ClusterMetrics, RouteMetrics, SplitMetrics};
use crate::release::state::SplitState;
use crate::release::SplitConfig;
use crate::routing::RouteTable;
pub use crate::upstream::state::{ClusterState, EndpointState};

pub use crate::upstream::cluster::{Cluster, Endpoint};

/// Everything a worker reads to decide what to do with a request.
#[derive(Debug)]
pub struct Snapshot {
    /// Content hash of the config text, hex.
    pub version: String,
    pub loaded_at: SystemTime,
    pub routes: RouteTable,
    pub clusters: Vec<Cluster>,
    pub http: HttpConfig,
    pub http2: crate::http::h2::H2Settings,
    pub config: Config,
    /// The config text it was built from, for rebuilding after re-resolution.
    pub text: String,
    /// Metric handles per route, by route index.
    pub route_metrics: Vec<RouteMetrics>,
    /// Metric handles for requests no route took (malformed, 404).
    pub unrouted_metrics: RouteMetrics,
    /// Every route's split, with its live state.
    pub splits: Vec<SplitRuntime>,
    /// Index into `splits` by route index.
    pub route_split: Vec<Option<usize>>,
    /// Index into `splits` by route index and version index, for versions with a split.
    pub version_split: Vec<Vec<Option<usize>>>,
    pub consumers: crate::identity::Consumers,
    /// Some route needs to know who the consumer is: keys are looked up only then.
    pub needs_identity: bool,
    /// JWT providers with their keys, by `[[jwt_providers]]` index.
    pub jwt: Vec<Arc<crate::client::jwt::Provider>>,
}

/// A split as a snapshot carries it: config, shared live state, metric handles.
pub struct SplitRuntime {
    pub config: Arc<SplitConfig>,
    pub state: Arc<SplitState>,
    pub route: usize,
    pub metrics: SplitMetrics,
}

impl std::fmt::Debug for SplitRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitRuntime")
            .field("name", &self.config.name)
            .finish()
    }
}

/// Hands out shared state by identity (endpoints by address, clusters by name), so that
/// snapshots built from successive configs share the state of what they have in common.
/// Only touched when building a snapshot.
#[derive(Debug, Default)]
pub struct StateRegistry {
    endpoints: Mutex<HashMap<SocketAddr, Weak<EndpointState>>>,
    clusters: Mutex<HashMap<String, Weak<ClusterState>>>,
    splits: Mutex<HashMap<String, Weak<SplitState>>>,
}

impl StateRegistry {
    /// The live state of split `cfg`: kept while its configuration is unchanged, so runtime
    /// weight changes and rollbacks survive reloads that do not touch the split; new when the
    /// file changes the split (the file then wins).
    pub fn split(&self, cfg: &SplitConfig) -> Arc<SplitState> {
        let mut states = self.splits.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = states.get(&cfg.name).and_then(Weak::upgrade) {
            if s.fingerprint.load(std::sync::atomic::Ordering::Relaxed) == cfg.fingerprint {
                return s;
            }
        }
        let s = Arc::new(SplitState::new(
            cfg.targets.iter().map(|t| t.weight_ppm).collect(),
            cfg.fingerprint,
        ));
        if let Some(p) = &cfg.promotion {
            if let (Some(a), Some(&first)) = (&cfg.analysis, p.steps.first()) {
                crate::release::analysis::set_canary(&s, a.canary, a.baseline, first);
            }
        }
        states.insert(cfg.name.clone(), Arc::downgrade(&s));
        s
    }

    pub fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut states = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = states.get(&addr).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(EndpointState::new(addr));
        states.insert(addr, Arc::downgrade(&s));
        s
    }

    pub fn cluster(&self, name: &str) -> Arc<ClusterState> {
        let mut states = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        states.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = states.get(name).and_then(Weak::upgrade) {
            return s;
        }
        let s = Arc::new(ClusterState::default());
        states.insert(name.to_string(), Arc::downgrade(&s));
        s
    }
}

/// Resolves a target to its addresses (a host name may give several).
pub fn resolve(target: &Target) -> Result<Vec<SocketAddr>, String> {
    match target {
        Target::Addr(a) => Ok(vec![*a]),
        Target::Host(host, port) => {
            let mut addrs: Vec<SocketAddr> = (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no address"));
            }
            Ok(addrs)
        }
    }
}

fn target_text(t: &Target) -> String {
    match t {
        Target::Addr(a) => a.to_string(),
        Target::Host(h, p) => format!("{h}:{p}"),
    }
}

impl Snapshot {
    /// Compiles a validated config into a snapshot, resolving host-name endpoints. Fails only
    /// if a host name does not resolve.
    pub fn build(
        config: Config,
        text: &str,
        registry: &StateRegistry,
    ) -> Result<Snapshot, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut clusters = Vec::new();
        for (ci, c) in config.clusters.iter().enumerate() {
            let mut endpoints: Vec<Endpoint> = Vec::new();
            for (ei, e) in c.endpoints.iter().enumerate() {
                match resolve(&e.target) {
                    Ok(addrs) => {
                        for addr in addrs {
                            if endpoints.iter().any(|x| x.addr == addr) {
                                continue;
                            }
                            let target = target_text(&e.target);
                            let tls_name = c.tls.as_ref().and_then(|t| t.server_name(&target));
                            if c.tls.is_some() && tls_name.is_none() {
                                // Never plaintext for a TLS cluster: without a name there
                                // is nothing to verify, so the config is refused.
                                errors.push(ConfigError {
                                    path: format!("clusters[{ci}].endpoints[{ei}].addr"),
                                    message: format!("{target} is not a name a TLS certificate can be verified against; set tls.server_name"),
                                    file: None,
                                });
                                continue;
                            }
                            let pool_key = match (&c.tls, &tls_name) {
                                (Some(t), Some(name)) => {
                                    crate::hash::fnv1a(t.key, name.to_str().as_bytes()) | 1
                                }
                                _ => 0,
                            };
                            endpoints.push(Endpoint {
                                addr,
                                weight: e.weight,
                                tls_name,
                                pool_key,
                                target,
                                state: registry.endpoint(addr),
                            });
                        }
                    }
                    Err(message) => errors.push(ConfigError {
                        path: format!("clusters[{ci}].endpoints[{ei}].addr"),
                        message,
                        file: None,
                    }),
                }
            }
            let maglev = (c.balancer == BalancerKind::Maglev).then(|| {
                let names: Vec<String> = endpoints.iter().map(|e| e.addr.to_string()).collect();
                let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
                Arc::new(MaglevTable::build(&names, &weights, c.maglev_table_size))
            });
            let addrs: Vec<SocketAddr> = endpoints.iter().map(|e| e.addr).collect();
            clusters.push(Cluster {
                name: c.name.clone(),
                endpoints,
                balancer: c.balancer,
                hash_key: c.hash_key.clone(),
                maglev,
                connect_timeout: c.connect_timeout,
                response_timeout: c.response_timeout,
                idle_timeout: c.idle_timeout,
                pool_idle_timeout: c.pool_idle_timeout,
                pool_max_idle_per_endpoint: c.pool_max_idle_per_endpoint,
                state: registry.cluster(&c.name),
                config: c.clone(),
                metrics: ClusterMetrics::new(
                    &c.name,
                    &addrs,
                    &crate::upstream::Limit::ALL.map(crate::upstream::Limit::label),
                ),
            });
        }
        if !errors.is_empty() {
            for e in &mut errors {
                config.origins.locate(e);
            }
            return Err(errors);
        }
        let route_metrics = config
            .routes
            .iter()
            .map(|r| {
                let cluster = match &r.action {
                    crate::routing::actions::Action::Forward(c) => {
                        config.clusters[*c].name.as_str()
                    }
                    _ => "local",
                };
                let series = config.metrics.series_for(r, config.routes.len());
                RouteMetrics::with_series(&r.name, cluster, series)
            })
            .collect();
        let mut splits = Vec::new();
        let mut route_split = vec![None; config.routes.len()];
        let mut version_split = vec![Vec::new(); config.routes.len()];
        // A split of a route or of one of its versions: its live state and metric handles;
        // its index in `splits`.
        let mut add = |sc: &Arc<SplitConfig>, route: usize| {
            let names: Vec<String> = sc.targets.iter().map(|t| t.name.clone()).collect();
            splits.push(SplitRuntime {
                config: sc.clone(),
                state: registry.split(sc),
                route,
                metrics: SplitMetrics::new(&sc.name, &names),
            });
            splits.len() - 1
        };
        for r in &config.routes {
            for e in r.versions.iter().flat_map(|v| &v.entries) {
                version_split[r.index].push(e.split.as_ref().map(|sc| add(sc, r.index)));
            }
            route_split[r.index] = r.split.as_ref().map(|sc| add(sc, r.index));
        }
        let jwt = config
            .jwt_providers
            .iter()
            .map(|spec| {
                let keys = match (&spec.keys, &spec.fetch) {
                    (_, Some(f)) => crate::client::jwt::fetch::holder(f),
                    (Some(set), None) => Arc::new(crate::client::jwt::KeyHolder::new(set.clone())),
                    (None, None) => Arc::default(),
                };
                Arc::new(crate::client::jwt::Provider::new(spec.config.clone(), keys))
            })
            .collect();
        Ok(Snapshot {
            jwt,
            splits,
            route_split,
            version_split,
            needs_identity: !config.consumers.list.is_empty()
                || config.routes.iter().any(|r| r.auth_required),
            consumers: config.consumers.clone(),
            route_metrics,
            unrouted_metrics: RouteMetrics::new("none", "none"),
            version: content_hash(text.as_bytes()),
            loaded_at: SystemTime::now(),
            routes: RouteTable::build(&config.routes),
            clusters,
            http: config.http.clone(),
            http2: config.http2,
            config,
            text: text.to_string(),
        })
    }

    /// Every endpoint address of every cluster.
    pub fn endpoint_addrs(&self) -> Vec<SocketAddr> {
        self.clusters
            .iter()
            .flat_map(|c| c.endpoints.iter().map(|e| e.addr))
            .collect()
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
    /// Snapshots replaced but maybe still in use by a worker. They are freed by [`reap`]
    /// on a control thread once nobody else holds them: freeing 20,000 routes takes
    /// milliseconds, which a worker dropping the last reference would spend instead of
    /// serving.
    ///
    /// [`reap`]: SnapshotCell::reap
    retired: std::sync::Mutex<Vec<Arc<Snapshot>>>,
}

impl SnapshotCell {
    pub fn new(s: Snapshot) -> SnapshotCell {
        SnapshotCell {
            current: ArcSwap::from_pointee(s),
            generation: AtomicU64::new(1),
            retired: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Publishes a new snapshot; requests already running keep the old one.
    pub fn publish(&self, s: Snapshot) {
        let old = self.current.swap(Arc::new(s));
        self.generation.fetch_add(1, Ordering::Release);
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(old);
    }

    /// Frees the replaced snapshots nobody holds any more; returns how many it freed.
    pub fn reap(&self) -> usize {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let before = retired.len();
        // Only this list holds one with a count of 1, and nothing can take a new reference
        // to it: it is no longer current.
        retired.retain(|s| Arc::strong_count(s) > 1);
        before - retired.len()
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
        endpoints = [{ addr = "127.0.0.1:9001" }, { addr = "localhost:9002" }]
        [[routes]]
        cluster = "a"
    "#;

    fn build(text: &str, reg: &StateRegistry) -> Snapshot {
        let c = Config::parse(text, Path::new("t")).unwrap();
        Snapshot::build(c, text, reg).unwrap()
    }

    #[test]
    fn state_survives_rebuild() {
        let reg = StateRegistry::default();
        let s1 = build(TEXT, &reg);
        s1.clusters[0].endpoints[0]
            .state
            .in_flight
            .store(7, Ordering::Relaxed);
        s1.clusters[0].state.in_flight.store(3, Ordering::Relaxed);
        let s2 = build(TEXT, &reg);
        assert_eq!(
            s2.clusters[0].endpoints[0]
                .state
                .in_flight
                .load(Ordering::Relaxed),
            7
        );
        assert_eq!(s2.clusters[0].state.in_flight.load(Ordering::Relaxed), 3);
        assert_eq!(s1.version, s2.version);
    }

    #[test]
    fn host_names_resolve() {
        let s = build(TEXT, &StateRegistry::default());
        let eps = &s.clusters[0].endpoints;
        assert!(eps
            .iter()
            .any(|e| e.target == "localhost:9002" && e.addr.ip().is_loopback()));
        let bad = TEXT.replace("localhost:9002", "no-such-host.invalid:9002");
        let c = Config::parse(&bad, Path::new("t")).unwrap();
        let err = Snapshot::build(c, &bad, &StateRegistry::default()).unwrap_err();
        assert_eq!(err[0].path, "clusters[0].endpoints[1].addr");
    }

    #[test]
    fn publish_bumps_generation() {
        let reg = StateRegistry::default();
        let cell = SnapshotCell::new(build(TEXT, &reg));
        let g = cell.generation();
        let old = cell.load();
        cell.publish(build(&TEXT.replace("9001", "9003"), &reg));
        assert_eq!(cell.generation(), g + 1);
        assert_ne!(cell.load().version, old.version);
    }

    /// A replaced snapshot is freed by `reap`, on the caller's thread, only once the last
    /// worker let go of it; never by the worker.
    #[test]
    fn replaced_snapshots_are_freed_by_reap_once_unused() {
        let reg = StateRegistry::default();
        let cell = SnapshotCell::new(build(TEXT, &reg));
        let held_by_worker = cell.load();
        let weak = Arc::downgrade(&held_by_worker);
        cell.publish(build(&TEXT.replace("9001", "9003"), &reg));
        assert_eq!(cell.reap(), 0, "still in use");
        drop(held_by_worker);
        // The worker's drop only decremented the count: the list keeps it alive.
        assert!(weak.upgrade().is_some());
        assert_eq!(cell.reap(), 1);
        assert!(weak.upgrade().is_none(), "freed by reap");
    }
}
