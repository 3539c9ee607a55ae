//! An incremental, strict decoder for `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1).
//!
//! The decoder never copies: it tells the caller how many bytes at the front of its input are
//! chunk data, framing to drop, or a trailer line, and the caller consumes them. Lines (chunk
//! sizes and trailers) are only decided once they are whole in the input; a line longer than
//! [`MAX_LINE`] is an error rather than a reason to buffer without bound.

use thiserror::Error;

/// Longest chunk-size line or trailer line accepted.
pub const MAX_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// What the front of the input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `n` bytes of chunk data.
    Data(usize),
    /// `n` bytes of framing (a chunk-size line or the CRLF after data) to drop.
    Skip(usize),
    /// The last-chunk line (`0\r\n`, `n` bytes): trailers, if any, follow.
    LastChunk(usize),
    /// One whole trailer field line of `n` bytes, CRLF included.
    Trailer(usize),
    /// The final CRLF (`n` bytes): the body is complete.
    End(usize),
    /// The input does not hold enough to decide; read more.
    NeedMore,
}

/// A violation of the chunked framing grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ChunkError {
    #[error("chunk size is not a hexadecimal number")]
    BadSize,
    #[error("chunk size overflows 64 bits")]
    SizeOverflow,
    #[error("malformed chunk extension")]
    BadExtension,
    #[error("chunk data is not followed by CRLF")]
    MissingCrlf,
    #[error("line is not terminated by CRLF")]
    BareLf,
    #[error("chunk line too long")]
    LineTooLong,
    #[error("malformed trailer field")]
    BadTrailer,
    #[error("trailer section too large")]
    TrailersTooLarge,
    #[error("body continues after the last chunk")]
    AfterEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SizeLine,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Decoder state for one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::SizeLine,
            trailer_bytes: 0,
        }
    }

    /// True once the final CRLF has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decides what the front of `input` is. The caller consumes the returned count of bytes
    /// before calling again.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        match self.state {
            State::SizeLine => {
                let Some(line_len) = line_length(input, MAX_LINE)? else {
                    return Ok(Step::NeedMore);
                };
                let size = parse_size_line(&input[..line_len - 2])?;
                if size == 0 {
                    self.state = State::Trailers;
                    Ok(Step::LastChunk(line_len))
                } else {
                    self.state = State::Data(size);
                    Ok(Step::Skip(line_len))
                }
            }
            State::Data(remaining) => {
                if input.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = (input.len() as u64).min(remaining);
                let left = remaining - n;
                self.state = if left == 0 {
                    State::DataEnd
                } else {
                    State::Data(left)
                };
                Ok(Step::Data(n as usize))
            }
            State::DataEnd => {
                if input.len() < 2 {
                    if input.first().is_some_and(|&b| b != b'\r') {
                        return Err(ChunkError::MissingCrlf);
                    }
                    return Ok(Step::NeedMore);
                }
                if &input[..2] != b"\r\n" {
                    return Err(ChunkError::MissingCrlf);
                }
                self.state = State::SizeLine;
                Ok(Step::Skip(2))
            }
            State::Trailers => {
                let Some(line_len) = line_length(input, MAX_LINE)? else {
                    return Ok(Step::NeedMore);
                };
                if line_len == 2 {
                    self.state = State::Done;
                    return Ok(Step::End(2));
                }
                self.trailer_bytes += line_len;
                if self.trailer_bytes > MAX_TRAILER_BYTES {
                    return Err(ChunkError::TrailersTooLarge);
                }
                validate_trailer(&input[..line_len - 2])?;
                Ok(Step::Trailer(line_len))
            }
            State::Done => {
                if input.is_empty() {
                    Ok(Step::NeedMore)
                } else {
                    Err(ChunkError::AfterEnd)
                }
            }
        }
    }
}

/// Length of the first CRLF-terminated line, CRLF included, or `None` if it is not whole yet.
fn line_length(input: &[u8], max: usize) -> Result<Option<usize>, ChunkError> {
    let window = &input[..input.len().min(max)];
    match window.iter().position(|&b| b == b'\n') {
        Some(0) => Err(ChunkError::BareLf),
        Some(lf) if window[lf - 1] != b'\r' => Err(ChunkError::BareLf),
        Some(lf) => Ok(Some(lf + 1)),
        None if input.len() >= max => Err(ChunkError::LineTooLong),
        None => Ok(None),
    }
}

