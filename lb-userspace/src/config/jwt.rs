//! `[[jwt_providers]]`, route `jwt` and claim conditions, validated.

use std::path::Path;
use std::time::Duration;

use super::raw::{RawClaimCond, RawJwtProvider};
use super::Errors;
use crate::client::jwt::{
    fetch::Fetch, keys::parse_jwks, Alg, ClaimCond, ClaimTest, Key, KeySet, KeySource,
    ProviderConfig, TokenSource,
};

/// How often a JWKS URL is fetched when nothing asks sooner: IdPs rotate keys over days and
/// publish the next one ahead.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(600);
/// The least time between fetches an unknown `kid` can cause: a flood of made-up kids must
/// not become a flood of fetches.
pub const DEFAULT_JWKS_MIN_REFETCH: Duration = Duration::from_secs(30);
/// Clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// The algorithms a provider allows unless it says.
const DEFAULT_ALGORITHMS: [Alg; 3] = [Alg::RS256, Alg::ES256, Alg::EdDSA];

/// A provider as loaded: its settings, and keys already read (a JWKS file, a secret) or how
/// to fetch them (a URL).
#[derive(Debug, Clone)]
pub struct JwtSpec {
    pub config: ProviderConfig,
    pub keys: Option<KeySet>,
    pub fetch: Option<Fetch>,
}

pub use crate::client::jwt::RouteJwt;

