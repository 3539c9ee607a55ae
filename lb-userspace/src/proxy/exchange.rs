//! One request to a cluster: pick an endpoint (health, ejection and breakers permitting),
//! enforce limits, get a pooled or fresh connection, exchange, record the outcome, and retry
//! on another endpoint where the policy and the budget allow. Every failure is a typed
//! [`ProxyError`]; retry decisions match on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::body::{pump, Encode, Out, Pace, PumpFail};
use super::error::{BodyFault, ErrorKind, ProxyError, RetryClass, Side};
use super::h2::stream::BodyIn;
use super::side::Downstream;
use super::{head, send_error, Flow, Plan, Record, Req};
use crate::config::{RetryConfig, MAX_HEADERS_LIMIT};
use crate::http::response::{self, ResponseError};
use crate::http::write::error_response;
use crate::http::{Framing, Method};
use crate::net::{IoFail, Sink, Source};
use crate::timer::now_ms;
use crate::upstream::cluster::Cluster;
use crate::upstream::h2::RequestHalf;
use crate::upstream::state::{Admission, Outcome};
use crate::upstream::{self, ConnectError, Limit, Upstream};
use crate::worker::{View, Worker};

/// Request bodies up to this size that are already read travel in the same write as their
/// head.
const INLINE_BODY_MAX: usize = 8 * 1024;
/// The same for response bodies: one copy is cheaper than a second write.
const INLINE_RESPONSE_MAX: usize = 32 * 1024;
/// How often a request waiting for a connection slot looks again.
const PENDING_POLL: Duration = Duration::from_millis(2);

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

/// What one request carries through its attempts: the decisions made before the first,
/// and where its body starts, so a retry can replay it.
struct Ctx<'a> {
    w: &'a Worker,
    view: &'a View,
    cluster: &'a Cluster,
    plan: Plan,
    timeouts: Timeouts,
    /// The body still to send after the head in `out` (`None` once it went inline).
    body: Framing,
    body_start: usize,
    reads_at_start: u64,
    /// Idempotent, or the policy retries any method.
    may_repeat: bool,
    /// An error answer closes the connection (a body may be unread, or the client asked).
    close_on_error: bool,
    /// `100 Continue` went to the client already (on an earlier attempt).
    sent_continue: std::cell::Cell<bool>,
}

/// The endpoint an attempt goes to, what its breaker said, and which attempt it is.
#[derive(Clone, Copy)]
struct Pick {
    idx: usize,
    admission: Admission,
    attempt: u32,
}

impl Ctx<'_> {
    fn retry(&self) -> &RetryConfig {
        &self.cluster.config.retry
    }

    /// A gRPC call whose cluster retries some gRPC statuses: the statuses the operator
    /// listed say the call was not processed, so it may go again whatever its method.
    fn grpc_retry(&self) -> bool {
        self.plan.grpc && self.retry().grpc_statuses != 0
    }

    /// The request can be sent again: no body, or one whose bytes are all still buffered.
    fn replayable<C: Downstream>(&self, client: &C) -> bool {
        self.body == Framing::None || client.reads() == self.reads_at_start
    }

    /// Retries in flight stay under both the budget (a share of requests in flight, with a
    /// floor) and the cluster's `max_retries`, so retries cannot amplify an outage.
    fn budget_ok(&self) -> bool {
        let cstate = &self.cluster.state;
        let retry = self.retry();
        let max = self.cluster.config.limits.max_retries;
        let active = cstate.in_flight.load(Ordering::Relaxed);
        let retrying = cstate.retries_in_flight.load(Ordering::Relaxed);
        let allowed =
            (active * retry.budget_percent as u64 / 100).max(retry.min_retry_concurrency as u64);
        retrying < allowed && (max == 0 || retrying < max as u64)
    }

    /// Reserves a retry slot at the moment a retryable status is seen, so that concurrent
    /// failures cannot all commit to retries the budget does not have.
    fn reserve(&self) -> bool {
        let ok = self.budget_ok();
        if ok {
            self.cluster
                .state
                .retries_in_flight
                .fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

/// The answer to a failed request, in the form the connection's error writer takes.
fn refusal(e: ProxyError, close: bool) -> super::Reject {
    super::Reject {
        why: super::error::Refusal::Proxy(e),
        head_len: 0,
        close,
    }
}

/// Answers a refusal or failure: its status, code and message from the error, and the limit
/// in `X-LB-Limit` if a limit refused. Says whether the connection carries on.
async fn answer<C: Downstream>(
    ctx: &Ctx<'_>,
    client: &mut C,
    req: &mut Req<'_>,
    e: ProxyError,
) -> Flow {
    let close = ctx.close_on_error || e.closes_client();
    req.rec.error = Some(e);
    client.failed(&e);
    let Some(limit) = e.limit() else {
        send_error(client, req, &refusal(e, close)).await;
        return if close { Flow::Close } else { Flow::Continue };
    };
    let (out, rec) = (&mut *req.out, &mut *req.rec);
    tracing::debug!(cluster = %ctx.cluster.name, limit = limit.label(), "request refused by a limit");
    ctx.cluster.metrics.limit(limit as usize);
    rec.status = e.status();
    error_response(out, e.status(), e.code(), e.message(), close);
    head::insert_headers(out, &[("X-LB-Limit", limit.label())]);
    let timeout = ctx.view.snap.http.client_body_timeout;
    let ok = client.write_all(out, timeout).await.is_ok();
    if close || !ok {
        Flow::Close
    } else {
        Flow::Continue
    }
}

/// Proxies one planned request; the head for upstream is already in `out`. (A plain fn
/// returning an async block: an async fn would keep two copies of each argument in the
/// future, which is in every busy connection's.)
#[allow(clippy::manual_async_fn)] // on purpose: see the comment above
pub(crate) fn proxy<'a, 'r, C: Downstream>(
    w: &'a Worker,
    req: &'a mut Req<'r>,
    client: &'a mut C,
    plan: &'a Plan,
) -> impl std::future::Future<Output = Flow> + use<'a, 'r, C> {
    async move {
        let Some(ctx) = prepare(w, req.view, client, req.out, *plan) else {
            let e = ProxyError::downstream(ErrorKind::Body(BodyFault::TooLarge));
            req.rec.error = Some(e);
            client.failed(&e);
            send_error(client, req, &refusal(e, true)).await;
            return Flow::Close;
        };
        let cstate = &ctx.cluster.state;
        let max_requests = ctx.cluster.config.limits.max_requests;
        if max_requests > 0 && cstate.in_flight.load(Ordering::Relaxed) >= max_requests as u64 {
            let e = ProxyError::internal(ErrorKind::Limit(Limit::ClusterMaxRequests));
            return answer(&ctx, client, req, e).await;
        }
        let _cluster_request = Held::take(&cstate.in_flight);
        let mut tried: SmallVec<[usize; 4]> = SmallVec::new();
        let mut last_failure: Option<ProxyError> = None;
        let mut retry_slot: Option<Held<'_>> = None;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (idx, admission) = match choose_endpoint(&ctx, &tried, attempt > 1) {
                Ok(p) => p,
                Err(e) => {
                    if e.limit() == Some(Limit::MaxRetries) {
                        ctx.cluster.metrics.limit(Limit::MaxRetries as usize);
                    }
                    return answer(&ctx, client, req, last_failure.unwrap_or(e)).await;
                }
            };
            let pick = Pick {
                idx,
                admission,
                attempt,
            };
            let e = match try_endpoint(&ctx, client, req, pick).await {
                Attempt::Finished(flow) => return flow,
                Attempt::Failed(e) => e,
            };
            last_failure = Some(e);
            tried.push(idx);
            drop(retry_slot.take());
            match retry_verdict(&ctx, client, e, attempt) {
                Some(slot) => retry_slot = Some(slot),
                None => return answer(&ctx, client, req, e).await,
            }
            ctx.cluster.metrics.retries.increment(1);
            client.rewind(ctx.body_start);
            let backoff = backoff(ctx.retry(), attempt);
            if !backoff.is_zero() {
                crate::timer::sleep(backoff).await;
            }
        }
    }
}

