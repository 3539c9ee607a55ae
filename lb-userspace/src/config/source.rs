//! `[source]`: where the config comes from besides the local file. With `etcd`, the local
//! file holds `[source]` and whatever is particular to this host; the fleet's config is one
//! TOML document at `PREFIX/config` in etcd, merged into it (see `docs/fleet.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, ConfigErrors};

/// `[source]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub etcd: Option<RawEtcd>,
    /// Where the last config applied from etcd is kept (default /var/lib/lb).
    pub state_dir: Option<String>,
}

/// `etcd = { endpoints = [...], prefix = "/lb/prod", tls = {...}, auth = {...} }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub tls: Option<RawEtcdTls>,
    pub auth: Option<RawEtcdAuth>,
    /// HTTP/2 keepalive pings on the etcd connection, and how long a ping may go unanswered
    /// before the connection counts as dead (default 5s).
    pub keepalive: Option<String>,
    /// How long `lb run` waits for etcd at start before it falls back to the persisted
    /// config (default 5s).
    pub startup_timeout: Option<String>,
    /// This appliance's name in the fleet (default: the host name and the process ID).
    pub node: Option<String>,
    /// The time to live of this appliance's lease: its published counts and its
    /// leadership of the fleet's canary analysis outlive it by at most this (default 5s).
    pub lease: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcdTls {
    /// The CA certificates that sign etcd's server certificates (PEM).
    pub ca: String,
    /// A client certificate and its key (PEM), for etcd's `--client-cert-auth`.
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcdAuth {
    pub user: String,
    /// A file holding the password (its trailing newline is ignored); the password is
    /// never written in the config itself.
    pub password_file: String,
}

/// The validated `[source.etcd]`.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Without a trailing `/`.
    pub prefix: String,
    pub tls: Option<EtcdTls>,
    /// User name and password.
    pub auth: Option<(String, Password)>,
    pub keepalive: Duration,
    pub startup_timeout: Duration,
    pub state_dir: PathBuf,
    /// `None`: the host name and process ID, filled in at start.
    pub node: Option<String>,
    pub lease: Duration,
}

/// A password, which `Debug` does not print.
#[derive(Clone, PartialEq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl EtcdConfig {
    /// The key the fleet's config document is stored at.
    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// This appliance's name in the fleet.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            let mut buf = [0u8; 256];
            // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer.
            let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
            let host = if rc == 0 {
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                String::from_utf8_lossy(&buf[..end]).into_owned()
            } else {
                "lb".into()
            };
            format!("{host}-{}", std::process::id())
        })
    }

    /// Where the last applied document is persisted.
    pub fn persisted_path(&self) -> PathBuf {
        self.state_dir.join("etcd-config.json")
    }
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/lb";

