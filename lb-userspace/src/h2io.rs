//! The byte stream under an HTTP/2 connection, to a client or to a backend: the socket
//! through io_uring's completions (one read and one write in flight at a time, into and
//! from buffers of this adapter's), with a rustls session on top when the connection runs
//! TLS, presented to the `h2` crate as tokio's `AsyncRead`/`AsyncWrite`. Bytes already read
//! before the hand-over (the connection preface, the first frames) are delivered first.
//!
//! Completions rather than readiness: the `h2` crate reads until it is told to wait, and
//! polls its connection each time a stream wakes it, so a readiness-driven socket paid a
//! `recv` that found nothing (EAGAIN) more often than one that found bytes, about 1.3 per
//! request under `h2load -c64 -m10`. A read in flight costs no system call of its own: it
//! goes to the kernel with the worker's other submissions.
//!
//! On a client's connection, every frame header coming in is looked at ([`FrameWatch`]) so
//! that floods the `h2` crate does not bound itself (PING, SETTINGS, empty frames, resets,
//! CONTINUATION) trip a limit and end the connection with GOAWAY.
//!
//! Cost against HTTP/1.1: bytes are copied once from the read buffer into h2's (through
//! rustls on TLS connections; the HTTP/1.1 path copies into the connection's buffer the
//! same way), and frames once into the write buffer.

use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http::h2::FrameWatch;

/// Bytes read at once (ciphertext on TLS connections: a whole record and then some).
const READ_SIZE: usize = 17 * 1024;

/// Bytes queued for the socket past which a write waits for the one in flight.
const WRITE_QUEUE: usize = 64 * 1024;

type ReadOp =
    Pin<Box<dyn Future<Output = (OwnedReadHalf<TcpStream>, monoio::BufResult<usize, Vec<u8>>)>>>;
type WriteOp =
    Pin<Box<dyn Future<Output = (OwnedWriteHalf<TcpStream>, monoio::BufResult<usize, Vec<u8>>)>>>;

/// One direction of the socket: its half, or the operation that holds it meanwhile.
enum Half<H, F> {
    Idle(H),
    Busy(F),
    /// Only while a state changes (or after a panic in between).
    Gone,
}

/// The socket with one read and one write in flight at most.
struct Socket {
    rd: Half<OwnedReadHalf<TcpStream>, ReadOp>,
    wr: Half<OwnedWriteHalf<TcpStream>, WriteOp>,
    /// Bytes read; `inb[in_pos..]` not taken yet.
    inb: Vec<u8>,
    in_pos: usize,
    /// Bytes to write that no write has taken yet.
    outb: Vec<u8>,
    /// The buffer the last write gave back, for the next one.
    spare: Vec<u8>,
    fd: RawFd,
}

fn gone() -> io::Error {
    io::Error::other("HTTP/2 socket lost in an earlier failure")
}

impl Socket {
    fn new(tcp: TcpStream) -> Socket {
        let fd = tcp.as_raw_fd();
        let (rd, wr) = tcp.into_split();
        Socket {
            rd: Half::Idle(rd),
            wr: Half::Idle(wr),
            inb: Vec::new(),
            in_pos: 0,
            outb: Vec::new(),
            spare: Vec::new(),
            fd,
        }
    }

