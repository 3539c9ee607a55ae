//! One typed error for everything that can go wrong with a proxied request: where it came
//! from, what happened, and whether trying again is safe. The status code, the JSON error
//! code and message, the `X-LB-Limit` header, the access log field and the metric label all
//! derive from it; retry decisions match on it, never on strings.

use crate::config::RetryConfig;
use crate::http::request::RequestError;
use crate::upstream::tls::TlsFailure;
use crate::upstream::Limit;

/// Which side of the proxy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: a slow, broken or vanished request.
    Downstream,
    /// A backend: connect, reset, timeout, bad response.
    Upstream,
    /// `lb` itself refused: a limit, no endpoint.
    Internal,
}

/// What the client's side did wrong while its body was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// The body stalled past `client_body_timeout`.
    Stalled,
    /// The body arrived below `min_body_rate`.
    TooSlow,
    /// Invalid chunked framing.
    BadChunked,
    /// More than `max_request_body`.
    TooLarge,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The backend refused the connection (or connecting failed otherwise).
    ConnectRefused,
    ConnectTimeout,
    /// The TLS handshake with the backend failed (a connect failure: nothing was sent).
    Tls(TlsFailure),
    /// The connection closed or reset before any byte of the response.
    ResetBeforeResponse,
    /// Sending the request or waiting for the response head took too long.
    Timeout(&'static str),
    /// The backend answered something unusable (the reason says what).
    BadResponse(&'static str),
    /// The backend kept answering with a status the retry policy retries.
    RetryableStatus(u16),
    /// The response was cut after its head went to the client.
    CutMidBody,
    /// A limit refused the request.
    Limit(Limit),
    /// No endpoint of the cluster is usable.
    NoEndpoint,
    /// The client's request body was at fault.
    Body(BodyFault),
    /// The client went away.
    ClientGone,
}

/// Whether a failed attempt may be tried again (the retry policy and budget still decide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Nothing reached the backend: safe for any method.
    Always,
    /// The connection closed before any byte of the answer. On a pooled connection that is
    /// the keep-alive race (the backend closed it as the request arrived, unseen), or an
    /// HTTP/2 stream the backend refused unprocessed: any method goes once more, on a fresh
    /// connection. On a fresh connection the backend may have seen the request, so it is
    /// [`RetryClass::Idempotent`].
    OnReusedConnection,
    /// The request may have been seen: only idempotent (or explicitly allowed) requests.
    Idempotent,
    /// Never: the client is at fault, or the answer already started.
    Never,
}

/// A failed request, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyError {
    pub side: Side,
    pub kind: ErrorKind,
}

impl ProxyError {
    pub fn upstream(kind: ErrorKind) -> ProxyError {
        ProxyError {
            side: Side::Upstream,
            kind,
        }
    }

    pub fn internal(kind: ErrorKind) -> ProxyError {
        ProxyError {
            side: Side::Internal,
            kind,
        }
    }

    pub fn downstream(kind: ErrorKind) -> ProxyError {
        ProxyError {
            side: Side::Downstream,
            kind,
        }
    }

