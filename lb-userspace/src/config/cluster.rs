//! `[[clusters]]`: endpoints, balancer, timeouts, health checks, outlier detection, limits,
//! breakers and retries, validated into their runtime form.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{RawBreaker, RawCluster, RawHealthCheck, RawLimits, RawOutlier, RawRetry};
use super::{
    Errors, DEFAULT_CONNECT_TIMEOUT, DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_POOL_MAX_IDLE,
    DEFAULT_RESPONSE_TIMEOUT, DEFAULT_UPSTREAM_IDLE_TIMEOUT,
};
use crate::balancing::maglev::{prime_at_least, MIN_TABLE_SIZE};
pub use crate::balancing::{BalancerKind, HashKey};
pub use crate::upstream::policy::{
    BreakerConfig, HealthCheckConfig, Limits, OutlierConfig, RetryConfig,
};

/// Below this share of usable endpoints (percent), route to all of them: Envoy's default.
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;
/// Host-name endpoints are resolved again this often.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

pub use crate::upstream::cluster::{ClusterConfig, EndpointConfig, Target, UpstreamProtocol};

/// Validates a cluster's `tls` table and reads its files (relative to `base`).
fn cluster_tls(
    at: &str,
    t: &super::raw::RawClusterTls,
    base: &std::path::Path,
    protocol: UpstreamProtocol,
    errs: &mut Errors,
) -> Option<crate::upstream::tls::ClusterTls> {
    let client_cert = match (&t.certificate, &t.key) {
        (Some(cert), Some(key)) => Some(crate::tls::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
            names: None,
        }),
        (None, None) => None,
        _ => {
            errs.push(
                format!("{at}.certificate"),
                "a client certificate needs both `certificate` and `key`",
            );
            return None;
        }
    };
    let verify = !t.insecure_skip_verify.unwrap_or(false);
    if !verify && t.ca.is_some() {
        errs.push(
            format!("{at}.insecure_skip_verify"),
            "`ca` has no effect when verification is off; remove one of them",
        );
        return None;
    }
    if let Some(name) = &t.server_name {
        if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
            errs.push(
                format!("{at}.server_name"),
                format!("expected a DNS name or IP address, got {name:?}"),
            );
            return None;
        }
    }
    let settings = crate::upstream::tls::UpstreamTls {
        ca: t.ca.clone(),
        server_name: t.server_name.clone(),
        client_cert,
        verify,
    };
    let alpn: &[u8] = if protocol == UpstreamProtocol::H2 {
        b"h2"
    } else {
        b"http/1.1"
    };
    crate::upstream::tls::client_config(&settings, base, alpn)
        .map_err(|e| errs.push(at, e))
        .ok()
}

