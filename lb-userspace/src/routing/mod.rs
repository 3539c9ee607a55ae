//! Route matching: which route serves a request.
//!
//! Precedence, most specific first:
//! 1. host: an exact host, then wildcard hosts (longest suffix first), then routes without a
//!    host;
//! 2. within a host: exact path, then path patterns (more literal segments first), then path
//!    prefixes (longest first), then regexes, and last routes for every path (no path
//!    matcher, or the prefix `/`);
//! 3. among routes with the same path matcher: more conditions (methods, headers, query) first;
//! 4. then declaration order.
//!
//! The table indexes exact paths and prefixes in hash maps, so a lookup costs a few hash
//! probes per path segment however many routes there are.

pub mod actions;
pub mod matchers;
pub mod template;
pub mod version;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use actions::{Action, Deprecation, HeaderOps, Rewrite};
use matchers::{Captures, HeaderCond, HostMatch, PathMatch, QueryCond};

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    /// Position in the config file.
    pub index: usize,
    pub host: HostMatch,
    /// The SNI name a TLS client sent; `None` matches any request, TLS or not.
    pub sni: Option<HostMatch>,
    /// A verified client certificate must (`true`) or must not (`false`) be present.
    pub client_cert: Option<bool>,
    /// The verified client certificate's subject must be exactly this.
    pub client_cert_subject: Option<String>,
    /// The client's address must be in one of these prefixes.
    pub client_ip: Option<crate::client::IpSet>,
    /// The JWT provider whose token this route verifies, and whether it must be valid.
    pub jwt: Option<crate::client::jwt::RouteJwt>,
    /// Conditions on that token's claims.
    pub jwt_claims: Vec<crate::client::jwt::ClaimCond>,
    /// A token in a cookie or query parameter that must not reach the backend (a header
    /// token is removed with `request_headers`).
    pub strip_token: Option<crate::client::jwt::TokenSource>,
    /// The client's country must be one of these (empty: any).
    pub country: Vec<[u8; 2]>,
    /// The client's continent must be one of these (empty: any).
    pub continent: Vec<[u8; 2]>,
    pub path: PathMatch,
    /// Upper-case method names; empty means any.
    pub methods: Vec<String>,
    pub headers: Vec<HeaderCond>,
    pub query: Vec<QueryCond>,
    pub action: Action,
    pub rewrite: Option<Rewrite>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub deprecation: Option<std::sync::Arc<Deprecation>>,
    /// Overrides of the cluster's timeouts for this route.
    pub timeouts: RouteTimeouts,
    /// Requests without a known API key get 401.
    pub auth_required: bool,
    /// Consumer metadata the request's key must carry (implies `auth_required`).
    pub consumer: Vec<(String, String)>,
    pub split: Option<std::sync::Arc<crate::release::SplitConfig>>,
    pub rate_limit: Option<crate::ratelimit::RateLimitConfig>,
    /// The series it asked for (`metrics = ...`); `None` takes `[metrics] routes`.
    pub metrics: Option<crate::metrics::RouteSeries>,
    /// Versions of its API, each with a cluster and a lifecycle (instead of one cluster).
    /// Requests are validated against an API spec (on a versioned route, each version's own).
    pub validate: Option<std::sync::Arc<crate::validation::Validation>>,
    pub versions: Option<std::sync::Arc<version::Versions>>,
}

/// Per-route timeout overrides; `None` keeps the cluster's.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteTimeouts {
    pub connect: Option<std::time::Duration>,
    pub response: Option<std::time::Duration>,
    pub idle: Option<std::time::Duration>,
}

/// What a route looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// Without port.
    pub host: Option<&'a [u8]>,
    /// Without query.
    pub path: &'a [u8],
    pub query: Option<&'a [u8]>,
    pub method: &'a [u8],
    pub headers: &'a [httparse::Header<'a>],
    /// Metadata of the consumer whose API key came with the request, if known.
    pub consumer: Option<&'a [(String, String)]>,
    /// The SNI name of a TLS request (lower-cased by rustls).
    pub sni: Option<&'a [u8]>,
    /// The subject of the verified client certificate (mTLS).
    pub client_cert: Option<&'a [u8]>,
    /// The client's address (see `client`: the peer, or the PROXY protocol's or a trusted
    /// proxy's word).
    pub client_ip: std::net::IpAddr,
    /// The request's JWT verdicts, worked out when a route asks.
    pub jwt: Option<&'a crate::client::jwt::Lookup<'a>>,
    /// Where the client is, with `[geoip]`.
    pub geo: Option<crate::client::geo::Geo>,
}