/// Sets up the request's context: timeouts, a small body moved inline after its head, a
/// large one given a large buffer. `None`: the declared body is over the cap.
fn prepare<'a, C: Downstream>(
    w: &'a Worker,
    view: &'a View,
    client: &mut C,
    out: &mut Vec<u8>,
    plan: Plan,
) -> Option<Ctx<'a>> {
    let snap = &view.snap;
    let http = &snap.http;
    let cluster = &snap.clusters[plan.cluster];
    let route = &snap.routes.routes()[plan.route];
    let timeouts = Timeouts {
        connect: route.timeouts.connect.unwrap_or(cluster.connect_timeout),
        response: {
            let r = route.timeouts.response.unwrap_or(cluster.response_timeout);
            plan.grpc_deadline.map_or(r, |d| r.min(d))
        },
        idle: route.timeouts.idle.unwrap_or(cluster.idle_timeout),
    };
    client.consume(plan.head_len);
    let mut body = plan.framing;
    if let Framing::Length(n) = plan.framing {
        if http.max_request_body > 0 && n > http.max_request_body {
            return None;
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
    Some(Ctx {
        w,
        view,
        cluster,
        plan,
        timeouts,
        body,
        body_start: client.position(),
        reads_at_start: client.reads(),
        may_repeat: plan.method.is_idempotent() || cluster.config.retry.non_idempotent,
        close_on_error: plan.framing != Framing::None || !plan.keep_alive,
        sent_continue: std::cell::Cell::new(false),
    })
}

/// Decides whether a failed attempt goes again, and takes its retry slot if so.
fn retry_verdict<'a, C: Downstream>(
    ctx: &'a Ctx<'_>,
    client: &C,
    e: ProxyError,
    attempt: u32,
) -> Option<Held<'a>> {
    let retry = ctx.retry();
    let cstate = &ctx.cluster.state;
    // A held-back status reserved its slot already. A connection that never opened carried
    // nothing: trying another endpoint is safe for any method and adds no load to the failed
    // one, so it needs neither idempotence nor the budget (only `attempts` bounds it), as
    // with nginx's next upstream on connect errors.
    let reserved = matches!(e.kind, ErrorKind::RetryableStatus(_));
    // A reset on a reused connection went once more, fresh, in `try_endpoint` already; on
    // another endpoint it is retried as any idempotent failure.
    let class = e.retry_class();
    let never_sent = class == RetryClass::Always;
    let wanted = e.policy_retries(retry)
        && class != RetryClass::Never
        && attempt < retry.attempts
        // A gRPC call that is not otherwise repeatable goes again only on a gRPC status the
        // operator listed (held back: `reserved`), never on a timeout or a reset.
        && (ctx.may_repeat || never_sent || (ctx.grpc_retry() && reserved))
        && ctx.replayable(client);
    let budget = reserved || never_sent || ctx.budget_ok();
    if wanted && budget {
        return Some(if reserved {
            Held::adopt(&cstate.retries_in_flight)
        } else {
            Held::take(&cstate.retries_in_flight)
        });
    }
    if reserved {
        cstate.retries_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
    if wanted {
        tracing::debug!(cluster = %ctx.cluster.name, "retry budget exhausted");
        ctx.cluster.metrics.limit(Limit::MaxRetries as usize);
    }
    None
}

/// Picks an endpoint this request has not tried, among the usable ones (all of them in
/// panic mode) whose breaker admits it. On a retry, endpoints at their `max_retries` are
/// passed over.
fn choose_endpoint(
    ctx: &Ctx<'_>,
    tried: &[usize],
    is_retry: bool,
) -> Result<(usize, Admission), ProxyError> {
    let cluster = ctx.cluster;
    let policy = &cluster.config;
    let now = now_ms();
    let n = cluster.endpoints.len();
    let available = cluster
        .endpoints
        .iter()
        .filter(|e| e.state.is_available(now))
        .count();
    // Panic mode: too few usable endpoints means health data is suspect; use them all.
    let panic = available * 100 < policy.panic_threshold as usize * n;
    let max_retries = policy.endpoint_limits.max_retries as u64;
    let mut blocked: SmallVec<[usize; 4]> = SmallVec::new();
    let mut retries_full = false;
    let balancer = &ctx.view.balancers[ctx.plan.cluster];
    let choice = cluster.choice();
    loop {
        let usable = |i: usize| {
            !tried.contains(&i)
                && !blocked.contains(&i)
                && (panic || cluster.endpoints[i].state.is_available(now))
        };
        let Some(i) = balancer.pick(&choice, ctx.plan.key_hash, usable) else {
            let limit = if retries_full {
                Limit::MaxRetries
            } else if !blocked.is_empty() {
                Limit::BreakerOpen
            } else {
                return Err(ProxyError::internal(ErrorKind::NoEndpoint));
            };
            return Err(ProxyError::internal(ErrorKind::Limit(limit)));
        };
        let state = &cluster.endpoints[i].state;
        if is_retry
            && max_retries > 0
            && state.retries_in_flight.load(Ordering::Relaxed) >= max_retries
        {
            retries_full = true;
            blocked.push(i);
            continue;
        }
        let admission = match &policy.breaker {
            Some(b) => state.breaker.admit(b, now),
            None => Admission::Allowed,
        };
        if admission == Admission::Rejected {
            blocked.push(i);
            continue;
        }
        return Ok((i, admission));
    }
}

