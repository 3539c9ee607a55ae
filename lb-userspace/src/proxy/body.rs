//! Streaming a message body from one connection to another, re-framing on the way.
//! Bodies are never buffered whole: at most one read buffer and one scratch buffer of bytes
//! are held at a time.

use std::time::Duration;

use monoio::net::TcpStream;

use crate::http::chunked::{ChunkError, ChunkedDecoder, Step};
use crate::http::write::push_hex;
use crate::http::Framing;
use crate::net::{write_buf, BufConn, IoFail};

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
}

/// Moves one body of `framing` from `src` to `dst`. Returns the body bytes moved.
/// `max` of 0 means no cap.
pub async fn pump(
    src: &mut BufConn,
    dst: &mut TcpStream,
    framing: Framing,
    encode: Encode,
    scratch: &mut Vec<u8>,
    idle: Duration,
    max: u64,
) -> Result<u64, PumpFail> {
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
                    src.fill(idle).await.map_err(PumpFail::Src)?;
                }
                let k = (src.data().len() as u64).min(remaining) as usize;
                src.forward_to(dst, k, idle).await.map_err(PumpFail::Dst)?;
                remaining -= k as u64;
            }
            Ok(n)
        }
        Framing::Chunked => pump_chunked(src, dst, encode, scratch, idle, max).await,
        Framing::UntilClose => {
            let mut total = 0u64;
            loop {
                if src.data().is_empty() {
                    match src.fill(idle).await {
                        Ok(_) => {}
                        Err(IoFail::Eof) => break,
                        Err(e) => return Err(PumpFail::Src(e)),
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

async fn pump_chunked(
    src: &mut BufConn,
    dst: &mut TcpStream,
    encode: Encode,
    scratch: &mut Vec<u8>,
    idle: Duration,
    max: u64,
) -> Result<u64, PumpFail> {
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
                if encode == Encode::Chunked {
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
                src.fill(idle).await.map_err(PumpFail::Src)?;
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

async fn flush(dst: &mut TcpStream, scratch: &mut Vec<u8>, idle: Duration) -> Result<(), PumpFail> {
    if scratch.is_empty() {
        return Ok(());
    }
    write_buf(dst, scratch, idle).await.map_err(PumpFail::Dst)?;
    scratch.clear();
    Ok(())
}
