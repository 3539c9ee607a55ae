//! Metrics: handles resolved once per snapshot (the request path only increments atomics),
//! per-worker request counts and durations summed at scrape, gauges sampled from shared state
//! when `/metrics` is scraped, and the Prometheus exporter.

pub mod names;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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

/// Renders the Prometheus text. Gauges sampled from shared state are set by the caller
/// first (the admin API samples the snapshot; see `admin::metrics`).
pub fn render() -> String {
    let mut out = match HANDLE.get() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => String::new(),
    };
    render_requests(&mut out);
    out
}

/// Status class label by status / 100.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Which series a route has of its own (`metrics = ...` on a route, or `[metrics] routes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSeries {
    /// Its own `lb_requests_total` and `lb_request_duration_seconds` (22 lines a route).
    Full,
    /// Its own `lb_requests_total`; its durations go to its cluster's aggregate histogram.
    Counters,
    /// Nothing of its own: counted and timed in its cluster's aggregate, `route="_other"`.
    None,
}

impl RouteSeries {
    pub fn parse(s: &str) -> Option<RouteSeries> {
        match s {
            "full" => Some(RouteSeries::Full),
            "counters" => Some(RouteSeries::Counters),
            "none" => Some(RouteSeries::None),
            _ => None,
        }
    }
}

/// The `route` label of the series that aggregate a cluster's routes without series of
/// their own. Reserved: no route may take this name.
pub const AGGREGATE_ROUTE: &str = "_other";

/// Metrics for one route (and the cluster it forwards to).
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    /// Where its requests are counted: its own series or its cluster's aggregate.
    pub requests: Arc<RequestSeries>,
    /// Where its durations go: `requests`, or its cluster's aggregate.
    timing: Arc<RequestSeries>,
    /// `requests` and `timing` are one series: one call records both.
    same: bool,
    /// `lb_rate_limited_total`, made at the first refusal: no series for the thousands of
    /// routes that never limit.
    rate_limited: Arc<OnceLock<Counter>>,
    /// The `route` label of its gRPC and rate-limit series (its name, or the aggregate's).
    route: Arc<str>,
    /// `lb_grpc_responses_total` by gRPC code, made when a code is first seen (no series
    /// for routes that never carry gRPC).
    grpc: Arc<[std::sync::OnceLock<Counter>; 17]>,
}

impl RouteMetrics {
    /// A route's handles with series of its own.
    pub fn new(route: &str, cluster: &str) -> RouteMetrics {
        RouteMetrics::with_series(route, cluster, RouteSeries::Full)
    }

    /// A route's handles, with what `series` gives it of its own and the rest in its
    /// cluster's aggregate.
    pub fn with_series(route: &str, cluster: &str, series: RouteSeries) -> RouteMetrics {
        let aggregate = || RequestSeries::get(AGGREGATE_ROUTE, cluster, Shown::Both);
        let (requests, timing, label) = match series {
            RouteSeries::Full => {
                let own = RequestSeries::get(route, cluster, Shown::Both);
                (own.clone(), own, route)
            }
            RouteSeries::Counters => (
                RequestSeries::get(route, cluster, Shown::Counts),
                aggregate(),
                route,
            ),
            RouteSeries::None => {
                // Series it had before a reload leave the scrape (they keep their counts,
                // should it get them back).
                RequestSeries::hide(route, cluster);
                let agg = aggregate();
                (agg.clone(), agg, AGGREGATE_ROUTE)
            }
        };
        RouteMetrics {
            same: Arc::ptr_eq(&requests, &timing),
            requests,
            timing,
            rate_limited: Arc::new(OnceLock::new()),
            route: label.into(),
            grpc: Arc::new(Default::default()),
        }
    }

    /// Counts a request refused by the route's rate limit.
    pub fn rate_limited(&self) {
        self.rate_limited
            .get_or_init(|| counter!(RATE_LIMITED_TOTAL, "route" => self.route.to_string()))
            .increment(1);
    }

    /// Counts a gRPC call answered with `code` (named `name`).
    pub fn grpc(&self, code: usize, name: &'static str) {
        let Some(cell) = self.grpc.get(code) else {
            return;
        };
        cell.get_or_init(
            || counter!(GRPC_RESPONSES_TOTAL, "route" => self.route.to_string(), "code" => name),
        )
        .increment(1);
    }

    /// Counts one answered request, from the worker `worker`, that came over HTTP/2 or not.
    pub fn record(&self, worker: usize, h2: bool, status: u16, elapsed: Duration) {
        if self.same {
            self.requests.record(worker, h2, status, elapsed);
        } else {
            self.requests.count(worker, h2, status);
            self.timing.time(worker, elapsed);
        }
    }
}