/// How one endpoint's attempt ended.
enum Attempt {
    /// The client got its answer (or is gone): the request is over.
    Finished(Flow),
    /// This endpoint failed; another may be tried.
    Failed(ProxyError),
}

/// Records one attempt's outcome in the endpoint's shared state: counters, breaker, outlier
/// detection.
fn record_outcome(ctx: &Ctx<'_>, pick: Pick, outcome: Outcome) {
    let Pick { idx, admission, .. } = pick;
    let cluster = ctx.cluster;
    let policy = &cluster.config;
    let ep = &cluster.endpoints[idx];
    let estate = &ep.state;
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
}

/// Gives a breaker probe back unjudged: the endpoint was not at fault.
fn release_probe(ctx: &Ctx<'_>, pick: Pick) {
    if let Some(b) = &ctx.cluster.config.breaker {
        ctx.cluster.endpoints[pick.idx]
            .state
            .breaker
            .record(b, pick.admission, true, now_ms());
    }
}

/// One attempt on endpoint `idx`: its limits, a connection (a fresh one again if a pooled
/// one turns out dead), the exchange, and its outcome.
async fn try_endpoint<C: Downstream>(
    ctx: &Ctx<'_>,
    client: &mut C,
    req: &mut Req<'_>,
    pick: Pick,
) -> Attempt {
    let Pick { idx, attempt, .. } = pick;
    let cluster = ctx.cluster;
    let ep = &cluster.endpoints[idx];
    let estate = &ep.state;
    req.rec.endpoint = Some(ep.addr);
    let max_requests = cluster.config.endpoint_limits.max_requests;
    if max_requests > 0 && estate.in_flight.load(Ordering::Relaxed) >= max_requests as u64 {
        release_probe(ctx, pick);
        let e = ProxyError::internal(ErrorKind::Limit(Limit::EndpointMaxRequests));
        return Attempt::Finished(answer(ctx, client, req, e).await);
    }
    let _endpoint_request = Held::take(&estate.in_flight);
    let _endpoint_retry = (attempt > 1).then(|| Held::take(&estate.retries_in_flight));
    estate.requests_total.fetch_add(1, Ordering::Relaxed);
    let mut force_fresh = false;
    let mut again = false;
    loop {
        let mut up = match get_connection(ctx, idx, force_fresh).await {
            Ok(u) => u,
            Err(e) if e.limit().is_some() => {
                release_probe(ctx, pick);
                return Attempt::Finished(answer(ctx, client, req, e).await);
            }
            Err(e) => {
                tracing::debug!(endpoint = %ep.addr, error = e.code(), "connect failed");
                record_outcome(ctx, pick, Outcome::ConnectFailure);
                return Attempt::Failed(e);
            }
        };
        if ctx.plan.expect_continue && !ctx.sent_continue.get() && ctx.body != Framing::None {
            ctx.sent_continue.set(true);
            let mut interim = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
            let r = client
                .write_all(&mut interim, ctx.view.snap.http.client_body_timeout)
                .await;
            if r.is_err() {
                release_probe(ctx, pick);
                return Attempt::Finished(Flow::Close);
            }
        }
        // A retryable status is only held back from the client if a retry can follow.
        let hold_back = attempt < ctx.retry().attempts
            && (ctx.may_repeat || ctx.grpc_retry())
            && ctx.replayable(client);
        let result = exchange(ctx, client, req.out, &mut up, hold_back).await;
        match result {
            Ok(done) => {
                finish(ctx, pick, up, &done, req.rec);
                return Attempt::Finished(done.flow);
            }
            Err(e)
                if e.retry_class() == RetryClass::OnReusedConnection
                    && !again
                    && (up.reused || up.refused())
                    && ctx.replayable(client) =>
            {
                // A keep-alive race, or an HTTP/2 connection going away (the backend refused
                // the stream unprocessed), not the endpoint's fault: once more. The race
                // wants a fresh connection; the refusing HTTP/2 connection is already out of
                // the pool, so another pooled one will do (no burst of new connections).
                force_fresh = up.reused;
                again = true;
                up.close(&ctx.w.up_bufs);
                client.rewind(ctx.body_start);
            }
            Err(e) => return failed(ctx, client, req, pick, up, e).await,
        }
    }
}

/// Records a successful exchange and pools its connection if it stays reusable.
fn finish(ctx: &Ctx<'_>, pick: Pick, up: Upstream, done: &Done, rec: &mut Record) {
    rec.status = done.status;
    rec.upstream = done.upstream;
    rec.bytes = done.bytes;
    let outcome = if done.status >= 500 {
        Outcome::ServerError
    } else {
        Outcome::Success
    };
    record_outcome(ctx, pick, outcome);
    let w = ctx.w;
    if done.reusable && !w.draining() {
        w.pool.checkin(
            up,
            ctx.cluster.pool_idle_timeout,
            ctx.cluster.pool_max_idle_per_endpoint,
            &w.up_bufs,
        );
    } else {
        up.close(&w.up_bufs);
    }
}

