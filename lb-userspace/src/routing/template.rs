//! Templates for rewritten paths and redirect locations, parsed once at load:
//! `/internal/catalog/items/${params.id}?source=${query.ref}`.
//!
//! Variables: `${params.NAME}` (a capture of the route's path pattern or regex),
//! `${query.NAME}` (a raw query parameter value), `${path}` (the request path without query),
//! `${query}` (the raw query string), `${host}` (the request host without port), `${version}`
//! (the API version a versioned route chose; see `docs/versions.md`).
//! A variable with no value renders empty. Values are inserted as received (still
//! percent-encoded), never decoded.

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(Vec<u8>),
    /// Index into the route's capture names.
    Param(usize),
    Query(Vec<u8>),
    Path,
    QueryString,
    Host,
    Version,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// The literal text has a `?`: the template builds its own query string.
    pub has_query: bool,
}

/// What a template renders from.
pub struct Vars<'a> {
    pub path: &'a [u8],
    pub query: Option<&'a [u8]>,
    pub host: Option<&'a [u8]>,
    /// Captured values, by capture index.
    pub captures: &'a [&'a [u8]],
    /// The API version chosen, on a versioned route.
    pub version: Option<&'a [u8]>,
}

impl Template {
    /// Parses `text`; `params` are the capture names the route's path matcher defines.
    pub fn parse(text: &str, params: &[String]) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut lit = Vec::new();
        while let Some(start) = rest.find("${") {
            lit.extend_from_slice(&rest.as_bytes()[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in template {text:?}"))?;
            let var = &after[..end];
            let part = if let Some(name) = var.strip_prefix("params.") {
                let idx = params.iter().position(|p| p == name).ok_or_else(|| {
                    if params.is_empty() {
                        format!("template uses ${{params.{name}}} but the route's path captures nothing")
                    } else {
                        format!("template uses ${{params.{name}}} but the route's path captures only {params:?}")
                    }
                })?;
                Part::Param(idx)
            } else if let Some(name) = var.strip_prefix("query.") {
                if name.is_empty() {
                    return Err(format!("empty query parameter name in template {text:?}"));
                }
                Part::Query(name.as_bytes().to_vec())
            } else {
                match var {
                    "path" => Part::Path,
                    "query" => Part::QueryString,
                    "host" => Part::Host,
                    "version" => Part::Version,
                    _ => {
                        return Err(format!(
                            "unknown template variable ${{{var}}}: expected params.NAME, query.NAME, path, query, host or version"
                        ))
                    }
                }
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(part);
            rest = &after[end + 1..];
        }
        lit.extend_from_slice(rest.as_bytes());
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if text.bytes().any(|b| b < b' ' || b == 0x7f) {
            return Err(format!("template {text:?} contains control characters"));
        }
        let has_query = parts
            .iter()
            .any(|p| matches!(p, Part::Lit(l) if l.contains(&b'?')));
        Ok(Template { parts, has_query })
    }

    /// Appends the rendered template to `out`.
    pub fn render(&self, out: &mut Vec<u8>, vars: &Vars<'_>) {
        for part in &self.parts {
            match part {
                Part::Lit(l) => out.extend_from_slice(l),
                Part::Param(i) => {
                    if let Some(v) = vars.captures.get(*i) {
                        out.extend_from_slice(v);
                    }
                }
                Part::Query(name) => {
                    if let Some(v) = vars.query.and_then(|q| crate::http::query_param(q, name)) {
                        out.extend_from_slice(v);
                    }
                }
                Part::Path => out.extend_from_slice(vars.path),
                Part::QueryString => out.extend_from_slice(vars.query.unwrap_or_default()),
                Part::Host => out.extend_from_slice(vars.host.unwrap_or_default()),
                Part::Version => out.extend_from_slice(vars.version.unwrap_or_default()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_params_query_and_builtins() {
        let t = Template::parse(
            "/internal/catalog/items/${params.id}?source=${query.ref}&h=${host}",
            &["id".to_string()],
        )
        .unwrap();
        assert!(t.has_query);
        let mut out = Vec::new();
        t.render(
            &mut out,
            &Vars {
                path: b"/api/v1/products/42",
                query: Some(b"x=1&ref=mail"),
                host: Some(b"api.example.com"),
                captures: &[b"42"],
                version: None,
            },
        );
        assert_eq!(
            out,
            b"/internal/catalog/items/42?source=mail&h=api.example.com"
        );
    }

    #[test]
    fn missing_values_render_empty() {
        let t = Template::parse("/a/${query.nope}/${path}", &[]).unwrap();
        assert!(!t.has_query);
        let mut out = Vec::new();
        t.render(
            &mut out,
            &Vars {
                path: b"/p",
                query: None,
                host: None,
                captures: &[],
                version: None,
            },
        );
        assert_eq!(out, b"/a///p");
    }

    #[test]
    fn parse_errors_are_explained() {
        assert!(Template::parse("/x/${params.id}", &[])
            .unwrap_err()
            .contains("captures nothing"));
        assert!(Template::parse("/x/${params.id}", &["sku".into()])
            .unwrap_err()
            .contains("[\"sku\"]"));
        assert!(Template::parse("/x/${bogus}", &[])
            .unwrap_err()
            .contains("unknown template variable"));
        assert!(Template::parse("/x/${path", &[])
            .unwrap_err()
            .contains("unclosed"));
    }
}
