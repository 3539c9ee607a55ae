//! JWT bearer tokens (RFC 7519, JWS compact form): providers with pinned algorithms and their
//! keys, verification, a per-worker cache of verified tokens, and claims as request
//! attributes.
//!
//! What is checked, in order: the token's shape; its `alg` is one the provider allows and the
//! key serves (the token never chooses the algorithm: it may only agree); the key by `kid`;
//! the signature; then `exp`, `nbf` (with the provider's leeway), `iss` and `aud`. Claims are
//! read only from a token that passed all of it.

pub mod fetch;
pub mod keys;
pub mod sign;

use std::cell::{OnceCell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rustc_hash::FxHashMap;

pub use keys::{Alg, Key, KeySet};

/// Tokens longer than this are refused unread.
pub const MAX_TOKEN: usize = 16 * 1024;
/// Verified tokens kept per worker.
pub const CACHE_ENTRIES: usize = 10_000;

/// A route's `jwt`: the provider (by index) and whether a valid token is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteJwt {
    pub provider: usize,
    pub required: bool,
}

/// Where a request carries its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// A header (lower case) whose whole value is the token (a `Bearer ` prefix is allowed).
    Header(String),
    Cookie(String),
    Query(String),
}

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS file, read at load and reload.
    File(std::path::PathBuf),
    /// A JWKS URL, fetched by a control thread on a schedule and when an unknown `kid`
    /// arrives (at most once per `min_refetch`).
    Url {
        url: String,
        refresh: Duration,
        min_refetch: Duration,
        /// CAs for an `https` URL; `None`: the system's.
        ca: Option<String>,
    },
    /// A shared secret (HS256/384/512 only).
    Secret,
}

/// A validated `[[jwt_providers]]` entry.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub issuer: Option<String>,
    /// The token's `aud` must name one of these (any, when empty).
    pub audiences: Vec<String>,
    pub algorithms: Vec<Alg>,
    pub leeway: Duration,
    pub token: TokenSource,
    pub keys: KeySource,
    /// Claims sent to the backend: (claim name, header name). Copies the client sent are
    /// removed on every route.
    pub forward_claims: Vec<(String, String)>,
    /// Remove the token's header before forwarding (header sources only).
    pub strip_token: bool,
    /// The claim that names the consumer of a deprecated API version (`sub` by default).
    pub consumer_claim: String,
}

/// Why a token was not accepted; the `result` label of `lb_jwt_verifications_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    Algorithm,
    UnknownKey,
    NoKeys,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
}

impl Failure {
    pub const ALL: [Failure; 10] = [
        Failure::Missing,
        Failure::Malformed,
        Failure::Algorithm,
        Failure::UnknownKey,
        Failure::NoKeys,
        Failure::Signature,
        Failure::Expired,
        Failure::NotYetValid,
        Failure::Issuer,
        Failure::Audience,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Algorithm => "algorithm",
            Failure::UnknownKey => "unknown_kid",
            Failure::NoKeys => "no_keys",
            Failure::Signature => "bad_signature",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not_yet_valid",
            Failure::Issuer => "wrong_issuer",
            Failure::Audience => "wrong_audience",
        }
    }

    /// For `WWW-Authenticate`'s `error_description` (RFC 6750).
    pub fn description(self) -> &'static str {
        match self {
            Failure::Missing => "no token",
            Failure::Malformed => "the token is not a signed JWT",
            Failure::Algorithm => "the token's algorithm is not allowed",
            Failure::UnknownKey => "the token's key is not known",
            Failure::NoKeys => "no keys are loaded to verify the token",
            Failure::Signature => "the token's signature does not verify",
            Failure::Expired => "the token has expired",
            Failure::NotYetValid => "the token is not valid yet",
            Failure::Issuer => "the token's issuer is not accepted",
            Failure::Audience => "the token's audience is not accepted",
        }
    }
}

/// A provider's word on one request's token.
pub type Verdict = Result<Rc<Claims>, Failure>;

/// A verified token's claims.
#[derive(Debug)]
pub struct Claims {
    pub value: serde_json::Value,
    /// Seconds since the epoch after which it must be checked again (`exp` plus leeway).
    pub until: u64,
}

/// The keys in use, and how they were obtained.
#[derive(Debug, Default)]
pub struct Keys {
    pub set: KeySet,
    /// Changes with every new key set: cached verifications under another one are redone.
    pub generation: u64,
    pub fetched: Option<SystemTime>,
    /// The last fetch's failure, if it failed (the keys before it stay in use).
    pub error: Option<String>,
}

