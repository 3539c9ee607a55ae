//! What a matched route does: forward (with rewrites and header edits), redirect, answer
//! directly, and deprecation/sunset handling.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::template::{Template, Vars};
use super::version::{GoneOf, Lifecycle, Phase, VersionEntry};
use crate::http::write::push_header;

/// The action of a route.
#[derive(Debug, Clone)]
pub enum Action {
    /// Index into the snapshot's clusters.
    Forward(usize),
    Redirect {
        status: u16,
        location: Template,
    },
    Respond {
        status: u16,
        content_type: String,
        body: Vec<u8>,
    },
}

/// Path rewriting before forwarding.
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    pub strip_prefix: Option<Vec<u8>>,
    pub add_prefix: Option<Vec<u8>>,
    pub path: Option<Template>,
}

impl Rewrite {
    /// Writes the rewritten target (path and query) into `out`.
    pub fn write_target(&self, out: &mut Vec<u8>, vars: &Vars<'_>) {
        if let Some(t) = &self.path {
            t.render(out, vars);
            if !t.has_query {
                push_query(out, vars.query);
            }
            return;
        }
        let mut path = vars.path;
        if let Some(strip) = &self.strip_prefix {
            if super::matchers::prefix_matches(strip, path) {
                path = &path[strip.len()..];
            }
        }
        let start = out.len();
        if let Some(add) = &self.add_prefix {
            out.extend_from_slice(add);
            if add.ends_with(b"/") && path.starts_with(b"/") {
                path = &path[1..];
            }
        }
        if !path.is_empty() && !path.starts_with(b"/") && !out[start..].ends_with(b"/") {
            out.push(b'/');
        }
        out.extend_from_slice(path);
        if out.len() == start {
            out.push(b'/');
        }
        push_query(out, vars.query);
    }
}

fn push_query(out: &mut Vec<u8>, query: Option<&[u8]>) {
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q);
    }
}

/// Header edits applied to requests or responses.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub set: Vec<(String, String)>,
    pub append: Vec<(String, String)>,
    /// Lower-case names to drop.
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.append.is_empty() && self.remove.is_empty()
    }

    /// True if an incoming header of this name must not be copied through.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.remove
            .iter()
            .any(|n| n.as_bytes().eq_ignore_ascii_case(name))
            || self
                .set
                .iter()
                .any(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
    }

    /// Writes the `set` and `append` headers.
    pub fn write_added(&self, out: &mut Vec<u8>) {
        for (n, v) in self.set.iter().chain(self.append.iter()) {
            push_header(out, n.as_bytes(), v.as_bytes());
        }
    }
}

/// A deprecated route (RFC 9745 `Deprecation`, RFC 8594 `Sunset`): the same lifecycle as an
/// API version's (deprecated, warning, sunset), for a route without a version map.
#[derive(Debug)]
pub struct Deprecation {
    /// Its dates, warning days, policy and 410 answer, and its request counter, as a
    /// version's (its name is empty: the route has no versions).
    pub entry: VersionEntry,
    /// Where clients should go instead (a URI).
    pub successor: Option<String>,
    /// Pre-rendered header lines added to every response of the route before its sunset.
    pub header_lines: Vec<u8>,
    /// The `Warning` line added on top in the warning phase.
    pub warning_line: Vec<u8>,
}

impl Deprecation {
    /// `life.deprecated` is the route's `since`; `life.policy` its documentation link.
    pub fn new(life: Lifecycle, successor: Option<String>) -> Deprecation {
        let mut lines = Vec::new();
        let since = life.deprecated.unwrap_or(UNIX_EPOCH);
        let secs = since
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        push_header(&mut lines, b"Deprecation", format!("@{secs}").as_bytes());
        if let Some(s) = life.sunset {
            push_header(&mut lines, b"Sunset", httpdate::fmt_http_date(s).as_bytes());
        }
        if let Some(succ) = &successor {
            push_header(
                &mut lines,
                b"Link",
                format!("<{succ}>; rel=\"successor-version\"").as_bytes(),
            );
        }
        if let Some(doc) = &life.policy {
            push_header(
                &mut lines,
                b"Link",
                format!("<{doc}>; rel=\"deprecation\"").as_bytes(),
            );
        }
        let mut warning_line = Vec::new();
        if let Some(s) = life.sunset {
            let text = format!(
                "299 lb \"this API is deprecated and goes away on {}\"",
                httpdate::fmt_http_date(s)
            );
            push_header(&mut warning_line, b"Warning", text.as_bytes());
        }
        Deprecation {
            entry: VersionEntry::new(String::new(), 0, life),
            successor,
            header_lines: lines,
            warning_line,
        }
    }