impl<'a> RouteRequest<'a> {
    /// Splits a request target into path and query.
    pub fn split_target(target: &'a [u8]) -> (&'a [u8], Option<&'a [u8]>) {
        match target.iter().position(|&b| b == b'?') {
            Some(0) => (b"/", Some(&target[1..])),
            Some(q) => (&target[..q], Some(&target[q + 1..])),
            None => (target, None),
        }
    }
}

impl Route {
    /// The mTLS conditions: presence of a verified client certificate, and its subject.
    fn client_cert_matches(&self, req: &RouteRequest<'_>) -> bool {
        self.client_cert
            .is_none_or(|want| want == req.client_cert.is_some())
            && self
                .client_cert_subject
                .as_ref()
                .is_none_or(|s| req.client_cert == Some(s.as_bytes()))
    }

    /// The JWT claim conditions, against the route's provider's verdict.
    fn claims_match(&self, req: &RouteRequest<'_>) -> bool {
        if self.jwt_claims.is_empty() {
            return true;
        }
        let claims = match (self.jwt, req.jwt) {
            (Some(j), Some(lookup)) => match lookup.verdict(j.provider) {
                Ok(c) => Some(&**c),
                // A route that requires a token takes the request without a valid one, and
                // answers it 401: it must not fall through to a route that asks for less.
                Err(_) if j.required => return true,
                Err(_) => None,
            },
            _ => None,
        };
        self.jwt_claims.iter().all(|c| c.matches(claims))
    }

    /// The country and continent conditions.
    fn geo_matches(&self, req: &RouteRequest<'_>) -> bool {
        (self.country.is_empty() || req.geo.is_some_and(|g| self.country.contains(&g.country)))
            && (self.continent.is_empty()
                || req
                    .geo
                    .is_some_and(|g| self.continent.contains(&g.continent)))
    }

    fn condition_count(&self) -> usize {
        usize::from(!self.methods.is_empty())
            + usize::from(self.sni.is_some())
            + usize::from(self.client_cert.is_some())
            + usize::from(self.client_cert_subject.is_some())
            + usize::from(self.client_ip.is_some())
            + self.jwt_claims.len()
            + usize::from(!self.country.is_empty())
            + usize::from(!self.continent.is_empty())
            + self.headers.len()
            + self.query.len()
            + self.consumer.len()
    }

    /// Methods, headers and query: everything but host and path.
    pub fn conditions_match(&self, req: &RouteRequest<'_>) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m.as_bytes() == req.method))
            && self
                .sni
                .as_ref()
                .is_none_or(|s| req.sni.is_some() && s.matches(req.sni))
            && self.client_cert_matches(req)
            && self
                .client_ip
                .as_ref()
                .is_none_or(|set| set.contains(req.client_ip))
            && self.headers.iter().all(|h| h.matches(req.headers))
            && self.query.iter().all(|q| q.matches(req.query))
            && self.claims_match(req)
            && self.geo_matches(req)
            // Without a known consumer the route still matches, and answers 401: a consumer
            // route implies a required key.
            && (self.consumer.is_empty()
                || req.consumer.is_none()
                || crate::identity::metadata_matches(req.consumer, &self.consumer))
    }

    /// Whether this route alone matches `req` (host, path and conditions), filling `caps`.
    pub fn matches(&self, req: &RouteRequest<'_>, caps: &mut Captures) -> bool {
        caps.clear();
        self.host.matches(req.host)
            && self.path.matches(req.path, caps)
            && self.conditions_match(req)
    }

