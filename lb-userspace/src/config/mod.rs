//! Configuration: the TOML file (`raw`), its validated runtime form (this module), and units.
//!
//! Loading never panics on user input. Every problem is reported with the file, the key path
//! (`clusters[2].endpoints[0].addr`) and what was expected.

mod cluster;
pub mod diff;
pub mod include;
pub mod jwt;
pub mod raw;
mod release;
mod routes;
pub mod source;
pub mod units;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::routing::{Route, RouteTable};
pub use cluster::*;
use raw::{RawConfig, RawHttp, RawServer};
use units::{parse_duration, parse_size};

/// A client that does not finish sending its request head in this long is answered 408.
pub const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive client connection is closed after this long, as nginx does by default.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A request body that stalls for this long between reads is abandoned.
pub const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// A LAN connect that takes longer than this is a dead host.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time from the request being sent to the response head arriving.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// A response body that stalls for this long between reads is abandoned.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle pooled upstream connections are closed after this long: shorter than the keep-alive
/// timeout of common servers (nginx 75 s, Node 5 s is the outlier), so we usually close first.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle pooled connections kept per endpoint per worker. Above the concurrency a worker
/// reaches, so a burst of answers (HTTP/2 streams finishing together) does not close
/// connections that the next burst reopens; idle ones still close after the pool timeout.
pub const DEFAULT_POOL_MAX_IDLE: u32 = 1024;
/// In-flight requests get this long to finish after SIGTERM before the process exits anyway.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Request heads larger than this are answered 431; HAProxy's default buffer allows about as much.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// WebSocket tunnels with no traffic either way for this long are closed.
pub const DEFAULT_WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Request targets longer than this are answered 414, as nginx's default buffers allow.
pub const DEFAULT_MAX_URI_BYTES: u64 = 8 * 1024;
/// Header lines accepted in one request or response head.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Request bodies larger than this are answered 413; 0 means no cap.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 0;
/// Kernel accept backlog per worker socket.
pub const DEFAULT_BACKLOG: u32 = 4096;
/// Submission queue size of each worker's io_uring.
pub const DEFAULT_IO_URING_ENTRIES: u32 = 1024;
/// The admin API listens on loopback unless told otherwise.
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9901";
/// The `Via` pseudonym.
pub const DEFAULT_VIA: &str = "lb";
/// The hardest limit for header count we accept in config, bounded by the stack array the
/// parser uses.
pub const MAX_HEADERS_LIMIT: usize = 256;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub listeners: Vec<ListenerConfig>,
    /// The TLS server configuration of each listener (by index), built from its
    /// certificate files when the config was loaded.
    pub listener_tls: Vec<Option<std::sync::Arc<crate::tls::ListenerRuntime>>>,
    pub admin: Option<AdminConfig>,
    pub http: HttpConfig,
    pub http2: crate::http::h2::H2Settings,
    pub clusters: Vec<ClusterConfig>,
    pub routes: Vec<Route>,
    /// Where access log lines go; `None` means off.
    pub access_log: Option<String>,
    pub consumers: crate::identity::Consumers,
    pub steering: SteeringConfig,
    pub metrics: MetricsConfig,
    /// `[[jwt_providers]]`, by index (routes refer to them so).
    pub jwt_providers: Vec<jwt::JwtSpec>,
    /// `[geoip]`: the database, read when the config loaded.
    pub geo: Option<crate::client::geo::Shared>,
    /// Which included file each route, cluster and consumer came from.
    pub origins: std::sync::Arc<include::Origins>,
    /// Its entries as written, for telling what a reload changes.
    pub fingerprint: std::sync::Arc<diff::Fingerprint>,
    /// `[source.etcd]`: the fleet's config comes from etcd.
    pub etcd: Option<source::EtcdConfig>,
    /// `[redis]`: where fleet-scoped rate limits are counted.
    pub redis: Option<source::RedisConfig>,
}

/// `[metrics]`: the series routes get when they do not say (`metrics = ...` on a route).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `None` is `"auto"`: full series for every route while the config has at most
    /// `auto_full_up_to` routes; beyond, full for routes with a split, none for the rest.
    pub routes: Option<crate::metrics::RouteSeries>,
    pub auto_full_up_to: usize,
}

/// With `[metrics] routes = "auto"`, configs up to this many routes give each its series.
pub const AUTO_FULL_UP_TO: usize = 1_000;

impl MetricsConfig {
    /// The series a route gets: its own choice, the default, or by `"auto"`.
    pub fn series_for(
        &self,
        route: &crate::routing::Route,
        route_count: usize,
    ) -> crate::metrics::RouteSeries {
        use crate::metrics::RouteSeries;
        route.metrics.or(self.routes).unwrap_or_else(|| {
            if route_count <= self.auto_full_up_to || route.split.is_some() {
                RouteSeries::Full
            } else {
                RouteSeries::None
            }
        })
    }
}

fn validate_metrics(r: &raw::RawMetrics, errs: &mut Errors) -> MetricsConfig {
    let routes = match r.routes.as_deref() {
        None | Some("auto") => None,
        Some(m) => {
            let parsed = crate::metrics::RouteSeries::parse(m);
            if parsed.is_none() {
                errs.push(
                    "metrics.routes",
                    format!("expected \"auto\", \"full\", \"counters\" or \"none\", got {m:?}"),
                );
            }
            parsed
        }
    };
    MetricsConfig {
        routes,
        auto_full_up_to: r.auto_full_up_to.unwrap_or(AUTO_FULL_UP_TO),
    }
}

/// How many workers to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One per available core.
    Auto,
    Count(usize),
}

/// Which monoio driver workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring where the kernel allows, epoll otherwise.
    Auto,
    IoUring,
    Epoll,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub workers: Workers,
    pub pin_workers: bool,
    pub io: IoDriver,
    pub io_uring_entries: u32,
    pub drain_timeout: Duration,
    /// Poll interval of the config file watch; `None` means no watch.
    pub watch_config: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub backlog: u32,
    /// TLS termination, if configured.
    pub tls: Option<crate::tls::ListenerTls>,
    /// Answer every plain-text request with a 308 to HTTPS on this port.
    pub redirect_to_https: Option<u16>,
    /// HTTP/2 by ALPN (TLS listeners) or by prior knowledge (plain ones).
    pub h2: bool,
    /// HTTP/1.1 (always true unless the listener speaks only HTTP/2).
    pub http1: bool,
    /// Connections start with a PROXY protocol header naming the client.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub addr: SocketAddr,
    pub token: Option<String>,
    /// Names besides IP literals and `localhost` accepted in the admin `Host` header.
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub max_header_bytes: usize,
    /// Longer request targets are answered 414.
    pub max_uri_bytes: usize,
    pub max_headers: usize,
    /// 0 means no cap.
    pub max_request_body: u64,
    pub client_header_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub client_body_timeout: Duration,
    /// Bytes per second a request body must average once `client_body_timeout` has passed;
    /// 0 is no minimum.
    pub min_body_rate: u64,
    pub x_forwarded: bool,
    pub websocket: bool,
    /// Connection limits; past one, a new connection is answered 503 (or 429 per IP) and
    /// closed.
    pub conn_limits: crate::connlimit::Limits,
    /// A WebSocket tunnel with no traffic either way for this long is closed.
    pub websocket_idle_timeout: Duration,
    /// `None` leaves `Via` untouched.
    pub via: Option<String>,
    /// How request paths are normalised before routing and forwarding.
    pub path: crate::http::path::PathOptions,
    /// Which trailer fields are forwarded, both ways.
    pub trailers: crate::http::chunked::TrailerPolicy,
    /// What happens to client-sent address headers (X-Forwarded-For, X-Real-IP, Forwarded).
    pub client_address_headers: ClientAddressHeaders,
    /// Peers whose forwarding headers name the client (`[http] trusted_proxies`).
    pub trusted_proxies: crate::client::IpSet,
    /// Lower-case names of headers only lb writes (forwarded JWT claims): removed from every
    /// request before it goes upstream.
    pub owned_headers: Vec<String>,
}

