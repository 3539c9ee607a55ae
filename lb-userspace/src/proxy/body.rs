//! Streaming a message body from one connection to another, re-framing on the way.
//! Bodies are never buffered whole: at most one read buffer and one scratch buffer of bytes
//! are held at a time.

use std::time::{Duration, Instant};

use super::side::{Sink, Source};
use crate::http::chunked::{ChunkError, ChunkedDecoder, Step, TrailerPolicy};
use crate::http::write::push_hex;
use crate::http::Framing;
use crate::net::IoFail;

/// Scratch bytes gathered before a write when re-encoding chunks.
const FLUSH_AT: usize = 32 * 1024;

/// How the body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encode {
    /// As `Transfer-Encoding: chunked`.
    Chunked,
    /// Raw bytes: for `Content-Length` bodies and for bodies delimited by close.
    Plain,
}

/// Where a body transfer broke.
#[derive(Debug)]
pub enum PumpFail {
    /// Reading the source failed or it closed early.
    Src(IoFail),
    /// Writing the destination failed.
    Dst(IoFail),
    /// The source's chunked framing is invalid.
    Chunk(ChunkError),
    /// More body than `max` bytes.
    TooLarge,
    /// The source fell below the minimum rate.
    TooSlow,
}

/// How a body goes out: its encoding, and which trailer fields a chunked body keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Out<'a> {
    pub encode: Encode,
    pub trailers: TrailerPolicy,
    /// Header names only lb writes (forwarded claims, the country): never passed on as
    /// trailers either.
    pub owned: &'a [String],
}

/// How long reads of a body may wait: `idle` for any one read, and optionally a minimum
/// average rate once a grace period has passed (against slow-body attacks that trickle a
/// byte now and then, each read well inside the idle timeout).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub idle: Duration,
    /// Bytes per second; 0 is no minimum.
    min_rate: u64,
    grace: Duration,
    start: Instant,
}

impl Pace {
    pub fn idle(idle: Duration) -> Pace {
        Pace {
            idle,
            min_rate: 0,
            grace: Duration::ZERO,
            start: Instant::now(),
        }
    }

    /// From now on, `done` body bytes must have arrived by `grace + done / min_rate`.
    pub fn with_min_rate(idle: Duration, min_rate: u64, grace: Duration) -> Pace {
        Pace {
            min_rate,
            grace,
            ..Pace::idle(idle)
        }
    }

    /// The longest the next read may wait with `done` bytes in, and whether the minimum
    /// rate rather than the idle timeout sets it.
    fn budget(&self, done: u64) -> (Duration, bool) {
        if self.min_rate == 0 {
            return (self.idle, false);
        }
        let earned = Duration::from_secs_f64(done as f64 / self.min_rate as f64);
        let left = (self.grace + earned).saturating_sub(self.start.elapsed());
        if left < self.idle {
            // A read that completes at once still counts: data already waiting is taken.
            (left.max(Duration::from_millis(1)), true)
        } else {
            (self.idle, false)
        }
    }
}

/// Reads more of a body that has `done` bytes so far.
async fn fill<S: Source>(src: &mut S, pace: &Pace, done: u64) -> Result<usize, PumpFail> {
    let (wait, by_rate) = pace.budget(done);
    match src.fill(wait).await {
        Err(IoFail::Timeout) if by_rate => Err(PumpFail::TooSlow),
        r => r.map_err(PumpFail::Src),
    }
}

/// Moves one body of `framing` from `src` to `dst`. Returns the body bytes moved.
/// `max` of 0 means no cap.
pub(crate) async fn pump<S: Source, D: Sink>(
    src: &mut S,
    dst: &mut D,
    framing: Framing,
    out: Out<'_>,
    scratch: &mut Vec<u8>,
    pace: Pace,
    max: u64,
) -> Result<u64, PumpFail> {
    let idle = pace.idle;
    let encode = out.encode;
    scratch.clear();
    match framing {
        Framing::None => Ok(0),
        Framing::Length(n) => {
            if max > 0 && n > max {
                return Err(PumpFail::TooLarge);
            }
            let mut remaining = n;
            while remaining > 0 {
                if src.data().is_empty() {
                    fill(src, &pace, n - remaining).await?;
                }
                let k = (src.data().len() as u64).min(remaining) as usize;
                src.forward_to(dst, k, idle).await.map_err(PumpFail::Dst)?;
                remaining -= k as u64;
            }
            Ok(n)
        }
        Framing::Chunked => pump_chunked(src, dst, out, scratch, pace, max).await,
        Framing::UntilClose => {
            let mut total = 0u64;
            loop {
                if src.data().is_empty() {
                    match fill(src, &pace, total).await {
                        Ok(_) => {}
                        Err(PumpFail::Src(IoFail::Eof)) => break,
                        Err(e) => return Err(e),
                    }
                }
                let k = src.data().len();
                total += k as u64;
                if max > 0 && total > max {
                    return Err(PumpFail::TooLarge);
                }
                match encode {
                    Encode::Plain => src.forward_to(dst, k, idle).await.map_err(PumpFail::Dst)?,
                    Encode::Chunked => {
                        push_chunk(scratch, &src.data()[..k]);
                        src.consume(k);
                        flush(dst, scratch, idle).await?;
                    }
                }
            }
            if encode == Encode::Chunked {
                scratch.extend_from_slice(b"0\r\n\r\n");
                flush(dst, scratch, idle).await?;
            }
            Ok(total)
        }
    }
}

