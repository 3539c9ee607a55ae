//! The request path: read a head, decide, forward, stream the answer back, repeat while the
//! connection stays open.

mod body;
pub mod error;
mod exchange;
pub mod explain;
mod h2;
pub mod head;
mod log;
mod mirror;
mod plan;
mod side;
#[cfg(test)]
mod testio;
mod tunnel;
mod validate;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::client::{AddrSource, ClientAddr};
use crate::http::write::error_response;
use crate::http::{Framing, Method};
use crate::net::{BufConn, IoFail};
use crate::release::Reason;
use crate::worker::{View, Worker};
use error::Refusal;

/// Where a connection came from: the client's address and the listener it arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// The connection's client: its peer, or its PROXY protocol header's source.
    pub client: ClientAddr,
    pub listener: usize,
}

impl Arrival {
    fn of(peer: SocketAddr, conn: &crate::worker::ConnGuard) -> Arrival {
        let source = if conn.proxied {
            AddrSource::ProxyProtocol
        } else {
            AddrSource::Peer
        };
        Arrival {
            client: ClientAddr::of_connection(peer, source),
            listener: conn.listener,
        }
    }
}

/// What the planning phases know of the client side of one request.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    /// The connection's client; a request's may differ (a trusted proxy's forwarding
    /// headers name it).
    pub client: ClientAddr,
    pub listener: usize,
    pub tls: bool,
    /// The SNI name of a TLS connection.
    pub sni: Option<&'a str>,
    /// The verified client certificate (mTLS).
    pub client_cert: Option<&'a crate::tls::ClientCert>,
}

impl ClientSide<'_> {
    /// A plain-text client on the first listener (for `lb explain` and tests).
    pub fn plain(peer: SocketAddr) -> ClientSide<'static> {
        ClientSide {
            client: ClientAddr::of_connection(peer, AddrSource::Peer),
            listener: 0,
            tls: false,
            sni: None,
            client_cert: None,
        }
    }
}

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
    /// A gRPC call's `grpc-timeout`: the response head must have come by then (the header
    /// goes on to the backend, which bounds the rest of the call by it).
    pub grpc_deadline: Option<std::time::Duration>,
    /// A gRPC call (`content-type: application/grpc...`).
    pub grpc: bool,
    /// The API version chosen, by index into the route's versions.
    pub version: Option<u16>,
}

/// What metrics and the access log learn about one request as it goes.
#[derive(Default)]
pub struct Record {
    /// The snapshot view the request was planned with (route and cluster indexes refer to it).
    pub view: Option<std::rc::Rc<View>>,
    /// Status sent to the client; 0 if none was.
    pub status: u16,
    /// Route and cluster indexes (u32: the record lives in every connection's future).
    pub route: Option<u32>,
    pub cluster: Option<u32>,
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
    /// A fleet rate limit to check in Redis before the request goes on (`strict = true`).
    /// Boxed: the record lives in every connection's future.
    pub strict: Option<Box<crate::ratelimit::fleet::StrictCheck>>,
    /// Why the request failed, if it did past planning.
    pub error: Option<error::ProxyError>,
    /// It came over TLS.
    pub tls: bool,
    /// The client's protocol.
    pub protocol: Protocol,
    /// A gRPC call's status, as the client got it.
    pub grpc_status: Option<u32>,
    /// The client's country, with `[geoip]`.
    pub country: Option<[u8; 2]>,
    /// The request's client where a trusted proxy's forwarding header named it (and from
    /// which header); otherwise the connection's client is the request's.
    pub forwarded: Option<(std::net::IpAddr, AddrSource)>,
    /// The request was a gRPC call (`content-type: application/grpc...` over HTTP/2).
    pub grpc: bool,
    /// The API version chosen, by index into the route's versions.
    pub version: Option<u16>,
    /// How the request's validation against its API spec ended, if it was validated.
    pub validation: Option<crate::validation::Outcome>,
}

/// One request's context in the phases after planning (limits asked of Redis, validation,
/// the mirror, the attempts, lb's own answers, the log): the snapshot view it was planned
/// with, the buffer that upstream heads and lb's answers are written into, and its record,
/// what metrics and the access log learn of it. An HTTP/1.1 request and an HTTP/2 stream
/// each make one and take the same phases ([`after_plan`]) with it.
pub(crate) struct Req<'a> {
    pub view: &'a Rc<View>,
    pub out: &'a mut Vec<u8>,
    pub rec: &'a mut Record,
}