    /// The status the client gets (when it can still get one).
    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::ConnectRefused
            | ErrorKind::Tls(_)
            | ErrorKind::ResetBeforeResponse
            | ErrorKind::BadResponse(_)
            | ErrorKind::RetryableStatus(_)
            | ErrorKind::CutMidBody => 502,
            ErrorKind::ConnectTimeout | ErrorKind::Timeout(_) => 504,
            ErrorKind::Limit(_) | ErrorKind::NoEndpoint => 503,
            ErrorKind::Body(BodyFault::Stalled | BodyFault::TooSlow) => 408,
            ErrorKind::Body(BodyFault::BadChunked) => 400,
            ErrorKind::Body(BodyFault::TooLarge) => 413,
            ErrorKind::ClientGone => 499,
        }
    }

    /// The `error` field of the JSON body, the access log's `error` and the metric label.
    pub fn code(&self) -> &'static str {
        match self.kind {
            ErrorKind::ConnectRefused => "connect_failed",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Tls(f) => f.code(),
            ErrorKind::ResetBeforeResponse => "upstream_reset",
            ErrorKind::Timeout(_) => "upstream_timeout",
            ErrorKind::BadResponse(_) => "bad_gateway",
            ErrorKind::RetryableStatus(_) => "upstream_error",
            ErrorKind::CutMidBody => "upstream_cut",
            ErrorKind::Limit(_) => "limit_reached",
            ErrorKind::NoEndpoint => "no_endpoint",
            ErrorKind::Body(BodyFault::Stalled | BodyFault::TooSlow) => "request_timeout",
            ErrorKind::Body(BodyFault::BadChunked) => "bad_request",
            ErrorKind::Body(BodyFault::TooLarge) => "body_too_large",
            ErrorKind::ClientGone => "client_gone",
        }
    }

    /// A slot per distinct [`ProxyError::code`], for the metric made on first use
    /// (`metrics::ClusterMetrics::error`).
    pub fn code_slot(&self) -> usize {
        match self.kind {
            ErrorKind::ConnectRefused => 0,
            ErrorKind::ConnectTimeout => 1,
            ErrorKind::Tls(TlsFailure::UnknownCa) => 2,
            ErrorKind::Tls(TlsFailure::NameMismatch) => 3,
            ErrorKind::Tls(TlsFailure::Expired) => 4,
            ErrorKind::Tls(TlsFailure::BadCertificate) => 5,
            ErrorKind::Tls(TlsFailure::Refused) => 6,
            ErrorKind::Tls(TlsFailure::Protocol) => 7,
            ErrorKind::ResetBeforeResponse => 10,
            ErrorKind::Timeout(_) => 11,
            ErrorKind::BadResponse(_) => 12,
            ErrorKind::RetryableStatus(_) => 13,
            ErrorKind::CutMidBody => 14,
            ErrorKind::Limit(_) => 15,
            ErrorKind::NoEndpoint => 16,
            ErrorKind::Body(BodyFault::Stalled | BodyFault::TooSlow) => 17,
            ErrorKind::Body(BodyFault::BadChunked) => 18,
            ErrorKind::Body(BodyFault::TooLarge) => 19,
            ErrorKind::ClientGone => 20,
        }
    }

    /// The `message` field of the JSON body.
    pub fn message(&self) -> &'static str {
        match self.kind {
            ErrorKind::ConnectRefused => "the backend refused the connection",
            ErrorKind::ConnectTimeout => "connecting to the backend timed out",
            ErrorKind::Tls(f) => f.message(),
            ErrorKind::ResetBeforeResponse => "the backend closed the connection without answering",
            ErrorKind::Timeout(m) | ErrorKind::BadResponse(m) => m,
            ErrorKind::RetryableStatus(_) => "the backend kept answering with a retryable status",
            ErrorKind::CutMidBody => "the backend cut the response short",
            ErrorKind::Limit(l) => l.label(),
            ErrorKind::NoEndpoint => "no endpoint is available for this route",
            ErrorKind::Body(BodyFault::Stalled) => "the request body stalled",
            ErrorKind::Body(BodyFault::TooSlow) => {
                "the request body arrived below the minimum rate"
            }
            ErrorKind::Body(BodyFault::BadChunked) => "invalid chunked request body",
            ErrorKind::Body(BodyFault::TooLarge) => "request body exceeds the configured limit",
            ErrorKind::ClientGone => "the client went away",
        }
    }

    /// The limit to name in `X-LB-Limit`, if a limit refused the request.
    pub fn limit(&self) -> Option<Limit> {
        match self.kind {
            ErrorKind::Limit(l) => Some(l),
            _ => None,
        }
    }

    /// Whether another attempt could be made at all, before policy and budget.
    pub fn retry_class(&self) -> RetryClass {
        match self.kind {
            ErrorKind::ConnectRefused | ErrorKind::ConnectTimeout | ErrorKind::Tls(_) => {
                RetryClass::Always
            }
            ErrorKind::ResetBeforeResponse => RetryClass::OnReusedConnection,
            ErrorKind::Timeout(_) | ErrorKind::RetryableStatus(_) => RetryClass::Idempotent,
            _ => RetryClass::Never,
        }
    }

    /// Whether the cluster's retry policy retries this failure.
    pub fn policy_retries(&self, retry: &RetryConfig) -> bool {
        match self.kind {
            ErrorKind::ConnectRefused | ErrorKind::ConnectTimeout | ErrorKind::Tls(_) => {
                retry.on_connect_failure
            }
            ErrorKind::ResetBeforeResponse => retry.on_reset,
            ErrorKind::Timeout(_) => retry.on_timeout,
            // The status was held back only because the policy retries it.
            ErrorKind::RetryableStatus(_) => true,
            _ => false,
        }
    }

    /// Whether the client connection must close after the answer (nothing more can be read
    /// from it reliably, or nothing more can be written).
    pub fn closes_client(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Body(_) | ErrorKind::ClientGone | ErrorKind::CutMidBody
        )
    }
}

