//! The serde mirror of the TOML file. Values that need checking beyond their TOML type stay as
//! strings or `toml::Value` here, so that validation can report every problem at once with its
//! key path instead of stopping at the first.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub http: RawHttp,
    /// HTTP/2 limits, for listeners that speak it.
    #[serde(default)]
    pub http2: RawHttp2,
    #[serde(default)]
    pub clusters: Vec<RawCluster>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    pub access_log: Option<RawAccessLog>,
    pub identity: Option<RawIdentity>,
    #[serde(default)]
    pub consumers: Vec<RawConsumer>,
    pub steering: Option<RawSteering>,
    #[serde(default)]
    pub metrics: RawMetrics,
    /// Issuers of JWT bearer tokens that routes can require and read claims from.
    #[serde(default)]
    pub jwt_providers: Vec<RawJwtProvider>,
    pub geoip: Option<RawGeoip>,
    /// Where the config comes from besides this file (etcd).
    pub source: Option<super::source::RawSource>,
    /// The Redis that rate limits with `scope = "fleet"` share.
    pub redis: Option<super::source::RawRedis>,
}

/// `[geoip]`: a MaxMind DB country (or city) database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoip {
    pub database: String,
    /// The country of addresses the database does not know (default `"ZZ"`).
    pub default_country: Option<String>,
    /// Tell the backend the client's country in this header (a client's copy is removed).
    pub header: Option<String>,
}

/// One string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn list(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// `[[jwt_providers]]`: who issues the tokens, how they are signed, where they come in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwtProvider {
    pub name: String,
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Default `["RS256", "ES256", "EdDSA"]`; `HS*` needs `secret`/`secret_file`.
    pub algorithms: Option<Vec<String>>,
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
    /// How often a JWKS URL is fetched again (default "10m").
    pub jwks_refresh: Option<String>,
    /// The least time between fetches for unknown `kid`s (default "30s").
    pub jwks_min_refetch: Option<String>,
    /// CAs for an `https` JWKS URL (default: the system's).
    pub jwks_ca: Option<String>,
    pub secret_file: Option<String>,
    /// `exp` and `nbf` tolerance (default "60s").
    pub leeway: Option<String>,
    /// `"bearer"` (default), `"header:NAME"`, `"cookie:NAME"` or `"query:NAME"`.
    pub token: Option<String>,
    /// Claims to send to the backend, `{ claim = "Header-Name" }`.
    #[serde(default)]
    pub forward_claims: std::collections::BTreeMap<String, String>,
    pub strip_token: Option<bool>,
    /// The claim that names the consumer in the usage of deprecated API versions (default
    /// `sub`).
    pub consumer_claim: Option<String>,
}

/// A route's `jwt = { provider = "...", required = true }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteJwt {
    pub provider: String,
    pub required: Option<bool>,
}

/// `{ name = "role", equals = "beta-tester" }`, `contains`, or `present`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClaimCond {
    pub name: String,
    pub equals: Option<String>,
    pub contains: Option<String>,
    pub present: Option<bool>,
}

/// `[metrics]`: how many series routes get.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// `"auto"` (default), `"full"`, `"counters"` or `"none"`: for routes without `metrics`.
    pub routes: Option<String>,
    /// With `"auto"`: every route gets full series up to this many routes (default 1,000).
    pub auto_full_up_to: Option<usize>,
}

/// `[steering]`: the kernel half.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSteering {
    /// `"off"`, `"reuseport"` or `"xdp"`.
    pub mode: Option<String>,
    /// SK_REUSEPORT policy: `"cpu"`, `"hash"` or `"least_loaded"`.
    pub policy: Option<String>,
    /// Interfaces the XDP program attaches to.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// `"auto"`, `"native"` or `"generic"`.
    pub xdp_mode: Option<String>,
    /// Source prefixes dropped by XDP: `"10.0.0.0/8"`, `"2001:db8::/32"`, `"192.0.2.1"`.
    #[serde(default)]
    pub deny: Vec<String>,
    /// New connections per second per source before SYNs are dropped; 0 or absent is off.
    pub syn_rate: Option<u64>,
    pub syn_burst: Option<u64>,
    /// XDP hands each TCP flow to the CPU of the worker that will serve it (CPU map).
    pub cpu_steering: Option<bool>,
}

