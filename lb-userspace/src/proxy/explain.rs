//! `lb explain`: what `lb` would do with one request, through the same planning code the
//! workers run.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use super::plan::plan_request;
use super::{Decision, Record};
use crate::client::{AddrSource, ClientAddr};
use crate::http::request;
use crate::routing::RouteRequest;
use crate::snapshot::Snapshot;
use crate::worker::make_view;

/// The request to explain.
pub struct ExplainRequest {
    pub method: String,
    /// `http://host[:port]/path?query` or `/path?query`.
    pub url: String,
    /// `Name: value` lines.
    pub headers: Vec<String>,
    pub client: SocketAddr,
    /// As an HTTP/2 request: the URL's authority is `:authority`, and the head goes through
    /// the HTTP/2 translation the workers apply (connection-specific fields refused, cookies
    /// joined, a differing Host refused).
    pub http2: bool,
}

/// What `lb` decided, as text for people and as fields for tests.
pub struct Explanation {
    pub text: String,
    pub route: Option<String>,
    pub cluster: Option<String>,
    /// The request line and headers that would go upstream, or the local response.
    pub output: String,
    pub status: Option<u16>,
    /// The client address lb used, and where it came from (`peer`, `x-forwarded-for`...).
    pub client: String,
    pub client_source: &'static str,
}

/// Builds the raw request head for `req`.
pub fn raw_head(req: &ExplainRequest) -> Result<Vec<u8>, String> {
    if req.http2 {
        return h2_head(req);
    }
    let (host, target) = match req
        .url
        .strip_prefix("http://")
        .or_else(|| req.url.strip_prefix("https://"))
    {
        Some(rest) => match rest.find(['/', '?']) {
            Some(i) => (Some(&rest[..i]), rest[i..].to_string()),
            None => (Some(rest), "/".to_string()),
        },
        None => (None, req.url.clone()),
    };
    let target = if target.starts_with('?') {
        format!("/{target}")
    } else {
        target
    };
    let mut head = format!("{} {target} HTTP/1.1\r\n", req.method);
    let has_host = req
        .headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"));
    match (host, has_host) {
        (Some(h), false) => head.push_str(&format!("Host: {h}\r\n")),
        (None, false) => return Err("give a full URL (http://host/path) or a Host header".into()),
        _ => {}
    }
    for h in &req.headers {
        if !h.contains(':') {
            return Err(format!("header {h:?} is not `Name: value`"));
        }
        head.push_str(h.trim());
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    Ok(head.into_bytes())
}

/// The head an HTTP/2 stream with `req`'s method, URL and fields becomes.
fn h2_head(req: &ExplainRequest) -> Result<Vec<u8>, String> {
    let mut b = http::Request::builder()
        .method(req.method.as_str())
        .uri(req.url.as_str());
    for h in &req.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header {h:?} is not `Name: value`"))?;
        b = b.header(name.trim().to_ascii_lowercase(), value.trim());
    }
    let (parts, ()) = b
        .body(())
        .map_err(|e| format!("not a valid HTTP/2 request: {e}"))?
        .into_parts();
    let mut head = Vec::new();
    super::h2::request_head(&parts, super::h2::Body1::None, &mut head)
        .map_err(|e| format!("as HTTP/2, the request is refused with 400: {e}"))?;
    Ok(head)
}

/// Explains `req` against `snap`.
pub fn explain(snap: Arc<Snapshot>, req: &ExplainRequest) -> Result<Explanation, String> {
    let raw = raw_head(req)?;
    let view = Rc::new(make_view(snap.clone(), 0));
    let mut text = String::new();
    let mut out = Vec::new();
    let mut rec = Record::default();
    let mut ctx = super::Req {
        view: &view,
        out: &mut out,
        rec: &mut rec,
    };
    let decision = plan_request(&mut ctx, &raw, &super::ClientSide::plain(req.client), true);

    let mut client = ClientAddr::of_connection(req.client, AddrSource::Peer);
    if let Some((ip, source)) = rec.forwarded {
        client.ip = ip;
        client.source = source;
    }
    describe_client(&snap, &client, &mut text);
    route_verdicts(
        &snap,
        &raw,
        rec.route.map(|r| r as usize),
        client,
        &mut text,
    );

    let route = rec
        .route
        .and_then(|i| snap.routes.routes().get(i as usize))
        .map(|r| r.name.clone());
    let cluster = rec
        .cluster
        .and_then(|i| snap.clusters.get(i as usize))
        .map(|c| c.name.clone());
    let output = String::from_utf8_lossy(&out).into_owned();
    let status = describe_decision(&snap, &decision, &output, &mut text)?;
    Ok(Explanation {
        text,
        route,
        cluster,
        output,
        status,
        client: client.ip.to_string(),
        client_source: client.source.label(),
    })
}

/// What planning decided, for people: the cluster and what goes upstream, lb's own answer,
/// or the refusal; the status lb answers with itself, if it does.
fn describe_decision(
    snap: &Snapshot,
    decision: &Result<Option<Decision>, super::Reject>,
    output: &str,
    text: &mut String,
) -> Result<Option<u16>, String> {
    Ok(match decision {
        Ok(Some(Decision::Forward(plan))) => {
            let c = &snap.clusters[plan.cluster];
            let _ = writeln!(
                text,
                "\ncluster: {} ({:?}, {} endpoints)",
                c.name,
                c.balancer,
                c.endpoints.len()
            );
            if let Some(h) = plan.key_hash {
                let _ = writeln!(text, "hash key present: {h:016x}");
            }
            let route = &snap.routes.routes()[plan.route];
            if let (Some(i), Some(v)) = (plan.version, &route.versions) {
                let e = &v.entries[i as usize];
                let phase = e.life.phase(crate::routing::version::now());
                let _ = writeln!(text, "API version: {} ({})", e.name, phase.name());
            }
            let _ = writeln!(text, "\nsent upstream:\n{}", indent(output));
            None
        }
        Ok(Some(Decision::Local { status, .. })) => {
            let _ = writeln!(
                text,
                "\nanswered by lb itself ({status}):\n{}",
                indent(output)
            );
            Some(*status)
        }
        Ok(None) => return Err("the request head is incomplete".into()),
        Err(r) => {
            let why = r.why;
            let _ = writeln!(
                text,
                "\nrefused: {} {} ({})",
                why.status(),
                why.code(),
                why.message()
            );
            Some(why.status())
        }
    })
}

