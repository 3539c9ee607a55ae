//! Request heads: parse with `httparse`, then decide framing, persistence and target.

use super::{
    judge_transfer_encoding, parse_content_length, ConnectionOptions, Framing, Method, TeVerdict,
};
use thiserror::Error;

/// A complete, analysed request head borrowing the read buffer.
#[derive(Debug)]
pub struct RequestHead<'h, 'b> {
    pub method: Method,
    pub method_bytes: &'b [u8],
    /// The target in origin form (`/path?query`), or `*` for `OPTIONS *`.
    pub path: &'b [u8],
    /// The authority of an absolute-form target, which wins over `Host` (RFC 9112 §3.2.2).
    pub authority: Option<&'b [u8]>,
    /// The `Host` header value as sent.
    pub host_header: Option<&'b [u8]>,
    /// HTTP minor version: 0 or 1.
    pub minor: u8,
    pub framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    pub expect_continue: bool,
    pub conn: ConnectionOptions<'b>,
    /// Bytes of the head, up to and including the blank line.
    pub head_len: usize,
    pub headers: &'h [httparse::Header<'b>],
}

impl<'h, 'b> RequestHead<'h, 'b> {
    /// The host to route on: authority or Host header, without port or a trailing dot
    /// (`example.com.` is `example.com`, as DNS and nginx read it).
    pub fn host(&self) -> Option<&'b [u8]> {
        self.authority
            .or(self.host_header)
            .map(strip_port)
            .map(|h| match h.strip_suffix(b".") {
                Some(rest) if !rest.is_empty() => rest,
                _ => h,
            })
    }
}

/// Why a request head was refused; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("unsupported Expect value")]
    Expectation,
    /// CONNECT: a proxy for HTTP, not a tunnel to arbitrary hosts.
    #[error("CONNECT is not supported")]
    Connect,
    /// A transfer coding other than chunked (`gzip, chunked`): 501, as nginx answers.
    #[error("transfer coding not implemented")]
    UnsupportedCoding,
}

impl RequestError {
    pub fn status(self) -> u16 {
        match self {
            RequestError::Malformed(_) => 400,
            RequestError::TooManyHeaders => 431,
            RequestError::Expectation => 417,
            RequestError::Connect | RequestError::UnsupportedCoding => 501,
        }
    }
}

