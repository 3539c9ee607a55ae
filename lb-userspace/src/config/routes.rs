//! Validation of `[[routes]]` into compiled routes: matchers, templates and regexes are built
//! here, once, and every problem is reported with its key path.

use regex::bytes::Regex;

use super::raw::{RawDeprecation, RawGone, RawHeaderOps, RawRoute};
use super::{ClusterConfig, Errors};
use crate::http::chunked::is_tchar;
use crate::routing::actions::{Action, Deprecation, HeaderOps, Rewrite};
use crate::routing::matchers::{
    HeaderCond, HostMatch, PathMatch, Pattern, QueryCond, ValueTest, MAX_CAPTURES,
};
use crate::routing::template::Template;
use crate::routing::version::{Gone, Lifecycle};
use crate::routing::{Route, RouteTimeouts};
use crate::validation::{Settings, Validation};

/// Headers a route may not set: `lb` owns connection management and framing.
pub(super) const RESERVED: [&str; 8] = [
    "connection",
    "content-length",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// What routes are validated against.
pub(super) struct RouteContext<'a> {
    pub clusters: &'a [ClusterConfig],
    pub providers: &'a [super::jwt::JwtSpec],
    /// `[geoip]` is configured.
    pub geo: bool,
}

/// An OpenAPI document compiled (and the path of its first server URL), or why not.
pub(super) type CompiledSpec = Result<(std::sync::Arc<crate::validation::Spec>, String), String>;

/// What routes are validated against, besides: where relative paths start, and the API specs
/// read so far (a spec several routes name is read and compiled once).
pub(super) struct SpecFiles<'a> {
    pub base: &'a std::path::Path,
    pub read: std::cell::RefCell<std::collections::BTreeMap<std::path::PathBuf, CompiledSpec>>,
}

/// Two-letter codes at `key` (countries or continents), upper-cased.
pub(super) fn codes<S: AsRef<str>>(list: &[S], key: &str, errs: &mut Errors) -> Vec<[u8; 2]> {
    if list.is_empty() {
        errs.push(key, "expected at least one code");
    }
    list.iter()
        .enumerate()
        .filter_map(|(j, c)| {
            let code = crate::client::geo::code(c.as_ref());
            if code.is_none() {
                errs.push(
                    format!("{key}[{j}]"),
                    format!(
                        "expected a two-letter code such as \"DE\" or \"EU\", got {:?}",
                        c.as_ref()
                    ),
                );
            }
            code
        })
        .collect()
}

