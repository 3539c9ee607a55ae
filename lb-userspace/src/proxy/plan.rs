//! The planning phases of a request, from a complete head to a decision: **admit** (head and
//! target limits, then the route's rate limit), **route** (normalise the path, identify the
//! consumer, match a route, check its auth), and **plan** (deprecation, the route's action:
//! a split, the endpoint hash key, the upstream head with its rewrite and edits, mirroring;
//! or a local answer). Nothing here does IO: it reads the head and writes into `out`.

use super::error::Refusal;
use super::{head, ClientSide, Decision, Plan, Record, Reject};
use std::rc::Rc;

use crate::balancing::request_key_hash;
use crate::client::jwt::{Claims, Failure, Lookup};
use crate::config::MAX_HEADERS_LIMIT;
use crate::http::request::{self, RequestHead};
use crate::http::write::error_response;
use crate::http::{Framing, Method};
use crate::identity::Identity;
use crate::ratelimit::RateKey;
use crate::release::SplitRequest;
use crate::routing::actions::Action;
use crate::routing::matchers::{Captures, MAX_CAPTURES};
use crate::routing::template::Vars;
use crate::routing::{Route, RouteRequest};
use crate::snapshot::Snapshot;

/// A parsed head and what follows from it for every phase.
struct Head<'r, 'h, 'b> {
    req: &'r RequestHead<'h, 'b>,
    /// The whole request as buffered (for a mirror copy of a small body).
    data: &'b [u8],
    /// The request's client (resolved through trusted proxies).
    client: crate::client::ClientAddr,
    /// Where the client is, with `[geoip]`.
    geo: Option<crate::client::geo::Geo>,
    /// The SNI name of a TLS request.
    sni: Option<&'r str>,
    /// The verified client certificate (mTLS).
    client_cert: Option<&'r crate::tls::ClientCert>,
    /// An error answer must close: a body may be unread, or the client asked to close.
    close_after_error: bool,
}

impl Head<'_, '_, '_> {
    /// A refusal of this request that keeps the connection if its framing allows.
    fn refuse(&self, why: Refusal) -> Reject {
        Reject {
            why,
            head_len: self.req.head_len,
            close: self.close_after_error,
        }
    }
}

/// What the route phase found.
struct Routed<'s, 'p> {
    route: &'s Route,
    identity: Identity,
    consumer: Option<&'s [(String, String)]>,
    vars: Vars<'p>,
    /// The route's provider's verified claims, if its token verified.
    claims: Option<Rc<Claims>>,
    /// Why the token a route requires did not verify (the answer is 401).
    jwt_failure: Option<Failure>,
    /// On a versioned route, the version chosen (an index into its versions).
    version: Option<u16>,
}

/// Parses and routes the head at the front of `data`, and writes into `out` either the
/// upstream head or a complete local response. `Ok(None)`: the head is incomplete.
pub(super) fn plan_request(
    ctx: &mut super::Req<'_>,
    data: &[u8],
    client: &ClientSide<'_>,
    keep_text: bool,
) -> Result<Option<Decision>, Reject> {
    let (snap, out, rec) = (&ctx.view.snap, &mut *ctx.out, &mut *ctx.rec);
    let mut storage = crate::http::header_slots::<MAX_HEADERS_LIMIT>();
    let max_headers = snap.http.max_headers.min(MAX_HEADERS_LIMIT);
    let Some(req) = request::parse(data, &mut storage[..max_headers])
        .map_err(|e| Reject::closing(Refusal::Request(e)))?
    else {
        return Ok(None);
    };
    rec.started = Some(crate::clock::stamp());
    if keep_text {
        rec.keep_text(req.method_bytes, req.path);
    }
    let who = client
        .client
        .resolve(&snap.http.trusted_proxies, req.headers);
    if who.source != client.client.source {
        rec.forwarded = Some((who.ip, who.source));
    }
    let geo = snap.config.geo.as_ref().map(|g| g.lookup(who.ip));
    rec.country = geo.map(|g| g.country);
    let h = Head {
        req: &req,
        data,
        client: who,
        geo,
        sni: client.sni,
        client_cert: client.client_cert,
        close_after_error: req.framing != Framing::None || !req.keep_alive,
    };
    admit_head(snap, &h)?;
    if let Some(d) = acme_challenge(&h, out) {
        return Ok(Some(d));
    }
    if let Some(d) = redirect_to_https(snap, &h, client, out) {
        return Ok(Some(d));
    }
    let (raw_path, query) = RouteRequest::split_target(req.path);
    let mut scratch = Vec::new();
    let path = normalised_path(snap, &h, raw_path, &mut scratch)?;
    let mut values = [&b""[..]; MAX_CAPTURES];
    // Tokens are verified only if a route, split or limit asks, once per provider.
    let jwt = (!snap.jwt.is_empty()).then(|| Lookup::new(&snap.jwt, req.headers, query));
    let r = route(snap, &h, (path, query), &mut values, jwt.as_ref(), rec)?;
    if let Some(f) = r.jwt_failure {
        return Ok(Some(unauthorized(snap, &h, &r, f, out)));
    }
    if let Some(d) = admit_rate(snap, &h, &r, out, rec) {
        return Ok(Some(d));
    }
    plan(snap, &h, &r, out, rec).map(Some)
}