/// What a scrape shows of a [`RequestSeries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Shown {
    /// `lb_requests_total` only.
    Counts = 1,
    /// `lb_requests_total` and `lb_request_duration_seconds`.
    Both = 2,
}

/// The `protocol` label of `lb_requests_total`, by index (ALPN names).
const PROTOCOLS: [&str; 2] = ["http/1.1", "h2"];

/// [`SECONDS_BUCKETS`] in nanoseconds.
const BUCKET_NANOS: [u64; SECONDS_BUCKETS.len()] = {
    let mut out = [0u64; SECONDS_BUCKETS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = (SECONDS_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// One worker's counts for a [`RequestSeries`], on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct RequestCell {
    /// Requests by protocol (HTTP/1.1, HTTP/2) and status class (1xx to 5xx).
    classes: [[AtomicU64; 5]; 2],
    /// Durations by bucket: `buckets[i]` counts those at most `BUCKET_NANOS[i]` and above the
    /// bound before it; the last counts the rest.
    buckets: [AtomicU64; SECONDS_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// `lb_requests_total` and `lb_request_duration_seconds` of one (route, cluster) pair.
///
/// These move on every request, so they are not handles of the metrics registry (shared
/// atomics every worker writes, and histogram samples kept until a scrape folds them): each
/// worker adds to a cell of its own, and a scrape sums the cells. Series live for the
/// process, so counters carry on across reloads.
#[derive(Debug)]
pub struct RequestSeries {
    route: String,
    cluster: String,
    /// A [`Shown`], as the latest snapshot that uses the series set it: a reload that takes
    /// a route's histogram away takes it off the scrape too.
    shown: std::sync::atomic::AtomicU8,
    cells: Box<[RequestCell]>,
}

/// Every series by (route, cluster): a reload looks its routes up here (in log time, so
/// reloading thousands of routes stays quick), and a scrape renders them in this order.
type SeriesMap = BTreeMap<(String, String), Arc<RequestSeries>>;

static SERIES: Mutex<SeriesMap> = Mutex::new(BTreeMap::new());

impl RequestSeries {
    /// The series of `route` and `cluster`, made on first use, showing `shown` from now on.
    pub fn get(route: &str, cluster: &str, shown: Shown) -> Arc<RequestSeries> {
        let mut all = SERIES.lock().unwrap_or_else(|p| p.into_inner());
        let key = (route.to_string(), cluster.to_string());
        if let Some(s) = all.get(&key) {
            s.shown.store(shown as u8, Ordering::Relaxed);
            return s.clone();
        }
        // One cell per core: workers are one per core by default. More workers than cores
        // share cells, which stays exact (the adds are atomic), only not contention-free.
        let cells = std::thread::available_parallelism().map_or(1, |n| n.get());
        let s = Arc::new(RequestSeries {
            route: key.0.clone(),
            cluster: key.1.clone(),
            shown: std::sync::atomic::AtomicU8::new(shown as u8),
            cells: (0..cells).map(|_| RequestCell::default()).collect(),
        });
        all.insert(key, s.clone());
        s
    }

    /// Takes the series of `route` and `cluster`, if there is one, off the scrape.
    fn hide(route: &str, cluster: &str) {
        let all = SERIES.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = all.get(&(route.to_string(), cluster.to_string())) {
            s.shown.store(0, Ordering::Relaxed);
        }
    }

    fn record(&self, worker: usize, h2: bool, status: u16, elapsed: Duration) {
        self.count(worker, h2, status);
        self.time(worker, elapsed);
    }

    fn count(&self, worker: usize, h2: bool, status: u16) {
        let cell = &self.cells[worker % self.cells.len()];
        let class = (status / 100).clamp(1, 5) as usize - 1;
        cell.classes[usize::from(h2)][class].fetch_add(1, Ordering::Relaxed);
    }

    fn time(&self, worker: usize, elapsed: Duration) {
        let cell = &self.cells[worker % self.cells.len()];
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS
            .iter()
            .position(|b| nanos <= *b)
            .unwrap_or(BUCKET_NANOS.len());
        cell.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        cell.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn histogram_shown(&self) -> bool {
        self.shown.load(Ordering::Relaxed) == Shown::Both as u8
    }

    /// The counts summed over workers: by protocol and status class, by bucket, and the sum
    /// of durations.
    fn totals(&self) -> ([[u64; 5]; 2], [u64; SECONDS_BUCKETS.len() + 1], u64) {
        let mut classes = [[0u64; 5]; 2];
        let mut buckets = [0u64; SECONDS_BUCKETS.len() + 1];
        let mut sum = 0u64;
        for c in self.cells.iter() {
            for (tp, vp) in classes.iter_mut().zip(&c.classes) {
                for (t, v) in tp.iter_mut().zip(vp) {
                    *t += v.load(Ordering::Relaxed);
                }
            }
            for (t, v) in buckets.iter_mut().zip(&c.buckets) {
                *t += v.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(c.sum_nanos.load(Ordering::Relaxed));
        }
        (classes, buckets, sum)
    }
}

/// One request series' totals, for the admin console: requests by status class (both
/// protocols), durations by bucket (not cumulative; the last counts those above every bound)
/// and their sum.
#[derive(Debug, Clone)]
pub struct SeriesTotals {
    pub route: String,
    pub cluster: String,
    pub classes: [u64; 5],
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

/// Every request series shown on a scrape, summed over workers.
pub fn request_totals() -> Vec<SeriesTotals> {
    let all: Vec<Arc<RequestSeries>> = SERIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter(|s| s.shown.load(Ordering::Relaxed) != 0)
        .cloned()
        .collect();
    all.iter()
        .map(|s| {
            let (by_protocol, buckets, sum) = s.totals();
            let mut classes = [0u64; 5];
            for p in &by_protocol {
                for (t, n) in classes.iter_mut().zip(p) {
                    *t += n;
                }
            }
            SeriesTotals {
                route: s.route.clone(),
                cluster: s.cluster.clone(),
                classes,
                buckets: buckets.to_vec(),
                sum_seconds: sum as f64 / 1e9,
            }
        })
        .collect()
}

/// The upper bounds of the duration buckets, in seconds.
pub fn duration_bounds() -> &'static [f64] {
    &SECONDS_BUCKETS
}

/// Appends every request series in Prometheus text format.
fn render_requests(out: &mut String) {
    use std::fmt::Write;
    let all: Vec<Arc<RequestSeries>> = SERIES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .cloned()
        .collect();
    let totals: Vec<_> = all.iter().map(|s| s.totals()).collect();
    let labels = |s: &RequestSeries| {
        format!(
            "route=\"{}\",cluster=\"{}\"",
            escape_label(&s.route),
            escape_label(&s.cluster)
        )
    };
    let _ = writeln!(out, "# TYPE {REQUESTS_TOTAL} counter");
    for (s, (classes, _, _)) in all.iter().zip(&totals) {
        if s.shown.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let l = labels(s);
        for (p, (protocol, by_class)) in PROTOCOLS.iter().zip(classes).enumerate() {
            // HTTP/2 series appear once a route has served HTTP/2: no empty series for
            // every route of an HTTP/1.1-only install.
            if p > 0 && by_class.iter().all(|n| *n == 0) {
                continue;
            }
            for (class, n) in CLASSES.iter().zip(by_class) {
                let _ = writeln!(
                    out,
                    "{REQUESTS_TOTAL}{{{l},protocol=\"{protocol}\",status_class=\"{class}\"}} {n}"
                );
            }
        }
    }
    out.push('\n');
    let name = REQUEST_DURATION_SECONDS;
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (s, (_, buckets, sum)) in all.iter().zip(&totals) {
        if !s.histogram_shown() {
            continue;
        }
        let l = labels(s);
        let mut seen = 0u64;
        for (le, n) in SECONDS_BUCKETS.iter().zip(buckets) {
            seen += n;
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {seen}");
        }
        seen += buckets[SECONDS_BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {seen}");
        let _ = writeln!(out, "{name}_sum{{{l}}} {}", *sum as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{{{l}}} {seen}");
    }
    out.push('\n');
}

/// A label value as the text format wants it: backslash, quote and newline escaped.
fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    let mut out = String::with_capacity(v.len() + 2);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

/// Handles for one cluster.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    pub connect: Histogram,
    pub retries: Counter,
    /// Refusals by limit, in the order of the labels the cluster was built with.
    pub limits: Vec<Counter>,
    /// Upstream failures by endpoint index.
    pub failures: Vec<Counter>,
    /// Requests lb failed, by error slot ([`ClusterMetrics::error`]), made on first use.
    errors: Box<[std::sync::OnceLock<Counter>]>,
    cluster: String,
}

/// Error slots a cluster has (the proxy's error kinds number fewer).
pub const ERROR_SLOTS: usize = 32;

impl ClusterMetrics {
    /// Handles for `cluster`: failures per endpoint, refusals per limit label.
    pub fn new(
        cluster: &str,
        endpoints: &[std::net::SocketAddr],
        limit_labels: &[&'static str],
    ) -> ClusterMetrics {
        ClusterMetrics {
            failures: endpoints
                .iter()
                .map(|e| counter!(UPSTREAM_FAILURES_TOTAL, "cluster" => cluster.to_string(), "endpoint" => e.to_string()))
                .collect(),
            connect: histogram!(UPSTREAM_CONNECT_SECONDS, "cluster" => cluster.to_string()),
            retries: counter!(RETRIES_TOTAL, "cluster" => cluster.to_string()),
            limits: limit_labels
                .iter()
                .map(|l| counter!(LIMIT_REJECTIONS_TOTAL, "cluster" => cluster.to_string(), "limit" => *l))
                .collect(),
            errors: (0..ERROR_SLOTS).map(|_| std::sync::OnceLock::new()).collect(),
            cluster: cluster.to_string(),
        }
    }

    /// Counts one request lb failed with the error `label`, in slot `index` (one per label,
    /// below [`ERROR_SLOTS`]): `lb_proxy_errors_total{cluster, error}`, made on first use so
    /// that a healthy cluster has no error series. No lock: each slot is set once.
    pub fn error(&self, index: usize, label: &'static str) {
        if let Some(slot) = self.errors.get(index) {
            slot.get_or_init(|| {
                counter!(PROXY_ERRORS_TOTAL, "cluster" => self.cluster.clone(), "error" => label)
            })
            .increment(1);
        }
    }

    /// Counts one refusal by the limit at `index` of the labels.
    pub fn limit(&self, index: usize) {
        if let Some(c) = self.limits.get(index) {
            c.increment(1);
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

/// The fleet config's etcd revision now in service.
pub fn etcd_revision(revision: i64) {
    gauge!(ETCD_REVISION).set(revision as f64);
}

pub fn etcd_sync_age(seconds: f64) {
    gauge!(ETCD_SYNC_AGE).set(seconds);
}

pub fn etcd_rejected() {
    counter!(ETCD_REJECTED_TOTAL).increment(1);
}

pub fn etcd_reconnect() {
    counter!(ETCD_RECONNECTS_TOTAL).increment(1);
}

pub fn etcd_full_read() {
    counter!(ETCD_FULL_READS_TOTAL).increment(1);
}

pub fn etcd_connected(up: bool) {
    gauge!(ETCD_CONNECTED).set(if up { 1.0 } else { 0.0 });
}

pub fn redis_up(up: bool) {
    gauge!(REDIS_UP).set(if up { 1.0 } else { 0.0 });
    counter!(REDIS_ERRORS_TOTAL).increment(0);
    counter!(FLEET_LIMIT_REFUSED_TOTAL).increment(0);
    counter!(REDIS_STRICT_FALLBACK_TOTAL).increment(0);
    counter!(REDIS_SYNCED_KEYS_TOTAL).increment(0);
}

pub fn redis_error() {
    counter!(REDIS_ERRORS_TOTAL).increment(1);
}

pub fn redis_synced(keys: usize) {
    counter!(REDIS_SYNCED_KEYS_TOTAL).increment(keys as u64);
}

pub fn redis_strict_fallback() {
    counter!(REDIS_STRICT_FALLBACK_TOTAL).increment(1);
}

pub fn fleet_limit_refused() {
    counter!(FLEET_LIMIT_REFUSED_TOTAL).increment(1);
}

pub fn fleet_leader(leading: bool) {
    gauge!(FLEET_LEADER).set(if leading { 1.0 } else { 0.0 });
}

/// Registers the etcd source's series at 0, when the config comes from etcd.
pub fn register_etcd() {
    counter!(ETCD_REJECTED_TOTAL).increment(0);
    counter!(ETCD_RECONNECTS_TOTAL).increment(0);
    counter!(ETCD_FULL_READS_TOTAL).increment(0);
    gauge!(ETCD_CONNECTED).set(0.0);
    gauge!(FLEET_LEADER).set(0.0);
}

/// Registers the process-wide counters that dashboards graph, at 0, so a fresh install's
/// panels show 0 rather than "no data". `refusal_reasons` are the connection refusal labels.
pub fn register_at_zero(refusal_reasons: &[&'static str]) {
    for result in ["ok", "error"] {
        counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(0);
    }
    for reason in refusal_reasons {
        counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => *reason).increment(0);
    }
    for result in ["issued", "failed"] {
        counter!(ACME_ORDERS_TOTAL, "result" => result).increment(0);
    }
    for reason in ["idle", "rapid_reset", "ping_flood", "settings_flood"] {
        counter!(H2_GOAWAYS_TOTAL, "reason" => reason).increment(0);
    }
    // The unrouted series ("none", as in lb_requests_total): the gRPC panel has a series
    // before the first call.
    counter!(GRPC_RESPONSES_TOTAL, "route" => "none", "code" => "OK").increment(0);
    counter!(RATE_LIMITED_TOTAL, "route" => "none").increment(0);
    for result in ["ok", "error"] {
        counter!(TLS_HANDSHAKES_TOTAL, "result" => result, "version" => "none", "resumed" => "false")
            .increment(0);
    }
}

/// Counts an HTTP/2 connection lb ended, by why.
pub fn h2_goaway(reason: &'static str) {
    counter!(H2_GOAWAYS_TOTAL, "reason" => reason).increment(1);
}

/// Counts an ACME order that ended with a certificate, or failed.
pub fn acme_order(issued: bool) {
    counter!(ACME_ORDERS_TOTAL, "result" => if issued { "issued" } else { "failed" }).increment(1);
}

/// Counts a finished (or failed) TLS handshake; `took` only for finished ones.
pub fn tls_handshake(
    result: &'static str,
    version: &'static str,
    resumed: bool,
    took: Option<Duration>,
) {
    let resumed = if resumed { "true" } else { "false" };
    counter!(TLS_HANDSHAKES_TOTAL, "result" => result, "version" => version, "resumed" => resumed)
        .increment(1);
    if let Some(d) = took {
        histogram!(TLS_HANDSHAKE_SECONDS).record(d.as_secs_f64());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(text: &str, series: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.contains(series))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn request_series_sum_workers_and_fill_buckets_cumulatively() {
        let m = RouteMetrics::new("series-test", "c1");
        let ms = Duration::from_millis;
        m.record(0, false, 200, ms(0)); // first bucket (0.5 ms)
        m.record(1, true, 204, ms(3)); // 5 ms bucket, another worker, HTTP/2
        m.record(7, false, 503, ms(20)); // 25 ms bucket, a worker past the cells shares one
        m.record(0, false, 404, Duration::from_secs(60)); // past the last bound
                                                          // The same pair later (a reload) continues the same series.
        RouteMetrics::new("series-test", "c1").record(0, false, 200, ms(1));
        let mut text = String::new();
        render_requests(&mut text);
        let l = "route=\"series-test\",cluster=\"c1\"";
        let requests = lines_of(&text, &format!("lb_requests_total{{{l}"));
        let h1 = format!("{l},protocol=\"http/1.1\"");
        let h2 = format!("{l},protocol=\"h2\"");
        assert!(requests.contains(&format!("lb_requests_total{{{h1},status_class=\"2xx\"}} 2")));
        assert!(requests.contains(&format!("lb_requests_total{{{h2},status_class=\"2xx\"}} 1")));
        assert!(requests.contains(&format!("lb_requests_total{{{h1},status_class=\"4xx\"}} 1")));
        assert!(requests.contains(&format!("lb_requests_total{{{h1},status_class=\"5xx\"}} 1")));
        assert!(requests.contains(&format!("lb_requests_total{{{h1},status_class=\"1xx\"}} 0")));
        // A route that never served HTTP/2 has no HTTP/2 series.
        RouteMetrics::new("series-h1-only", "c1").record(0, false, 200, ms(1));
        let mut text2 = String::new();
        render_requests(&mut text2);
        assert!(!text2.contains("route=\"series-h1-only\",cluster=\"c1\",protocol=\"h2\""));
        let bucket = |le: &str| format!("lb_request_duration_seconds_bucket{{{l},le=\"{le}\"}}");
        for (le, n) in [
            ("0.0005", 1),
            ("0.001", 2),
            ("0.0025", 2),
            ("0.005", 3),
            ("0.025", 4),
            ("10", 4),
            ("+Inf", 5),
        ] {
            assert!(
                text.contains(&format!("{} {n}\n", bucket(le))),
                "{le}: {text}"
            );
        }
        assert!(text.contains(&format!("lb_request_duration_seconds_count{{{l}}} 5\n")));
        assert!(text.contains(&format!("lb_request_duration_seconds_sum{{{l}}} 60.024\n")));
        assert_eq!(text.matches("# TYPE lb_requests_total counter").count(), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("plain"), "plain");
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
