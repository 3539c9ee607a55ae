//! HTTP/2 to backends (`[[clusters]] protocol = "h2"` over TLS with ALPN, or `"h2c"`):
//! multiplexed connections per worker and endpoint, each carrying up to
//! `max_streams_per_connection` streams, and a per-request adapter ([`H2Up`]) that the
//! exchange reads and writes like an HTTP/1.1 connection:
//! - in: the HTTP/1.1 request lb wrote (head, then a body by `Content-Length` or chunked,
//!   chunked trailers included) becomes HEADERS, DATA and trailers;
//! - out: the response becomes an HTTP/1.1 head and body: by `Content-Length` when the
//!   backend sent one, else chunked, with the backend's trailers (gRPC's `grpc-status`) as
//!   the chunked trailer section.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use http::HeaderMap;
use rustc_hash::FxHashMap;

use crate::h2io::{trailer_field, FlowFail, CONNECTION_SPECIFIC};
use crate::http::chunked::{ChunkedDecoder, Step};
use crate::http::write::push_hex;
use crate::net::{IoFail, Sink, Source};

/// Largest request head lb writes upstream.
const MAX_HEAD: usize = 64 * 1024;

/// One multiplexed connection.
struct Conn {
    send: SendRequest<Bytes>,
    streams: Rc<Cell<usize>>,
    /// When its last stream ended, in [`crate::timer::now_ms`] milliseconds.
    idle_since: Rc<Cell<u64>>,
    idle_timeout: Duration,
    alive: Rc<Cell<bool>>,
}

/// A stream's place on its connection, given back when the exchange ends.
pub struct Slot {
    streams: Rc<Cell<usize>>,
    idle_since: Rc<Cell<u64>>,
    /// The connection's: cleared when the backend refuses new streams on it (GOAWAY), so
    /// the pool hands it out no more while its streams in flight finish.
    alive: Rc<Cell<bool>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let n = self.streams.get().saturating_sub(1);
        self.streams.set(n);
        if n == 0 {
            self.idle_since.set(crate::timer::now_ms());
        }
    }
}

/// The HTTP/2 connections of one worker, by endpoint and pool key.
#[derive(Default)]
pub struct H2Pool {
    conns: RefCell<FxHashMap<(SocketAddr, u64), Vec<Conn>>>,
}

impl H2Pool {
    /// A stream on a live connection to `addr` with fewer than `max` streams open, and
    /// fewer than the backend allows (its SETTINGS_MAX_CONCURRENT_STREAMS).
    pub fn checkout(
        &self,
        addr: SocketAddr,
        key: u64,
        max: usize,
    ) -> Option<(SendRequest<Bytes>, Slot)> {
        let mut all = self.conns.borrow_mut();
        let list = all.get_mut(&(addr, key))?;
        list.retain(|c| c.alive.get());
        let c = list
            .iter()
            .find(|c| c.streams.get() < max.min(c.send.current_max_send_streams()))?;
        c.streams.set(c.streams.get() + 1);
        Some((
            c.send.clone(),
            Slot {
                streams: c.streams.clone(),
                idle_since: c.idle_since.clone(),
                alive: c.alive.clone(),
            },
        ))
    }

    /// Lets connections idle past their timeout go: their handles are dropped and h2 closes
    /// them.
    pub fn sweep(&self) {
        let now = crate::timer::now_ms();
        self.conns.borrow_mut().retain(|_, list| {
            list.retain(|c| {
                c.alive.get()
                    && (c.streams.get() > 0
                        || now.saturating_sub(c.idle_since.get())
                            < c.idle_timeout.as_millis() as u64)
            });
            !list.is_empty()
        });
    }

    /// Adds a new connection (its driver task runs until it ends) and takes a stream on it.
    pub fn add(
        &self,
        addr: SocketAddr,
        key: u64,
        send: SendRequest<Bytes>,
        alive: Rc<Cell<bool>>,
        idle_timeout: Duration,
    ) -> Slot {
        let streams = Rc::new(Cell::new(1));
        let idle_since = Rc::new(Cell::new(crate::timer::now_ms()));
        let slot = Slot {
            streams: streams.clone(),
            idle_since: idle_since.clone(),
            alive: alive.clone(),
        };
        self.conns
            .borrow_mut()
            .entry((addr, key))
            .or_default()
            .push(Conn {
                send,
                streams,
                idle_since,
                idle_timeout,
                alive,
            });
        slot
    }