/// Admit: the head's size and its target's length.
fn admit_head(snap: &Snapshot, h: &Head<'_, '_, '_>) -> Result<(), Reject> {
    // A head that arrived whole in one read is held to the limit too (the buffer can be
    // larger than the limit after a reload lowered it).
    if h.req.head_len > snap.http.max_header_bytes {
        // The head itself is at fault: the connection closes.
        return Err(Reject::closing(Refusal::HeadTooLarge));
    }
    if h.req.path.len() > snap.http.max_uri_bytes {
        return Err(Reject::closing(Refusal::UriTooLong));
    }
    Ok(())
}

/// An ACME server checking an HTTP-01 challenge of an order lb has in progress gets the key
/// authorization, on any listener and before any route or redirect. Other requests for the
/// path go on as usual.
fn acme_challenge(h: &Head<'_, '_, '_>, out: &mut Vec<u8>) -> Option<Decision> {
    let req = h.req;
    let token = req.path.strip_prefix(crate::acme::CHALLENGE_PREFIX)?;
    if req.method != Method::Get && req.method != Method::Head {
        return None;
    }
    let answer = crate::acme::challenge_answer(token)?;
    let keep = !h.close_after_error;
    let what = head::LocalResponse {
        status: 200,
        content_type: "application/octet-stream",
        location: None,
        body: answer.as_bytes(),
    };
    head::write_bare_response(out, &what, req.method == Method::Head, keep, req.minor);
    Some(Decision::Local {
        head_len: req.head_len,
        keep_alive: keep,
        status: 200,
    })
}

/// A plain-text listener that sends everything to HTTPS answers 308 with the same host and
/// target on the HTTPS port.
fn redirect_to_https(
    snap: &Snapshot,
    h: &Head<'_, '_, '_>,
    client: &ClientSide<'_>,
    out: &mut Vec<u8>,
) -> Option<Decision> {
    let port = snap
        .config
        .listeners
        .get(client.listener)?
        .redirect_to_https?;
    if client.tls {
        return None;
    }
    let req = h.req;
    let host = req.host().unwrap_or(b"localhost");
    let mut location = Vec::with_capacity(host.len() + req.path.len() + 16);
    location.extend_from_slice(b"https://");
    location.extend_from_slice(host);
    if port != 443 {
        location.push(b':');
        location.extend_from_slice(port.to_string().as_bytes());
    }
    if req.path.first() != Some(&b'/') {
        location.push(b'/');
    }
    if req.path != b"*" {
        location.extend_from_slice(req.path);
    }
    let keep = !h.close_after_error;
    let what = head::LocalResponse {
        status: 308,
        content_type: "",
        location: Some(&location),
        body: b"",
    };
    head::write_bare_response(out, &what, req.method == Method::Head, keep, req.minor);
    Some(Decision::Local {
        head_len: req.head_len,
        keep_alive: keep,
        status: 308,
    })
}

