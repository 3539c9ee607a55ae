//! API versions: which version of an API a request asks for. From a path segment
//! (`path:/api/v{version}/`), a header (`header:X-API-Version`), the media type of `Accept`
//! (`application/vnd.NAME.v2+json`, or a `version=2` parameter on any type, by q-value), or a
//! query parameter (`query:api-version`).

/// Where a route reads the version from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// The text of the path around `{version}`: `/api/v` and `/` for `/api/v{version}/`.
    Path {
        before: Vec<u8>,
        after: Vec<u8>,
    },
    /// A header, lower-case.
    Header(String),
    /// `Accept`; with a vendor, only `application/vnd.VENDOR.vN...` media types count (and
    /// `version=` parameters on any type).
    Accept {
        vendor: Option<String>,
    },
    Query(Vec<u8>),
}

/// What a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// No version: the default applies, if there is one.
    Nothing,
    /// This supported version (an index into the supported list).
    Version(usize),
    /// Only versions that are not supported (the text of the first, for the answer).
    Unsupported(String),
    /// An `Accept` header that could not be parsed.
    Malformed,
}

/// The longest version text taken from a request.
const MAX_VERSION: usize = 32;

impl VersionSource {
    /// Parses `path:/api/v{version}/`, `header:NAME`, `accept`, `accept:VENDOR` or
    /// `query:NAME`.
    pub fn parse(text: &str) -> Result<VersionSource, String> {
        let (kind, arg) = text.split_once(':').unwrap_or((text, ""));
        match (kind, arg) {
            ("accept", "") => Ok(VersionSource::Accept { vendor: None }),
            ("accept", vendor) if vendor.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) => {
                Ok(VersionSource::Accept {
                    vendor: Some(vendor.to_ascii_lowercase()),
                })
            }
            ("header", name) if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':') => {
                Ok(VersionSource::Header(name.to_ascii_lowercase()))
            }
            ("query", name) if !name.is_empty() && !name.contains(['&', '=', '#', ' ']) => {
                Ok(VersionSource::Query(name.as_bytes().to_vec()))
            }
            ("path", template) => {
                let Some((before, after)) = template.split_once("{version}") else {
                    return Err(format!("{text:?}: the path needs a {{version}} placeholder, as in \"path:/api/v{{version}}/\""));
                };
                if !before.starts_with('/') || before.contains('{') || after.contains('{') {
                    return Err(format!("{text:?}: expected one {{version}} in a path that starts with /"));
                }
                Ok(VersionSource::Path {
                    before: before.as_bytes().to_vec(),
                    after: after.as_bytes().to_vec(),
                })
            }
            _ => Err(format!(
                "{text:?}: expected \"path:/PREFIX{{version}}/\", \"header:NAME\", \"accept\", \"accept:VENDOR\" or \"query:NAME\""
            )),
        }
    }

    /// The request header the choice depends on, for `Vary` (shared caches must not give one
    /// version's answer to a request for another).
    pub fn vary(&self) -> Option<&str> {
        match self {
            VersionSource::Header(name) => Some(name),
            VersionSource::Accept { .. } => Some("Accept"),
            VersionSource::Path { .. } | VersionSource::Query(_) => None,
        }
    }

    /// The version the request asks for, among `supported`.
    pub fn asked(
        &self,
        path: &[u8],
        header: impl Fn(&str) -> Option<Vec<u8>>,
        query: Option<&[u8]>,
        supported: &[String],
    ) -> Asked {
        let plain = |v: &[u8]| -> Asked {
            let v = trim(v);
            if v.is_empty() {
                return Asked::Nothing;
            }
            // The name as written (a version may be called `v2`), else without a `v`.
            let bare = v.strip_prefix(b"v").filter(|r| !r.is_empty());
            let found = supported
                .iter()
                .position(|s| s.as_bytes() == v)
                .or_else(|| bare.and_then(|b| supported.iter().position(|s| s.as_bytes() == b)));
            match found {
                Some(i) => Asked::Version(i),
                None => Asked::Unsupported(
                    String::from_utf8_lossy(&v[..v.len().min(MAX_VERSION)]).into_owned(),
                ),
            }
        };
        match self {
            VersionSource::Path { before, after } => {
                let Some(rest) = path.strip_prefix(before.as_slice()) else {
                    return Asked::Nothing;
                };
                let end = if after.is_empty() {
                    rest.iter().position(|&b| b == b'/').unwrap_or(rest.len())
                } else {
                    match rest
                        .windows(after.len())
                        .position(|w| w == after.as_slice())
                    {
                        Some(i) => i,
                        // `/api/v2` without the trailing part.
                        None if after.as_slice() == b"/" => rest.len(),
                        None => return Asked::Nothing,
                    }
                };
                let v = &rest[..end];
                if v.contains(&b'/') {
                    return Asked::Nothing;
                }
                match supported.iter().position(|s| s.as_bytes() == v) {
                    Some(i) => Asked::Version(i),
                    None if v.is_empty() => Asked::Nothing,
                    None => Asked::Unsupported(
                        String::from_utf8_lossy(&v[..v.len().min(MAX_VERSION)]).into_owned(),
                    ),
                }
            }
            VersionSource::Header(name) => match header(name) {
                Some(v) => plain(&v),
                None => Asked::Nothing,
            },
            VersionSource::Query(name) => {
                match query.and_then(|q| crate::http::query_param(q, name)) {
                    Some(v) => plain(v),
                    None => Asked::Nothing,
                }
            }
            VersionSource::Accept { vendor } => match header("accept") {
                None => Asked::Nothing,
                Some(v) => from_accept(&v, vendor.as_deref(), supported),
            },
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// The supported version an `Accept` value prefers: among its media ranges that name a
/// version with a q-value above 0, the highest q, and among equal q the highest version.
fn from_accept(value: &[u8], vendor: Option<&str>, supported: &[String]) -> Asked {
    let Ok(text) = std::str::from_utf8(value) else {
        return Asked::Malformed;
    };
    let mut best: Option<(u32, usize)> = None;
    let mut unsupported: Option<String> = None;
    let mut versioned = false;
    // A wildcard range (`*/*`, `application/*`) with q above 0 takes any version: the
    // default serves it when no named version is supported.
    let mut wildcard = false;
    // Ranges that do not parse are skipped, as real clients send some (Java's `*; q=.2`);
    // only a header with no range that parses is refused.
    let mut parsed = 0;
    'ranges: for range in text.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if media.is_empty() {
            continue;
        }
        let Some((kind, sub)) = media.split_once('/') else {
            continue;
        };
        if kind.is_empty() || sub.is_empty() {
            continue;
        }
        let mut q = 1000u32;
        let mut param_version = None;
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                if p.trim().is_empty() {
                    continue;
                }
                continue 'ranges;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"'));
            match k.as_str() {
                "q" => match parse_q(v) {
                    Some(x) => q = x,
                    None => continue 'ranges,
                },
                "version" => param_version = Some(v.to_string()),
                _ => {}
            }
        }
        parsed += 1;
        if sub == "*" && q > 0 {
            wildcard = true;
        }
        // `application/vnd.NAME.vN+json` (or without a suffix).
        let vendor_version = sub.strip_prefix("vnd.").and_then(|tree| {
            let tree = tree.split('+').next().unwrap_or(tree);
            let (name, v) = tree.rsplit_once('.')?;
            let v = v.strip_prefix('v')?;
            if v.is_empty() || vendor.is_some_and(|want| want != name) {
                return None;
            }
            Some(v.to_string())
        });
        let Some(v) = vendor_version.or(param_version) else {
            continue;
        };
        versioned = true;
        if q == 0 {
            continue;
        }
        match supported.iter().position(|s| *s == v) {
            Some(i) => {
                let better = match best {
                    None => true,
                    Some((bq, bi)) => q > bq || (q == bq && newer(&supported[i], &supported[bi])),
                };
                if better {
                    best = Some((q, i));
                }
            }
            None => {
                unsupported.get_or_insert_with(|| v.chars().take(MAX_VERSION).collect());
            }
        }
    }
    match (best, unsupported) {
        (Some((_, i)), _) => Asked::Version(i),
        (None, _) if wildcard => Asked::Nothing,
        (None, Some(v)) => Asked::Unsupported(v),
        (None, None) if versioned => Asked::Unsupported("none acceptable".into()),
        (None, None) if parsed == 0 && !text.trim().is_empty() => Asked::Malformed,
        (None, None) => Asked::Nothing,
    }
}

