//! What a reload would change: routes, clusters, endpoints and consumers added, removed or
//! changed, the other sections that changed, and what needs a restart. `lb diff OLD NEW`
//! prints it; a reload's answer carries it.
//!
//! Each config keeps a fingerprint of its entries as written (a hash per entry, the endpoint
//! list per cluster), made when it is loaded, so comparing two configs costs no second parse.
//! Entries are matched by name; an unnamed route by its position (`route3`).

use std::fmt;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::raw::RawConfig;
use super::{Config, ConfigError};

/// Hashes of a config's entries as written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    routes: Vec<(String, u64)>,
    clusters: Vec<(String, u64)>,
    /// Each cluster's endpoint addresses, as written.
    endpoints: Vec<(String, Vec<String>)>,
    consumers: Vec<(String, u64)>,
    /// The other top-level sections, by name.
    sections: Vec<(&'static str, u64)>,
}

/// A hasher that takes `Debug` output without building the string.
struct DebugHash(u64);

impl fmt::Write for DebugHash {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 = crate::hash::fnv1a(self.0, s.as_bytes());
        Ok(())
    }
}

fn hash(v: &impl fmt::Debug) -> u64 {
    let mut h = DebugHash(crate::hash::fnv1a_of(b""));
    let _ = write!(h, "{v:?}");
    h.0
}

impl Fingerprint {
    /// The fingerprint of `raw` (before validation consumes it).
    pub(super) fn of(raw: &RawConfig) -> Fingerprint {
        Fingerprint {
            routes: raw
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
                    (name, hash(r))
                })
                .collect(),
            clusters: raw
                .clusters
                .iter()
                .map(|c| (c.name.clone(), hash(c)))
                .collect(),
            endpoints: raw
                .clusters
                .iter()
                .map(|c| {
                    let addrs = c.endpoints.iter().map(|e| e.addr.clone()).collect();
                    (c.name.clone(), addrs)
                })
                .collect(),
            consumers: raw
                .consumers
                .iter()
                .map(|c| (c.name.clone(), hash(c)))
                .collect(),
            sections: vec![
                ("server", hash(&raw.server)),
                ("listeners", hash(&raw.listeners)),
                ("admin", hash(&raw.admin)),
                ("http", hash(&raw.http)),
                ("http2", hash(&raw.http2)),
                ("access_log", hash(&raw.access_log)),
                ("identity", hash(&raw.identity)),
                ("steering", hash(&raw.steering)),
                ("metrics", hash(&raw.metrics)),
                ("jwt_providers", hash(&raw.jwt_providers)),
                ("geoip", hash(&raw.geoip)),
                ("source", hash(&raw.source)),
                ("redis", hash(&raw.redis)),
            ],
        }
    }
}

/// Names added, removed and changed in one kind of entry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Delta {
    fn between(old: &[(String, u64)], new: &[(String, u64)]) -> Delta {
        let find = |list: &[(String, u64)], name: &str| {
            list.iter().find(|(n, _)| n == name).map(|(_, h)| *h)
        };
        let mut d = Delta::default();
        for (name, h) in new {
            match find(old, name) {
                None => d.added.push(name.clone()),
                Some(o) if o != *h => d.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        for (name, _) in old {
            if find(new, name).is_none() {
                d.removed.push(name.clone());
            }
        }
        d
    }

    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    fn json(&self) -> Value {
        json!({ "added": self.added, "removed": self.removed, "changed": self.changed })
    }
}

/// Endpoints added to and removed from one cluster that is in both configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointDelta {
    pub cluster: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Everything that differs between two configs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub routes: Delta,
    pub clusters: Delta,
    pub endpoints: Vec<EndpointDelta>,
    pub consumers: Delta,
    /// Other top-level sections whose settings changed.
    pub sections: Vec<&'static str>,
    /// Changes a reload cannot apply: each key and why.
    pub restart: Vec<ConfigError>,
}

impl Changes {
    /// What changes from `old` to `new`; `buf_size` is the read buffer lb runs with (see
    /// [`super::restart_only_changes`]).
    pub fn between(old: &Config, new: &Config, buf_size: usize) -> Changes {
        let (o, n) = (&old.fingerprint, &new.fingerprint);
        let mut endpoints = Vec::new();
        for (cluster, now) in &n.endpoints {
            let Some((_, before)) = o.endpoints.iter().find(|(c, _)| c == cluster) else {
                continue;
            };
            let added: Vec<String> = now
                .iter()
                .filter(|a| !before.contains(a))
                .cloned()
                .collect();
            let removed: Vec<String> = before
                .iter()
                .filter(|a| !now.contains(a))
                .cloned()
                .collect();
            if !added.is_empty() || !removed.is_empty() {
                endpoints.push(EndpointDelta {
                    cluster: cluster.clone(),
                    added,
                    removed,
                });
            }
        }
        Changes {
            routes: Delta::between(&o.routes, &n.routes),
            clusters: Delta::between(&o.clusters, &n.clusters),
            endpoints,
            consumers: Delta::between(&o.consumers, &n.consumers),
            sections: n
                .sections
                .iter()
                .filter(|(name, h)| o.sections.iter().any(|(x, g)| x == name && g != h))
                .map(|(name, _)| *name)
                .collect(),
            restart: super::restart_only_changes(old, new, buf_size),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
            && self.clusters.is_empty()
            && self.endpoints.is_empty()
            && self.consumers.is_empty()
            && self.sections.is_empty()
            && self.restart.is_empty()
    }

    pub fn json(&self) -> Value {
        json!({
            "routes": self.routes.json(),
            "clusters": self.clusters.json(),
            "endpoints": self.endpoints.iter().map(|e| json!({
                "cluster": e.cluster, "added": e.added, "removed": e.removed,
            })).collect::<Vec<_>>(),
            "consumers": self.consumers.json(),
            "sections": self.sections,
            "needs_restart": self.restart.iter().map(|e| json!({
                "path": e.path, "message": e.message,
            })).collect::<Vec<_>>(),
        })
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no changes");
        }
        for (kind, d) in [
            ("route", &self.routes),
            ("cluster", &self.clusters),
            ("consumer", &self.consumers),
        ] {
            for (sign, names) in [("+", &d.added), ("-", &d.removed), ("~", &d.changed)] {
                for name in names {
                    writeln!(f, "{sign} {kind} {name}")?;
                }
            }
        }
        for e in &self.endpoints {
            for a in &e.added {
                writeln!(f, "+ endpoint {a} in cluster {}", e.cluster)?;
            }
            for a in &e.removed {
                writeln!(f, "- endpoint {a} in cluster {}", e.cluster)?;
            }
        }
        for s in &self.sections {
            writeln!(f, "~ [{s}]")?;
        }
        if self.restart.is_empty() {
            writeln!(f, "a reload applies all of it")
        } else {
            writeln!(f, "needs a restart (a reload refuses these):")?;
            for e in &self.restart {
                writeln!(f, "  {}: {}", e.path, e.message)?;
            }
            Ok(())
        }
    }
}