/// Why a request was answered by `lb` with an error before any backend saw it (or, for
/// [`Refusal::Proxy`], after its attempts failed). The status, the JSON error code and the
/// message derive from it, as for [`ProxyError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The head does not parse, or asks for something `lb` does not do.
    Request(RequestError),
    /// The head is larger than `http.max_header_bytes`.
    HeadTooLarge,
    /// The target is longer than `http.max_uri_bytes`.
    UriTooLong,
    /// The head did not arrive within `client_header_timeout`.
    HeadTimeout,
    /// A body read whole (for validation) did not arrive in time.
    BodyTimeout,
    /// A body read whole has broken chunked framing.
    BadChunked,
    /// The path does not normalise; the reason says why.
    BadPath(&'static str),
    /// The request cannot be forwarded as it is (a header it would need is malformed, or the
    /// HTTP/2 head does not map to HTTP/1.1); the reason says why.
    BadHead(&'static str),
    /// No route matches.
    NoRoute,
    /// The route's authentication refused; the reason says why.
    Unauthorized(&'static str),
    /// The proxied request failed, or a limit refused it.
    Proxy(ProxyError),
}

impl Refusal {
    /// The status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Request(e) => e.status(),
            Refusal::HeadTooLarge => 431,
            Refusal::UriTooLong => 414,
            Refusal::HeadTimeout | Refusal::BodyTimeout => 408,
            Refusal::BadChunked | Refusal::BadPath(_) | Refusal::BadHead(_) => 400,
            Refusal::NoRoute => 404,
            Refusal::Unauthorized(_) => 401,
            Refusal::Proxy(e) => e.status(),
        }
    }

    /// The `error` field of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Request(RequestError::Malformed(_)) => "bad_request",
            Refusal::Request(RequestError::TooManyHeaders) => "too_many_headers",
            Refusal::Request(RequestError::Expectation) => "expectation_failed",
            Refusal::Request(RequestError::Connect | RequestError::UnsupportedCoding) => {
                "not_implemented"
            }
            Refusal::HeadTooLarge => "header_too_large",
            Refusal::UriTooLong => "uri_too_long",
            Refusal::HeadTimeout | Refusal::BodyTimeout => "request_timeout",
            Refusal::BadChunked | Refusal::BadPath(_) | Refusal::BadHead(_) => "bad_request",
            Refusal::NoRoute => "no_route",
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Proxy(e) => e.code(),
        }
    }

    /// The `message` field of the JSON body.
    pub fn message(&self) -> &'static str {
        match self {
            Refusal::Request(RequestError::Malformed(m)) => m,
            Refusal::Request(RequestError::TooManyHeaders) => "too many header fields",
            Refusal::Request(RequestError::Expectation) => "only Expect: 100-continue is supported",
            Refusal::Request(RequestError::Connect) => {
                "CONNECT is not supported: this is a reverse proxy"
            }
            Refusal::Request(RequestError::UnsupportedCoding) => {
                "only the chunked transfer coding is implemented"
            }
            Refusal::HeadTooLarge => "request head exceeds the configured limit",
            Refusal::UriTooLong => "the request target exceeds the configured limit",
            Refusal::HeadTimeout => "the request head did not arrive in time",
            Refusal::BodyTimeout => "the request body did not arrive in time",
            Refusal::BadChunked => "malformed chunked request body",
            Refusal::NoRoute => "no route matches this request",
            Refusal::BadPath(m) | Refusal::BadHead(m) | Refusal::Unauthorized(m) => m,
            Refusal::Proxy(e) => e.message(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_one_answer() {
        let proxied = ProxyError::internal(ErrorKind::Limit(Limit::MaxPending));
        let cases = [
            (
                Refusal::Request(RequestError::Malformed("m")),
                400,
                "bad_request",
                "m",
            ),
            (
                Refusal::Request(RequestError::TooManyHeaders),
                431,
                "too_many_headers",
                "",
            ),
            (
                Refusal::Request(RequestError::Expectation),
                417,
                "expectation_failed",
                "",
            ),
            (
                Refusal::Request(RequestError::Connect),
                501,
                "not_implemented",
                "",
            ),
            (Refusal::HeadTooLarge, 431, "header_too_large", ""),
            (Refusal::UriTooLong, 414, "uri_too_long", ""),
            (Refusal::HeadTimeout, 408, "request_timeout", ""),
            (Refusal::BodyTimeout, 408, "request_timeout", ""),
            (Refusal::BadChunked, 400, "bad_request", ""),
            (Refusal::BadPath("p"), 400, "bad_request", "p"),
            (Refusal::BadHead("h"), 400, "bad_request", "h"),
            (Refusal::NoRoute, 404, "no_route", ""),
            (Refusal::Unauthorized("u"), 401, "unauthorized", "u"),
            (
                Refusal::Proxy(proxied),
                503,
                "limit_reached",
                proxied.message(),
            ),
        ];
        for (r, status, code, message) in cases {
            assert_eq!((r.status(), r.code()), (status, code), "{r:?}");
            assert!(!r.message().is_empty(), "{r:?}");
            if !message.is_empty() {
                assert_eq!(r.message(), message, "{r:?}");
            }
        }
    }

    #[test]
    fn every_kind_has_one_answer() {
        let kinds = [
            (ErrorKind::ConnectRefused, 502, RetryClass::Always),
            (ErrorKind::ConnectTimeout, 504, RetryClass::Always),
            (
                ErrorKind::Tls(TlsFailure::UnknownCa),
                502,
                RetryClass::Always,
            ),
            (
                ErrorKind::ResetBeforeResponse,
                502,
                RetryClass::OnReusedConnection,
            ),
            (ErrorKind::Timeout("t"), 504, RetryClass::Idempotent),
            (ErrorKind::BadResponse("b"), 502, RetryClass::Never),
            (ErrorKind::RetryableStatus(503), 502, RetryClass::Idempotent),
            (ErrorKind::Limit(Limit::MaxPending), 503, RetryClass::Never),
            (ErrorKind::NoEndpoint, 503, RetryClass::Never),
            (ErrorKind::Body(BodyFault::TooLarge), 413, RetryClass::Never),
        ];
        for (kind, status, class) in kinds {
            let e = ProxyError::upstream(kind);
            assert_eq!(e.status(), status, "{kind:?}");
            assert_eq!(e.retry_class(), class, "{kind:?}");
            assert!(!e.code().is_empty() && !e.message().is_empty());
        }
        let limit = ProxyError::internal(ErrorKind::Limit(Limit::BreakerOpen));
        assert_eq!(limit.limit(), Some(Limit::BreakerOpen));
        assert_eq!(limit.message(), "breaker_open");
    }

    /// Each error code has its own metric slot, and every slot fits.
    #[test]
    fn one_metric_slot_per_code() {
        use TlsFailure::*;
        let mut kinds = vec![
            ErrorKind::ConnectRefused,
            ErrorKind::ConnectTimeout,
            ErrorKind::ResetBeforeResponse,
            ErrorKind::Timeout("t"),
            ErrorKind::BadResponse("b"),
            ErrorKind::RetryableStatus(503),
            ErrorKind::CutMidBody,
            ErrorKind::Limit(Limit::MaxPending),
            ErrorKind::NoEndpoint,
            ErrorKind::Body(BodyFault::Stalled),
            ErrorKind::Body(BodyFault::TooSlow),
            ErrorKind::Body(BodyFault::BadChunked),
            ErrorKind::Body(BodyFault::TooLarge),
            ErrorKind::ClientGone,
        ];
        for f in [
            UnknownCa,
            NameMismatch,
            Expired,
            BadCertificate,
            Refused,
            Protocol,
        ] {
            kinds.push(ErrorKind::Tls(f));
        }
        let mut by_slot = std::collections::HashMap::new();
        let mut by_code = std::collections::HashMap::new();
        for kind in kinds {
            let e = ProxyError::upstream(kind);
            assert!(e.code_slot() < crate::metrics::ERROR_SLOTS, "{kind:?}");
            assert_eq!(*by_slot.entry(e.code_slot()).or_insert(e.code()), e.code());
            assert_eq!(
                *by_code.entry(e.code()).or_insert(e.code_slot()),
                e.code_slot()
            );
        }
    }

    #[test]
    fn the_policy_decides_per_kind() {
        let retry = RetryConfig {
            on_timeout: false,
            ..RetryConfig::default()
        };
        assert!(ProxyError::upstream(ErrorKind::ConnectRefused).policy_retries(&retry));
        assert!(ProxyError::upstream(ErrorKind::ResetBeforeResponse).policy_retries(&retry));
        assert!(!ProxyError::upstream(ErrorKind::Timeout("t")).policy_retries(&retry));
        assert!(!ProxyError::upstream(ErrorKind::BadResponse("b")).policy_retries(&retry));
    }
}