/// A provider's keys, shared by every snapshot that uses them and the thread that fetches
/// them.
#[derive(Debug, Default)]
pub struct KeyHolder {
    pub current: ArcSwap<Keys>,
    /// Wakes the fetcher for an unknown `kid`.
    refetch: OnceLock<std::sync::mpsc::SyncSender<()>>,
    /// When a refetch was last asked for (ms since the epoch).
    last_ask: AtomicU64,
    min_refetch_ms: AtomicU64,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// A generation number no key set has had.
pub fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed)
}

impl KeyHolder {
    pub fn new(set: KeySet) -> KeyHolder {
        let h = KeyHolder::default();
        h.current.store(Arc::new(Keys {
            set,
            generation: next_generation(),
            fetched: Some(SystemTime::now()),
            error: None,
        }));
        h
    }

    /// Asks the fetcher for the key set again, at most once per `min_refetch`.
    fn ask_refetch(&self) {
        let Some(tx) = self.refetch.get() else {
            return;
        };
        let now = crate::clock::now_ms();
        let last = self.last_ask.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.min_refetch_ms.load(Ordering::Relaxed) {
            return;
        }
        if self
            .last_ask
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let _ = tx.try_send(());
        }
    }
}

/// A provider as a snapshot holds it.
#[derive(Debug)]
pub struct Provider {
    pub config: ProviderConfig,
    /// Unique per built provider: cache entries of an older config are not reused.
    pub uid: u64,
    pub keys: Arc<KeyHolder>,
    /// `lb_jwt_verifications_total{provider, result}`: `ok`, then each [`Failure`].
    results: Vec<metrics::Counter>,
    cache_hits: metrics::Counter,
}

impl Provider {
    pub fn new(config: ProviderConfig, keys: Arc<KeyHolder>) -> Provider {
        let name = config.name.clone();
        let counter = |result: &'static str| metrics::counter!(crate::metrics::names::JWT_VERIFICATIONS, "provider" => name.clone(), "result" => result);
        let mut results = vec![counter("ok")];
        results.extend(Failure::ALL.iter().map(|f| counter(f.label())));
        let cache_hits =
            metrics::counter!(crate::metrics::names::JWT_CACHE_HITS, "provider" => name.clone());
        Provider {
            config,
            uid: next_generation(),
            keys,
            results,
            cache_hits,
        }
    }

    fn count(&self, r: &Result<Rc<Claims>, Failure>) {
        if crate::dryrun::active() {
            return;
        }
        let i = match r {
            Ok(_) => 0,
            Err(f) => 1 + Failure::ALL.iter().position(|x| x == f).unwrap_or(0),
        };
        if let Some(c) = self.results.get(i) {
            c.increment(1);
        }
    }

