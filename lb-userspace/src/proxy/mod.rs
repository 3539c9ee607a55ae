//! The request path: read a head, decide, forward, stream the answer back, repeat while the
//! connection stays open.

mod body;
pub mod error;
mod exchange;
pub mod explain;
pub mod head;
mod log;
mod mirror;
#[cfg(test)]
mod testio;
mod tunnel;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;

use std::time::SystemTime;

use crate::balancing::request_key_hash;
use crate::config::MAX_HEADERS_LIMIT;
use crate::http::request::{self, RequestError};
use crate::http::write::error_response;
use crate::http::{Framing, Method};
use crate::identity::{Consumers, Identity};
use crate::net::{write_buf, BufConn, IoFail};
use crate::ratelimit::{RateKey, RateLimitConfig};
use crate::release::{Reason, SplitRequest};
use crate::routing::actions::Action;
use crate::routing::matchers::{Captures, MAX_CAPTURES};
use crate::routing::template::Vars;
use crate::routing::{Route, RouteRequest};
use crate::worker::{View, Worker};

/// What the connection loop does after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
}

/// What to do with a request whose head is complete.
#[derive(Debug, Clone, Copy)]
pub enum Decision {
    /// Proxy it; the upstream head is in the output buffer.
    Forward(Plan),
    /// Answer it from `lb` itself; the whole response is in the output buffer.
    Local {
        head_len: usize,
        keep_alive: bool,
        status: u16,
    },
}

/// Everything decided from a request head, kept after the head's bytes are released.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub head_len: usize,
    pub method: Method,
    pub minor: u8,
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub cluster: usize,
    /// Index of the route in the snapshot's route list.
    pub route: usize,
    /// Hash of the consistent-hashing key, for clusters that balance by one.
    pub key_hash: Option<u64>,
    /// The split and target chosen, if the route splits.
    pub variant: Option<(usize, usize)>,
    /// A WebSocket upgrade: a 101 answer turns the connection into a tunnel.
    pub websocket: bool,
}

/// What metrics and the access log learn about one request as it goes.
#[derive(Default)]
pub struct Record {
    /// The snapshot view the request was planned with (route and cluster indexes refer to it).
    pub view: Option<std::rc::Rc<View>>,
    /// Status sent to the client; 0 if none was.
    pub status: u16,
    pub route: Option<usize>,
    pub cluster: Option<usize>,
    pub endpoint: Option<SocketAddr>,
    /// From having an upstream connection to the response head.
    pub upstream: Option<std::time::Duration>,
    /// Response body bytes sent.
    pub bytes: u64,
    /// When the request head was complete.
    pub started: Option<crate::clock::Stamp>,
    /// Method, a space and the target, kept only when the access log is on (inline up to
    /// 128 bytes: no allocation for most requests).
    text: smallvec::SmallVec<[u8; 128]>,
    /// Where the target starts in `text`.
    target_at: usize,
    /// Split index, target index and why that target.
    pub variant: Option<(usize, usize, Reason)>,
    /// A copy of the request for the split's mirror, to send once planning is done.
    pub mirror: Option<(usize, Vec<u8>)>,
    /// Why the request failed, if it did past planning.
    pub error: Option<error::ProxyError>,
}

/// A request refused before it reaches a backend.
#[derive(Debug, Clone, Copy)]
pub struct Reject {
    pub status: u16,
    pub code: &'static str,
    pub message: &'static str,
    /// Bytes of the head to consume if the connection stays open; 0 means it must close.
    pub head_len: usize,
    pub close: bool,
}

impl Record {
    /// Keeps the method and target for the access log.
    fn keep_text(&mut self, method: &[u8], target: &[u8]) {
        self.text.clear();
        self.text.extend_from_slice(method);
        self.text.push(b' ');
        self.target_at = self.text.len();
        self.text.extend_from_slice(target);
    }

    /// The request method, if kept.
    pub fn method(&self) -> &str {
        let end = self.target_at.saturating_sub(1);
        std::str::from_utf8(&self.text[..end]).unwrap_or("")
    }

