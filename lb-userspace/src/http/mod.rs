//! The HTTP/1.1 codec: request and response head analysis, body framing, and the chunked
//! decoder. Parsing is `httparse` over a caller-owned buffer; nothing here allocates.

pub mod chunked;
pub mod h2;
pub mod path;
pub mod request;
pub mod response;
pub mod write;

use std::mem::MaybeUninit;

/// Room for parsed headers. Left uninitialised: httparse writes only the slots a head uses,
/// so a 256-slot array costs nothing per request (initialising it cost 8 KiB of stores).
pub type HeaderSlot<'b> = MaybeUninit<httparse::Header<'b>>;

/// `N` empty header slots, for [`request::parse`] and [`response::parse`].
pub fn header_slots<'b, const N: usize>() -> [HeaderSlot<'b>; N] {
    [const { MaybeUninit::uninit() }; N]
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything until the peer closes (responses only).
    UntilClose,
}

/// The request methods `lb` treats specially; everything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Patch,
    Trace,
    Connect,
    Other,
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"OPTIONS" => Method::Options,
            b"PATCH" => Method::Patch,
            b"TRACE" => Method::Trace,
            b"CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }

    /// RFC 9110 §9.2.2: a request that can be repeated without changing its effect.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// Headers that describe one connection and are never forwarded (RFC 9110 §7.6.1), plus the
/// framing headers that `lb` recomputes itself.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"expect",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Headers that belong to the message, not the connection, whatever `Connection` says.
fn is_message_essential(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"host")
        || name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"transfer-encoding")
}

/// Iterates the comma-separated, trimmed, non-empty elements of a header value.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|item| item.trim_ascii())
        .filter(|item| !item.is_empty())
}

/// Connection-level options collected from `Connection` headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectionOptions<'a> {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Other header names listed in `Connection`, to strip.
    pub named: [&'a [u8]; 16],
    pub named_len: usize,
    /// More names were listed than `named` holds: the message is refused rather than passed
    /// on with some of its hop-by-hop headers.
    pub overflow: bool,
}

impl<'a> ConnectionOptions<'a> {
    pub fn add(&mut self, value: &'a [u8]) {
        for item in list_items(value) {
            if item.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if item.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if item.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else if is_message_essential(item) {
                // `Connection: Host` must not make lb drop the Host (and route the backend
                // to the cluster's name), nor the framing that lb recomputes anyway.
                continue;
            } else if self.named_len < self.named.len() {
                self.named[self.named_len] = item;
                self.named_len += 1;
            } else {
                self.overflow = true;
            }
        }
    }

    /// True if `name` was listed in `Connection` and so belongs to this hop only.
    pub fn names(&self, name: &[u8]) -> bool {
        self.named[..self.named_len]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The raw value of the first `name` parameter in a query string (`Some(b"")` for `?flag`).
pub fn query_param<'q>(query: &'q [u8], name: &[u8]) -> Option<&'q [u8]> {
    query.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        (k == name).then_some(v)
    })
}

/// The value of cookie `name` in a `Cookie` header value (`a=1; b=2`).
pub fn cookie_value<'v>(header: &'v [u8], name: &[u8]) -> Option<&'v [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// Parses a Content-Length value strictly: ASCII digits only, no sign, no overflow.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add((d - b'0') as u64)
    })
}

/// What a Transfer-Encoding list amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeVerdict {
    /// Exactly `chunked`: the only transfer coding `lb` implements.
    Chunked,
    /// Names no `chunked` at all.
    NotChunkedLast,
    /// Names `chunked` more than once.
    ChunkedTwice,
    /// `chunked` is followed by another coding (`chunked, identity`).
    ChunkedNotLast,
    /// Ends in `chunked` but also applies a coding `lb` does not implement (`gzip, chunked`):
    /// passing the body on as plain chunked would hand the peer gzip bytes as data.
    Unsupported,
}

/// Judges the combined Transfer-Encoding list of a message (every field line, in order).
pub fn judge_transfer_encoding<'a>(values: impl Iterator<Item = &'a [u8]>) -> TeVerdict {
    let mut chunked_seen = 0;
    let mut last_is_chunked = false;
    let mut other = false;
    for v in values {
        for item in list_items(v) {
            last_is_chunked = item.eq_ignore_ascii_case(b"chunked");
            if last_is_chunked {
                chunked_seen += 1;
            } else {
                other = true;
            }
        }
    }
    if chunked_seen > 1 {
        TeVerdict::ChunkedTwice
    } else if chunked_seen == 1 && !last_is_chunked {
        TeVerdict::ChunkedNotLast
    } else if chunked_seen == 0 {
        TeVerdict::NotChunkedLast
    } else if other {
        TeVerdict::Unsupported
    } else {
        TeVerdict::Chunked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_strict() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"1234"), Some(1234));
        assert_eq!(parse_content_length(b"18446744073709551615"), None);
        assert_eq!(
            parse_content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [&b""[..], b"+1", b"-1", b" 1", b"1a", b"0x10", b"1,1"] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn transfer_encoding_verdicts() {
        let v = |s: &[&'static [u8]]| judge_transfer_encoding(s.iter().copied());
        assert_eq!(v(&[b"chunked"]), TeVerdict::Chunked);
        assert_eq!(v(&[b"Chunked"]), TeVerdict::Chunked);
        assert_eq!(v(&[b"gzip, Chunked"]), TeVerdict::Unsupported);
        assert_eq!(v(&[b"gzip", b"chunked"]), TeVerdict::Unsupported);
        assert_eq!(v(&[b"identity, chunked"]), TeVerdict::Unsupported);
        assert_eq!(v(&[b"chunked, gzip"]), TeVerdict::ChunkedNotLast);
        assert_eq!(v(&[b"chunked, identity"]), TeVerdict::ChunkedNotLast);
        assert_eq!(v(&[b"chunked", b"chunked"]), TeVerdict::ChunkedTwice);
        assert_eq!(v(&[b"gzip"]), TeVerdict::NotChunkedLast);
        assert_eq!(v(&[b"identity"]), TeVerdict::NotChunkedLast);
    }

    #[test]
    fn query_params_and_cookies() {
        assert_eq!(query_param(b"a=1&b=2", b"b"), Some(&b"2"[..]));
        assert_eq!(query_param(b"a=1&flag", b"flag"), Some(&b""[..]));
        assert_eq!(query_param(b"a=1", b"c"), None);
        assert_eq!(query_param(b"aa=1", b"a"), None);
        assert_eq!(cookie_value(b"a=1; b = 2", b"b"), Some(&b"2"[..]));
        assert_eq!(cookie_value(b"a=1", b"b"), None);
    }

    #[test]
    fn connection_options() {
        let mut c = ConnectionOptions::default();
        c.add(b"Keep-Alive, X-Secret , close");
        assert!(c.close && c.keep_alive && !c.upgrade);
        assert!(c.names(b"x-secret"));
        assert!(!c.names(b"x-other"));
        c.add(b"Host, content-length, Transfer-Encoding");
        assert!(!c.names(b"host") && !c.names(b"Content-Length"));
        assert!(!c.names(b"transfer-encoding"));
    }
}