/// `[identity]`: where API keys come from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Header carrying the API key (default `X-API-Key`).
    pub header: Option<String>,
    /// Query parameter carrying the API key, if keys may come that way too.
    pub query: Option<String>,
}

/// `[[consumers]]`: an API key, stored as its SHA-256, and metadata.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsumer {
    pub name: String,
    /// Hex SHA-256 of the key.
    pub key_sha256: String,
    #[serde(default)]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// `[access_log]`: one JSON line per request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `"stdout"` or a file path (appended to).
    pub path: Option<String>,
    pub enabled: Option<bool>,
}

/// `[server]`: the process and its workers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// `"auto"` (one per core) or a positive integer.
    pub workers: Option<toml::Value>,
    pub pin_workers: Option<bool>,
    /// `"auto"`, `"io_uring"` or `"epoll"`.
    pub io: Option<String>,
    pub io_uring_entries: Option<u32>,
    pub drain_timeout: Option<String>,
    /// Poll the config file this often and reload when its content changes.
    pub watch_config: Option<String>,
}

/// `[[listeners]]`: where clients connect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<String>,
    pub addr: String,
    pub backlog: Option<u32>,
    /// Terminate TLS on this listener.
    pub tls: Option<RawListenerTls>,
    /// Answer every plain-text request with a 308 redirect to HTTPS on this port.
    pub redirect_to_https: Option<u16>,
    /// What the listener speaks: `"http/1.1"`, `"h2"` (TLS, by ALPN) and `"h2c"` (plain
    /// text, by prior knowledge). Default `["http/1.1"]`.
    pub protocols: Option<Vec<String>>,
    /// Every connection starts with a PROXY protocol header (v1 or v2) whose source address
    /// is the client's; one without a valid header is closed (default false).
    pub proxy_protocol: Option<bool>,
}

/// `[http2]`: HTTP/2 limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp2 {
    pub max_concurrent_streams: Option<u32>,
    pub max_header_list_size: Option<toml::Value>,
    pub stream_window: Option<toml::Value>,
    pub connection_window: Option<toml::Value>,
    pub max_frame_size: Option<toml::Value>,
    pub max_pending_resets: Option<u32>,
    pub max_error_resets: Option<u32>,
    pub hpack_table_size: Option<toml::Value>,
    pub idle_timeout: Option<String>,
    pub handshake_timeout: Option<String>,
    pub max_pings_per_second: Option<u32>,
    pub max_settings_per_second: Option<u32>,
    pub max_resets_per_second: Option<u32>,
    pub max_empty_frames_per_second: Option<u32>,
    pub max_continuation_frames: Option<u32>,
    /// gRPC status names that count as errors in the canary analysis.
    pub grpc_error_codes: Option<Vec<String>>,
}

/// `[[listeners]] tls = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    #[serde(default)]
    pub certificates: Vec<RawCertFiles>,
    /// Certificates obtained and renewed from an ACME server.
    pub acme: Option<RawAcme>,
    /// Refuse handshakes without SNI (default false: they get the first certificate).
    pub require_sni: Option<bool>,
    /// `"1.2"` (default) or `"1.3"`.
    pub min_version: Option<String>,
    /// Client certificates (mTLS).
    pub client_auth: Option<RawClientAuth>,
    /// Resumption by session tickets (default true).
    pub tickets: Option<bool>,
    /// How often the ticket key rotates (default "6h"; from "1m" to "7d").
    pub ticket_rotation: Option<String>,
    /// Sessions kept for resumption by ID (default 10000; 0 turns the cache off).
    pub session_cache: Option<usize>,
}

/// `acme = { directory = "https://...", email = "...", hosts = ["www.example.com"] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    pub directory: String,
    pub email: Option<String>,
    pub hosts: Vec<String>,
    /// CAs to trust for the ACME server's HTTPS (default: the system's).
    pub ca: Option<String>,
    /// Where the account key and certificates are kept (default /var/lib/lb/acme).
    pub state_dir: Option<String>,
    /// Renew this long before expiry (default 30 days).
    pub renew_before: Option<String>,
}

/// `client_auth = { ca = "clients-ca.pem", mode = "required" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    pub ca: String,
    /// `"required"` (default) or `"optional"`.
    pub mode: Option<String>,
}

/// One certificate chain (PEM) and its private key (PEM), relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertFiles {
    pub cert: String,
    pub key: String,
    /// The names SNI selects it for (exact or `*.example.com`); default: its SANs.
    pub names: Option<Vec<String>>,
}