    /// The request target as sent, if kept.
    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.text[self.target_at..]).unwrap_or("")
    }
}

impl Reject {
    fn from_request_error(e: RequestError) -> Reject {
        let (code, message) = match e {
            RequestError::Malformed(m) => ("bad_request", m),
            RequestError::TooManyHeaders => ("too_many_headers", "too many header fields"),
            RequestError::Expectation => (
                "expectation_failed",
                "only Expect: 100-continue is supported",
            ),
            RequestError::Connect => (
                "not_implemented",
                "CONNECT is not supported: this is a reverse proxy",
            ),
            RequestError::UnsupportedCoding => (
                "not_implemented",
                "only the chunked transfer coding is implemented",
            ),
        };
        Reject {
            status: e.status(),
            code,
            message,
            head_len: 0,
            close: true,
        }
    }
}

/// How long a keep-alive connection waits for its next request holding a read buffer before
/// it parks without one.
const KEEPALIVE_GRACE: std::time::Duration = std::time::Duration::from_millis(10);

/// What a connection does after one step of [`serve`].
enum Step {
    /// A request was handled; look for the next one at once.
    Next,
    /// No bytes came within the grace period: wait for the next request without a buffer.
    Park,
    Close,
}

/// Starts serving an accepted or resumed HTTP/1.1 connection on this worker (the worker's
/// [`crate::worker::Handler`]).
pub fn start(
    stream: TcpStream,
    peer: SocketAddr,
    conn: crate::worker::ConnGuard,
    head_deadline: Option<u64>,
) {
    monoio::spawn(serve(stream, peer, conn, head_deadline));
}

/// Serves one client connection until it closes, fails, parks, or the worker drains.
/// `head_deadline`: no request has been served on it yet, and its first head must be whole
/// by then (counted from accept, so parking does not extend it).
///
/// While busy, a connection is this task, with the request machinery ([`step`]) inline: no
/// allocation per request. When no bytes come within the grace period, the connection parks
/// (see `worker::idle`) and this task ends, so an idle connection keeps none of it; the next
/// request starts another task.
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    conn: crate::worker::ConnGuard,
    head_deadline: Option<u64>,
) -> impl std::future::Future<Output = ()> {
    // TCP_NODELAY comes from the listening socket (accepted sockets inherit it on Linux):
    // no setsockopt per connection.
    // Buffers are taken when bytes arrive and given back while the connection idles.
    let mut client = BufConn::new(stream, Vec::new());
    async move {
        let w = conn.worker.clone();
        let mut head_deadline = head_deadline;
        loop {
            match step(&w, &mut client, peer, head_deadline).await {
                Step::Next => head_deadline = None,
                Step::Park => {
                    let (stream, buf) = client.into_parts();
                    w.bufs.give(buf);
                    if w.draining() {
                        return;
                    }
                    let idle = w.view().snap.http.client_idle_timeout;
                    w.park(stream, peer, conn, head_deadline, idle);
                    return;
                }
                Step::Close => break,
            }
        }
        let (_stream, buf) = client.into_parts();
        w.bufs.give(buf);
    }
}

/// Reads and handles one request. A busy connection sends its next request at once, so the
/// read waits a moment ([`KEEPALIVE_GRACE`]) holding a buffer; only a connection that goes
/// quiet parks without one.
async fn step(
    w: &Rc<Worker>,
    client: &mut BufConn,
    peer: SocketAddr,
    head_deadline: Option<u64>,
) -> Step {
    if client.data().is_empty() {
        if client.buf_capacity() == 0 {
            client.set_buf(w.bufs.take());
        }
        match client.fill_or_park(KEEPALIVE_GRACE).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                w.bufs.give(client.take_buf());
                return Step::Park;
            }
            Err(_) => return Step::Close,
        }
    }
    let view = w.view();
    let mut out = Vec::new();
    let flow = next_request(w, &view, client, &mut out, peer, head_deadline).await;
    w.out_bufs.give(out);
    // A large body borrowed a large buffer; the next request goes back to a small one.
    if client.buf_capacity() > w.bufs.size() && client.data().len() <= w.bufs.size() {
        let large = client.swap_buf(w.bufs.take());
        w.up_bufs.give(large);
    }
    if flow == Flow::Close || w.draining() {
        Step::Close
    } else {
        Step::Next
    }
}

