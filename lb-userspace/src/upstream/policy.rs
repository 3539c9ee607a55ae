//! The policies that govern a cluster's upstream connections: health checks, outlier
//! ejection, limits, the breaker and retries. `config` builds them from the TOML.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub path: String,
    /// A gRPC health check (`grpc.health.v1.Health/Check`) of this service.
    pub grpc_service: Option<String>,
    pub host: Option<String>,
    /// Statuses that count as healthy; empty means 200 to 399.
    pub expected_statuses: Vec<u16>,
    pub interval: Duration,
    pub jitter: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl HealthCheckConfig {
    pub fn accepts(&self, status: u16) -> bool {
        if self.expected_statuses.is_empty() {
            (200..400).contains(&status)
        } else {
            self.expected_statuses.contains(&status)
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutlierConfig {
    /// 0 turns the trigger off.
    pub consecutive_5xx: u32,
    pub consecutive_connect_failures: u32,
    pub error_rate: Option<f64>,
    pub window: Duration,
    pub min_requests: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejected_percent: u32,
}

/// Concurrency limits; 0 means unlimited.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub max_connections: u32,
    pub max_requests: u32,
    pub max_pending: u32,
    pub pending_timeout: Duration,
    pub max_retries: u32,
}

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub failure_rate: Option<f64>,
    pub window: Duration,
    pub min_requests: u32,
    pub open_for: Duration,
    pub half_open_probes: u32,
}

#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    pub on_5xx: bool,
    pub statuses: Vec<u16>,
    /// gRPC statuses (a bit per code) a gRPC call is retried on, when the backend answers
    /// with the status alone (before any response byte would reach the client).
    pub grpc_statuses: u32,
    pub non_idempotent: bool,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub budget_percent: u32,
    pub min_retry_concurrency: u32,
}

impl Default for RetryConfig {
    /// Without a `[clusters.retry]` section: one more try on another endpoint after a
    /// connect failure or a reset before any response byte, at once.
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            on_connect_failure: true,
            on_reset: true,
            on_timeout: false,
            on_5xx: false,
            statuses: Vec::new(),
            grpc_statuses: 0,
            non_idempotent: false,
            backoff_base: Duration::ZERO,
            backoff_max: Duration::ZERO,
            budget_percent: 20,
            min_retry_concurrency: 3,
        }
    }
}

impl RetryConfig {
    pub fn retries_status(&self, status: u16) -> bool {
        (self.on_5xx && status >= 500) || self.statuses.contains(&status)
    }

    /// Whether a gRPC call answered with `code` goes again.
    pub fn retries_grpc(&self, code: u32) -> bool {
        code < 32 && self.grpc_statuses & 1 << code != 0
    }
}