    /// Bytes read and not taken, after a read if there were none: 0 at the end of the
    /// stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.in_pos < self.inb.len() {
            return Poll::Ready(Ok(self.inb.len() - self.in_pos));
        }
        loop {
            match std::mem::replace(&mut self.rd, Half::Gone) {
                Half::Idle(mut half) => {
                    let mut buf = std::mem::take(&mut self.inb);
                    buf.clear();
                    buf.reserve(READ_SIZE);
                    self.in_pos = 0;
                    self.rd = Half::Busy(Box::pin(async move {
                        let r = half.read(buf).await;
                        (half, r)
                    }));
                }
                Half::Busy(mut op) => {
                    let Poll::Ready((half, (result, buf))) = op.as_mut().poll(cx) else {
                        self.rd = Half::Busy(op);
                        return Poll::Pending;
                    };
                    self.rd = Half::Idle(half);
                    self.inb = buf;
                    self.in_pos = 0;
                    return Poll::Ready(result);
                }
                Half::Gone => return Poll::Ready(Err(gone())),
            }
        }
    }

    /// Takes up to `n` bytes of what was read.
    fn taken(&mut self, n: usize) -> &[u8] {
        let k = n.min(self.inb.len() - self.in_pos);
        let at = self.in_pos;
        self.in_pos += k;
        &self.inb[at..at + k]
    }

    /// Ready once every queued byte is written (a write is started for what is queued).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match std::mem::replace(&mut self.wr, Half::Gone) {
                Half::Idle(mut half) => {
                    if self.outb.is_empty() {
                        self.wr = Half::Idle(half);
                        return Poll::Ready(Ok(()));
                    }
                    let buf = std::mem::replace(&mut self.outb, std::mem::take(&mut self.spare));
                    self.wr = Half::Busy(Box::pin(async move {
                        let r = half.write_all(buf).await;
                        (half, r)
                    }));
                }
                Half::Busy(mut op) => {
                    let Poll::Ready((half, (result, mut buf))) = op.as_mut().poll(cx) else {
                        self.wr = Half::Busy(op);
                        return Poll::Pending;
                    };
                    self.wr = Half::Idle(half);
                    // A burst's large buffer is not kept for the connection's lifetime.
                    if buf.capacity() <= 2 * WRITE_QUEUE {
                        buf.clear();
                        self.spare = buf;
                    }
                    if let Err(e) = result {
                        return Poll::Ready(Err(e));
                    }
                }
                Half::Gone => return Poll::Ready(Err(gone())),
            }
        }
    }
}

pub struct H2Io {
    sock: Socket,
    tls: Option<rustls::Connection>,
    /// Plaintext the HTTP/1.1 side read before the hand-over.
    pending: Vec<u8>,
    pending_pos: usize,
    /// The socket reached its end.
    eof: bool,
    pub watch: Option<FrameWatch>,
}

impl H2Io {
    /// `tls`: the session and ciphertext already read for it.
    pub fn new(
        tcp: TcpStream,
        tls: Option<(rustls::Connection, Vec<u8>)>,
        pending: Vec<u8>,
        watch: Option<FrameWatch>,
    ) -> H2Io {
        let mut sock = Socket::new(tcp);
        let tls = match tls {
            Some((session, leftover)) => {
                sock.inb = leftover;
                Some(session)
            }
            None => None,
        };
        H2Io {
            sock,
            tls,
            pending,
            pending_pos: 0,
            eof: false,
            watch,
        }
    }