async fn next_request(
    w: &Rc<Worker>,
    view: &View,
    client: &mut BufConn,
    out: &mut Vec<u8>,
    peer: SocketAddr,
    head_deadline: Option<u64>,
) -> Flow {
    let mut rec = Record::default();
    let flow = handle_request(w, view, client, out, peer, head_deadline, &mut rec).await;
    if rec.status != 0 {
        log::finish(w, &rec, peer);
    }
    flow
}

#[allow(clippy::too_many_arguments)]
async fn handle_request(
    w: &Rc<Worker>,
    view: &View,
    client: &mut BufConn,
    out: &mut Vec<u8>,
    peer: SocketAddr,
    head_deadline: Option<u64>,
    rec: &mut Record,
) -> Flow {
    let http = &view.snap.http;
    // The first request's head is due by a deadline counted from accept; later ones from
    // their first byte.
    let mut deadline: Option<u64> = head_deadline;
    let decision = loop {
        if !client.data().is_empty() {
            if out.capacity() == 0 {
                *out = w.out_bufs.take();
            }
            // The snapshot is taken when the head is complete, so a request that arrives after
            // a reload follows the new config even on an old keep-alive connection.
            let current = w.view();
            match plan_request(&current, client.data(), peer, out, rec, w.access_log_on()) {
                Ok(Some(d)) => {
                    rec.view = Some(current.clone());
                    break (d, current);
                }
                Ok(None) => {}
                Err(r) => return reject(client, out, r, view, rec).await,
            }
            if client.is_full() || client.data().len() >= http.max_header_bytes {
                let r = Reject {
                    status: 431,
                    code: "header_too_large",
                    message: "request head exceeds the configured limit",
                    head_len: 0,
                    close: true,
                };
                return reject(client, out, r, view, rec).await;
            }
        }
        let waiting_idle = client.data().is_empty() && deadline.is_none();
        let res = if waiting_idle {
            // Between requests (the serve loop saw the socket readable): the idle timeout.
            client.fill_idle(&w.bufs, http.client_idle_timeout).await
        } else {
            let d = *deadline
                .get_or_insert_with(|| crate::timer::deadline_after(http.client_header_timeout));
            client.fill_idle(&w.bufs, crate::timer::until(d)).await
        };
        match res {
            Ok(_) => {
                deadline.get_or_insert_with(|| {
                    crate::timer::deadline_after(http.client_header_timeout)
                });
            }
            Err(IoFail::Timeout) if !client.data().is_empty() => {
                let r = Reject {
                    status: 408,
                    code: "request_timeout",
                    message: "the request head did not arrive in time",
                    head_len: 0,
                    close: true,
                };
                return reject(client, out, r, view, rec).await;
            }
            Err(_) => return Flow::Close,
        }
    };
    let (decision, view) = decision;
    if let Some((split, copy)) = rec.mirror.take() {
        let in_flight = view.snap.splits[split].state.mirror_in_flight.clone();
        mirror::send(w, &view.snap, split, copy, in_flight);
    }
    match decision {
        Decision::Forward(plan) => exchange::proxy(w, &view, client, out, plan, rec).await,
        Decision::Local {
            head_len,
            keep_alive,
            status,
        } => {
            client.consume(head_len);
            rec.status = status;
            let timeout = view.snap.http.client_body_timeout;
            if write_buf(&mut client.stream, out, timeout).await.is_err() || !keep_alive {
                return Flow::Close;
            }
            Flow::Continue
        }
    }
}

