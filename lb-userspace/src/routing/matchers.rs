//! The parts of a route that decide whether it matches: host, path, method, headers, query.

use regex::bytes::Regex;

use crate::http::query_param;

/// Most captures one path matcher may define.
pub const MAX_CAPTURES: usize = 8;

/// Captured path parameters: byte ranges into the request path.
#[derive(Debug, Clone, Copy, Default)]
pub struct Captures {
    spans: [(u32, u32); MAX_CAPTURES],
    len: usize,
}

impl Captures {
    fn push(&mut self, start: usize, end: usize) {
        if self.len < MAX_CAPTURES {
            self.spans[self.len] = (start as u32, end as u32);
            self.len += 1;
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The captured values, resolved against the path they were taken from.
    pub fn values<'p>(&self, path: &'p [u8], out: &mut [&'p [u8]; MAX_CAPTURES]) -> usize {
        for (i, &(s, e)) in self.spans[..self.len].iter().enumerate() {
            out[i] = path.get(s as usize..e as usize).unwrap_or_default();
        }
        self.len
    }
}

/// How a route matches the host (port ignored, case-insensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lower-case host name.
    Exact(Vec<u8>),
    /// `*.example.com` stored as `.example.com`: any name with that suffix and at least one
    /// more label.
    Suffix(Vec<u8>),
}

impl HostMatch {
    pub fn matches(&self, host: Option<&[u8]>) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(want) => host.is_some_and(|h| h.eq_ignore_ascii_case(want)),
            HostMatch::Suffix(suffix) => host.is_some_and(|h| {
                h.len() > suffix.len() && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }),
        }
    }
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatSeg {
    Lit(Vec<u8>),
    /// `:name`: exactly one non-empty segment.
    Param,
    /// `*name`: the rest of the path, possibly empty; only last.
    Rest,
}

/// A path pattern such as `/api/v1/products/:id` or `/static/*rest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub segs: Vec<PatSeg>,
    pub names: Vec<String>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let Some(body) = text.strip_prefix('/') else {
            return Err(format!(
                "expected a pattern starting with '/', got {text:?}"
            ));
        };
        let mut segs = Vec::new();
        let mut names: Vec<String> = Vec::new();
        let pieces: Vec<&str> = body.split('/').collect();
        for (i, seg) in pieces.iter().enumerate() {
            let named = |name: &str, names: &mut Vec<String>| -> Result<(), String> {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!(
                        "invalid parameter name {name:?} in pattern {text:?}"
                    ));
                }
                if names.iter().any(|n| n == name) {
                    return Err(format!(
                        "parameter {name:?} appears twice in pattern {text:?}"
                    ));
                }
                names.push(name.to_string());
                Ok(())
            };
            if let Some(name) = seg.strip_prefix(':') {
                named(name, &mut names)?;
                segs.push(PatSeg::Param);
            } else if let Some(name) = seg.strip_prefix('*') {
                if i + 1 != pieces.len() {
                    return Err(format!(
                        "\"*{name}\" must be the last segment of pattern {text:?}"
                    ));
                }
                named(name, &mut names)?;
                segs.push(PatSeg::Rest);
            } else {
                if seg.contains([':', '*', '?', '#']) {
                    return Err(format!(
                        "segment {seg:?} of pattern {text:?} mixes literal text and a parameter"
                    ));
                }
                segs.push(PatSeg::Lit(seg.as_bytes().to_vec()));
            }
        }
        if names.len() > MAX_CAPTURES {
            return Err(format!(
                "pattern {text:?} has more than {MAX_CAPTURES} parameters"
            ));
        }
        Ok(Pattern { segs, names })
    }

    /// Literal segments: more literal means more specific.
    pub fn literal_count(&self) -> usize {
        self.segs
            .iter()
            .filter(|s| matches!(s, PatSeg::Lit(_)))
            .count()
    }

    fn matches(&self, path: &[u8], caps: &mut Captures) -> bool {
        let Some(mut rest) = path.strip_prefix(b"/") else {
            return false;
        };
        let mut offset = 1;
        for (i, seg) in self.segs.iter().enumerate() {
            if *seg == PatSeg::Rest {
                caps.push(offset, path.len());
                return true;
            }
            let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            let piece = &rest[..end];
            match seg {
                PatSeg::Lit(l) if l.as_slice() != piece => return false,
                PatSeg::Param if piece.is_empty() => return false,
                PatSeg::Param => caps.push(offset, offset + end),
                _ => {}
            }
            let last = i + 1 == self.segs.len();
            if end == rest.len() {
                // Path exhausted: match only if the pattern is too (or only `*rest` is left).
                return last
                    || (i + 2 == self.segs.len() && self.segs[i + 1] == PatSeg::Rest && {
                        caps.push(path.len(), path.len());
                        true
                    });
            }
            if last {
                return false;
            }
            rest = &rest[end + 1..];
            offset += end + 1;
        }
        false
    }
}