/// Which client address lb used, and why.
fn describe_client(snap: &Snapshot, client: &ClientAddr, text: &mut String) {
    let hop = client.hop;
    let why = match client.source {
        AddrSource::Peer if snap.http.trusted_proxies.contains(hop) => {
            "the peer, a trusted proxy, sent no forwarding header".to_string()
        }
        AddrSource::Peer if snap.http.trusted_proxies.is_empty() => {
            "the peer (no trusted_proxies are set)".to_string()
        }
        AddrSource::Peer => format!(
            "the peer, which is not in trusted_proxies ({}): its forwarding headers are not believed",
            snap.http.trusted_proxies
        ),
        AddrSource::ProxyProtocol => "the connection's PROXY protocol header".to_string(),
        AddrSource::XForwardedFor | AddrSource::Forwarded => format!(
            "the rightmost hop of {} that is not a trusted proxy; the peer {hop} is in trusted_proxies",
            client.source.label()
        ),
    };
    let _ = writeln!(text, "client: {} ({why})", client.ip);
}

/// Why each route did or did not match `raw`, for people: the normal path, the consumer, then
/// a line per route.
fn route_verdicts(
    snap: &Snapshot,
    raw: &[u8],
    chosen: Option<usize>,
    client: ClientAddr,
    text: &mut String,
) {
    let mut storage = crate::http::header_slots::<64>();
    let mut scratch = Vec::new();
    if let Ok(Some(parsed)) = request::parse(raw, &mut storage) {
        let (raw_path, query) = RouteRequest::split_target(parsed.path);
        // Routing sees the normal form; say so when it differs from what was sent.
        let path = match crate::http::path::normalize(raw_path, snap.http.path, &mut scratch) {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(
                    text,
                    "path: {} is refused: {e}",
                    String::from_utf8_lossy(raw_path)
                );
                raw_path
            }
        };
        if path != raw_path {
            let _ = writeln!(
                text,
                "path: {} (normalised from {})",
                String::from_utf8_lossy(path),
                String::from_utf8_lossy(raw_path)
            );
        }
        let identity = snap.consumers.identify(parsed.headers, query);
        let jwt = (!snap.jwt.is_empty())
            .then(|| crate::client::jwt::Lookup::new(&snap.jwt, parsed.headers, query));
        if let Some(lookup) = &jwt {
            describe_tokens(snap, lookup, text);
        }
        let geo = snap.config.geo.as_ref().map(|g| g.lookup(client.ip));
        if let Some(g) = geo {
            let how = if g.found {
                "from the database"
            } else {
                "not in the database: the default"
            };
            let (country, continent) = (g.country(), g.continent());
            let _ = writeln!(text, "country: {country} (continent {continent}, {how})");
        }
        let rreq = RouteRequest {
            geo,
            jwt: jwt.as_ref(),
            host: parsed.host(),
            path,
            query,
            method: parsed.method_bytes,
            headers: parsed.headers,
            consumer: snap.consumers.metadata(identity),
            sni: None,
            client_cert: None,
            client_ip: client.ip,
        };
        if let crate::identity::Identity::Known(c) = identity {
            let _ = writeln!(text, "consumer: {}", snap.consumers.list[c].name);
        }
        let _ = writeln!(text, "routes (in declaration order):");
        for r in snap.routes.routes() {
            let chosen = chosen == Some(r.index);
            let verdict = match (chosen, r.mismatch(&rreq)) {
                (true, _) => "MATCHED (most specific)".to_string(),
                (false, None) => "matches, but a more specific route wins".to_string(),
                (false, Some(why)) => format!("no: {why}"),
            };
            let _ = writeln!(text, "  [{}] {:<24} {verdict}", r.index, r.name);
        }
    }
}

/// Each JWT provider's verdict on the request's token.
fn describe_tokens(snap: &Snapshot, lookup: &crate::client::jwt::Lookup<'_>, text: &mut String) {
    for (i, p) in snap.jwt.iter().enumerate() {
        let verdict = match lookup.verdict(i) {
            Ok(c) => format!("valid, claims {}", c.value),
            Err(crate::client::jwt::Failure::Missing) => "no token".to_string(),
            Err(f) => format!("refused: {}", f.description()),
        };
        let _ = writeln!(text, "jwt {}: {verdict}", p.config.name);
    }
}

/// The head a worker would send upstream for the raw request head `raw`, if it would forward
/// it: the same planning code, for tests and the differential fuzz target.
pub fn forwarded_head(snap: Arc<Snapshot>, raw: &[u8]) -> Option<Vec<u8>> {
    let view = Rc::new(make_view(snap, 0));
    let mut out = Vec::new();
    let mut rec = Record::default();
    let client = SocketAddr::from(([127, 0, 0, 1], 40000));
    let mut ctx = super::Req {
        view: &view,
        out: &mut out,
        rec: &mut rec,
    };
    match plan_request(&mut ctx, raw, &super::ClientSide::plain(client), false) {
        Ok(Some(Decision::Forward(_))) => Some(out),
        _ => None,
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}
