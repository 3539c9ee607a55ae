//! Releases at the gateway: weighted and sticky splits between named targets, overrides,
//! targeting, A/B tags, mirroring, automatic canary analysis with rollback, and progressive
//! promotion.
//!
//! A split's configuration is part of the snapshot; its live state (current weights, window
//! statistics, rollback and promotion progress) is shared by all workers and kept across
//! reloads by split name, as long as the split's configuration does not change.

pub mod analysis;
pub mod state;

use std::net::IpAddr;
use std::time::Duration;

use crate::balancing::HashKey;
use crate::hash::fnv1a;
use crate::http::{cookie_value, query_param};
use state::SplitState;

/// Weights are parts per million: 0.1% is 1,000.
pub const PPM: u32 = 1_000_000;

/// One target of a split.
#[derive(Debug, Clone)]
pub struct SplitTarget {
    pub name: String,
    /// Index into the snapshot's clusters.
    pub cluster: usize,
    pub weight_ppm: u32,
}

/// Where an override or targeting rule looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Lower-case header name.
    Header(String),
    Query(String),
    Cookie(String),
    /// A consumer metadata field.
    Consumer(String),
    /// The client's address, in a set of prefixes (targeting only).
    ClientIp(std::sync::Arc<crate::client::IpSet>),
    /// A claim of the route's verified JWT.
    Claim(String),
    /// The client's country code (`[geoip]`).
    Country,
    /// The client's continent code (`[geoip]`).
    Continent,
}

#[derive(Debug, Clone)]
pub struct Override {
    /// When it applies (a value, or one of a list).
    pub rule: Targeting,
    pub target: usize,
}

#[derive(Debug, Clone)]
pub struct Targeting {
    pub source: Source,
    pub values: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub cluster: usize,
    pub ppm: u32,
    pub max_body: u64,
    pub max_in_flight: u32,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AnalysisConfig {
    pub baseline: usize,
    pub canary: usize,
    pub window: Duration,
    pub interval: Duration,
    pub min_requests: u32,
    pub max_error_rate: Option<f64>,
    pub max_error_rate_increase: Option<f64>,
    pub max_p99: Option<Duration>,
    pub max_p99_ratio: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct PromotionConfig {
    /// Canary weights in ppm, ascending.
    pub steps: Vec<u32>,
    pub hold: Duration,
}

/// A validated split.
#[derive(Debug, Clone)]
pub struct SplitConfig {
    pub name: String,
    pub targets: Vec<SplitTarget>,
    pub default_target: usize,
    pub sticky: Option<HashKey>,
    pub salt: String,
    pub overrides: Vec<Override>,
    /// Lower-case header whose value names a target.
    pub force_header: Option<String>,
    pub include: Vec<Targeting>,
    pub exclude: Vec<Targeting>,
    pub ab_test: Option<String>,
    pub mirror: Option<MirrorConfig>,
    pub analysis: Option<AnalysisConfig>,
    pub promotion: Option<PromotionConfig>,
    /// Fingerprint of everything above: a reload that changes it resets runtime state.
    pub fingerprint: u64,
}

/// What the split looks at in a request.
pub struct SplitRequest<'a> {
    pub headers: &'a [httparse::Header<'a>],
    pub query: Option<&'a [u8]>,
    pub client: IpAddr,
    /// Metadata of the request's consumer, if it presented a known key.
    pub consumer: Option<&'a [(String, String)]>,
    /// The route's verified JWT claims, if its token verified.
    pub claims: Option<&'a crate::client::jwt::Claims>,
    /// Where the client is, with `[geoip]`.
    pub geo: Option<crate::client::geo::Geo>,
}

/// Why a target was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Override,
    NotTargeted,
    Sticky,
    Random,
}

