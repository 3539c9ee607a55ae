//! Response heads from backends: parse, then decide framing and whether the upstream
//! connection can be reused. Ambiguous framing is an error: the backend gets a 502 and its
//! connection is closed, never reused.

use super::{judge_transfer_encoding, parse_content_length, ConnectionOptions, Framing, TeVerdict};
use thiserror::Error;

/// A complete, analysed response head borrowing the upstream read buffer.
#[derive(Debug)]
pub struct ResponseHead<'h, 'b> {
    pub status: u16,
    pub reason: &'b [u8],
    pub minor: u8,
    pub framing: Framing,
    /// The backend allows another request on this connection after the body.
    pub reusable: bool,
    pub conn: ConnectionOptions<'b>,
    /// Content-Length as sent, kept for responses without a body (HEAD, 304).
    pub content_length: Option<u64>,
    pub head_len: usize,
    pub headers: &'h [httparse::Header<'b>],
}

/// Why a backend's response head is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ResponseError {
    #[error("malformed response head")]
    Malformed,
    #[error("too many header fields in response")]
    TooManyHeaders,
    #[error("ambiguous response framing: {0}")]
    Ambiguous(&'static str),
}

/// Parses the response head at the front of `buf`. `Ok(None)` means it is not complete yet.
/// `request_was_head` says whether the request was HEAD, which means no body whatever the
/// headers say.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    storage: &'h mut [super::HeaderSlot<'b>],
    request_was_head: bool,
) -> Result<Option<ResponseHead<'h, 'b>>, ResponseError> {
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, storage);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyHeaders),
        Err(_) => return Err(ResponseError::Malformed),
    };
    let (Some(status), Some(minor)) = (res.code, res.version) else {
        return Err(ResponseError::Malformed);
    };
    if !(100..=999).contains(&status) {
        return Err(ResponseError::Malformed);
    }
    let reason = res.reason.unwrap_or("").as_bytes();
    let headers: &'h [httparse::Header<'b>] = res.headers;

    let mut content_length = None;
    let mut has_te = false;
    let mut conn = ConnectionOptions::default();
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = parse_content_length(h.value)
                .ok_or(ResponseError::Ambiguous("invalid Content-Length"))?;
            if content_length.is_some_and(|old| old != v) {
                return Err(ResponseError::Ambiguous("conflicting Content-Length"));
            }
            if content_length.is_some() {
                return Err(ResponseError::Ambiguous("duplicate Content-Length"));
            }
            content_length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn.add(h.value);
        }
    }
    if conn.overflow {
        return Err(ResponseError::Ambiguous(
            "Connection names more headers than lb tracks",
        ));
    }

    let bodiless =
        request_was_head || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if has_te && content_length.is_some() {
        return Err(ResponseError::Ambiguous(
            "both Transfer-Encoding and Content-Length",
        ));
    } else if bodiless {
        Framing::None
    } else if has_te {
        if minor == 0 {
            return Err(ResponseError::Ambiguous(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        let te = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| h.value);
        match judge_transfer_encoding(te) {
            TeVerdict::Chunked => Framing::Chunked,
            // RFC 9112 §6.3: a response whose last coding is not chunked runs to close.
            TeVerdict::NotChunkedLast => Framing::UntilClose,
            TeVerdict::ChunkedTwice => {
                return Err(ResponseError::Ambiguous("chunked applied twice"))
            }
            TeVerdict::ChunkedNotLast => {
                return Err(ResponseError::Ambiguous(
                    "chunked is not the last transfer coding",
                ))
            }
            // The body would reach the client as data it cannot decode.
            TeVerdict::Unsupported => {
                return Err(ResponseError::Ambiguous(
                    "a transfer coding other than chunked",
                ))
            }
        }
    } else {
        match content_length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };

    let persistent = if minor == 1 {
        !conn.close
    } else {
        conn.keep_alive && !conn.close
    };
    Ok(Some(ResponseHead {
        status,
        reason,
        minor,
        framing,
        reusable: persistent && framing != Framing::UntilClose,
        conn,
        content_length,
        head_len,
        headers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing_of(raw: &[u8], head: bool) -> Result<(Framing, bool), ResponseError> {
        let mut storage = crate::http::header_slots::<16>();
        parse(raw, &mut storage, head).map(|r| {
            let r = r.expect("complete");
            (r.framing, r.reusable)
        })
    }

    #[test]
    fn framings() {
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false),
            Ok((Framing::Length(3), true))
        );
        assert_eq!(
            framing_of(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\n\r\n", false),
            Ok((Framing::UntilClose, false))
        );
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Ok((Framing::UntilClose, false))
        );
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true),
            Ok((Framing::None, true))
        );
        assert_eq!(
            framing_of(b"HTTP/1.1 204 No Content\r\n\r\n", false),
            Ok((Framing::None, true))
        );
        assert_eq!(
            framing_of(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Ok((Framing::None, true))
        );
        assert_eq!(
            framing_of(b"HTTP/1.1 100 Continue\r\n\r\n", false),
            Ok((Framing::None, true))
        );
        assert_eq!(
            framing_of(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(
            framing_of(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(
            framing_of(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            Ok((Framing::Length(1), true))
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        ] {
            assert!(
                matches!(framing_of(raw, false), Err(ResponseError::Ambiguous(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            framing_of(b"HTTP/1.1 abc OK\r\n\r\n", false),
            Err(ResponseError::Malformed)
        );
    }
}