    /// The token this request carries for this provider, if any. Two of them (two
    /// `Authorization` fields, two cookies of the name) is an error: the backend might take
    /// the other one than lb verified.
    pub fn token<'a>(
        &self,
        headers: &'a [httparse::Header<'a>],
        query: Option<&'a [u8]>,
    ) -> Result<Option<&'a [u8]>, Failure> {
        let fields = |name: &str| {
            headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .count()
        };
        let twice = match &self.config.token {
            TokenSource::Bearer => fields("authorization") > 1,
            TokenSource::Header(name) => fields(name) > 1,
            TokenSource::Cookie(name) => {
                headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
                    .flat_map(|h| h.value.split(|&b| b == b';'))
                    .filter(|c| {
                        let c = c.trim_ascii_start();
                        c.starts_with(name.as_bytes()) && c.get(name.len()) == Some(&b'=')
                    })
                    .count()
                    > 1
            }
            TokenSource::Query(_) => false,
        };
        if twice {
            return Err(Failure::Malformed);
        }
        Ok(self.token_field(headers, query))
    }

    fn token_field<'a>(
        &self,
        headers: &'a [httparse::Header<'a>],
        query: Option<&'a [u8]>,
    ) -> Option<&'a [u8]> {
        let strip_bearer = |v: &'a [u8]| -> &'a [u8] {
            match v.get(..7) {
                Some(p) if p.eq_ignore_ascii_case(b"bearer ") => v[7..].trim_ascii(),
                _ => v.trim_ascii(),
            }
        };
        let t = match &self.config.token {
            TokenSource::Bearer => {
                let v = headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("authorization"))?
                    .value;
                if !v.get(..7)?.eq_ignore_ascii_case(b"bearer ") {
                    return None;
                }
                v[7..].trim_ascii()
            }
            TokenSource::Header(name) => strip_bearer(
                headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))?
                    .value,
            ),
            TokenSource::Cookie(name) => headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
                .find_map(|h| crate::http::cookie_value(h.value, name.as_bytes()))?,
            TokenSource::Query(name) => crate::http::query_param(query?, name.as_bytes())?,
        };
        (!t.is_empty()).then_some(t)
    }

    /// Verifies `token` now, through this worker's cache.
    pub fn check(&self, token: Option<&[u8]>) -> Result<Rc<Claims>, Failure> {
        let r = match token {
            None => Err(Failure::Missing),
            Some(t) => self.check_cached(t, unix_now()),
        };
        self.count(&r);
        r
    }

    fn check_cached(&self, token: &[u8], now: u64) -> Result<Rc<Claims>, Failure> {
        let keys = self.keys.current.load();
        let slot = crate::hash::mix(crate::hash::fnv1a(
            crate::hash::fnv1a_of(&self.uid.to_le_bytes()),
            token,
        ));
        let hit = CACHE.with_borrow(|c| {
            c.get(&slot).and_then(|e| {
                (e.generation == keys.generation && e.claims.until >= now && *e.token == *token)
                    .then(|| e.claims.clone())
            })
        });
        let dry = crate::dryrun::active();
        if let Some(claims) = hit {
            if !dry {
                self.cache_hits.increment(1);
            }
            return Ok(claims);
        }
        let claims = Rc::new(self.verify(token, &keys.set, now)?);
        if dry {
            return Ok(claims);
        }
        CACHE.with_borrow_mut(|c| {
            if c.len() >= CACHE_ENTRIES {
                c.retain(|_, e| e.claims.until >= now);
                if c.len() >= CACHE_ENTRIES {
                    c.clear();
                }
            }
            c.insert(
                slot,
                Cached {
                    token: token.into(),
                    generation: keys.generation,
                    claims: claims.clone(),
                },
            );
        });
        Ok(claims)
    }

    /// Verifies `token` against `keys` at `now` (seconds since the epoch), uncached.
    pub fn verify(&self, token: &[u8], keys: &KeySet, now: u64) -> Result<Claims, Failure> {
        if token.len() > MAX_TOKEN {
            return Err(Failure::Malformed);
        }
        let mut parts = token.split(|&b| b == b'.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::Malformed);
        };
        let decode = |p: &[u8]| URL_SAFE_NO_PAD.decode(p).map_err(|_| Failure::Malformed);
        let header: serde_json::Value =
            serde_json::from_slice(&decode(h64)?).map_err(|_| Failure::Malformed)?;
        // `none`, or anything the provider does not allow, whatever the key could do.
        let alg = header["alg"]
            .as_str()
            .and_then(Alg::parse)
            .filter(|a| self.config.algorithms.contains(a))
            .ok_or(Failure::Algorithm)?;
        // Extensions lb does not understand must not be ignored (RFC 7515 §4.1.11).
        if header.get("crit").is_some() {
            return Err(Failure::Malformed);
        }
        if keys.keys.is_empty() {
            return Err(Failure::NoKeys);
        }
        let sig = decode(s64)?;
        let signed = &token[..h64.len() + 1 + p64.len()];
        let verified = match header["kid"].as_str() {
            Some(kid) => {
                let Some(key) = keys
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid) && k.algs.contains(&alg))
                    .or_else(|| {
                        keys.keys
                            .iter()
                            .find(|k| k.kid.is_none() && k.algs.contains(&alg))
                    })
                else {
                    if !crate::dryrun::active() {
                        self.keys.ask_refetch();
                    }
                    return Err(Failure::UnknownKey);
                };
                key.verify(alg, signed, &sig)
            }
            None => keys.keys.iter().any(|k| k.verify(alg, signed, &sig)),
        };
        if !verified {
            return Err(Failure::Signature);
        }
        let value: serde_json::Value =
            serde_json::from_slice(&decode(p64)?).map_err(|_| Failure::Malformed)?;
        if !value.is_object() {
            return Err(Failure::Malformed);
        }
        let leeway = self.config.leeway.as_secs();
        let exp = match &value["exp"] {
            serde_json::Value::Null => None,
            v => Some(v.as_f64().ok_or(Failure::Malformed)? as u64),
        };
        let Some(exp) = exp else {
            // A token that never expires is a credential that can never be taken back.
            return Err(Failure::Expired);
        };
        if exp.saturating_add(leeway) < now {
            return Err(Failure::Expired);
        }
        if let Some(nbf) = value.get("nbf") {
            let nbf = nbf.as_f64().ok_or(Failure::Malformed)? as u64;
            if nbf > now.saturating_add(leeway) {
                return Err(Failure::NotYetValid);
            }
        }
        if let Some(iss) = &self.config.issuer {
            if value["iss"].as_str() != Some(iss.as_str()) {
                return Err(Failure::Issuer);
            }
        }
        if !self.config.audiences.is_empty() {
            let ok = match &value["aud"] {
                serde_json::Value::String(a) => self.config.audiences.contains(a),
                serde_json::Value::Array(list) => list
                    .iter()
                    .filter_map(|a| a.as_str())
                    .any(|a| self.config.audiences.iter().any(|x| x == a)),
                _ => false,
            };
            if !ok {
                return Err(Failure::Audience);
            }
        }
        Ok(Claims {
            value,
            until: exp.saturating_add(leeway),
        })
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

