//! Writing the head that goes upstream and the head that goes back to the client.

use std::net::IpAddr;

use crate::config::{ClientAddressHeaders, HttpConfig};
use crate::http::request::RequestHead;
use crate::http::response::ResponseHead;
use crate::http::write::{push_dec, push_header, push_status_line};
use crate::http::{is_hop_by_hop, Framing};
use crate::routing::template::Vars;
use crate::routing::Route;

/// What lb knows of the client it tells the backend: its address and whether it came over
/// TLS (`X-Forwarded-Proto`).
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo<'a> {
    /// The client's address (through trusted proxies).
    pub ip: IpAddr,
    /// The connection's address: the hop lb saw, which `append` mode adds to the chain.
    pub hop: IpAddr,
    pub tls: bool,
    /// `X-Forwarded-Client-Cert` for a verified client certificate (mTLS).
    pub client_cert: Option<&'a str>,
}

/// The origin-form target: the normalised path and query, or the route's rewrite of them.
/// A rewrite may insert raw query values or the host, so its path is refused unless it is in
/// normal form itself: a backend that normalises must not climb out of the rewrite's prefix.
fn write_target(
    out: &mut Vec<u8>,
    route: &Route,
    vars: &Vars<'_>,
    http: &HttpConfig,
) -> Result<(), &'static str> {
    let Some(rw) = &route.rewrite else {
        out.extend_from_slice(vars.path);
        match (vars.query, &route.strip_token) {
            (Some(q), Some(crate::client::jwt::TokenSource::Query(name))) => {
                push_query_without(out, q, name.as_bytes())
            }
            (Some(q), _) => {
                out.push(b'?');
                out.extend_from_slice(q);
            }
            (None, _) => {}
        }
        return Ok(());
    };
    let start = out.len();
    rw.write_target(out, vars);
    let target = &out[start..];
    let path_end = target
        .iter()
        .position(|&b| b == b'?')
        .unwrap_or(target.len());
    let path = &target[..path_end];
    let mut scratch = Vec::new();
    match crate::http::path::normalize(path, http.path, &mut scratch) {
        Ok(n) if n == path => Ok(()),
        _ => Err("the rewritten path is not in normal form (it would resolve elsewhere)"),
    }
}

/// `?query` without the parameters named `name` (a token lb verified and the backend must
/// not see); nothing if none is left.
fn push_query_without(out: &mut Vec<u8>, query: &[u8], name: &[u8]) {
    let mut first = true;
    for pair in query.split(|&b| b == b'&') {
        let key = pair.split(|&b| b == b'=').next().unwrap_or(pair);
        if key == name {
            continue;
        }
        out.push(if first { b'?' } else { b'&' });
        out.extend_from_slice(pair);
        first = false;
    }
}

