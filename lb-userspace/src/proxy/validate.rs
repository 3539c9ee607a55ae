//! Request validation in the pipeline: after planning, before the exchange. The head is
//! checked against the route's (or version's) spec; a JSON body the spec describes is read
//! whole, up to the cap, into the client's buffer (where the exchange then finds it, so it
//! goes on unchanged) and checked. HTTP/1.1 and HTTP/2 requests take the same path: both
//! present an HTTP/1.1 head and body to the pipeline.

use std::sync::Arc;

use super::side::Downstream;
use super::{head, Decision, Flow, Plan, Record};
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
    view: &View,
    client: &mut C,
    decision: &mut Decision,
    out: &mut Vec<u8>,
    rec: &mut Record,
) -> Option<Flow> {
    let v = of(view, decision)?.clone();
    let v = v.as_ref();
    let Decision::Forward(plan) = *decision else {
        return None;
    };
    let mut fails = Failures::default();
    let body = head_check(v, client.data(), &plan, &mut fails);
    if !fails.is_empty() {
        return failed(view, v, client, decision, out, rec, &fails, plan.head_len).await;
    }
    let Some(body) = body else {
        return valid(v, rec);
    };
    let timeout = view.snap.http.client_body_timeout;
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
        Err(IoFail::Timeout) => {
            let e = super::Reject {
                status: 408,
                code: "request_timeout",
                message: "the request body did not arrive in time",
                head_len: 0,
                close: true,
            };
            super::send_error(client, out, &e, view, rec).await;
            return Some(Flow::Close);
        }
        Err(_) => return Some(Flow::Close),
    };
    let Some((body_bytes, end)) = read else {
        v.count(Outcome::TooLarge);
        rec.validation = Some(Outcome::TooLarge);
        if v.oversize == Oversize::Pass {
            return None;
        }
        return too_large(view, v, client, out, rec).await;
    };
    body.check(&body_bytes, &mut fails);
    if fails.is_empty() {
        return valid(v, rec);
    }
    failed(view, v, client, decision, out, rec, &fails, end).await
}

fn valid(v: &Validation, rec: &mut Record) -> Option<Flow> {
    v.count(Outcome::Valid);
    rec.validation = Some(Outcome::Valid);
    None
}

/// Checks the head (buffered at the front of `data`); the body's check, if one is due.
fn head_check<'s>(
    v: &'s Validation,
    data: &[u8],
    plan: &Plan,
    fails: &mut Failures,
) -> Option<BodyCheck<'s>> {
    let mut slots: Vec<crate::http::HeaderSlot<'_>> = (0..crate::config::MAX_HEADERS_LIMIT)
        .map(|_| std::mem::MaybeUninit::uninit())
        .collect();
    let head = data.get(..plan.head_len)?;
    // Planning parsed this head already: it parses.
    let req = crate::http::request::parse(head, &mut slots).ok()??;
    let (path, query) = match req.path.iter().position(|&b| b == b'?') {
        Some(q) => (&req.path[..q], Some(&req.path[q + 1..])),
        None => (req.path, None),
    };
    let Some(path) = v.spec_path(path) else {
        fails.push(
            crate::validation::Place::Path,
            String::from_utf8_lossy(path),
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

/// Reads the whole body into the client's buffer, after the head. `Ok(None)`: it is over the
/// cap (what came of it stays buffered). `Ok(Some((body, end)))`: the body (chunked framing
/// removed) and where it ends in the buffer.
async fn read_body<C: Downstream>(
    v: &Validation,
    client: &mut C,
    plan: &Plan,
    timeout: std::time::Duration,
) -> Result<Option<(Vec<u8>, usize)>, IoFail> {
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
            Ok(Some((client.data()[start..start + n].to_vec(), start + n)))
        }
        Framing::Chunked => {
            // Framing may add to the body: the buffer holds at most this.
            let limit = start.saturating_add(cap).saturating_add(cap / 4 + 4096);
            loop {
                match dechunk(&client.data()[start..], cap) {
                    Chunks::Done(body, len) => return Ok(Some((body, start + len))),
                    Chunks::TooLarge => return Ok(None),
                    Chunks::Bad => return Err(IoFail::Eof),
                    Chunks::More => {}
                }
                if client.data().len() >= limit {
                    return Ok(None);
                }
                make_room(client, limit.min(client.data().len() * 2 + 4096));
                client.fill(timeout).await?;
            }
        }
        _ => Ok(Some((Vec::new(), start))),
    }
}

