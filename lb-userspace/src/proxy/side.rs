//! The client side of a request as the pipeline sees it: [`Downstream`], a [`Source`] of
//! request bytes and a [`Sink`] for the answer (the byte-stream traits live in `net`). It is
//! an HTTP/1.1 connection ([`BufConn`]) or an HTTP/2 stream. The exchange and the body pump
//! are generic over these, so one pipeline serves every client protocol with static
//! dispatch (no cost for HTTP/1.1).

use crate::net::BufConn;
pub(crate) use crate::net::{Sink, Source};

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
    /// Told what failed just before lb answers with an error: a side that answers in its
    /// own terms (a gRPC status) maps the typed error rather than the HTTP status.
    fn failed(&mut self, _e: &super::error::ProxyError) {}
    /// The request body's own half, taken out to stream on while the answer is read (a
    /// full-duplex exchange, as bidirectional gRPC needs); `None` unless the body is still
    /// coming in on an HTTP/2 stream. Given back with [`Downstream::put_body_half`].
    fn take_body_half(&mut self) -> Option<super::h2::stream::BodyIn> {
        None
    }
    fn put_body_half(&mut self, _body: super::h2::stream::BodyIn) {}
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