/// What `lb` does with the client-address headers a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAddressHeaders {
    /// Removes `X-Forwarded-For`, `X-Real-IP`, `Forwarded` and the other client-address
    /// headers a client sends, and (with `x_forwarded`) writes `X-Forwarded-For: <peer>`: what
    /// a backend reads is only what lb saw. The default: lb is the edge.
    #[default]
    Replace,
    /// Keeps the client's `X-Forwarded-For` and appends the peer's address as the last entry
    /// (for lb behind another proxy; only the last entry is lb's word). The other
    /// client-address headers are still removed.
    Append,
}

/// One problem found in a config: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
    /// The included file the key path is in (`include`); `None` for the main file.
    pub file: Option<PathBuf>,
}

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let file = e.file.as_deref().unwrap_or(&self.file);
            write!(f, "{}: {}: {}", file.display(), e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<(Config, String), ConfigErrors> {
        Config::load_with(path, None)
    }

    /// Validates local file text (as if at `file`) with `doc` merged in.
    pub fn parse_with(
        text: &str,
        file: &Path,
        doc: &include::Document,
    ) -> Result<Config, ConfigErrors> {
        match include::with_document(text, file, doc)? {
            Some(merged) => Config::from_merged(merged, file),
            None => Config::parse(text, file),
        }
    }

    /// Reads and validates a config file with a document from elsewhere (etcd) merged in.
    pub fn load_with(
        path: &Path,
        doc: Option<&include::Document>,
    ) -> Result<(Config, String), ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.to_path_buf(),
            errors: vec![ConfigError {
                path: ".".into(),
                message: format!("cannot read the file: {e}"),
                file: None,
            }],
        })?;
        if let Some(doc) = doc {
            if let Some(merged) = include::with_document(&text, path, doc)? {
                let all = merged.text.clone();
                return Config::from_merged(merged, path).map(|c| (c, all));
            }
        }
        if text.contains("include") {
            if let Some(merged) = include::merge(&text, path)? {
                let all = merged.text.clone();
                return Config::from_merged(merged, path).map(|c| (c, all));
            }
        }
        let config = Config::parse(&text, path)?;
        Ok((config, text))
    }

    /// Things that are valid but almost certainly not what was meant: routes that can never
    /// match because an earlier route takes all their requests.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = self.certificate_warnings();
        out.extend(self.uncovered_host_warnings());
        out.extend(self.route_warnings());
        out.extend(self.spec_warnings());
        out.extend(self.jwt_providers.iter().enumerate().flat_map(|(i, p)| {
            p.keys.iter().flat_map(|k| &k.problems).map(move |problem| {
                format!(
                    "jwt_providers[{i}] ({}): a key is skipped: {problem}",
                    p.config.name
                )
            })
        }));
        out.extend(self.jwt_providers.iter().enumerate().filter_map(|(i, p)| {
            let c = &p.config;
            (c.audiences.is_empty() || c.issuer.is_none()).then(|| {
                format!(
                    "jwt_providers[{i}] ({}): without both issuer and audiences, any token its keys signed is accepted, including tokens the issuer made for other applications",
                    c.name
                )
            })
        }));
        out.extend(self.clusters.iter().enumerate().filter_map(|(i, c)| {
            c.tls.as_ref().filter(|t| !t.settings.verify).map(|_| {
                format!(
                    "clusters[{i}].tls ({}): insecure_skip_verify is on: any certificate is accepted, so anyone on the path to the backends can read and change the traffic",
                    c.name
                )
            })
        }));
        out
    }

    /// Route hosts that no certificate of any TLS listener covers: TLS clients asking for
    /// them would get a certificate for another name.
    fn uncovered_host_warnings(&self) -> Vec<String> {
        let names: Vec<&str> = self
            .listener_tls
            .iter()
            .flatten()
            .flat_map(|t| &t.certs)
            .filter(|c| c.names_from_san)
            .flat_map(|c| c.names.iter().map(String::as_str))
            .collect();
        if self.listener_tls.iter().all(Option::is_none) {
            return Vec::new();
        }
        let covered = |host: &str| names.iter().any(|n| crate::tls::name_matches(n, host));
        self.routes
            .iter()
            .filter_map(|r| match &r.host {
                crate::routing::matchers::HostMatch::Exact(h) => {
                    let h = String::from_utf8_lossy(h);
                    (!covered(&h)).then(|| {
                        format!(
                            "routes[{}] ({}): host {h} is covered by no certificate of a TLS listener",
                            r.index, r.name
                        )
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// Certificates that expire within 14 days (or have).
    fn certificate_warnings(&self) -> Vec<String> {
        const SOON: i64 = 14 * 86_400;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut out = Vec::new();
        for (i, tls) in self.listener_tls.iter().enumerate() {
            for c in tls.iter().flat_map(|t| &t.certs) {
                if let Some(issuer) = &c.chain_incomplete {
                    out.push(format!(
                        "listeners[{i}].tls: the certificate for {} ({}) is issued by {issuer}, which is neither in the file nor a system root: clients will likely miss the intermediate certificates (append them to the file, after the leaf)",
                        c.names.join(", "),
                        c.source
                    ));
                }
                let left = c.not_after_unix - now;
                if left < SOON {
                    out.push(format!(
                        "listeners[{i}].tls: the certificate for {} ({}) {}",
                        c.names.join(", "),
                        c.source,
                        if left < 0 {
                            "has expired".to_string()
                        } else {
                            format!("expires in {} days", left / 86_400)
                        }
                    ));
                }
            }
        }
        out
    }

    /// Routes validated against an OpenAPI document whose path (or methods) the document
    /// does not have: such requests would all fail validation (404 or 405).
    fn spec_warnings(&self) -> Vec<String> {
        use crate::routing::matchers::{PatSeg, PathMatch};
        let mut out = Vec::new();
        for r in &self.routes {
            let mut checks: Vec<(&crate::validation::Validation, String)> = Vec::new();
            if let Some(v) = &r.validate {
                checks.push((v, String::new()));
            }
            for e in r.versions.iter().flat_map(|vs| vs.entries.iter()) {
                if let Some(v) = &e.validate {
                    checks.push((v, format!(" version {}", e.name)));
                }
            }
            let sample = match &r.path {
                PathMatch::Exact(p) => Some(String::from_utf8_lossy(p).into_owned()),
                PathMatch::Pattern(p) => Some(
                    p.segs
                        .iter()
                        .map(|s| match s {
                            PatSeg::Lit(l) => String::from_utf8_lossy(l).into_owned(),
                            PatSeg::Param => "1".into(),
                            PatSeg::Rest => "x".into(),
                        })
                        .fold(String::new(), |acc, s| acc + "/" + &s),
                ),
                _ => None,
            };
            let versioned_by_path = r.versions.as_ref().is_some_and(|v| {
                matches!(
                    v.source,
                    crate::routing::version::VersionSource::Path { .. }
                )
            });
            for (v, which) in checks {
                let what = format!("routes[{}] ({}){which}", r.index, r.name);
                let source = &v.source;
                if let Some(path) = &sample {
                    let Some(p) = v.spec_path(path.as_bytes()) else {
                        out.push(format!(
                            "{what} matches {path}, outside the prefix {:?} of its spec {source}",
                            v.prefix
                        ));
                        continue;
                    };
                    let p = String::from_utf8_lossy(p);
                    if v.spec.has(&p, None) == Some(false) {
                        out.push(format!(
                            "{what} matches {path}, which its spec {source} does not have (requests to it fail validation)"
                        ));
                        continue;
                    }
                    for m in &r.methods {
                        if v.spec.has(&p, Some(m)) == Some(false) {
                            out.push(format!(
                                "{what} matches {m} {path}, which its spec {source} does not have"
                            ));
                        }
                    }
                } else if let (PathMatch::Prefix(pre), false) = (&r.path, versioned_by_path) {
                    let pre = String::from_utf8_lossy(pre);
                    let under = v.spec.templates().iter().any(|t| {
                        let full = format!("{}{t}", v.prefix);
                        // The literal part of the spec's path, up to its first parameter.
                        let literal = full.split('{').next().unwrap_or("");
                        full.starts_with(pre.as_ref())
                            || pre.starts_with(literal) && full.contains('{')
                    });
                    if !under && !v.spec.templates().is_empty() {
                        out.push(format!(
                            "{what} matches paths under {pre}, where its spec {source} has none"
                        ));
                    }
                }
            }
        }
        out
    }

    fn route_warnings(&self) -> Vec<String> {
        RouteTable::build(&self.routes)
            .never_matching()
            .into_iter()
            .map(|(later, earlier)| {
                format!(
                    "routes[{later}] ({}) can never match: routes[{earlier}] ({}) takes every request it would",
                    self.routes.iter().find(|r| r.index == later).map_or("", |r| r.name.as_str()),
                    self.routes.iter().find(|r| r.index == earlier).map_or("", |r| r.name.as_str()),
                )
            })
            .collect()
    }

    /// Parses and validates config text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
        let wrap = |errors| ConfigErrors {
            file: file.to_path_buf(),
            errors,
        };
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| wrap(vec![deserialize_error(e, Some(text))]))?;
        let base = file.parent().unwrap_or(Path::new("."));
        validate(raw, base).map_err(wrap)
    }

    /// Validates a main file with its included files merged in; errors name the file each
    /// key is in.
    fn from_merged(merged: include::Merged, file: &Path) -> Result<Config, ConfigErrors> {
        let origins = merged.origins;
        let wrap = |mut errors: Vec<ConfigError>| {
            for e in &mut errors {
                origins.locate(e);
            }
            ConfigErrors {
                file: file.to_path_buf(),
                errors,
            }
        };
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(merged.table))
            .map_err(|e| wrap(vec![deserialize_error(e, None)]))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let mut config = validate(raw, base).map_err(wrap)?;
        config.origins = std::sync::Arc::new(origins);
        Ok(config)
    }
}

/// A deserialisation error at its key path; with the text it came from, its line too.
fn deserialize_error(
    e: serde_path_to_error::Error<toml::de::Error>,
    text: Option<&str>,
) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let mut message = inner.message().to_string();
    if let (Some(span), Some(text)) = (inner.span(), text) {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        message = format!("{message} (line {line})");
    }
    ConfigError {
        path,
        message,
        file: None,
    }
}

/// What changed between the running config and `new` that a reload cannot apply: each with
/// the key and why it needs a restart. `buf_size` is the workers' read buffer, fixed at start.
/// Everything else (routes, clusters, splits, `[http]` limits and timeouts, the admin token
/// and hosts, steering deny lists and SYN limits, `server.drain_timeout`) applies at reload.
pub fn restart_only_changes(old: &Config, new: &Config, buf_size: usize) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let mut need = |key: &str, what: &str| {
        out.push(ConfigError {
            path: key.to_string(),
            message: format!("{what} cannot change while lb runs: restart lb to apply it"),
            file: None,
        })
    };
    let (o, n) = (&old.server, &new.server);
    if o.workers != n.workers {
        need("server.workers", "the number of workers");
    }
    if o.pin_workers != n.pin_workers {
        need("server.pin_workers", "worker pinning");
    }
    if o.io != n.io {
        need("server.io", "the IO driver");
    }
    if o.io_uring_entries != n.io_uring_entries {
        need("server.io_uring_entries", "the io_uring size");
    }
    if o.watch_config != n.watch_config {
        need("server.watch_config", "the config file watch");
    }
    if old.etcd != new.etcd {
        need("source", "where the config comes from");
    }
    if old.redis != new.redis {
        need("redis", "the Redis server of fleet rate limits");
    }
    // Certificates and whether a listener terminates TLS apply at reload; its socket does not.
    let sockets = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.addr, l.backlog))
            .collect::<Vec<_>>()
    };
    if sockets(old) != sockets(new) {
        need("listeners", "the listening sockets");
    }
    if old.admin.as_ref().map(|a| a.addr) != new.admin.as_ref().map(|a| a.addr) {
        need("admin.addr", "the admin listener");
    }
    if old.access_log != new.access_log {
        need("access_log", "the access log destination");
    }
    let (o, n) = (&old.steering, &new.steering);
    if o.mode != n.mode
        || o.policy != n.policy
        || o.interfaces != n.interfaces
        || o.xdp_mode != n.xdp_mode
        || o.cpu_steering != n.cpu_steering
    {
        need(
            "steering",
            "how eBPF programs are attached (mode, policy, interfaces, xdp_mode, cpu_steering)",
        );
    }
    if new.http.max_header_bytes > buf_size {
        out.push(ConfigError {
            path: "http.max_header_bytes".into(),
            message: format!(
                "{} bytes is more than the {buf_size}-byte read buffers lb started with: \
                 restart lb to raise it",
                new.http.max_header_bytes
            ),
            file: None,
        });
    }
    out
}

