//! Request validation in the pipeline: after planning, before the exchange. The head is
//! checked against the route's (or version's) spec; a JSON body the spec describes is read
//! whole, up to the cap, into the client's buffer (where the exchange then finds it, so it
//! goes on unchanged) and checked. HTTP/1.1 and HTTP/2 requests take the same path: both
//! present an HTTP/1.1 head and body to the pipeline.

use std::sync::Arc;

use super::error::Refusal;
use super::side::Downstream;
use super::{head, Decision, Flow, Plan, Record, Req};
use crate::http::chunked::{ChunkedDecoder, Step};
use crate::http::Framing;
use crate::net::IoFail;
use crate::validation::{BodyCheck, Failures, Mode, Outcome, Oversize, Validation};
use crate::worker::View;

/// The validation a planned request is under, if any: its version's, else its route's.
pub(super) fn of<'v>(view: &'v View, d: &Decision) -> Option<&'v Arc<Validation>> {
    let Decision::Forward(plan) = d else {
        return None;
    };
    let route = view.snap.routes.routes().get(plan.route)?;
    match (&route.versions, plan.version) {
        (Some(v), Some(i)) => v.entries.get(usize::from(i))?.validate.as_ref(),
        _ => route.validate.as_ref(),
    }
}

/// Validates a planned request. `None`: go on with `decision` (the request as planned, or a
/// local answer that replaced it); `Some`: it was answered here.
pub(super) async fn check<C: Downstream>(
    req: &mut Req<'_>,
    client: &mut C,
    decision: &mut Decision,
) -> Option<Flow> {
    let view = req.view;
    let v = of(view, decision)?.clone();
    let v = v.as_ref();
    let Decision::Forward(plan) = *decision else {
        return None;
    };
    let mut fails = Failures::default();
    let body = head_check(view, v, client.data(), &plan, &mut fails);
    if !fails.is_empty() {
        return failed(req, v, client, decision, &fails, plan.head_len).await;
    }
    let Some(body) = body else {
        return valid(v, req.rec);
    };
    let http = &view.snap.http;
    let head_request = plan.method == crate::http::Method::Head;
    // Over the cap, or over what the exchange takes at all: decided before the client is
    // invited to send its body.
    if let Framing::Length(n) = plan.framing {
        if http.max_request_body > 0 && n > http.max_request_body {
            // The exchange answers 413 without reading it.
            return None;
        }
        if n > v.max_body {
            return too_large(req, v, client, head_request).await;
        }
    }
    let timeout = http.client_body_timeout;
    if plan.expect_continue {
        // The client waits for this before it sends the body lb must read.
        let mut interim = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        if client.write_all(&mut interim, timeout).await.is_err() {
            return Some(Flow::Close);
        }
        *decision = Decision::Forward(Plan {
            expect_continue: false,
            ..plan
        });
    }
    let read = match read_body(v, client, &plan, timeout).await {
        Ok(r) => r,
        Err(e) => {
            let why = match e {
                ReadFail::Io(IoFail::Timeout) => Refusal::BodyTimeout,
                ReadFail::Io(_) => return Some(Flow::Close),
                ReadFail::Framing => Refusal::BadChunked,
            };
            let r = super::Reject::closing(why);
            super::send_error(client, req, &r).await;
            return Some(Flow::Close);
        }
    };
    let Some((decoded, end)) = read else {
        return too_large(req, v, client, head_request).await;
    };
    match &decoded {
        Some(b) => body.check(b, &mut fails),
        None => body.check(&client.data()[plan.head_len..end], &mut fails),
    }
    if fails.is_empty() {
        return valid(v, req.rec);
    }
    failed(req, v, client, decision, &fails, end).await
}

fn valid(v: &Validation, rec: &mut Record) -> Option<Flow> {
    v.count(Outcome::Valid);
    rec.validation = Some(Outcome::Valid);
    None
}