async fn pump_chunked<S: Source, D: Sink>(
    src: &mut S,
    dst: &mut D,
    out: Out<'_>,
    scratch: &mut Vec<u8>,
    pace: Pace,
    max: u64,
) -> Result<u64, PumpFail> {
    let idle = pace.idle;
    let encode = out.encode;
    let mut decoder = ChunkedDecoder::new();
    let mut total = 0u64;
    loop {
        let step = decoder.step(src.data()).map_err(PumpFail::Chunk)?;
        match step {
            Step::Data(k) => {
                total += k as u64;
                if max > 0 && total > max {
                    return Err(PumpFail::TooLarge);
                }
                match encode {
                    Encode::Chunked => {
                        push_chunk(scratch, &src.data()[..k]);
                        src.consume(k);
                        if scratch.len() >= FLUSH_AT {
                            flush(dst, scratch, idle).await?;
                        }
                    }
                    Encode::Plain => {
                        flush(dst, scratch, idle).await?;
                        src.forward_to(dst, k, idle).await.map_err(PumpFail::Dst)?;
                    }
                }
            }
            Step::Skip(k) => src.consume(k),
            Step::LastChunk(k) => {
                src.consume(k);
                if encode == Encode::Chunked {
                    scratch.extend_from_slice(b"0\r\n");
                }
            }
            Step::Trailer(k) => {
                let line = &src.data()[..k];
                if encode == Encode::Chunked
                    && out.trailers.forwards(line)
                    && !crate::http::chunked::names_one_of(line, out.owned)
                {
                    scratch.extend_from_slice(&src.data()[..k]);
                }
                src.consume(k);
            }
            Step::End(k) => {
                src.consume(k);
                if encode == Encode::Chunked {
                    scratch.extend_from_slice(b"\r\n");
                }
                flush(dst, scratch, idle).await?;
                return Ok(total);
            }
            Step::NeedMore => {
                flush(dst, scratch, idle).await?;
                if src.is_full() {
                    return Err(PumpFail::Chunk(ChunkError::LineTooLong));
                }
                fill(src, &pace, total).await?;
            }
        }
    }
}

fn push_chunk(scratch: &mut Vec<u8>, data: &[u8]) {
    push_hex(scratch, data.len() as u64);
    scratch.extend_from_slice(b"\r\n");
    scratch.extend_from_slice(data);
    scratch.extend_from_slice(b"\r\n");
}

