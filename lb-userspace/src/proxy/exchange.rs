//! One request/response exchange with a backend: endpoint choice, pooled or fresh connection,
//! retry where it is safe, head and body both ways.

use std::net::SocketAddr;
use std::time::Instant;

use super::body::{pump, Encode, PumpFail};
use super::{head, send_error, Flow, Plan};
use crate::balancing;
use crate::config::MAX_HEADERS_LIMIT;
use crate::http::response::{self, ResponseError};
use crate::http::{Framing, Method};
use crate::net::{write_buf, BufConn, IoFail};
use crate::snapshot::Cluster;
use crate::upstream::{self, ConnectError, Upstream};
use crate::worker::{View, Worker};

/// Endpoints tried per request: the first, and one other after a connect failure or a reset
/// before any response byte.
const MAX_ATTEMPTS: usize = 2;
/// Bodies up to this size that are already read travel in the same write as their head.
const INLINE_BODY_MAX: usize = 8 * 1024;

/// How an exchange failed, and so what the client is told.
enum Failed {
    /// Nothing of a response arrived and the backend closed or reset: on a pooled connection
    /// this is a keep-alive race and the request may go again.
    NoResponse,
    /// Answer the client with this error.
    Respond(u16, &'static str, &'static str),
    /// The client is gone or the response was cut: close without another word.
    Close,
}

/// The result of the exchange for the caller: what the client connection does next and
/// whether the upstream connection can go back to the pool.
struct Done {
    flow: Flow,
    reusable: bool,
}

