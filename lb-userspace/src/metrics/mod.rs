//! Metrics: handles resolved once per snapshot (the request path only increments atomics),
//! gauges sampled from shared state when `/metrics` is scraped, and the Prometheus exporter.

pub mod names;

use std::sync::atomic::Ordering;
use std::sync::OnceLock;

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::snapshot::Snapshot;
use names::*;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into buckets when nobody scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Installs the Prometheus recorder for this process (once); later calls return the same.
pub fn install() -> Option<&'static PrometheusHandle> {
    if HANDLE.get().is_none() {
        let built = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .and_then(|b| b.install_recorder());
        match built {
            Ok(h) => {
                let _ = HANDLE.set(h);
                // Histogram samples pile up in the recorder until upkeep folds them into their
                // buckets; a scrape does it, but nobody may be scraping.
                let upkeep = std::thread::Builder::new()
                    .name("lb-metrics-upkeep".into())
                    .spawn(|| loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        if let Some(h) = HANDLE.get() {
                            h.run_upkeep();
                        }
                    });
                if let Err(e) = upkeep {
                    tracing::warn!(error = %e, "metrics upkeep thread not started");
                }
            }
            Err(e) => tracing::warn!(error = %e, "metrics recorder not installed"),
        }
    }
    HANDLE.get()
}

/// Renders the Prometheus text, after sampling gauges from `snap`'s shared state.
pub fn render(snap: &Snapshot) -> String {
    let Some(handle) = HANDLE.get() else {
        return String::new();
    };
    sample(snap);
    handle.run_upkeep();
    handle.render()
}

/// Status class label by status / 100.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Handles for one route (and the cluster it forwards to).
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    pub requests: [Counter; 5],
    pub duration: Histogram,
    pub rate_limited: Counter,
}

impl RouteMetrics {
    pub fn new(route: &str, cluster: &str) -> RouteMetrics {
        let c = |class: &'static str| counter!(REQUESTS_TOTAL, "route" => route.to_string(), "cluster" => cluster.to_string(), "status_class" => class);
        RouteMetrics {
            requests: CLASSES.map(c),
            duration: histogram!(REQUEST_DURATION_SECONDS, "route" => route.to_string(), "cluster" => cluster.to_string()),
            rate_limited: counter!(RATE_LIMITED_TOTAL, "route" => route.to_string()),
        }
    }

    pub fn record(&self, status: u16, seconds: f64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[class].increment(1);
        self.duration.record(seconds);
    }
}

/// The limits a request can be refused by, as metric labels.
pub const LIMITS: [&str; 6] = [
    "cluster_max_requests",
    "endpoint_max_requests",
    "max_pending",
    "pending_timeout",
    "breaker_open",
    "max_retries",
];

/// Handles for one cluster.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    pub connect: Histogram,
    pub retries: Counter,
    pub limits: [Counter; 6],
    /// Upstream failures by endpoint index.
    pub failures: Vec<Counter>,
}

impl ClusterMetrics {
    pub fn new(cluster: &str, endpoints: &[std::net::SocketAddr]) -> ClusterMetrics {
        ClusterMetrics {
            failures: endpoints
                .iter()
                .map(|e| counter!(UPSTREAM_FAILURES_TOTAL, "cluster" => cluster.to_string(), "endpoint" => e.to_string()))
                .collect(),
            connect: histogram!(UPSTREAM_CONNECT_SECONDS, "cluster" => cluster.to_string()),
            retries: counter!(RETRIES_TOTAL, "cluster" => cluster.to_string()),
            limits: LIMITS.map(|l| counter!(LIMIT_REJECTIONS_TOTAL, "cluster" => cluster.to_string(), "limit" => l)),
        }
    }

    pub fn limit(&self, name: &str) {
        if let Some(i) = LIMITS.iter().position(|l| *l == name) {
            self.limits[i].increment(1);
        }
    }
}

/// Handles for one split.
#[derive(Debug, Clone)]
pub struct SplitMetrics {
    /// Decisions by target index.
    pub decisions: Vec<Counter>,
    pub mirror_sent: Counter,
    pub mirror_shed: Counter,
}

