//! API versions: which version of an API a request asks for. From a path segment
//! (`path:/api/v{version}/`), a header (`header:X-API-Version`), the media type of `Accept`
//! (`application/vnd.NAME.v2+json`, or a `version=2` parameter on any type, by q-value), or a
//! query parameter (`query:api-version`).

/// Where a route reads the version from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// The text of the path around `{version}`: `/api/v` and `/` for `/api/v{version}/`.
    Path { before: Vec<u8>, after: Vec<u8> },
    /// A header, lower-case.
    Header(String),
    /// `Accept`; with a vendor, only `application/vnd.VENDOR.vN...` media types count (and
    /// `version=` parameters on any type).
    Accept { vendor: Option<String> },
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
            let v = v.strip_prefix(b"v").filter(|r| !r.is_empty()).unwrap_or(v);
            match supported.iter().position(|s| s.as_bytes() == v) {
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
                    match rest.windows(after.len()).position(|w| w == after.as_slice()) {
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
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
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
    for range in text.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if media.is_empty() {
            continue;
        }
        let Some((kind, sub)) = media.split_once('/') else {
            return Asked::Malformed;
        };
        if kind.is_empty() || sub.is_empty() {
            return Asked::Malformed;
        }
        let mut q = 1000u32;
        let mut param_version = None;
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                if p.trim().is_empty() {
                    continue;
                }
                return Asked::Malformed;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"'));
            match k.as_str() {
                "q" => match parse_q(v) {
                    Some(x) => q = x,
                    None => return Asked::Malformed,
                },
                "version" => param_version = Some(v.to_string()),
                _ => {}
            }
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
        (None, Some(v)) => Asked::Unsupported(v),
        (None, None) if versioned => Asked::Unsupported("none acceptable".into()),
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
        "0" => 0,
        "1" => 1000,
        _ => return None,
    };
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
        for bad in ["application", "application/json;q=2", "text/html;q=0.1234", "/json", "a/b;x"] {
            assert_eq!(accept(bad), Asked::Malformed, "{bad}");
        }
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
        for bad in ["path:/api/v", "path:api/{version}", "header:", "cookie:x", "query:a=b"] {
            assert!(VersionSource::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_order_numerically() {
        assert!(newer("10", "2"));
        assert!(newer("2.1", "2.0"));
        assert!(!newer("1", "1"));
        assert!(newer("beta", "alpha"));
    }
}