/// Which protocols a listener speaks: (HTTP/1.1, HTTP/2).
fn validate_protocols(
    p: Option<&[String]>,
    tls: bool,
    at: &str,
    errs: &mut Errors,
) -> (bool, bool) {
    let Some(p) = p else {
        return (true, false);
    };
    let mut http1 = false;
    let mut h2 = false;
    for (j, name) in p.iter().enumerate() {
        match name.as_str() {
            "http/1.1" => http1 = true,
            "h2" if tls => h2 = true,
            "h2c" if !tls => h2 = true,
            "h2" => errs.push(
                format!("{at}[{j}]"),
                "\"h2\" is negotiated by ALPN and needs TLS; a plain listener speaks \"h2c\"",
            ),
            "h2c" => errs.push(
                format!("{at}[{j}]"),
                "\"h2c\" is HTTP/2 without TLS; a TLS listener speaks \"h2\"",
            ),
            other => errs.push(
                format!("{at}[{j}]"),
                format!(
                    "expected \"http/1.1\", \"h2\" (TLS) or \"h2c\" (plain text), got {other:?}"
                ),
            ),
        }
    }
    if !http1 && !h2 {
        errs.push(at, "a listener must speak at least one protocol");
    }
    (http1, h2)
}

/// Validates `[http2]`.
fn validate_http2(r: &raw::RawHttp2, errs: &mut Errors) -> crate::http::h2::H2Settings {
    let d = crate::http::h2::H2Settings::default();
    let size = |errs: &mut Errors,
                key: &str,
                v: &Option<toml::Value>,
                default: u32,
                min: u32,
                max: u32| {
        let Some(v) = v else {
            return default;
        };
        match units::parse_size(v) {
            Ok(n) if (u64::from(min)..=u64::from(max)).contains(&n) => n as u32,
            Ok(n) => {
                errs.push(
                    format!("http2.{key}"),
                    format!("expected {min} to {max} bytes, got {n}"),
                );
                default
            }
            Err(m) => {
                errs.push(format!("http2.{key}"), m);
                default
            }
        }
    };
    let count = |errs: &mut Errors, key: &str, v: Option<u32>, default: u32| match v {
        Some(0) => {
            errs.push(format!("http2.{key}"), "expected at least 1");
            default
        }
        Some(n) => n,
        None => default,
    };
    let max_header_list_size = size(
        errs,
        "max_header_list_size",
        &r.max_header_list_size,
        d.max_header_list_size,
        1024,
        16 << 20,
    );
    crate::http::h2::H2Settings {
        max_concurrent_streams: count(
            errs,
            "max_concurrent_streams",
            r.max_concurrent_streams,
            d.max_concurrent_streams,
        ),
        max_header_list_size,
        // RFC 9113: windows up to 2^31-1, frames from 2^14 to 2^24-1.
        stream_window: size(
            errs,
            "stream_window",
            &r.stream_window,
            d.stream_window,
            1024,
            (1 << 31) - 1,
        ),
        connection_window: size(
            errs,
            "connection_window",
            &r.connection_window,
            d.connection_window,
            65_535,
            (1 << 31) - 1,
        ),
        max_frame_size: size(
            errs,
            "max_frame_size",
            &r.max_frame_size,
            d.max_frame_size,
            16_384,
            (1 << 24) - 1,
        ),
        max_pending_resets: count(
            errs,
            "max_pending_resets",
            r.max_pending_resets,
            d.max_pending_resets as u32,
        ) as usize,
        max_error_resets: count(
            errs,
            "max_error_resets",
            r.max_error_resets,
            d.max_error_resets as u32,
        ) as usize,
        hpack_table_size: size(
            errs,
            "hpack_table_size",
            &r.hpack_table_size,
            d.hpack_table_size,
            0,
            1 << 20,
        ),
        idle_timeout: errs.duration("http2.idle_timeout", &r.idle_timeout, d.idle_timeout),
        handshake_timeout: errs.duration(
            "http2.handshake_timeout",
            &r.handshake_timeout,
            d.handshake_timeout,
        ),
        flood: crate::http::h2::FloodLimits {
            pings_per_second: count(
                errs,
                "max_pings_per_second",
                r.max_pings_per_second,
                d.flood.pings_per_second,
            ),
            settings_per_second: count(
                errs,
                "max_settings_per_second",
                r.max_settings_per_second,
                d.flood.settings_per_second,
            ),
            resets_per_second: count(
                errs,
                "max_resets_per_second",
                r.max_resets_per_second,
                d.flood.resets_per_second,
            ),
            empty_frames_per_second: count(
                errs,
                "max_empty_frames_per_second",
                r.max_empty_frames_per_second,
                d.flood.empty_frames_per_second,
            ),
            continuation_frames: count(
                errs,
                "max_continuation_frames",
                r.max_continuation_frames,
                d.flood.continuation_frames,
            ),
            header_block_bytes: max_header_list_size,
        },
        grpc_error_codes: match &r.grpc_error_codes {
            None => d.grpc_error_codes,
            Some(names) => names.iter().enumerate().fold(0, |mask, (j, n)| {
                match crate::http::h2::grpc_code(n) {
                    Some(c) => mask | 1 << c,
                    None => {
                        errs.push(
                            format!("http2.grpc_error_codes[{j}]"),
                            format!(
                                "expected a gRPC status name such as \"UNAVAILABLE\", got {n:?}"
                            ),
                        );
                        mask
                    }
                }
            }),
        },
    }
}

