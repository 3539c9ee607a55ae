//! HTTP/2 from clients: a connection negotiated by ALPN `h2` on a TLS listener, or opened
//! with the HTTP/2 preface on a plain listener that allows `h2c`. The `h2` crate runs the
//! protocol over [`crate::h2io::H2Io`]; each stream runs the same pipeline as an HTTP/1.1 request
//! through [`stream::H2Stream`], as its own task on the worker.
//!
//! Limits (`[http2]`): concurrent streams, header list size, flow-control windows, frame
//! size, HPACK table, resets (h2's own guards), and the floods [`crate::http::h2`] counts; a
//! connection that breaks one gets GOAWAY and is counted in `lb_h2_goaways_total`. A drain
//! or an idle connection gets a graceful GOAWAY: streams in flight finish.

pub(crate) mod stream;

use std::cell::Cell;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;

use super::error::Refusal;
use super::{log, plan, send_error, ClientSide, Record, Reject, Req};
use crate::http::h2::{Flood, FrameWatch, H2Settings, Trip};
use crate::net::BufConn;
use crate::worker::{ConnGuard, Worker};

pub use crate::http::h2::PREFACE;
pub(crate) use stream::{request_head, Body1};

/// What every stream of a connection knows of its client.
struct Client {
    /// The connection's client (its peer, or its PROXY protocol header's source).
    conn: crate::client::ClientAddr,
    listener: usize,
    tls: bool,
    sni: Option<String>,
    client_cert: Option<crate::tls::ClientCert>,
}

/// Serves `client` as an HTTP/2 connection until it ends. What the HTTP/1.1 side read is
/// handed over with it.
pub async fn serve(client: BufConn, peer: SocketAddr, guard: ConnGuard) {
    let w = guard.worker.clone();
    let settings = w.view().snap.http2;
    let info = Rc::new(Client {
        conn: super::Arrival::of(peer, &guard).client,
        listener: guard.listener,
        tls: client.is_tls(),
        sni: client.sni().map(str::to_string),
        client_cert: client.client_cert().cloned(),
    });
    let tripped = Rc::new(Trip::default());
    let Some(mut conn) = handshake(client, &settings, &tripped).await else {
        return;
    };
    accept_streams(&w, &info, &mut conn, &settings, &tripped).await;
    // Streams in flight finish; the connection's frames keep moving until they have.
    let _ = poll_fn(|cx| conn.poll_closed(cx)).await;
    drop(guard);
}

type ServerConn = h2::server::Connection<crate::h2io::H2Io, bytes::Bytes>;

/// Hands the connection to h2 with the `[http2]` limits and runs the HTTP/2 handshake.
async fn handshake(
    client: BufConn,
    settings: &H2Settings,
    tripped: &Rc<Trip>,
) -> Option<ServerConn> {
    let parts = client.hand_over();
    let watch = FrameWatch::new(settings.flood, tripped.clone());
    let io = crate::h2io::H2Io::new(parts.stream, parts.tls, parts.pending, Some(watch));
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_size)
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .header_table_size(settings.hpack_table_size)
        .max_pending_accept_reset_streams(settings.max_pending_resets)
        .max_local_error_reset_streams(Some(settings.max_error_resets));
    let handshake = builder.handshake::<_, bytes::Bytes>(io);
    match crate::timer::timeout(settings.handshake_timeout, handshake).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            None
        }
        Err(_) => {
            crate::metrics::h2_goaway("handshake_timeout");
            None
        }
    }
}

/// Accepts streams, each its own task, until the connection ends: the client closes it, a
/// flood limit trips, or a drain or idleness sends GOAWAY and the client stops.
async fn accept_streams(
    w: &Rc<Worker>,
    info: &Rc<Client>,
    conn: &mut ServerConn,
    settings: &H2Settings,
    tripped: &Rc<Trip>,
) {
    let open = Rc::new(Cell::new(0usize));
    let mut drain = w.drain_signal();
    let mut draining = false;
    loop {
        let accepted = monoio::select! {
            a = conn.accept() => Some(a),
            _ = &mut drain, if !draining => {
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
            f = poll_fn(|cx| tripped.poll(cx)) => {
                goaway_for(conn, f);
                None
            }
            _ = crate::timer::sleep(settings.idle_timeout) => {
                if open.get() == 0 && !draining {
                    draining = true;
                    crate::metrics::h2_goaway("idle");
                    conn.graceful_shutdown();
                }
                continue;
            }
        };
        match accepted {
            Some(Some(Ok((req, respond)))) => {
                open.set(open.get() + 1);
                let (w, info, open) = (w.clone(), info.clone(), open.clone());
                let trip = tripped.clone();
                monoio::spawn(async move {
                    serve_stream(&w, &info, req, respond, trip).await;
                    open.set(open.get() - 1);
                });
            }
            Some(Some(Err(e))) => {
                tracing::debug!(error = %e, "HTTP/2 connection error");
                if let Some(reason) = e.reason() {
                    crate::metrics::h2_goaway(reason_label(reason));
                }
                return;
            }
            Some(None) | None => return,
        }
    }
}

/// Ends a connection that broke a flood limit: GOAWAY with ENHANCE_YOUR_CALM, counted.
fn goaway_for<T, B>(conn: &mut h2::server::Connection<T, B>, f: Flood)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: bytes::Buf,
{
    tracing::info!(
        limit = f.label(),
        "HTTP/2 client broke a flood limit; GOAWAY"
    );
    crate::metrics::h2_goaway(f.label());
    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
}

fn reason_label(r: h2::Reason) -> &'static str {
    match r {
        h2::Reason::PROTOCOL_ERROR => "protocol_error",
        h2::Reason::FLOW_CONTROL_ERROR => "flow_control_error",
        h2::Reason::FRAME_SIZE_ERROR => "frame_size_error",
        h2::Reason::COMPRESSION_ERROR => "compression_error",
        h2::Reason::ENHANCE_YOUR_CALM => "enhance_your_calm",
        _ => "other",
    }
}