async fn flush<D: Sink>(
    dst: &mut D,
    scratch: &mut Vec<u8>,
    idle: Duration,
) -> Result<(), PumpFail> {
    if scratch.is_empty() {
        return Ok(());
    }
    dst.write_all(scratch, idle).await.map_err(PumpFail::Dst)?;
    scratch.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testio::{buf_pair, collect, rt, send};
    use super::*;

    const FILTER: Out<'static> = Out {
        encode: Encode::Chunked,
        trailers: TrailerPolicy::Filter,
        owned: &[],
    };
    const PLAIN: Out<'static> = Out {
        encode: Encode::Plain,
        trailers: TrailerPolicy::Filter,
        owned: &[],
    };

    /// Pumps `input` (sent in `piece`-byte writes, then closed or reset) framed as `framing`
    /// to a peer; returns the pump's result and what the peer received.
    fn run(
        input: &[u8],
        piece: usize,
        reset: bool,
        framing: Framing,
        out: Out<'_>,
        max: u64,
    ) -> (Result<u64, PumpFail>, Vec<u8>) {
        rt().block_on(async {
            let (mut src, src_peer) = buf_pair();
            let (mut dst, dst_peer) = buf_pair();
            let sender = send(src_peer, input.to_vec(), piece, reset);
            let got = collect(dst_peer);
            let mut scratch = Vec::new();
            let pace = Pace::idle(Duration::from_secs(5));
            let r = pump(&mut src, &mut dst, framing, out, &mut scratch, pace, max).await;
            drop(dst);
            let _ = sender.join();
            (r, got.join().expect("collector"))
        })
    }

    #[test]
    fn a_length_body_moves_whole_in_any_pieces() {
        for piece in [1, 3, 4096] {
            let (r, got) = run(b"hello world", piece, false, Framing::Length(11), PLAIN, 0);
            assert_eq!(r.ok(), Some(11));
            assert_eq!(got, b"hello world");
        }
    }

    #[test]
    fn a_truncated_or_reset_body_is_a_source_failure() {
        let (r, got) = run(b"only part", 4, false, Framing::Length(100), PLAIN, 0);
        assert!(matches!(r, Err(PumpFail::Src(IoFail::Eof))), "{r:?}");
        assert_eq!(got, b"only part", "what came is passed on, nothing more");
        let (r, _) = run(b"only part", 4, true, Framing::Length(100), PLAIN, 0);
        assert!(matches!(r, Err(PumpFail::Src(_))), "{r:?}");
        let (r, _) = run(b"5\r\nhel", 2, false, Framing::Chunked, FILTER, 0);
        assert!(matches!(r, Err(PumpFail::Src(IoFail::Eof))), "{r:?}");
    }

    #[test]
    fn chunked_bodies_are_reframed_with_safe_trailers() {
        let input = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\r\nHost: evil\r\nContent-Length: 3\r\n\r\n";
        for piece in [1, 7, 4096] {
            let (r, got) = run(input, piece, false, Framing::Chunked, FILTER, 0);
            assert_eq!(r.ok(), Some(11));
            let text = String::from_utf8(got).expect("utf8");
            assert!(text.ends_with("0\r\nX-Sum: 1\r\n\r\n"), "{text:?}");
            let mut d = crate::http::chunked::ChunkedDecoder::new();
            let mut data = Vec::new();
            let mut rest = text.as_bytes();
            loop {
                match d.step(rest).expect("valid chunked output") {
                    crate::http::chunked::Step::Data(n) => {
                        data.extend_from_slice(&rest[..n]);
                        rest = &rest[n..];
                    }
                    crate::http::chunked::Step::End(_) => break,
                    crate::http::chunked::Step::NeedMore => panic!("incomplete: {text:?}"),
                    step => rest = &rest[step_len(step)..],
                }
            }
            assert_eq!(data, b"hello world");
        }
        // Decoded to plain bytes, trailers have nowhere to go.
        let (r, got) = run(input, 5, false, Framing::Chunked, PLAIN, 0);
        assert_eq!(r.ok(), Some(11));
        assert_eq!(got, b"hello world");
    }

    fn step_len(step: crate::http::chunked::Step) -> usize {
        use crate::http::chunked::Step;
        match step {
            Step::Data(n)
            | Step::Skip(n)
            | Step::LastChunk(n)
            | Step::Trailer(n)
            | Step::End(n) => n,
            Step::NeedMore => 0,
        }
    }

    /// Edge cases of chunked framing through the pump, each in one piece and byte by byte
    /// (a size line, a CRLF or the final chunk split across reads).
    #[test]
    fn chunked_edge_cases() {
        // (input, the body's length if it is accepted, what the peer gets when re-chunked)
        let ok: [(&[u8], u64, &[u8]); 5] = [
            (b"0\r\n\r\n", 0, b"0\r\n\r\n"),
            (b"005\r\nhello\r\n0\r\n\r\n", 5, b"hello"),
            (b"A\r\n0123456789\r\n0\r\n\r\n", 10, b"0123456789"),
            (b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n", 3, b"abc"),
            (b"3 ;name=\"v\"\r\nabc\r\n0;last\r\n\r\n", 3, b"abc"),
        ];
        for (input, len, body) in ok {
            for piece in [1, 4096] {
                let (r, got) = run(input, piece, false, Framing::Chunked, FILTER, 0);
                assert_eq!(
                    r.ok(),
                    Some(len),
                    "{:?} in {piece}-byte pieces",
                    String::from_utf8_lossy(input)
                );
                let (r, plain) = run(input, piece, false, Framing::Chunked, PLAIN, 0);
                assert_eq!(r.ok(), Some(len));
                if len > 0 {
                    assert_eq!(plain, body);
                } else {
                    assert_eq!(got, body, "an empty body still ends its chunked framing");
                }
                assert!(got.ends_with(b"0\r\n\r\n"), "{got:?}");
            }
        }
        // Refused: bare LF (a smuggling vector), a size that overflows 64 bits, and a size
        // line with whitespace and no extension.
        let bad: [&[u8]; 3] = [
            b"5\nhello\n0\n\n",
            b"10000000000000000\r\nx\r\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
        ];
        for input in bad {
            for piece in [1, 4096] {
                let (r, _) = run(input, piece, false, Framing::Chunked, FILTER, 0);
                let text = String::from_utf8_lossy(input);
                assert!(
                    matches!(r, Err(PumpFail::Chunk(_))),
                    "{text:?} in {piece}-byte pieces: {r:?}"
                );
            }
        }
        // The pump stops where the body ends: a pipelined request behind it is not part of it.
        let (r, got) = run(
            b"5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            4096,
            false,
            Framing::Chunked,
            FILTER,
            0,
        );
        assert_eq!(r.ok(), Some(5));
        assert!(
            got.ends_with(b"0\r\n\r\n"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        let (r, _) = run(
            b"5\r\nhello\r\n0\r\nX-A: 1\r\n",
            3,
            false,
            Framing::Chunked,
            FILTER,
            0,
        );
        assert!(matches!(r, Err(PumpFail::Src(IoFail::Eof))), "{r:?}");
    }

    #[test]
    fn broken_chunks_and_oversized_bodies_are_refused() {
        let (r, _) = run(
            b"zz\r\nhello\r\n0\r\n\r\n",
            64,
            false,
            Framing::Chunked,
            FILTER,
            0,
        );
        assert!(matches!(r, Err(PumpFail::Chunk(_))), "{r:?}");
        let (r, _) = run(
            b"5\r\nhelloX\r\n0\r\n\r\n",
            64,
            false,
            Framing::Chunked,
            FILTER,
            0,
        );
        assert!(matches!(r, Err(PumpFail::Chunk(_))), "{r:?}");
        let (r, _) = run(
            b"6\r\nhello \r\n6\r\nworld!\r\n0\r\n\r\n",
            64,
            false,
            Framing::Chunked,
            FILTER,
            8,
        );
        assert!(matches!(r, Err(PumpFail::TooLarge)), "{r:?}");
        let (r, got) = run(b"0123456789", 64, false, Framing::Length(10), PLAIN, 5);
        assert!(matches!(r, Err(PumpFail::TooLarge)), "{r:?}");
        assert!(got.is_empty(), "nothing of an oversized body is sent");
    }

    #[test]
    fn a_destination_that_stops_reading_times_out_and_one_that_closes_fails() {
        rt().block_on(async {
            let (mut src, src_peer) = buf_pair();
            let (mut dst, dst_peer) = buf_pair();
            let big = vec![b'x'; 16 << 20];
            let sender = send(src_peer, big, 64 * 1024, false);
            let mut scratch = Vec::new();
            // The peer never reads: the write stalls, and the idle timeout cancels it.
            let pace = Pace::idle(Duration::from_millis(200));
            let r = pump(
                &mut src,
                &mut dst,
                Framing::Length(16 << 20),
                PLAIN,
                &mut scratch,
                pace,
                0,
            )
            .await;
            assert!(matches!(r, Err(PumpFail::Dst(IoFail::Timeout))), "{r:?}");
            drop((src, dst_peer));
            let _ = sender.join();
        });
        rt().block_on(async {
            let (mut src, src_peer) = buf_pair();
            let (mut dst, dst_peer) = buf_pair();
            drop(dst_peer);
            let sender = send(src_peer, vec![b'y'; 4 << 20], 64 * 1024, false);
            let mut scratch = Vec::new();
            let pace = Pace::idle(Duration::from_secs(5));
            let r = pump(
                &mut src,
                &mut dst,
                Framing::Length(4 << 20),
                PLAIN,
                &mut scratch,
                pace,
                0,
            )
            .await;
            assert!(matches!(r, Err(PumpFail::Dst(IoFail::Io(_)))), "{r:?}");
            drop(src);
            let _ = sender.join();
        });
    }

    #[test]
    fn a_body_below_the_minimum_rate_is_cut() {
        rt().block_on(async {
            let (mut src, mut src_peer) = buf_pair();
            let (mut dst, dst_peer) = buf_pair();
            let got = collect(dst_peer);
            // One byte, then silence: after the 100 ms grace, 1 KiB/s wants more than that.
            std::io::Write::write_all(&mut src_peer, b"a").expect("write");
            let pace =
                Pace::with_min_rate(Duration::from_secs(5), 1024, Duration::from_millis(100));
            let mut scratch = Vec::new();
            let r = pump(
                &mut src,
                &mut dst,
                Framing::Length(1000),
                PLAIN,
                &mut scratch,
                pace,
                0,
            )
            .await;
            assert!(matches!(r, Err(PumpFail::TooSlow)), "{r:?}");
            drop((dst, src_peer));
            assert_eq!(got.join().expect("collector"), b"a");
        });
    }
}