/// The phases after planning, the same for both protocols: a `strict` fleet rate limit, the
/// request's validation, its mirror copy, then the attempts on its cluster, or lb's own
/// answer. `client` is the request's side: an HTTP/1.1 connection or an HTTP/2 stream.
// A plain fn returning an async block: an async fn would keep two copies of each argument
// in the future (it is in every busy connection's).
#[allow(clippy::manual_async_fn)] // on purpose: see the comment above
pub(crate) fn after_plan<'a, 'r, C: side::Downstream>(
    w: &'a Worker,
    req: &'a mut Req<'r>,
    client: &'a mut C,
    decision: &'a mut Decision,
) -> impl std::future::Future<Output = Flow> + use<'a, 'r, C> {
    async move {
        req.rec.view = Some(req.view.clone());
        if req.rec.strict.is_some() || validate::of(req.view, decision).is_some() {
            // Boxed: only the requests that need them pay for these phases.
            if let Some(flow) = Box::pin(checks(req, client, decision)).await {
                return flow;
            }
        }
        if let Some((split, copy)) = req.rec.mirror.take() {
            let snap = &req.view.snap;
            let in_flight = snap.splits[split].state.mirror_in_flight.clone();
            mirror::send(&w.up_bufs, snap, split, copy, in_flight);
        }
        // The decision by reference, here and in the attempts: an async fn keeps two copies of
        // an argument it takes by value, and this one is in every busy connection's future.
        match *decision {
            Decision::Forward(ref plan) => exchange::proxy(w, req, client, plan).await,
            Decision::Local {
                head_len,
                keep_alive,
                status,
            } => {
                client.consume(head_len);
                req.rec.status = status;
                let timeout = req.view.snap.http.client_body_timeout;
                if client.write_all(req.out, timeout).await.is_err() || !keep_alive {
                    return Flow::Close;
                }
                Flow::Continue
            }
        }
    }
}

/// The checks some requests need before their attempts: a `strict` fleet rate limit, then
/// validation against the API's spec. `Some`: the request was answered here.
async fn checks<C: side::Downstream>(
    req: &mut Req<'_>,
    client: &mut C,
    decision: &mut Decision,
) -> Option<Flow> {
    if req.rec.strict.is_some() {
        strict_rate_limit(req, decision).await;
    }
    if validate::of(req.view, decision).is_some() {
        return validate::check(req, client, decision).await;
    }
    None
}

/// A `strict` fleet rate limit, asked of Redis now that planning is done: when it refuses,
/// the decision becomes a 429 (and the connection closes after it: the request's body, if
/// any, is not read).
async fn strict_rate_limit(req: &mut Req<'_>, decision: &mut Decision) {
    let (snap, out, rec) = (&req.view.snap, &mut *req.out, &mut *req.rec);
    let Some(check) = rec.strict.take() else {
        return;
    };
    let Some(v) = crate::ratelimit::fleet::strict(&check).await else {
        return;
    };
    snap.route_metrics[check.route].rate_limited();
    let head_len = match *decision {
        Decision::Forward(p) => p.head_len,
        Decision::Local { head_len, .. } => head_len,
    };
    rec.mirror = None;
    rec.variant = None;
    rec.status = 429;
    out.clear();
    plan::write_rate_limited(out, &v, true);
    *decision = Decision::Local {
        head_len,
        keep_alive: false,
        status: 429,
    };
}

/// The protocol a request came in with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Http1,
    H2,
}

impl Protocol {
    /// As the access log writes it.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2 => "HTTP/2",
        }
    }
}

/// A request refused before it reaches a backend, and what becomes of its connection.
#[derive(Debug, Clone, Copy)]
pub struct Reject {
    pub why: error::Refusal,
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