pub(super) fn validate_route(
    i: usize,
    r: &RawRoute,
    ctx: &RouteContext<'_>,
    specs: &SpecFiles<'_>,
    errs: &mut Errors,
) -> Option<Route> {
    let (clusters, providers) = (ctx.clusters, ctx.providers);
    let at = |key: &str| format!("routes[{i}].{key}");
    let before = errs.0.len();

    let host = host_match(r.host.as_deref(), &at("host"), errs);
    let sni = r
        .sni
        .as_deref()
        .map(|n| host_match(Some(n), &at("sni"), errs));

    let path = validate_path(r, &at, errs);
    let client_ip = r
        .client_ip
        .as_deref()
        .and_then(|list| super::ip_set(list, &at("client_ip"), errs));

    let mut methods: Vec<String> = Vec::new();
    match (&r.method, &r.methods) {
        (Some(_), Some(_)) => errs.push(at("methods"), "set method or methods, not both"),
        (Some(m), None) => methods.push(m.clone()),
        (None, Some(ms)) => {
            if ms.is_empty() {
                errs.push(at("methods"), "expected at least one method");
            }
            methods.extend(ms.iter().cloned());
        }
        (None, None) => {}
    }
    for m in &mut methods {
        *m = m.to_ascii_uppercase();
        if m.is_empty() || !m.bytes().all(is_tchar) {
            errs.push(at("methods"), format!("{m:?} is not a method name"));
        }
    }

    let mut headers = Vec::new();
    for (j, h) in r.headers.iter().enumerate() {
        let key = at(&format!("headers[{j}]"));
        if h.name.is_empty() || !h.name.bytes().all(is_tchar) {
            errs.push(
                format!("{key}.name"),
                format!("{:?} is not a header name", h.name),
            );
        }
        let test = value_test(
            &key,
            h.equals.as_deref(),
            h.present,
            h.regex.as_deref(),
            errs,
        );
        headers.push(HeaderCond {
            name: h.name.to_ascii_lowercase(),
            test,
        });
    }
    let mut query = Vec::new();
    for (j, q) in r.query.iter().enumerate() {
        let key = at(&format!("query[{j}]"));
        if q.name.is_empty() || q.name.contains(['&', '=', '#', ' ']) {
            errs.push(
                format!("{key}.name"),
                format!("{:?} is not a query parameter name", q.name),
            );
        }
        let test = value_test(&key, q.equals.as_deref(), q.present, None, errs);
        query.push(QueryCond {
            name: q.name.as_bytes().to_vec(),
            test,
        });
    }

    let params: Vec<String> = path.param_names().to_vec();
    let route_name = r.name.clone().unwrap_or_else(|| format!("route{i}"));
    let split = r.split.as_ref().and_then(|sp| {
        super::release::validate_split(&at("split"), &route_name, sp, clusters, errs)
    });
    let validate = r
        .validate
        .as_ref()
        .and_then(|v| validation(&at("validate"), v, specs, errs));
    if r.validate.is_some() && r.cluster.is_none() && r.split.is_none() && r.versions.is_none() {
        errs.push(
            at("validate"),
            "validation only applies to routes that forward to a cluster",
        );
    }
    let versions = r.versions.as_ref().and_then(|v| {
        let on = VersionsOn {
            key: at("versions"),
            route_name: &route_name,
            clusters,
            validate: validate.as_ref(),
            specs,
        };
        versions(&on, v, errs)
    });
    let actions = usize::from(r.cluster.is_some())
        + usize::from(r.redirect.is_some())
        + usize::from(r.respond.is_some())
        + usize::from(r.split.is_some())
        + usize::from(r.versions.is_some());
    let action = if actions != 1 {
        errs.push(
            format!("routes[{i}]"),
            "set exactly one of cluster, split, versions, redirect or respond",
        );
        None
    } else if let Some(v) = &versions {
        // Planning picks the version's cluster; this is the default's, for what reads the
        // route's action alone.
        Some(Action::Forward(v.entries[v.default.unwrap_or(0)].cluster))
    } else if r.versions.is_some() {
        None
    } else if let Some(sp) = &split {
        Some(Action::Forward(sp.targets[sp.default_target].cluster))
    } else if r.split.is_some() {
        None
    } else if let Some(name) = &r.cluster {
        let idx = clusters.iter().position(|c| &c.name == name);
        if idx.is_none() {
            let known: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
            errs.push(
                at("cluster"),
                format!("no cluster named {name:?}; clusters are {known:?}"),
            );
        }
        idx.map(Action::Forward)
    } else if let Some(rd) = &r.redirect {
        let status = rd.status.unwrap_or(302);
        if ![301, 302, 303, 307, 308].contains(&status) {
            errs.push(
                at("redirect.status"),
                format!("expected 301, 302, 303, 307 or 308, got {status}"),
            );
        }
        match Template::parse(&rd.location, &params) {
            Ok(location) => Some(Action::Redirect { status, location }),
            Err(e) => {
                errs.push(at("redirect.location"), e);
                None
            }
        }
    } else if let Some(rs) = &r.respond {
        let status = rs.status.unwrap_or(200);
        if !(200..=599).contains(&status) {
            errs.push(
                at("respond.status"),
                format!("expected a status from 200 to 599, got {status}"),
            );
        }
        let content_type = rs
            .content_type
            .clone()
            .unwrap_or_else(|| "text/plain; charset=utf-8".into());
        if content_type.bytes().any(|b| b < b' ' || b == 0x7f) {
            errs.push(
                at("respond.content_type"),
                "control characters are not allowed",
            );
        }
        Some(Action::Respond {
            status,
            content_type,
            body: rs.body.clone().unwrap_or_default().into_bytes(),
        })
    } else {
        None
    };

    let rewrite = r.rewrite.as_ref().map(|rw| {
        if r.cluster.is_none() && r.split.is_none() && r.versions.is_none() {
            errs.push(at("rewrite"), "rewrite only applies to routes that forward to a cluster");
        }
        if rw.path.is_some() && (rw.strip_prefix.is_some() || rw.add_prefix.is_some()) {
            errs.push(at("rewrite"), "set rewrite.path, or strip_prefix/add_prefix, not both");
        }
        for (key, v) in [("strip_prefix", &rw.strip_prefix), ("add_prefix", &rw.add_prefix)] {
            if let Some(p) = v {
                if !valid_path(p) {
                    errs.push(at(&format!("rewrite.{key}")), format!("expected a path starting with '/' without spaces, '?' or '#', got {p:?}"));
                }
            }
        }
        let path = match rw.path.as_deref().map(|t| (t, Template::parse(t, &params))) {
            None => None,
            Some((t, Ok(tpl))) => {
                if !t.starts_with('/') {
                    errs.push(at("rewrite.path"), format!("expected a template starting with '/', got {t:?}"));
                }
                Some(tpl)
            }
            Some((_, Err(e))) => {
                errs.push(at("rewrite.path"), e);
                None
            }
        };
        Rewrite {
            strip_prefix: rw.strip_prefix.as_ref().map(|s| s.as_bytes().to_vec()),
            add_prefix: rw.add_prefix.as_ref().map(|s| s.as_bytes().to_vec()),
            path,
        }
    });

    let mut request_headers = header_ops(&at("request_headers"), r.request_headers.as_ref(), errs);
    let jwt = r.jwt.as_ref().and_then(|j| {
        let Some(provider) = providers.iter().position(|p| p.config.name == j.provider) else {
            errs.push(
                at("jwt.provider"),
                format!("no jwt_providers entry is named {:?}", j.provider),
            );
            return None;
        };
        // A stripped token never reaches the backend on this route.
        let p = &providers[provider].config;
        if p.strip_token {
            match &p.token {
                crate::client::jwt::TokenSource::Bearer => {
                    request_headers.remove.push("authorization".into())
                }
                crate::client::jwt::TokenSource::Header(h) => {
                    request_headers.remove.push(h.clone())
                }
                _ => {}
            }
        }
        Some(super::jwt::RouteJwt {
            provider,
            required: j.required.unwrap_or(true),
        })
    });
    let jwt_claims = super::jwt::claim_conds(&r.jwt_claims, &at("jwt_claims"), errs);
    let country = r
        .country
        .as_ref()
        .map_or_else(Vec::new, |c| codes(&c.list(), &at("country"), errs));
    let continent = r
        .continent
        .as_ref()
        .map_or_else(Vec::new, |c| codes(&c.list(), &at("continent"), errs));
    // The route's split and its versions' splits.
    let splits: Vec<&super::raw::RawSplit> = r
        .split
        .iter()
        .chain(r.versions.iter().flat_map(|v| {
            v.map.values().filter_map(|t| match t {
                super::raw::RawVersion::Full(f) => f.split.as_ref(),
                super::raw::RawVersion::Cluster(_) => None,
            })
        }))
        .collect();
    let uses_geo = r.country.is_some()
        || r.continent.is_some()
        || splits.iter().any(|sp| {
            sp.include
                .iter()
                .chain(&sp.exclude)
                .any(|t| t.country.is_some() || t.continent.is_some())
                || sp
                    .overrides
                    .iter()
                    .any(|o| o.country.is_some() || o.continent.is_some())
                || matches!(sp.sticky.as_deref(), Some("country" | "continent"))
        })
        || r.rate_limit.as_ref().is_some_and(|rl| rl.key == "country");
    if uses_geo && !ctx.geo {
        errs.push(
            at("country"),
            "country and continent need a [geoip] database",
        );
    }
    if !jwt_claims.is_empty() && r.jwt.is_none() {
        errs.push(
            at("jwt_claims"),
            "claim conditions need the route's jwt = { provider = \"...\" }",
        );
    }
    let uses_claims = splits.iter().any(|sp| {
        sp.sticky.as_deref().is_some_and(|k| k.starts_with("jwt:"))
            || sp.overrides.iter().any(|o| o.jwt_claim.is_some())
            || sp
                .include
                .iter()
                .chain(&sp.exclude)
                .any(|t| t.jwt_claim.is_some())
    }) || r.rate_limit.as_ref().is_some_and(|rl| {
        rl.key.starts_with("jwt:") || rl.limits.iter().any(|l| !l.when_claims.is_empty())
    });
    if uses_claims && r.jwt.is_none() {
        errs.push(
            at("jwt"),
            "the route's split or rate limit uses JWT claims: set jwt = { provider = \"...\" }",
        );
    }
    let response_headers = header_ops(&at("response_headers"), r.response_headers.as_ref(), errs);
    if r.deprecation.is_some() && r.versions.is_some() {
        errs.push(
            at("deprecation"),
            "a route with versions deprecates each version (deprecated, sunset in the map), not the route",
        );
    }
    let deprecation = r
        .deprecation
        .as_ref()
        .and_then(|d| deprecation(&at("deprecation"), d, errs))
        .map(std::sync::Arc::new);
    let timeouts = r
        .timeouts
        .as_ref()
        .map_or_else(RouteTimeouts::default, |t| {
            let mut one = |key: &str, v: &Option<String>| {
                v.as_ref().map(|_| {
                    let k = at(&format!("timeouts.{key}"));
                    let d = errs.duration(&k, v, std::time::Duration::from_secs(1));
                    if d.is_zero() {
                        errs.push(k, "expected a duration greater than zero");
                    }
                    d
                })
            };
            RouteTimeouts {
                connect: one("connect", &t.connect),
                response: one("response", &t.response),
                idle: one("idle", &t.idle),
            }
        });
    if r.timeouts.is_some() && r.cluster.is_none() && r.split.is_none() {
        errs.push(
            at("timeouts"),
            "timeouts only apply to routes that forward to a cluster",
        );
    }

    let consumer: Vec<(String, String)> = r
        .consumer
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let auth_required = match r.auth.as_deref() {
        None | Some("optional") => !consumer.is_empty(),
        Some("required") => true,
        Some(other) => {
            errs.push(
                at("auth"),
                format!("expected \"required\" or \"optional\", got {other:?}"),
            );
            false
        }
    };
    let rate_limit = r
        .rate_limit
        .as_ref()
        .and_then(|rl| super::release::validate_rate_limit(&at("rate_limit"), rl, errs));
    let metrics = r.metrics.as_deref().and_then(|m| {
        let parsed = crate::metrics::RouteSeries::parse(m);
        if parsed.is_none() {
            errs.push(
                at("metrics"),
                format!("expected \"full\", \"counters\" or \"none\", got {m:?}"),
            );
        }
        parsed
    });
    if route_name == crate::metrics::AGGREGATE_ROUTE {
        errs.push(
            at("name"),
            format!(
                "{:?} is reserved for the series of routes without their own",
                crate::metrics::AGGREGATE_ROUTE
            ),
        );
    }
    if errs.0.len() != before {
        return None;
    }
    let route_validation = validate
        .filter(|_| r.versions.is_none())
        .map(|v| std::sync::Arc::new(Validation::new(&v, &route_name, "")));
    Some(Route {
        sni,
        client_cert: r.client_cert,
        client_cert_subject: r.client_cert_subject.clone(),
        client_ip,
        strip_token: jwt
            .and_then(|j| providers.get(j.provider))
            .filter(|p| p.config.strip_token)
            .map(|p| p.config.token.clone())
            .filter(|t| {
                matches!(
                    t,
                    crate::client::jwt::TokenSource::Cookie(_)
                        | crate::client::jwt::TokenSource::Query(_)
                )
            }),
        jwt,
        jwt_claims,
        country,
        continent,
        name: route_name,
        index: i,
        host,
        path,
        methods,
        headers,
        query,
        action: action?,
        rewrite,
        request_headers,
        response_headers,
        deprecation,
        timeouts,
        auth_required,
        consumer,
        split: split.map(std::sync::Arc::new),
        rate_limit,
        metrics,
        validate: route_validation,
        versions: versions.map(std::sync::Arc::new),
    })
}