pub(super) fn validate_cluster(
    i: usize,
    c: &RawCluster,
    base: &std::path::Path,
    errs: &mut Errors,
) -> ClusterConfig {
    let at = |key: &str| format!("clusters[{i}].{key}");
    let protocol = match (c.protocol.as_deref(), c.tls.is_some()) {
        (None | Some("http/1.1"), _) => UpstreamProtocol::Http1,
        (Some("h2"), true) => UpstreamProtocol::H2,
        (Some("h2c"), false) => UpstreamProtocol::H2c,
        (Some("h2"), false) => {
            errs.push(
                at("protocol"),
                "\"h2\" is HTTP/2 over TLS: add a tls table, or use \"h2c\" for plain text",
            );
            UpstreamProtocol::Http1
        }
        (Some("h2c"), true) => {
            errs.push(
                at("protocol"),
                "\"h2c\" is HTTP/2 without TLS: remove the tls table, or use \"h2\"",
            );
            UpstreamProtocol::Http1
        }
        (Some(other), _) => {
            errs.push(
                at("protocol"),
                format!("expected \"http/1.1\", \"h2\" or \"h2c\", got {other:?}"),
            );
            UpstreamProtocol::Http1
        }
    };
    if c.name.is_empty() {
        errs.push(at("name"), "expected a non-empty cluster name");
    }
    if c.endpoints.is_empty() {
        errs.push(at("endpoints"), "a cluster needs at least one endpoint");
    }
    let mut endpoints = Vec::new();
    let mut seen = HashSet::new();
    for (j, e) in c.endpoints.iter().enumerate() {
        let key = at(&format!("endpoints[{j}]"));
        let weight = e.weight.unwrap_or(1);
        if weight == 0 || weight > 10_000 {
            errs.push(
                format!("{key}.weight"),
                format!("expected a weight from 1 to 10000, got {weight}"),
            );
        }
        match parse_target(&e.addr) {
            Ok(target) => {
                if !seen.insert(target.clone()) {
                    errs.push(
                        format!("{key}.addr"),
                        format!("endpoint {} is listed twice", e.addr),
                    );
                }
                endpoints.push(EndpointConfig { target, weight });
            }
            Err(m) => errs.push(format!("{key}.addr"), m),
        }
    }
    if endpoints.len() > u16::MAX as usize - 1 {
        errs.push(at("endpoints"), "too many endpoints");
    }
    let balancer = match c.balancer.as_deref() {
        None | Some("round_robin") => BalancerKind::RoundRobin,
        Some("weighted_round_robin") => BalancerKind::WeightedRoundRobin,
        Some("least_connections") => BalancerKind::LeastConnections,
        Some("power_of_two") => BalancerKind::PowerOfTwo,
        Some("random") => BalancerKind::Random,
        Some("maglev") => BalancerKind::Maglev,
        Some(other) => {
            errs.push(
                at("balancer"),
                format!("expected round_robin, weighted_round_robin, least_connections, power_of_two, random or maglev, got {other:?}"),
            );
            BalancerKind::RoundRobin
        }
    };
    let hash_key = c.hash_key.as_deref().and_then(|k| match parse_hash_key(k) {
        Ok(HashKey::Claim(_) | HashKey::Country | HashKey::Continent) => {
            errs.push(at("hash_key"), "a cluster's hash key cannot be a JWT claim, a country or a continent (a split's sticky key can)");
            None
        }
        Ok(h) => Some(h),
        Err(m) => {
            errs.push(at("hash_key"), m);
            None
        }
    });
    if balancer == BalancerKind::Maglev && c.hash_key.is_none() {
        errs.push(at("hash_key"), "maglev needs a hash_key: \"header:NAME\", \"cookie:NAME\", \"query:NAME\", \"client_ip\" or \"path\"");
    }
    let maglev_table_size = c.maglev_table_size.map_or(MIN_TABLE_SIZE, |n| n as usize);
    if !(MIN_TABLE_SIZE..=1 << 24).contains(&maglev_table_size)
        || prime_at_least(maglev_table_size) != maglev_table_size
    {
        errs.push(
            at("maglev_table_size"),
            format!("expected a prime from {MIN_TABLE_SIZE} to 16777216, got {maglev_table_size}"),
        );
    }
    let panic_threshold = c.panic_threshold.unwrap_or(DEFAULT_PANIC_THRESHOLD);
    if panic_threshold > 100 {
        errs.push(
            at("panic_threshold"),
            format!("expected a percent from 0 to 100, got {panic_threshold}"),
        );
    }
    let pool_max = c
        .pool_max_idle_per_endpoint
        .unwrap_or(DEFAULT_POOL_MAX_IDLE);
    if pool_max > 65_536 {
        errs.push(
            at("pool_max_idle_per_endpoint"),
            format!("expected at most 65536, got {pool_max}"),
        );
    }
    ClusterConfig {
        name: c.name.clone(),
        endpoints,
        balancer,
        hash_key,
        maglev_table_size,
        panic_threshold,
        resolve_interval: positive(
            errs,
            &at("resolve_interval"),
            &c.resolve_interval,
            DEFAULT_RESOLVE_INTERVAL,
        ),
        connect_timeout: positive(
            errs,
            &at("connect_timeout"),
            &c.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        ),
        response_timeout: positive(
            errs,
            &at("response_timeout"),
            &c.response_timeout,
            DEFAULT_RESPONSE_TIMEOUT,
        ),
        idle_timeout: positive(
            errs,
            &at("idle_timeout"),
            &c.idle_timeout,
            DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        ),
        pool_idle_timeout: positive(
            errs,
            &at("pool_idle_timeout"),
            &c.pool_idle_timeout,
            DEFAULT_POOL_IDLE_TIMEOUT,
        ),
        pool_max_idle_per_endpoint: pool_max as usize,
        health_check: c
            .health_check
            .as_ref()
            .map(|h| health_check(&at("health_check"), h, protocol, errs)),
        outlier: c
            .outlier_detection
            .as_ref()
            .map(|o| outlier(&at("outlier_detection"), o, errs)),
        limits: c
            .limits
            .as_ref()
            .map_or_else(Limits::default, |l| limits(&at("limits"), l, errs)),
        endpoint_limits: c
            .endpoint_limits
            .as_ref()
            .map_or_else(Limits::default, |l| limits(&at("endpoint_limits"), l, errs)),
        breaker: c.breaker.as_ref().map(|b| breaker(&at("breaker"), b, errs)),
        retry: c
            .retry
            .as_ref()
            .map_or_else(RetryConfig::default, |r| retry(&at("retry"), r, errs)),
        tls: c
            .tls
            .as_ref()
            .and_then(|t| cluster_tls(&at("tls"), t, base, protocol, errs)),
        protocol,
        max_streams_per_connection: match c.max_streams_per_connection {
            Some(0) => {
                errs.push(at("max_streams_per_connection"), "expected at least 1");
                1
            }
            Some(n) => n as usize,
            None => 100,
        },
    }
}