    /// Forgets connections to endpoints not in `keep` (their tasks end as the backend or
    /// idleness closes them) and dead ones.
    pub fn retain_endpoints(&self, keep: &[SocketAddr]) {
        self.conns.borrow_mut().retain(|(addr, _), list| {
            list.retain(|c| c.alive.get());
            keep.contains(addr) && !list.is_empty()
        });
    }

    /// Forgets every connection (drain).
    pub fn clear(&self) {
        self.conns.borrow_mut().clear();
    }
}

/// How a stream is opened: the pool's limits, and whether a pooled connection may carry it.
pub struct StreamOpts {
    /// Streams one connection carries at most (`max_streams_per_connection`).
    pub max_streams: usize,
    /// A connection with no stream this long is let go (`pool_idle_timeout`).
    pub idle_timeout: Duration,
    /// On a new connection only (the pooled one refused the stream).
    pub fresh: bool,
}

/// A stream to the endpoint `dial` names: on a pooled HTTP/2 connection with room, or on a
/// new one (TCP, TLS with ALPN `h2` for `protocol = "h2"`, the HTTP/2 handshake), all
/// within `timeout`. A new connection's driver runs as its own task until the connection
/// ends; it counts as one open connection of the endpoint meanwhile.
pub async fn open_stream(
    pool: &H2Pool,
    dial: &super::Dial<'_>,
    timeout: Duration,
    bufs: &crate::net::BufPool,
    opts: StreamOpts,
) -> Result<super::Upstream, super::ConnectError> {
    use super::{ConnectError, Upstream};
    let tls = dial.tls.is_some();
    if !opts.fresh {
        if let Some((send, slot)) = pool.checkout(dial.addr, dial.pool_key, opts.max_streams) {
            return Ok(Upstream::h2(
                H2Up::new(send, slot, tls),
                dial.addr,
                dial.pool_key,
            ));
        }
    }
    let started = std::time::Instant::now();
    let up = super::connect(dial, timeout, bufs).await?;
    let protocol = || ConnectError::Tls(super::tls::TlsFailure::Protocol);
    let (conn, count) = up.into_h2_base().ok_or_else(protocol)?;
    if tls && conn.alpn() != Some(b"h2") {
        // The backend did not agree to HTTP/2.
        return Err(protocol());
    }
    let parts = conn.hand_over();
    let io = crate::h2io::H2Io::new(parts.stream, parts.tls, parts.pending, None);
    let left = timeout.saturating_sub(started.elapsed());
    let handshake = h2::client::Builder::new().handshake::<_, Bytes>(io);
    let (send, connection) = match crate::timer::timeout(left, handshake).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return Err(ConnectError::Io(io::Error::other(e))),
        Err(_) => return Err(ConnectError::Timeout),
    };
    let alive = Rc::new(Cell::new(true));
    let running = alive.clone();
    monoio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP/2 connection to a backend ended");
        }
        running.set(false);
        drop(count);
    });
    let slot = pool.add(
        dial.addr,
        dial.pool_key,
        send.clone(),
        alive,
        opts.idle_timeout,
    );
    Ok(Upstream::h2(
        H2Up::new(send, slot, tls),
        dial.addr,
        dial.pool_key,
    ))
}

/// The request side of a stream.
enum Request {
    /// The head is still being written; the bytes so far.
    Head(Vec<u8>),
    Body {
        stream: SendStream<Bytes>,
        body: ReqBody,
    },
    Done,
}

enum ReqBody {
    Length(u64),
    Chunked {
        decoder: ChunkedDecoder,
        carry: Vec<u8>,
        trailers: HeaderMap,
    },
}

impl Request {
    async fn take_body(&mut self, data: &[u8], timeout: Duration) -> Result<(), IoFail> {
        let Request::Body { body, .. } = self else {
            return Ok(());
        };
        match body {
            ReqBody::Length(left) => {
                if data.is_empty() {
                    return Ok(());
                }
                let k = (*left).min(data.len() as u64) as usize;
                *left -= k as u64;
                let last = *left == 0;
                self.send_data(&data[..k], last, timeout).await?;
                if last {
                    *self = Request::Done;
                }
                Ok(())
            }
            ReqBody::Chunked { carry, .. } => {
                let mut input = std::mem::take(carry);
                input.extend_from_slice(data);
                self.take_chunks(input, timeout).await
            }
        }
    }