struct Cached {
    token: Box<[u8]>,
    generation: u64,
    claims: Rc<Claims>,
}

thread_local! {
    /// Verified tokens by provider and token hash, per worker thread.
    static CACHE: RefCell<FxHashMap<u64, Cached>> = RefCell::new(FxHashMap::default());
}

/// A claim by name: a top-level name as it is (namespaced claims such as
/// `https://example.com/roles` hold dots), else a dotted path into nested objects
/// (`realm_access.roles`).
pub fn claim<'v>(claims: &'v serde_json::Value, name: &str) -> Option<&'v serde_json::Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    name.split('.').try_fold(claims, |v, part| v.get(part))
}

/// A scalar claim as text: a string as it is, a number or a boolean as JSON writes it.
pub fn claim_text(v: &serde_json::Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        serde_json::Value::String(s) => Some(s.as_str().into()),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => Some(v.to_string().into()),
        _ => None,
    }
}

/// Whether a claim is `want` exactly, or an array with it as an element. For targeting and
/// overrides: a free-text claim (a name) never matches by one of its words.
pub fn claim_has(v: &serde_json::Value, want: &str) -> bool {
    match v {
        serde_json::Value::Array(list) => list.iter().filter_map(claim_text).any(|t| t == want),
        _ => claim_text(v).is_some_and(|t| t == want),
    }
}

/// What a claim condition tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimTest {
    /// The claim is this scalar.
    Equals(String),
    /// The claim is an array with this element, or a space-separated string (an OAuth
    /// `scope`) with this word.
    Contains(String),
    /// The claim is there (`true`) or not (`false`).
    Present(bool),
}

/// `{ name = "role", equals = "beta-tester" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCond {
    pub name: String,
    pub test: ClaimTest,
}

impl ClaimCond {
    /// Whether verified `claims` meet the condition; without claims, only `present = false`.
    pub fn matches(&self, claims: Option<&Claims>) -> bool {
        let v = claims.and_then(|c| claim(&c.value, &self.name));
        match &self.test {
            ClaimTest::Present(want) => v.is_some() == *want,
            ClaimTest::Equals(x) => v.and_then(claim_text).is_some_and(|t| t == x.as_str()),
            ClaimTest::Contains(x) => match v {
                Some(serde_json::Value::Array(list)) => {
                    list.iter().filter_map(claim_text).any(|t| t == x.as_str())
                }
                Some(serde_json::Value::String(s)) => s.split_ascii_whitespace().any(|w| w == x),
                _ => false,
            },
        }
    }
}

impl std::fmt::Display for ClaimCond {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.test {
            ClaimTest::Equals(x) => write!(f, "claim {} = {x:?}", self.name),
            ClaimTest::Contains(x) => write!(f, "claim {} contains {x:?}", self.name),
            ClaimTest::Present(true) => write!(f, "claim {} present", self.name),
            ClaimTest::Present(false) => write!(f, "claim {} absent", self.name),
        }
    }
}

impl std::fmt::Debug for Lookup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup")
            .field("providers", &self.providers.len())
            .finish()
    }
}

/// One request's verdicts, by provider, each worked out at most once and only if something
/// asks (a route's claim condition or auth, a split, a rate limit).
pub struct Lookup<'a> {
    providers: &'a [Arc<Provider>],
    headers: &'a [httparse::Header<'a>],
    query: Option<&'a [u8]>,
    verdicts: smallvec::SmallVec<[OnceCell<Verdict>; 2]>,
}

impl<'a> Lookup<'a> {
    pub fn new(
        providers: &'a [Arc<Provider>],
        headers: &'a [httparse::Header<'a>],
        query: Option<&'a [u8]>,
    ) -> Lookup<'a> {
        Lookup {
            providers,
            headers,
            query,
            verdicts: providers.iter().map(|_| OnceCell::new()).collect(),
        }
    }

    /// Provider `i`'s verdict on this request's token.
    pub fn verdict(&self, i: usize) -> Result<&Rc<Claims>, Failure> {
        let (Some(cell), Some(p)) = (self.verdicts.get(i), self.providers.get(i)) else {
            return Err(Failure::NoKeys);
        };
        cell.get_or_init(|| match p.token(self.headers, self.query) {
            Ok(t) => p.check(t),
            Err(f) => {
                p.count(&Err(f));
                Err(f)
            }
        })
        .as_ref()
        .map_err(|f| *f)
    }

    /// Provider `i`'s claims, if its token verified.
    pub fn claims(&self, i: usize) -> Option<&Claims> {
        self.verdict(i).ok().map(|c| &**c)
    }
}

#[cfg(test)]
mod tests;