fn positive(errs: &mut Errors, key: &str, v: &Option<String>, default: Duration) -> Duration {
    let d = errs.duration(key, v, default);
    if d.is_zero() {
        errs.push(key, "expected a duration greater than zero");
    }
    d
}

/// `IP:port`, or `host.name:port` to resolve.
pub fn parse_target(text: &str) -> Result<Target, String> {
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(Target::Addr(a));
    }
    let bad = || format!("expected \"IP:port\" or \"hostname:port\", got {text:?}");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !host.starts_with(['-', '.'])
        && host.bytes().any(|b| b.is_ascii_alphabetic());
    if !valid || port == 0 {
        return Err(bad());
    }
    Ok(Target::Host(host.to_ascii_lowercase(), port))
}

/// Parses a hash key as written in config (`header:NAME`, `cookie:NAME`, …).
pub fn parse_hash_key(k: &str) -> Result<HashKey, String> {
    let bad = || {
        format!("expected \"header:NAME\", \"cookie:NAME\", \"query:NAME\", \"client_ip\" or \"path\", got {k:?}")
    };
    match k.split_once(':') {
        None if k == "client_ip" => Ok(HashKey::ClientIp),
        None if k == "path" => Ok(HashKey::Path),
        None if k == "country" => Ok(HashKey::Country),
        None if k == "continent" => Ok(HashKey::Continent),
        Some((kind, name)) if !name.is_empty() => match kind {
            "header" => Ok(HashKey::Header(name.to_ascii_lowercase())),
            "cookie" => Ok(HashKey::Cookie(name.to_string())),
            "query" => Ok(HashKey::Query(name.to_string())),
            "jwt" => Ok(HashKey::Claim(name.to_string())),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

fn health_check(
    key: &str,
    h: &RawHealthCheck,
    protocol: UpstreamProtocol,
    errs: &mut Errors,
) -> HealthCheckConfig {
    let path = match (&h.path, &h.grpc_service) {
        (Some(p), None) => p.clone(),
        (None, Some(_)) => "/grpc.health.v1.Health/Check".to_string(),
        (Some(_), Some(_)) => {
            errs.push(
                format!("{key}.grpc_service"),
                "a check is HTTP (path) or gRPC (grpc_service), not both",
            );
            "/".to_string()
        }
        (None, None) => {
            errs.push(
                format!("{key}.path"),
                "expected the path to check, or grpc_service for a gRPC health check",
            );
            "/".to_string()
        }
    };
    if let Some(service) = &h.grpc_service {
        if !protocol.is_h2() {
            errs.push(
                format!("{key}.grpc_service"),
                "gRPC health checks need a cluster with protocol = \"h2\" or \"h2c\"",
            );
        }
        if service.len() > 127 || service.bytes().any(|b| b <= b' ' || b == 0x7f) {
            errs.push(
                format!("{key}.grpc_service"),
                "expected a service name of at most 127 printable characters",
            );
        }
    }
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        errs.push(
            format!("{key}.path"),
            format!("expected a path starting with '/', got {path:?}"),
        );
    }
    let statuses = h.expected_statuses.clone().unwrap_or_default();
    if statuses.iter().any(|s| !(100..=599).contains(s)) {
        errs.push(
            format!("{key}.expected_statuses"),
            "expected statuses from 100 to 599",
        );
    }
    let threshold = |errs: &mut Errors, name: &str, v: Option<u32>, d: u32| {
        let t = v.unwrap_or(d);
        if t == 0 || t > 100 {
            errs.push(
                format!("{key}.{name}"),
                format!("expected 1 to 100, got {t}"),
            );
        }
        t
    };
    let interval = positive(
        errs,
        &format!("{key}.interval"),
        &h.interval,
        Duration::from_secs(5),
    );
    let timeout = positive(
        errs,
        &format!("{key}.timeout"),
        &h.timeout,
        Duration::from_secs(1),
    );
    HealthCheckConfig {
        path,
        grpc_service: h.grpc_service.clone(),
        host: h.host.clone(),
        expected_statuses: statuses,
        interval,
        jitter: errs.duration(&format!("{key}.jitter"), &h.jitter, interval / 10),
        timeout,
        healthy_threshold: threshold(errs, "healthy_threshold", h.healthy_threshold, 2),
        unhealthy_threshold: threshold(errs, "unhealthy_threshold", h.unhealthy_threshold, 3),
    }
}

fn rate(errs: &mut Errors, key: &str, v: Option<f64>) -> Option<f64> {
    if let Some(r) = v {
        if !(r > 0.0 && r <= 1.0) {
            errs.push(
                key,
                format!("expected a share above 0.0 and at most 1.0, got {r}"),
            );
        }
    }
    v
}

fn outlier(key: &str, o: &RawOutlier, errs: &mut Errors) -> OutlierConfig {
    let base = positive(
        errs,
        &format!("{key}.base_ejection_time"),
        &o.base_ejection_time,
        Duration::from_secs(30),
    );
    let max = positive(
        errs,
        &format!("{key}.max_ejection_time"),
        &o.max_ejection_time,
        Duration::from_secs(300),
    );
    if max < base {
        errs.push(
            format!("{key}.max_ejection_time"),
            "must be at least base_ejection_time",
        );
    }
    let pct = o.max_ejected_percent.unwrap_or(50);
    if pct > 100 {
        errs.push(
            format!("{key}.max_ejected_percent"),
            format!("expected 0 to 100, got {pct}"),
        );
    }
    OutlierConfig {
        consecutive_5xx: o.consecutive_5xx.unwrap_or(5),
        consecutive_connect_failures: o.consecutive_connect_failures.unwrap_or(5),
        error_rate: rate(errs, &format!("{key}.error_rate"), o.error_rate),
        window: positive(
            errs,
            &format!("{key}.window"),
            &o.window,
            Duration::from_secs(10),
        ),
        min_requests: o.min_requests.unwrap_or(20),
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejected_percent: pct,
    }
}

fn limits(key: &str, l: &RawLimits, errs: &mut Errors) -> Limits {
    Limits {
        max_connections: l.max_connections.unwrap_or(0),
        max_requests: l.max_requests.unwrap_or(0),
        max_pending: l.max_pending.unwrap_or(0),
        pending_timeout: positive(
            errs,
            &format!("{key}.pending_timeout"),
            &l.pending_timeout,
            Duration::from_secs(1),
        ),
        max_retries: l.max_retries.unwrap_or(0),
    }
}

fn breaker(key: &str, b: &RawBreaker, errs: &mut Errors) -> BreakerConfig {
    let probes = b.half_open_probes.unwrap_or(1);
    if probes == 0 || probes > 1000 {
        errs.push(
            format!("{key}.half_open_probes"),
            format!("expected 1 to 1000, got {probes}"),
        );
    }
    let consecutive = b.consecutive_failures.unwrap_or(5);
    if consecutive == 0 && b.failure_rate.is_none() {
        errs.push(
            key,
            "set consecutive_failures above 0, or a failure_rate, or the breaker never opens",
        );
    }
    BreakerConfig {
        consecutive_failures: consecutive,
        failure_rate: rate(errs, &format!("{key}.failure_rate"), b.failure_rate),
        window: positive(
            errs,
            &format!("{key}.window"),
            &b.window,
            Duration::from_secs(10),
        ),
        min_requests: b.min_requests.unwrap_or(20),
        open_for: positive(
            errs,
            &format!("{key}.open_for"),
            &b.open_for,
            Duration::from_secs(10),
        ),
        half_open_probes: probes,
    }
}

fn retry(key: &str, r: &RawRetry, errs: &mut Errors) -> RetryConfig {
    let mut c = RetryConfig {
        backoff_base: Duration::from_millis(25),
        backoff_max: Duration::from_millis(250),
        ..RetryConfig::default()
    };
    c.attempts = r.attempts.unwrap_or(2);
    if c.attempts == 0 || c.attempts > 10 {
        errs.push(
            format!("{key}.attempts"),
            format!("expected 1 to 10, got {}", c.attempts),
        );
    }
    if let Some(on) = &r.retry_on {
        c.on_connect_failure = false;
        c.on_reset = false;
        for (j, what) in on.iter().enumerate() {
            match what.as_str() {
                "connect_failure" => c.on_connect_failure = true,
                "reset" => c.on_reset = true,
                "timeout" => c.on_timeout = true,
                "5xx" => c.on_5xx = true,
                s if s.starts_with("grpc:") => match crate::http::h2::grpc_code(&s[5..]) {
                    Some(code) => c.grpc_statuses |= 1 << code,
                    None => errs.push(
                        format!("{key}.retry_on[{j}]"),
                        format!("expected a gRPC status name after grpc:, such as grpc:UNAVAILABLE, got {s:?}"),
                    ),
                },
                s => match s.parse::<u16>() {
                    Ok(code) if (400..=599).contains(&code) => c.statuses.push(code),
                    _ => errs.push(
                        format!("{key}.retry_on[{j}]"),
                        format!("expected connect_failure, reset, timeout, 5xx or a status from 400 to 599, got {s:?}"),
                    ),
                },
            }
        }
    }
    c.non_idempotent = r.non_idempotent.unwrap_or(false);
    c.backoff_base = errs.duration(
        &format!("{key}.backoff_base"),
        &r.backoff_base,
        c.backoff_base,
    );
    c.backoff_max = errs.duration(&format!("{key}.backoff_max"), &r.backoff_max, c.backoff_max);
    if c.backoff_max < c.backoff_base {
        errs.push(
            format!("{key}.backoff_max"),
            "must be at least backoff_base",
        );
    }
    c.budget_percent = r.budget_percent.unwrap_or(20);
    if c.budget_percent > 100 {
        errs.push(
            format!("{key}.budget_percent"),
            format!("expected 0 to 100, got {}", c.budget_percent),
        );
    }
    c.min_retry_concurrency = r.min_retry_concurrency.unwrap_or(3);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("127.0.0.1:80"),
            Ok(Target::Addr("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            parse_target("[::1]:80"),
            Ok(Target::Addr("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            parse_target("Backend.local:8080"),
            Ok(Target::Host("backend.local".into(), 8080))
        );
        for bad in [
            "nope",
            "host:",
            "host:0",
            ":80",
            "a b:80",
            "1.2.3:80x",
            "-x:80",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hash_keys() {
        assert_eq!(
            parse_hash_key("header:X-User-ID"),
            Ok(HashKey::Header("x-user-id".into()))
        );
        assert_eq!(parse_hash_key("client_ip"), Ok(HashKey::ClientIp));
        assert!(parse_hash_key("header:").is_err());
        assert!(parse_hash_key("body").is_err());
    }
}
