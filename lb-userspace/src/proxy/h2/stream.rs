//! One HTTP/2 stream as the client side of the pipeline ([`Downstream`]).
//!
//! Translation at this boundary, so routing, release and upstream code never see HTTP/2:
//! - in: the pseudo-headers and fields become an HTTP/1.1 request head (`:authority` as
//!   `Host`, a `Host` that differs from it refused, cookies joined, `TE` other than
//!   `trailers` refused, `Expect` dropped); the DATA frames become the body, framed by the
//!   request's `Content-Length` (checked by the pipeline against what arrives) or, without
//!   one, chunked;
//! - out: the HTTP/1.1 response head lb writes becomes a HEADERS frame without the
//!   connection-specific fields; its body becomes DATA frames within the client's flow
//!   control window, a chunked body is un-chunked and its trailers become a trailing
//!   HEADERS frame.

use std::io;
use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue};

use super::super::side::{Downstream, Sink, Source};
use crate::h2io::{trailer_field, FlowFail, CONNECTION_SPECIFIC};
use crate::http::chunked::{ChunkedDecoder, Step};
use crate::http::write::push_hex;
use crate::net::{BufConn, IoFail};

/// Largest response head lb writes (its own heads are far smaller).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What is known of a request's body when its HTTP/1.1 head is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body1 {
    /// None: the HEADERS ended the stream.
    None,
    /// All of it arrived already: this many bytes (sent with a `Content-Length`).
    Known(usize),
    /// Still coming, of unknown length (chunked, unless the client gave a length).
    Unknown,
}

/// Why a stream's request cannot become an HTTP/1.1 head (the client gets 400).
pub type Refusal = &'static str;