/// Parses and routes the head at the front of `data`, and writes into `out` either the
/// upstream head or a complete local response. `Ok(None)`: the head is incomplete.
fn plan_request(
    view: &View,
    data: &[u8],
    peer: SocketAddr,
    out: &mut Vec<u8>,
    rec: &mut Record,
    keep_text: bool,
) -> Result<Option<Decision>, Reject> {
    let snap = &view.snap;
    let mut storage = crate::http::header_slots::<MAX_HEADERS_LIMIT>();
    let max_headers = snap.http.max_headers.min(MAX_HEADERS_LIMIT);
    let Some(req) =
        request::parse(data, &mut storage[..max_headers]).map_err(Reject::from_request_error)?
    else {
        return Ok(None);
    };
    rec.started = Some(crate::clock::stamp());
    if keep_text {
        rec.keep_text(req.method_bytes, req.path);
    }
    let close_after_error = req.framing != Framing::None || !req.keep_alive;
    let refuse = |status, code, message| Reject {
        status,
        code,
        message,
        head_len: req.head_len,
        close: close_after_error,
    };
    // A head that arrived whole in one read is held to the limit too (the buffer can be
    // larger than the limit after a reload lowered it).
    if req.head_len > snap.http.max_header_bytes {
        return Err(Reject {
            status: 431,
            code: "header_too_large",
            message: "request head exceeds the configured limit",
            head_len: 0,
            close: true,
        });
    }
    if req.path.len() > snap.http.max_uri_bytes {
        return Err(Reject {
            status: 414,
            code: "uri_too_long",
            message: "the request target exceeds the configured limit",
            head_len: 0,
            close: true,
        });
    }
    let host = req.host();
    let (raw_path, query) = RouteRequest::split_target(req.path);
    // Routing, rewriting and the backend all see the normalised path (see `http::path`).
    let mut scratch = Vec::new();
    let normal = crate::http::path::check_target(req.path).and_then(|()| {
        if raw_path == b"*" {
            Ok(raw_path)
        } else {
            crate::http::path::normalize(raw_path, snap.http.path, &mut scratch)
        }
    });
    let path = match normal {
        Ok(p) => p,
        Err(e) => return Err(refuse(400, "bad_request", e.message())),
    };
    let identity = if snap.needs_identity {
        snap.consumers.identify(req.headers, query)
    } else {
        Identity::Anonymous
    };
    let consumer = snap.consumers.metadata(identity);
    let rreq = RouteRequest {
        host,
        path,
        query,
        method: req.method_bytes,
        headers: req.headers,
        consumer,
    };
    let mut caps = Captures::default();
    let Some(route) = snap.routes.find(&rreq, &mut caps) else {
        return Err(refuse(404, "no_route", "no route matches this request"));
    };
    rec.route = Some(route.index);
    if route.auth_required && consumer.is_none() {
        let message = if identity == Identity::Anonymous {
            "this route needs an API key"
        } else {
            "the API key is not known"
        };
        return Err(refuse(401, "unauthorized", message));
    }
    if let Some(rl) = &route.rate_limit {
        if let Some(v) = rate_limit(
            rl,
            route,
            &snap.consumers,
            identity,
            consumer,
            req.headers,
            peer,
        ) {
            if !v.allowed {
                snap.route_metrics[route.index].rate_limited.increment(1);
                rec.status = 429;
                write_rate_limited(out, &v, close_after_error);
                return Ok(Some(Decision::Local {
                    head_len: req.head_len,
                    keep_alive: !close_after_error,
                    status: 429,
                }));
            }
        }
    }
    let mut values = [&b""[..]; MAX_CAPTURES];
    let n = caps.values(path, &mut values);
    let vars = Vars {
        path,
        query,
        host,
        captures: &values[..n],
    };
    let is_head = req.method == Method::Head;
    // A local answer leaves any request body unread, so the connection cannot carry on.
    let local_keep = !close_after_error;
    let local =
        |out: &mut Vec<u8>, status, content_type: &str, location: Option<&[u8]>, body: &[u8]| {
            head::write_local_response(
                out,
                status,
                content_type,
                location,
                body,
                route,
                is_head,
                local_keep,
                req.minor,
            );
            Ok(Some(Decision::Local {
                head_len: req.head_len,
                keep_alive: local_keep,
                status,
            }))
        };
    if let Some(d) = &route.deprecation {
        if d.is_gone(SystemTime::now()) {
            return local(out, 410, "application/json", None, &d.gone_body());
        }
    }
    match &route.action {
        Action::Forward(default_cluster) => {
            let mut cluster = default_cluster;
            let mut variant = None;
            if let Some(si) = snap.route_split[route.index] {
                let split = &snap.splits[si];
                let sreq = SplitRequest {
                    headers: req.headers,
                    query,
                    client: peer.ip(),
                    consumer,
                };
                let (t, reason) = split
                    .config
                    .choose(&split.state, &sreq, || fastrand::u32(..));
                split.metrics.decisions[t].increment(1);
                cluster = &split.config.targets[t].cluster;
                variant = Some((si, t));
                rec.variant = Some((si, t, reason));
            }
            rec.cluster = Some(*cluster);
            let c = &snap.clusters[*cluster];
            let key_hash = c
                .hash_key
                .as_ref()
                .and_then(|k| request_key_hash(k, req.headers, path, query, peer.ip()));
            if let Err(message) =
                head::write_request_head(out, &req, peer.ip(), &snap.http, &c.name, route, &vars)
            {
                out.clear();
                return Err(refuse(400, "bad_request", message));
            }
            // Upgrade and Connection are hop-by-hop; a WebSocket upgrade is passed on on
            // purpose. Other upgrades are not performed: the request goes on as plain HTTP.
            let websocket = snap.http.websocket
                && req.conn.upgrade
                && req.method == Method::Get
                && req.minor == 1
                && req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("upgrade")
                        && h.value.eq_ignore_ascii_case(b"websocket")
                });
            if websocket {
                head::insert_headers(out, &[("Connection", "Upgrade"), ("Upgrade", "websocket")]);
            }
            if let Some((si, t)) = variant {
                let split = &snap.splits[si];
                if let Some(ab) = &split.config.ab_test {
                    head::insert_headers(
                        out,
                        &[
                            ("X-AB-Test", ab),
                            ("X-AB-Variant", &split.config.targets[t].name),
                        ],
                    );
                }
                if let Some(m) = &split.config.mirror {
                    rec.mirror = mirror_copy(m, si, split, out, data, req.head_len, req.framing);
                }
            }
            Ok(Some(Decision::Forward(Plan {
                head_len: req.head_len,
                method: req.method,
                minor: req.minor,
                framing: req.framing,
                keep_alive: req.keep_alive,
                expect_continue: req.expect_continue,
                cluster: *cluster,
                route: route.index,
                key_hash,
                variant,
                websocket,
            })))
        }
        Action::Redirect { status, location } => {
            let mut target = Vec::with_capacity(64);
            location.render(&mut target, &vars);
            local(out, *status, "", Some(&target), b"")
        }
        Action::Respond {
            status,
            content_type,
            body,
        } => local(out, *status, content_type, None, body),
    }
}