/// Validates a listener's `acme` table.
fn validate_acme(
    a: &raw::RawAcme,
    at: &str,
    base: &Path,
    errs: &mut Errors,
) -> Option<crate::acme::AcmeConfig> {
    let before = errs.0.len();
    if !a.directory.starts_with("https://") || a.directory.len() <= "https://".len() {
        errs.push(
            format!("{at}.directory"),
            format!(
                "expected the ACME server's https:// directory URL, got {:?}",
                a.directory
            ),
        );
    }
    if a.hosts.is_empty() {
        errs.push(format!("{at}.hosts"), "expected at least one host name");
    }
    for (j, h) in a.hosts.iter().enumerate() {
        let valid = matches!(
            rustls_pki_types::ServerName::try_from(h.as_str()),
            Ok(rustls_pki_types::ServerName::DnsName(_))
        ) && !h.starts_with("*.")
            && h.contains('.');
        if !valid {
            errs.push(
                format!("{at}.hosts[{j}]"),
                format!("expected a host name such as \"www.example.com\" (no wildcards: HTTP-01 cannot validate them), got {h:?}"),
            );
        }
    }
    if let Some(e) = &a.email {
        if !e.contains('@') || e.contains(char::is_whitespace) {
            errs.push(
                format!("{at}.email"),
                format!("expected an email address, got {e:?}"),
            );
        }
    }
    let renew_before = errs.duration(
        &format!("{at}.renew_before"),
        &a.renew_before,
        crate::acme::DEFAULT_RENEW_BEFORE,
    );
    if errs.0.len() > before {
        return None;
    }
    Some(crate::acme::AcmeConfig {
        directory: a.directory.clone(),
        email: a.email.clone(),
        hosts: a.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        ca: a
            .ca
            .as_ref()
            .map(|c| base.join(c).to_string_lossy().into_owned()),
        state_dir: base.join(
            a.state_dir
                .as_deref()
                .unwrap_or(crate::acme::DEFAULT_STATE_DIR),
        ),
        renew_before,
    })
}

