//! Route matching: which route, and so which cluster, serves a request.
//!
//! Precedence: an exact host beats a wildcard host beats no host; then the longer path prefix
//! wins; then declaration order. The table is sorted once when the snapshot is built, so a
//! lookup is the first route that matches.

use crate::config::RouteConfig;

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub host: HostMatch,
    /// Path prefix, matched on a segment boundary.
    pub prefix: Vec<u8>,
    pub cluster: usize,
    /// Position in the config file, for messages.
    pub index: usize,
}

/// How a route matches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lower-case host name.
    Exact(Vec<u8>),
    /// `*.example.com` stored as `.example.com`: matches any name with that suffix and at least
    /// one more label.
    Suffix(Vec<u8>),
}

impl HostMatch {
    fn rank(&self) -> u8 {
        match self {
            HostMatch::Exact(_) => 0,
            HostMatch::Suffix(_) => 1,
            HostMatch::Any => 2,
        }
    }

    fn matches(&self, host: Option<&[u8]>) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(want) => host.is_some_and(|h| h.eq_ignore_ascii_case(want)),
            HostMatch::Suffix(suffix) => host.is_some_and(|h| {
                h.len() > suffix.len() && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }),
        }
    }
}

/// All routes, in match order.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn build(configs: &[RouteConfig]) -> RouteTable {
        let mut routes: Vec<Route> = configs
            .iter()
            .enumerate()
            .map(|(index, r)| Route {
                name: r.name.clone(),
                host: match &r.host {
                    None => HostMatch::Any,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => HostMatch::Suffix(suffix.as_bytes().to_vec()),
                        None => HostMatch::Exact(h.as_bytes().to_vec()),
                    },
                },
                prefix: r.path_prefix.as_bytes().to_vec(),
                cluster: r.cluster,
                index,
            })
            .collect();
        routes.sort_by(|a, b| {
            a.host
                .rank()
                .cmp(&b.host.rank())
                .then(b.prefix.len().cmp(&a.prefix.len()))
                .then(a.index.cmp(&b.index))
        });
        RouteTable { routes }
    }

    /// The first route matching `host` (without port) and `target` (path and query).
    pub fn find(&self, host: Option<&[u8]>, target: &[u8]) -> Option<&Route> {
        let path = match target.iter().position(|&b| b == b'?') {
            Some(q) => &target[..q],
            None => target,
        };
        self.routes
            .iter()
            .find(|r| r.host.matches(host) && prefix_matches(&r.prefix, path))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, but not `/apix`.
fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    path.len() == prefix.len() || prefix.ends_with(b"/") || path[prefix.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, cluster: usize) -> RouteConfig {
        RouteConfig {
            name: format!("r{cluster}"),
            host: host.map(str::to_string),
            path_prefix: prefix.to_string(),
            cluster,
        }
    }

    #[test]
    fn precedence_and_boundaries() {
        let t = RouteTable::build(&[
            route(None, "/", 0),
            route(None, "/api", 1),
            route(None, "/api/orders", 2),
            route(Some("*.example.com"), "/", 3),
            route(Some("admin.example.com"), "/", 4),
            route(None, "/api/orders", 5),
        ]);
        let find = |h: Option<&str>, p: &str| {
            t.find(h.map(str::as_bytes), p.as_bytes())
                .map(|r| r.cluster)
        };
        assert_eq!(find(None, "/"), Some(0));
        assert_eq!(find(None, "/apix"), Some(0));
        assert_eq!(find(None, "/api"), Some(1));
        assert_eq!(find(None, "/api/users?x=1"), Some(1));
        assert_eq!(
            find(None, "/api/orders/7"),
            Some(2),
            "declaration order breaks ties"
        );
        assert_eq!(find(None, "/api/orders?x"), Some(2));
        assert_eq!(find(Some("shop.example.com"), "/api"), Some(3));
        assert_eq!(find(Some("SHOP.Example.COM"), "/api"), Some(3));
        assert_eq!(
            find(Some("example.com"), "/api"),
            Some(1),
            "wildcard needs a label"
        );
        assert_eq!(find(Some("admin.example.com"), "/api"), Some(4));
    }

    #[test]
    fn no_match() {
        let t = RouteTable::build(&[route(Some("a.com"), "/x", 0)]);
        assert!(t.find(Some(b"a.com"), b"/y").is_none());
        assert!(t.find(None, b"/x").is_none());
    }
}
