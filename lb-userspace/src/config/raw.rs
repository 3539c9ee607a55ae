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

/// `[[routes]]`: which requests match, and what happens to them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub host: Option<String>,
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
}