/// The largest body validation reads: it is held whole, and parsed, per request.
const MAX_VALIDATED_BODY: u64 = 16 << 20;

/// A route's or version's `validate`: its spec read and compiled, its settings checked.
fn validation(
    key: &str,
    v: &super::raw::RawValidate,
    specs: &SpecFiles<'_>,
    errs: &mut Errors,
) -> Option<Settings> {
    use crate::validation::{Mode, Oversize, Spec};
    let before = errs.0.len();
    let mode = match v.mode.as_deref() {
        None | Some("enforce") => Mode::Enforce,
        Some("report") => Mode::Report,
        Some(other) => {
            errs.push(
                format!("{key}.mode"),
                format!("expected \"enforce\" or \"report\", got {other:?}"),
            );
            Mode::Enforce
        }
    };
    let oversize = match v.oversize.as_deref() {
        None | Some("reject") => Oversize::Reject,
        Some("pass") => Oversize::Pass,
        Some(other) => {
            errs.push(
                format!("{key}.oversize"),
                format!("expected \"reject\" or \"pass\", got {other:?}"),
            );
            Oversize::Reject
        }
    };
    let max_body = match v.max_body.as_ref().map(super::units::parse_size) {
        None => 1 << 20,
        Some(Ok(n)) if n == 0 || n > MAX_VALIDATED_BODY => {
            errs.push(
                format!("{key}.max_body"),
                format!("expected a size from 1 byte to 16MiB, got {n}"),
            );
            0
        }
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            errs.push(format!("{key}.max_body"), e);
            0
        }
    };
    if let Some(p) = &v.prefix {
        if !p.is_empty() && !valid_path(p) {
            errs.push(
                format!("{key}.prefix"),
                format!("expected a path starting with '/', got {p:?}"),
            );
        }
    }
    let (spec, source, default_prefix) = match (&v.openapi, &v.schema) {
        (Some(file), None) => match openapi_spec(specs, file) {
            Ok((s, prefix)) => (s, file.clone(), prefix),
            Err(e) => {
                errs.push(format!("{key}.openapi"), e);
                return None;
            }
        },
        (None, Some(map)) if !map.is_empty() => {
            let mut list = Vec::new();
            for (method, file) in map {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    errs.push(
                        format!("{key}.schema.{method}"),
                        "expected an upper-case method such as POST",
                    );
                }
                let path = specs.base.join(file);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: cannot read the file: {e}", path.display()))
                    .and_then(|t| {
                        serde_json::from_str::<serde_json::Value>(&t)
                            .map_err(|e| format!("{}: not JSON: {e}", path.display()))
                    });
                match text {
                    Ok(schema) => list.push((method.clone(), schema)),
                    Err(e) => errs.push(format!("{key}.schema.{method}"), e),
                }
            }
            if errs.0.len() > before {
                return None;
            }
            match Spec::schemas(&list) {
                Ok(s) => {
                    let names: Vec<&str> = map.values().map(String::as_str).collect();
                    (std::sync::Arc::new(s), names.join(", "), String::new())
                }
                Err(e) => {
                    errs.push(format!("{key}.schema"), e);
                    return None;
                }
            }
        }
        _ => {
            errs.push(
                key.to_string(),
                "set openapi (a document) or schema (one per method), not both",
            );
            return None;
        }
    };
    if errs.0.len() > before {
        return None;
    }
    Some(Settings {
        spec,
        source,
        mode,
        max_body,
        oversize,
        prefix: v
            .prefix
            .clone()
            .unwrap_or(default_prefix)
            .trim_end_matches('/')
            .to_string(),
    })
}