/// A `Cookie` field value without the cookie named `name`; `None` if none is left.
fn cookie_without(value: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let kept: Vec<&[u8]> = value
        .split(|&b| b == b';')
        .map(<[u8]>::trim_ascii)
        .filter(|c| {
            !c.is_empty() && c.split(|&b| b == b'=').next().map(<[u8]>::trim_ascii) != Some(name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join(&b"; "[..]))
}

/// Client-sent headers that claim to say who the client is or how it connected. A backend
/// cannot tell them from lb's own, so they are removed (`X-Forwarded-For` is kept only in
/// append mode). Names are compared with `_` read as `-`: CGI and WSGI servers map both
/// spellings to the same variable.
const CLIENT_ADDRESS_HEADERS: [&[u8]; 14] = [
    b"x-real-ip",
    b"forwarded",
    b"x-client-ip",
    b"true-client-ip",
    b"x-cluster-client-ip",
    b"cf-connecting-ip",
    b"fastly-client-ip",
    b"x-original-forwarded-for",
    b"x-forwarded",
    b"x-forwarded-port",
    b"x-forwarded-server",
    b"x-forwarded-prefix",
    b"x-forwarded-proto",
    b"x-forwarded-host",
];

/// Headers some frameworks (Symfony, IIS) let override the request path: a client must not
/// pick the path the backend serves after lb routed another. Always removed.
const PATH_OVERRIDE_HEADERS: [&[u8]; 3] = [
    b"x-original-url",
    b"x-rewrite-url",
    // Only lb says which client certificate was verified.
    b"x-forwarded-client-cert",
];

/// `name` equals `want` (lower case, with `-`) ignoring case and reading `_` as `-`.
fn same_header(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len()
        && name.iter().zip(want).all(|(&a, &b)| {
            let a = if a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            };
            a == b
        })
}

/// True if only lb writes this header (a forwarded JWT claim).
fn is_owned(name: &[u8], http: &HttpConfig) -> bool {
    !http.owned_headers.is_empty()
        && http
            .owned_headers
            .iter()
            .any(|o| same_header(name, o.as_bytes()))
}

/// True if a client-sent header of this name is removed under `http`'s policy.
fn is_untrusted_client_address(name: &[u8], http: &HttpConfig) -> bool {
    if same_header(name, b"x-forwarded-for") {
        return http.client_address_headers == ClientAddressHeaders::Replace;
    }
    CLIENT_ADDRESS_HEADERS
        .iter()
        .chain(PATH_OVERRIDE_HEADERS.iter())
        .any(|h| same_header(name, h))
}

/// Writes the request head for the backend into `out`: origin-form target (the normalised
/// path that routing saw, or the route's rewrite of it), hop-by-hop headers removed, framing
/// recomputed, client-address headers handled as configured, `X-Forwarded-*` and `Via` added
/// as configured. `default_host` is sent as `Host` when the client gave none (HTTP/1.0).
/// The route's request header edits apply. Fails if a rewrite produced a dot segment, which
/// a backend would resolve outside the rewrite's prefix.
pub fn write_request_head(
    out: &mut Vec<u8>,
    req: &RequestHead<'_, '_>,
    client: ClientInfo<'_>,
    http: &HttpConfig,
    default_host: &str,
    route: &Route,
    vars: &Vars<'_>,
) -> Result<(), &'static str> {
    out.clear();
    out.extend_from_slice(req.method_bytes);
    out.push(b' ');
    write_target(out, route, vars, http)?;
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let ops = &route.request_headers;
    let mut has_host = false;
    for h in req.headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name)
            || req.conn.names(name)
            || ops.drops(name)
            || is_untrusted_client_address(name, http)
            || is_owned(name, http)
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"host") {
            if req.authority.is_some() {
                continue;
            }
            has_host = true;
        }
        if let Some(crate::client::jwt::TokenSource::Cookie(c)) = &route.strip_token {
            if name.eq_ignore_ascii_case(b"cookie") {
                if let Some(rest) = cookie_without(h.value, c.as_bytes()) {
                    push_header(out, name, &rest);
                }
                continue;
            }
        }
        push_header(out, name, h.value);
    }
    if !has_host && !ops.set.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        if let Some(authority) = req.authority {
            push_header(out, b"Host", authority);
        } else {
            // HTTP/1.0 without Host: the backend still needs one to be HTTP/1.1.
            push_header(out, b"Host", default_host.as_bytes());
        }
    }
    if http.x_forwarded {
        push_forwarded(out, req, &client, http);
    }
    if let Some(xfcc) = client.client_cert {
        push_header(out, b"X-Forwarded-Client-Cert", xfcc.as_bytes());
    }
    push_via(out, req.minor, http);
    ops.write_added(out);
    match req.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_dec(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {}
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// `X-Forwarded-For`, `-Proto` and `-Host`.
#[inline]
fn push_forwarded(
    out: &mut Vec<u8>,
    req: &RequestHead<'_, '_>,
    client: &ClientInfo<'_>,
    http: &HttpConfig,
) {
    // Appended as its own field line: list semantics make it the last hop in the chain.
    out.extend_from_slice(b"X-Forwarded-For: ");
    // `replace`: only lb's word, the client it resolved. `append`: the chain the client
    // sent goes on, and lb adds the hop it saw.
    push_ip(
        out,
        if http.client_address_headers == ClientAddressHeaders::Append {
            client.hop
        } else {
            client.ip
        },
    );
    out.extend_from_slice(if client.tls {
        &b"\r\nX-Forwarded-Proto: https\r\n"[..]
    } else {
        &b"\r\nX-Forwarded-Proto: http\r\n"[..]
    });
    if let Some(host) = req.authority.or(req.host_header) {
        push_header(out, b"X-Forwarded-Host", host);
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    use std::io::Write;
    match ip {
        // Every request carries one: no formatting machinery for the common case.
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_dec(out, u64::from(octet));
            }
        }
        // Bare, as nginx, Envoy and cloud balancers write it (brackets trip parsers such as
        // Go's `net.ParseIP`); `Forwarded` is the header that quotes and brackets.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Adds `Via: 1.x <pseudonym>` (the version of the message received), if configured.
fn push_via(out: &mut Vec<u8>, minor: u8, http: &HttpConfig) {
    if let Some(via) = &http.via {
        out.extend_from_slice(if minor == 0 {
            b"Via: 1.0 "
        } else {
            b"Via: 1.1 "
        });
        out.extend_from_slice(via.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// How the response body goes to the client, decided with the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponsePlan {
    pub chunked_out: bool,
    /// A warning-phase version's JSON object response gets a `_deprecation` member: the
    /// body is read whole (it has a length, under the version's cap).
    pub deprecation_field: bool,
    /// The client connection stays open after this response.
    pub client_keep_alive: bool,
}

/// Writes the response head for the client into `out` and decides the body encoding.
/// `client_minor` is the client's HTTP minor version; `keep_alive` whether the client (and
/// `lb`) want the connection kept.
pub fn write_response_head(
    out: &mut Vec<u8>,
    res: &ResponseHead<'_, '_>,
    client_minor: u8,
    keep_alive: bool,
    http: &HttpConfig,
    route: &Route,
) -> ResponsePlan {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    push_dec(out, res.status as u64);
    out.push(b' ');
    out.extend_from_slice(res.reason);
    out.extend_from_slice(b"\r\n");
    let ops = &route.response_headers;
    for h in res.headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) || res.conn.names(name) || ops.drops(name) {
            continue;
        }
        push_header(out, name, h.value);
    }
    write_route_extras(out, route);
    push_via(out, res.minor, http);
    let mut keep = keep_alive;
    let mut chunked_out = false;
    match res.framing {
        Framing::None => {
            if let Some(n) = res.content_length {
                out.extend_from_slice(b"Content-Length: ");
                push_dec(out, n);
                out.extend_from_slice(b"\r\n");
            }
        }
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_dec(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked | Framing::UntilClose => {
            if client_minor >= 1 {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                chunked_out = true;
            } else {
                // An HTTP/1.0 client only understands a body that runs to close.
                keep = false;
            }
        }
    }
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ResponsePlan {
        deprecation_field: false,
        chunked_out,
        client_keep_alive: keep,
    }
}

/// Writes the `101 Switching Protocols` answer to a WebSocket upgrade: the backend's headers
/// with `Connection: Upgrade` and `Upgrade: websocket` kept.
pub fn write_switching_protocols(out: &mut Vec<u8>, res: &ResponseHead<'_, '_>, http: &HttpConfig) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(res.reason);
    out.extend_from_slice(b"\r\n");
    for h in res.headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) || res.conn.names(name) {
            continue;
        }
        push_header(out, name, h.value);
    }
    push_via(out, res.minor, http);
    out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
}