/// Checks the head (buffered at the front of `data`) on the path routing saw (normalised);
/// the body's check, if one is due.
fn head_check<'s>(
    view: &View,
    v: &'s Validation,
    data: &[u8],
    plan: &Plan,
    fails: &mut Failures,
) -> Option<BodyCheck<'s>> {
    use crate::validation::Place;
    let mut slots = crate::http::header_slots::<{ crate::config::MAX_HEADERS_LIMIT }>();
    // Planning parsed this head already: it parses.
    let parsed = data
        .get(..plan.head_len)
        .and_then(|head| crate::http::request::parse(head, &mut slots).ok().flatten());
    let Some(req) = parsed else {
        fails.push(Place::Path, "", "the request head could not be read again");
        return None;
    };
    let (raw, query) = match req.path.iter().position(|&b| b == b'?') {
        Some(q) => (&req.path[..q], Some(&req.path[q + 1..])),
        None => (req.path, None),
    };
    let mut scratch = Vec::new();
    let Ok(normal) = crate::http::path::normalize(raw, view.snap.http.path, &mut scratch) else {
        fails.push(
            Place::Path,
            String::from_utf8_lossy(raw),
            "not a path lb can read",
        );
        return None;
    };
    let Some(path) = v.spec_path(normal) else {
        fails.push(
            Place::Path,
            String::from_utf8_lossy(normal),
            format!("not under the API's prefix {:?}", v.prefix),
        );
        return None;
    };
    let r = crate::validation::Request {
        method: req.method_bytes,
        path,
        query,
        headers: req.headers,
        has_body: !matches!(plan.framing, Framing::None | Framing::Length(0)),
    };
    v.spec.check_head(&r, fails)
}

/// Why a body could not be read.
enum ReadFail {
    Io(IoFail),
    /// Not chunked framing: the exchange would refuse it too.
    Framing,
}

impl From<IoFail> for ReadFail {
    fn from(e: IoFail) -> ReadFail {
        ReadFail::Io(e)
    }
}

/// Buffers grow as the body arrives, by at least this much: a length the client declares
/// reserves nothing before its bytes come.
const GROW: usize = 64 * 1024;

/// Reads the whole body into the client's buffer, after the head. `Ok(None)`: it is over the
/// cap (what came of it stays buffered). `Ok(Some((decoded, end)))`: where the body ends in
/// the buffer, and for a chunked one the body without its framing (a body with a length is
/// the buffer's bytes from the head's end).
async fn read_body<C: Downstream>(
    v: &Validation,
    client: &mut C,
    plan: &Plan,
    timeout: std::time::Duration,
) -> Result<Option<(Option<Vec<u8>>, usize)>, ReadFail> {
    let start = plan.head_len;
    let cap = usize::try_from(v.max_body).unwrap_or(usize::MAX);
    match plan.framing {
        Framing::Length(n) => {
            let Ok(n) = usize::try_from(n) else {
                return Ok(None);
            };
            if n > cap {
                return Ok(None);
            }
            while client.data().len() < start + n {
                make_room(client, start + n);
                client.fill(timeout).await?;
            }
            Ok(Some((None, start + n)))
        }
        Framing::Chunked => {
            // Framing may add to the body: the buffer holds at most this.
            let limit = start.saturating_add(cap).saturating_add(cap / 4 + 4096);
            // The decoder goes on from where it stopped: each byte is decoded once.
            let mut dec = ChunkedDecoder::new();
            let mut at = start;
            let mut body = Vec::new();
            loop {
                loop {
                    match dec.step(&client.data()[at..]) {
                        Ok(Step::Data(n)) => {
                            body.extend_from_slice(&client.data()[at..at + n]);
                            if body.len() > cap {
                                return Ok(None);
                            }
                            at += n;
                        }
                        Ok(Step::Skip(n) | Step::LastChunk(n) | Step::Trailer(n)) => at += n,
                        Ok(Step::End(n)) => return Ok(Some((Some(body), at + n))),
                        Ok(Step::NeedMore) => break,
                        Err(_) => return Err(ReadFail::Framing),
                    }
                }
                if client.data().len() >= limit {
                    return Ok(None);
                }
                make_room(client, limit);
                client.fill(timeout).await?;
            }
        }
        _ => Ok(Some((None, start))),
    }
}