/// A q-value in thousandths (`0`, `0.5`, `1.000`); `None` if malformed.
fn parse_q(v: &str) -> Option<u32> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = match int {
        "0" | "" => 0,
        "1" => 1000,
        _ => return None,
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut f = frac.to_string();
    while f.len() < 3 {
        f.push('0');
    }
    let part: u32 = f.parse().ok()?;
    let q = whole + part;
    (q <= 1000).then_some(q)
}

/// Whether version `a` is newer than `b`: numerically where both are numbers (dotted parts
/// compared in turn), by text otherwise.
pub fn newer(a: &str, b: &str) -> bool {
    let nums = |s: &str| -> Option<Vec<u64>> { s.split('.').map(|p| p.parse().ok()).collect() };
    match (nums(a), nums(b)) {
        (Some(x), Some(y)) => x > y,
        _ => a > b,
    }
}

/// A route's versions: where the version comes from, each version's cluster and lifecycle,
/// the default, and the header that tells the client which version answered.
#[derive(Debug)]
pub struct Versions {
    pub source: VersionSource,
    /// The supported versions' names, as `entries`.
    pub names: Vec<String>,
    pub entries: Vec<VersionEntry>,
    pub default: Option<usize>,
    /// Tell the client the version chosen in this response header.
    pub echo: Option<String>,
}