impl SplitMetrics {
    pub fn new(split: &str, targets: &[String]) -> SplitMetrics {
        let mirror = |result: &'static str| counter!(MIRROR_REQUESTS_TOTAL, "split" => split.to_string(), "result" => result);
        // Registered now so that they read 0 until something happens.
        counter!(CANARY_ROLLBACKS_TOTAL, "split" => split.to_string()).increment(0);
        counter!(CANARY_PROMOTIONS_TOTAL, "split" => split.to_string()).increment(0);
        SplitMetrics {
            decisions: targets
                .iter()
                .map(|t| counter!(SPLIT_REQUESTS_TOTAL, "split" => split.to_string(), "variant" => t.clone()))
                .collect(),
            mirror_sent: mirror("sent"),
            mirror_shed: mirror("shed"),
        }
    }
}

/// Copies the XDP program's per-CPU counters (summed) into the exported counters.
pub fn xdp(kernel: &crate::steering::XdpFilter) {
    use lb_common::Counter;
    for (c, action, reason) in [
        (Counter::Pass, "pass", "none"),
        (Counter::PassUnparsed, "pass", "unparsed"),
        (Counter::DropDenied, "drop", "denied"),
        (Counter::DropSynFlood, "drop", "syn_flood"),
        (Counter::Redirect, "redirect", "cpu_steering"),
    ] {
        if let Ok(v) = kernel.counter(c) {
            counter!(XDP_PACKETS_TOTAL, "action" => action, "reason" => reason).absolute(v.packets);
            counter!(XDP_BYTES_TOTAL, "action" => action, "reason" => reason).absolute(v.bytes);
        }
    }
}

/// Counts an automatic rollback.
pub fn canary_rolled_back(split: &str) {
    counter!(CANARY_ROLLBACKS_TOTAL, "split" => split.to_string()).increment(1);
}

/// Counts a promotion step.
pub fn canary_promoted(split: &str) {
    counter!(CANARY_PROMOTIONS_TOTAL, "split" => split.to_string()).increment(1);
}

/// Records a reload attempt.
pub fn reload(ok: bool) {
    counter!(CONFIG_RELOADS_TOTAL, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// Marks `version` active and `previous` (if any) inactive.
pub fn config_active(version: &str, previous: Option<&str>, loaded_unix: f64) {
    if let Some(p) = previous.filter(|p| *p != version) {
        gauge!(CONFIG_INFO, "version" => p.to_string()).set(0.0);
    }
    gauge!(CONFIG_INFO, "version" => version.to_string()).set(1.0);
    gauge!(CONFIG_LOADED_SECONDS).set(loaded_unix);
}

/// The gauge of open client connections for one worker.
pub fn downstream_connections(worker: usize) -> metrics::Gauge {
    gauge!(DOWNSTREAM_CONNECTIONS, "worker" => worker.to_string())
}

/// Counts a client connection refused for `reason`.
pub fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => reason).increment(1);
}

fn sample(snap: &Snapshot) {
    let now = crate::clock::now_ms();
    for s in &snap.splits {
        let weights = s.state.weights();
        for (t, w) in s.config.targets.iter().zip(weights.iter()) {
            gauge!(SPLIT_WEIGHT_RATIO, "split" => s.config.name.clone(), "variant" => t.name.clone())
                .set(*w as f64 / crate::release::PPM as f64);
        }
    }
    for c in &snap.clusters {
        gauge!(CLUSTER_CONNECTIONS, "cluster" => c.name.clone())
            .set(c.state.connections.load(Ordering::Relaxed) as f64);
        for e in &c.endpoints {
            let labels = [
                ("cluster", c.name.clone()),
                ("endpoint", e.addr.to_string()),
            ];
            let s = &e.state;
            gauge!(ENDPOINT_IN_FLIGHT, &labels).set(s.in_flight.load(Ordering::Relaxed) as f64);
            gauge!(ENDPOINT_HEALTHY, &labels).set(if s.healthy.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            });
            gauge!(ENDPOINT_EJECTED, &labels).set(if s.is_ejected(now) { 1.0 } else { 0.0 });
            gauge!(ENDPOINT_BREAKER_STATE, &labels).set(s.breaker.state() as u8 as f64);
        }
    }
}