/// Validates a listener's `tls` table (the files are read afterwards).
fn validate_listener_tls(
    t: &raw::RawListenerTls,
    at: &str,
    base: &Path,
    errs: &mut Errors,
) -> Option<crate::tls::ListenerTls> {
    if t.certificates.is_empty() && t.acme.is_none() {
        errs.push(
            format!("{at}.certificates"),
            "expected at least one { cert = \"...\", key = \"...\" }, or an acme table",
        );
        return None;
    }
    let acme = t
        .acme
        .as_ref()
        .and_then(|a| validate_acme(a, &format!("{at}.acme"), base, errs));
    let ticket_rotation = errs.duration(
        &format!("{at}.ticket_rotation"),
        &t.ticket_rotation,
        crate::tls::DEFAULT_TICKET_ROTATION,
    );
    if !(Duration::from_secs(60)..=Duration::from_secs(7 * 86_400)).contains(&ticket_rotation) {
        errs.push(
            format!("{at}.ticket_rotation"),
            "expected a period from \"1m\" to \"7d\"",
        );
    }
    let tls13_only = match t.min_version.as_deref() {
        None | Some("1.2") => false,
        Some("1.3") => true,
        Some(v) => {
            errs.push(
                format!("{at}.min_version"),
                format!("expected \"1.2\" or \"1.3\", got {v:?}"),
            );
            false
        }
    };
    Some(crate::tls::ListenerTls {
        certificates: t
            .certificates
            .iter()
            .map(|c| crate::tls::CertFiles {
                cert: c.cert.clone(),
                key: c.key.clone(),
                names: c
                    .names
                    .as_ref()
                    .map(|n| n.iter().map(|x| x.to_ascii_lowercase()).collect()),
            })
            .collect(),
        require_sni: t.require_sni.unwrap_or(false),
        tls13_only,
        tickets: t.tickets.unwrap_or(true),
        ticket_rotation,
        session_cache: t.session_cache.unwrap_or(crate::tls::DEFAULT_SESSION_CACHE),
        acme,
        client_auth: t.client_auth.as_ref().map(|c| crate::tls::ClientAuth {
            ca: c.ca.clone(),
            required: match c.mode.as_deref() {
                None | Some("required") => true,
                Some("optional") => false,
                Some(m) => {
                    errs.push(
                        format!("{at}.client_auth.mode"),
                        format!("expected \"required\" or \"optional\", got {m:?}"),
                    );
                    true
                }
            },
        }),
    })
}

struct Errors(Vec<ConfigError>);

/// `[geoip]`: the database is read now, so that `lb check` and a reload fail on a file that
/// does not read.
fn validate_geoip(
    g: &raw::RawGeoip,
    base: &Path,
    errs: &mut Errors,
) -> Option<crate::client::geo::Shared> {
    let default = match g.default_country.as_deref() {
        None => *b"ZZ",
        Some(c) => match crate::client::geo::code(c) {
            Some(c) => c,
            None => {
                errs.push(
                    "geoip.default_country",
                    format!("expected two letters such as \"ZZ\", got {c:?}"),
                );
                return None;
            }
        },
    };
    if let Some(h) = &g.header {
        if h.is_empty() || !h.bytes().all(crate::http::chunked::is_tchar) {
            errs.push("geoip.header", format!("{h:?} is not a header name"));
            return None;
        }
        if jwt::owned_name_reserved(h) {
            errs.push(
                "geoip.header",
                format!("{h:?} is a header lb or the client owns; name one of your own, such as X-Client-Country"),
            );
            return None;
        }
    }
    let header = g.header.as_ref().map(|h| h.to_ascii_lowercase());
    match crate::client::geo::GeoDb::open(base.join(&g.database), default, header) {
        Ok(db) => Some(std::sync::Arc::new(db)),
        Err(e) => {
            errs.push("geoip.database", e);
            None
        }
    }
}

/// A list of IP prefixes at `key`; the error names the entry (`key[i]`) that is wrong.
fn ip_set(list: &[String], key: &str, errs: &mut Errors) -> Option<crate::client::IpSet> {
    if list.is_empty() {
        errs.push(
            key,
            "expected at least one address or prefix, such as \"10.0.0.0/8\"",
        );
        return None;
    }
    crate::client::IpSet::parse(list)
        .map_err(|(i, e)| errs.push(format!("{key}[{i}]"), e))
        .ok()
}

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
            file: None,
        });
    }

    fn duration(&mut self, path: &str, value: &Option<String>, default: Duration) -> Duration {
        match value {
            None => default,
            Some(text) => parse_duration(text).unwrap_or_else(|e| {
                self.push(path, e);
                default
            }),
        }
    }

    /// A duration of at least `min` (or `default` when unset).
    fn duration_at_least(
        &mut self,
        path: &str,
        value: &Option<String>,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let d = self.duration(path, value, default);
        if d < min {
            self.push(path, format!("must be at least {min:?}"));
            return default;
        }
        d
    }

    fn addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    path,
                    format!(
                        "expected an IP address and port such as \"127.0.0.1:8080\", got {text:?}"
                    ),
                );
                None
            }
        }
    }
}