/// Parses the request head at the front of `buf`. `Ok(None)` means the head is not complete.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    storage: &'h mut [super::HeaderSlot<'b>],
) -> Result<Option<RequestHead<'h, 'b>>, RequestError> {
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, storage) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(httparse::Error::Version) => {
            return Err(RequestError::Malformed("unsupported HTTP version"))
        }
        Err(_) => return Err(RequestError::Malformed("invalid request head")),
    };
    let (Some(method_str), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(RequestError::Malformed("incomplete request line"));
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;
    let method_bytes = method_str.as_bytes();
    let method = Method::from_bytes(method_bytes);
    let target = target.as_bytes();
    if method == Method::Connect {
        return Err(RequestError::Connect);
    }

    let (path, authority) = split_target(method, target)?;

    let mut host_header = None;
    let mut content_length: Option<u64> = None;
    let mut has_te = false;
    let mut expect_continue = false;
    let mut conn = ConnectionOptions::default();
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            if host_header.is_some() {
                return Err(RequestError::Malformed("more than one Host header"));
            }
            host_header = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(RequestError::Malformed("more than one Content-Length"));
            }
            content_length = Some(
                parse_content_length(h.value)
                    .ok_or(RequestError::Malformed("invalid Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn.add(h.value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            if h.value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(RequestError::Expectation);
            }
        }
    }
    if conn.overflow {
        return Err(RequestError::Malformed(
            "Connection names more headers than lb tracks (16)",
        ));
    }
    if minor == 1 && host_header.is_none() {
        return Err(RequestError::Malformed("HTTP/1.1 request without Host"));
    }
    if let Some(h) = host_header {
        if !valid_host(h) {
            return Err(RequestError::Malformed("invalid Host"));
        }
    }

    let framing = if has_te {
        if content_length.is_some() {
            return Err(RequestError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if minor == 0 {
            return Err(RequestError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        let te_values = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| h.value);
        match judge_transfer_encoding(te_values) {
            TeVerdict::Chunked => Framing::Chunked,
            TeVerdict::NotChunkedLast => {
                return Err(RequestError::Malformed(
                    "Transfer-Encoding does not end in chunked",
                ))
            }
            TeVerdict::ChunkedTwice => {
                return Err(RequestError::Malformed("chunked applied more than once"))
            }
            TeVerdict::ChunkedNotLast => {
                return Err(RequestError::Malformed(
                    "chunked is not the last transfer coding",
                ))
            }
            TeVerdict::Unsupported => return Err(RequestError::UnsupportedCoding),
        }
    } else {
        match content_length {
            Some(n) => Framing::Length(n),
            None => Framing::None,
        }
    };

    let keep_alive = if minor == 1 {
        !conn.close
    } else {
        conn.keep_alive && !conn.close
    };

    Ok(Some(RequestHead {
        method,
        method_bytes,
        path,
        authority,
        host_header,
        minor,
        framing,
        keep_alive,
        expect_continue: expect_continue && minor == 1 && framing != Framing::None,
        conn,
        head_len,
        headers,
    }))
}

/// Splits a request target into origin-form path and optional authority.
fn split_target(method: Method, target: &[u8]) -> Result<(&[u8], Option<&[u8]>), RequestError> {
    if target.first() == Some(&b'/') {
        return Ok((target, None));
    }
    if target == b"*" {
        return if method == Method::Options {
            Ok((target, None))
        } else {
            Err(RequestError::Malformed("'*' target outside OPTIONS"))
        };
    }
    let rest = strip_prefix_ignore_case(target, b"http://")
        .or_else(|| strip_prefix_ignore_case(target, b"https://"))
        .ok_or(RequestError::Malformed("invalid request target"))?;
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || !valid_host(authority) {
        return Err(RequestError::Malformed(
            "invalid authority in request target",
        ));
    }
    // "http://h" has an empty path: RFC 9112 §3.2.1 makes it "/". A bare "?q" stays as is
    // and the upstream writer puts the "/" in front of it.
    Ok((path_or_root(path), Some(authority)))
}

fn path_or_root(path: &[u8]) -> &[u8] {
    if path.is_empty() {
        b"/"
    } else {
        path
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// A Host value: reg-name or IPv4 or bracketed IPv6, optional numeric port. No userinfo.
fn valid_host(h: &[u8]) -> bool {
    if h.is_empty() {
        return false;
    }
    let (host, port) = if h[0] == b'[' {
        let Some(close) = h.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &h[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &h[close + 1..] {
            [] => return true,
            [b':', port @ ..] => (&h[..0], Some(port)),
            _ => return false,
        }
    } else {
        match h.iter().rposition(|&b| b == b':') {
            Some(i) => (&h[..i], Some(&h[i + 1..])),
            None => (h, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
            return false;
        }
    }
    host.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b))
}

/// Removes a trailing `:port` from a host, keeping IPv6 brackets intact.
pub fn strip_port(h: &[u8]) -> &[u8] {
    if h.first() == Some(&b'[') {
        return match h.iter().position(|&b| b == b']') {
            Some(close) => &h[..=close],
            None => h,
        };
    }
    match h.iter().rposition(|&b| b == b':') {
        Some(i) => &h[..i],
        None => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with<T>(
        raw: &[u8],
        f: impl FnOnce(Result<Option<RequestHead<'_, '_>>, RequestError>) -> T,
    ) -> T {
        let mut storage = crate::http::header_slots::<32>();
        f(parse(raw, &mut storage))
    }

    #[test]
    fn simple_get() {
        with(
            b"GET /a?b=1 HTTP/1.1\r\nHost: Example.com:8080\r\n\r\nextra",
            |r| {
                let h = r.unwrap().unwrap();
                assert_eq!(h.method, Method::Get);
                assert_eq!(h.path, b"/a?b=1");
                assert_eq!(h.host(), Some(&b"Example.com"[..]));
                assert_eq!(h.framing, Framing::None);
                assert!(h.keep_alive);
                assert_eq!(h.head_len, 47);
            },
        );
    }

    #[test]
    fn partial_head() {
        with(b"GET / HTTP/1.1\r\nHost: a\r\n", |r| {
            assert!(r.unwrap().is_none())
        });
    }

    #[test]
    fn http10_persistence() {
        with(b"GET / HTTP/1.0\r\n\r\n", |r| {
            assert!(!r.unwrap().unwrap().keep_alive)
        });
        with(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", |r| {
            assert!(r.unwrap().unwrap().keep_alive)
        });
        with(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            |r| assert!(!r.unwrap().unwrap().keep_alive),
        );
    }

    #[test]
    fn framing() {
        with(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            |r| assert_eq!(r.unwrap().unwrap().framing, Framing::Length(5)),
        );
        with(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            |r| assert_eq!(r.unwrap().unwrap().framing, Framing::Chunked),
        );
    }

    #[test]
    fn absolute_form_wins_over_host() {
        with(
            b"GET http://api.example.com?x=1 HTTP/1.1\r\nHost: other\r\n\r\n",
            |r| {
                let h = r.unwrap().unwrap();
                assert_eq!(h.host(), Some(&b"api.example.com"[..]));
                assert_eq!(h.path, b"?x=1");
            },
        );
        with(
            b"GET http://api.example.com/p HTTP/1.1\r\nHost: other\r\n\r\n",
            |r| {
                assert_eq!(r.unwrap().unwrap().path, b"/p");
            },
        );
    }

    #[test]
    fn rejects_ambiguous_or_malformed() {
        let bad: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        ];
        for raw in bad {
            with(raw, |r| {
                assert!(
                    matches!(r, Err(RequestError::Malformed(_))),
                    "{:?} gave {:?}",
                    String::from_utf8_lossy(raw),
                    r.map(|o| o.map(|h| h.head_len))
                )
            });
        }
    }

    #[test]
    fn connection_naming_too_many_headers_is_refused() {
        let names: Vec<String> = (0..17).map(|i| format!("X-{i}")).collect();
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: {}\r\n\r\n",
            names.join(", ")
        );
        with(raw.as_bytes(), |r| {
            assert!(matches!(r, Err(RequestError::Malformed(_))))
        });
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: {}\r\n\r\n",
            names[..16].join(", ")
        );
        with(raw.as_bytes(), |r| {
            assert!(r.unwrap().unwrap().conn.names(b"x-15"))
        });
    }

    #[test]
    fn expect() {
        with(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-Continue\r\n\r\n",
            |r| assert!(r.unwrap().unwrap().expect_continue),
        );
        with(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n",
            |r| assert_eq!(r.unwrap_err(), RequestError::Expectation),
        );
    }

    #[test]
    fn too_many_headers() {
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..40 {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        with(&raw, |r| {
            assert_eq!(r.unwrap_err(), RequestError::TooManyHeaders)
        });
    }

    #[test]
    fn strip_port_keeps_ipv6() {
        assert_eq!(strip_port(b"[::1]:80"), b"[::1]");
        assert_eq!(strip_port(b"a.b:80"), b"a.b");
        assert_eq!(strip_port(b"a.b"), b"a.b");
    }
}