    /// Why this route does not match `req`, or `None` if it does.
    pub fn mismatch(&self, req: &RouteRequest<'_>) -> Option<String> {
        let mut caps = Captures::default();
        if !self.host.matches(req.host) {
            return Some(format!(
                "host {} is not {}",
                req.host.map_or("(none)".into(), String::from_utf8_lossy),
                self.host
            ));
        }
        if !self.path.matches(req.path, &mut caps) {
            return Some(format!(
                "{} does not fit {}",
                String::from_utf8_lossy(req.path),
                self.path
            ));
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m.as_bytes() == req.method) {
            return Some(format!(
                "method {} is not one of {:?}",
                String::from_utf8_lossy(req.method),
                self.methods
            ));
        }
        if let Some(s) = &self.sni {
            if req.sni.is_none() || !s.matches(req.sni) {
                return Some(format!(
                    "SNI {} is not {s}",
                    req.sni.map_or("(none)".into(), String::from_utf8_lossy)
                ));
            }
        }
        if !self.client_cert_matches(req) {
            return Some("the client certificate condition does not hold".into());
        }
        if let Some(set) = &self.client_ip {
            if !set.contains(req.client_ip) {
                return Some(format!("client {} is not in {set}", req.client_ip));
            }
        }
        if let Some(h) = self.headers.iter().find(|h| !h.matches(req.headers)) {
            return Some(format!("header {} is not {}", h.name, h.test));
        }
        if !self.geo_matches(req) {
            let codes = |l: &[[u8; 2]]| {
                l.iter()
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Some(match req.geo {
                Some(g) => format!(
                    "client in {} ({}) is not in country [{}] / continent [{}]",
                    g.country(),
                    g.continent(),
                    codes(&self.country),
                    codes(&self.continent)
                ),
                None => "the client's country is not known (no [geoip])".into(),
            });
        }
        if !self.claims_match(req) {
            let claims = match (self.jwt, req.jwt) {
                (Some(j), Some(lookup)) => lookup.claims(j.provider),
                _ => None,
            };
            if let Some(c) = self.jwt_claims.iter().find(|c| !c.matches(claims)) {
                return Some(match claims {
                    Some(_) => format!("{c} does not hold"),
                    None => format!("{c} does not hold (no valid token)"),
                });
            }
        }
        if let Some(q) = self.query.iter().find(|q| !q.matches(req.query)) {
            return Some(format!(
                "query parameter {} is not {}",
                String::from_utf8_lossy(&q.name),
                q.test
            ));
        }
        None
    }

    /// True if every request this route accepts on conditions, `earlier` accepts too.
    fn conditions_covered_by(&self, earlier: &Route) -> bool {
        let methods = earlier.methods.is_empty()
            || (!self.methods.is_empty()
                && self.methods.iter().all(|m| earlier.methods.contains(m)));
        methods
            && earlier.headers.iter().all(|e| {
                self.headers
                    .iter()
                    .any(|h| h.name == e.name && h.test.same_as(&e.test))
            })
            && earlier.consumer.iter().all(|e| self.consumer.contains(e))
            && earlier
                .client_ip
                .as_ref()
                .is_none_or(|e| self.client_ip.as_ref() == Some(e))
            && earlier
                .jwt_claims
                .iter()
                .all(|e| self.jwt_claims.contains(e))
            && (earlier.country.is_empty() || earlier.country == self.country)
            && (earlier.continent.is_empty() || earlier.continent == self.continent)
            && earlier.query.iter().all(|e| {
                self.query
                    .iter()
                    .any(|q| q.name == e.name && q.test.same_as(&e.test))
            })
    }
}

#[derive(Debug, Default, Clone)]
struct Bucket {
    exact: FxHashMap<Vec<u8>, Vec<u32>>,
    /// All patterns in precedence order (used to build the indexes below, and for checks).
    patterns: Vec<u32>,
    /// The patterns as a segment trie.
    pattern_trie: PatNode,
    prefixes: FxHashMap<Vec<u8>, Vec<u32>>,
    regexes: Vec<u32>,
    /// All regexes of `regexes` at once: one pass rules out most paths.
    regex_set: Option<regex::bytes::RegexSet>,
    /// No path matcher, or prefix `/`.
    catch_all: Vec<u32>,
}

/// All routes, indexed for lookup.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact_hosts: FxHashMap<Vec<u8>, Bucket>,
    /// Longest suffix first.
    wildcard_hosts: Vec<(Vec<u8>, Bucket)>,
    any_host: Bucket,
}

/// Path patterns as a trie of segments, so that a lookup only visits patterns that fit the
/// path's literal segments.
#[derive(Debug, Default, Clone)]
struct PatNode {
    lit: FxHashMap<Vec<u8>, PatNode>,
    param: Option<Box<PatNode>>,
    /// Patterns ending here: (precedence rank, route).
    end: Vec<(u32, u32)>,
    /// Patterns with `*rest` here.
    rest: Vec<(u32, u32)>,
}

