//! Every metric name `lb` exports, in one place (Prometheus conventions: base units,
//! `_total` for counters, `_seconds` for durations).

/// Requests answered, by `route`, `cluster`, `protocol` (`http/1.1`, `h2`: the latter once a
/// route has served HTTP/2) and `status_class` (`2xx`…).
pub const REQUESTS_TOTAL: &str = "lb_requests_total";
/// Time from a complete request head to the end of the response, by `route` and `cluster`.
pub const REQUEST_DURATION_SECONDS: &str = "lb_request_duration_seconds";
/// Time to open an upstream connection, by `cluster`.
pub const UPSTREAM_CONNECT_SECONDS: &str = "lb_upstream_connect_duration_seconds";
/// Failed attempts at endpoints, by `cluster` and `endpoint`: connect failures, resets,
/// timeouts, bad or cut responses, and 5xx answers.
pub const UPSTREAM_FAILURES_TOTAL: &str = "lb_upstream_failures_total";
/// Client connections open now, by `worker`.
pub const DOWNSTREAM_CONNECTIONS: &str = "lb_downstream_connections";
/// Requests in flight to an endpoint (all workers), by `cluster` and `endpoint`.
pub const ENDPOINT_IN_FLIGHT: &str = "lb_endpoint_in_flight";
/// 1 if an endpoint is healthy by active checks, by `cluster` and `endpoint`.
pub const ENDPOINT_HEALTHY: &str = "lb_endpoint_healthy";
/// 1 while outlier detection has an endpoint ejected.
pub const ENDPOINT_EJECTED: &str = "lb_endpoint_ejected";
/// Breaker state of an endpoint: 0 closed, 1 open, 2 half-open.
pub const ENDPOINT_BREAKER_STATE: &str = "lb_endpoint_breaker_state";
/// Client connections refused, by `reason`: a limit (`worker`, `total`, `per_ip`) or
/// `accept_error` (EMFILE and the like).
pub const CONNECTIONS_REFUSED_TOTAL: &str = "lb_connections_refused_total";
/// Upstream connections open now, by `cluster`.
pub const CLUSTER_CONNECTIONS: &str = "lb_cluster_connections";
/// Requests refused by a limit, by `cluster` and `limit`.
pub const LIMIT_REJECTIONS_TOTAL: &str = "lb_limit_rejections_total";
/// Requests lb failed, by `cluster` and `error` (the access log's `error`), made on first use.
pub const PROXY_ERRORS_TOTAL: &str = "lb_proxy_errors_total";
/// Retries sent, by `cluster`.
pub const RETRIES_TOTAL: &str = "lb_retries_total";
/// Requests by split decision, by `split` and `variant` (the target chosen).
pub const SPLIT_REQUESTS_TOTAL: &str = "lb_split_requests_total";
/// The weight in force of each split target (0 to 1), by `split` and `variant`.
pub const SPLIT_WEIGHT_RATIO: &str = "lb_split_weight_ratio";
/// Automatic canary rollbacks, by `split`.
pub const CANARY_ROLLBACKS_TOTAL: &str = "lb_canary_rollbacks_total";
/// Progressive promotion steps taken, by `split`.
pub const CANARY_PROMOTIONS_TOTAL: &str = "lb_canary_promotions_total";
/// Requests answered 429 by a rate limit, by `route`.
pub const RATE_LIMITED_TOTAL: &str = "lb_rate_limited_total";
/// Mirror copies, by `split` and `result` (`sent`, `shed`).
pub const MIRROR_REQUESTS_TOTAL: &str = "lb_mirror_requests_total";
/// Packets seen by the XDP program, by `action` (`pass`, `drop`) and `reason`.
pub const XDP_PACKETS_TOTAL: &str = "lb_xdp_packets_total";
/// Bytes seen by the XDP program, by `action` and `reason`.
pub const XDP_BYTES_TOTAL: &str = "lb_xdp_bytes_total";
/// Config reloads, by `result` (`ok`, `error`).
pub const CONFIG_RELOADS_TOTAL: &str = "lb_config_reloads_total";
/// 1 for the active config `version` (content hash), 0 for earlier ones.
pub const CONFIG_INFO: &str = "lb_config_info";
/// Unix time the active config was loaded.
pub const CONFIG_LOADED_SECONDS: &str = "lb_config_loaded_timestamp_seconds";
/// The etcd revision of the fleet's config document in service.
pub const ETCD_REVISION: &str = "lb_config_etcd_revision";
/// Seconds since the etcd watch last confirmed the config was current.
pub const ETCD_SYNC_AGE: &str = "lb_config_etcd_sync_age_seconds";
/// Revisions of the fleet's config refused (invalid, or needing a restart).
pub const ETCD_REJECTED_TOTAL: &str = "lb_config_etcd_rejected_total";
/// Times the etcd watch was lost and made again.
pub const ETCD_RECONNECTS_TOTAL: &str = "lb_config_etcd_reconnects_total";
/// Full reads of the fleet's config (at start, and when the watch's revision was compacted).
pub const ETCD_FULL_READS_TOTAL: &str = "lb_config_etcd_full_reads_total";
/// 1 while the etcd watch is established.
pub const ETCD_CONNECTED: &str = "lb_config_etcd_connected";
/// 1 while this appliance leads the fleet's canary analysis.
pub const FLEET_LEADER: &str = "lb_fleet_leader";
/// 1 while the Redis of fleet-scoped rate limits answers.
pub const REDIS_UP: &str = "lb_ratelimit_redis_up";
/// Failed syncs with the Redis of fleet-scoped rate limits.
pub const REDIS_ERRORS_TOTAL: &str = "lb_ratelimit_redis_errors_total";
/// Fleet-scoped keys brought to Redis and back.
pub const REDIS_SYNCED_KEYS_TOTAL: &str = "lb_ratelimit_redis_synced_keys_total";
/// Strict fleet limits decided on this appliance's own count because Redis did not answer
/// in time (`fail_open`).
pub const REDIS_STRICT_FALLBACK_TOTAL: &str = "lb_ratelimit_strict_fallback_total";
/// Requests refused because Redis was down and `on_failure = "fail_closed"`.
pub const FLEET_LIMIT_REFUSED_TOTAL: &str = "lb_ratelimit_fail_closed_total";

