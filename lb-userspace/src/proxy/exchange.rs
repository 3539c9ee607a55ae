//! One request to a cluster: pick an endpoint (health, ejection and breakers permitting),
//! enforce limits, get a pooled or fresh connection, exchange, record the outcome, and retry
//! on another endpoint where the policy and the budget allow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::body::{pump, Encode, Out, Pace, PumpFail};
use super::{head, send_error, Flow, Plan, Record};
use crate::config::{RetryConfig, MAX_HEADERS_LIMIT};
use crate::http::response::{self, ResponseError};
use crate::http::write::error_response;
use crate::http::{Framing, Method};
use crate::net::{write_buf, BufConn, IoFail};
use crate::snapshot::Cluster;
use crate::timer::now_ms;
use crate::upstream::state::{Admission, Outcome};
use crate::upstream::{self, ConnectError, Upstream};
use crate::worker::{View, Worker};

/// Request bodies up to this size that are already read travel in the same write as their
/// head.
const INLINE_BODY_MAX: usize = 8 * 1024;
/// The same for response bodies: one copy is cheaper than a second write.
const INLINE_RESPONSE_MAX: usize = 32 * 1024;
/// How often a request waiting for a connection slot looks again.
const PENDING_POLL: Duration = Duration::from_millis(2);

/// How an exchange failed, and so what the client is told.
enum Failed {
    /// Nothing of a response arrived and the backend closed or reset: on a pooled connection
    /// this is a keep-alive race and the request may go again.
    NoResponse,
    /// The backend did not answer (or take the request) in time.
    Timeout(&'static str),
    /// The backend answered something unusable: 502.
    BadResponse(&'static str),
    /// The response status is one the retry policy retries; nothing was sent to the client.
    RetryStatus(u16),
    /// The client's side failed (slow or invalid body): answer this and close.
    Client(u16, &'static str, &'static str),
    /// The response was cut by the backend after its head went out: close the client.
    Cut,
    /// The client is gone.
    ClientGone,
}

/// A finished exchange.
struct Done {
    flow: Flow,
    reusable: bool,
    status: u16,
    /// From sending the head to having the response head; measured only for the access log.
    upstream: Option<Duration>,
    /// Response body bytes sent to the client.
    bytes: u64,
}

/// Timeouts in force for one request: the cluster's, or the route's overrides.
#[derive(Clone, Copy)]
struct Timeouts {
    connect: Duration,
    response: Duration,
    idle: Duration,
}

/// Decrements a shared counter when dropped, so every exit path releases what it took.
struct Held<'a>(&'a AtomicU64);

impl<'a> Held<'a> {
    fn take(c: &'a AtomicU64) -> Held<'a> {
        c.fetch_add(1, Ordering::Relaxed);
        Held(c)
    }

    /// Takes over one count that was already added.
    fn adopt(c: &'a AtomicU64) -> Held<'a> {
        Held(c)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers with an error and says whether the connection carries on.
async fn answer_error(
    client: &mut BufConn,
    out: &mut Vec<u8>,
    (status, code, message): (u16, &'static str, &'static str),
    close: bool,
    view: &View,
    rec: &mut Record,
) -> Flow {
    send_error(client, out, status, code, message, close, view, rec).await;
    if close {
        Flow::Close
    } else {
        Flow::Continue
    }
}

/// A refusal by a limit: 503 at once, with the limit named in `X-LB-Limit`.
async fn limit_reached(
    client: &mut BufConn,
    out: &mut Vec<u8>,
    view: &View,
    cluster: &Cluster,
    limit: &'static str,
    close: bool,
    rec: &mut Record,
) -> Flow {
    tracing::debug!(cluster = %cluster.name, limit, "request refused by a limit");
    cluster.metrics.limit(limit);
    rec.status = 503;
    error_response(out, 503, "limit_reached", limit, close);
    // The header goes in front of the blank line of the error response.
    let header = format!("X-LB-Limit: {limit}\r\n");
    if let Some(pos) = out.windows(4).position(|w| w == b"\r\n\r\n") {
        out.splice(pos + 2..pos + 2, header.bytes());
    }
    let ok = write_buf(&mut client.stream, out, view.snap.http.client_body_timeout)
        .await
        .is_ok();
    if close || !ok {
        Flow::Close
    } else {
        Flow::Continue
    }
}

/// Proxies one planned request; the head for upstream is already in `out`.
pub async fn proxy(
    w: &Worker,
    view: &View,
    client: &mut BufConn,
    out: &mut Vec<u8>,
    plan: Plan,
    rec: &mut Record,
) -> Flow {
    let snap = &view.snap;
    let http = &snap.http;
    let cluster = &snap.clusters[plan.cluster];
    let route = &snap.routes.routes()[plan.route];
    let policy = &cluster.config;
    let retry = &policy.retry;
    let timeouts = Timeouts {
        connect: route.timeouts.connect.unwrap_or(cluster.connect_timeout),
        response: route.timeouts.response.unwrap_or(cluster.response_timeout),
        idle: route.timeouts.idle.unwrap_or(cluster.idle_timeout),
    };
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
                rec,
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
    // A body larger than the read buffer moves through a large one: a quarter of the reads
    // and writes. (Before `body_start`: positions refer to the buffer in use.)
    let large = match body {
        Framing::Chunked => true,
        Framing::Length(n) => n > (client.buf_capacity() - client.data().len()) as u64,
        _ => false,
    };
    if large && client.buf_capacity() < w.up_bufs.size() {
        let small = client.swap_buf(w.up_bufs.take());
        w.bufs.give(small);
    }
    let body_start = client.position();
    let reads_at_start = client.reads;
    let replayable = |c: &BufConn| body == Framing::None || c.reads == reads_at_start;
    let may_repeat = plan.method.is_idempotent() || retry.non_idempotent;

    let cstate = &cluster.state;
    if policy.limits.max_requests > 0
        && cstate.in_flight.load(Ordering::Relaxed) >= policy.limits.max_requests as u64
    {
        return limit_reached(
            client,
            out,
            view,
            cluster,
            "cluster_max_requests",
            close_on_error,
            rec,
        )
        .await;
    }
    let _cluster_request = Held::take(&cstate.in_flight);

    // Retries in flight stay under both the budget (a share of requests in flight, with a
    // floor) and the cluster's max_retries limit, so retries cannot amplify an outage.
    let budget_ok = || {
        let active = cstate.in_flight.load(Ordering::Relaxed);
        let retrying = cstate.retries_in_flight.load(Ordering::Relaxed);
        let allowed =
            (active * retry.budget_percent as u64 / 100).max(retry.min_retry_concurrency as u64);
        let under_limit =
            policy.limits.max_retries == 0 || retrying < policy.limits.max_retries as u64;
        retrying < allowed && under_limit
    };
    // Reserves a retry slot at the moment a retryable status is seen, so that concurrent
    // failures cannot all commit to retries the budget does not have.
    let reserve = || {
        let ok = budget_ok();
        if ok {
            cstate.retries_in_flight.fetch_add(1, Ordering::Relaxed);
        }
        ok
    };
    let balancer = &view.balancers[plan.cluster];
    let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
    let mut sent_continue = false;
    let mut last_failure: Option<(u16, &'static str, &'static str)> = None;
    let mut retry_slot: Option<Held<'_>> = None;
    let mut attempt = 0u32;
    'attempts: loop {
        attempt += 1;
        let now = now_ms();
        let n = cluster.endpoints.len();
        let available = cluster
            .endpoints
            .iter()
            .filter(|e| e.state.is_available(now))
            .count();
        // Panic mode: too few usable endpoints means health data is suspect; use them all.
        let panic = available * 100 < policy.panic_threshold as usize * n;
        let mut blocked: SmallVec<[usize; 4]> = SmallVec::new();
        let picked = loop {
            let usable = |i: usize| {
                !tried.contains(&i)
                    && !blocked.contains(&i)
                    && (panic || cluster.endpoints[i].state.is_available(now))
            };
            let Some(i) = balancer.pick(cluster, plan.key_hash, usable) else {
                break None;
            };
            let admission = match &policy.breaker {
                Some(b) => cluster.endpoints[i].state.breaker.admit(b, now),
                None => Admission::Allowed,
            };
            if admission == Admission::Rejected {
                blocked.push(i);
                continue;
            }
            break Some((i, admission));
        };
        let Some((idx, admission)) = picked else {
            if let Some((status, code, message)) = last_failure {
                return answer_error(
                    client,
                    out,
                    (status, code, message),
                    close_on_error,
                    view,
                    rec,
                )
                .await;
            }
            if !blocked.is_empty() {
                return limit_reached(
                    client,
                    out,
                    view,
                    cluster,
                    "breaker_open",
                    close_on_error,
                    rec,
                )
                .await;
            }
            return answer_error(
                client,
                out,
                (
                    503,
                    "no_endpoint",
                    "no endpoint is available for this route",
                ),
                close_on_error,
                view,
                rec,
            )
            .await;
        };
        let ep = &cluster.endpoints[idx];
        let estate = &ep.state;
        rec.endpoint = Some(ep.addr);
        let release_probe = |ok: bool| {
            if let Some(b) = &policy.breaker {
                estate.breaker.record(b, admission, ok, now_ms());
            }
        };
        if policy.endpoint_limits.max_requests > 0
            && estate.in_flight.load(Ordering::Relaxed)
                >= policy.endpoint_limits.max_requests as u64
        {
            release_probe(true);
            return limit_reached(
                client,
                out,
                view,
                cluster,
                "endpoint_max_requests",
                close_on_error,
                rec,
            )
            .await;
        }
        let _endpoint_request = Held::take(&estate.in_flight);
        estate.requests_total.fetch_add(1, Ordering::Relaxed);
        let record = |outcome: Outcome| {
            let now = now_ms();
            if !outcome.ok() {
                estate.failures_total.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = cluster.metrics.failures.get(idx) {
                    c.increment(1);
                }
            }
            if let Some(b) = &policy.breaker {
                estate.breaker.record(b, admission, outcome.ok(), now);
            }
            if let Some(o) = &policy.outlier {
                let ejected = cluster
                    .endpoints
                    .iter()
                    .filter(|e| e.state.is_ejected(now))
                    .count();
                if estate.record_outlier(o, outcome, now, ejected, cluster.endpoints.len()) {
                    tracing::warn!(cluster = %cluster.name, endpoint = %ep.addr, ?outcome, "outlier detection ejected endpoint");
                }
            }
        };

        let mut force_fresh = false;
        let failure = loop {
            let mut up = match get_connection(w, cluster, idx, force_fresh, timeouts).await {
                Ok(u) => u,
                Err(GetFailed::Limit(limit)) => {
                    release_probe(true);
                    return limit_reached(client, out, view, cluster, limit, close_on_error, rec)
                        .await;
                }
                Err(GetFailed::Connect(e)) => {
                    tracing::debug!(endpoint = %ep.addr, error = ?e, "connect failed");
                    record(Outcome::ConnectFailure);
                    break match e {
                        ConnectError::Timeout => (
                            retry.on_connect_failure,
                            (
                                504,
                                "connect_timeout",
                                "connecting to the backend timed out",
                            ),
                        ),
                        ConnectError::Io(_) => (
                            retry.on_connect_failure,
                            (502, "connect_failed", "the backend refused the connection"),
                        ),
                    };
                }
            };
            if plan.expect_continue && !sent_continue && body != Framing::None {
                sent_continue = true;
                let (r, _) = monoio::io::AsyncWriteRentExt::write_all(
                    &mut client.stream,
                    &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
                )
                .await;
                if r.is_err() {
                    release_probe(true);
                    return Flow::Close;
                }
            }
            // A retryable status is only held back from the client if a retry can follow.
            let retry_status: Option<(&RetryConfig, &dyn Fn() -> bool)> =
                (attempt < retry.attempts && may_repeat && replayable(client))
                    .then_some((retry, &reserve));
            let result = exchange(
                w,
                view,
                cluster,
                client,
                out,
                &mut up,
                plan,
                body,
                timeouts,
                retry_status,
            )
            .await;
            match result {
                Ok(done) => {
                    rec.status = done.status;
                    rec.upstream = done.upstream;
                    rec.bytes = done.bytes;
                    record(if done.status >= 500 {
                        Outcome::ServerError
                    } else {
                        Outcome::Success
                    });
                    if done.reusable && !w.draining() {
                        w.pool.checkin(
                            up,
                            cluster.pool_idle_timeout,
                            cluster.pool_max_idle_per_endpoint,
                            &w.up_bufs,
                        );
                    } else {
                        up.close(&w.up_bufs);
                    }
                    return done.flow;
                }
                Err(Failed::NoResponse) if up.reused && replayable(client) => {
                    // A keep-alive race, not the endpoint's fault: once more on a fresh connection.
                    up.close(&w.up_bufs);
                    client.rewind(body_start);
                    force_fresh = true;
                    continue;
                }
                Err(Failed::NoResponse) => {
                    up.close(&w.up_bufs);
                    record(Outcome::Failure);
                    break (
                        retry.on_reset,
                        (
                            502,
                            "upstream_reset",
                            "the backend closed the connection without answering",
                        ),
                    );
                }
                Err(Failed::Timeout(message)) => {
                    record(Outcome::Failure);
                    break (retry.on_timeout, (504, "upstream_timeout", message));
                }
                Err(Failed::RetryStatus(status)) => {
                    record(if status >= 500 {
                        Outcome::ServerError
                    } else {
                        Outcome::Success
                    });
                    break (
                        true,
                        (
                            502,
                            "upstream_error",
                            "the backend kept answering with a retryable status",
                        ),
                    );
                }
                Err(Failed::BadResponse(message)) => {
                    record(Outcome::Failure);
                    break (false, (502, "bad_gateway", message));
                }
                Err(Failed::Client(status, code, message)) => {
                    release_probe(true);
                    send_error(client, out, status, code, message, true, view, rec).await;
                    return Flow::Close;
                }
                Err(Failed::Cut) => {
                    record(Outcome::Failure);
                    return Flow::Close;
                }
                Err(Failed::ClientGone) => {
                    release_probe(true);
                    return Flow::Close;
                }
            }
        };
        let (retryable, answer) = failure;
        last_failure = Some(answer);
        tried.push(idx);
        drop(retry_slot.take());
        // A held-back status reserved its retry slot already. A connection that never opened
        // carried nothing: trying another endpoint is safe for any method and adds no load to
        // the failed one, so it needs neither idempotence nor the budget (only `attempts`
        // bounds it), as with nginx's next upstream on connect errors.
        let reserved = answer.1 == "upstream_error";
        let never_sent = matches!(answer.1, "connect_failed" | "connect_timeout");
        let budget = reserved || never_sent || budget_ok();
        let again = retryable
            && attempt < retry.attempts
            && (may_repeat || never_sent)
            && replayable(client)
            && budget;
        if !again {
            if reserved {
                cstate.retries_in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            if retryable && attempt < retry.attempts && !budget {
                tracing::debug!(cluster = %cluster.name, "retry budget exhausted");
            }
            let (status, code, message) = answer;
            return answer_error(
                client,
                out,
                (status, code, message),
                close_on_error,
                view,
                rec,
            )
            .await;
        }
        cluster.metrics.retries.increment(1);
        retry_slot = Some(if reserved {
            Held::adopt(&cstate.retries_in_flight)
        } else {
            Held::take(&cstate.retries_in_flight)
        });
        client.rewind(body_start);
        let backoff = backoff(retry, attempt);
        if !backoff.is_zero() {
            crate::timer::sleep(backoff).await;
        }
        continue 'attempts;
    }
}

/// Exponential backoff with full jitter: random in [0, min(max, base * 2^(attempt-1))].
fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    if retry.backoff_base.is_zero() {
        return Duration::ZERO;
    }
    let cap = retry
        .backoff_base
        .saturating_mul(1u32 << (attempt - 1).min(16))
        .min(retry.backoff_max);
    Duration::from_micros(fastrand::u64(0..=cap.as_micros() as u64))
}

enum GetFailed {
    Limit(&'static str),
    Connect(ConnectError),
}

/// A pooled connection, or a fresh one if the connection limits allow; past a limit the
/// request waits (bounded by `max_pending` and `pending_timeout`) for a slot.
async fn get_connection(
    w: &Worker,
    cluster: &Cluster,
    idx: usize,
    force_fresh: bool,
    timeouts: Timeouts,
) -> Result<Upstream, GetFailed> {
    let ep = &cluster.endpoints[idx];
    let limits = &cluster.config.limits;
    let ep_limits = &cluster.config.endpoint_limits;
    let full = || {
        (limits.max_connections > 0
            && cluster.state.connections.load(Ordering::Relaxed) >= limits.max_connections as u64)
            || (ep_limits.max_connections > 0
                && ep.state.connections.load(Ordering::Relaxed) >= ep_limits.max_connections as u64)
    };
    let mut pending: Option<(Held<'_>, Held<'_>, Instant)> = None;
    loop {
        if !force_fresh {
            if let Some(u) = w.pool.checkout(ep.addr, &w.up_bufs) {
                return Ok(u);
            }
        }
        if !full() {
            let started = Instant::now();
            let up = upstream::connect(
                ep.addr,
                timeouts.connect,
                &w.up_bufs,
                &ep.state,
                &cluster.state,
            )
            .await
            .map_err(GetFailed::Connect)?;
            cluster
                .metrics
                .connect
                .record(started.elapsed().as_secs_f64());
            return Ok(up);
        }
        let since = match &pending {
            Some((_, _, since)) => *since,
            None => {
                let max_pending = limits.max_pending.max(ep_limits.max_pending) as u64;
                if cluster.state.pending.load(Ordering::Relaxed) >= max_pending {
                    return Err(GetFailed::Limit("max_pending"));
                }
                let now = Instant::now();
                pending = Some((
                    Held::take(&cluster.state.pending),
                    Held::take(&ep.state.pending),
                    now,
                ));
                now
            }
        };
        let timeout = limits.pending_timeout.max(ep_limits.pending_timeout);
        if since.elapsed() >= timeout {
            return Err(GetFailed::Limit("pending_timeout"));
        }
        crate::timer::sleep(PENDING_POLL).await;
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
    timeouts: Timeouts,
    retry_status: Option<(&RetryConfig, &dyn Fn() -> bool)>,
) -> Result<Done, Failed> {
    let http = &view.snap.http;
    // Upstream time is reported only in the access log; without one, no stamps are taken.
    let sent_at = w.access_log_on().then(crate::clock::stamp);

    // The head (and a small body with it). A failed write means nothing reached the backend.
    match write_buf(&mut up.conn.stream, out, timeouts.idle).await {
        Ok(()) => {}
        Err(IoFail::Timeout) => return Err(Failed::Timeout("sending to the backend timed out")),
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
            Out {
                encode: Encode::Chunked,
                trailers: http.trailers,
            },
            &mut scratch,
            Pace::with_min_rate(
                http.client_body_timeout,
                http.min_body_rate,
                http.client_body_timeout,
            ),
            http.max_request_body,
        )
        .await;
        w.out_bufs.give(scratch);
        match r {
            Ok(_) => {}
            Err(PumpFail::Src(IoFail::Timeout)) => {
                return Err(Failed::Client(
                    408,
                    "request_timeout",
                    "the request body stalled",
                ))
            }
            Err(PumpFail::TooSlow) => {
                return Err(Failed::Client(
                    408,
                    "request_timeout",
                    "the request body arrived below the minimum rate",
                ));
            }
            Err(PumpFail::Src(_)) => return Err(Failed::ClientGone),
            Err(PumpFail::Chunk(e)) => {
                tracing::debug!(error = %e, "invalid chunked request body");
                return Err(Failed::Client(
                    400,
                    "bad_request",
                    "invalid chunked request body",
                ));
            }
            Err(PumpFail::TooLarge) => {
                return Err(Failed::Client(
                    413,
                    "body_too_large",
                    "request body exceeds the configured limit",
                ))
            }
            Err(PumpFail::Dst(IoFail::Timeout)) => {
                return Err(Failed::Timeout("sending to the backend timed out"))
            }
            Err(PumpFail::Dst(_)) => return Err(Failed::NoResponse),
        }
    }

    // The response head; interim 1xx responses are consumed (lb answers Expect itself).
    let deadline = crate::timer::deadline_after(timeouts.response);
    let mut got_bytes = !up.conn.data().is_empty();
    let route = &view.snap.routes.routes()[plan.route];
    let (status, framing, reusable, plan_out) = loop {
        if !up.conn.data().is_empty() {
            got_bytes = true;
            // The parsed head borrows `storage` (8 KiB); the block ends both before any await,
            // so they are not kept in this future's state.
            let step = {
                let mut storage = crate::http::header_slots::<MAX_HEADERS_LIMIT>();
                let parsed =
                    response::parse(up.conn.data(), &mut storage, plan.method == Method::Head);
                match parsed {
                    Ok(Some(res)) if res.status == 101 && plan.websocket => {
                        head::write_switching_protocols(out, &res, http);
                        HeadStep::Upgrade(res.head_len)
                    }
                    Ok(Some(res)) if res.status == 101 => {
                        return Err(Failed::BadResponse(
                            "the backend switched protocols, which this route does not allow",
                        ))
                    }
                    Ok(Some(res)) if res.status < 200 => HeadStep::Interim(res.head_len),
                    Ok(Some(res))
                        if retry_status.is_some_and(|(r, reserve)| {
                            r.retries_status(res.status) && reserve()
                        }) =>
                    {
                        return Err(Failed::RetryStatus(res.status))
                    }
                    Ok(Some(res)) => {
                        let keep = plan.keep_alive && !w.draining();
                        let p = head::write_response_head(out, &res, plan.minor, keep, http, route);
                        if let Some((si, t)) = plan.variant {
                            let split = &view.snap.splits[si].config;
                            if let Some(ab) = &split.ab_test {
                                head::insert_headers(
                                    out,
                                    &[("X-AB-Test", ab), ("X-AB-Variant", &split.targets[t].name)],
                                );
                            }
                        }
                        HeadStep::Final(res.status, res.head_len, res.framing, res.reusable, p)
                    }
                    Ok(None) if up.conn.is_full() => {
                        return Err(Failed::BadResponse(
                            "the backend's response head is too large",
                        ))
                    }
                    Ok(None) => HeadStep::NeedMore,
                    Err(ResponseError::TooManyHeaders) => {
                        return Err(Failed::BadResponse(
                            "the backend's response has too many headers",
                        ))
                    }
                    Err(_) => {
                        return Err(Failed::BadResponse("the backend sent an invalid response"))
                    }
                }
            };
            match step {
                HeadStep::Interim(n) => {
                    up.conn.consume(n);
                    continue;
                }
                HeadStep::Final(status, n, framing, reusable, p) => {
                    up.conn.consume(n);
                    break (status, framing, reusable, p);
                }
                HeadStep::Upgrade(n) => {
                    up.conn.consume(n);
                    if write_buf(&mut client.stream, out, http.client_body_timeout)
                        .await
                        .is_err()
                    {
                        return Err(Failed::ClientGone);
                    }
                    let upstream_time = sent_at.map(|s| s.elapsed());
                    let bytes =
                        super::tunnel::run(client, &mut up.conn, http.websocket_idle_timeout).await;
                    return Ok(Done {
                        flow: Flow::Close,
                        reusable: false,
                        status: 101,
                        upstream: upstream_time,
                        bytes,
                    });
                }
                HeadStep::NeedMore => {}
            }
        }
        match up.conn.fill(crate::timer::until(deadline)).await {
            Ok(_) => {}
            Err(IoFail::Timeout) => {
                return Err(Failed::Timeout("the backend did not answer in time"))
            }
            Err(_) if !got_bytes => return Err(Failed::NoResponse),
            Err(_) => {
                return Err(Failed::BadResponse(
                    "the backend closed the connection mid-response",
                ))
            }
        }
    };

    let upstream_time = sent_at.map(|s| s.elapsed());
    // The head goes out with as much of a small body as is already here.
    let mut rest = framing;
    let mut bytes = 0;
    if let Framing::Length(n) = framing {
        if n as usize <= INLINE_RESPONSE_MAX && up.conn.data().len() as u64 >= n {
            out.extend_from_slice(&up.conn.data()[..n as usize]);
            up.conn.consume(n as usize);
            rest = Framing::None;
            bytes = n;
        }
    }
    if write_buf(&mut client.stream, out, http.client_body_timeout)
        .await
        .is_err()
    {
        return Err(Failed::ClientGone);
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
            Out {
                encode,
                trailers: http.trailers,
            },
            &mut scratch,
            Pace::idle(timeouts.idle),
            0,
        )
        .await;
        w.out_bufs.give(scratch);
        match r {
            Ok(n) => bytes = n,
            Err(PumpFail::Dst(_)) => return Err(Failed::ClientGone),
            Err(e) => {
                // Headers are gone already: closing is the only way to tell the client the
                // body is incomplete.
                tracing::debug!(error = ?e, endpoint = %up.addr, cluster = %cluster.name, "response body cut");
                return Err(Failed::Cut);
            }
        }
    }
    Ok(Done {
        flow: if plan_out.client_keep_alive {
            Flow::Continue
        } else {
            Flow::Close
        },
        reusable,
        status,
        upstream: upstream_time,
        bytes,
    })
}

enum HeadStep {
    Interim(usize),
    /// A 101 to a WebSocket upgrade: the head is in `out`; a tunnel follows.
    Upgrade(usize),
    Final(u16, usize, Framing, bool, head::ResponsePlan),
    NeedMore,
}