    async fn take_chunks(&mut self, input: Vec<u8>, timeout: Duration) -> Result<(), IoFail> {
        let mut at = 0;
        loop {
            let Request::Body {
                body:
                    ReqBody::Chunked {
                        decoder,
                        carry,
                        trailers,
                    },
                stream,
            } = self
            else {
                return Ok(());
            };
            match decoder
                .step(&input[at..])
                .map_err(|_| other("invalid chunked request body"))?
            {
                Step::Data(n) => {
                    let chunk = input[at..at + n].to_vec();
                    at += n;
                    self.send_data(&chunk, false, timeout).await?;
                }
                Step::Skip(n) | Step::LastChunk(n) => at += n,
                Step::Trailer(n) => {
                    if let Some((name, value)) = trailer_field(&input[at..at + n]) {
                        trailers.append(name, value);
                    }
                    at += n;
                }
                Step::End(_) => {
                    let trailers = std::mem::take(trailers);
                    let r = if trailers.is_empty() {
                        stream.send_data(Bytes::new(), true)
                    } else {
                        stream.send_trailers(trailers)
                    };
                    *self = Request::Done;
                    return r.map_err(h2_err);
                }
                Step::NeedMore => {
                    carry.extend_from_slice(&input[at..]);
                    return Ok(());
                }
            }
        }
    }

    /// DATA within the backend's flow-control window.
    async fn send_data(&mut self, data: &[u8], eos: bool, timeout: Duration) -> Result<(), IoFail> {
        let Request::Body { stream, .. } = self else {
            return Ok(());
        };
        crate::h2io::send_flow(stream, data, eos, timeout)
            .await
            .map_err(|e| match e {
                FlowFail::Stalled => IoFail::Timeout,
                FlowFail::Closed => IoFail::Eof,
                FlowFail::H2(e) => h2_err(e),
            })
    }
}

/// The request side of a stream, taken out of its [`H2Up`] to stream the body on while the
/// answer is read (a full-duplex exchange).
pub struct RequestHalf(Request);

impl Sink for RequestHalf {
    async fn write_all(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<(), IoFail> {
        self.0.take_body(buf, timeout).await
    }

    async fn write_owned(
        &mut self,
        buf: Vec<u8>,
        range: Range<usize>,
        timeout: Duration,
    ) -> (Result<(), IoFail>, Vec<u8>) {
        let r = match buf.get(range) {
            Some(data) => self.0.take_body(data, timeout).await,
            None => Ok(()),
        };
        (r, buf)
    }
}

/// The response side.
enum Response {
    /// No request sent yet.
    NotSent,
    Waiting(ResponseFuture),
    Body {
        body: RecvStream,
        chunked: bool,
    },
    Done,
}

/// One request over an HTTP/2 connection, as the exchange sees an upstream connection.
pub struct H2Up {
    send: SendRequest<Bytes>,
    slot: Slot,
    scheme: &'static str,
    request: Request,
    response: Response,
    buf: Vec<u8>,
    pos: usize,
    head_request: bool,
    /// The backend refused the stream before processing it: its connection was going
    /// away (GOAWAY) or the stream was refused (REFUSED_STREAM). The request is safe to
    /// send again on another connection.
    refused: bool,
}

impl H2Up {
    pub fn new(send: SendRequest<Bytes>, slot: Slot, tls: bool) -> H2Up {
        H2Up {
            send,
            slot,
            scheme: if tls { "https" } else { "http" },
            request: Request::Head(Vec::new()),
            response: Response::NotSent,
            buf: Vec::new(),
            pos: 0,
            head_request: false,
            refused: false,
        }
    }

    /// The request side, once its head is sent and while its body is still to send.
    pub fn take_request_half(&mut self) -> Option<RequestHalf> {
        matches!(self.request, Request::Body { .. })
            .then(|| RequestHalf(std::mem::replace(&mut self.request, Request::Done)))
    }

    pub fn put_request_half(&mut self, half: RequestHalf) {
        self.request = half.0;
    }