/// Writes the HTTP/1.1 head for `parts` into `out`. Returns whether the body is framed as
/// chunked (a request with a body and no `Content-Length`).
pub fn request_head(
    parts: &http::request::Parts,
    body: Body1,
    out: &mut Vec<u8>,
) -> Result<bool, Refusal> {
    let (target, host) = target_and_host(parts)?;
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    let mut cookies = 0;
    let mut has_length = false;
    for (name, value) in &parts.headers {
        let n = name.as_str();
        match n {
            "host" | "expect" => continue,
            "cookie" => {
                cookies += 1;
                continue;
            }
            "te" if !value.as_bytes().eq_ignore_ascii_case(b"trailers") => {
                return Err("TE other than trailers is not allowed in HTTP/2")
            }
            "content-length" => has_length = true,
            _ if CONNECTION_SPECIFIC.contains(&n) => {
                return Err("connection-specific header fields are not allowed in HTTP/2")
            }
            _ => {}
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if cookies > 0 {
        push_cookies(parts, out);
    }
    if let (Body1::Known(n), false) = (body, has_length) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let chunked = body == Body1::Unknown && !has_length;
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(chunked)
}

/// HTTP/2 may split cookies into several fields; HTTP/1.1 wants one (RFC 9113 8.2.3).
fn push_cookies(parts: &http::request::Parts, out: &mut Vec<u8>) {
    out.extend_from_slice(b"cookie: ");
    for (i, c) in parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .enumerate()
    {
        if i > 0 {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(c.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The request target (`:path`) and the host (`:authority`, or `Host`; both must agree).
fn target_and_host(parts: &http::request::Parts) -> Result<(&str, &[u8]), Refusal> {
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .ok_or("the request has no :path")?;
    let authority = parts.uri.authority().map(|a| a.as_str());
    let host = parts
        .headers
        .get(http::header::HOST)
        .map(HeaderValue::as_bytes);
    let host = match (authority, host) {
        (Some(a), Some(h)) if !a.as_bytes().eq_ignore_ascii_case(h) => {
            return Err("the Host field differs from :authority")
        }
        (Some(a), _) => a.as_bytes(),
        (None, Some(h)) => h,
        (None, None) => return Err("the request has neither :authority nor Host"),
    };
    Ok((target, host))
}

/// An HTTP/1.1 response head's fields as HTTP/2 sends them.
struct ResponseFields {
    headers: HeaderMap,
    /// `Content-Length`, if it was there and reads.
    length: Option<u64>,
    /// The body is chunked (its framing is taken off).
    chunked: bool,
    grpc_status: Option<u32>,
}

/// The fields of a response head without the connection-specific ones and the framing;
/// `None` if a name or value cannot be sent.
fn response_fields(fields: &[httparse::Header<'_>]) -> Option<ResponseFields> {
    // Sized once: the builder's map would grow (and rehash) as headers arrive.
    let mut out = ResponseFields {
        headers: HeaderMap::with_capacity(fields.len()),
        length: None,
        chunked: false,
        grpc_status: None,
    };
    for h in fields {
        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
        if is("transfer-encoding") {
            out.chunked = true;
            continue;
        }
        if CONNECTION_SPECIFIC.iter().any(|n| is(n)) {
            continue;
        }
        if is("content-length") {
            out.length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        }
        if is("grpc-status") {
            out.grpc_status = crate::http::h2::parse_grpc_status(h.value);
        }
        // from_bytes lowercases, without a String for the names it knows.
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(h.value).ok()?;
        out.headers.append(name, value);
    }
    Some(out)
}

/// How the response body arrives from the pipeline.
enum Body {
    /// `Some(n)`: `n` bytes left (Content-Length); `None`: until the exchange ends.
    Plain(Option<u64>),
    Chunked {
        decoder: ChunkedDecoder,
        /// Bytes of an incomplete chunk line kept for the next write.
        carry: Vec<u8>,
        trailers: HeaderMap,
    },
}

enum Response {
    /// The head is still being written; the bytes so far.
    Head(Vec<u8>),
    Body(Body),
    Done,
}

/// What a stream's answer depends on besides its bytes.
pub struct About {
    /// A HEAD request: the answer has no body.
    pub head_request: bool,
    /// A gRPC call.
    pub grpc: bool,
    /// The connection's tripwire.
    pub trip: std::rc::Rc<crate::http::h2::Trip>,
    /// How long the client's window may stay shut.
    pub stall: Duration,
}

/// One stream: the request's bytes for the pipeline, and where its answer goes.
/// The request side of a stream as the pipeline reads it: the HTTP/1.1 head, then the body
/// (chunked when it came without a length, the client's trailers as the chunked trailer
/// section). It can be taken out of its [`H2Stream`] to stream on while the answer is read
/// (a full-duplex exchange).
pub struct BodyIn {
    buf: Vec<u8>,
    pos: usize,
    reads: u64,
    body: Option<RecvStream>,
    chunked_in: bool,
}

impl BodyIn {
    /// Whether more of the body is still to come from the client.
    pub fn streaming(&self) -> bool {
        self.body.is_some()
    }

    /// Counts the body as read past its start, so that the request is not replayed: a
    /// full-duplex exchange sent and dropped what it read.
    pub fn mark_consumed(&mut self) {
        self.reads += 1;
    }
}

pub struct H2Stream {
    req: BodyIn,
    respond: Option<SendResponse<Bytes>>,
    send: Option<SendStream<Bytes>>,
    response: Response,
    head_request: bool,
    /// A gRPC call (`content-type: application/grpc...`): an HTTP error answer becomes a
    /// gRPC status.
    grpc: bool,
    /// The gRPC status the client got, once it went out.
    grpc_status: Option<u32>,
    /// What failed, when lb answers with an error (the gRPC status maps from it).
    failure: Option<crate::proxy::error::ProxyError>,
    /// The connection's tripwire: a window that never opens ends the connection.
    trip: std::rc::Rc<crate::http::h2::Trip>,
    /// How long the client's window may stay shut (`http.client_body_timeout`), whatever
    /// the timeout of the write that waits on it.
    stall: Duration,
}

impl H2Stream {
    /// A stream whose request head (HTTP/1.1) is `head`, followed by body bytes already
    /// read (framed as the head says: chunked when `chunked_in`).
    pub fn new(
        head: Vec<u8>,
        chunked_in: bool,
        body: Option<RecvStream>,
        respond: SendResponse<Bytes>,
        about: About,
    ) -> H2Stream {
        H2Stream {
            req: BodyIn {
                buf: head,
                pos: 0,
                reads: 0,
                body,
                chunked_in,
            },
            respond: Some(respond),
            send: None,
            response: Response::Head(Vec::new()),
            head_request: about.head_request,
            grpc: about.grpc,
            grpc_status: None,
            failure: None,
            trip: about.trip,
            stall: about.stall,
        }
    }

    /// The request buffer, for the worker's pool once the stream is done.
    pub fn take_buf(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.req.buf)
    }

    /// Ends the stream once the pipeline is done with it: a body delimited by the end of
    /// the exchange ends here; one cut short (or no answer at all) resets the stream, so the
    /// client never takes a partial answer for a whole one.
    pub fn finish(&mut self, cut: bool) {
        match &self.response {
            Response::Body(Body::Plain(None)) if !cut => {
                if let Some(s) = self.send.as_mut() {
                    let _ = s.send_data(Bytes::new(), true);
                }
            }
            Response::Done => {}
            _ => {
                if let Some(s) = self.send.as_mut() {
                    s.send_reset(h2::Reason::INTERNAL_ERROR);
                } else if let Some(r) = self.respond.as_mut() {
                    r.send_reset(h2::Reason::INTERNAL_ERROR);
                }
            }
        }
        self.response = Response::Done;
    }

    /// The gRPC status the client got, if this is a gRPC call that got one.
    pub fn grpc_status(&self) -> Option<u32> {
        self.grpc_status
    }

    /// Whether the request is a gRPC call.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// Whether the answer is complete.
    pub fn answered(&self) -> bool {
        matches!(self.response, Response::Done)
    }

    /// Takes bytes of the HTTP/1.1 answer the pipeline writes.
    async fn take(&mut self, data: &[u8], timeout: Duration) -> Result<(), IoFail> {
        let Response::Head(acc) = &mut self.response else {
            return self.take_body(data, timeout).await;
        };
        // The usual case: the whole head in one write, read where it is.
        if acc.is_empty() {
            if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                if !self.send_head(&data[..end + 4], &data[end + 4..])? {
                    return self.take_body(&data[end + 4..], timeout).await;
                }
                self.response = Response::Head(Vec::new());
                return Box::pin(self.take(&data[end + 4..], timeout)).await;
            }
        }
        let Response::Head(acc) = &mut self.response else {
            return Ok(());
        };
        acc.extend_from_slice(data);
        loop {
            let Response::Head(acc) = &mut self.response else {
                return Ok(());
            };
            let Some(end) = acc.windows(4).position(|w| w == b"\r\n\r\n") else {
                if acc.len() > MAX_RESPONSE_HEAD {
                    return Err(IoFail::Io(io::Error::other("response head too large")));
                }
                return Ok(());
            };
            let acc = std::mem::take(acc);
            let interim = self.send_head(&acc[..end + 4], &acc[end + 4..])?;
            let tail = &acc[end + 4..];
            if interim {
                // An interim answer: what follows is the next head.
                self.response = Response::Head(tail.to_vec());
                continue;
            }
            return self.take_body(tail, timeout).await;
        }
    }

    /// Takes body bytes of the answer.
    async fn take_body(&mut self, data: &[u8], timeout: Duration) -> Result<(), IoFail> {
        match &mut self.response {
            Response::Done | Response::Head(_) => Ok(()),
            Response::Body(Body::Chunked { .. }) => self.take_chunked(data, timeout).await,
            Response::Body(Body::Plain(left)) => {
                if data.is_empty() {
                    return Ok(());
                }
                let k = left.map_or(data.len(), |l| l.min(data.len() as u64) as usize);
                let last = left.is_some_and(|l| l == k as u64);
                if let Some(l) = left.as_mut() {
                    *l -= k as u64;
                }
                self.send_data(&data[..k], last, timeout).await?;
                if last {
                    self.response = Response::Done;
                }
                Ok(())
            }
        }
    }

    /// Un-chunks a chunked body into DATA frames and its trailers into HEADERS.
    async fn take_chunked(&mut self, data: &[u8], timeout: Duration) -> Result<(), IoFail> {
        let Response::Body(Body::Chunked { carry, .. }) = &mut self.response else {
            return Ok(());
        };
        let mut input = std::mem::take(carry);
        input.extend_from_slice(data);
        let mut at = 0;
        loop {
            let Response::Body(Body::Chunked {
                decoder, trailers, ..
            }) = &mut self.response
            else {
                return Ok(());
            };
            let step = decoder
                .step(&input[at..])
                .map_err(|_| IoFail::Io(io::Error::other("invalid chunked response")))?;
            match step {
                Step::Data(n) => {
                    let chunk = input[at..at + n].to_vec();
                    at += n;
                    self.send_data(&chunk, false, timeout).await?;
                }
                Step::Skip(n) | Step::LastChunk(n) => at += n,
                Step::Trailer(n) => {
                    if let Some((name, value)) = trailer_field(&input[at..at + n]) {
                        if name == "grpc-status" {
                            self.grpc_status = crate::http::h2::parse_grpc_status(value.as_bytes());
                        }
                        trailers.append(name, value);
                    }
                    at += n;
                }
                Step::End(_) => {
                    // Anything after the last chunk is not part of this answer.
                    let trailers = std::mem::take(trailers);
                    self.response = Response::Done;
                    let Some(s) = self.send.as_mut() else {
                        return Ok(());
                    };
                    let r = if trailers.is_empty() {
                        s.send_data(Bytes::new(), true)
                    } else {
                        s.send_trailers(trailers)
                    };
                    return r.map_err(|e| IoFail::Io(io::Error::other(e)));
                }
                Step::NeedMore => {
                    if let Response::Body(Body::Chunked { carry, .. }) = &mut self.response {
                        carry.extend_from_slice(&input[at..]);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Sends the response head in `head` (HTTP/1.1 syntax). Returns true for an interim
    /// (1xx) answer, which HTTP/2 clients do not need and is dropped.
    fn send_head(&mut self, head: &[u8], body: &[u8]) -> Result<bool, IoFail> {
        let bad = || IoFail::Io(io::Error::other("lb wrote an unreadable response head"));
        // Uninitialised slots: zeroing 128 of them cost more than parsing a small head.
        let mut slots = crate::http::header_slots::<128>();
        let mut res = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, head, &mut slots)
        {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err(bad()),
        }
        let status = res.code.ok_or_else(bad)?;
        if (100..200).contains(&status) {
            return Ok(true);
        }
        let is_grpc_answer = res.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("content-type") && h.value.starts_with(b"application/grpc")
        });
        if self.grpc && !is_grpc_answer {
            let limit = res
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("x-lb-limit"));
            let code = match &self.failure {
                Some(e) => grpc_code_of(e),
                None => grpc_code(status, limit),
            };
            self.send_grpc_status(code, status, body)?;
            return Ok(false);
        }
        let status = http::StatusCode::from_u16(status).map_err(|_| bad())?;
        let fields = response_fields(res.headers).ok_or_else(bad)?;
        let (headers, length, chunked) = (fields.headers, fields.length, fields.chunked);
        if fields.grpc_status.is_some() {
            // A status alone, with no body ("Trailers-Only").
            self.grpc_status = fields.grpc_status;
        }
        let mut response = http::Response::new(());
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        let no_body = self.head_request
            || status == http::StatusCode::NO_CONTENT
            || status == http::StatusCode::NOT_MODIFIED
            || (!chunked && length == Some(0));
        let respond = self.respond.as_mut().ok_or_else(bad)?;
        let send = respond
            .send_response(response, no_body)
            .map_err(|e| IoFail::Io(io::Error::other(e)))?;
        self.send = Some(send);
        self.response = if no_body {
            Response::Done
        } else if chunked {
            Response::Body(Body::Chunked {
                decoder: ChunkedDecoder::new(),
                carry: Vec::new(),
                trailers: HeaderMap::new(),
            })
        } else {
            Response::Body(Body::Plain(length))
        };
        Ok(false)
    }

    /// Answers a gRPC call that failed before a backend answered it in gRPC: HTTP 200 with
    /// `grpc-status` and `grpc-message` in the one HEADERS frame that ends the stream (gRPC's
    /// Trailers-Only form). The message is lb's, from the error body when it has one.
    fn send_grpc_status(&mut self, code: u32, status: u16, body: &[u8]) -> Result<(), IoFail> {
        let message = match &self.failure {
            Some(e) => e.message().to_string(),
            None => serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("HTTP {status} {}", crate::http::write::reason(status))),
        };
        // grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
        let mut encoded = String::with_capacity(message.len());
        for b in message.bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", code.to_string())
            .header("grpc-message", encoded)
            .body(())
            .map_err(|_| IoFail::Io(io::Error::other("gRPC status")))?;
        let respond = self
            .respond
            .as_mut()
            .ok_or_else(|| IoFail::Io(io::Error::other("already answered")))?;
        respond
            .send_response(response, true)
            .map_err(|e| IoFail::Io(io::Error::other(e)))?;
        self.response = Response::Done;
        self.grpc_status = Some(code);
        Ok(())
    }

    /// Sends `data` as DATA frames within the client's flow-control window; a client that
    /// never opens it for `timeout` trips the connection (a stall, not a slow link).
    async fn send_data(&mut self, data: &[u8], eos: bool, timeout: Duration) -> Result<(), IoFail> {
        let Some(s) = self.send.as_mut() else {
            return Err(IoFail::Eof);
        };
        match crate::h2io::send_flow(s, data, eos, timeout.min(self.stall)).await {
            Ok(()) => Ok(()),
            Err(FlowFail::Stalled) => {
                self.trip.trip(crate::http::h2::Flood::StalledWindow);
                Err(IoFail::Timeout)
            }
            Err(FlowFail::Closed) => Err(IoFail::Eof),
            Err(FlowFail::H2(e)) => Err(IoFail::Io(io::Error::other(e))),
        }
    }
}

/// The gRPC status for a request lb failed, by what failed: nothing usable to send it to
/// (no endpoint, refused, a reset or a bad answer before any response) is UNAVAILABLE, a
/// deadline or timeout DEADLINE_EXCEEDED, a limit RESOURCE_EXHAUSTED.
pub fn grpc_code_of(e: &crate::proxy::error::ProxyError) -> u32 {
    use crate::proxy::error::{BodyFault, ErrorKind};
    const CANCELLED: u32 = 1;
    const DEADLINE_EXCEEDED: u32 = 4;
    const RESOURCE_EXHAUSTED: u32 = 8;
    const INTERNAL: u32 = 13;
    const UNAVAILABLE: u32 = 14;
    match e.kind {
        ErrorKind::ConnectRefused
        | ErrorKind::ConnectTimeout
        | ErrorKind::Tls(_)
        | ErrorKind::ResetBeforeResponse
        | ErrorKind::BadResponse(_)
        | ErrorKind::RetryableStatus(_)
        | ErrorKind::NoEndpoint => UNAVAILABLE,
        ErrorKind::Timeout(_) | ErrorKind::Body(BodyFault::Stalled | BodyFault::TooSlow) => {
            DEADLINE_EXCEEDED
        }
        ErrorKind::Limit(_) | ErrorKind::Body(BodyFault::TooLarge) => RESOURCE_EXHAUSTED,
        ErrorKind::Body(BodyFault::BadChunked) | ErrorKind::CutMidBody => INTERNAL,
        ErrorKind::ClientGone => CANCELLED,
    }
}

/// The gRPC status for an HTTP error answer to a gRPC call ("HTTP to gRPC Status Code
/// Mapping", with lb's own cases: a limit or rate limit is RESOURCE_EXHAUSTED, a timeout
/// DEADLINE_EXCEEDED, no usable backend UNAVAILABLE).
pub fn grpc_code(status: u16, limit: bool) -> u32 {
    const INTERNAL: u32 = 13;
    const UNAUTHENTICATED: u32 = 16;
    const PERMISSION_DENIED: u32 = 7;
    const UNIMPLEMENTED: u32 = 12;
    const RESOURCE_EXHAUSTED: u32 = 8;
    const UNAVAILABLE: u32 = 14;
    const DEADLINE_EXCEEDED: u32 = 4;
    const UNKNOWN: u32 = 2;
    match status {
        429 | 413 => RESOURCE_EXHAUSTED,
        503 if limit => RESOURCE_EXHAUSTED,
        502 | 503 => UNAVAILABLE,
        504 | 408 => DEADLINE_EXCEEDED,
        400 => INTERNAL,
        401 => UNAUTHENTICATED,
        403 => PERMISSION_DENIED,
        404 => UNIMPLEMENTED,
        _ => UNKNOWN,
    }
}

impl Source for BodyIn {
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
        let Some(body) = self.body.as_mut() else {
            return Err(IoFail::Eof);
        };
        let got = match crate::timer::timeout(timeout, body.data()).await {
            Err(_) => return Err(IoFail::Timeout),
            Ok(got) => got,
        };
        self.reads += 1;
        match got {
            None => {
                // The client's trailers (gRPC clients send none; others may) go on as the
                // chunked trailer section.
                let trailers = match crate::timer::timeout(timeout, body.trailers()).await {
                    Err(_) => return Err(IoFail::Timeout),
                    Ok(Err(e)) => return Err(IoFail::Io(io::Error::other(e))),
                    Ok(Ok(t)) => t,
                };
                self.body = None;
                if self.chunked_in {
                    self.chunked_in = false;
                    let before = self.buf.len();
                    crate::h2io::push_last_chunk(&mut self.buf, trailers.as_ref());
                    return Ok(self.buf.len() - before);
                }
                Err(IoFail::Eof)
            }
            Some(Err(e)) => Err(IoFail::Io(io::Error::other(e))),
            Some(Ok(bytes)) => {
                let _ = body.flow_control().release_capacity(bytes.len());
                let before = self.buf.len();
                if self.chunked_in {
                    if bytes.is_empty() {
                        return Ok(0);
                    }
                    push_hex(&mut self.buf, bytes.len() as u64);
                    self.buf.extend_from_slice(b"\r\n");
                    self.buf.extend_from_slice(&bytes);
                    self.buf.extend_from_slice(b"\r\n");
                } else {
                    self.buf.extend_from_slice(&bytes);
                }
                Ok(self.buf.len() - before)
            }
        }
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

impl Source for H2Stream {
    fn data(&self) -> &[u8] {
        self.req.data()
    }

    fn consume(&mut self, n: usize) {
        self.req.consume(n)
    }

    fn is_full(&self) -> bool {
        false
    }

    async fn fill(&mut self, timeout: Duration) -> Result<usize, IoFail> {
        self.req.fill(timeout).await
    }

    async fn forward_to<D: Sink>(
        &mut self,
        dst: &mut D,
        n: usize,
        timeout: Duration,
    ) -> Result<(), IoFail> {
        self.req.forward_to(dst, n, timeout).await
    }
}

impl Sink for H2Stream {
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

impl Downstream for H2Stream {
    fn reads(&self) -> u64 {
        self.req.reads
    }

    fn position(&self) -> usize {
        self.req.pos
    }

    fn rewind(&mut self, pos: usize) {
        self.req.pos = pos.min(self.req.buf.len());
    }

    fn buf_capacity(&self) -> usize {
        self.req.buf.capacity()
    }

    fn swap_buf(&mut self, mut buf: Vec<u8>) -> Vec<u8> {
        buf.clear();
        buf.extend_from_slice(self.req.data());
        self.req.pos = 0;
        std::mem::replace(&mut self.req.buf, buf)
    }

    fn take_body_half(&mut self) -> Option<BodyIn> {
        if !self.req.streaming() {
            return None;
        }
        let empty = BodyIn {
            buf: Vec::new(),
            pos: 0,
            reads: self.req.reads,
            body: None,
            chunked_in: false,
        };
        Some(std::mem::replace(&mut self.req, empty))
    }

    fn put_body_half(&mut self, body: BodyIn) {
        self.req = body;
    }

    fn connection(&mut self) -> Option<&mut BufConn> {
        None
    }

    fn failed(&mut self, e: &crate::proxy::error::ProxyError) {
        self.failure = Some(*e);
    }
}

#[cfg(test)]
mod tests {
    use super::grpc_code;

    #[test]
    fn http_errors_map_to_grpc_statuses() {
        for (status, limit, code) in [
            (429, false, 8),
            (503, true, 8),
            (503, false, 14),
            (502, false, 14),
            (504, false, 4),
            (400, false, 13),
            (401, false, 16),
            (403, false, 7),
            (404, false, 12),
            (500, false, 2),
        ] {
            assert_eq!(grpc_code(status, limit), code, "{status} {limit}");
        }
    }

    #[test]
    fn requests_translate_to_http1_heads() {
        let req = http::Request::builder()
            .method("POST")
            .uri("https://api.test/orders?x=1")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        let chunked = super::request_head(&parts, super::Body1::Unknown, &mut out).expect("head");
        let text = String::from_utf8(out).expect("text");
        assert!(chunked, "a body without a length goes chunked");
        assert!(
            text.starts_with("POST /orders?x=1 HTTP/1.1\r\nhost: api.test\r\n"),
            "{text}"
        );
        assert!(text.contains("cookie: a=1; b=2\r\n"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        let bad = http::Request::builder()
            .uri("https://api.test/")
            .header("host", "other.test")
            .body(())
            .expect("request")
            .into_parts()
            .0;
        assert!(super::request_head(&bad, super::Body1::None, &mut Vec::new()).is_err());
    }
}