/// The path routing, rewriting and the backend all see (see `http::path`).
fn normalised_path<'a>(
    snap: &Snapshot,
    h: &Head<'_, '_, 'a>,
    raw_path: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], Reject> {
    let normal = crate::http::path::check_target(h.req.path).and_then(|()| {
        if raw_path == b"*" {
            Ok(raw_path)
        } else {
            crate::http::path::normalize(raw_path, snap.http.path, scratch)
        }
    });
    normal.map_err(|e| h.refuse(Refusal::BadPath(e.message())))
}

/// Route: the consumer, the most specific matching route, its auth, and the template
/// variables a rewrite or redirect may use.
fn route<'s, 'p>(
    snap: &'s Snapshot,
    h: &Head<'_, '_, 'p>,
    (path, query): (&'p [u8], Option<&'p [u8]>),
    values: &'p mut [&'p [u8]; MAX_CAPTURES],
    jwt: Option<&Lookup<'_>>,
    rec: &mut Record,
) -> Result<Routed<'s, 'p>, Reject> {
    let req = h.req;
    let identity = if snap.needs_identity {
        snap.consumers.identify(req.headers, query)
    } else {
        Identity::Anonymous
    };
    let consumer = snap.consumers.metadata(identity);
    let host = req.host();
    let rreq = RouteRequest {
        host,
        path,
        query,
        method: req.method_bytes,
        headers: req.headers,
        consumer,
        sni: h.sni.map(str::as_bytes),
        client_cert: h.client_cert.map(|c| c.subject.as_bytes()),
        client_ip: h.client.ip,
        jwt,
        geo: h.geo,
    };
    let mut caps = Captures::default();
    let Some(route) = snap.routes.find(&rreq, &mut caps) else {
        return Err(h.refuse(Refusal::NoRoute));
    };
    rec.route = Some(route.index as u32);
    if route.auth_required && consumer.is_none() {
        let message = if identity == Identity::Anonymous {
            "this route needs an API key"
        } else {
            "the API key is not known"
        };
        return Err(h.refuse(Refusal::Unauthorized(message)));
    }
    let n = caps.values(path, values);
    let (mut claims, mut jwt_failure) = (None, None);
    if let Some(crate::client::jwt::TokenSource::Query(name)) = route
        .jwt
        .and_then(|j| snap.jwt.get(j.provider))
        .map(|p| &p.config.token)
    {
        rec.redact_query(name);
    }
    if let (Some(j), Some(lookup)) = (route.jwt, jwt) {
        match lookup.verdict(j.provider) {
            Ok(c) => claims = Some(c.clone()),
            // An optional token that does not verify counts as no token (and is counted).
            Err(f) if j.required => jwt_failure = Some(f),
            Err(_) => {}
        }
    }
    Ok(Routed {
        claims,
        jwt_failure,
        route,
        identity,
        consumer,
        version: None,
        vars: Vars {
            path,
            query,
            host,
            captures: &values[..n],
            version: None,
        },
    })
}

/// A route that requires a valid token got none: 401 with a `WWW-Authenticate` challenge
/// that says why (RFC 6750).
fn unauthorized(
    snap: &Snapshot,
    h: &Head<'_, '_, '_>,
    r: &Routed<'_, '_>,
    f: Failure,
    out: &mut Vec<u8>,
) -> Decision {
    let close = h.close_after_error;
    error_response(out, 401, "unauthorized", f.description(), close);
    let realm = r
        .route
        .jwt
        .and_then(|j| snap.jwt.get(j.provider))
        .map_or("lb", |p| p.config.name.as_str());
    let challenge = if f == Failure::Missing {
        format!("WWW-Authenticate: Bearer realm=\"{realm}\"\r\n")
    } else {
        format!(
            "WWW-Authenticate: Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"\r\n",
            f.description()
        )
    };
    if let Some(pos) = out.windows(4).position(|x| x == b"\r\n\r\n") {
        out.splice(pos + 2..pos + 2, challenge.bytes());
    }
    Decision::Local {
        head_len: h.req.head_len,
        keep_alive: !close,
        status: 401,
    }
}