/// Validates `[source]`; paths are relative to `base`.
pub fn validate(raw: &RawSource, base: &Path) -> Result<Option<EtcdConfig>, Vec<ConfigError>> {
    let mut errs = super::Errors(Vec::new());
    let Some(e) = &raw.etcd else {
        if raw.state_dir.is_some() {
            errs.push(
                "source.state_dir",
                "only a config from etcd is persisted: set source.etcd too, or remove it",
            );
        }
        return if errs.0.is_empty() {
            Ok(None)
        } else {
            Err(errs.0)
        };
    };
    if e.endpoints.is_empty() {
        errs.push(
            "source.etcd.endpoints",
            "at least one endpoint is required, such as \"http://10.0.0.1:2379\"",
        );
    }
    for (i, ep) in e.endpoints.iter().enumerate() {
        let scheme_ok = ep.starts_with("http://") || ep.starts_with("https://");
        let rest = ep.split_once("://").map_or("", |(_, r)| r);
        if !scheme_ok || rest.is_empty() || rest.contains('/') {
            errs.push(
                format!("source.etcd.endpoints[{i}]"),
                format!("expected http://HOST:PORT or https://HOST:PORT, got {ep:?}"),
            );
        } else if ep.starts_with("https://") && e.tls.is_none() {
            errs.push(
                format!("source.etcd.endpoints[{i}]"),
                "an https endpoint needs source.etcd.tls = { ca = \"...\" }",
            );
        } else if ep.starts_with("http://") && e.tls.is_some() {
            errs.push(
                format!("source.etcd.endpoints[{i}]"),
                "source.etcd.tls is set: use https:// endpoints",
            );
        }
    }
    let prefix = e.prefix.trim_end_matches('/').to_string();
    if !e.prefix.starts_with('/') || prefix.is_empty() {
        errs.push(
            "source.etcd.prefix",
            format!(
                "expected a key prefix such as \"/lb/prod\" (starting with /), got {:?}",
                e.prefix
            ),
        );
    }
    let second = Duration::from_secs(1);
    let keepalive = errs.duration_at_least(
        "source.etcd.keepalive",
        &e.keepalive,
        Duration::from_secs(5),
        Duration::from_millis(1),
    );
    let startup_timeout = errs.duration_at_least(
        "source.etcd.startup_timeout",
        &e.startup_timeout,
        Duration::from_secs(5),
        Duration::from_millis(1),
    );
    let lease = errs.duration("source.etcd.lease", &e.lease, Duration::from_secs(5));
    if lease < second || lease.subsec_nanos() != 0 {
        errs.push(
            "source.etcd.lease",
            "etcd leases count whole seconds: 1s or more",
        );
    }
    if let Some(n) = &e.node {
        if n.is_empty()
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            errs.push(
                "source.etcd.node",
                format!("expected letters, digits, '-', '_' or '.', got {n:?}"),
            );
        }
    }
    let tls = e.tls.as_ref().map(|t| {
        for (key, p) in [
            ("ca", Some(&t.ca)),
            ("cert", t.cert.as_ref()),
            ("key", t.key.as_ref()),
        ] {
            if let Some(p) = p {
                if !base.join(p).is_file() {
                    errs.push(
                        format!("source.etcd.tls.{key}"),
                        format!("{} does not exist", base.join(p).display()),
                    );
                }
            }
        }
        if t.cert.is_some() != t.key.is_some() {
            errs.push(
                "source.etcd.tls",
                "a client certificate needs both cert and key",
            );
        }
        EtcdTls {
            ca: base.join(&t.ca),
            identity: t
                .cert
                .as_ref()
                .zip(t.key.as_ref())
                .map(|(c, k)| (base.join(c), base.join(k))),
        }
    });
    let auth = e.auth.as_ref().and_then(|a| {
        let file = base.join(&a.password_file);
        match std::fs::read_to_string(&file) {
            Ok(p) => Some((
                a.user.clone(),
                Password(p.trim_end_matches(['\r', '\n']).to_string()),
            )),
            Err(x) => {
                errs.push(
                    "source.etcd.auth.password_file",
                    format!("cannot read {}: {x}", file.display()),
                );
                None
            }
        }
    });
    let state_dir = base.join(raw.state_dir.as_deref().unwrap_or(DEFAULT_STATE_DIR));
    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(Some(EtcdConfig {
        endpoints: e.endpoints.clone(),
        prefix,
        tls,
        auth,
        keepalive,
        startup_timeout,
        state_dir,
        node: e.node.clone(),
        lease,
    }))
}

/// Reads only `[source]` of the config file at `path`: what `lb run` needs before it can
/// read the rest (which may be in etcd). `Ok(None)` when the config comes from the file
/// alone (or the file is not TOML: the full read says where).
pub fn read(path: &Path) -> Result<Option<EtcdConfig>, ConfigErrors> {
    let wrap = |errors| ConfigErrors {
        file: path.to_path_buf(),
        errors,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        wrap(vec![ConfigError {
            path: ".".into(),
            message: format!("cannot read the file: {e}"),
            file: None,
        }])
    })?;
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return Ok(None);
    };
    let Some(source) = table.remove("source") else {
        return Ok(None);
    };
    let raw: RawSource = serde_path_to_error::deserialize(source).map_err(|e| {
        wrap(vec![ConfigError {
            path: format!("source.{}", e.path()),
            message: e.inner().to_string(),
            file: None,
        }])
    })?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    validate(&raw, base).map_err(wrap)
}