/// `base`: where relative file paths in the config (certificates) are found.
fn validate(raw: RawConfig, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors(Vec::new());
    let fingerprint = std::sync::Arc::new(diff::Fingerprint::of(&raw));
    let server = validate_server(&raw.server, &mut errs);
    let http = validate_http(&raw.http, &mut errs);
    let http2 = validate_http2(&raw.http2, &mut errs);
    let metrics = validate_metrics(&raw.metrics, &mut errs);
    let redis = match raw.redis.as_ref().map(source::validate_redis) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(errors)) => {
            errs.0.extend(errors);
            None
        }
    };
    let etcd = match raw.source.as_ref().map(|s| source::validate(s, base)) {
        None => None,
        Some(Ok(e)) => e,
        Some(Err(errors)) => {
            errs.0.extend(errors);
            None
        }
    };

    if raw.listeners.is_empty() {
        errs.push("listeners", "at least one [[listeners]] entry is required");
    }
    let mut listeners = Vec::new();
    let mut listener_tls = Vec::new();
    let mut listener_names = HashSet::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let name = l.name.clone().unwrap_or_else(|| format!("listener{i}"));
        if !listener_names.insert(name.clone()) {
            errs.push(
                format!("listeners[{i}].name"),
                format!("duplicate listener name {name:?}"),
            );
        }
        let backlog = l.backlog.unwrap_or(DEFAULT_BACKLOG);
        if backlog == 0 {
            errs.push(
                format!("listeners[{i}].backlog"),
                "expected a backlog of at least 1",
            );
        }
        let tls = l.tls.as_ref().and_then(|t| {
            validate_listener_tls(t, &format!("listeners[{i}].tls"), base, &mut errs)
        });
        let alpn: Vec<Vec<u8>> = match l.protocols.as_deref() {
            Some(p) if p.iter().any(|x| x == "h2") => p
                .iter()
                .filter(|x| *x == "h2" || *x == "http/1.1")
                .map(|x| x.as_bytes().to_vec())
                .collect(),
            _ => vec![b"http/1.1".to_vec()],
        };
        let built = tls.as_ref().and_then(|t| {
            crate::tls::server_config(t, base, alpn)
                .map(std::sync::Arc::new)
                .map_err(|e| errs.push(format!("listeners[{i}].tls.certificates"), e))
                .ok()
        });
        if let Some(addr) = errs.addr(&format!("listeners[{i}].addr"), &l.addr) {
            if l.redirect_to_https == Some(0) {
                errs.push(
                    format!("listeners[{i}].redirect_to_https"),
                    "expected the HTTPS port to send clients to, such as 443",
                );
            }
            let (http1, h2) = validate_protocols(
                l.protocols.as_deref(),
                tls.is_some(),
                &format!("listeners[{i}].protocols"),
                &mut errs,
            );
            listeners.push(ListenerConfig {
                name,
                addr,
                backlog,
                tls,
                redirect_to_https: l.redirect_to_https,
                h2,
                http1,
                proxy_protocol: l.proxy_protocol.unwrap_or(false),
            });
            listener_tls.push(built);
        }
    }

    let admin = raw.admin.as_ref().and_then(|a| {
        if a.token
            .as_deref()
            .is_some_and(|t| t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            errs.push(
                "admin.token",
                "expected at least 16 visible ASCII characters",
            );
        }
        let hosts = a.hosts.clone().unwrap_or_default();
        for (i, h) in hosts.iter().enumerate() {
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                errs.push(
                    format!("admin.hosts[{i}]"),
                    format!("expected a DNS name such as \"lb1.example.net\", got {h:?}"),
                );
            }
        }
        let addr = a.addr.as_deref().unwrap_or(DEFAULT_ADMIN_ADDR);
        let addr = errs.addr("admin.addr", addr)?;
        if !addr.ip().is_loopback() && a.token.is_none() {
            // Anyone who can reach it could reload config or move traffic.
            errs.push(
                "admin.addr",
                format!(
                    "{addr} is reachable from outside this host and admin.token is not set: \
                     set a token (16+ characters) or bind the admin API to 127.0.0.1"
                ),
            );
        }
        Some(AdminConfig {
            addr,
            token: a.token.clone(),
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        })
    });
    let access_log = raw.access_log.as_ref().and_then(|l| {
        if !l.enabled.unwrap_or(true) {
            return None;
        }
        let path = l.path.clone().unwrap_or_else(|| "stdout".into());
        if path.is_empty() {
            errs.push("access_log.path", "expected \"stdout\" or a file path");
        }
        Some(path)
    });

    let mut clusters = Vec::new();
    let mut cluster_names = HashSet::new();
    for (i, c) in raw.clusters.iter().enumerate() {
        if !cluster_names.insert(c.name.clone()) {
            errs.push(
                format!("clusters[{i}].name"),
                format!("duplicate cluster name {:?}", c.name),
            );
        }
        clusters.push(cluster::validate_cluster(i, c, base, &mut errs));
    }

    let steering = validate_steering(raw.steering.as_ref(), &mut errs);
    let consumers = release::validate_consumers(raw.identity.as_ref(), &raw.consumers, &mut errs);
    let jwt_providers = jwt::validate_providers(&raw.jwt_providers, base, &mut errs);
    let geo = raw
        .geoip
        .as_ref()
        .and_then(|g| validate_geoip(g, base, &mut errs));
    let mut http = http;
    // Headers lb writes from verified claims and the geo lookup: a client's copies never
    // reach a backend.
    // Compared with `_` read as `-` (CGI-style servers map both to one variable).
    http.owned_headers = jwt_providers
        .iter()
        .flat_map(|p| p.config.forward_claims.iter().map(|(_, h)| h.clone()))
        .chain(geo.iter().filter_map(|g| g.header.clone()))
        .map(|h| h.to_ascii_lowercase().replace('_', "-"))
        .collect();
    let mut routes = Vec::new();
    let ctx = routes::RouteContext {
        clusters: &clusters,
        providers: &jwt_providers,
        geo: geo.is_some(),
    };
    let specs = routes::SpecFiles {
        base,
        read: Default::default(),
    };
    for (i, r) in raw.routes.iter().enumerate() {
        if let Some(route) = routes::validate_route(i, r, &ctx, &specs, &mut errs) {
            routes.push(route);
        }
    }
    // Split names are how the admin API, the metrics and an upgrade find a split's state.
    let mut split_names: Vec<(&str, String)> = Vec::new();
    for r in &routes {
        let inside = r.versions.iter().flat_map(|v| {
            v.entries.iter().filter_map(move |e| {
                e.split.as_ref().map(|s| {
                    (
                        s,
                        format!("routes[{}].versions.map.{:?}.split.name", r.index, e.name),
                    )
                })
            })
        });
        let own = r
            .split
            .as_ref()
            .map(|s| (s, format!("routes[{}].split.name", r.index)));
        for (s, key) in own.into_iter().chain(inside) {
            match split_names.iter().find(|(n, _)| *n == s.name) {
                Some((_, first)) => errs.push(
                    key,
                    format!("the split at {first} is already named {:?}", s.name),
                ),
                None => split_names.push((&s.name, key)),
            }
        }
    }

    if redis.is_none() {
        for r in routes
            .iter()
            .filter(|r| r.rate_limit.as_ref().is_some_and(|l| l.fleet))
        {
            errs.push(
                format!("routes[{}].rate_limit.scope", r.index),
                "a fleet-scoped rate limit needs [redis] with the server the fleet shares",
            );
        }
    }
    if errs.0.is_empty() {
        Ok(Config {
            listener_tls,
            server,
            listeners,
            admin,
            http,
            http2,
            clusters,
            routes,
            access_log,
            consumers,
            steering,
            metrics,
            jwt_providers,
            geo,
            origins: Default::default(),
            fingerprint,
            etcd,
            redis,
        })
    } else {
        Err(errs.0)
    }
}

/// How the kernel half runs.
pub use crate::steering::{SteeringMode, SteeringPolicy, XdpMode};