pub(super) fn validate_providers(
    raw: &[RawJwtProvider],
    base: &Path,
    errs: &mut Errors,
) -> Vec<JwtSpec> {
    let mut out: Vec<JwtSpec> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let at = |k: &str| format!("jwt_providers[{i}].{k}");
        if p.name.is_empty() || out.iter().any(|o| o.config.name == p.name) {
            errs.push(
                at("name"),
                format!("expected a unique, non-empty name, got {:?}", p.name),
            );
            continue;
        }
        let before = errs.0.len();
        let mut algorithms = Vec::new();
        for (j, a) in p.algorithms.iter().flatten().enumerate() {
            match Alg::parse(a) {
                Some(a) => algorithms.push(a),
                None => errs.push(
                    format!("jwt_providers[{i}].algorithms[{j}]"),
                    format!(
                        "expected one of {}, got {a:?} (\"none\" is never accepted)",
                        Alg::ALL.map(Alg::name).join(", ")
                    ),
                ),
            }
        }
        if p.algorithms.is_none() {
            algorithms = DEFAULT_ALGORITHMS.to_vec();
        } else if algorithms.is_empty() && errs.0.len() == before {
            errs.push(at("algorithms"), "expected at least one algorithm");
        }
        let hmac = algorithms.iter().any(|a| a.is_hmac());
        let sources = [
            p.jwks_file.is_some(),
            p.jwks_url.is_some(),
            p.secret_file.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if sources != 1 {
            errs.push(
                at("jwks_file"),
                "set exactly one of jwks_file, jwks_url or secret_file",
            );
        }
        if hmac && p.secret_file.is_none() {
            errs.push(
                at("algorithms"),
                "HS256/384/512 need a secret_file (a JWKS never supplies secrets)",
            );
        }
        if p.secret_file.is_some() && algorithms.iter().any(|a| !a.is_hmac()) {
            errs.push(
                at("algorithms"),
                "a secret_file verifies only HS256/384/512: list only those",
            );
        }
        let leeway = errs.duration(&at("leeway"), &p.leeway, DEFAULT_LEEWAY);
        let token = match p.token.as_deref() {
            None | Some("bearer") => TokenSource::Bearer,
            Some(t) => match t.split_once(':') {
                Some(("header", n)) if !n.is_empty() => TokenSource::Header(n.to_ascii_lowercase()),
                Some(("cookie", n)) if !n.is_empty() => TokenSource::Cookie(n.to_string()),
                Some(("query", n)) if !n.is_empty() => TokenSource::Query(n.to_string()),
                _ => {
                    errs.push(at("token"), format!("expected \"bearer\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\", got {t:?}"));
                    TokenSource::Bearer
                }
            },
        };
        let strip_token = p.strip_token.unwrap_or(false);
        let consumer_claim = p.consumer_claim.clone().unwrap_or_else(|| "sub".into());
        if consumer_claim.is_empty() {
            errs.push(
                at("consumer_claim"),
                "expected a claim name, such as \"client_id\"",
            );
        }
        let mut forward_claims = Vec::new();
        for (claim, header) in &p.forward_claims {
            if header.is_empty() || !header.bytes().all(crate::http::chunked::is_tchar) {
                errs.push(
                    format!("jwt_providers[{i}].forward_claims.{claim}"),
                    format!("{header:?} is not a header name"),
                );
            } else if owned_name_reserved(header) {
                errs.push(
                    format!("jwt_providers[{i}].forward_claims.{claim}"),
                    format!("{header:?} is a header lb or the client owns; name a header of your own, such as X-User-Id"),
                );
            }
            forward_claims.push((claim.clone(), header.to_ascii_lowercase()));
        }
        let mut keys = None;
        let mut fetch = None;
        let source = if let Some(f) = &p.jwks_file {
            let path = base.join(f);
            match std::fs::read(&path) {
                Err(e) => errs.push(at("jwks_file"), format!("{}: {e}", path.display())),
                Ok(text) => match parse_jwks(&text, &algorithms) {
                    Err(e) => errs.push(at("jwks_file"), format!("{}: {e}", path.display())),
                    Ok(set) if set.keys.is_empty() => errs.push(
                        at("jwks_file"),
                        format!(
                            "{}: no key for the allowed algorithms{}",
                            path.display(),
                            set.problems
                                .iter()
                                .map(|p| format!("; {p}"))
                                .collect::<String>()
                        ),
                    ),
                    Ok(set) => keys = Some(set),
                },
            }
            KeySource::File(path)
        } else if let Some(f) = &p.secret_file {
            let path = base.join(f);
            match std::fs::read(&path) {
                Err(e) => errs.push(at("secret_file"), format!("{}: {e}", path.display())),
                Ok(s) => {
                    let s = s.trim_ascii().to_vec();
                    if s.len() < 32 {
                        errs.push(
                            at("secret_file"),
                            "an HMAC secret must be at least 32 bytes",
                        );
                    }
                    keys = Some(KeySet {
                        keys: vec![Key::secret(s, &algorithms)],
                        skipped: 0,
                        problems: Vec::new(),
                    });
                }
            }
            KeySource::Secret
        } else {
            let url = p.jwks_url.clone().unwrap_or_default();
            if let Some(rest) = url.strip_prefix("http://") {
                // Keys fetched in the clear can be swapped by anyone on the path, and with
                // them every token: plain http only from this host.
                let host = rest.split(['/', '?']).next().unwrap_or("");
                let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let loopback = host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    errs.push(
                        at("jwks_url"),
                        format!("{url:?}: keys must be fetched over https:// (plain http:// only from this host)"),
                    );
                }
            } else if !url.starts_with("https://") {
                errs.push(
                    at("jwks_url"),
                    format!("expected an https:// URL, got {url:?}"),
                );
            }
            let refresh = errs.duration(&at("jwks_refresh"), &p.jwks_refresh, DEFAULT_JWKS_REFRESH);
            let min_refetch = errs.duration(
                &at("jwks_min_refetch"),
                &p.jwks_min_refetch,
                DEFAULT_JWKS_MIN_REFETCH,
            );
            if refresh < Duration::from_secs(10) {
                errs.push(at("jwks_refresh"), "expected at least \"10s\"");
            }
            if min_refetch < Duration::from_secs(1) {
                errs.push(
                    at("jwks_min_refetch"),
                    "expected at least \"1s\": unknown kids must not become a flood of fetches",
                );
            }
            let tls = crate::upstream::tls::client_config(
                &crate::upstream::tls::UpstreamTls {
                    ca: p.jwks_ca.clone(),
                    server_name: None,
                    client_cert: None,
                    verify: true,
                },
                base,
                b"http/1.1",
            );
            match tls {
                Ok(t) => {
                    fetch = Some(Fetch {
                        url: url.clone(),
                        refresh,
                        min_refetch,
                        tls: t.config,
                        ca: p.jwks_ca.clone(),
                        algorithms: algorithms.clone(),
                    })
                }
                Err(e) => errs.push(at("jwks_ca"), e),
            }
            KeySource::Url {
                url,
                refresh,
                min_refetch,
                ca: p.jwks_ca.clone(),
            }
        };
        out.push(JwtSpec {
            config: ProviderConfig {
                name: p.name.clone(),
                issuer: p.issuer.clone(),
                audiences: p.audiences.clone(),
                algorithms,
                leeway,
                token,
                keys: source,
                forward_claims,
                strip_token,
                consumer_claim,
            },
            keys,
            fetch,
        });
    }
    out
}

/// Names a header lb writes from a claim or a lookup must not take: framing and connection
/// management, and what every request carries from the client.
pub(super) fn owned_name_reserved(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    super::routes::RESERVED.contains(&n.as_str())
        || [
            "host",
            "authorization",
            "cookie",
            "content-type",
            "x-forwarded-for",
            "forwarded",
            "via",
        ]
        .contains(&n.as_str())
}

/// Claim conditions at `key`.
pub(super) fn claim_conds(list: &[RawClaimCond], key: &str, errs: &mut Errors) -> Vec<ClaimCond> {
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let test = match (&c.equals, &c.contains, c.present) {
            (Some(v), None, None) => ClaimTest::Equals(v.clone()),
            (None, Some(v), None) => ClaimTest::Contains(v.clone()),
            (None, None, Some(p)) => ClaimTest::Present(p),
            _ => {
                errs.push(
                    format!("{key}[{i}]"),
                    "set exactly one of equals, contains or present",
                );
                continue;
            }
        };
        if c.name.is_empty() {
            errs.push(format!("{key}[{i}].name"), "expected a claim name");
        }
        out.push(ClaimCond {
            name: c.name.clone(),
            test,
        });
    }
    out
}