/// `[redis]`: where rate limits with `scope = "fleet"` meet.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://HOST:PORT[/DB]` (or `rediss://`) of a standalone server.
    pub url: Option<String>,
    /// Sentinels (`redis://HOST:PORT`) to ask for the master named `master`.
    pub sentinels: Option<Vec<String>>,
    pub master: Option<String>,
    /// How often each appliance brings its counts to Redis and the fleet's back (100ms).
    pub sync_interval: Option<String>,
    /// How long a Redis call may take before it counts as failed (250ms).
    pub timeout: Option<String>,
    /// `"fail_open"` (default: each appliance enforces the limit alone) or
    /// `"fail_closed"` (fleet-scoped limits refuse every request) while Redis is down.
    pub on_failure: Option<String>,
    /// Key prefix in Redis (default `"lb:rl"`).
    pub prefix: Option<String>,
}

/// Where the Redis server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    Url(String),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

/// The validated `[redis]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    pub target: RedisTarget,
    pub sync_interval: Duration,
    pub timeout: Duration,
    pub fail_closed: bool,
    pub prefix: String,
}

impl RedisConfig {
    pub fn describe(&self) -> String {
        match &self.target {
            RedisTarget::Url(u) => redact(u),
            RedisTarget::Sentinel { sentinels, master } => format!(
                "master {master} through sentinels {}",
                sentinels
                    .iter()
                    .map(|s| redact(s))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// A URL without its password.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://...{}", &url[at..]),
        _ => url.to_string(),
    }
}

pub fn validate_redis(r: &RawRedis) -> Result<RedisConfig, Vec<ConfigError>> {
    let mut errs = super::Errors(Vec::new());
    let url_ok = |u: &str| {
        (u.starts_with("redis://") || u.starts_with("rediss://")) && u.len() > "redis://".len()
    };
    let target = match (&r.url, &r.sentinels, &r.master) {
        (Some(u), None, None) => {
            if !url_ok(u) {
                errs.push(
                    "redis.url",
                    format!("expected redis://HOST:PORT or rediss://HOST:PORT, got {u:?}"),
                );
            }
            RedisTarget::Url(u.clone())
        }
        (None, Some(list), Some(master)) => {
            if list.is_empty() {
                errs.push("redis.sentinels", "at least one sentinel is required");
            }
            for (i, u) in list.iter().enumerate() {
                if !url_ok(u) {
                    errs.push(
                        format!("redis.sentinels[{i}]"),
                        format!("expected redis://HOST:PORT, got {u:?}"),
                    );
                }
            }
            if master.is_empty() {
                errs.push("redis.master", "name the master the sentinels watch");
            }
            RedisTarget::Sentinel {
                sentinels: list.clone(),
                master: master.clone(),
            }
        }
        _ => {
            errs.push("redis", "set either url, or sentinels with master");
            RedisTarget::Url(String::new())
        }
    };
    let ms = Duration::from_millis(1);
    let sync_interval = errs.duration_at_least(
        "redis.sync_interval",
        &r.sync_interval,
        Duration::from_millis(100),
        ms,
    );
    let timeout =
        errs.duration_at_least("redis.timeout", &r.timeout, Duration::from_millis(250), ms);
    let fail_closed = match r.on_failure.as_deref() {
        None | Some("fail_open") => false,
        Some("fail_closed") => true,
        Some(other) => {
            errs.push(
                "redis.on_failure",
                format!("expected \"fail_open\" or \"fail_closed\", got {other:?}"),
            );
            false
        }
    };
    if !errs.0.is_empty() {
        return Err(errs.0);
    }
    Ok(RedisConfig {
        target,
        sync_interval,
        timeout,
        fail_closed,
        prefix: r.prefix.clone().unwrap_or_else(|| "lb:rl".into()),
    })
}
