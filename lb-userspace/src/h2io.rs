//! The byte stream under an HTTP/2 connection, to a client or to a backend: the socket in
//! monoio's poll mode (readiness through the same io_uring or epoll driver), with a rustls
//! session on top when the connection runs TLS, presented to the `h2` crate as tokio's
//! `AsyncRead`/`AsyncWrite`. Bytes already read before the hand-over (the connection
//! preface, the first frames) are delivered first.
//!
//! On a client's connection, every frame header coming in is looked at ([`FrameWatch`]) so
//! that floods the `h2` crate does not bound itself (PING, SETTINGS, empty frames, resets,
//! CONTINUATION) trip a limit and end the connection with GOAWAY.
//!
//! Cost against HTTP/1.1: plaintext is copied once from rustls into h2's read buffer (the
//! HTTP/1.1 path copies it into the connection's buffer the same way); on plaintext
//! connections the socket reads straight into h2's buffer.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use monoio::net::tcp::stream_poll::TcpStreamPoll;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http::h2::FrameWatch;

/// Ciphertext read at once.
const CIPHER_READ: usize = 17 * 1024;

pub struct H2Io {
    tcp: TcpStreamPoll,
    tls: Option<rustls::Connection>,
    /// Plaintext the HTTP/1.1 side read before the hand-over.
    pending: Vec<u8>,
    pending_pos: usize,
    /// Ciphertext read and not yet given to rustls.
    cin: Vec<u8>,
    cin_pos: usize,
    cin_len: usize,
    /// Ciphertext to write, from `cout_pos`.
    cout: Vec<u8>,
    cout_pos: usize,
    /// The socket reached its end.
    eof: bool,
    pub watch: Option<FrameWatch>,
}

impl H2Io {
    pub fn new(
        tcp: TcpStreamPoll,
        tls: Option<(rustls::Connection, Vec<u8>)>,
        pending: Vec<u8>,
        watch: Option<FrameWatch>,
    ) -> H2Io {
        let (tls, cin) = match tls {
            Some((session, leftover)) => (Some(session), leftover),
            None => (None, Vec::new()),
        };
        let cin_len = cin.len();
        H2Io {
            tcp,
            tls,
            pending,
            pending_pos: 0,
            cin,
            cin_pos: 0,
            cin_len,
            cout: Vec::new(),
            cout_pos: 0,
            eof: false,
            watch,
        }
    }

    /// Writes what the TLS session has to send.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.cout_pos < self.cout.len() {
                let n =
                    ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.cout[self.cout_pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.cout_pos += n;
                continue;
            }
            self.cout.clear();
            self.cout_pos = 0;
            let Some(tls) = self.tls.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            if !tls.wants_write() {
                return Poll::Ready(Ok(()));
            }
            tls.write_tls(&mut self.cout)?;
        }
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
            if self.cin_pos < self.cin_len {
                let mut rd = &self.cin[self.cin_pos..self.cin_len];
                let before = rd.len();
                tls.read_tls(&mut rd)?;
                self.cin_pos += before - rd.len();
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
            if self.cin.len() < CIPHER_READ {
                self.cin.resize(CIPHER_READ, 0);
            }
            let mut rb = ReadBuf::new(&mut self.cin[..]);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                self.eof = true;
            }
            self.cin_pos = 0;
            self.cin_len = n;
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
        } else {
            ready!(Pin::new(&mut this.tcp).poll_read(cx, buf))?;
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
        if this.tls.is_none() {
            return Pin::new(&mut this.tcp).poll_write(cx, data);
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
        let this = self.get_mut();
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(tls) = this.tls.as_mut() {
            tls.send_close_notify();
        }
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
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