/// Admit: the route's rate limit. `Some`: refused, with the 429 in `out`.
fn admit_rate(
    snap: &Snapshot,
    h: &Head<'_, '_, '_>,
    r: &Routed<'_, '_>,
    out: &mut Vec<u8>,
    rec: &mut Record,
) -> Option<Decision> {
    let v = match rate_limit(snap, h, r)? {
        Limited::Now(v) => v,
        Limited::Strict(check) => {
            // Asked of Redis once planning is done (a dry run asks nothing).
            if !crate::dryrun::active() {
                rec.strict = Some(Box::new(check));
            }
            return None;
        }
    };
    if v.allowed {
        return None;
    }
    if !crate::dryrun::active() {
        snap.route_metrics[r.route.index].rate_limited();
    }
    rec.status = 429;
    write_rate_limited(out, &v, h.close_after_error);
    Some(Decision::Local {
        head_len: h.req.head_len,
        keep_alive: !h.close_after_error,
        status: 429,
    })
}

/// What a route's rate limit says now: a verdict, or a strict fleet limit to ask Redis.
enum Limited {
    Now(crate::ratelimit::Verdict),
    Strict(crate::ratelimit::fleet::StrictCheck),
}

/// Looks the request up in its route's rate limit; `None` if no rule applies.
fn rate_limit(snap: &Snapshot, h: &Head<'_, '_, '_>, r: &Routed<'_, '_>) -> Option<Limited> {
    let rl = r.route.rate_limit.as_ref()?;
    let (i, rule) = rl.rules.iter().enumerate().find(|(_, x)| {
        crate::identity::metadata_matches(r.consumer, &x.when)
            && x.when_claims.iter().all(|c| c.matches(r.claims.as_deref()))
    })?;
    let mut k = crate::hash::fnv1a_of(r.route.name.as_bytes());
    k = crate::hash::fnv1a(k, &(i as u32).to_le_bytes());
    k = match &rl.key {
        RateKey::ClientIp => match h.client.ip {
            std::net::IpAddr::V4(a) => crate::hash::fnv1a(k, &a.octets()),
            std::net::IpAddr::V6(a) => crate::hash::fnv1a(k, &a.octets()),
        },
        RateKey::Header(name) => {
            let v = h
                .req
                .headers
                .iter()
                .find(|x| x.name.eq_ignore_ascii_case(name))
                .map_or(&b""[..], |x| x.value);
            crate::hash::fnv1a(k, v)
        }
        RateKey::Claim(name) => match r
            .claims
            .as_deref()
            .and_then(|c| crate::client::jwt::claim(&c.value, name))
            .and_then(crate::client::jwt::claim_text)
        {
            Some(v) => crate::hash::fnv1a(k, v.as_bytes()),
            None => crate::hash::fnv1a(k, b"\0anonymous"),
        },
        RateKey::Country => crate::hash::fnv1a(k, &h.geo.map_or(*b"--", |g| g.country)),
        RateKey::Consumer => match r.identity {
            Identity::Known(c) => crate::hash::fnv1a(k, snap.consumers.list[c].name.as_bytes()),
            _ => crate::hash::fnv1a(k, b"\0anonymous"),
        },
    };
    let key = crate::hash::mix(k);
    if rl.strict {
        return Some(Limited::Strict(crate::ratelimit::fleet::StrictCheck {
            key,
            rate: rule.rate,
            route: r.route.index,
        }));
    }
    if rl.fleet && crate::ratelimit::fleet::closed() {
        // Redis is down and the operator chose fail_closed.
        if !crate::dryrun::active() {
            crate::metrics::fleet_limit_refused();
        }
        return Some(Limited::Now(crate::ratelimit::Verdict::refused(
            rule.rate.burst,
        )));
    }
    let v = crate::ratelimit::table().check(key, rule.rate, crate::ratelimit::now_us());
    if rl.fleet && !crate::dryrun::active() {
        crate::ratelimit::fleet::note(key, &rule.rate, v.allowed);
    }
    Some(Limited::Now(v))
}