    /// Whether the backend refused this stream unprocessed (see [`H2Up::refused`]'s field).
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// An HTTP/2 error on this stream: one that says the backend never processed it
    /// (refused, or past a GOAWAY's last stream) marks the stream refused and retires its
    /// connection from the pool.
    fn failed(&mut self, e: h2::Error, opened: bool) -> IoFail {
        let refused = !opened
            || e.reason() == Some(h2::Reason::REFUSED_STREAM)
            || (e.is_go_away() && e.is_remote());
        if refused {
            self.refused = true;
            self.slot.alive.set(false);
        }
        h2_err(e)
    }

    /// The exchange is over without a reusable end: reset the stream if it is still open.
    pub fn abandon(&mut self) {
        if let Request::Body { stream, .. } = &mut self.request {
            stream.send_reset(h2::Reason::CANCEL);
        }
        self.request = Request::Done;
        self.response = Response::Done;
    }

    async fn take(&mut self, data: &[u8], timeout: Duration) -> Result<(), IoFail> {
        if let Request::Head(acc) = &mut self.request {
            acc.extend_from_slice(data);
            let Some(end) = acc.windows(4).position(|w| w == b"\r\n\r\n") else {
                if acc.len() > MAX_HEAD {
                    return Err(other("request head too large"));
                }
                return Ok(());
            };
            let acc = std::mem::take(acc);
            self.send_head(&acc[..end + 4], timeout).await?;
            return self.request.take_body(&acc[end + 4..], timeout).await;
        }
        self.request.take_body(data, timeout).await
    }

    /// Sends the HEADERS of the request whose HTTP/1.1 head is `head`.
    async fn send_head(&mut self, head: &[u8], timeout: Duration) -> Result<(), IoFail> {
        let mut slots = crate::http::header_slots::<128>();
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(head, &mut slots) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(other("lb wrote an unreadable request head")),
        }
        let method = req.method.unwrap_or("GET");
        self.head_request = method == "HEAD";
        let path = req.path.unwrap_or("/");
        let mut authority = None;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut b = http::Request::builder().method(method);
        for h in req.headers.iter() {
            let lower = h.name.to_ascii_lowercase();
            match lower.as_str() {
                "host" => {
                    authority = std::str::from_utf8(h.value).ok().map(str::to_string);
                    continue;
                }
                "transfer-encoding" => {
                    chunked = true;
                    continue;
                }
                "te" if !h.value.eq_ignore_ascii_case(b"trailers") => continue,
                n if CONNECTION_SPECIFIC.contains(&n) => continue,
                "content-length" => {
                    length = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok());
                }
                _ => {}
            }
            b = b.header(lower.as_str(), h.value);
        }
        // gRPC servers insist on `TE: trailers`, which HTTP/1.1 treats as hop-by-hop.
        let grpc = req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("content-type") && h.value.starts_with(b"application/grpc")
        });
        if grpc {
            b = b.header("te", "trailers");
        }
        let authority = authority.unwrap_or_else(|| "localhost".to_string());
        let uri = format!("{}://{authority}{path}", self.scheme);
        let request = b
            .uri(uri)
            .body(())
            .map_err(|_| other("the request cannot be sent over HTTP/2"))?;
        let no_body = !chunked && length.unwrap_or(0) == 0;
        let send = self.send.clone();
        let ready = crate::timer::timeout(timeout, send.ready()).await;
        let mut send = match ready {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.failed(e, false)),
            Err(_) => return Err(IoFail::Timeout),
        };
        let (response, stream) = match send.send_request(request, no_body) {
            Ok(x) => x,
            Err(e) => return Err(self.failed(e, false)),
        };
        self.response = Response::Waiting(response);
        self.request = if no_body {
            Request::Done
        } else if chunked {
            Request::Body {
                stream,
                body: ReqBody::Chunked {
                    decoder: ChunkedDecoder::new(),
                    carry: Vec::new(),
                    trailers: HeaderMap::new(),
                },
            }
        } else {
            Request::Body {
                stream,
                body: ReqBody::Length(length.unwrap_or(0)),
            }
        };
        Ok(())
    }

    /// Writes the response head as HTTP/1.1 into the buffer.
    fn write_head(&mut self, res: http::Response<RecvStream>) {
        let (parts, body) = res.into_parts();
        let status = parts.status.as_u16();
        self.buf.extend_from_slice(b"HTTP/1.1 ");
        self.buf.extend_from_slice(status.to_string().as_bytes());
        self.buf.push(b' ');
        self.buf
            .extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
        self.buf.extend_from_slice(b"\r\n");
        // A gRPC answer ends in trailers, which only a chunked HTTP/1.1 body can carry: its
        // length, if the backend sent one, is dropped.
        let grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut has_length = false;
        for (name, value) in &parts.headers {
            if CONNECTION_SPECIFIC.contains(&name.as_str())
                || (grpc && name == http::header::CONTENT_LENGTH)
            {
                continue;
            }
            has_length |= name == http::header::CONTENT_LENGTH;
            self.buf.extend_from_slice(name.as_str().as_bytes());
            self.buf.extend_from_slice(b": ");
            self.buf.extend_from_slice(value.as_bytes());
            self.buf.extend_from_slice(b"\r\n");
        }
        let bodyless = self.head_request || status == 204 || status == 304;
        let chunked = !bodyless && !has_length;
        if chunked {
            if body.is_end_stream() {
                self.buf.extend_from_slice(b"content-length: 0\r\n");
            } else {
                self.buf
                    .extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
        }
        self.buf.extend_from_slice(b"\r\n");
        self.response = if bodyless || body.is_end_stream() {
            Response::Done
        } else {
            Response::Body { body, chunked }
        };
    }
}