/// Looks the request up in its route's rate limit; `None` if no rule applies.
fn rate_limit(
    rl: &RateLimitConfig,
    route: &Route,
    consumers: &Consumers,
    identity: Identity,
    metadata: Option<&[(String, String)]>,
    headers: &[httparse::Header<'_>],
    peer: SocketAddr,
) -> Option<crate::ratelimit::Verdict> {
    let (i, rule) = rl
        .rules
        .iter()
        .enumerate()
        .find(|(_, r)| crate::identity::metadata_matches(metadata, &r.when))?;
    let mut h = crate::hash::fnv1a_of(route.name.as_bytes());
    h = crate::hash::fnv1a(h, &(i as u32).to_le_bytes());
    h = match &rl.key {
        RateKey::ClientIp => match peer.ip() {
            std::net::IpAddr::V4(a) => crate::hash::fnv1a(h, &a.octets()),
            std::net::IpAddr::V6(a) => crate::hash::fnv1a(h, &a.octets()),
        },
        RateKey::Header(name) => {
            let v = headers
                .iter()
                .find(|x| x.name.eq_ignore_ascii_case(name))
                .map_or(&b""[..], |x| x.value);
            crate::hash::fnv1a(h, v)
        }
        RateKey::Consumer => match identity {
            Identity::Known(c) => crate::hash::fnv1a(h, consumers.list[c].name.as_bytes()),
            _ => crate::hash::fnv1a(h, b"\0anonymous"),
        },
    };
    Some(crate::ratelimit::table().check(
        crate::hash::mix(h),
        rule.rate,
        crate::ratelimit::now_us(),
    ))
}

/// A 429 answer with `Retry-After` and the RateLimit headers.
fn write_rate_limited(out: &mut Vec<u8>, v: &crate::ratelimit::Verdict, close: bool) {
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

/// A copy of the planned request for the mirror, if this request is sampled, its body is
/// whole in the buffer and small enough, and the mirror has room; otherwise it is shed.
fn mirror_copy(
    m: &crate::release::MirrorConfig,
    si: usize,
    split: &crate::snapshot::SplitRuntime,
    upstream_head: &[u8],
    data: &[u8],
    head_len: usize,
    framing: Framing,
) -> Option<(usize, Vec<u8>)> {
    if fastrand::u32(..crate::release::PPM) >= m.ppm {
        return None;
    }
    let body = match framing {
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

/// Answers a refused request and decides whether the connection survives.
async fn reject(
    client: &mut BufConn,
    out: &mut Vec<u8>,
    r: Reject,
    view: &View,
    rec: &mut Record,
) -> Flow {
    let close = r.close || r.head_len == 0;
    rec.started.get_or_insert_with(crate::clock::stamp);
    send_error(client, out, r.status, r.code, r.message, close, view, rec).await;
    if close {
        return Flow::Close;
    }
    client.consume(r.head_len);
    Flow::Continue
}

/// Writes a short JSON error response. Returns false if the client is gone.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_error(
    client: &mut BufConn,
    out: &mut Vec<u8>,
    status: u16,
    code: &str,
    message: &str,
    close: bool,
    view: &View,
    rec: &mut Record,
) -> bool {
    rec.status = status;
    error_response(out, status, code, message, close);
    let ok = write_buf(&mut client.stream, out, view.snap.http.client_body_timeout)
        .await
        .is_ok();
    if close && ok {
        linger(client).await;
    }
    ok
}

/// Closing a socket with unread input makes the kernel send a reset, which can destroy the
/// answer before the client reads it. So: send FIN, then read and discard what the client is
/// still sending, within bounds, as nginx's lingering close does.
async fn linger(client: &mut BufConn) {
    const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);
    const LINGER_READ: std::time::Duration = std::time::Duration::from_millis(500);
    const LINGER_BYTES: usize = 4 << 20;
    let _ = client.stream.shutdown().await;
    let until = Instant::now() + LINGER_TIME;
    let mut discarded = 0;
    while discarded < LINGER_BYTES && Instant::now() < until {
        let n = client.data().len();
        client.consume(n);
        discarded += n;
        if client.fill(LINGER_READ).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<F, A, B, C, D, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// The sizes `docs/architecture.md` states: a busy connection's task, and the request
    /// machinery inline in it. Growing past them costs memory on every busy connection.
    #[test]
    fn futures_stay_within_their_documented_sizes() {
        let task = future_size::<_, TcpStream, SocketAddr, crate::worker::ConnGuard, Option<u64>, _>(
            serve,
        );
        let request = future_size::<
            _,
            &'static Rc<Worker>,
            &'static mut BufConn,
            SocketAddr,
            Option<u64>,
            _,
        >(step);
        eprintln!("connection task {task} B, request machinery {request} B");
        assert!(
            task <= 4096,
            "a connection task's future grew to {task} bytes"
        );
        assert!(
            request <= 3840,
            "the request future grew to {request} bytes"
        );
    }
}