/// A 429 answer with `Retry-After` and the RateLimit headers.
pub(crate) fn write_rate_limited(out: &mut Vec<u8>, v: &crate::ratelimit::Verdict, close: bool) {
    error_response(
        out,
        429,
        "rate_limited",
        "too many requests; see Retry-After",
        close,
    );
    let lines = format!(
        "Retry-After: {}\r\nRateLimit-Limit: {}\r\nRateLimit-Remaining: {}\r\nRateLimit-Reset: {}\r\n",
        v.retry_after, v.limit, v.remaining, v.retry_after.max(v.reset)
    );
    if let Some(pos) = out.windows(4).position(|x| x == b"\r\n\r\n") {
        out.splice(pos + 2..pos + 2, lines.bytes());
    }
}

/// Plan: a route past its sunset answers 410; otherwise its action decides.
fn plan(
    snap: &Snapshot,
    h: &Head<'_, '_, '_>,
    r: &Routed<'_, '_>,
    out: &mut Vec<u8>,
    rec: &mut Record,
) -> Result<Decision, Reject> {
    if let Some(d) = &r.route.deprecation {
        let phase = d.phase(crate::routing::version::now());
        track(snap, r, &d.entry, phase);
        if phase == crate::routing::version::Phase::Sunset {
            let body = d.gone_body(&r.route.name);
            return Ok(local(h, r.route, out, 410, PROBLEM, None, &body));
        }
    }
    if let Some(v) = &r.route.versions {
        return versioned(snap, h, r, v, out, rec);
    }
    match &r.route.action {
        Action::Forward(cluster) => forward(snap, h, r, *cluster, out, rec),
        Action::Redirect { status, location } => {
            let mut target = Vec::with_capacity(64);
            location.render(&mut target, &r.vars);
            Ok(local(h, r.route, out, *status, "", Some(&target), b""))
        }
        Action::Respond {
            status,
            content_type,
            body,
        } => Ok(local(h, r.route, out, *status, content_type, None, body)),
    }
}

/// A complete answer from `lb` itself. It leaves any request body unread, so the connection
/// carries on only if there is none.
fn local(
    h: &Head<'_, '_, '_>,
    route: &Route,
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    location: Option<&[u8]>,
    body: &[u8],
) -> Decision {
    let keep = !h.close_after_error;
    let req = h.req;
    let what = head::LocalResponse {
        status,
        content_type,
        location,
        body,
    };
    head::write_local_response(
        out,
        &what,
        route,
        req.method == Method::Head,
        keep,
        req.minor,
    );
    Decision::Local {
        head_len: req.head_len,
        keep_alive: keep,
        status,
    }
}

/// Plan a forwarded request: the split's choice of cluster, the hash key, the upstream head
/// (rewrite, edits, WebSocket upgrade, A/B headers) and a mirror copy if sampled.
fn forward(
    snap: &Snapshot,
    h: &Head<'_, '_, '_>,
    r: &Routed<'_, '_>,
    default_cluster: usize,
    out: &mut Vec<u8>,
    rec: &mut Record,
) -> Result<Decision, Reject> {
    let req = h.req;
    let (cluster, variant) = choose_cluster(snap, h, r, default_cluster, rec);
    rec.cluster = Some(cluster as u32);
    let c = &snap.clusters[cluster];
    let key_hash = c
        .hash_key
        .as_ref()
        .and_then(|k| request_key_hash(k, req.headers, r.vars.path, r.vars.query, h.client.ip));
    let client = head::ClientInfo {
        ip: h.client.ip,
        hop: h.client.hop,
        tls: rec.tls,
        client_cert: h.client_cert.map(|c| c.xfcc.as_str()),
    };
    if let Err(message) =
        head::write_request_head(out, req, client, &snap.http, &c.name, r.route, &r.vars)
    {
        out.clear();
        return Err(h.refuse(Refusal::BadHead(message)));
    }
    let websocket = snap.http.websocket && is_websocket(req);
    if websocket {
        head::insert_headers(out, &[("Connection", "Upgrade"), ("Upgrade", "websocket")]);
    }
    forward_claims(snap, r, out);
    if let (Some(db), Some(g)) = (&snap.config.geo, h.geo) {
        if let Some(name) = &db.header {
            head::insert_headers(out, &[(name.as_str(), g.country())]);
        }
    }
    if let Some((si, t)) = variant {
        let split = &snap.splits[si];
        if let Some(ab) = &split.config.ab_test {
            let name = &split.config.targets[t].name;
            head::insert_headers(out, &[("X-AB-Test", ab), ("X-AB-Variant", name)]);
        }
        rec.mirror = split
            .config
            .mirror
            .as_ref()
            .and_then(|m| mirror_copy(m, si, split, out, h));
    }
    let grpc_deadline = req
        .headers
        .iter()
        .find(|x| x.name.eq_ignore_ascii_case("grpc-timeout"))
        .and_then(|x| grpc_timeout(x.value));
    let grpc = req.headers.iter().any(|x| {
        x.name.eq_ignore_ascii_case("content-type") && x.value.starts_with(b"application/grpc")
    });
    Ok(Decision::Forward(Plan {
        head_len: req.head_len,
        method: req.method,
        minor: req.minor,
        framing: req.framing,
        keep_alive: req.keep_alive,
        expect_continue: req.expect_continue,
        cluster,
        route: r.route.index,
        key_hash,
        variant,
        websocket,
        grpc_deadline,
        grpc,
        version: None,
    }))
}