#[derive(Debug, Clone)]
pub struct SteeringConfig {
    pub mode: SteeringMode,
    pub policy: SteeringPolicy,
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// (address, prefix length).
    pub deny: Vec<(std::net::IpAddr, u32)>,
    pub syn_rate: u64,
    pub syn_burst: u64,
    pub cpu_steering: bool,
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address.
pub fn parse_prefix(text: &str) -> Result<(std::net::IpAddr, u32), String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let ip: std::net::IpAddr = addr.trim().parse().map_err(|_| {
        format!("expected an address or prefix such as \"10.0.0.0/8\", got {text:?}")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length in {text:?} must be 0 to {max}"))?,
    };
    Ok((ip, len))
}

fn validate_steering(s: Option<&raw::RawSteering>, errs: &mut Errors) -> SteeringConfig {
    let default = raw::RawSteering::default();
    let s = s.unwrap_or(&default);
    let mode = match s.mode.as_deref() {
        None | Some("off") => SteeringMode::Off,
        Some("reuseport") => SteeringMode::Reuseport,
        Some("xdp") => SteeringMode::Xdp,
        Some(o) => {
            errs.push(
                "steering.mode",
                format!("expected \"off\", \"reuseport\" or \"xdp\", got {o:?}"),
            );
            SteeringMode::Off
        }
    };
    let policy = match s.policy.as_deref() {
        None | Some("hash") => SteeringPolicy::Hash,
        Some("cpu") => SteeringPolicy::Cpu,
        Some("least_loaded") => SteeringPolicy::LeastLoaded,
        Some(o) => {
            errs.push(
                "steering.policy",
                format!("expected \"cpu\", \"hash\" or \"least_loaded\", got {o:?}"),
            );
            SteeringPolicy::Hash
        }
    };
    let xdp_mode = match s.xdp_mode.as_deref() {
        None | Some("auto") => XdpMode::Auto,
        Some("native") => XdpMode::Native,
        Some("generic") => XdpMode::Generic,
        Some(o) => {
            errs.push(
                "steering.xdp_mode",
                format!("expected \"auto\", \"native\" or \"generic\", got {o:?}"),
            );
            XdpMode::Auto
        }
    };
    if s.cpu_steering == Some(true) && mode != SteeringMode::Xdp {
        errs.push(
            "steering.cpu_steering",
            "CPU steering is done by XDP: it needs mode \"xdp\"",
        );
    }
    if mode == SteeringMode::Xdp && s.interfaces.is_empty() {
        errs.push(
            "steering.interfaces",
            "mode \"xdp\" needs at least one interface",
        );
    }
    for (i, name) in s.interfaces.iter().enumerate() {
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            errs.push(
                format!("steering.interfaces[{i}]"),
                format!("{name:?} is not an interface name"),
            );
        }
    }
    let mut deny = Vec::new();
    for (i, d) in s.deny.iter().enumerate() {
        match parse_prefix(d) {
            Ok(p) => deny.push(p),
            Err(e) => errs.push(format!("steering.deny[{i}]"), e),
        }
    }
    SteeringConfig {
        mode,
        policy,
        interfaces: s.interfaces.clone(),
        xdp_mode,
        deny,
        syn_rate: s.syn_rate.unwrap_or(0),
        syn_burst: s.syn_burst.unwrap_or(100),
        cpu_steering: s.cpu_steering.unwrap_or(false),
    }
}

fn validate_server(s: &RawServer, errs: &mut Errors) -> ServerConfig {
    let workers = match &s.workers {
        None => Workers::Auto,
        Some(toml::Value::String(v)) if v == "auto" => Workers::Auto,
        Some(toml::Value::Integer(n)) if (1..=1024).contains(n) => Workers::Count(*n as usize),
        Some(other) => {
            errs.push(
                "server.workers",
                format!("expected \"auto\" or a whole number from 1 to 1024, got {other}"),
            );
            Workers::Auto
        }
    };
    let io = match s.io.as_deref() {
        None | Some("auto") => IoDriver::Auto,
        Some("io_uring") => IoDriver::IoUring,
        Some("epoll") => IoDriver::Epoll,
        Some(other) => {
            errs.push(
                "server.io",
                format!("expected \"auto\", \"io_uring\" or \"epoll\", got {other:?}"),
            );
            IoDriver::Auto
        }
    };
    let io_uring_entries = s.io_uring_entries.unwrap_or(DEFAULT_IO_URING_ENTRIES);
    if !(8..=32768).contains(&io_uring_entries) || !io_uring_entries.is_power_of_two() {
        errs.push(
            "server.io_uring_entries",
            format!("expected a power of two from 8 to 32768, got {io_uring_entries}"),
        );
    }
    ServerConfig {
        workers,
        pin_workers: s.pin_workers.unwrap_or(true),
        io,
        io_uring_entries,
        drain_timeout: errs.duration(
            "server.drain_timeout",
            &s.drain_timeout,
            DEFAULT_DRAIN_TIMEOUT,
        ),
        watch_config: s.watch_config.as_ref().map(|_| {
            let d = errs.duration(
                "server.watch_config",
                &s.watch_config,
                Duration::from_secs(2),
            );
            if d < Duration::from_millis(100) {
                errs.push(
                    "server.watch_config",
                    "expected an interval of at least 100ms",
                );
            }
            d
        }),
    }
}