    /// Where the route is in its life at `now`.
    pub fn phase(&self, now: SystemTime) -> Phase {
        self.entry.life.phase(now)
    }

    /// The problem+json body of the 410 answer past the sunset.
    pub fn gone_body(&self, route: &str) -> Vec<u8> {
        self.entry.life.gone_body(&GoneOf {
            route,
            version: None,
            successor: self.successor.as_deref(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(rw: &Rewrite, path: &str, query: Option<&str>) -> String {
        let mut out = Vec::new();
        rw.write_target(
            &mut out,
            &Vars {
                path: path.as_bytes(),
                query: query.map(str::as_bytes),
                host: None,
                captures: &[],
                version: None,
            },
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strip_and_add_prefix() {
        let rw = Rewrite {
            strip_prefix: Some(b"/api".to_vec()),
            add_prefix: Some(b"/internal".to_vec()),
            path: None,
        };
        assert_eq!(
            target(&rw, "/api/orders/7", Some("x=1")),
            "/internal/orders/7?x=1"
        );
        assert_eq!(target(&rw, "/api", None), "/internal");
        assert_eq!(target(&rw, "/apix", None), "/internal/apix");
        let strip = Rewrite {
            strip_prefix: Some(b"/api".to_vec()),
            ..Default::default()
        };
        assert_eq!(target(&strip, "/api", None), "/");
        assert_eq!(target(&strip, "/api/x", None), "/x");
        let add = Rewrite {
            add_prefix: Some(b"/v2/".to_vec()),
            ..Default::default()
        };
        assert_eq!(target(&add, "/x", None), "/v2/x");
    }

    #[test]
    fn template_keeps_query_unless_it_builds_one() {
        let rw = Rewrite {
            path: Some(Template::parse("/new${path}", &[]).unwrap()),
            ..Default::default()
        };
        assert_eq!(target(&rw, "/x", Some("a=1")), "/new/x?a=1");
        let rw = Rewrite {
            path: Some(Template::parse("/n?b=${query.a}", &[]).unwrap()),
            ..Default::default()
        };
        assert_eq!(target(&rw, "/x", Some("a=1")), "/n?b=1");
    }

    #[test]
    fn deprecation_headers_and_sunset() {
        let since = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let sunset = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let life = Lifecycle {
            deprecated: Some(since),
            sunset: Some(sunset),
            warning: Duration::from_secs(30 * 86_400),
            ..Lifecycle::default()
        };
        let d = Deprecation::new(life, Some("/api/v2".into()));
        let lines = String::from_utf8(d.header_lines.clone()).unwrap();
        assert!(lines.contains("Deprecation: @1700000000\r\n"));
        assert!(
            lines.contains("Sunset: Fri, 15 Jan 2027 08:00:00 GMT\r\n"),
            "{lines}"
        );
        assert!(lines.contains("Link: </api/v2>; rel=\"successor-version\"\r\n"));
        assert_eq!(d.phase(since), Phase::Deprecated);
        assert_eq!(
            d.phase(sunset - Duration::from_secs(86_400)),
            Phase::Warning
        );
        assert_eq!(d.phase(sunset - Duration::from_secs(1)), Phase::Warning);
        assert_eq!(d.phase(sunset), Phase::Sunset);
        let warning = String::from_utf8(d.warning_line.clone()).unwrap();
        assert!(warning.starts_with("Warning: 299 lb "), "{warning}");
        let body: serde_json::Value = serde_json::from_slice(&d.gone_body("old")).unwrap();
        assert_eq!(body["successor"], "/api/v2");
        assert_eq!(
            (body["status"].as_u64(), body["code"].as_str()),
            (Some(410), Some("gone"))
        );
    }
}