/// A WebSocket upgrade (RFC 6455). Upgrade and Connection are hop-by-hop; this upgrade is
/// passed on on purpose. Other upgrades are not performed: the request goes on as plain
/// HTTP.
fn is_websocket(req: &RequestHead<'_, '_>) -> bool {
    req.conn.upgrade
        && req.method == Method::Get
        && req.minor == 1
        && req.headers.iter().any(|x| {
            x.name.eq_ignore_ascii_case("upgrade") && x.value.eq_ignore_ascii_case(b"websocket")
        })
}

/// A versioned route: the version the request asks for, or a problem+json answer that lists
/// the versions there are; then the version's lifecycle (410 past its sunset), and its
/// cluster.
fn versioned(
    snap: &Snapshot,
    h: &Head<'_, '_, '_>,
    r: &Routed<'_, '_>,
    v: &crate::routing::version::Versions,
    out: &mut Vec<u8>,
    rec: &mut Record,
) -> Result<Decision, Reject> {
    use crate::routing::version::{self, Phase};
    let i = match choose_version(h, r, v, out) {
        Ok(i) => i,
        Err(problem) => return Ok(problem),
    };
    let e = &v.entries[i];
    rec.version = Some(i as u16);
    let phase = e.life.phase(version::now());
    track(snap, r, e, phase);
    if phase == Phase::Sunset {
        let body = e.life.gone_body(&version::GoneOf {
            route: &r.route.name,
            version: Some(&e.name),
            successor: e.life.successor.as_deref(),
        });
        return Ok(problem_answer(h, r, v, 410, &body, out));
    }
    // `${version}` in the route's templates renders the version chosen.
    let chosen = Routed {
        route: r.route,
        identity: r.identity,
        consumer: r.consumer,
        vars: Vars {
            path: r.vars.path,
            query: r.vars.query,
            host: r.vars.host,
            captures: r.vars.captures,
            version: Some(e.name.as_bytes()),
        },
        claims: r.claims.clone(),
        jwt_failure: r.jwt_failure,
        version: Some(i as u16),
    };
    let mut d = forward(snap, h, &chosen, e.cluster, out, rec)?;
    if let Decision::Forward(p) = &mut d {
        p.version = Some(i as u16);
    }
    Ok(d)
}