/// One version of a route's API.
#[derive(Debug)]
pub struct VersionEntry {
    pub name: String,
    /// Its cluster (its split's default target's, with a split).
    pub cluster: usize,
    pub life: Lifecycle,
    /// A split inside this version: a canary of v2 while v1 has none.
    pub split: Option<std::sync::Arc<crate::release::SplitConfig>>,
    /// Requests to this version are validated against its API spec (or the route's).
    pub validate: Option<std::sync::Arc<crate::validation::Validation>>,
    /// `lb_api_version_requests_total` by phase, made at first use.
    counters: [std::sync::OnceLock<metrics::Counter>; 4],
}

impl VersionEntry {
    pub fn new(name: String, cluster: usize, life: Lifecycle) -> VersionEntry {
        VersionEntry {
            name,
            cluster,
            life,
            split: None,
            validate: None,
            counters: Default::default(),
        }
    }

    /// Counts one request to this version of `route`, in `phase`.
    pub fn count(&self, route: &str, phase: Phase) {
        self.counters[phase as usize]
            .get_or_init(|| {
                metrics::counter!(
                    crate::metrics::names::API_VERSION_REQUESTS,
                    "route" => route.to_string(),
                    "version" => self.name.clone(),
                    "phase" => phase.name(),
                )
            })
            .increment(1);
    }
}

/// Where a version is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Active = 0,
    /// Past its deprecation date: `Deprecation`, `Sunset` and `Link` headers.
    Deprecated = 1,
    /// The last days before its sunset: a `Warning` header on top.
    Warning = 2,
    /// Past its sunset: `410 Gone`.
    Sunset = 3,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Active => "active",
            Phase::Deprecated => "deprecated",
            Phase::Warning => "warning",
            Phase::Sunset => "sunset",
        }
    }
}

/// A version's dates and where to send its clients.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    pub deprecated: Option<std::time::SystemTime>,
    pub sunset: Option<std::time::SystemTime>,
    /// How long before the sunset the warning phase starts (30 days by default).
    pub warning: std::time::Duration,
    /// The version to move to.
    pub successor: Option<String>,
    /// The deprecation policy or migration guide (a URL).
    pub policy: Option<String>,
    /// In the warning phase, JSON object responses up to this size get a `_deprecation`
    /// member (`None`: off).
    pub field_max: Option<u64>,
    /// The operator's words for the 410 answer past the sunset.
    pub gone: Gone,
}

/// The problem+json members of a 410 answer past a sunset that the operator sets (`gone =
/// { type, title, detail, code }`); each may name `${route}`, `${version}`, `${sunset}`,
/// `${successor}` and `${guide}`. Unset members keep lb's words.
#[derive(Debug, Clone, Default)]
pub struct Gone {
    pub kind: Option<String>,
    pub title: Option<String>,
    pub detail: Option<String>,
    pub code: Option<String>,
}

/// The names a [`Gone`] template may use.
pub const GONE_VARIABLES: [&str; 5] = ["route", "version", "sunset", "successor", "guide"];