/// Records a failed exchange; the client's own faults end the request here.
async fn failed<C: Downstream>(
    ctx: &Ctx<'_>,
    client: &mut C,
    req: &mut Req<'_>,
    pick: Pick,
    up: Upstream,
    e: ProxyError,
) -> Attempt {
    up.close(&ctx.w.up_bufs);
    match e.kind {
        ErrorKind::Body(_) => {
            release_probe(ctx, pick);
            return Attempt::Finished(answer(ctx, client, req, e).await);
        }
        ErrorKind::ClientGone => {
            release_probe(ctx, pick);
            req.rec.error = Some(e);
            return Attempt::Finished(Flow::Close);
        }
        ErrorKind::CutMidBody => {
            // Headers are gone already: closing is the only way to tell the client.
            record_outcome(ctx, pick, Outcome::Failure);
            req.rec.error = Some(e);
            return Attempt::Finished(Flow::Close);
        }
        ErrorKind::RetryableStatus(status) if status < 500 => {
            record_outcome(ctx, pick, Outcome::Success)
        }
        ErrorKind::RetryableStatus(_) => record_outcome(ctx, pick, Outcome::ServerError),
        _ => record_outcome(ctx, pick, Outcome::Failure),
    }
    Attempt::Failed(e)
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

/// A pooled connection, or a fresh one if the connection limits allow; past a limit the
/// request waits (bounded by `max_pending` and `pending_timeout`) for a slot.
async fn get_connection(
    ctx: &Ctx<'_>,
    idx: usize,
    force_fresh: bool,
) -> Result<Upstream, ProxyError> {
    let (w, cluster) = (ctx.w, ctx.cluster);
    let ep = &cluster.endpoints[idx];
    let dial = cluster.dial(ep);
    let limits = &cluster.config.limits;
    let ep_limits = &cluster.config.endpoint_limits;
    let full = || {
        (limits.max_connections > 0
            && cluster.state.connections.load(Ordering::Relaxed) >= limits.max_connections as u64)
            || (ep_limits.max_connections > 0
                && ep.state.connections.load(Ordering::Relaxed) >= ep_limits.max_connections as u64)
    };
    let limit = |l| ProxyError::internal(ErrorKind::Limit(l));
    if cluster.config.protocol.is_h2() {
        let started = Instant::now();
        // Boxed: connecting and the HTTP/2 handshake would otherwise weigh on every
        // request's future.
        let up = Box::pin(upstream::h2::open_stream(
            &w.h2pool,
            &dial,
            ctx.timeouts.connect,
            &w.up_bufs,
            upstream::h2::StreamOpts {
                max_streams: cluster.config.max_streams_per_connection,
                idle_timeout: cluster.pool_idle_timeout,
                fresh: force_fresh,
            },
        ))
        .await
        .map_err(connect_error)?;
        cluster
            .metrics
            .connect
            .record(started.elapsed().as_secs_f64());
        return Ok(up);
    }
    let mut pending: Option<(Held<'_>, Held<'_>, Instant)> = None;
    loop {
        if !force_fresh {
            if let Some(u) = w.pool.checkout(ep.addr, dial.pool_key, &w.up_bufs) {
                return Ok(u);
            }
        }
        if !full() {
            let started = Instant::now();
            let connect = upstream::connect(&dial, ctx.timeouts.connect, &w.up_bufs);
            let up = connect.await.map_err(connect_error)?;
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
                    return Err(limit(Limit::MaxPending));
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
            return Err(limit(Limit::PendingTimeout));
        }
        crate::timer::sleep(PENDING_POLL).await;
    }
}

/// A failed connect as the request's error.
fn connect_error(e: ConnectError) -> ProxyError {
    ProxyError::upstream(match e {
        ConnectError::Timeout => ErrorKind::ConnectTimeout,
        ConnectError::Io(_) => ErrorKind::ConnectRefused,
        ConnectError::Tls(f) => ErrorKind::Tls(f),
    })
}

/// What a pump failure means for this exchange.
fn body_error(e: PumpFail) -> ProxyError {
    match e {
        PumpFail::Src(IoFail::Timeout) => {
            ProxyError::downstream(ErrorKind::Body(BodyFault::Stalled))
        }
        PumpFail::TooSlow => ProxyError::downstream(ErrorKind::Body(BodyFault::TooSlow)),
        PumpFail::Src(_) => ProxyError::downstream(ErrorKind::ClientGone),
        PumpFail::Chunk(e) => {
            tracing::debug!(error = %e, "invalid chunked request body");
            ProxyError::downstream(ErrorKind::Body(BodyFault::BadChunked))
        }
        PumpFail::TooLarge => ProxyError::downstream(ErrorKind::Body(BodyFault::TooLarge)),
        PumpFail::Dst(IoFail::Timeout) => {
            ProxyError::upstream(ErrorKind::Timeout("sending to the backend timed out"))
        }
        PumpFail::Dst(_) => ProxyError::upstream(ErrorKind::ResetBeforeResponse),
    }
}

/// Sends the head in `out` (and a small body with it). A failed write means nothing reached
/// the backend.
async fn send_head(ctx: &Ctx<'_>, out: &mut Vec<u8>, up: &mut Upstream) -> Result<(), ProxyError> {
    match up.write_all(out, ctx.timeouts.idle).await {
        Ok(()) => {}
        Err(IoFail::Timeout) => {
            return Err(ProxyError::upstream(ErrorKind::Timeout(
                "sending to the backend timed out",
            )))
        }
        Err(_) => return Err(ProxyError::upstream(ErrorKind::ResetBeforeResponse)),
    }
    Ok(())
}

/// Sends the request body from `src` to `dst`, paced by `pace`.
async fn send_body<S: Source, D: Sink>(
    ctx: &Ctx<'_>,
    src: &mut S,
    dst: &mut D,
    pace: Pace,
) -> Result<(), ProxyError> {
    let (w, http) = (ctx.w, &ctx.view.snap.http);
    if ctx.body == Framing::None {
        return Ok(());
    }
    let mut scratch = if ctx.body == Framing::Chunked {
        w.out_bufs.take()
    } else {
        Vec::new()
    };
    let r = pump(
        src,
        dst,
        ctx.body,
        Out {
            encode: Encode::Chunked,
            trailers: http.trailers,
            owned: &http.owned_headers,
        },
        &mut scratch,
        pace,
        http.max_request_body,
    )
    .await;
    w.out_bufs.give(scratch);
    r.map(|_| ()).map_err(body_error)
}

/// The exchange on one connection: the request out, the response head in (interim answers
/// consumed, a retryable status held back when `hold_back`), then the answer to the client.
async fn exchange<C: Downstream>(
    ctx: &Ctx<'_>,
    client: &mut C,
    out: &mut Vec<u8>,
    up: &mut Upstream,
    hold_back: bool,
) -> Result<Done, ProxyError> {
    // Upstream time is reported only in the access log; without one, no stamps are taken.
    let sent_at = ctx.w.access_log_on().then(crate::clock::stamp);
    send_head(ctx, out, up).await?;
    if let Some((body, request)) = duplex_halves(ctx, client, up) {
        let halves = (body, request);
        return Box::pin(exchange_duplex(
            ctx, client, out, up, hold_back, sent_at, halves,
        ))
        .await;
    }
    let http = &ctx.view.snap.http;
    let pace = Pace::with_min_rate(
        http.client_body_timeout,
        http.min_body_rate,
        http.client_body_timeout,
    );
    send_body(ctx, client, up, pace).await?;
    answer_exchange(ctx, client, out, up, hold_back, sent_at).await
}

/// The halves of a full-duplex exchange: an HTTP/2 client's body still coming in, to an
/// HTTP/2 backend. Otherwise (HTTP/1.1 on either side, a body all in) the body is sent
/// whole before the answer is read.
fn duplex_halves<C: Downstream>(
    ctx: &Ctx<'_>,
    client: &mut C,
    up: &mut Upstream,
) -> Option<(BodyIn, RequestHalf)> {
    if ctx.body == Framing::None {
        return None;
    }
    let request = up.take_request_half()?;
    match client.take_body_half() {
        Some(body) => Some((body, request)),
        None => {
            up.put_request_half(request);
            None
        }
    }
}

/// A full-duplex exchange, as bidirectional gRPC needs: the body streams on while the answer
/// is read and sent. The body's reads have no timeout of their own (a stream's messages can
/// be far apart): the answer's timeouts bound the call. An answer that ends first ends the
/// body (the rest is not sent). A body the backend stops taking (it reset its side after a
/// complete early answer, as HTTP/2 allows) leaves the answer to finish; a client that
/// fails its body ends the call. The body cannot be sent again once this starts.
async fn exchange_duplex<C: Downstream>(
    ctx: &Ctx<'_>,
    client: &mut C,
    out: &mut Vec<u8>,
    up: &mut Upstream,
    hold_back: bool,
    sent_at: Option<crate::clock::Stamp>,
    (mut body, mut request): (BodyIn, RequestHalf),
) -> Result<Done, ProxyError> {
    use futures::future::{select, Either};
    let result = {
        let sending = std::pin::pin!(send_body(
            ctx,
            &mut body,
            &mut request,
            Pace::idle(DUPLEX_BODY_WAIT)
        ));
        let answering = std::pin::pin!(answer_exchange(ctx, client, out, up, hold_back, sent_at));
        match select(sending, answering).await {
            Either::Left((Ok(()), answering)) => answering.await,
            Either::Left((Err(e), answering)) if e.side == Side::Upstream => {
                tracing::debug!(error = e.code(), "the backend stopped taking the body");
                answering.await
            }
            Either::Left((Err(e), _)) => Err(e),
            Either::Right((done, _)) => done,
        }
    };
    // Whatever of the body was read is gone: no retry may replay it.
    body.mark_consumed();
    client.put_body_half(body);
    up.put_request_half(request);
    result
}

/// How long a full-duplex body may wait for the client's next message (a day: in practice
/// the answer's own timeouts end a silent call first).
const DUPLEX_BODY_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The answer half of an exchange: the response head in (interim answers consumed, a
/// retryable status held back when `hold_back`), then the answer to the client.
async fn answer_exchange<C: Downstream>(
    ctx: &Ctx<'_>,
    client: &mut C,
    out: &mut Vec<u8>,
    up: &mut Upstream,
    hold_back: bool,
    sent_at: Option<crate::clock::Stamp>,
) -> Result<Done, ProxyError> {
    let (status, framing, reusable, plan_out) =
        match read_response_head(ctx, client, out, up, hold_back).await? {
            Head::Final(status, framing, reusable, plan_out) => {
                (status, framing, reusable, plan_out)
            }
            Head::Upgraded(bytes) => {
                return Ok(Done {
                    flow: Flow::Close,
                    reusable: false,
                    status: 101,
                    upstream: sent_at.map(|s| s.elapsed()),
                    bytes,
                })
            }
        };
    let upstream_time = sent_at.map(|s| s.elapsed());
    let bytes = send_response(ctx, client, out, up, framing, plan_out).await?;
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

/// The response head, final or a WebSocket upgrade already tunnelled to its end.
enum Head {
    Final(u16, Framing, bool, head::ResponsePlan),
    /// The tunnel ran; the bytes it moved.
    Upgraded(u64),
}

/// Reads the response head; the head for the client is written into `out`.
async fn read_response_head<C: Downstream>(
    ctx: &Ctx<'_>,
    client: &mut C,
    out: &mut Vec<u8>,
    up: &mut Upstream,
    hold_back: bool,
) -> Result<Head, ProxyError> {
    let http = &ctx.view.snap.http;
    let deadline = crate::timer::deadline_after(ctx.timeouts.response);
    let mut got_bytes = !up.data().is_empty();
    loop {
        if !up.data().is_empty() {
            got_bytes = true;
            match parse_head(ctx, out, up, hold_back)? {
                HeadStep::Interim(n) => {
                    up.consume(n);
                    continue;
                }
                HeadStep::Final(status, n, framing, reusable, p) => {
                    up.consume(n);
                    return Ok(Head::Final(status, framing, reusable, p));
                }
                HeadStep::Upgrade(n) => {
                    up.consume(n);
                    if client
                        .write_all(out, http.client_body_timeout)
                        .await
                        .is_err()
                    {
                        return Err(ProxyError::downstream(ErrorKind::ClientGone));
                    }
                    let idle = http.websocket_idle_timeout;
                    let (Some(conn), Some(upc)) = (client.connection(), up.h1()) else {
                        return Err(ProxyError::upstream(ErrorKind::BadResponse(
                            "the backend switched protocols on a request that cannot upgrade",
                        )));
                    };
                    let bytes = super::tunnel::run(conn, upc, idle).await;
                    return Ok(Head::Upgraded(bytes));
                }
                HeadStep::NeedMore => {}
            }
        }
        match up.fill(crate::timer::until(deadline)).await {
            Ok(_) => {}
            Err(IoFail::Timeout) => {
                return Err(ProxyError::upstream(ErrorKind::Timeout(
                    "the backend did not answer in time",
                )))
            }
            Err(_) if !got_bytes => {
                return Err(ProxyError::upstream(ErrorKind::ResetBeforeResponse))
            }
            Err(_) => {
                return Err(ProxyError::upstream(ErrorKind::BadResponse(
                    "the backend closed the connection mid-response",
                )))
            }
        }
    }
}

/// One look at the buffered response bytes. The parsed head borrows 8 KiB of header slots;
/// this function returns before any await, so they are not kept in the request's future.
fn parse_head(
    ctx: &Ctx<'_>,
    out: &mut Vec<u8>,
    up: &Upstream,
    hold_back: bool,
) -> Result<HeadStep, ProxyError> {
    let (view, plan) = (ctx.view, &ctx.plan);
    let http = &view.snap.http;
    let bad = |m| Err(ProxyError::upstream(ErrorKind::BadResponse(m)));
    let mut storage = crate::http::header_slots::<MAX_HEADERS_LIMIT>();
    let parsed = response::parse(up.data(), &mut storage, plan.method == Method::Head);
    let res = match parsed {
        Ok(Some(res)) => res,
        Ok(None) if up.is_full() => return bad("the backend's response head is too large"),
        Ok(None) => return Ok(HeadStep::NeedMore),
        Err(ResponseError::TooManyHeaders) => {
            return bad("the backend's response has too many headers")
        }
        Err(_) => return bad("the backend sent an invalid response"),
    };
    if res.status == 101 {
        if !plan.websocket {
            return bad("the backend switched protocols, which this route does not allow");
        }
        head::write_switching_protocols(out, &res, http);
        return Ok(HeadStep::Upgrade(res.head_len));
    }
    if res.status < 200 {
        return Ok(HeadStep::Interim(res.head_len));
    }
    if hold_back && goes_again(ctx, &res) {
        return Err(ProxyError::upstream(ErrorKind::RetryableStatus(res.status)));
    }
    let route = &view.snap.routes.routes()[plan.route];
    let keep = plan.keep_alive && !ctx.w.draining();
    let mut p = head::write_response_head(out, &res, plan.minor, keep, http, route);
    if let (Some(i), Some(v)) = (plan.version, &route.versions) {
        version_headers(out, v, i as usize);
        p.deprecation_field = wants_field(&res, *plan, v, i as usize);
        if let (true, Framing::Length(n)) = (p.deprecation_field, res.framing) {
            // The body is read whole with the head (under the response timeout), so that it
            // can go out with the member; one that does not fit the buffer goes as it came.
            if up.data().len() < res.head_len + n as usize {
                if !up.is_full() {
                    return Ok(HeadStep::NeedMore);
                }
                p.deprecation_field = false;
            }
        }
    }
    if let Some((si, t)) = plan.variant {
        let split = &view.snap.splits[si].config;
        if let Some(ab) = &split.ab_test {
            head::insert_headers(
                out,
                &[("X-AB-Test", ab), ("X-AB-Variant", &split.targets[t].name)],
            );
        }
    }
    Ok(HeadStep::Final(
        res.status,
        res.head_len,
        res.framing,
        res.reusable,
        p,
    ))
}

/// Whether a final response is held back for another attempt (its retry slot reserved): a
/// status the policy retries, for a request that may be repeated (a gRPC call held back only
/// for its gRPC statuses is not one), or a gRPC status the policy lists, alone (no body:
/// "Trailers-Only"), before any byte of it reaches the client (one in trailers comes after
/// the body and cannot go again).
fn goes_again(ctx: &Ctx<'_>, res: &crate::http::response::ResponseHead<'_, '_>) -> bool {
    if ctx.may_repeat && ctx.retry().retries_status(res.status) && ctx.reserve() {
        return true;
    }
    if !ctx.plan.grpc {
        return false;
    }
    let code = res
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("grpc-status"))
        .and_then(|h| crate::http::h2::parse_grpc_status(h.value));
    code.is_some_and(|c| ctx.retry().retries_grpc(c)) && ctx.reserve()
}

/// Whether this response gets a `_deprecation` member: its version is in its warning phase
/// and asks for it, and the response is a 2xx JSON body with a length under the cap, not
/// encoded, to a request other than HEAD.
fn wants_field(
    res: &crate::http::response::ResponseHead<'_, '_>,
    plan: Plan,
    v: &crate::routing::version::Versions,
    i: usize,
) -> bool {
    use crate::routing::version::{now, Phase};
    let Some(e) = v.entries.get(i) else {
        return false;
    };
    let Some(max) = e.life.field_max else {
        return false;
    };
    let header = |name: &str| {
        res.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let json = header("content-type").is_some_and(|ct| {
        let ct = String::from_utf8_lossy(ct).to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        essence == "application/json"
            || essence.starts_with("application/") && essence.ends_with("+json")
    });
    (200..300).contains(&res.status)
        && res.status != 204
        && res.status != 206
        && plan.method != Method::Head
        && matches!(res.framing, Framing::Length(n) if n > 0 && n <= max)
        && json
        && header("content-encoding").is_none()
        && e.life.phase(now()) == Phase::Warning
}

/// Writes a JSON object response (all buffered: the head waited for it) after the head in
/// `out` with a `_deprecation` member first, the head's `Content-Length` adjusted; its new
/// length. `None`: it is not a JSON object (or already has the member), and goes as it came.
fn with_field(ctx: &Ctx<'_>, out: &mut Vec<u8>, up: &mut Upstream, n: u64) -> Option<u64> {
    let n = n as usize;
    let body = up.data().get(..n)?;
    let map = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body).ok()?;
    if map.contains_key("_deprecation") {
        return None;
    }
    let route = &ctx.view.snap.routes.routes()[ctx.plan.route];
    let (Some(v), Some(i)) = (&route.versions, ctx.plan.version) else {
        return None;
    };
    let e = v.entries.get(usize::from(i))?;
    // The body changes: a digest of the backend's bytes no longer holds, and a strong
    // validator becomes a weak one.
    rework_head(out);
    const LENGTH: &[u8] = b"\r\nContent-Length: ";
    let at = out.windows(LENGTH.len()).position(|w| w == LENGTH)?;
    let open = body.iter().position(|&b| b == b'{').unwrap_or(0);
    let field = format!(
        "\"_deprecation\":{}{}",
        e.life.field(&e.name),
        if map.is_empty() { "" } else { "," }
    );
    let total = n + field.len();
    let start = at + LENGTH.len();
    let end = start + out[start..].iter().position(|&b| b == b'\r').unwrap_or(0);
    let mut length = Vec::new();
    crate::http::write::push_dec(&mut length, total as u64);
    out.splice(start..end, length);
    out.extend_from_slice(&body[..=open]);
    out.extend_from_slice(field.as_bytes());
    out.extend_from_slice(&body[open + 1..]);
    up.consume(n);
    Some(total as u64)
}

/// The response head in `out` for a body lb changed: digests of the backend's bytes
/// dropped, a strong `ETag` made weak (`W/"…"`).
fn rework_head(out: &mut Vec<u8>) {
    const DIGESTS: [&[u8]; 4] = [b"content-md5", b"digest", b"content-digest", b"repr-digest"];
    let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return;
    };
    let mut head: Vec<u8> = Vec::with_capacity(end + 4);
    for (i, line) in out[..end].split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if i > 0 {
            let name = line.split(|&b| b == b':').next().unwrap_or(b"");
            if DIGESTS.iter().any(|d| name.eq_ignore_ascii_case(d)) {
                continue;
            }
            if name.eq_ignore_ascii_case(b"etag") {
                let value = line.get(name.len() + 1..).unwrap_or(b"").trim_ascii();
                if value.starts_with(b"\"") {
                    head.extend_from_slice(b"ETag: W/");
                    head.extend_from_slice(value);
                    head.extend_from_slice(b"\r\n");
                    continue;
                }
            }
        }
        head.extend_from_slice(line);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    out.truncate(0);
    out.extend_from_slice(&head);
}

/// Sends the response head in `out` and streams the body; returns the body bytes sent.
async fn send_response<C: Downstream>(
    ctx: &Ctx<'_>,
    client: &mut C,
    out: &mut Vec<u8>,
    up: &mut Upstream,
    framing: Framing,
    plan_out: head::ResponsePlan,
) -> Result<u64, ProxyError> {
    let (w, http) = (ctx.w, &ctx.view.snap.http);
    // The head goes out with as much of a small body as is already here.
    let mut rest = framing;
    let mut bytes = 0;
    if let (Framing::Length(n), true) = (framing, plan_out.deprecation_field) {
        if let Some(total) = with_field(ctx, out, up, n) {
            rest = Framing::None;
            bytes = total;
        }
    }
    if let (Framing::Length(n), Framing::Length(_)) = (framing, rest) {
        if n as usize <= INLINE_RESPONSE_MAX && up.data().len() as u64 >= n {
            out.extend_from_slice(&up.data()[..n as usize]);
            up.consume(n as usize);
            rest = Framing::None;
            bytes = n;
        }
    }
    if client
        .write_all(out, http.client_body_timeout)
        .await
        .is_err()
    {
        return Err(ProxyError::downstream(ErrorKind::ClientGone));
    }
    if rest == Framing::None {
        return Ok(bytes);
    }
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
    let out_plan = Out {
        encode,
        trailers: http.trailers,
        owned: &[],
    };
    let idle = Pace::idle(ctx.timeouts.idle);
    let r = pump(up, client, rest, out_plan, &mut scratch, idle, 0).await;
    w.out_bufs.give(scratch);
    match r {
        Ok(n) => Ok(n),
        Err(PumpFail::Dst(_)) => Err(ProxyError::downstream(ErrorKind::ClientGone)),
        Err(e) => {
            tracing::debug!(error = ?e, endpoint = %up.addr, cluster = %ctx.cluster.name, "response body cut");
            Err(ProxyError::upstream(ErrorKind::CutMidBody))
        }
    }
}

enum HeadStep {
    Interim(usize),
    /// A 101 to a WebSocket upgrade: the head is in `out`; a tunnel follows.
    Upgrade(usize),
    Final(u16, usize, Framing, bool, head::ResponsePlan),
    NeedMore,
}

/// The chosen version's response headers: the lifecycle's (deprecation, sunset, links,
/// warning), the echo header, and `Vary: Accept` where `Accept` chose it.
fn version_headers(out: &mut Vec<u8>, v: &crate::routing::version::Versions, i: usize) {
    use crate::routing::version::{now, VersionSource};
    let Some(e) = v.entries.get(i) else {
        return;
    };
    let successor = match (&v.source, &e.life.successor) {
        (VersionSource::Path { before, after }, Some(s)) => Some(format!(
            "{}{s}{}",
            String::from_utf8_lossy(before),
            String::from_utf8_lossy(after)
        )),
        _ => None,
    };
    let mut lines = e.life.headers(e.life.phase(now()), successor.as_deref());
    if let Some(name) = &v.echo {
        lines.push((name.clone(), e.name.clone()));
    }
    if let Some(h) = v.source.vary() {
        lines.push(("Vary".into(), h.to_string()));
    }
    if !lines.is_empty() {
        let pairs: Vec<(&str, &str)> = lines
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        head::insert_headers(out, &pairs);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream as StdStream};
    use std::rc::Rc;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::super::testio::{buf_pair, rt};
    use super::super::{plan, Decision};
    use super::*;
    use crate::snapshot::{Snapshot, SnapshotCell, StateRegistry};
    use crate::worker::WorkerSpec;

    /// A worker on `config`'s snapshot, as a worker thread would build it.
    fn worker(config: &str) -> Rc<Worker> {
        let cfg = crate::config::Config::parse(config, std::path::Path::new("t")).expect("config");
        let snap = Snapshot::build(cfg, config, &StateRegistry::default()).expect("snapshot");
        let (tx, rx) = futures::channel::oneshot::channel();
        // Never told to drain.
        std::mem::forget(tx);
        let spec = WorkerSpec {
            id: 0,
            handler: |_, _, _, _, _| {},
            core: None,
            listeners: Vec::new(),
            io: crate::config::IoDriver::Epoll,
            io_uring_entries: 256,
            buf_size: 16 * 1024,
            access_log: None,
            loads: None,
            stats: Arc::new(Vec::new()),
            conns: crate::connlimit::Connections::leak(),
        };
        let cell = Arc::new(SnapshotCell::new(snap));
        Rc::new(Worker::new(&spec, cell, rx).expect("worker"))
    }

    fn config(endpoints: &[SocketAddr], cluster_extra: &str) -> String {
        let eps: Vec<String> = endpoints
            .iter()
            .map(|a| format!("{{ addr = \"{a}\" }}"))
            .collect();
        format!(
            "[[listeners]]\naddr = \"127.0.0.1:0\"\n[[clusters]]\nname = \"app\"\n\
             endpoints = [{}]\n{cluster_extra}\n[[routes]]\ncluster = \"app\"\n",
            eps.join(", ")
        )
    }

    /// A backend whose `n`th connection (from 0) is handled by `script`; returns its address
    /// and the count of connections it accepted.
    fn backend(
        script: impl Fn(usize, StdStream) + Send + Sync + 'static,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let script = Arc::new(script);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let n = c.fetch_add(1, Ordering::SeqCst);
                let script = script.clone();
                std::thread::spawn(move || script(n, s));
            }
        });
        (addr, count)
    }

    /// Reads one request head (no body) from a backend socket; false at EOF.
    fn read_request(s: &mut StdStream) -> bool {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return false,
            }
        }
        true
    }

    /// Reads a request head from `client`, plans it and runs it through [`proxy`].
    async fn plan_and_proxy(
        w: &Rc<Worker>,
        client: &mut crate::net::BufConn,
    ) -> (Flow, Option<ProxyError>) {
        client.fill(Duration::from_secs(5)).await.expect("head");
        let view = w.view();
        let mut out = Vec::new();
        let mut rec = Record::default();
        let peer_addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let mut req = super::super::Req {
            view: &view,
            out: &mut out,
            rec: &mut rec,
        };
        let side = super::super::ClientSide::plain(peer_addr);
        let d = plan::plan_request(&mut req, client.data(), &side, false);
        let Ok(Some(Decision::Forward(plan))) = d else {
            panic!("not forwarded")
        };
        let flow = proxy(w, &mut req, client, &plan).await;
        (flow, rec.error)
    }

    /// Sends `GET /` from one client `times` times, runs each request through planning and
    /// [`proxy`], and returns each flow and error; the last entry also has every byte the
    /// client received.
    fn one_request(w: &Rc<Worker>, times: usize) -> Vec<(Flow, Option<ProxyError>, Vec<u8>)> {
        rt().block_on(async {
            let (mut client, mut peer) = buf_pair();
            let mut results = Vec::new();
            for _ in 0..times {
                peer.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                    .expect("send");
                let (flow, error) = plan_and_proxy(w, &mut client).await;
                results.push((flow, error, Vec::new()));
                if flow == Flow::Close {
                    break;
                }
            }
            drop(client);
            let mut got = Vec::new();
            let _ = peer.read_to_end(&mut got);
            if let Some(last) = results.last_mut() {
                last.2 = got;
            }
            results
        })
    }

    #[test]
    fn a_reused_connection_reset_before_the_answer_goes_again_fresh() {
        let (addr, count) = backend(|n, mut s| {
            if n == 0 {
                // Answers once, then takes the next request and resets without an answer.
                if read_request(&mut s) {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none");
                }
                if read_request(&mut s) {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                }
                return;
            }
            while read_request(&mut s) {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo");
            }
        });
        let w = worker(&config(&[addr], ""));
        let results = one_request(&w, 2);
        assert_eq!(results.len(), 2);
        assert!(results
            .iter()
            .all(|(f, e, _)| *f == Flow::Continue && e.is_none()));
        let text = String::from_utf8_lossy(&results[1].2).into_owned();
        assert!(
            text.ends_with("two"),
            "the second answer came from a fresh connection: {text}"
        );
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_response_cut_mid_body_closes_the_client() {
        let (addr, _) = backend(|_, mut s| {
            if read_request(&mut s) {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart");
            }
        });
        let w = worker(&config(&[addr], ""));
        let results = one_request(&w, 1);
        let (flow, error, got) = &results[0];
        assert_eq!(*flow, Flow::Close);
        assert_eq!(error.map(|e| e.kind), Some(ErrorKind::CutMidBody));
        let text = String::from_utf8_lossy(got);
        assert!(
            text.starts_with("HTTP/1.1 200 OK") && text.ends_with("part"),
            "{text}"
        );
    }

    #[test]
    fn no_answer_in_time_is_a_504_and_a_refused_endpoint_is_skipped() {
        let (silent, _) = backend(|_, mut s| {
            let _ = read_request(&mut s);
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        let w = worker(&config(&[silent], "response_timeout = \"200ms\""));
        let results = one_request(&w, 1);
        let (_, error, got) = &results[0];
        assert_eq!(error.map(|e| e.status()), Some(504));
        assert!(String::from_utf8_lossy(got).starts_with("HTTP/1.1 504"));

        let dead = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("addr");
        let (live, _) = backend(|_, mut s| {
            while read_request(&mut s) {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        let w = worker(&config(&[dead, live], "balancer = \"round_robin\""));
        for (flow, error, _) in one_request(&w, 4) {
            assert_eq!(flow, Flow::Continue);
            assert!(error.is_none(), "{error:?}");
        }
    }

    /// A POST whose 1 MiB body is on its way when the backend resets the connection (after
    /// the head and 64 KiB): the write fails mid-body. Nothing of an answer came, so the
    /// client gets a 502 and its connection closes (the rest of its body was never read); a
    /// request that is not idempotent and whose body went partly out is not sent again.
    #[test]
    fn a_reset_while_the_body_is_written_is_a_502_and_is_not_retried() {
        let (addr, count) = backend(|_, mut s| {
            if !read_request(&mut s) {
                return;
            }
            let mut got = vec![0u8; 64 * 1024];
            if s.read_exact(&mut got).is_ok() {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        });
        let w = worker(&config(
            &[addr],
            "retry = { attempts = 3, retry_on = [\"reset\"] }",
        ));
        let (flow, error, got) = rt().block_on(async {
            let (mut client, peer) = buf_pair();
            let mut request =
                b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n".to_vec();
            request.extend(std::iter::repeat_n(b'x', 1 << 20));
            let reader = super::super::testio::collect(peer.try_clone().expect("clone"));
            let sender = super::super::testio::send(peer, request, 16 * 1024, false);
            let (flow, error) = plan_and_proxy(&w, &mut client).await;
            drop(client);
            let _ = sender.join();
            (flow, error, reader.join().expect("reader"))
        });
        assert_eq!(flow, Flow::Close);
        assert_eq!(error.map(|e| e.kind), Some(ErrorKind::ResetBeforeResponse));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 502"), "{text}");
        assert_eq!(count.load(Ordering::SeqCst), 1, "not sent again");
    }

    /// The request's task is dropped while its body is being written (a drain's deadline, a
    /// client that went away: the future is cancelled at an await). Everything it held goes
    /// back: the cluster's and the endpoint's in-flight counts return to zero, the half-written
    /// upstream connection is closed rather than pooled, and the next request works on a
    /// fresh connection.
    #[test]
    fn a_request_cancelled_mid_write_releases_what_it_held() {
        const BODY: usize = 32 << 20;
        let (got_some_tx, got_some) = std::sync::mpsc::channel::<usize>();
        let got_some_tx = std::sync::Mutex::new(got_some_tx);
        // The first connection is held, unread, until the test is done with it.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = std::sync::Mutex::new(released);
        let (addr, count) = backend(move |n, mut s| {
            if !read_request(&mut s) {
                return;
            }
            if n == 0 {
                // Takes 64 KiB of the body, says so, then reads nothing more: the writer
                // stalls once the socket buffers are full.
                let mut part = vec![0u8; 64 * 1024];
                if s.read_exact(&mut part).is_ok() {
                    let tx = got_some_tx.lock().map(|t| t.clone());
                    let _ = tx.map(|t| t.send(part.len()));
                }
                if let Ok(r) = released.lock() {
                    let _ = r.recv_timeout(Duration::from_secs(20));
                }
                return;
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        });
        let w = worker(&config(&[addr], ""));
        let cancelled = rt().block_on(async {
            let (mut client, peer) = buf_pair();
            let mut request =
                format!("PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: {BODY}\r\n\r\n")
                    .into_bytes();
            request.resize(request.len() + BODY, b'x');
            let sender = super::super::testio::send(peer, request, 256 * 1024, false);
            let run = plan_and_proxy(&w, &mut client);
            let r = crate::timer::timeout(Duration::from_millis(500), run).await;
            drop(client);
            let _ = sender.join();
            r.is_err()
        });
        assert!(cancelled, "the request finished instead of being cancelled");
        assert_eq!(
            got_some.recv_timeout(Duration::from_secs(5)).ok(),
            Some(64 * 1024),
            "the backend saw part of the body: the write was under way"
        );
        let view = w.view();
        let cluster = &view.snap.clusters[0];
        assert_eq!(cluster.state.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(
            cluster.endpoints[0].state.in_flight.load(Ordering::Relaxed),
            0
        );
        assert_eq!(
            w.pool.idle_count(addr),
            0,
            "a half-written connection was pooled"
        );
        let after = one_request(&w, 1);
        assert_eq!(after[0].1, None);
        assert!(String::from_utf8_lossy(&after[0].2).ends_with("ok"));
        assert_eq!(
            count.load(Ordering::SeqCst),
            2,
            "the next request took a fresh connection"
        );
        let _ = release.send(());
    }

    #[test]
    fn a_retryable_status_is_held_back_and_tried_elsewhere() {
        let (busy, _) = backend(|_, mut s| {
            while read_request(&mut s) {
                let _ = s.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
                );
            }
        });
        let (fine, _) = backend(|_, mut s| {
            while read_request(&mut s) {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine");
            }
        });
        let w = worker(&config(
            &[busy, fine],
            "retry = { attempts = 2, retry_on = [\"503\"] }",
        ));
        let results = one_request(&w, 4);
        let text = String::from_utf8_lossy(&results[3].2).into_owned();
        assert!(
            !text.contains("busy"),
            "a held-back 503 reached the client: {text}"
        );
        assert_eq!(text.matches("fine").count(), 4, "{text}");
    }
}