fn other(m: &'static str) -> IoFail {
    IoFail::Io(io::Error::other(m))
}

fn h2_err(e: h2::Error) -> IoFail {
    IoFail::Io(io::Error::other(e))
}

impl Source for H2Up {
    fn data(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }

    fn is_full(&self) -> bool {
        false
    }

    async fn fill(&mut self, timeout: Duration) -> Result<usize, IoFail> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let before = self.buf.len();
        match &mut self.response {
            Response::NotSent | Response::Done => return Err(IoFail::Eof),
            Response::Waiting(fut) => {
                let res = match crate::timer::timeout(timeout, fut).await {
                    Err(_) => return Err(IoFail::Timeout),
                    Ok(Err(e)) => return Err(self.failed(e, true)),
                    Ok(Ok(r)) => r,
                };
                self.write_head(res);
            }
            Response::Body { body, chunked } => {
                let chunked = *chunked;
                let got = match crate::timer::timeout(timeout, body.data()).await {
                    Err(_) => return Err(IoFail::Timeout),
                    Ok(got) => got,
                };
                match got {
                    Some(Ok(bytes)) => {
                        let _ = body.flow_control().release_capacity(bytes.len());
                        if chunked {
                            if !bytes.is_empty() {
                                push_hex(&mut self.buf, bytes.len() as u64);
                                self.buf.extend_from_slice(b"\r\n");
                                self.buf.extend_from_slice(&bytes);
                                self.buf.extend_from_slice(b"\r\n");
                            }
                        } else {
                            self.buf.extend_from_slice(&bytes);
                        }
                    }
                    Some(Err(e)) => return Err(h2_err(e)),
                    None => {
                        let trailers = if chunked {
                            match crate::timer::timeout(timeout, body.trailers()).await {
                                Err(_) => return Err(IoFail::Timeout),
                                Ok(Err(e)) => return Err(h2_err(e)),
                                Ok(Ok(t)) => t,
                            }
                        } else {
                            None
                        };
                        if chunked {
                            crate::h2io::push_last_chunk(&mut self.buf, trailers.as_ref());
                        }
                        self.response = Response::Done;
                        if self.buf.len() == before {
                            return Err(IoFail::Eof);
                        }
                    }
                }
            }
        }
        Ok(self.buf.len() - before)
    }

    async fn forward_to<D: Sink>(
        &mut self,
        dst: &mut D,
        n: usize,
        timeout: Duration,
    ) -> Result<(), IoFail> {
        crate::net::forward_owned(&mut self.buf, &mut self.pos, dst, n, timeout).await
    }
}

impl Sink for H2Up {
    async fn write_all(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<(), IoFail> {
        self.take(buf, timeout).await
    }

    async fn write_owned(
        &mut self,
        buf: Vec<u8>,
        range: Range<usize>,
        timeout: Duration,
    ) -> (Result<(), IoFail>, Vec<u8>) {
        let r = match buf.get(range) {
            Some(data) => self.take(data, timeout).await,
            None => Ok(()),
        };
        (r, buf)
    }
}