/// Proxies one planned request; the head for upstream is already in `out`.
pub async fn proxy(
    w: &Worker,
    view: &View,
    client: &mut BufConn,
    out: &mut Vec<u8>,
    plan: Plan,
    _peer: SocketAddr,
) -> Flow {
    let snap = &view.snap;
    let http = &snap.http;
    let cluster = &snap.clusters[plan.cluster];
    client.consume(plan.head_len);
    let close_on_error = plan.framing != Framing::None || !plan.keep_alive;

    let mut body = plan.framing;
    if let Framing::Length(n) = plan.framing {
        if http.max_request_body > 0 && n > http.max_request_body {
            send_error(
                client,
                out,
                413,
                "body_too_large",
                "request body exceeds the configured limit",
                true,
                view,
            )
            .await;
            return Flow::Close;
        }
        if n as usize <= INLINE_BODY_MAX && client.data().len() as u64 >= n {
            out.extend_from_slice(&client.data()[..n as usize]);
            client.consume(n as usize);
            body = Framing::None;
        }
    }
    let body_start = client.position();
    let reads_at_start = client.reads;
    let replayable = |c: &BufConn| body == Framing::None || c.reads == reads_at_start;

    let mut excluded = [usize::MAX; MAX_ATTEMPTS];
    let mut tried = 0;
    let mut sent_continue = false;
    let mut last_failure: Option<(u16, &'static str, &'static str)> = None;
    'endpoints: while tried < MAX_ATTEMPTS {
        let Some(idx) = balancing::round_robin(
            cluster.endpoints.len(),
            &view.cursors[plan.cluster],
            &excluded[..tried],
        ) else {
            break;
        };
        excluded[tried] = idx;
        tried += 1;
        let addr = cluster.endpoints[idx].addr;
        let mut force_fresh = false;
        loop {
            let pooled = if force_fresh {
                None
            } else {
                w.pool.checkout(addr, body != Framing::None, &w.bufs)
            };
            let mut up = match pooled {
                Some(u) => u,
                None => match upstream::connect(addr, cluster.connect_timeout, &w.bufs).await {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::debug!(endpoint = %addr, error = ?e, "connect failed");
                        last_failure = Some(match e {
                            ConnectError::Timeout => (
                                504,
                                "connect_timeout",
                                "connecting to the backend timed out",
                            ),
                            ConnectError::Io(_) => {
                                (502, "connect_failed", "the backend refused the connection")
                            }
                        });
                        continue 'endpoints;
                    }
                },
            };
            if plan.expect_continue && !sent_continue && body != Framing::None {
                sent_continue = true;
                let (r, _) = monoio::io::AsyncWriteRentExt::write_all(
                    &mut client.stream,
                    &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
                )
                .await;
                if r.is_err() {
                    return Flow::Close;
                }
            }
            let result = exchange(w, view, cluster, client, out, &mut up, plan, body).await;
            match result {
                Ok(done) => {
                    if done.reusable && !w.draining() {
                        w.pool.checkin(
                            up,
                            cluster.pool_idle_timeout,
                            cluster.pool_max_idle_per_endpoint,
                            &w.bufs,
                        );
                    } else {
                        w.bufs.give(up.conn.into_parts().1);
                    }
                    return done.flow;
                }
                Err(Failed::NoResponse) if up.reused && replayable(client) => {
                    client.rewind(body_start);
                    force_fresh = true;
                    continue;
                }
                Err(Failed::NoResponse) if plan.method.is_idempotent() && replayable(client) => {
                    client.rewind(body_start);
                    last_failure = Some((
                        502,
                        "upstream_reset",
                        "the backend closed the connection without answering",
                    ));
                    continue 'endpoints;
                }
                Err(Failed::NoResponse) => {
                    send_error(
                        client,
                        out,
                        502,
                        "upstream_reset",
                        "the backend closed the connection without answering",
                        close_on_error,
                        view,
                    )
                    .await;
                    return if close_on_error {
                        Flow::Close
                    } else {
                        Flow::Continue
                    };
                }
                Err(Failed::Respond(status, code, message)) => {
                    let close = close_on_error || status == 408 || status == 413 || status == 400;
                    send_error(client, out, status, code, message, close, view).await;
                    return if close { Flow::Close } else { Flow::Continue };
                }
                Err(Failed::Close) => return Flow::Close,
            }
        }
    }
    let (status, code, message) = last_failure.unwrap_or((
        503,
        "no_endpoint",
        "no endpoint is available for this route",
    ));
    send_error(client, out, status, code, message, close_on_error, view).await;
    if close_on_error {
        Flow::Close
    } else {
        Flow::Continue
    }
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    w: &Worker,
    view: &View,
    cluster: &Cluster,
    client: &mut BufConn,
    out: &mut Vec<u8>,
    up: &mut Upstream,
    plan: Plan,
    body: Framing,
) -> Result<Done, Failed> {
    let http = &view.snap.http;

    // The head (and a small body with it). A failed write means nothing reached the backend.
    match write_buf(&mut up.conn.stream, out, cluster.idle_timeout).await {
        Ok(()) => {}
        Err(IoFail::Timeout) => {
            return Err(Failed::Respond(
                504,
                "upstream_timeout",
                "sending to the backend timed out",
            ))
        }
        Err(_) => return Err(Failed::NoResponse),
    }

    if body != Framing::None {
        let mut scratch = if body == Framing::Chunked {
            w.out_bufs.take()
        } else {
            Vec::new()
        };
        let r = pump(
            client,
            &mut up.conn.stream,
            body,
            Encode::Chunked,
            &mut scratch,
            http.client_body_timeout,
            http.max_request_body,
        )
        .await;
        w.out_bufs.give(scratch);
        match r {
            Ok(_) => {}
            Err(PumpFail::Src(IoFail::Timeout)) => {
                return Err(Failed::Respond(
                    408,
                    "request_timeout",
                    "the request body stalled",
                ))
            }
            Err(PumpFail::Src(_)) => return Err(Failed::Close),
            Err(PumpFail::Chunk(e)) => {
                tracing::debug!(error = %e, "invalid chunked request body");
                return Err(Failed::Respond(
                    400,
                    "bad_request",
                    "invalid chunked request body",
                ));
            }
            Err(PumpFail::TooLarge) => {
                return Err(Failed::Respond(
                    413,
                    "body_too_large",
                    "request body exceeds the configured limit",
                ))
            }
            Err(PumpFail::Dst(IoFail::Timeout)) => {
                return Err(Failed::Respond(
                    504,
                    "upstream_timeout",
                    "sending to the backend timed out",
                ))
            }
            Err(PumpFail::Dst(_)) => return Err(Failed::NoResponse),
        }
    }

    // The response head; interim 1xx responses are consumed (lb answers Expect itself).
    let deadline = Instant::now() + cluster.response_timeout;
    let mut got_bytes = !up.conn.data().is_empty();
    let (framing, reusable, plan_out) = loop {
        if !up.conn.data().is_empty() {
            got_bytes = true;
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS_LIMIT];
            let parsed = response::parse(up.conn.data(), &mut storage, plan.method == Method::Head);
            let step = match parsed {
                Ok(Some(res)) if res.status == 101 => {
                    return Err(Failed::Respond(
                        502,
                        "bad_gateway",
                        "the backend switched protocols, which this route does not allow",
                    ))
                }
                Ok(Some(res)) if res.status < 200 => HeadStep::Interim(res.head_len),
                Ok(Some(res)) => {
                    let keep = plan.keep_alive && !w.draining();
                    let route = &view.snap.routes.routes()[plan.route];
                    let p = head::write_response_head(out, &res, plan.minor, keep, http, route);
                    HeadStep::Final(res.head_len, res.framing, res.reusable, p)
                }
                Ok(None) if up.conn.is_full() => {
                    return Err(Failed::Respond(
                        502,
                        "bad_gateway",
                        "the backend's response head is too large",
                    ))
                }
                Ok(None) => HeadStep::NeedMore,
                Err(ResponseError::TooManyHeaders) => {
                    return Err(Failed::Respond(
                        502,
                        "bad_gateway",
                        "the backend's response has too many headers",
                    ))
                }
                Err(_) => {
                    return Err(Failed::Respond(
                        502,
                        "bad_gateway",
                        "the backend sent an invalid response",
                    ))
                }
            };
            match step {
                HeadStep::Interim(n) => {
                    up.conn.consume(n);
                    continue;
                }
                HeadStep::Final(n, framing, reusable, p) => {
                    up.conn.consume(n);
                    break (framing, reusable, p);
                }
                HeadStep::NeedMore => {}
            }
        }
        match up
            .conn
            .fill(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            Ok(_) => {}
            Err(IoFail::Timeout) => {
                return Err(Failed::Respond(
                    504,
                    "upstream_timeout",
                    "the backend did not answer in time",
                ))
            }
            Err(_) if !got_bytes => return Err(Failed::NoResponse),
            Err(_) => {
                return Err(Failed::Respond(
                    502,
                    "bad_gateway",
                    "the backend closed the connection mid-response",
                ))
            }
        }
    };

    // The head goes out with as much of a small body as is already here.
    let mut rest = framing;
    if let Framing::Length(n) = framing {
        if n as usize <= INLINE_BODY_MAX && up.conn.data().len() as u64 >= n {
            out.extend_from_slice(&up.conn.data()[..n as usize]);
            up.conn.consume(n as usize);
            rest = Framing::None;
        }
    }
    if write_buf(&mut client.stream, out, http.client_body_timeout)
        .await
        .is_err()
    {
        return Err(Failed::Close);
    }
    if rest != Framing::None {
        let encode = if plan_out.chunked_out {
            Encode::Chunked
        } else {
            Encode::Plain
        };
        let mut scratch = if encode == Encode::Chunked || rest == Framing::Chunked {
            w.out_bufs.take()
        } else {
            Vec::new()
        };
        let r = pump(
            &mut up.conn,
            &mut client.stream,
            rest,
            encode,
            &mut scratch,
            cluster.idle_timeout,
            0,
        )
        .await;
        w.out_bufs.give(scratch);
        if let Err(e) = r {
            // Headers are gone already: closing is the only way to tell the client the body is
            // incomplete.
            tracing::debug!(error = ?e, endpoint = %up.addr, "response body cut");
            return Err(Failed::Close);
        }
    }
    Ok(Done {
        flow: if plan_out.client_keep_alive {
            Flow::Continue
        } else {
            Flow::Close
        },
        reusable,
    })
}

enum HeadStep {
    Interim(usize),
    Final(usize, Framing, bool, head::ResponsePlan),
    NeedMore,
}