/// The version a request asks for (or the default); `Err`: a problem+json answer, 400 (406
/// for `Accept`), that lists the versions there are.
fn choose_version(
    h: &Head<'_, '_, '_>,
    r: &Routed<'_, '_>,
    v: &crate::routing::version::Versions,
    out: &mut Vec<u8>,
) -> Result<usize, Decision> {
    use crate::routing::version::{Asked, VersionSource};
    let accept = matches!(v.source, VersionSource::Accept { .. });
    let supported = || v.names.join(", ");
    let header = |name: &str| joined_header(h, name);
    let (status, title, detail) = match v.source.asked(r.vars.path, header, r.vars.query, &v.names)
    {
        Asked::Version(i) => return Ok(i),
        Asked::Nothing => match v.default {
            Some(d) => return Ok(d),
            None => (
                400,
                "API version required",
                format!("this API needs a version; supported: {}", supported()),
            ),
        },
        Asked::Unsupported(asked) => (
            if accept { 406 } else { 400 },
            if accept {
                "Not Acceptable"
            } else {
                "Unsupported API version"
            },
            format!(
                "version {asked:?} is not supported; supported: {}",
                supported()
            ),
        ),
        Asked::Malformed => (
            400,
            "Malformed Accept header",
            "the Accept header could not be parsed as media ranges".to_string(),
        ),
    };
    let body = crate::http::write::problem(
        status,
        title,
        &detail,
        serde_json::json!({ "supported_versions": v.names, "default_version": v.default.map(|d| &v.names[d]) }),
    );
    Err(problem_answer(h, r, v, status, &body, out))
}

/// Every field named `name`, joined: a client may split `Accept` over several.
fn joined_header(h: &Head<'_, '_, '_>, name: &str) -> Option<Vec<u8>> {
    let mut joined: Option<Vec<u8>> = None;
    for x in h
        .req
        .headers
        .iter()
        .filter(|x| x.name.eq_ignore_ascii_case(name))
    {
        let j = joined.get_or_insert_with(Vec::new);
        if !j.is_empty() {
            j.extend_from_slice(b", ");
        }
        j.extend_from_slice(x.value);
    }
    joined
}

/// A versioned route's problem+json answer, `Vary` on what chose the version.
fn problem_answer(
    h: &Head<'_, '_, '_>,
    r: &Routed<'_, '_>,
    v: &crate::routing::version::Versions,
    status: u16,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Decision {
    let d = local(h, r.route, out, status, PROBLEM, None, body);
    if let Some(vary) = v.source.vary() {
        head::insert_headers(out, &[("Vary", vary)]);
    }
    d
}

/// The media type of RFC 9457 problem answers.
const PROBLEM: &str = "application/problem+json";

/// Counts a request to a version (or a deprecated route: `e` is its lifecycle's entry) in
/// `phase`; past the deprecation, also who made it. Not while explaining.
fn track(
    snap: &Snapshot,
    r: &Routed<'_, '_>,
    e: &crate::routing::version::VersionEntry,
    phase: crate::routing::version::Phase,
) {
    if crate::dryrun::active() {
        return;
    }
    e.count(&r.route.name, phase);
    if phase != crate::routing::version::Phase::Active {
        let consumer = consumer_name(snap, r);
        crate::routing::version::usage().record(&r.route.name, &e.name, &consumer);
    }
}

/// Who made a request, for the usage of deprecated APIs: the API-key consumer; else the
/// route's JWT provider's `consumer_claim` (`sub` by default); else `anonymous`.
fn consumer_name(snap: &Snapshot, r: &Routed<'_, '_>) -> String {
    if let Identity::Known(c) = r.identity {
        return snap.consumers.list[c].name.clone();
    }
    let claim = r
        .route
        .jwt
        .and_then(|j| snap.jwt.get(j.provider))
        .map_or("sub", |p| p.config.consumer_claim.as_str());
    r.claims
        .as_deref()
        .and_then(|c| crate::client::jwt::claim(&c.value, claim))
        .and_then(crate::client::jwt::claim_text)
        .map_or_else(|| "anonymous".to_string(), |t| t.to_string())
}

/// The route's provider's `forward_claims`, as headers the backend can trust (the client's
/// copies were removed with the other `owned_headers`). A scalar goes as it is, an array as
/// its scalars joined by `,`, an object as JSON.
fn forward_claims(snap: &Snapshot, r: &Routed<'_, '_>, out: &mut Vec<u8>) {
    let (Some(j), Some(claims)) = (r.route.jwt, r.claims.as_deref()) else {
        return;
    };
    let Some(p) = snap.jwt.get(j.provider) else {
        return;
    };
    for (name, header) in &p.config.forward_claims {
        let Some(v) = crate::client::jwt::claim(&claims.value, name) else {
            continue;
        };
        let text = match v {
            serde_json::Value::Array(list) => list
                .iter()
                .filter_map(crate::client::jwt::claim_text)
                .collect::<Vec<_>>()
                .join(","),
            serde_json::Value::Object(_) => v.to_string(),
            _ => crate::client::jwt::claim_text(v)
                .unwrap_or_default()
                .into_owned(),
        };
        // A claim cannot smuggle a header line, nor control characters a backend may choke on.
        if text.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            continue;
        }
        head::insert_headers(out, &[(header.as_str(), text.as_str())]);
    }
}

