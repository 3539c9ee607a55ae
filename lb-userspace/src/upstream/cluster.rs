//! A cluster as the upstream stage knows it: its validated config (endpoints, balancer,
//! timeouts, and the health, outlier, limits, breaker, retry and TLS policies), and the
//! cluster a snapshot carries at run time (resolved endpoints with their shared state, the
//! balancer's table, metric handles). `config` builds these from the TOML; the snapshot
//! holds them; this stage owns them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::policy::{BreakerConfig, HealthCheckConfig, Limits, OutlierConfig, RetryConfig};
use super::state::{ClusterState, EndpointState};
use crate::balancing::maglev::MaglevTable;
use crate::balancing::{BalancerKind, HashKey};
use crate::metrics::ClusterMetrics;

/// Where an endpoint is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Addr(SocketAddr),
    /// A host name and port, resolved at load and again every `resolve_interval`.
    Host(String, u16),
}

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub target: Target,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    pub balancer: BalancerKind,
    pub hash_key: Option<HashKey>,
    pub maglev_table_size: usize,
    pub panic_threshold: u32,
    pub resolve_interval: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_endpoint: usize,
    pub health_check: Option<HealthCheckConfig>,
    pub outlier: Option<OutlierConfig>,
    pub limits: Limits,
    pub endpoint_limits: Limits,
    pub breaker: Option<BreakerConfig>,
    pub retry: RetryConfig,
    /// TLS to the endpoints, built (files read) at load.
    pub tls: Option<super::tls::ClusterTls>,
    /// What lb speaks to the endpoints.
    pub protocol: UpstreamProtocol,
    /// Streams one HTTP/2 connection carries at once.
    pub max_streams_per_connection: usize,
}

/// The protocol to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
    /// HTTP/2 over plain text, by prior knowledge.
    H2c,
}

impl UpstreamProtocol {
    pub fn is_h2(self) -> bool {
        self != UpstreamProtocol::Http1
    }
}

/// One endpoint as a snapshot sees it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    /// The configured target (`IP:port` or `host:port`), for logs and the admin API.
    pub target: String,
    pub state: Arc<EndpointState>,
    /// With cluster TLS: the name its certificate is verified against (and the SNI).
    pub tls_name: Option<rustls_pki_types::ServerName<'static>>,
    /// Which idle pooled connections a request to it may reuse: 0 for plaintext, else the
    /// cluster's TLS identity and this endpoint's name (a session verified for one name is
    /// never reused for another, even at the same address).
    pub pool_key: u64,
}

impl crate::balancing::Candidate for Endpoint {
    fn weight(&self) -> u32 {
        self.weight
    }

    fn load(&self) -> u64 {
        self.state
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A cluster with everything a worker needs to proxy to it.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    pub balancer: BalancerKind,
    pub hash_key: Option<HashKey>,
    pub maglev: Option<Arc<MaglevTable>>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_endpoint: usize,
    pub state: Arc<ClusterState>,
    /// The validated cluster config: health, outlier, limits, breaker and retry policies.
    pub config: ClusterConfig,
    pub metrics: ClusterMetrics,
}

impl Cluster {
    /// The endpoints as the balancer sees them.
    pub fn choice(&self) -> crate::balancing::Choice<'_, Endpoint> {
        crate::balancing::Choice {
            kind: self.balancer,
            endpoints: &self.endpoints,
            maglev: self.maglev.as_deref(),
        }
    }

    /// How to connect to `ep`, one of this cluster's endpoints.
    pub fn dial<'a>(&'a self, ep: &'a Endpoint) -> super::Dial<'a> {
        super::Dial {
            addr: ep.addr,
            endpoint: &ep.state,
            cluster: &self.state,
            tls: self.config.tls.as_ref().zip(ep.tls_name.as_ref()),
            pool_key: ep.pool_key,
        }
    }
}