/// Gives the client a buffer that holds `need` bytes once it is full (a body's own, for this
/// request: the connection returns to a pooled one after it).
fn make_room<C: Downstream>(client: &mut C, need: usize) {
    if client.is_full() || client.buf_capacity() < need {
        let bigger = Vec::with_capacity(need.max(client.buf_capacity() * 2));
        let _ = client.swap_buf(bigger);
    }
}

enum Chunks {
    /// The body, and the bytes its chunked form took.
    Done(Vec<u8>, usize),
    More,
    TooLarge,
    /// Not chunked framing: the exchange would refuse it too.
    Bad,
}

/// Decodes a chunked body from the front of `data`, if it is all there.
fn dechunk(data: &[u8], cap: usize) -> Chunks {
    let mut dec = ChunkedDecoder::new();
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        match dec.step(&data[at..]) {
            Ok(Step::Data(n)) => {
                body.extend_from_slice(&data[at..at + n]);
                if body.len() > cap {
                    return Chunks::TooLarge;
                }
                at += n;
            }
            Ok(Step::Skip(n) | Step::LastChunk(n) | Step::Trailer(n)) => at += n,
            Ok(Step::End(n)) => return Chunks::Done(body, at + n),
            Ok(Step::NeedMore) => return Chunks::More,
            Err(_) => return Chunks::Bad,
        }
    }
}

/// Answers `413` and closes: the body is not read.
async fn too_large<C: Downstream>(
    view: &View,
    v: &Validation,
    client: &mut C,
    out: &mut Vec<u8>,
    rec: &mut Record,
) -> Option<Flow> {
    let body = crate::http::write::problem(
        413,
        "Content Too Large",
        &format!(
            "the request body is over the {} bytes this API's validation reads",
            v.max_body
        ),
        serde_json::json!({}),
    );
    answer(view, client, out, rec, 413, &body, false).await
}

/// A request that failed validation: counted; refused in enforce mode (`consumed`: the bytes
/// the request took, when all of them were read), passed on in report mode.
#[allow(clippy::too_many_arguments)]
async fn failed<C: Downstream>(
    view: &View,
    v: &Validation,
    client: &mut C,
    decision: &mut Decision,
    out: &mut Vec<u8>,
    rec: &mut Record,
    fails: &Failures,
    consumed: usize,
) -> Option<Flow> {
    v.count(Outcome::Invalid);
    rec.validation = Some(Outcome::Invalid);
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
    rec.variant = None;
    rec.mirror = None;
    // A body that was not read (a head failure) leaves an HTTP/1.1 connection unusable for
    // another request: the answer closes it.
    let whole =
        consumed > plan.head_len || matches!(plan.framing, Framing::None | Framing::Length(0));
    if !whole && client.connection().is_some() {
        return answer(view, client, out, rec, status, &body, false).await;
    }
    let keep = plan.keep_alive;
    let route = &view.snap.routes.routes()[plan.route];
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
    *decision = Decision::Local {
        head_len: consumed.max(plan.head_len),
        keep_alive: keep,
        status,
    };
    None
}

/// Writes a whole answer and closes, lingering for what the client still sends.
async fn answer<C: Downstream>(
    view: &View,
    client: &mut C,
    out: &mut Vec<u8>,
    rec: &mut Record,
    status: u16,
    body: &[u8],
    keep: bool,
) -> Option<Flow> {
    out.clear();
    let what = head::LocalResponse {
        status,
        content_type: "application/problem+json",
        location: None,
        body,
    };
    head::write_bare_response(out, &what, false, keep, 1);
    rec.status = status;
    let ok = client
        .write_all(out, view.snap.http.client_body_timeout)
        .await
        .is_ok();
    if ok {
        if let Some(conn) = client.connection() {
            super::linger(conn).await;
        }
    }
    Some(Flow::Close)
}