fn validate_http(h: &RawHttp, errs: &mut Errors) -> HttpConfig {
    let size = |errs: &mut Errors, key: &str, v: &Option<toml::Value>, default: u64| match v {
        None => default,
        Some(v) => parse_size(v).unwrap_or_else(|e| {
            errs.push(format!("http.{key}"), e);
            default
        }),
    };
    let max_header_bytes = size(
        errs,
        "max_header_bytes",
        &h.max_header_bytes,
        DEFAULT_MAX_HEADER_BYTES as u64,
    );
    if !(1024..=1 << 20).contains(&max_header_bytes) {
        errs.push(
            "http.max_header_bytes",
            format!("expected a size from 1KiB to 1MiB, got {max_header_bytes}"),
        );
    }
    let max_uri_bytes = size(
        errs,
        "max_uri_bytes",
        &h.max_uri_bytes,
        DEFAULT_MAX_URI_BYTES,
    );
    if !(64..=1 << 20).contains(&max_uri_bytes) {
        errs.push(
            "http.max_uri_bytes",
            format!("expected a size from 64 bytes to 1MiB, got {max_uri_bytes}"),
        );
    }
    let max_headers = h
        .max_headers
        .map(|n| n as usize)
        .unwrap_or(DEFAULT_MAX_HEADERS);
    if !(1..=MAX_HEADERS_LIMIT).contains(&max_headers) {
        errs.push(
            "http.max_headers",
            format!("expected a number from 1 to {MAX_HEADERS_LIMIT}, got {max_headers}"),
        );
    }
    let mut limit = |name: &str, value: Option<u64>| match value {
        None => None,
        Some(0) => {
            errs.push(
                format!("http.{name}"),
                "expected at least 1; leave it out for no limit",
            );
            None
        }
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let conn_limits = crate::connlimit::Limits {
        total: limit("max_connections", h.max_connections),
        per_worker: limit("max_connections_per_worker", h.max_connections_per_worker),
        per_ip: limit("max_connections_per_ip", h.max_connections_per_ip),
    };
    let via = match h.via.as_deref() {
        None => Some(DEFAULT_VIA.to_string()),
        Some("") => None,
        Some(v) if v.bytes().all(|b| b.is_ascii_graphic()) => Some(v.to_string()),
        Some(v) => {
            errs.push(
                "http.via",
                format!("expected a pseudonym without spaces or control characters, got {v:?}"),
            );
            None
        }
    };
    let mut choice = |key: &str, value: &Option<String>, allowed: &[&str]| -> usize {
        match value.as_deref() {
            None => 0,
            Some(v) => allowed.iter().position(|a| *a == v).unwrap_or_else(|| {
                errs.push(
                    format!("http.{key}"),
                    format!("expected one of {allowed:?}, got {v:?}"),
                );
                0
            }),
        }
    };
    let path = crate::http::path::PathOptions {
        merge_slashes: h.merge_slashes.unwrap_or(true),
        escaped_slashes: match choice("escaped_slashes", &h.escaped_slashes, &["reject", "keep"]) {
            1 => crate::http::path::EscapedSlashes::Keep,
            _ => crate::http::path::EscapedSlashes::Reject,
        },
    };
    let trailers = match choice("trailers", &h.trailers, &["filter", "drop"]) {
        1 => crate::http::chunked::TrailerPolicy::Drop,
        _ => crate::http::chunked::TrailerPolicy::Filter,
    };
    let client_address_headers = match choice(
        "client_address_headers",
        &h.client_address_headers,
        &["replace", "append"],
    ) {
        1 => ClientAddressHeaders::Append,
        _ => ClientAddressHeaders::Replace,
    };
    let trusted_proxies = h
        .trusted_proxies
        .as_deref()
        .and_then(|list| ip_set(list, "http.trusted_proxies", errs))
        .unwrap_or_default();
    HttpConfig {
        path,
        trailers,
        client_address_headers,
        trusted_proxies,
        owned_headers: Vec::new(),
        max_header_bytes: max_header_bytes.min(1 << 20) as usize,
        max_uri_bytes: max_uri_bytes.min(1 << 20) as usize,
        max_headers: max_headers.min(MAX_HEADERS_LIMIT),
        max_request_body: size(
            errs,
            "max_request_body",
            &h.max_request_body,
            DEFAULT_MAX_REQUEST_BODY,
        ),
        client_header_timeout: errs.duration(
            "http.client_header_timeout",
            &h.client_header_timeout,
            DEFAULT_CLIENT_HEADER_TIMEOUT,
        ),
        client_idle_timeout: errs.duration(
            "http.client_idle_timeout",
            &h.client_idle_timeout,
            DEFAULT_CLIENT_IDLE_TIMEOUT,
        ),
        client_body_timeout: errs.duration(
            "http.client_body_timeout",
            &h.client_body_timeout,
            DEFAULT_CLIENT_BODY_TIMEOUT,
        ),
        min_body_rate: size(errs, "min_body_rate", &h.min_body_rate, 0),
        x_forwarded: h.x_forwarded.unwrap_or(true),
        websocket: h.websocket.unwrap_or(true),
        conn_limits,
        websocket_idle_timeout: errs.duration(
            "http.websocket_idle_timeout",
            &h.websocket_idle_timeout,
            DEFAULT_WEBSOCKET_IDLE_TIMEOUT,
        ),
        via,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new("test.toml"))
    }

    const GOOD: &str = r#"
        [server]
        workers = 2
        [[listeners]]
        addr = "127.0.0.1:8080"
        [admin]
        addr = "127.0.0.1:9901"
        [[clusters]]
        name = "orders"
        endpoints = [{ addr = "127.0.0.1:9001" }, { addr = "127.0.0.1:9002", weight = 3 }]
        connect_timeout = "500ms"
        [[routes]]
        host = "API.example.com"
        path_prefix = "/api/orders"
        cluster = "orders"
    "#;

    #[test]
    fn good_config_validates() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.server.workers, Workers::Count(2));
        assert_eq!(c.clusters[0].endpoints[1].weight, 3);
        assert_eq!(c.clusters[0].connect_timeout, Duration::from_millis(500));
        assert_eq!(
            c.routes[0].host,
            crate::routing::matchers::HostMatch::Exact(b"api.example.com".to_vec())
        );
        assert!(matches!(
            c.routes[0].action,
            crate::routing::actions::Action::Forward(0)
        ));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let text = r#"
            [server]
            workers = 0
            [[listeners]]
            addr = "nope"
            [[clusters]]
            name = "a"
            endpoints = [{ addr = "127.0.0.1:1" }, { addr = "bad" }]
            connect_timeout = "5 fortnights"
            [[routes]]
            cluster = "missing"
        "#;
        let e = parse(text).expect_err("invalid");
        let paths: Vec<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "server.workers",
                "listeners[0].addr",
                "clusters[0].endpoints[1].addr",
                "clusters[0].connect_timeout",
                "routes[0].cluster"
            ]
        );
        assert!(e
            .to_string()
            .starts_with("test.toml: server.workers: expected"));
    }

    #[test]
    fn cluster_tls_mistakes_are_named() {
        let base = "[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:2\" }]\n";
        for (tls, path, says) in [
            (
                "{ certificate = \"c.pem\" }",
                "clusters[0].tls.certificate",
                "both",
            ),
            (
                "{ ca = \"ca.pem\", insecure_skip_verify = true }",
                "clusters[0].tls.insecure_skip_verify",
                "no effect",
            ),
            (
                "{ server_name = \"not a name\" }",
                "clusters[0].tls.server_name",
                "DNS name",
            ),
            (
                "{ ca = \"/nonexistent/ca.pem\" }",
                "clusters[0].tls",
                "/nonexistent/ca.pem",
            ),
        ] {
            let e = parse(&format!("{base}tls = {tls}\n")).expect_err(tls);
            assert_eq!(e.errors[0].path, path, "{tls}");
            assert!(e.errors[0].message.contains(says), "{tls}: {e}");
        }
        let ok = parse(&format!("{base}tls = {{ insecure_skip_verify = true }}\n"))
            .expect("verification off is allowed");
        assert!(ok
            .warnings()
            .iter()
            .any(|w| w.contains("insecure_skip_verify is on")));
    }

    #[test]
    fn unknown_key_names_its_path() {
        let text = "[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:2\", wieght = 1 }]\n";
        let e = parse(text).expect_err("typo");
        assert_eq!(e.errors[0].path, "clusters[0].endpoints[0].wieght");
        assert!(
            e.errors[0].message.contains("unknown field"),
            "{}",
            e.errors[0].message
        );
    }
}