/// TLS handshakes, by `result` (`ok`, `error`, `incomplete`: the client left or timed out),
/// `version` (`1.2`, `1.3`,
/// or `none` when it failed) and `resumed` (`true`, `false`).
pub const TLS_HANDSHAKES_TOTAL: &str = "lb_tls_handshakes_total";
/// Time from the first TLS byte to a finished handshake.
pub const TLS_HANDSHAKE_SECONDS: &str = "lb_tls_handshake_duration_seconds";
/// Seconds until each certificate in service expires (negative once expired), by
/// `listener` and `certificate` (its first name).
pub const TLS_CERT_EXPIRY_SECONDS: &str = "lb_tls_certificate_expiry_seconds";
/// gRPC calls answered, by `route` and `code` (`OK`, `UNAVAILABLE`, ...): the status the
/// client got, from the backend or from lb.
pub const GRPC_RESPONSES_TOTAL: &str = "lb_grpc_responses_total";
/// HTTP/2 connections lb ended with GOAWAY for a reason of its own, by `reason` (a flood
/// limit, `idle`, `handshake_timeout`, or the protocol error h2 found).
pub const H2_GOAWAYS_TOTAL: &str = "lb_h2_goaways_total";
/// Certificates ordered from ACME servers, by `result` (`issued`, `failed`).
pub const ACME_ORDERS_TOTAL: &str = "lb_acme_orders_total";
/// JWT checks, by `provider` and `result` (`ok`, `missing`, `expired`, `bad_signature`,
/// ...): one per request that a route, split or limit asked a provider about.
pub const JWT_VERIFICATIONS: &str = "lb_jwt_verifications_total";
/// JWT checks answered from the worker's cache of verified tokens, by `provider`.
pub const JWT_CACHE_HITS: &str = "lb_jwt_cache_hits_total";
/// Client addresses looked up in the `[geoip]` database, by `result` (`found`,
/// `not_found`: given the default country).
pub const GEOIP_LOOKUPS: &str = "lb_geoip_lookups_total";

/// Buckets of every `_seconds` histogram: 0.5 ms to 10 s.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Requests to each version of a versioned route, by lifecycle phase (`active`,
/// `deprecated`, `warning`, `sunset`).
pub const API_VERSION_REQUESTS: &str = "lb_api_version_requests_total";
/// Requests checked against their route's or version's API spec, by result (`valid`,
/// `invalid`, `too_large`), whatever the mode (enforce or report).
pub const API_VALIDATIONS: &str = "lb_api_validations_total";