    /// Replaces the value of query parameter `name` in the kept target (a bearer token
    /// must not reach the access log).
    fn redact_query(&mut self, name: &str) {
        let target = &self.text[self.target_at..];
        let Some(q) = target.iter().position(|&b| b == b'?') else {
            return;
        };
        let mut out: smallvec::SmallVec<[u8; 128]> = smallvec::SmallVec::new();
        out.extend_from_slice(&target[..=q]);
        for (i, pair) in target[q + 1..].split(|&b| b == b'&').enumerate() {
            if i > 0 {
                out.push(b'&');
            }
            let key = pair.split(|&b| b == b'=').next().unwrap_or(pair);
            if key == name.as_bytes() {
                out.extend_from_slice(key);
                out.extend_from_slice(b"=REDACTED");
            } else {
                out.extend_from_slice(pair);
            }
        }
        self.text.truncate(self.target_at);
        self.text.extend_from_slice(&out);
    }
}

impl Reject {
    /// A refusal after which the connection closes.
    pub(crate) fn closing(why: error::Refusal) -> Reject {
        Reject {
            why,
            head_len: 0,
            close: true,
        }
    }

    /// A refusal after which an HTTP/2 stream's connection carries on (the stream ends).
    pub(crate) fn of_stream(why: error::Refusal) -> Reject {
        Reject {
            why,
            head_len: 0,
            close: false,
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
    /// The client speaks HTTP/2 (ALPN `h2`, or the preface on an `h2c` listener).
    H2,
}

/// How long a closing TLS connection may take to write its `close_notify`.
const CLOSE_NOTIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

/// Starts serving an accepted or resumed HTTP/1.1 connection on this worker (the worker's
/// [`crate::worker::Handler`]).
pub fn start(
    stream: TcpStream,
    peer: SocketAddr,
    mut conn: crate::worker::ConnGuard,
    head_deadline: Option<u64>,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) {
    if let Some(session) = conn.tls.take() {
        // A parked TLS connection resumes its session.
        monoio::spawn(serve(
            BufConn::with_tls(stream, Vec::new(), session),
            peer,
            conn,
            head_deadline,
        ));
        return;
    }
    // Bytes that came after a PROXY protocol header.
    let mut early = std::mem::take(&mut conn.early);
    if early.is_empty() && early.capacity() > 0 && tls.is_some() {
        conn.worker.bufs.give(std::mem::take(&mut early));
    }
    let client = match tls {
        None => BufConn::new(stream, early),
        Some(config) => match rustls::ServerConnection::new(config) {
            Ok(session) if early.is_empty() => BufConn::new_tls(stream, Vec::new(), session),
            Ok(session) => BufConn::new_tls_after(stream, Vec::new(), session, early),
            Err(e) => {
                tracing::debug!(error = %e, "TLS session could not start");
                return;
            }
        },
    };
    monoio::spawn(serve(client, peer, conn, head_deadline));
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
    client: BufConn,
    peer: SocketAddr,
    conn: crate::worker::ConnGuard,
    head_deadline: Option<u64>,
) -> impl std::future::Future<Output = ()> {
    // TCP_NODELAY comes from the listening socket (accepted sockets inherit it on Linux):
    // no setsockopt per connection.
    // Buffers are taken when bytes arrive and given back while the connection idles.
    let mut client = client;
    async move {
        let w = conn.worker.clone();
        let mut head_deadline = head_deadline;
        let at = Arrival::of(peer, &conn);
        loop {
            match step(&w, &mut client, at, head_deadline).await {
                Step::Next => head_deadline = None,
                Step::Park => {
                    // A TLS session parks with the socket, its buffers released.
                    let mut conn = conn;
                    conn.tls = client.take_tls();
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
                Step::H2 => {
                    // Its own task: the HTTP/2 state never weighs on HTTP/1.1 connections.
                    monoio::spawn(h2::serve(client, peer, conn));
                    return;
                }
            }
        }
        client.close_notify(CLOSE_NOTIFY_TIMEOUT).await;
        let (_stream, buf) = client.into_parts();
        w.bufs.give(buf);
    }
}

/// The answer to a client that does not speak HTTP/2 on a listener that speaks only that.
const HTTP2_ONLY: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: application/json\r\nContent-Length: 68\r\nConnection: close\r\n\r\n{\"error\":\"http2_only\",\"message\":\"this listener speaks only HTTP/2\"}\n";

/// Whether the listener speaks HTTP/1.1 (`protocols` names `http/1.1`, or is absent).
fn speaks_http1(w: &Worker, listener: usize) -> bool {
    w.view()
        .snap
        .config
        .listeners
        .get(listener)
        .is_none_or(|l| l.http1)
}

/// Whether a new connection's first bytes are HTTP/2 on a listener that speaks it: ALPN
/// chose `h2`, or a plain-text client opened with the HTTP/2 preface (`h2c`).
fn speaks_h2(w: &Worker, client: &BufConn, listener: usize) -> bool {
    let view = w.view();
    if !view
        .snap
        .config
        .listeners
        .get(listener)
        .is_some_and(|l| l.h2)
    {
        return false;
    }
    if client.is_tls() {
        return client.alpn() == Some(b"h2");
    }
    let data = client.data();
    let n = data.len().min(h2::PREFACE.len());
    n >= 3 && h2::PREFACE.starts_with(&data[..n])
}

/// Reads and handles one request. A busy connection sends its next request at once, so the
/// read waits a moment ([`KEEPALIVE_GRACE`]) holding a buffer; only a connection that goes
/// quiet parks without one.
async fn step(
    w: &Rc<Worker>,
    client: &mut BufConn,
    at: Arrival,
    head_deadline: Option<u64>,
) -> Step {
    if client.data().is_empty() {
        if client.buf_capacity() == 0 {
            client.set_buf(w.bufs.take());
        }
        match client.fill_or_park(KEEPALIVE_GRACE).await {
            Ok(Some(_)) => {}
            // Draining, a connection that has sent nothing yet still gets its first request
            // served: it was accepted (an upgrade's new process never saw it). Parking ends
            // with the drain, so it waits here, without a buffer until bytes come (a drain
            // may resume thousands of such connections at once).
            Ok(None) if w.draining() && head_deadline.is_some() => {
                // Boxed: a rare path that must not grow every connection's future.
                let deadline = head_deadline.unwrap_or(0);
                if !Box::pin(first_bytes_while_draining(w, client, deadline)).await {
                    return Step::Close;
                }
            }
            Ok(None) => {
                w.bufs.give(client.take_buf());
                return Step::Park;
            }
            Err(_) => return Step::Close,
        }
    }
    if head_deadline.is_some() && speaks_h2(w, client, at.listener) {
        return Step::H2;
    }
    if head_deadline.is_some() && !speaks_http1(w, at.listener) {
        // An HTTP/2-only listener: whatever this is (HTTP/1.1, or TLS without ALPN), it is
        // not HTTP/2. One clear answer, then the connection ends.
        let mut out = HTTP2_ONLY.to_vec();
        let _ = client.write_all(&mut out, CLOSE_NOTIFY_TIMEOUT).await;
        return Step::Close;
    }
    let mut out = Vec::new();
    let flow = next_request(w, client, &mut out, at, head_deadline).await;
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

/// Waits, without a read buffer, for the first bytes of a connection resumed by a drain,
/// then reads them; false if none came by `deadline` or the connection failed.
async fn first_bytes_while_draining(w: &Rc<Worker>, client: &mut BufConn, deadline: u64) -> bool {
    w.bufs.give(client.take_buf());
    let ready = crate::timer::timeout(crate::timer::until(deadline), client.readable()).await;
    if !matches!(ready, Ok(Ok(()))) {
        return false;
    }
    client.set_buf(w.bufs.take());
    client.fill(crate::timer::until(deadline)).await.is_ok()
}

async fn next_request(
    w: &Rc<Worker>,
    client: &mut BufConn,
    out: &mut Vec<u8>,
    at: Arrival,
    head_deadline: Option<u64>,
) -> Flow {
    let mut rec = Record::default();
    let flow = handle_request(w, client, out, at, head_deadline, &mut rec).await;
    if rec.status != 0 {
        log::finish(w, &rec, at.client);
    }
    flow
}

/// One HTTP/1.1 request: its head read and planned, then the phases after planning. (A
/// plain fn returning an async block, as [`after_plan`].)
#[allow(clippy::manual_async_fn)] // on purpose: see the comment above
fn handle_request<'a>(
    w: &'a Rc<Worker>,
    client: &'a mut BufConn,
    out: &'a mut Vec<u8>,
    at: Arrival,
    head_deadline: Option<u64>,
    rec: &'a mut Record,
) -> impl std::future::Future<Output = Flow> + use<'a> {
    async move {
        let (mut decision, view) = match read_head(w, client, out, at, head_deadline, rec).await {
            Ok(d) => d,
            Err(flow) => return flow,
        };
        let mut req = Req {
            view: &view,
            out,
            rec,
        };
        after_plan(w, &mut req, client, &mut decision).await
    }
}

/// Reads until a whole head is buffered and planned; returns the decision with the snapshot
/// view it was planned with. `Err`: the request was refused (answered) or the client left.
async fn read_head(
    w: &Rc<Worker>,
    client: &mut BufConn,
    out: &mut Vec<u8>,
    at: Arrival,
    head_deadline: Option<u64>,
    rec: &mut Record,
) -> Result<(Decision, Rc<View>), Flow> {
    let view = w.view();
    let http = &view.snap.http;
    // The first request's head is due by a deadline counted from accept; later ones from
    // their first byte.
    let mut deadline: Option<u64> = head_deadline;
    // The loop ends with a refusal; a planned head or a departed client returns from it.
    let refused = loop {
        if !client.data().is_empty() {
            if out.capacity() == 0 {
                *out = w.out_bufs.take();
            }
            // The snapshot is taken when the head is complete, so a request that arrives after
            // a reload follows the new config even on an old keep-alive connection.
            let current = w.view();
            rec.tls = client.is_tls();
            let side = ClientSide {
                client: at.client,
                listener: at.listener,
                tls: client.is_tls(),
                sni: client.sni(),
                client_cert: client.client_cert(),
            };
            let mut ctx = Req {
                view: &current,
                out: &mut *out,
                rec: &mut *rec,
            };
            match plan::plan_request(&mut ctx, client.data(), &side, w.access_log_on()) {
                Ok(Some(d)) => return Ok((d, current)),
                Ok(None) => {}
                Err(r) => break r,
            }
            if client.is_full() || client.data().len() >= http.max_header_bytes {
                break Reject::closing(Refusal::HeadTooLarge);
            }
        }
        let res = if client.data().is_empty() && deadline.is_none() {
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
                break Reject::closing(Refusal::HeadTimeout);
            }
            Err(_) => return Err(Flow::Close),
        }
    };
    let req = Req {
        view: &view,
        out,
        rec,
    };
    Err(reject(client, req, refused).await)
}

/// Answers a refused request and decides whether the connection survives.
async fn reject(client: &mut BufConn, mut req: Req<'_>, r: Reject) -> Flow {
    let close = r.close || r.head_len == 0;
    req.rec.started.get_or_insert_with(crate::clock::stamp);
    send_error(client, &mut req, &Reject { close, ..r }).await;
    if close {
        return Flow::Close;
    }
    client.consume(r.head_len);
    Flow::Continue
}

/// Writes a short JSON error response (`r`'s status, code and message; closing after it if
/// `r.close`). Returns false if the client is gone.
pub(crate) async fn send_error<C: side::Downstream>(
    client: &mut C,
    req: &mut Req<'_>,
    r: &Reject,
) -> bool {
    let close = r.close;
    req.rec.status = r.why.status();
    error_response(
        req.out,
        r.why.status(),
        r.why.code(),
        r.why.message(),
        close,
    );
    let ok = client
        .write_all(req.out, req.view.snap.http.client_body_timeout)
        .await
        .is_ok();
    if close && ok {
        if let Some(conn) = client.connection() {
            linger(conn).await;
        }
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
    client.shutdown_write().await;
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

    #[test]
    fn a_query_token_is_redacted_in_the_kept_target() {
        let mut rec = Record::default();
        rec.keep_text(b"GET", b"/x?a=1&access_token=eyJhbGciOi.eyJzdWIi.c2ln&b=2");
        rec.redact_query("access_token");
        assert_eq!(rec.target(), "/x?a=1&access_token=REDACTED&b=2");
        assert_eq!(rec.method(), "GET");
        rec.keep_text(b"GET", b"/plain");
        rec.redact_query("access_token");
        assert_eq!(rec.target(), "/plain");
    }

    /// The sizes `docs/architecture.md` states: a busy connection's task, and the request
    /// machinery inline in it. Growing past them costs memory on every busy connection.
    #[test]
    fn futures_stay_within_their_documented_sizes() {
        let task =
            future_size::<_, BufConn, SocketAddr, crate::worker::ConnGuard, Option<u64>, _>(serve);
        let request =
            future_size::<_, &'static Rc<Worker>, &'static mut BufConn, Arrival, Option<u64>, _>(
                step,
            );
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