/// The OpenAPI document at `file` (from the config's directory), read and compiled once
/// however many routes name it.
fn openapi_spec(specs: &SpecFiles<'_>, file: &str) -> CompiledSpec {
    let path = specs.base.join(file);
    let mut cache = specs.read.borrow_mut();
    cache
        .entry(path.clone())
        .or_insert_with(|| {
            let doc = crate::openapi::load(&path)?;
            let prefix = crate::validation::server_prefix(&doc);
            crate::validation::Spec::openapi(&doc)
                .map(|s| (std::sync::Arc::new(s), prefix))
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .clone()
}

/// The size up to which a warning-phase version's JSON responses get a `_deprecation`
/// member; `None` when it is off. The body is read into the backend connection's buffer
/// (64 KiB), so the cap stays under it.
fn deprecation_field(at: &str, f: &super::raw::RawVersionFull, errs: &mut Errors) -> Option<u64> {
    const MAX: u64 = 60 * 1024;
    let max = match f
        .deprecation_field_max
        .as_ref()
        .map(super::units::parse_size)
    {
        None => 32 * 1024,
        Some(Ok(n)) if (1..=MAX).contains(&n) => n,
        Some(Ok(n)) => {
            errs.push(
                format!("{at}.deprecation_field_max"),
                format!("expected a size from 1 byte to 60KiB, got {n}"),
            );
            return None;
        }
        Some(Err(e)) => {
            errs.push(format!("{at}.deprecation_field_max"), e);
            return None;
        }
    };
    if f.deprecation_field_max.is_some() && f.deprecation_field != Some(true) {
        errs.push(
            format!("{at}.deprecation_field_max"),
            "set deprecation_field = true for it to apply",
        );
    }
    if f.deprecation_field == Some(true) && f.sunset.is_none() {
        errs.push(
            format!("{at}.deprecation_field"),
            "a version without a sunset has no warning phase for the field",
        );
    }
    (f.deprecation_field == Some(true)).then_some(max)
}

/// What a route's versions are validated with.
struct VersionsOn<'a> {
    key: String,
    route_name: &'a str,
    clusters: &'a [super::ClusterConfig],
    /// The route's validation, for versions without their own.
    validate: Option<&'a Settings>,
    specs: &'a SpecFiles<'a>,
}

/// A route's `versions`.
fn versions(
    on: &VersionsOn<'_>,
    v: &super::raw::RawVersions,
    errs: &mut Errors,
) -> Option<crate::routing::version::Versions> {
    let (key, route_name, clusters) = (on.key.as_str(), on.route_name, on.clusters);
    use super::raw::RawVersion;
    use crate::routing::version::{VersionEntry, VersionSource, Versions};
    let before = errs.0.len();
    let source = VersionSource::parse(&v.from)
        .map_err(|e| errs.push(format!("{key}.from"), e))
        .ok();
    if v.map.is_empty() {
        errs.push(format!("{key}.map"), "list at least one version");
    }
    let instant = |what: String, t: &str, errs: &mut Errors| {
        humantime::parse_rfc3339(t)
            .map_err(|e| {
                errs.push(
                    what,
                    format!("expected an RFC 3339 instant such as \"2027-01-31T00:00:00Z\", got {t:?} ({e})"),
                )
            })
            .ok()
    };
    let mut entries = Vec::new();
    for (name, target) in &v.map {
        let at = format!("{key}.map.{name:?}");
        let entry_errors = errs.0.len();
        if name.is_empty()
            || name.len() > 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            errs.push(
                at.clone(),
                "a version is 1 to 32 letters, digits, '.', '_' or '-'",
            );
        }
        let mut split = None;
        let mut validate = on.validate.cloned();
        let (cluster, life) = match target {
            RawVersion::Cluster(c) => (c.as_str(), Lifecycle::default()),
            RawVersion::Full(f) => {
                if let Some(raw) = &f.validate {
                    validate = validation(&format!("{at}.validate"), raw, on.specs, errs);
                }
                let deprecated = f
                    .deprecated
                    .as_deref()
                    .and_then(|t| instant(format!("{at}.deprecated"), t, errs));
                let sunset = f
                    .sunset
                    .as_deref()
                    .and_then(|t| instant(format!("{at}.sunset"), t, errs));
                if let (Some(d), Some(s)) = (deprecated, sunset) {
                    if s < d {
                        errs.push(
                            format!("{at}.sunset"),
                            "the sunset comes before the deprecation",
                        );
                    }
                }
                if let Some(s) = &f.successor {
                    if !v.map.contains_key(s) || s == name {
                        errs.push(
                            format!("{at}.successor"),
                            format!("expected another version of this map, got {s:?}"),
                        );
                    }
                }
                if f.policy.as_deref().is_some_and(|p| !is_link_uri(p)) {
                    errs.push(
                        format!("{at}.policy"),
                        "expected a URI without spaces or angle brackets",
                    );
                }
                let life = Lifecycle {
                    deprecated,
                    sunset,
                    warning: warning_days(f.warning_days),
                    successor: f.successor.clone(),
                    policy: f.policy.clone(),
                    field_max: {
                        sunset_needed(
                            &at,
                            f.sunset.is_some(),
                            f.warning_days.is_some(),
                            f.gone.is_some(),
                            errs,
                        );
                        deprecation_field(&at, f, errs)
                    },
                    gone: gone(&at, f.gone.as_ref(), true, errs),
                };
                match (&f.cluster, &f.split) {
                    (Some(c), None) => (c.as_str(), life),
                    (None, Some(sp)) => {
                        // Unnamed, it is called `ROUTE.VERSION`.
                        split = super::release::validate_split(
                            &format!("{at}.split"),
                            &format!("{route_name}.{name}"),
                            sp,
                            clusters,
                            errs,
                        );
                        let default = split
                            .as_ref()
                            .map(|s| clusters[s.targets[s.default_target].cluster].name.as_str());
                        (default.unwrap_or(""), life)
                    }
                    _ => {
                        errs.push(at.clone(), "set exactly one of cluster or split");
                        ("", life)
                    }
                }
            }
        };
        if errs.0.len() > entry_errors {
            continue;
        }
        match clusters.iter().position(|c| c.name == cluster) {
            Some(c) => {
                let mut e = VersionEntry::new(name.clone(), c, life);
                e.split = split.map(std::sync::Arc::new);
                e.validate =
                    validate.map(|s| std::sync::Arc::new(Validation::new(&s, route_name, name)));
                entries.push(e);
            }
            None => errs.push(
                format!("{at}.cluster"),
                format!("no cluster named {cluster:?}"),
            ),
        }
    }
    let names: Vec<String> = v.map.keys().cloned().collect();
    let default = match &v.default {
        None => None,
        Some(d) => match names.iter().position(|n| n == d) {
            Some(i) => Some(i),
            None => {
                errs.push(
                    format!("{key}.default"),
                    format!("{d:?} is not one of the versions {names:?}"),
                );
                None
            }
        },
    };
    if let Some(h) = &v.echo_header {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            errs.push(format!("{key}.echo_header"), "expected a header name");
        }
    }
    if errs.0.len() > before {
        return None;
    }
    Some(Versions {
        source: source?,
        names,
        entries,
        default,
        echo: v.echo_header.clone(),
    })
}