impl Gone {
    /// What is wrong with a template `text`, if anything: a `${` without its `}`, or a
    /// name not among [`GONE_VARIABLES`] (a route's own lifecycle has no `${version}`).
    pub fn template_problem(text: &str, versioned: bool) -> Option<String> {
        let known: Vec<&str> = GONE_VARIABLES
            .into_iter()
            .filter(|v| versioned || *v != "version")
            .collect();
        let mut rest = text;
        while let Some(at) = rest.find("${") {
            let tail = &rest[at + 2..];
            let Some(end) = tail.find('}') else {
                return Some("a \"${\" without its \"}\"".into());
            };
            let name = &tail[..end];
            if !known.contains(&name) {
                let known: Vec<String> = known.iter().map(|v| format!("${{{v}}}")).collect();
                return Some(format!(
                    "unknown variable ${{{name}}}: expected one of {}",
                    known.join(", ")
                ));
            }
            rest = &tail[end + 1..];
        }
        None
    }
}

/// What a 410 answer says of the API gone: the route, the version (none for a route's own
/// lifecycle) and where to go instead.
pub struct GoneOf<'a> {
    pub route: &'a str,
    pub version: Option<&'a str>,
    /// The successor version's name, or the successor route's URI.
    pub successor: Option<&'a str>,
}

impl Lifecycle {
    /// The problem+json body of the 410 answer past the sunset, in the operator's words
    /// where `gone` gives them.
    pub fn gone_body(&self, of: &GoneOf<'_>) -> Vec<u8> {
        let sunset = self.sunset.map(httpdate::fmt_http_date);
        // One pass: a value that holds `${...}` text is not expanded again.
        let render = |t: &str| {
            let mut out = String::with_capacity(t.len() + 32);
            let mut rest = t;
            while let Some(at) = rest.find("${") {
                out.push_str(&rest[..at]);
                let tail = &rest[at + 2..];
                let Some(end) = tail.find('}') else {
                    rest = &rest[at..];
                    break;
                };
                out.push_str(match &tail[..end] {
                    "route" => of.route,
                    "version" => of.version.unwrap_or(""),
                    "sunset" => sunset.as_deref().unwrap_or(""),
                    "successor" => of.successor.unwrap_or(""),
                    "guide" => self.policy.as_deref().unwrap_or(""),
                    _ => "",
                });
                rest = &tail[end + 1..];
            }
            out.push_str(rest);
            out
        };
        let (title, detail, code) = match of.version {
            Some(v) => (
                "API version retired",
                format!("version {v} of this API has passed its sunset"),
                "api_version_retired",
            ),
            None => (
                "API retired",
                "this API has passed its sunset".to_string(),
                "gone",
            ),
        };
        let mut body = serde_json::json!({
            "type": self.gone.kind.as_deref().map(render).filter(|t| !t.is_empty()).unwrap_or_else(|| "about:blank".into()),
            "title": self.gone.title.as_deref().map_or(title.into(), render),
            "status": 410,
            "detail": self.gone.detail.as_deref().map_or(detail, render),
            "code": self.gone.code.as_deref().map_or(code.into(), render),
            "sunset": sunset,
            "migration_guide": self.policy,
        });
        if let Some(o) = body.as_object_mut() {
            match of.version {
                Some(v) => {
                    o.insert("version".into(), v.into());
                    o.insert("successor_version".into(), of.successor.into());
                }
                None => {
                    o.insert("successor".into(), of.successor.into());
                }
            }
        }
        let mut out = body.to_string().into_bytes();
        out.push(b'\n');
        out
    }
}

impl Lifecycle {
    /// The phase at `now`: from the dates alone, so it moves on without a reload.
    /// The phases come in order: a warning window that would open before the deprecation
    /// date opens with it.
    pub fn phase(&self, now: std::time::SystemTime) -> Phase {
        let warned =
            |s: std::time::SystemTime| now.checked_add(self.warning).is_none_or(|t| t >= s);
        match (self.deprecated, self.sunset) {
            (_, Some(s)) if now >= s => Phase::Sunset,
            (Some(d), _) if now < d => Phase::Active,
            (_, Some(s)) if warned(s) => Phase::Warning,
            (Some(_), _) => Phase::Deprecated,
            _ => Phase::Active,
        }
    }