/// A `grpc-timeout` value: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub(crate) fn grpc_timeout(v: &[u8]) -> Option<std::time::Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The cluster a request goes to: its route's, or the target its split chooses.
fn choose_cluster(
    snap: &Snapshot,
    h: &Head<'_, '_, '_>,
    r: &Routed<'_, '_>,
    default_cluster: usize,
    rec: &mut Record,
) -> (usize, Option<(usize, usize)>) {
    let si = match r.version {
        Some(v) => snap
            .version_split
            .get(r.route.index)
            .and_then(|l| l.get(v as usize))
            .copied()
            .flatten(),
        None => snap.route_split[r.route.index],
    };
    let Some(si) = si else {
        return (default_cluster, None);
    };
    let split = &snap.splits[si];
    let sreq = SplitRequest {
        headers: h.req.headers,
        query: r.vars.query,
        client: h.client.ip,
        consumer: r.consumer,
        claims: r.claims.as_deref(),
        geo: h.geo,
    };
    let (t, reason) = split
        .config
        .choose(&split.state, &sreq, || fastrand::u32(..));
    if !crate::dryrun::active() {
        split.metrics.decisions[t].increment(1);
    }
    rec.variant = Some((si, t, reason));
    (split.config.targets[t].cluster, Some((si, t)))
}

/// A copy of the planned request for the mirror, if this request is sampled, its body is
/// whole in the buffer and small enough, and the mirror has room; otherwise it is shed.
fn mirror_copy(
    m: &crate::release::MirrorConfig,
    si: usize,
    split: &crate::snapshot::SplitRuntime,
    upstream_head: &[u8],
    h: &Head<'_, '_, '_>,
) -> Option<(usize, Vec<u8>)> {
    if crate::dryrun::active() || fastrand::u32(..crate::release::PPM) >= m.ppm {
        return None;
    }
    let (data, head_len) = (h.data, h.req.head_len);
    let body = match h.req.framing {
        Framing::None => &[][..],
        Framing::Length(n) if n <= m.max_body && data.len() - head_len >= n as usize => {
            &data[head_len..head_len + n as usize]
        }
        _ => {
            split.metrics.mirror_shed.increment(1);
            return None;
        }
    };
    let in_flight = &split.state.mirror_in_flight;
    if in_flight.load(std::sync::atomic::Ordering::Relaxed) >= m.max_in_flight as u64 {
        split.metrics.mirror_shed.increment(1);
        return None;
    }
    in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    split.metrics.mirror_sent.increment(1);
    let mut copy = Vec::with_capacity(upstream_head.len() + body.len());
    copy.extend_from_slice(upstream_head);
    copy.extend_from_slice(body);
    Some((si, copy))
}

#[cfg(test)]
mod grpc_tests {
    #[test]
    fn grpc_timeouts_parse_by_unit() {
        use std::time::Duration;
        assert_eq!(
            super::grpc_timeout(b"300m"),
            Some(Duration::from_millis(300))
        );
        assert_eq!(super::grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(super::grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(super::grpc_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(super::grpc_timeout(b"123456789S"), None, "at most 8 digits");
        assert_eq!(super::grpc_timeout(b"10x"), None);
        assert_eq!(super::grpc_timeout(b"S"), None);
    }
}