/// How a route matches the path (the target without its query).
#[derive(Debug, Clone)]
pub enum PathMatch {
    Any,
    Exact(Vec<u8>),
    /// Matches on a segment boundary: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(Vec<u8>),
    Pattern(Pattern),
    /// Named groups become parameters.
    Regex(Regex, Vec<String>),
}

impl PathMatch {
    /// Names of the parameters this matcher captures, in capture order.
    pub fn param_names(&self) -> &[String] {
        match self {
            PathMatch::Pattern(p) => &p.names,
            PathMatch::Regex(_, names) => names,
            _ => &[],
        }
    }

    pub fn matches(&self, path: &[u8], caps: &mut Captures) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => p.as_slice() == path,
            PathMatch::Prefix(p) => prefix_matches(p, path),
            PathMatch::Pattern(p) => p.matches(path, caps),
            PathMatch::Regex(re, names) => {
                if names.is_empty() {
                    return re.is_match(path);
                }
                let mut locs = re.capture_locations();
                if re.captures_read(&mut locs, path).is_none() {
                    return false;
                }
                for name in names {
                    let idx = re
                        .capture_names()
                        .position(|n| n == Some(name.as_str()))
                        .unwrap_or(usize::MAX);
                    match locs.get(idx) {
                        Some((s, e)) => caps.push(s, e),
                        None => caps.push(0, 0),
                    }
                }
                true
            }
        }
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, but not `/apix`.
pub fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len() || prefix.ends_with(b"/") || path[prefix.len()] == b'/')
}

/// A condition on request headers.
#[derive(Debug, Clone)]
pub struct HeaderCond {
    /// Lower-case.
    pub name: String,
    pub test: ValueTest,
}

/// What a header or query value must be.
#[derive(Debug, Clone)]
pub enum ValueTest {
    Equals(Vec<u8>),
    Present,
    /// Must not be present.
    Absent,
    Regex(Regex),
}

impl ValueTest {
    fn accepts(&self, value: &[u8]) -> bool {
        match self {
            ValueTest::Equals(v) => v.as_slice() == value,
            ValueTest::Present => true,
            ValueTest::Absent => false,
            ValueTest::Regex(re) => re.is_match(value),
        }
    }

    /// Two tests the same way (for finding routes that can never match).
    pub fn same_as(&self, other: &ValueTest) -> bool {
        match (self, other) {
            (ValueTest::Equals(a), ValueTest::Equals(b)) => a == b,
            (ValueTest::Present, ValueTest::Present) | (ValueTest::Absent, ValueTest::Absent) => {
                true
            }
            (ValueTest::Regex(a), ValueTest::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl HeaderCond {
    pub fn matches(&self, headers: &[httparse::Header<'_>]) -> bool {
        let mut seen = false;
        for h in headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(&self.name))
        {
            seen = true;
            if self.test.accepts(h.value) {
                return true;
            }
        }
        !seen && matches!(self.test, ValueTest::Absent)
    }
}

/// A condition on a query parameter (raw, not percent-decoded).
#[derive(Debug, Clone)]
pub struct QueryCond {
    pub name: Vec<u8>,
    pub test: ValueTest,
}

impl QueryCond {
    pub fn matches(&self, query: Option<&[u8]>) -> bool {
        match query.and_then(|q| query_param(q, &self.name)) {
            Some(v) => self.test.accepts(v),
            None => matches!(self.test, ValueTest::Absent),
        }
    }
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Any => write!(f, "any host"),
            HostMatch::Exact(h) => write!(f, "host {}", String::from_utf8_lossy(h)),
            HostMatch::Suffix(s) => write!(f, "host *{}", String::from_utf8_lossy(s)),
        }
    }
}

impl std::fmt::Display for PathMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathMatch::Any => write!(f, "any path"),
            PathMatch::Exact(p) => write!(f, "path = {}", String::from_utf8_lossy(p)),
            PathMatch::Prefix(p) => write!(f, "path prefix {}", String::from_utf8_lossy(p)),
            PathMatch::Pattern(p) => {
                let mut names = p.names.iter();
                write!(f, "path pattern ")?;
                for seg in &p.segs {
                    match seg {
                        PatSeg::Lit(l) => write!(f, "/{}", String::from_utf8_lossy(l))?,
                        PatSeg::Param => {
                            write!(f, "/:{}", names.next().map_or("", String::as_str))?
                        }
                        PatSeg::Rest => write!(f, "/*{}", names.next().map_or("", String::as_str))?,
                    }
                }
                Ok(())
            }
            PathMatch::Regex(re, _) => write!(f, "path regex {}", re.as_str()),
        }
    }
}