impl PatNode {
    fn insert(&mut self, segs: &[matchers::PatSeg], entry: (u32, u32)) {
        match segs.split_first() {
            None => self.end.push(entry),
            Some((matchers::PatSeg::Rest, _)) => self.rest.push(entry),
            Some((matchers::PatSeg::Param, tail)) => self
                .param
                .get_or_insert_with(Default::default)
                .insert(tail, entry),
            Some((matchers::PatSeg::Lit(l), tail)) => {
                self.lit.entry(l.clone()).or_default().insert(tail, entry)
            }
        }
    }

    /// Collects the patterns that can match `rest` (the path after its leading `/`; `None`
    /// once every segment is consumed).
    fn candidates(&self, rest: Option<&[u8]>, out: &mut SmallVec<[(u32, u32); 16]>) {
        out.extend_from_slice(&self.rest);
        let Some(rest) = rest else {
            out.extend_from_slice(&self.end);
            return;
        };
        let (seg, tail) = match rest.iter().position(|&b| b == b'/') {
            Some(p) => (&rest[..p], Some(&rest[p + 1..])),
            None => (rest, None),
        };
        if let Some(child) = self.lit.get(seg) {
            child.candidates(tail, out);
        }
        if let (Some(child), false) = (&self.param, seg.is_empty()) {
            child.candidates(tail, out);
        }
    }
}

/// Longest host name looked up in the exact-host map (DNS allows 253).
const MAX_HOST: usize = 255;

impl RouteTable {
    pub fn build(routes: &[Route]) -> RouteTable {
        let mut t = RouteTable {
            routes: routes.to_vec(),
            ..Default::default()
        };
        for (i, r) in routes.iter().enumerate() {
            let bucket = match &r.host {
                HostMatch::Any => &mut t.any_host,
                HostMatch::Exact(h) => t.exact_hosts.entry(h.clone()).or_default(),
                HostMatch::Suffix(s) => match t.wildcard_hosts.iter().position(|(k, _)| k == s) {
                    Some(p) => &mut t.wildcard_hosts[p].1,
                    None => {
                        t.wildcard_hosts.push((s.clone(), Bucket::default()));
                        let last = t.wildcard_hosts.len() - 1;
                        &mut t.wildcard_hosts[last].1
                    }
                },
            };
            let i = i as u32;
            match &r.path {
                PathMatch::Any => bucket.catch_all.push(i),
                PathMatch::Exact(p) => bucket.exact.entry(p.clone()).or_default().push(i),
                PathMatch::Prefix(p) => bucket.prefixes.entry(p.clone()).or_default().push(i),
                PathMatch::Pattern(_) => bucket.patterns.push(i),
                PathMatch::Regex(..) => bucket.regexes.push(i),
            }
        }
        t.wildcard_hosts
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        let routes = &t.routes;
        let by_conditions = |a: &u32, b: &u32| {
            let (ra, rb) = (&routes[*a as usize], &routes[*b as usize]);
            rb.condition_count()
                .cmp(&ra.condition_count())
                .then(ra.index.cmp(&rb.index))
        };
        let literal = |i: &u32| match &routes[*i as usize].path {
            PathMatch::Pattern(p) => (p.literal_count(), p.segs.len()),
            _ => (0, 0),
        };
        let buckets = std::iter::once(&mut t.any_host)
            .chain(t.exact_hosts.values_mut())
            .chain(t.wildcard_hosts.iter_mut().map(|(_, b)| b));
        for b in buckets {
            b.exact.values_mut().for_each(|l| l.sort_by(by_conditions));
            b.prefixes
                .values_mut()
                .for_each(|l| l.sort_by(by_conditions));
            b.regexes.sort_by(by_conditions);
            b.catch_all.sort_by(by_conditions);
            b.patterns.sort_by(|a, b| {
                literal(b)
                    .cmp(&literal(a))
                    .then_with(|| by_conditions(a, b))
            });
            for (rank, &i) in b.patterns.iter().enumerate() {
                if let PathMatch::Pattern(p) = &routes[i as usize].path {
                    b.pattern_trie.insert(&p.segs, (rank as u32, i));
                }
            }
            if !b.regexes.is_empty() {
                let sources = b
                    .regexes
                    .iter()
                    .filter_map(|&i| match &routes[i as usize].path {
                        PathMatch::Regex(re, _) => Some(re.as_str().to_string()),
                        _ => None,
                    });
                b.regex_set = regex::bytes::RegexSet::new(sources).ok();
            }
        }
        t
    }