/// `[admin]`: the operator's HTTP API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Default `127.0.0.1:9901`: loopback only.
    pub addr: Option<String>,
    /// If set, every admin request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Host names (besides IP literals and `localhost`) that admin requests may name in
    /// `Host`; anything else is refused, which defeats DNS rebinding.
    pub hosts: Option<Vec<String>>,
}

/// `[http]`: limits and timeouts on the client side, and the headers `lb` adds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub max_header_bytes: Option<toml::Value>,
    pub max_uri_bytes: Option<toml::Value>,
    pub max_headers: Option<u32>,
    pub max_request_body: Option<toml::Value>,
    pub client_header_timeout: Option<String>,
    pub client_idle_timeout: Option<String>,
    pub client_body_timeout: Option<String>,
    /// Minimum average request body rate after `client_body_timeout`, such as `"1KiB"` per
    /// second; absent or `"0"` is no minimum.
    pub min_body_rate: Option<toml::Value>,
    pub x_forwarded: Option<bool>,
    /// Client connections open at once, across workers; absent is unlimited.
    pub max_connections: Option<u64>,
    /// Client connections one worker holds at once; absent is unlimited.
    pub max_connections_per_worker: Option<u64>,
    /// Concurrent client connections from one IP address; absent is unlimited.
    pub max_connections_per_ip: Option<u64>,
    /// Pass WebSocket upgrades through as tunnels (default true).
    pub websocket: Option<bool>,
    pub websocket_idle_timeout: Option<String>,
    /// The pseudonym in the `Via` header; an empty string leaves `Via` alone.
    pub via: Option<String>,
    /// Merge runs of `/` in request paths into one (default true).
    pub merge_slashes: Option<bool>,
    /// `"reject"` (default) or `"keep"`: what to do with `%2F`, `%5C` and `\` in a path.
    pub escaped_slashes: Option<String>,
    /// `"filter"` (default: drop the fields RFC 9110 forbids in trailers) or `"drop"` (no
    /// trailers forwarded either way).
    pub trailers: Option<String>,
    /// `"replace"` (default: client-sent address headers are removed and lb writes its own
    /// X-Forwarded-For) or `"append"` (the client's X-Forwarded-For is kept, lb's entry last).
    pub client_address_headers: Option<String>,
    /// Peers (prefixes) whose `X-Forwarded-For` or `Forwarded` names the client.
    pub trusted_proxies: Option<Vec<String>>,
}

/// `[[clusters]]`: a named group of backends.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    pub balancer: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_endpoint: Option<u32>,
    /// For `maglev`: `"header:NAME"`, `"cookie:NAME"`, `"query:NAME"`, `"client_ip"`, `"path"`.
    pub hash_key: Option<String>,
    pub maglev_table_size: Option<u32>,
    /// Percent of usable endpoints below which the cluster routes to all of them.
    pub panic_threshold: Option<u32>,
    /// Re-resolve host-name endpoints this often.
    pub resolve_interval: Option<String>,
    pub health_check: Option<RawHealthCheck>,
    pub outlier_detection: Option<RawOutlier>,
    pub limits: Option<RawLimits>,
    pub endpoint_limits: Option<RawLimits>,
    pub breaker: Option<RawBreaker>,
    pub retry: Option<RawRetry>,
    /// TLS to the endpoints.
    pub tls: Option<RawClusterTls>,
    /// `"http/1.1"` (default), `"h2"` (HTTP/2 over TLS, by ALPN) or `"h2c"` (HTTP/2 over
    /// plain text, by prior knowledge).
    pub protocol: Option<String>,
    /// Streams one HTTP/2 connection to an endpoint carries at once (default 100).
    pub max_streams_per_connection: Option<u32>,
}

/// `[[clusters]] tls = { ca = "...", server_name = "...", certificate = "...", key = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClusterTls {
    /// CAs that issue the backends' certificates (PEM); default: the system's.
    pub ca: Option<String>,
    /// The name sent as SNI and verified; default: the endpoint's host name, or its IP.
    pub server_name: Option<String>,
    /// A client certificate chain to present (PEM), with `key`.
    pub certificate: Option<String>,
    pub key: Option<String>,
    /// Accept any certificate (no verification at all). Only for tests and broken backends.
    pub insecure_skip_verify: Option<bool>,
}