impl std::fmt::Display for ValueTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ValueTest::Equals(v) => write!(f, "= {:?}", String::from_utf8_lossy(v)),
            ValueTest::Present => write!(f, "present"),
            ValueTest::Absent => write!(f, "absent"),
            ValueTest::Regex(re) => write!(f, "~ /{}/", re.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps_of(m: &PathMatch, path: &str) -> Option<Vec<String>> {
        let mut caps = Captures::default();
        if !m.matches(path.as_bytes(), &mut caps) {
            return None;
        }
        let mut vals = [&b""[..]; MAX_CAPTURES];
        let n = caps.values(path.as_bytes(), &mut vals);
        Some(
            vals[..n]
                .iter()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect(),
        )
    }

    #[test]
    fn patterns() {
        let p = PathMatch::Pattern(Pattern::parse("/api/v1/products/:id").unwrap());
        assert_eq!(caps_of(&p, "/api/v1/products/42"), Some(vec!["42".into()]));
        assert_eq!(caps_of(&p, "/api/v1/products/"), None);
        assert_eq!(caps_of(&p, "/api/v1/products"), None);
        assert_eq!(caps_of(&p, "/api/v1/products/42/x"), None);
        assert_eq!(caps_of(&p, "/api/v2/products/42"), None);
        let p = PathMatch::Pattern(Pattern::parse("/static/*rest").unwrap());
        assert_eq!(
            caps_of(&p, "/static/css/a.css"),
            Some(vec!["css/a.css".into()])
        );
        assert_eq!(caps_of(&p, "/static/"), Some(vec!["".into()]));
        assert_eq!(caps_of(&p, "/static"), Some(vec!["".into()]));
        assert_eq!(caps_of(&p, "/staticx/a"), None);
        let p = PathMatch::Pattern(Pattern::parse("/u/:user/posts/:post").unwrap());
        assert_eq!(
            caps_of(&p, "/u/ann/posts/7"),
            Some(vec!["ann".into(), "7".into()])
        );
    }

    #[test]
    fn pattern_errors() {
        assert!(Pattern::parse("api/:id").is_err());
        assert!(Pattern::parse("/a/*rest/b").is_err());
        assert!(Pattern::parse("/a/:id/:id").is_err());
        assert!(Pattern::parse("/a/x:id").is_err());
        assert!(Pattern::parse("/a/:").is_err());
    }

    #[test]
    fn regex_named_groups_capture() {
        let re = Regex::new(r"^/v(?P<ver>[0-9]+)/items/(?P<id>[a-z0-9]+)$").unwrap();
        let m = PathMatch::Regex(re, vec!["ver".into(), "id".into()]);
        assert_eq!(
            caps_of(&m, "/v2/items/abc"),
            Some(vec!["2".into(), "abc".into()])
        );
        assert_eq!(caps_of(&m, "/v2/items/ABC"), None);
    }

    #[test]
    fn prefixes() {
        assert!(prefix_matches(b"/api", b"/api"));
        assert!(prefix_matches(b"/api", b"/api/x"));
        assert!(!prefix_matches(b"/api", b"/apix"));
        assert!(prefix_matches(b"/api/", b"/api/x"));
        assert!(!prefix_matches(b"/api/", b"/api"));
        assert!(prefix_matches(b"/", b"/anything"));
    }

    #[test]
    fn header_and_query_conditions() {
        let headers = [
            httparse::Header {
                name: "X-Api-Version",
                value: b"2",
            },
            httparse::Header {
                name: "Accept",
                value: b"application/vnd.api.v2+json",
            },
        ];
        let eq = HeaderCond {
            name: "x-api-version".into(),
            test: ValueTest::Equals(b"2".to_vec()),
        };
        assert!(eq.matches(&headers));
        let absent = HeaderCond {
            name: "x-tenant-id".into(),
            test: ValueTest::Absent,
        };
        assert!(absent.matches(&headers));
        let re = HeaderCond {
            name: "accept".into(),
            test: ValueTest::Regex(Regex::new(r"vnd\.api\.v2\+json").unwrap()),
        };
        assert!(re.matches(&headers));
        let q = QueryCond {
            name: b"version".to_vec(),
            test: ValueTest::Equals(b"2".to_vec()),
        };
        assert!(q.matches(Some(b"a=1&version=2")));
        assert!(!q.matches(Some(b"version=3")));
        assert!(!q.matches(None));
    }
}