/// An exact (`api.example.com`) or wildcard (`*.example.com`) name, lower-cased.
fn host_match(text: Option<&str>, at: &str, errs: &mut Errors) -> HostMatch {
    let Some(h) = text.filter(|h| *h != "*") else {
        return HostMatch::Any;
    };
    let h = h.to_ascii_lowercase();
    let wildcard = h.strip_prefix("*.");
    let bare = wildcard.unwrap_or(&h);
    let valid = !bare.is_empty()
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !bare.starts_with('.')
        && !bare.ends_with('.');
    if !valid {
        errs.push(
            at,
            format!(
                "expected a host name such as \"api.example.com\" or \"*.example.com\", got {h:?}"
            ),
        );
    }
    match wildcard {
        Some(suffix) => HostMatch::Suffix(format!(".{suffix}").into_bytes()),
        None => HostMatch::Exact(h.into_bytes()),
    }
}

fn valid_path(p: &str) -> bool {
    p.starts_with('/')
        && !p
            .bytes()
            .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
}

fn validate_path(r: &RawRoute, at: &dyn Fn(&str) -> String, errs: &mut Errors) -> PathMatch {
    let set = [&r.path, &r.path_prefix, &r.path_regex, &r.path_pattern]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        errs.push(
            at("path"),
            "set at most one of path, path_prefix, path_regex, path_pattern",
        );
        return PathMatch::Any;
    }
    let expect_path = |key: &str, p: &str, errs: &mut Errors| {
        if !valid_path(p) {
            errs.push(
                at(key),
                format!("expected a path starting with '/' without spaces, '?' or '#', got {p:?}"),
            );
            return;
        }
        // Requests are routed on their normal form (see `http::path`), so a path that
        // normalisation changes could never match.
        let lenient = crate::http::path::PathOptions {
            merge_slashes: false,
            escaped_slashes: crate::http::path::EscapedSlashes::Keep,
        };
        let mut scratch = Vec::new();
        match crate::http::path::normalize(p.as_bytes(), lenient, &mut scratch) {
            Ok(n) if n == p.as_bytes() => {}
            Ok(n) => errs.push(
                at(key),
                format!(
                    "requests are routed on their normalised path, so {p:?} could never match; write {:?}",
                    String::from_utf8_lossy(n)
                ),
            ),
            Err(e) => errs.push(at(key), format!("{p:?} can never match: {e}")),
        }
    };
    if let Some(p) = &r.path {
        expect_path("path", p, errs);
        PathMatch::Exact(p.as_bytes().to_vec())
    } else if let Some(p) = &r.path_prefix {
        expect_path("path_prefix", p, errs);
        if p == "/" {
            PathMatch::Any
        } else {
            PathMatch::Prefix(p.as_bytes().to_vec())
        }
    } else if let Some(p) = &r.path_pattern {
        Pattern::parse(p)
            .map(PathMatch::Pattern)
            .unwrap_or_else(|e| {
                errs.push(at("path_pattern"), e);
                PathMatch::Any
            })
    } else if let Some(re) = &r.path_regex {
        match Regex::new(re) {
            Ok(compiled) => {
                let names: Vec<String> = compiled
                    .capture_names()
                    .flatten()
                    .map(str::to_string)
                    .collect();
                if names.len() > MAX_CAPTURES {
                    errs.push(
                        at("path_regex"),
                        format!("at most {MAX_CAPTURES} named groups"),
                    );
                }
                PathMatch::Regex(compiled, names)
            }
            Err(e) => {
                errs.push(at("path_regex"), format!("invalid regex: {e}"));
                PathMatch::Any
            }
        }
    } else {
        PathMatch::Any
    }
}