/// Active HTTP health checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// The path of an HTTP check (required unless `grpc_service` is set).
    pub path: Option<String>,
    /// A gRPC check instead (`grpc.health.v1.Health/Check`) of this service ("" for the
    /// server as a whole); for clusters with `protocol = "h2"` or `"h2c"`.
    pub grpc_service: Option<String>,
    pub host: Option<String>,
    pub expected_statuses: Option<Vec<u16>>,
    pub interval: Option<String>,
    pub jitter: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

/// Passive outlier detection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_connect_failures: Option<u32>,
    /// Error share (0.0 to 1.0) over `window` that ejects.
    pub error_rate: Option<f64>,
    pub window: Option<String>,
    pub min_requests: Option<u32>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_time: Option<String>,
    pub max_ejected_percent: Option<u32>,
}

/// Concurrency limits, cluster-wide or per endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_pending: Option<u32>,
    pub pending_timeout: Option<String>,
    pub max_retries: Option<u32>,
}

/// The failure breaker of each endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub consecutive_failures: Option<u32>,
    pub failure_rate: Option<f64>,
    pub window: Option<String>,
    pub min_requests: Option<u32>,
    pub open_for: Option<String>,
    pub half_open_probes: Option<u32>,
}

/// Retries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Tries in all, the first included.
    pub attempts: Option<u32>,
    /// `connect_failure`, `reset`, `timeout`, `5xx`, a status such as `"503"`, or a gRPC
    /// status such as `"grpc:UNAVAILABLE"`.
    pub retry_on: Option<Vec<String>>,
    pub non_idempotent: Option<bool>,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
    /// Retries in flight may be at most this percent of requests in flight.
    pub budget_percent: Option<u32>,
    /// Retries always allowed in flight, whatever the budget says.
    pub min_retry_concurrency: Option<u32>,
}

/// One backend of a cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub addr: String,
    pub weight: Option<u32>,
}

/// `[[routes]]`: which requests match, and what happens to them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub host: Option<String>,
    /// The TLS SNI name the client sent (exact or `*.` wildcard); only TLS requests match.
    pub sni: Option<String>,
    /// A verified client certificate must (true) or must not (false) be present.
    pub client_cert: Option<bool>,
    /// The verified client certificate's subject must be exactly this (`CN=client,O=Org`).
    pub client_cert_subject: Option<String>,
    /// The client's address is in one of these prefixes (`"192.0.2.0/24"`, `"2001:db8::/32"`).
    pub client_ip: Option<Vec<String>>,
    /// The client's country (ISO 3166-1 alpha-2) is one of these (needs `[geoip]`).
    pub country: Option<OneOrMany>,
    /// The client's continent code (`EU`, `NA`, ...) is one of these (needs `[geoip]`).
    pub continent: Option<OneOrMany>,
    /// Verify the request's JWT with a provider (required: 401 without a valid one).
    pub jwt: Option<RawRouteJwt>,
    /// Conditions on the verified token's claims (needs `jwt`).
    #[serde(default)]
    pub jwt_claims: Vec<RawClaimCond>,
    /// Exactly one of the four path matchers, or none (matches every path).
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    pub path_pattern: Option<String>,
    pub method: Option<String>,
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub headers: Vec<RawHeaderMatch>,
    #[serde(default)]
    pub query: Vec<RawQueryMatch>,
    /// Exactly one action: a cluster, a redirect, or a direct response.
    pub cluster: Option<String>,
    pub redirect: Option<RawRedirect>,
    pub respond: Option<RawRespond>,
    pub rewrite: Option<RawRewrite>,
    pub request_headers: Option<RawHeaderOps>,
    pub response_headers: Option<RawHeaderOps>,
    pub deprecation: Option<RawDeprecation>,
    /// Versions of the route's API, each to its cluster (instead of `cluster`).
    pub versions: Option<RawVersions>,
    /// Validate requests against an OpenAPI document or JSON Schemas.
    pub validate: Option<RawValidate>,
    pub timeouts: Option<RawTimeouts>,
    /// Consumer metadata that must match (`{ environment = "test" }`); implies a valid key.
    pub consumer: Option<std::collections::BTreeMap<String, String>>,
    /// `"required"`: requests without a known API key get 401.
    pub auth: Option<String>,
    pub split: Option<RawSplit>,
    pub rate_limit: Option<RawRateLimit>,
    /// `"full"`, `"counters"` or `"none"`: the series this route gets of its own.
    pub metrics: Option<String>,
}