/// A [`Source`] borrowed, so that looking a value up allocates nothing.
#[derive(Clone, Copy)]
enum SourceRef<'s> {
    Header(&'s str),
    Query(&'s str),
    Cookie(&'s str),
    Consumer(&'s str),
    /// Has no value to compare: matched by prefix ([`Targeting::matches`]).
    ClientIp,
    /// Matched by [`SplitRequest::claim_is`] (a claim may be an array).
    Claim,
    Country,
    Continent,
}

impl Source {
    fn as_ref(&self) -> SourceRef<'_> {
        match self {
            Source::Header(n) => SourceRef::Header(n),
            Source::Query(n) => SourceRef::Query(n),
            Source::Cookie(n) => SourceRef::Cookie(n),
            Source::Consumer(n) => SourceRef::Consumer(n),
            Source::ClientIp(_) => SourceRef::ClientIp,
            Source::Claim(_) => SourceRef::Claim,
            Source::Country => SourceRef::Country,
            Source::Continent => SourceRef::Continent,
        }
    }
}

impl Targeting {
    /// Whether the request falls under this rule.
    fn matches(&self, req: &SplitRequest<'_>) -> bool {
        match &self.source {
            Source::ClientIp(set) => set.contains(req.client),
            Source::Claim(name) => self.values.iter().any(|v| req.claim_is(name, v)),
            s => req
                .value(s.as_ref())
                .is_some_and(|v| self.values.iter().any(|x| x.as_bytes() == v)),
        }
    }
}

impl SplitRequest<'_> {
    fn value(&self, source: SourceRef<'_>) -> Option<&[u8]> {
        match source {
            SourceRef::Header(name) => self
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value),
            SourceRef::Query(name) => query_param(self.query?, name.as_bytes()),
            SourceRef::Cookie(name) => self
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
                .find_map(|h| cookie_value(h.value, name.as_bytes())),
            SourceRef::Consumer(field) => self
                .consumer?
                .iter()
                .find(|(k, _)| k == field)
                .map(|(_, v)| v.as_bytes()),
            SourceRef::ClientIp | SourceRef::Claim => None,
            SourceRef::Country => self.geo.as_ref().map(|g| &g.country[..]),
            SourceRef::Continent => self.geo.as_ref().map(|g| &g.continent[..]),
        }
    }

    /// Whether claim `name` is `value`, or an array (or space-separated string) holding it.
    fn claim_is(&self, name: &str, value: &str) -> bool {
        self.claims
            .and_then(|c| crate::client::jwt::claim(&c.value, name))
            .is_some_and(|v| crate::client::jwt::claim_has(v, value))
    }

    /// The sticky bucket of this request's key, if it has one.
    fn sticky_bucket(&self, key: &HashKey, salt: &str) -> Option<u32> {
        let value = match key {
            HashKey::Country => return Some(bucket(salt, &self.geo?.country)),
            HashKey::Continent => return Some(bucket(salt, &self.geo?.continent)),
            HashKey::Claim(name) => {
                let v = crate::client::jwt::claim(&self.claims?.value, name)?;
                return Some(bucket(salt, crate::client::jwt::claim_text(v)?.as_bytes()));
            }
            HashKey::Header(n) => self.value(SourceRef::Header(n))?,
            HashKey::Cookie(n) => self.value(SourceRef::Cookie(n))?,
            HashKey::Query(n) => self.value(SourceRef::Query(n))?,
            HashKey::ClientIp => {
                return Some(match self.client {
                    IpAddr::V4(a) => bucket(salt, &a.octets()),
                    IpAddr::V6(a) => bucket(salt, &a.octets()),
                })
            }
            HashKey::Path => return None,
        };
        Some(bucket(salt, value))
    }
}

/// The bucket (0..PPM) a sticky key falls in for `salt`: the same on every host.
pub fn bucket(salt: &str, key: &[u8]) -> u32 {
    let h = fnv1a(crate::hash::fnv1a_of(salt.as_bytes()) ^ 0x5bd1_e995, key);
    (crate::hash::mix(h) % PPM as u64) as u32
}

/// The target for `bucket` under `weights` (ppm). Non-default targets take the low ranges
/// in declaration order and the default target takes what is left, so raising one canary's
/// weight keeps everyone it had and only adds buckets that were the default's.
pub fn target_for(bucket: u32, weights: &[u32], default: usize) -> usize {
    let mut start = 0u32;
    for (i, &w) in weights.iter().enumerate() {
        if i == default {
            continue;
        }
        if bucket < start.saturating_add(w) {
            return i;
        }
        start = start.saturating_add(w);
    }
    default
}

impl SplitConfig {
    /// Chooses a target for a request.
    pub fn choose(
        &self,
        state: &SplitState,
        req: &SplitRequest<'_>,
        random: impl FnOnce() -> u32,
    ) -> (usize, Reason) {
        for o in &self.overrides {
            if o.rule.matches(req) {
                return (o.target, Reason::Override);
            }
        }
        if let Some(h) = &self.force_header {
            if let Some(v) = req.value(SourceRef::Header(h)) {
                if let Some(i) = self.targets.iter().position(|t| t.name.as_bytes() == v) {
                    return (i, Reason::Override);
                }
            }
        }
        let included = self.include.iter().all(|t| t.matches(req));
        let excluded = self.exclude.iter().any(|t| t.matches(req));
        if !included || excluded {
            return (self.default_target, Reason::NotTargeted);
        }
        let bucket = self
            .sticky
            .as_ref()
            .and_then(|k| req.sticky_bucket(k, &self.salt));
        state.with_weights(|weights| match bucket {
            Some(b) => (target_for(b, weights, self.default_target), Reason::Sticky),
            None => (
                target_for(random() % PPM, weights, self.default_target),
                Reason::Random,
            ),
        })
    }
}

#[cfg(test)]
mod tests;