fn value_test(
    key: &str,
    equals: Option<&str>,
    present: Option<bool>,
    regex: Option<&str>,
    errs: &mut Errors,
) -> ValueTest {
    let set = usize::from(equals.is_some())
        + usize::from(present.is_some())
        + usize::from(regex.is_some());
    if set != 1 {
        let options = if regex.is_some() || key.contains("headers") {
            "equals, present or regex"
        } else {
            "equals or present"
        };
        errs.push(key.to_string(), format!("set exactly one of {options}"));
        return ValueTest::Present;
    }
    if let Some(v) = equals {
        return ValueTest::Equals(v.as_bytes().to_vec());
    }
    if let Some(p) = present {
        return if p {
            ValueTest::Present
        } else {
            ValueTest::Absent
        };
    }
    match regex.map(Regex::new) {
        Some(Ok(re)) => ValueTest::Regex(re),
        Some(Err(e)) => {
            errs.push(format!("{key}.regex"), format!("invalid regex: {e}"));
            ValueTest::Present
        }
        None => ValueTest::Present,
    }
}

fn header_ops(key: &str, ops: Option<&RawHeaderOps>, errs: &mut Errors) -> HeaderOps {
    let Some(ops) = ops else {
        return HeaderOps::default();
    };
    let mut check = |what: &str, name: &str, value: Option<&str>| {
        let k = format!("{key}.{what}");
        if name.is_empty() || !name.bytes().all(is_tchar) {
            errs.push(k.clone(), format!("{name:?} is not a header name"));
        } else if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
            errs.push(
                k.clone(),
                format!("{name} is managed by lb and cannot be edited"),
            );
        }
        if value.is_some_and(|v| v.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f)) {
            errs.push(
                k,
                format!("the value of {name} contains control characters"),
            );
        }
    };
    for (n, v) in &ops.set {
        check("set", n, Some(v));
    }
    for (n, v) in &ops.append {
        check("append", n, Some(v));
    }
    for n in &ops.remove {
        check("remove", n, None);
    }
    HeaderOps {
        set: ops
            .set
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
        append: ops
            .append
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
        remove: ops.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
    }
}