/// Inserts header lines before the blank line that ends the head in `out`, without a
/// temporary buffer: appended at the end, then rotated into place.
pub fn insert_headers(out: &mut Vec<u8>, headers: &[(&str, &str)]) {
    let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let at = end + 2;
    let before = out.len();
    for (n, v) in headers {
        push_header(out, n.as_bytes(), v.as_bytes());
    }
    let added = out.len() - before;
    out[at..].rotate_right(added);
}

/// The route's response header additions and deprecation headers (with a `Warning` in the
/// last days before its sunset).
fn write_route_extras(out: &mut Vec<u8>, route: &Route) {
    route.response_headers.write_added(out);
    if let Some(d) = &route.deprecation {
        out.extend_from_slice(&d.header_lines);
        if d.phase(crate::routing::version::now()) == crate::routing::version::Phase::Warning {
            out.extend_from_slice(&d.warning_line);
        }
    }
}

/// A response `lb` makes itself: its status, and the body with its type, or a redirect's
/// location.
pub struct LocalResponse<'a> {
    pub status: u16,
    pub content_type: &'a str,
    pub location: Option<&'a [u8]>,
    pub body: &'a [u8],
}

/// Writes a complete response produced by `lb` itself (redirect, direct response, 410).
/// `body` is left out for HEAD requests; its length is still announced.
pub fn write_local_response(
    out: &mut Vec<u8>,
    what: &LocalResponse<'_>,
    route: &Route,
    head_request: bool,
    keep_alive: bool,
    client_minor: u8,
) {
    write_local(
        out,
        what,
        Some(route),
        head_request,
        keep_alive,
        client_minor,
    );
}