/// Gives a full client buffer room to grow towards `most` bytes: double, by at least
/// [`GROW`] (a body's own buffer, for this request: the connection returns to a pooled one
/// after it).
fn make_room<C: Downstream>(client: &mut C, most: usize) {
    let held = client.data().len();
    if held < client.buf_capacity() && !client.is_full() {
        return;
    }
    let size = (held * 2).max(held + GROW).min(most.max(held + 1));
    let _ = client.swap_buf(Vec::with_capacity(size));
}

/// A body over the cap: counted; `413` and closed (the body is not read), or passed on.
async fn too_large<C: Downstream>(
    req: &mut Req<'_>,
    v: &Validation,
    client: &mut C,
    head_request: bool,
) -> Option<Flow> {
    v.count(Outcome::TooLarge);
    req.rec.validation = Some(Outcome::TooLarge);
    // Passed on unchecked when the operator says so, and always in report mode.
    if v.oversize == Oversize::Pass || v.mode == Mode::Report {
        return None;
    }
    let body = crate::http::write::problem(
        413,
        "Content Too Large",
        &format!(
            "the request body is over the {} bytes this API's validation reads",
            v.max_body
        ),
        serde_json::json!({}),
    );
    req.out.clear();
    let what = head::LocalResponse {
        status: 413,
        content_type: "application/problem+json",
        location: None,
        body: &body,
    };
    head::write_bare_response(req.out, &what, head_request, false, 1);
    send_and_close(req, client, 413).await
}

/// A request that failed validation: counted; refused in enforce mode (`consumed`: the bytes
/// the request took, when all of them were read), passed on in report mode.
async fn failed<C: Downstream>(
    req: &mut Req<'_>,
    v: &Validation,
    client: &mut C,
    decision: &mut Decision,
    fails: &Failures,
    consumed: usize,
) -> Option<Flow> {
    let view = req.view;
    v.count(Outcome::Invalid);
    req.rec.validation = Some(Outcome::Invalid);
    let Decision::Forward(plan) = *decision else {
        return None;
    };
    if v.mode == Mode::Report {
        tracing::info!(
            route = view.snap.routes.routes().get(plan.route).map_or("", |r| r.name.as_str()),
            spec = %v.source,
            "request does not match its spec (report mode: passed on): {}",
            fails.summary()
        );
        return None;
    }
    let status = fails.status();
    let title = match status {
        404 => "Not Found",
        405 => "Method Not Allowed",
        415 => "Unsupported Media Type",
        _ => "Bad Request",
    };
    let n = fails.0.len();
    let detail = format!(
        "the request does not match the API's spec ({n} problem{}): {}",
        if n == 1 { "" } else { "s" },
        fails.summary()
    );
    let body = crate::http::write::problem(
        status,
        title,
        &detail,
        serde_json::json!({ "errors": fails.json(), "version": v.version() }),
    );
    req.rec.variant = None;
    req.rec.mirror = None;
    // A body that was not read (a head failure) leaves an HTTP/1.1 connection unusable for
    // another request: the answer closes it.
    let whole =
        consumed > plan.head_len || matches!(plan.framing, Framing::None | Framing::Length(0));
    let close = !whole && client.connection().is_some();
    let keep = plan.keep_alive && !close;
    let route = &view.snap.routes.routes()[plan.route];
    let out = &mut *req.out;
    out.clear();
    let what = head::LocalResponse {
        status,
        content_type: "application/problem+json",
        location: None,
        body: &body,
    };
    head::write_local_response(
        out,
        &what,
        route,
        plan.method == crate::http::Method::Head,
        keep,
        plan.minor,
    );
    if let Some(allow) = fails.allow() {
        head::insert_headers(out, &[("Allow", allow)]);
    }
    if close {
        return send_and_close(req, client, status).await;
    }
    *decision = Decision::Local {
        head_len: consumed.max(plan.head_len),
        keep_alive: keep,
        status,
    };
    None
}

/// Writes the answer in `out` and closes, lingering for what the client still sends.
async fn send_and_close<C: Downstream>(
    req: &mut Req<'_>,
    client: &mut C,
    status: u16,
) -> Option<Flow> {
    req.rec.status = status;
    let ok = client
        .write_all(req.out, req.view.snap.http.client_body_timeout)
        .await
        .is_ok();
    if ok {
        if let Some(conn) = client.connection() {
            super::linger(conn).await;
        }
    }
    Some(Flow::Close)
}