fn parse_size_line(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ChunkError::BadSize);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = (b as char).to_digit(16).ok_or(ChunkError::BadSize)? as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(d))
            .ok_or(ChunkError::SizeOverflow)?;
    }
    let rest = &line[digits..];
    // chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ); we accept any visible
    // characters after the first ';' but no control bytes, and nothing but BWS before it.
    let ws = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let rest = &rest[ws..];
    if rest.is_empty() {
        return if ws == 0 {
            Ok(size)
        } else {
            Err(ChunkError::BadSize)
        };
    }
    if rest[0] != b';' {
        return Err(ChunkError::BadSize);
    }
    if rest[1..]
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        || rest.len() == 1
    {
        return Err(ChunkError::BadExtension);
    }
    Ok(size)
}

fn validate_trailer(line: &[u8]) -> Result<(), ChunkError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ChunkError::BadTrailer)?;
    if colon == 0 || !line[..colon].iter().all(|&b| is_tchar(b)) {
        return Err(ChunkError::BadTrailer);
    }
    if line[colon + 1..]
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(ChunkError::BadTrailer);
    }
    Ok(())
}

/// Which trailer fields go on to the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrailerPolicy {
    /// Every field except those RFC 9110 §6.5.1 forbids in trailers: framing, routing,
    /// request modifiers, authentication, response control and content description. A
    /// trailer `Content-Length` or `Host` would otherwise reach a peer that may merge it
    /// into the head.
    #[default]
    Filter,
    /// No trailer field is forwarded.
    Drop,
}

/// Fields that must not be sent (and are not believed) in a trailer section.
const FORBIDDEN_IN_TRAILERS: [&[u8]; 38] = [
    // Who the client is, and path overrides: a trailer must not smuggle what lb removed
    // from the head.
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-real-ip",
    b"forwarded",
    b"true-client-ip",
    b"x-original-url",
    b"x-rewrite-url",
    b"transfer-encoding",
    b"content-length",
    b"host",
    b"cache-control",
    b"expect",
    b"max-forwards",
    b"pragma",
    b"range",
    b"te",
    b"trailer",
    b"if-match",
    b"if-none-match",
    b"if-modified-since",
    b"if-unmodified-since",
    b"if-range",
    b"authorization",
    b"proxy-authorization",
    b"www-authenticate",
    b"proxy-authenticate",
    b"cookie",
    b"set-cookie",
    b"age",
    b"expires",
    b"date",
    b"location",
    b"retry-after",
    b"vary",
    b"content-encoding",
    b"content-type",
    b"content-range",
];

/// Whether the field line `line` (`name: value`) is named one of `names` (lower case, with
/// `-`), reading `_` in the line as `-`.
pub fn names_one_of(line: &[u8], names: &[String]) -> bool {
    if names.is_empty() {
        return false;
    }
    let name = line.split(|&b| b == b':').next().unwrap_or(line);
    names.iter().any(|n| {
        n.len() == name.len()
            && n.bytes().zip(name).all(|(a, &b)| {
                a == if b == b'_' {
                    b'-'
                } else {
                    b.to_ascii_lowercase()
                }
            })
    })
}

impl TrailerPolicy {
    /// True if the trailer field line `line` (`name: value\r\n`, already validated) goes on.
    pub fn forwards(self, line: &[u8]) -> bool {
        match self {
            TrailerPolicy::Drop => false,
            TrailerPolicy::Filter => {
                let name = line.split(|&b| b == b':').next().unwrap_or(line);
                // `_` read as `-`: CGI-style servers map both spellings to one variable.
                let same = |f: &[u8]| {
                    f.len() == name.len()
                        && f.iter().zip(name).all(|(&a, &b)| {
                            a == if b == b'_' {
                                b'-'
                            } else {
                                b.to_ascii_lowercase()
                            }
                        })
                };
                !FORBIDDEN_IN_TRAILERS.iter().any(|f| same(f))
                    && !name.eq_ignore_ascii_case(b"connection")
                    && !name.eq_ignore_ascii_case(b"keep-alive")
                    && !name.eq_ignore_ascii_case(b"upgrade")
                    && !name.eq_ignore_ascii_case(b"proxy-connection")
            }
        }
    }
}