/// One stream through the pipeline: plan, answer locally or proxy, log.
async fn serve_stream(
    w: &Rc<Worker>,
    info: &Client,
    req: http::Request<h2::RecvStream>,
    respond: h2::server::SendResponse<bytes::Bytes>,
    trip: Rc<Trip>,
) {
    let (parts, body) = req.into_parts();
    let head_request = parts.method == http::Method::HEAD;
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut head = w.bufs.take();
    let (built, body) = head_and_early_body(&parts, body, &mut head);
    let chunked = *built.as_ref().unwrap_or(&false);
    let about = stream::About {
        head_request,
        grpc,
        trip,
        stall: w.view().snap.http.client_body_timeout,
    };
    let mut s = stream::H2Stream::new(head, chunked, body, respond, about);
    let mut rec = Record {
        protocol: super::Protocol::H2,
        ..Record::default()
    };
    let mut out = w.out_bufs.take();
    let view = w.view();
    rec.tls = info.tls;
    let mut req = Req {
        view: &view,
        out: &mut out,
        rec: &mut rec,
    };
    if let Err(message) = built {
        let r = Reject::of_stream(Refusal::BadHead(message));
        req.rec.started = Some(crate::clock::stamp());
        send_error(&mut s, &mut req, &r).await;
    } else {
        answer(w, info, &mut s, &mut req).await;
    }
    let cut = rec
        .error
        .is_some_and(|e| e.kind == super::error::ErrorKind::CutMidBody);
    s.finish(cut || !s.answered() && rec.status == 0);
    rec.grpc_status = s.grpc_status();
    rec.grpc = s.is_grpc();
    w.out_bufs.give(out);
    // The request buffer goes back to the pool it came from (a large body swapped in one
    // of the upstream pool's): a stream per request would otherwise allocate one each.
    let buf = s.take_buf();
    if (w.bufs.size()..=4 * w.bufs.size()).contains(&buf.capacity()) {
        w.bufs.give(buf);
    } else {
        w.up_bufs.give(buf);
    }
    if rec.status != 0 {
        log::finish(w, &rec, info.conn);
    }
}

/// The stream's request as an HTTP/1.1 head in `head`, followed by what of its body is here
/// already: a small body without a length that is all here goes with a length, in the same
/// write as the head, and can be replayed by a retry (unary gRPC calls are such). Returns
/// whether the head could be built (and if so, whether the body is chunked), and the body
/// still to come.
fn head_and_early_body(
    parts: &http::request::Parts,
    body: h2::RecvStream,
    head: &mut Vec<u8>,
) -> (Result<bool, &'static str>, Option<h2::RecvStream>) {
    let mut body = (!body.is_end_stream()).then_some(body);
    let mut early = Vec::new();
    let known = match body.as_mut() {
        Some(b) if !parts.headers.contains_key(http::header::CONTENT_LENGTH) => {
            prefetch(b, &mut early)
        }
        _ => false,
    };
    let shape = match (&body, known) {
        (None, _) => stream::Body1::None,
        (Some(_), true) => stream::Body1::Known(early.len()),
        (Some(_), false) => stream::Body1::Unknown,
    };
    if known {
        body = None;
    }
    let built = stream::request_head(parts, shape, head);
    if *built.as_ref().unwrap_or(&false) && !early.is_empty() {
        crate::http::write::push_hex(head, early.len() as u64);
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(&early);
        head.extend_from_slice(b"\r\n");
    } else {
        head.extend_from_slice(&early);
    }
    (built, body)
}

/// Bodies up to this size, without a `Content-Length`, are taken whole before planning when
/// they are already there.
const PREFETCH_MAX: usize = 8 * 1024;

/// Takes into `early` what of `body` has already arrived, without waiting: true if that is
/// all of it (and at most [`PREFETCH_MAX`]). A unary gRPC call's HEADERS, DATA and end of
/// stream usually come in one read; a streaming call is never held up waiting for its end.
fn prefetch(body: &mut h2::RecvStream, early: &mut Vec<u8>) -> bool {
    use futures::FutureExt;
    while early.len() <= PREFETCH_MAX {
        match body.data().now_or_never() {
            Some(Some(Ok(bytes))) => {
                let _ = body.flow_control().release_capacity(bytes.len());
                early.extend_from_slice(&bytes);
            }
            Some(None) => return true,
            _ => return false,
        }
    }
    false
}

/// Plans the stream's request and answers it: the phases after planning are the same as an
/// HTTP/1.1 request's.
async fn answer(w: &Rc<Worker>, info: &Client, s: &mut stream::H2Stream, req: &mut Req<'_>) {
    use super::side::Source;
    let side = ClientSide {
        client: info.conn,
        listener: info.listener,
        tls: info.tls,
        sni: info.sni.as_deref(),
        client_cert: info.client_cert.as_ref(),
    };
    let planned = plan::plan_request(req, s.data(), &side, w.access_log_on());
    let mut decision = match planned {
        Ok(Some(d)) => d,
        Ok(None) => {
            let r = Reject::of_stream(Refusal::BadHead("the request head could not be read"));
            send_error(s, req, &r).await;
            return;
        }
        Err(r) => {
            send_error(s, req, &r).await;
            return;
        }
    };
    super::after_plan(w, req, s, &mut decision).await;
}