/// A traffic split of a route between named targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    /// Name for the admin API and metrics (default: the route's name).
    pub name: Option<String>,
    pub targets: Vec<RawTarget>,
    /// Target for requests the split does not apply to (default: the first).
    pub default_target: Option<String>,
    /// `"header:NAME"`, `"cookie:NAME"`, `"query:NAME"` or `"client_ip"`; absent: per request.
    pub sticky: Option<String>,
    pub salt: Option<String>,
    #[serde(default, rename = "override")]
    pub overrides: Vec<RawOverride>,
    /// A header whose value names the target to use.
    pub force_header: Option<String>,
    #[serde(default)]
    pub include: Vec<RawTargeting>,
    #[serde(default)]
    pub exclude: Vec<RawTargeting>,
    /// Adds `X-AB-Test: <name>` and `X-AB-Variant: <target>` both ways.
    pub ab_test: Option<String>,
    pub mirror: Option<RawMirror>,
    pub analysis: Option<RawAnalysis>,
    pub promotion: Option<RawPromotion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: String,
    pub cluster: String,
    /// Percent, with up to four decimals (0.1% canaries are fine); 0 means no traffic.
    pub weight: f64,
}

/// Forces a target when a header, query parameter, cookie or claim has a value, or the
/// client's address, country or continent is one of a list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverride {
    pub header: Option<String>,
    pub query: Option<String>,
    pub cookie: Option<String>,
    /// A claim of the route's verified JWT.
    pub jwt_claim: Option<String>,
    /// The value for header, query, cookie or jwt_claim.
    pub value: Option<String>,
    pub client_ip: Option<Vec<String>>,
    pub country: Option<Vec<String>>,
    pub continent: Option<Vec<String>>,
    pub target: String,
}

/// A targeting condition: a header or consumer metadata field in a set of values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTargeting {
    pub header: Option<String>,
    pub consumer: Option<String>,
    #[serde(default)]
    pub values: Vec<String>,
    /// The client's address is in one of these prefixes (instead of header or consumer).
    pub client_ip: Option<Vec<String>>,
    /// A claim of the route's verified JWT (a value, or an array holding one of `values`).
    pub jwt_claim: Option<String>,
    /// The client's country is one of these (needs `[geoip]`).
    pub country: Option<Vec<String>>,
    /// The client's continent is one of these (needs `[geoip]`).
    pub continent: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub cluster: String,
    /// Percent of requests copied.
    pub percent: f64,
    /// Requests with a larger body are not mirrored (counted as shed).
    pub max_body: Option<toml::Value>,
    /// Mirror requests in flight at most; beyond, copies are shed.
    pub max_in_flight: Option<u32>,
    pub timeout: Option<String>,
}

/// Automatic canary analysis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnalysis {
    pub baseline: Option<String>,
    pub canary: Option<String>,
    pub window: Option<String>,
    pub interval: Option<String>,
    pub min_requests: Option<u32>,
    pub max_error_rate: Option<f64>,
    pub max_error_rate_increase: Option<f64>,
    pub max_p99: Option<String>,
    pub max_p99_ratio: Option<f64>,
}

/// Progressive promotion of the canary through weight steps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPromotion {
    pub steps: Vec<f64>,
    pub hold: Option<String>,
}

/// A route's rate limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// `"client_ip"`, `"header:NAME"` or `"consumer"`.
    pub key: String,
    /// `"local"` (default: this appliance's count) or `"fleet"` (shared through `[redis]`).
    pub scope: Option<String>,
    /// With `scope = "fleet"`: ask Redis on every request, for an exact fleet-wide count
    /// (low-rate keys such as logins), instead of syncing counts every interval.
    pub strict: Option<bool>,
    pub limits: Vec<RawLimitRule>,
}

/// One limit; the first whose `when` matches the consumer's metadata applies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimitRule {
    #[serde(default)]
    pub when: std::collections::BTreeMap<String, String>,
    /// Conditions on the route's verified JWT claims (a tier by claim).
    #[serde(default)]
    pub when_claims: Vec<RawClaimCond>,
    pub requests: u32,
    pub per: String,
    pub burst: Option<u32>,
}

/// Per-route overrides of the cluster's timeouts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub response: Option<String>,
    pub idle: Option<String>,
}