    /// Routes in declaration order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route serving `req`, with its path captures in `caps`.
    pub fn find(&self, req: &RouteRequest<'_>, caps: &mut Captures) -> Option<&Route> {
        if let Some(host) = req.host {
            if !self.exact_hosts.is_empty() && host.len() <= MAX_HOST {
                let mut lower = [0u8; MAX_HOST];
                let lower = &mut lower[..host.len()];
                lower.copy_from_slice(host);
                lower.make_ascii_lowercase();
                if let Some(b) = self.exact_hosts.get(&lower[..]) {
                    if let Some(r) = self.find_in(b, req, caps) {
                        return Some(r);
                    }
                }
            }
            for (suffix, b) in &self.wildcard_hosts {
                if host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                {
                    if let Some(r) = self.find_in(b, req, caps) {
                        return Some(r);
                    }
                }
            }
        }
        self.find_in(&self.any_host, req, caps)
    }

    fn find_in(&self, b: &Bucket, req: &RouteRequest<'_>, caps: &mut Captures) -> Option<&Route> {
        let path = req.path;
        let first = |list: Option<&Vec<u32>>, caps: &mut Captures| {
            list.into_iter()
                .flatten()
                .map(|&i| &self.routes[i as usize])
                .find(|r| {
                    caps.clear();
                    r.conditions_match(req)
                })
        };
        if let Some(r) = first(b.exact.get(path), caps) {
            return Some(r);
        }
        if !b.patterns.is_empty() {
            let mut found: SmallVec<[(u32, u32); 16]> = SmallVec::new();
            b.pattern_trie
                .candidates(path.strip_prefix(b"/"), &mut found);
            found.sort_unstable();
            for (_, i) in found {
                let r = &self.routes[i as usize];
                caps.clear();
                if r.path.matches(path, caps) && r.conditions_match(req) {
                    return Some(r);
                }
            }
        }
        if !b.prefixes.is_empty() {
            if let Some(r) = first(b.prefixes.get(path), caps) {
                return Some(r);
            }
            // Shorter candidates, longest first: "/a/b/" then "/a/b" then "/a/" then "/a"...
            for i in (0..path.len()).rev().filter(|&i| path[i] == b'/') {
                if i + 1 < path.len() {
                    if let Some(r) = first(b.prefixes.get(&path[..=i]), caps) {
                        return Some(r);
                    }
                }
                if i > 0 {
                    if let Some(r) = first(b.prefixes.get(&path[..i]), caps) {
                        return Some(r);
                    }
                }
            }
        }
        if let Some(set) = &b.regex_set {
            if set.is_match(path) {
                for pos in set.matches(path).iter() {
                    let r = &self.routes[b.regexes[pos] as usize];
                    caps.clear();
                    if r.path.matches(path, caps) && r.conditions_match(req) {
                        return Some(r);
                    }
                }
            }
        }
        first(Some(&b.catch_all), caps)
    }

    /// Routes that can never match because an earlier route with the same host and path
    /// matcher accepts everything they accept. Each entry: (shadowed, shadowing) indexes.
    pub fn never_matching(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let same_path = |a: &PathMatch, b: &PathMatch| match (a, b) {
            (PathMatch::Any, PathMatch::Any) => true,
            (PathMatch::Exact(x), PathMatch::Exact(y))
            | (PathMatch::Prefix(x), PathMatch::Prefix(y)) => x == y,
            (PathMatch::Pattern(x), PathMatch::Pattern(y)) => x.segs == y.segs,
            (PathMatch::Regex(x, _), PathMatch::Regex(y, _)) => x.as_str() == y.as_str(),
            _ => false,
        };
        let buckets = std::iter::once(&self.any_host)
            .chain(self.exact_hosts.values())
            .chain(self.wildcard_hosts.iter().map(|(_, b)| b));
        for b in buckets {
            let lists = b.exact.values().chain(b.prefixes.values()).chain([
                &b.patterns,
                &b.regexes,
                &b.catch_all,
            ]);
            for list in lists {
                for (pos, &j) in list.iter().enumerate() {
                    let later = &self.routes[j as usize];
                    if let Some(&i) = list[..pos].iter().find(|&&i| {
                        let earlier = &self.routes[i as usize];
                        same_path(&earlier.path, &later.path)
                            && later.conditions_covered_by(earlier)
                    }) {
                        out.push((later.index, self.routes[i as usize].index));
                    }
                }
            }
        }
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests;