fn deprecation(key: &str, d: &RawDeprecation, errs: &mut Errors) -> Option<Deprecation> {
    let instant = |what: &str, v: &str, errs: &mut Errors| {
        humantime::parse_rfc3339(v)
            .map_err(|e| errs.push(format!("{key}.{what}"), format!("expected an RFC 3339 instant such as \"2027-01-31T00:00:00Z\", got {v:?} ({e})")))
            .ok()
    };
    let since = instant("since", &d.since, errs);
    let sunset = d.sunset.as_deref().and_then(|s| instant("sunset", s, errs));
    if let (Some(a), Some(b)) = (since, sunset) {
        if b < a {
            errs.push(
                format!("{key}.sunset"),
                "the sunset comes before the deprecation",
            );
        }
    }
    for (what, v) in [("successor", &d.successor), ("link", &d.link)] {
        if v.as_deref().is_some_and(|s| !is_link_uri(s)) {
            errs.push(
                format!("{key}.{what}"),
                "expected a URI without spaces or angle brackets",
            );
        }
    }
    let gone = gone(key, d.gone.as_ref(), false, errs);
    sunset_needed(
        key,
        d.sunset.is_some(),
        d.warning_days.is_some(),
        d.gone.is_some(),
        errs,
    );
    if d.sunset.is_some() && sunset.is_none() {
        return None;
    }
    let life = Lifecycle {
        deprecated: Some(since?),
        sunset,
        warning: warning_days(d.warning_days),
        successor: None,
        policy: d.link.clone(),
        field_max: None,
        gone,
    };
    Some(Deprecation::new(life, d.successor.clone()))
}