/// A header condition: exactly one of `equals`, `present`, `regex`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: String,
    pub equals: Option<String>,
    pub present: Option<bool>,
    pub regex: Option<String>,
}

/// A query parameter condition: exactly one of `equals`, `present`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueryMatch {
    pub name: String,
    pub equals: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub status: Option<u16>,
    pub location: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    pub status: Option<u16>,
    pub content_type: Option<String>,
    pub body: Option<String>,
}

/// Path rewriting before forwarding: `path` (a template) or `strip_prefix`/`add_prefix`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
    pub path: Option<String>,
}

/// Header edits: `set` replaces, `append` adds, `remove` deletes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub append: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// RFC 9745 deprecation and RFC 8594 sunset of a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeprecation {
    /// RFC 3339 instant the route was deprecated.
    pub since: String,
    /// RFC 3339 instant after which the route answers 410 Gone.
    pub sunset: Option<String>,
    /// Where clients should go instead (`Link: <…>; rel="successor-version"`).
    pub successor: Option<String>,
    /// Human documentation (`Link: <…>; rel="deprecation"`).
    pub link: Option<String>,
    /// Days before the sunset that the warning phase starts (30 by default).
    pub warning_days: Option<u32>,
    /// The 410 answer past the sunset, in the operator's words.
    pub gone: Option<RawGone>,
}

/// `gone = { type, title, detail, code }`: problem+json members of the 410 answer past a
/// sunset; each may name `${route}`, `${version}`, `${sunset}`, `${successor}`, `${guide}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGone {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub title: Option<String>,
    pub detail: Option<String>,
    pub code: Option<String>,
}

/// `versions = { from = "accept", map = { "1" = "users-v1", "2" = "users-v2" }, default = "2" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersions {
    /// `path:/api/v{version}/`, `header:NAME`, `accept`, `accept:VENDOR` or `query:NAME`.
    pub from: String,
    pub map: std::collections::BTreeMap<String, RawVersion>,
    /// The version of a request that names none; without it such a request gets 400.
    pub default: Option<String>,
    /// Tell the client the version that answered, in this response header.
    pub echo_header: Option<String>,
}

/// A version: its cluster, or its cluster and lifecycle.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawVersion {
    Cluster(String),
    Full(Box<RawVersionFull>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersionFull {
    /// The version's cluster; or its `split`, for a canary inside the version.
    pub cluster: Option<String>,
    pub split: Option<RawSplit>,
    /// RFC 3339 instant the version was deprecated.
    pub deprecated: Option<String>,
    /// RFC 3339 instant after which it answers 410 Gone.
    pub sunset: Option<String>,
    /// Days before the sunset that the warning phase starts (30 by default).
    pub warning_days: Option<u32>,
    /// The version to move to (one of the map's).
    pub successor: Option<String>,
    /// The deprecation policy or migration guide (a URL, `Link: <…>; rel="deprecation"`).
    pub policy: Option<String>,
    /// The 410 answer past the sunset, in the operator's words.
    pub gone: Option<RawGone>,
    /// This version's validation (instead of the route's).
    pub validate: Option<RawValidate>,
    /// In the warning phase, add a `_deprecation` member to JSON object responses (each is
    /// read whole and parsed: opt-in).
    pub deprecation_field: Option<bool>,
    /// Responses up to this size get the field (default 32 KiB, at most 60 KiB).
    pub deprecation_field_max: Option<toml::Value>,
}

/// Request validation: `{ openapi = "specs/users-v2.yaml" }` or `{ schema = { POST =
/// "schemas/new-user.json" } }`, with how to apply it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValidate {
    /// An OpenAPI 3.0 or 3.1 document, JSON or YAML.
    pub openapi: Option<String>,
    /// A JSON Schema for request bodies, per method.
    pub schema: Option<std::collections::BTreeMap<String, String>>,
    /// Removed from the request's path before it is looked up in the spec (default: the
    /// path of the spec's first server URL).
    pub prefix: Option<String>,
    /// `"enforce"` (default) or `"report"`.
    pub mode: Option<String>,
    /// Bodies are buffered for validation up to this size (default 1 MiB).
    pub max_body: Option<toml::Value>,
    /// A body over `max_body`: `"reject"` (413, default) or `"pass"` (unchecked).
    pub oversize: Option<String>,
}