    /// Writes what the TLS session has to send, and whatever else is queued.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(tls) = self.tls.as_mut() {
            while tls.wants_write() {
                tls.write_tls(&mut self.sock.outb)?;
            }
        }
        self.sock.poll_drain(cx)
    }

    /// Reads into `buf` through the TLS session.
    fn poll_read_tls(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match tls.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    // 0: close_notify, the end.
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify: the end all the same for h2.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
            if self.sock.in_pos < self.sock.inb.len() {
                let mut rd = &self.sock.inb[self.sock.in_pos..];
                let before = rd.len();
                tls.read_tls(&mut rd)?;
                self.sock.in_pos += before - rd.len();
                if let Err(e) = tls.process_new_packets() {
                    // The alert rustls queued goes out if it can.
                    let _ = self.poll_flush_tls(cx);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
                // Anything rustls answers on its own (a key update) goes out.
                if let Poll::Ready(Err(e)) = self.poll_flush_tls(cx) {
                    return Poll::Ready(Err(e));
                }
                continue;
            }
            if self.eof {
                // Tell rustls the stream ended; its reader then says how.
                let _ = tls.read_tls(&mut &[][..]);
                return match tls.reader().read(buf.initialize_unfilled()) {
                    Ok(n) => {
                        buf.advance(n);
                        Poll::Ready(Ok(()))
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(Ok(())),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
                    Err(e) => Poll::Ready(Err(e)),
                };
            }
            if ready!(self.sock.poll_fill(cx))? == 0 {
                self.eof = true;
            }
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.watch.as_ref().is_some_and(FrameWatch::tripped) {
            // A flood was seen: nothing more goes to h2 (the connection task ends it).
            return Poll::Pending;
        }
        let start = buf.filled().len();
        if this.pending_pos < this.pending.len() {
            let n = (this.pending.len() - this.pending_pos).min(buf.remaining());
            buf.put_slice(&this.pending[this.pending_pos..this.pending_pos + n]);
            this.pending_pos += n;
            if this.pending_pos == this.pending.len() {
                this.pending = Vec::new();
                this.pending_pos = 0;
            }
        } else if this.tls.is_some() {
            ready!(this.poll_read_tls(cx, buf))?;
        } else if !this.eof {
            if ready!(this.sock.poll_fill(cx))? == 0 {
                this.eof = true;
            }
            buf.put_slice(this.sock.taken(buf.remaining()));
        }
        let Some(watch) = this.watch.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        watch.saw(&buf.filled()[start..], crate::timer::now_ms());
        if watch.tripped() {
            // The connection task is woken and ends the connection with GOAWAY.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.sock.outb.len() >= WRITE_QUEUE {
            ready!(this.sock.poll_drain(cx))?;
        }
        if this.tls.is_none() {
            this.sock.outb.extend_from_slice(data);
            return Poll::Ready(Ok(data.len()));
        }
        loop {
            let n = match this.tls.as_mut() {
                Some(tls) => tls.writer().write(data)?,
                None => 0,
            };
            let flushed = this.poll_flush_tls(cx)?;
            if n > 0 || data.is_empty() {
                return Poll::Ready(Ok(n));
            }
            // rustls' buffer is full: wait for the socket to take some.
            ready!(flushed);
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_tls(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(tls) = this.tls.as_mut() {
            tls.send_close_notify();
        }
        ready!(this.poll_flush_tls(cx))?;
        // The writing half is idle (drained): it holds the descriptor open.
        if !matches!(this.sock.wr, Half::Idle(_)) {
            return Poll::Ready(Err(gone()));
        }
        // SAFETY: shutdown on the socket the idle writing half holds open; no memory is
        // passed.
        if unsafe { libc::shutdown(this.sock.fd, libc::SHUT_WR) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOTCONN) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Header fields HTTP/2 forbids (RFC 9113, 8.2.2): never sent on, either way.
pub const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// One trailer line (`name: value\r\n`) as an HTTP/2 field, if it is a valid one.
/// Ends a chunked HTTP/1.1 body in `buf`: the last chunk, `trailers` as its trailer section
/// (HTTP/2 trailers going on as HTTP/1.1), and the blank line.
pub fn push_last_chunk(buf: &mut Vec<u8>, trailers: Option<&http::HeaderMap>) {
    buf.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    buf.extend_from_slice(b"\r\n");
}

pub fn trailer_field(line: &[u8]) -> Option<(http::HeaderName, http::HeaderValue)> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let colon = line.iter().position(|&b| b == b':')?;
    let name = http::HeaderName::from_bytes(&line[..colon].to_ascii_lowercase()).ok()?;
    let value = http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
    Some((name, value))
}

/// Why [`send_flow`] stopped.
pub enum FlowFail {
    /// The peer's flow-control window stayed shut for the whole timeout.
    Stalled,
    /// The stream is gone (reset by the peer).
    Closed,
    H2(h2::Error),
}

/// Sends `data` as DATA frames on `stream`, as the peer's flow-control window allows,
/// waiting for window at most `timeout` at a time; `eos` ends the stream with the last byte
/// (or an empty frame when `data` is empty).
pub async fn send_flow(
    stream: &mut h2::SendStream<bytes::Bytes>,
    mut data: &[u8],
    eos: bool,
    timeout: std::time::Duration,
) -> Result<(), FlowFail> {
    if data.is_empty() {
        return if eos {
            stream
                .send_data(bytes::Bytes::new(), true)
                .map_err(FlowFail::H2)
        } else {
            Ok(())
        };
    }
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let mut cap = stream.capacity();
        if cap == 0 {
            let wait = std::future::poll_fn(|cx| stream.poll_capacity(cx));
            cap = match crate::timer::timeout(timeout, wait).await {
                Err(_) => return Err(FlowFail::Stalled),
                Ok(None) => return Err(FlowFail::Closed),
                Ok(Some(Err(e))) => return Err(FlowFail::H2(e)),
                Ok(Some(Ok(n))) => n,
            };
            if cap == 0 {
                continue;
            }
        }
        let k = cap.min(data.len());
        stream
            .send_data(
                bytes::Bytes::copy_from_slice(&data[..k]),
                eos && k == data.len(),
            )
            .map_err(FlowFail::H2)?;
        data = &data[k..];
    }
    Ok(())
}
