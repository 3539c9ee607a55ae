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
    #[serde(default)]
    pub clusters: Vec<RawCluster>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
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
}

/// `[[listeners]]`: where clients connect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<String>,
    pub addr: String,
    pub backlog: Option<u32>,
}

/// `[admin]`: the operator's HTTP API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub addr: String,
}

/// `[http]`: limits and timeouts on the client side, and the headers `lb` adds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub max_header_bytes: Option<toml::Value>,
    pub max_headers: Option<u32>,
    pub max_request_body: Option<toml::Value>,
    pub client_header_timeout: Option<String>,
    pub client_idle_timeout: Option<String>,
    pub client_body_timeout: Option<String>,
    pub x_forwarded: Option<bool>,
    /// The pseudonym in the `Via` header; an empty string leaves `Via` alone.
    pub via: Option<String>,
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
}

/// One backend of a cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub addr: String,
    pub weight: Option<u32>,
}

/// `[[routes]]`: which requests go to which cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub cluster: String,
}