    /// The response headers of `phase` (RFC 9745 `Deprecation`, RFC 8594 `Sunset`, `Link`
    /// to the successor and the policy, and a `Warning` in the warning phase).
    pub fn headers(&self, phase: Phase, successor_url: Option<&str>) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if phase == Phase::Active {
            return out;
        }
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        if let Some(d) = self.deprecated.or(self.sunset) {
            out.push(("Deprecation".into(), format!("@{}", unix(d))));
        }
        if let Some(s) = self.sunset {
            out.push(("Sunset".into(), httpdate::fmt_http_date(s)));
        }
        if let Some(url) = successor_url {
            out.push(("Link".into(), format!("<{url}>; rel=\"successor-version\"")));
        }
        if let Some(p) = &self.policy {
            out.push(("Link".into(), format!("<{p}>; rel=\"deprecation\"")));
        }
        if phase == Phase::Warning {
            let when = self.sunset.map(httpdate::fmt_http_date).unwrap_or_default();
            out.push((
                "Warning".into(),
                format!("299 lb \"this API version is deprecated and goes away on {when}\""),
            ));
        }
        out
    }
}

impl Lifecycle {
    /// The `_deprecation` member a warning-phase JSON response gets (as JSON text).
    pub fn field(&self, version: &str) -> String {
        serde_json::json!({
            "version": version,
            "phase": Phase::Warning.name(),
            "sunset": self.sunset.map(httpdate::fmt_http_date),
            "successor_version": self.successor,
            "policy": self.policy,
        })
        .to_string()
    }
}

/// The clock the lifecycle phases read: the system's. A process started with `LB_TEST_NOW`
/// (Unix seconds) reads a test clock instead, which starts there and which the admin API's
/// `PUT /test/clock` moves, so that a test takes a running `lb` through a version's phases
/// without waiting and without a reload. Without `LB_TEST_NOW` that endpoint is refused.
pub fn now() -> std::time::SystemTime {
    match test_clock() {
        Some(c) => {
            std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(c.load(std::sync::atomic::Ordering::Relaxed))
        }
        None => std::time::SystemTime::now(),
    }
}

/// The test clock, if this process has one (`LB_TEST_NOW` at start).
fn test_clock() -> Option<&'static std::sync::atomic::AtomicU64> {
    static CLOCK: std::sync::OnceLock<Option<std::sync::atomic::AtomicU64>> =
        std::sync::OnceLock::new();
    CLOCK
        .get_or_init(|| {
            std::env::var("LB_TEST_NOW")
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| std::sync::atomic::AtomicU64::new(s.min(TEST_CLOCK_MAX)))
        })
        .as_ref()
}

/// The latest instant the test clock takes: the end of year 9999 (later ones overflow the
/// system's time arithmetic).
pub const TEST_CLOCK_MAX: u64 = 253_402_300_799;