/// Like [`write_local_response`], for an answer given before any route matched (the
/// HTTPS redirect of a plain listener).
pub fn write_bare_response(
    out: &mut Vec<u8>,
    what: &LocalResponse<'_>,
    head_request: bool,
    keep_alive: bool,
    client_minor: u8,
) {
    write_local(out, what, None, head_request, keep_alive, client_minor);
}

fn write_local(
    out: &mut Vec<u8>,
    what: &LocalResponse<'_>,
    route: Option<&Route>,
    head_request: bool,
    keep_alive: bool,
    client_minor: u8,
) {
    let LocalResponse {
        status,
        content_type,
        location,
        body,
    } = *what;
    out.clear();
    push_status_line(out, status);
    if let Some(l) = location {
        push_header(out, b"Location", l);
    }
    if !body.is_empty() {
        push_header(out, b"Content-Type", content_type.as_bytes());
    }
    if let Some(route) = route {
        write_route_extras(out, route);
    }
    out.extend_from_slice(b"Content-Length: ");
    push_dec(out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{request, response};
    use std::path::Path;

    #[test]
    fn client_addresses_are_written_in_their_usual_forms() {
        for (ip, text) in [
            ("0.0.0.0", "0.0.0.0"),
            ("10.200.3.255", "10.200.3.255"),
            ("2001:db8::1", "2001:db8::1"),
        ] {
            let mut out = Vec::new();
            push_ip(&mut out, ip.parse().expect("address"));
            assert_eq!(String::from_utf8_lossy(&out), text);
        }
    }

    /// A route with no edits.
    fn plain_route() -> Route {
        Route {
            sni: None,
            client_cert: None,
            client_cert_subject: None,
            client_ip: None,
            jwt: None,
            jwt_claims: Vec::new(),
            strip_token: None,
            country: Vec::new(),
            continent: Vec::new(),
            name: String::new(),
            index: 0,
            host: crate::routing::matchers::HostMatch::Any,
            path: crate::routing::matchers::PathMatch::Any,
            methods: Vec::new(),
            headers: Vec::new(),
            query: Vec::new(),
            action: crate::routing::actions::Action::Forward(0),
            rewrite: None,
            request_headers: Default::default(),
            response_headers: Default::default(),
            deprecation: None,
            timeouts: Default::default(),
            auth_required: false,
            consumer: Vec::new(),
            split: None,
            rate_limit: None,
            metrics: None,
            versions: None,
            validate: None,
        }
    }

    fn http() -> HttpConfig {
        let c =
            crate::config::Config::parse("[[listeners]]\naddr = \"127.0.0.1:0\"\n", Path::new("t"))
                .unwrap();
        c.http
    }

    fn upstream_head(raw: &[u8]) -> String {
        let mut storage = crate::http::header_slots::<32>();
        let req = request::parse(raw, &mut storage).unwrap().unwrap();
        let mut out = Vec::new();
        let (path, query) = crate::routing::RouteRequest::split_target(req.path);
        let vars = Vars {
            path,
            query,
            host: None,
            captures: &[],
            version: None,
        };
        write_request_head(
            &mut out,
            &req,
            ClientInfo {
                ip: "10.1.2.3".parse().unwrap(),
                hop: "10.1.2.3".parse().unwrap(),
                tls: false,
                client_cert: None,
            },
            &http(),
            "orders",
            &plain_route(),
            &vars,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_head_is_cleaned_and_annotated() {
        let head = upstream_head(
            b"POST /x HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\n\
              X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nX-Keep: y\r\n\r\n",
        );
        assert_eq!(
            head,
            "POST /x HTTP/1.1\r\nHost: shop\r\nX-Keep: y\r\n\
             X-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: shop\r\nVia: 1.1 lb\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn client_address_headers_are_replaced_or_appended_to() {
        let raw =
            b"GET /x HTTP/1.1\r\nHost: shop\r\nX-Forwarded-For: 1.1.1.1\r\nX-Real-IP: 1.1.1.1\r\n\
                    Forwarded: for=1.1.1.1\r\nTrue-Client-IP: 1.1.1.1\r\nConnection: Host\r\n\r\n";
        let head = upstream_head(raw);
        assert!(!head.contains("1.1.1.1"), "{head}");
        assert!(
            head.contains("Host: shop\r\n"),
            "Connection: Host dropped it: {head}"
        );
        let mut storage = crate::http::header_slots::<32>();
        let req = request::parse(raw, &mut storage).unwrap().unwrap();
        let mut http = http();
        http.client_address_headers = ClientAddressHeaders::Append;
        let vars = Vars {
            path: b"/x",
            query: None,
            host: None,
            captures: &[],
            version: None,
        };
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            &req,
            ClientInfo {
                ip: "10.1.2.3".parse().unwrap(),
                hop: "10.1.2.3".parse().unwrap(),
                tls: false,
                client_cert: None,
            },
            &http,
            "orders",
            &plain_route(),
            &vars,
        )
        .unwrap();
        let head = String::from_utf8(out).unwrap();
        let xff: Vec<_> = head
            .lines()
            .filter(|l| l.starts_with("X-Forwarded-For"))
            .collect();
        assert_eq!(
            xff,
            ["X-Forwarded-For: 1.1.1.1", "X-Forwarded-For: 10.1.2.3"]
        );
        assert!(
            !head.contains("X-Real-IP") && !head.contains("Forwarded: for"),
            "{head}"
        );
    }

    #[test]
    fn http10_and_absolute_form() {
        let head = upstream_head(b"GET /a HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
        assert!(
            head.starts_with("GET /a HTTP/1.1\r\nHost: orders\r\n"),
            "{head}"
        );
        assert!(head.contains("Via: 1.0 lb\r\n"));
        assert!(head.contains("Content-Length: 0\r\n"));
        let head = upstream_head(b"GET http://api.example.com?q=1 HTTP/1.1\r\nHost: other\r\n\r\n");
        assert!(head.starts_with("GET /?q=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Host: api.example.com\r\n"));
        assert!(!head.contains("other"));
    }

    fn client_head(raw: &[u8], minor: u8, keep: bool) -> (String, ResponsePlan) {
        let mut storage = crate::http::header_slots::<32>();
        let res = response::parse(raw, &mut storage, false).unwrap().unwrap();
        let mut out = Vec::new();
        let plan = write_response_head(&mut out, &res, minor, keep, &http(), &plain_route());
        (String::from_utf8(out).unwrap(), plan)
    }

    #[test]
    fn response_reframing() {
        let (h, p) = client_head(b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n", 1, true);
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nServer: x\r\nVia: 1.0 lb\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        assert!(p.chunked_out && p.client_keep_alive);
        let (h, p) = client_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            0,
            true,
        );
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nVia: 1.1 lb\r\nConnection: close\r\n\r\n"
        );
        assert!(!p.chunked_out && !p.client_keep_alive);
        let (h, _) = client_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n",
            0,
            true,
        );
        assert!(
            h.ends_with("Content-Length: 2\r\nConnection: keep-alive\r\n\r\n"),
            "{h}"
        );
    }
}