/// A URI that can go between a `Link` header's angle brackets.
fn is_link_uri(s: &str) -> bool {
    !s.is_empty()
        && !s
            .bytes()
            .any(|b| b <= b' ' || b == b'>' || b == b'<' || b == 0x7f)
}

/// The warning phase's length: `warning_days` before the sunset (30 by default).
fn warning_days(days: Option<u32>) -> std::time::Duration {
    std::time::Duration::from_secs(86_400 * u64::from(days.unwrap_or(30)))
}

/// `warning_days` and `gone` describe the time before and after a sunset: without one they
/// would never apply.
fn sunset_needed(key: &str, sunset: bool, warning_days: bool, gone: bool, errs: &mut Errors) {
    for (set, what) in [(warning_days, "warning_days"), (gone, "gone")] {
        if set && !sunset {
            errs.push(
                format!("{key}.{what}"),
                "there is no sunset for it to apply to: set sunset",
            );
        }
    }
}

/// The operator's 410 answer: each member at most 1,024 bytes, naming only the variables
/// there are (`versioned`: a version's, with `${version}`); `type` a URI.
fn gone(key: &str, g: Option<&RawGone>, versioned: bool, errs: &mut Errors) -> Gone {
    let Some(g) = g else {
        return Gone::default();
    };
    let members = [
        ("type", &g.kind),
        ("title", &g.title),
        ("detail", &g.detail),
        ("code", &g.code),
    ];
    for (what, v) in members {
        let Some(text) = v.as_deref() else { continue };
        let at = format!("{key}.gone.{what}");
        if text.is_empty() || text.len() > 1024 {
            errs.push(at, "expected 1 to 1,024 bytes of text");
        } else if let Some(problem) = Gone::template_problem(text, versioned) {
            errs.push(at, problem);
        } else if what == "type" && !is_link_uri(text) {
            errs.push(at, "expected a URI without spaces or angle brackets");
        }
    }
    Gone {
        kind: g.kind.clone(),
        title: g.title.clone(),
        detail: g.detail.clone(),
        code: g.code.clone(),
    }
}