/// Sets the test clock to `unix` seconds (at most [`TEST_CLOCK_MAX`]); false if this process
/// reads the system clock.
pub fn set_test_clock(unix: u64) -> bool {
    let unix = unix.min(TEST_CLOCK_MAX);
    match test_clock() {
        Some(c) => {
            c.store(unix, std::sync::atomic::Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Who still calls deprecated versions: per (route, version), per consumer, requests and the
/// last time. At most [`MAX_CONSUMERS`] consumers per version; the rest count as `other`.
#[derive(Default)]
pub struct Usage {
    table: std::sync::Mutex<
        std::collections::BTreeMap<(String, String), std::collections::BTreeMap<String, Seen>>,
    >,
}

/// Requests from one consumer to one version.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    pub requests: u64,
    pub last_unix: u64,
}

/// Consumers tracked per version before the rest count as `other`.
pub const MAX_CONSUMERS: usize = 1000;

impl Usage {
    /// Counts a request by `consumer` to `version` of `route`.
    pub fn record(&self, route: &str, version: &str, consumer: &str) {
        // A JWT subject is the client's text: kept to a sane length.
        let consumer = match consumer.char_indices().nth(128) {
            Some((cut, _)) => &consumer[..cut],
            None => consumer,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let per = t
            .entry((route.to_string(), version.to_string()))
            .or_default();
        let key = if per.contains_key(consumer) || per.len() < MAX_CONSUMERS {
            consumer
        } else {
            "other"
        };
        let seen = per.entry(key.to_string()).or_default();
        seen.requests += 1;
        seen.last_unix = now;
    }

    /// Every consumer of `version` of `route`.
    pub fn of(&self, route: &str, version: &str) -> Vec<(String, Seen)> {
        let t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.get(&(route.to_string(), version.to_string()))
            .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default()
    }
}

/// The process's usage table.
pub fn usage() -> &'static Usage {
    static USAGE: std::sync::OnceLock<Usage> = std::sync::OnceLock::new();
    USAGE.get_or_init(Usage::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sup() -> Vec<String> {
        vec!["1".into(), "2".into(), "10".into()]
    }

    fn accept(v: &str) -> Asked {
        VersionSource::Accept {
            vendor: Some("example".into()),
        }
        .asked(b"/", |_| Some(v.as_bytes().to_vec()), None, &sup())
    }

    #[test]
    fn accept_takes_the_highest_q_then_the_newest() {
        assert_eq!(accept("application/vnd.example.v2+json"), Asked::Version(1));
        assert_eq!(
            accept("application/vnd.example.v1+json, application/vnd.example.v2+json"),
            Asked::Version(1),
            "equal q: the newest"
        );
        assert_eq!(
            accept("application/vnd.example.v10+json;q=0.5, application/vnd.example.v1+json"),
            Asked::Version(0),
            "the higher q wins"
        );
        assert_eq!(
            accept("application/vnd.example.v2+json; q=0, application/vnd.example.v1+json;q=0.1"),
            Asked::Version(0),
            "q=0 is not acceptable"
        );
        assert_eq!(accept("application/json; version=10"), Asked::Version(2));
        assert_eq!(accept("application/json, text/html"), Asked::Nothing);
        assert_eq!(
            accept("application/vnd.example.v3+json"),
            Asked::Unsupported("3".into())
        );
        assert_eq!(
            accept("application/vnd.other.v2+json"),
            Asked::Nothing,
            "another vendor's tree"
        );
        assert_eq!(
            accept("application/vnd.example.v2+json;q=0"),
            Asked::Unsupported("none acceptable".into())
        );
        for bad in [
            "application",
            "application/json;q=2",
            "text/html;q=0.1234",
            "/json",
            "a/b;x",
        ] {
            assert_eq!(accept(bad), Asked::Malformed, "{bad}");
        }
        // Ranges that do not parse are skipped when others do (Java's default Accept).
        assert_eq!(
            accept("text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"),
            Asked::Nothing
        );
        assert_eq!(
            accept("application/vnd.example.v1+json;q=oops, application/vnd.example.v2+json"),
            Asked::Version(1)
        );
        // A wildcard takes the default when no named version is supported.
        assert_eq!(
            accept("application/vnd.example.v7+json, */*;q=0.1"),
            Asked::Nothing
        );
        // A version named `v2` is found as written.
        let named = vec!["v1".to_string(), "v2".to_string()];
        let h = VersionSource::Header("x".into());
        assert_eq!(
            h.asked(b"/", |_| Some(b"v2".to_vec()), None, &named),
            Asked::Version(1)
        );
    }

    #[test]
    fn path_header_and_query() {
        let s = sup();
        let p = VersionSource::parse("path:/api/v{version}/").expect("parse");
        let none = |_: &str| None;
        assert_eq!(p.asked(b"/api/v2/users", none, None, &s), Asked::Version(1));
        assert_eq!(p.asked(b"/api/v10", none, None, &s), Asked::Version(2));
        assert_eq!(
            p.asked(b"/api/v3/users", none, None, &s),
            Asked::Unsupported("3".into())
        );
        assert_eq!(p.asked(b"/other/v2/users", none, None, &s), Asked::Nothing);
        let h = VersionSource::parse("header:X-API-Version").expect("parse");
        let given = |n: &str| (n == "x-api-version").then(|| b" v2 ".to_vec());
        assert_eq!(h.asked(b"/", given, None, &s), Asked::Version(1));
        assert_eq!(h.asked(b"/", none, None, &s), Asked::Nothing);
        let q = VersionSource::parse("query:api-version").expect("parse");
        assert_eq!(
            q.asked(b"/", none, Some(b"a=1&api-version=10"), &s),
            Asked::Version(2)
        );
        assert_eq!(
            q.asked(b"/", none, Some(b"api-version=7"), &s),
            Asked::Unsupported("7".into())
        );
        for bad in [
            "path:/api/v",
            "path:api/{version}",
            "header:",
            "cookie:x",
            "query:a=b",
        ] {
            assert!(VersionSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gone_templates_name_known_variables_only() {
        assert_eq!(
            Gone::template_problem("v${version} ends ${sunset}", true),
            None
        );
        assert!(Gone::template_problem("v${version}", false).is_some());
        assert_eq!(Gone::template_problem("no variables", false), None);
        assert!(Gone::template_problem("see ${docs}", true).is_some_and(|p| p.contains("${docs}")));
        assert!(
            Gone::template_problem("cut ${version", true).is_some_and(|p| p.contains("without"))
        );
        let life = Lifecycle {
            policy: Some("https://docs.example.com/v3".into()),
            gone: Gone {
                title: Some("${route} v${version} retired".into()),
                ..Gone::default()
            },
            ..Lifecycle::default()
        };
        let body = life.gone_body(&GoneOf {
            route: "users",
            version: Some("2"),
            successor: Some("3"),
        });
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["title"], "users v2 retired");
        // Members the operator left alone keep lb's words.
        assert_eq!(v["code"], "api_version_retired");
        assert_eq!(v["detail"], "version 2 of this API has passed its sunset");
        assert_eq!(v["successor_version"], "3");
        assert_eq!(v["migration_guide"], "https://docs.example.com/v3");
        // Values are not expanded again.
        let life = Lifecycle {
            policy: Some("https://x.test/${route}".into()),
            gone: Gone {
                detail: Some("see ${guide}".into()),
                kind: Some("${successor}".into()),
                ..Gone::default()
            },
            ..Lifecycle::default()
        };
        let of = GoneOf {
            route: "users",
            version: None,
            successor: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&life.gone_body(&of)).unwrap();
        assert_eq!(v["detail"], "see https://x.test/${route}");
        assert_eq!(v["type"], "about:blank", "a type that renders empty");
    }

    #[test]
    fn phases_follow_the_dates() {
        use std::time::{Duration, UNIX_EPOCH};
        let day = Duration::from_secs(86_400);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let life = Lifecycle {
            deprecated: Some(t0),
            sunset: Some(t0 + day * 90),
            warning: day * 30,
            successor: Some("2".into()),
            policy: None,
            field_max: None,
            gone: Gone::default(),
        };
        assert_eq!(life.phase(t0 - day), Phase::Active);
        assert_eq!(life.phase(t0), Phase::Deprecated);
        assert_eq!(life.phase(t0 + day * 59), Phase::Deprecated);
        assert_eq!(life.phase(t0 + day * 60), Phase::Warning);
        assert_eq!(life.phase(t0 + day * 90), Phase::Sunset);
        // A warning window that would open before the deprecation opens with it.
        let late = Lifecycle {
            deprecated: Some(t0 + day * 80),
            ..life.clone()
        };
        assert_eq!(late.phase(t0 + day * 70), Phase::Active);
        assert_eq!(late.phase(t0 + day * 80), Phase::Warning);
        // A sunset alone: active, then its warning window.
        let sunset_only = Lifecycle {
            deprecated: None,
            ..life.clone()
        };
        assert_eq!(sunset_only.phase(t0), Phase::Active);
        assert_eq!(sunset_only.phase(t0 + day * 61), Phase::Warning);
        let h = life.headers(Phase::Warning, Some("/api/v2"));
        let names: Vec<&str> = h.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Deprecation", "Sunset", "Link", "Warning"]);
        assert!(life.headers(Phase::Active, None).is_empty());
    }

    #[test]
    fn usage_is_bounded_per_version() {
        let u = Usage::default();
        for i in 0..MAX_CONSUMERS + 5 {
            u.record("r", "1", &format!("c{i}"));
        }
        u.record("r", "1", "c0");
        let seen = u.of("r", "1");
        assert_eq!(seen.len(), MAX_CONSUMERS + 1);
        let other = seen.iter().find(|(n, _)| n == "other").expect("other");
        assert_eq!(other.1.requests, 5);
        let c0 = seen.iter().find(|(n, _)| n == "c0").expect("c0");
        assert_eq!(c0.1.requests, 2);
    }

    #[test]
    fn versions_order_numerically() {
        assert!(newer("10", "2"));
        assert!(newer("2.1", "2.0"));
        assert!(!newer("1", "1"));
        assert!(newer("beta", "alpha"));
    }
}
