//! The two ends a body moves between, as the pipeline sees them: a [`Source`] of bytes with
//! a read buffer, and a [`Sink`] that takes bytes. An upstream connection is both; so is the
//! client side of a request, which is an HTTP/1.1 connection ([`BufConn`]) or an HTTP/2
//! stream. The exchange and the body pump are generic over these, so one pipeline serves
//! every client protocol with static dispatch (no cost for HTTP/1.1).

use std::ops::Range;
use std::time::Duration;

use crate::net::{BufConn, IoFail};

/// Where bytes come from: a buffer of what has arrived, and a way to get more.
pub(crate) trait Source {
    /// The bytes read and not yet consumed.
    fn data(&self) -> &[u8];
    fn consume(&mut self, n: usize);
    /// No room to read more without consuming.
    fn is_full(&self) -> bool;
    /// Reads more within `timeout`; `IoFail::Eof` at a clean end.
    async fn fill(&mut self, timeout: Duration) -> Result<usize, IoFail>;
    /// Writes the first `n` buffered bytes to `dst` and consumes them.
    async fn forward_to<D: Sink>(
        &mut self,
        dst: &mut D,
        n: usize,
        timeout: Duration,
    ) -> Result<(), IoFail>;
}

/// Where bytes go.
pub(crate) trait Sink {
    /// Writes all of `buf` (which is left as it was, for reuse).
    async fn write_all(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<(), IoFail>;
    /// Writes `buf[range]`, owning the buffer meanwhile (completion IO), and gives it back.
    async fn write_owned(
        &mut self,
        buf: Vec<u8>,
        range: Range<usize>,
        timeout: Duration,
    ) -> (Result<(), IoFail>, Vec<u8>);
}

impl Source for BufConn {
    fn data(&self) -> &[u8] {
        BufConn::data(self)
    }

    fn consume(&mut self, n: usize) {
        BufConn::consume(self, n)
    }

    fn is_full(&self) -> bool {
        BufConn::is_full(self)
    }

    async fn fill(&mut self, timeout: Duration) -> Result<usize, IoFail> {
        BufConn::fill(self, timeout).await
    }

    async fn forward_to<D: Sink>(
        &mut self,
        dst: &mut D,
        n: usize,
        timeout: Duration,
    ) -> Result<(), IoFail> {
        let (buf, range) = self.lend(n);
        let (res, buf) = dst.write_owned(buf, range, timeout).await;
        self.give_back(buf, n, res.is_ok());
        res
    }
}

impl Sink for BufConn {
    async fn write_all(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<(), IoFail> {
        BufConn::write_all(self, buf, timeout).await
    }

    async fn write_owned(
        &mut self,
        buf: Vec<u8>,
        range: Range<usize>,
        timeout: Duration,
    ) -> (Result<(), IoFail>, Vec<u8>) {
        BufConn::write_owned(self, buf, range, timeout).await
    }
}

/// The client side of one request, as the exchange uses it: the request's bytes (head
/// consumed, body to come), a sink for the answer, and what a retry needs to replay a
/// buffered body.
pub(crate) trait Downstream: Source + Sink {
    /// Reads so far: a body whose bytes were all buffered before the first attempt can be
    /// replayed only if no read happened since.
    fn reads(&self) -> u64;
    /// Where the unconsumed bytes start, to rewind to for a retry.
    fn position(&self) -> usize;
    fn rewind(&mut self, pos: usize);
    fn buf_capacity(&self) -> usize;
    /// Swaps in another read buffer (a larger one for a large body), keeping the bytes.
    fn swap_buf(&mut self, buf: Vec<u8>) -> Vec<u8>;
    /// The HTTP/1.1 connection itself, for what only a connection can do: a protocol
    /// upgrade (a tunnel) and a lingering close. `None` for an HTTP/2 stream.
    fn connection(&mut self) -> Option<&mut BufConn>;
}

impl Downstream for BufConn {
    fn reads(&self) -> u64 {
        self.reads
    }

    fn position(&self) -> usize {
        BufConn::position(self)
    }

    fn rewind(&mut self, pos: usize) {
        BufConn::rewind(self, pos)
    }

    fn buf_capacity(&self) -> usize {
        BufConn::buf_capacity(self)
    }

    fn swap_buf(&mut self, buf: Vec<u8>) -> Vec<u8> {
        BufConn::swap_buf(self, buf)
    }

    fn connection(&mut self) -> Option<&mut BufConn> {
        Some(self)
    }
}