/// RFC 9110 `tchar`: the characters allowed in a header field name.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn trailer_policy_drops_forbidden_fields() {
        use super::TrailerPolicy;
        let f = TrailerPolicy::Filter;
        assert!(f.forwards(b"X-Checksum: 1\r\n"));
        assert!(f.forwards(b"grpc-status: 0\r\n"));
        for bad in [
            &b"Content-Length: 5\r\n"[..],
            b"host: evil\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Set-Cookie: a=b\r\n",
            b"Authorization: x\r\n",
            b"Connection: close\r\n",
            b"X-Forwarded-For: 6.6.6.6\r\n",
            b"X_Real_IP: 6.6.6.6\r\n",
        ] {
            assert!(!f.forwards(bad), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(!TrailerPolicy::Drop.forwards(b"X-Checksum: 1\r\n"));
    }

    use super::*;

    /// Runs the decoder over `input` fed in pieces of `piece` bytes; returns the data and trailers.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut data = Vec::new();
        let mut trailers = Vec::new();
        let mut avail = 0; // bytes "received" so far
        let mut pos = 0;
        loop {
            match d.step(&input[pos..avail])? {
                Step::Data(n) => {
                    data.extend_from_slice(&input[pos..pos + n]);
                    pos += n;
                }
                Step::Skip(n) | Step::LastChunk(n) => pos += n,
                Step::Trailer(n) => {
                    trailers.extend_from_slice(&input[pos..pos + n]);
                    pos += n;
                }
                Step::End(n) => {
                    pos += n;
                    assert_eq!(pos, input.len(), "bytes left after the body");
                    return Ok((data, trailers));
                }
                Step::NeedMore => {
                    if avail == input.len() {
                        panic!("decoder wants more than the whole input");
                    }
                    avail = (avail + piece).min(input.len());
                }
            }
        }
    }

    #[test]
    fn decodes_in_any_split() {
        let body = b"5\r\nhello\r\n6;name=\"v\"\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n";
        for piece in [1, 2, 3, 7, 100] {
            let (data, trailers) = decode(body, piece).expect("valid");
            assert_eq!(data, b"hello world");
            assert_eq!(trailers, b"X-Sum: 1\r\n");
        }
    }

    #[test]
    fn upper_case_hex_and_empty_body() {
        assert_eq!(
            decode(b"A\r\n0123456789\r\n0\r\n\r\n", 4).unwrap().0,
            b"0123456789"
        );
        assert_eq!(decode(b"0\r\n\r\n", 1).unwrap().0, b"");
    }

    #[test]
    fn rejects_malformed_framing() {
        let cases: &[(&[u8], ChunkError)] = &[
            (b"x\r\n", ChunkError::BadSize),
            (b"\r\n", ChunkError::BadSize),
            (b"-5\r\n", ChunkError::BadSize),
            (b"5 \r\nhello", ChunkError::BadSize),
            (b"11111111111111111\r\n", ChunkError::SizeOverflow),
            (b"5\nhello", ChunkError::BareLf),
            (b"5;\r\nhello", ChunkError::BadExtension),
            (b"5;a\x01b\r\nhello", ChunkError::BadExtension),
            (b"5\r\nhelloXY", ChunkError::MissingCrlf),
            (b"0\r\nBad Name: x\r\n\r\n", ChunkError::BadTrailer),
            (b"0\r\nnocolon\r\n\r\n", ChunkError::BadTrailer),
        ];
        for (input, want) in cases {
            let got = decode(input, 1).expect_err("must be rejected");
            assert_eq!(got, *want, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn long_lines_are_bounded() {
        let mut line = vec![b'1'; MAX_LINE + 10];
        line.extend_from_slice(b"\r\n");
        assert_eq!(
            ChunkedDecoder::new().step(&line),
            Err(ChunkError::LineTooLong)
        );
    }

    #[test]
    fn nothing_after_the_end() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.step(b"0\r\n\r\n"), Ok(Step::LastChunk(3)));
        assert_eq!(d.step(b"\r\n"), Ok(Step::End(2)));
        assert!(d.is_done());
        assert_eq!(d.step(b"x"), Err(ChunkError::AfterEnd));
    }
}
