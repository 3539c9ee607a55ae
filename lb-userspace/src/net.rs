//! Buffered connections over monoio's owned-buffer IO, and a worker-local buffer pool.
//!
//! monoio hands a buffer to the kernel and gets it back with the result, so a connection owns
//! one `Vec<u8>` for its whole life: `len()` is how much was read, `pos` how much of it was
//! consumed. Nothing here allocates per request.

use std::cell::RefCell;
use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Size of the per-connection read buffer; also the upper bound on a request head.
pub const DEFAULT_BUF_SIZE: usize = 16 * 1024;

/// A buffer pool for one worker (`!Sync`, no locks).
///
/// Free buffers beyond what recent traffic needed are released by [`BufPool::trim`], so a
/// burst (say, thousands of connections arriving at once) does not stay resident forever.
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
    size: usize,
    max_free: usize,
    /// The fewest free buffers seen since the last trim: that many were not needed.
    low: std::cell::Cell<usize>,
}

impl BufPool {
    pub fn new(size: usize, max_free: usize) -> BufPool {
        BufPool {
            free: RefCell::new(Vec::new()),
            size,
            max_free,
            low: std::cell::Cell::new(0),
        }
    }

    /// A cleared buffer with at least the pool's capacity.
    pub fn take(&self) -> Vec<u8> {
        let mut free = self.free.borrow_mut();
        match free.pop() {
            Some(b) => {
                self.low.set(self.low.get().min(free.len()));
                b
            }
            None => {
                self.low.set(0);
                Vec::with_capacity(self.size)
            }
        }
    }

    /// Returns a buffer; buffers of the wrong size, or beyond the cap, are dropped.
    pub fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() < self.size || buf.capacity() > self.size * 4 {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free {
            buf.clear();
            free.push(buf);
        }
    }

    /// Releases the free buffers that stayed unused since the last trim; returns the bytes
    /// released.
    pub fn trim(&self) -> usize {
        let mut free = self.free.borrow_mut();
        let unused = self.low.get().min(free.len());
        let keep = free.len() - unused;
        let bytes = free[keep..].iter().map(|b| b.capacity()).sum();
        free.truncate(keep);
        free.shrink_to(keep.max(16));
        self.low.set(free.len());
        bytes
    }

    /// The capacity of the buffers this pool hands out.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Free buffers held.
    pub fn free_count(&self) -> usize {
        self.free.borrow().len()
    }
}

/// Why a read or write did not complete.
#[derive(Debug)]
pub enum IoFail {
    /// The peer closed the connection (a read returned 0).
    Eof,
    Timeout,
    Io(io::Error),
}

impl From<io::Error> for IoFail {
    fn from(e: io::Error) -> Self {
        IoFail::Io(e)
    }
}

/// A connection handed to another protocol's driver ([`BufConn::hand_over`]).
pub struct HandOver {
    pub stream: TcpStream,
    /// Plaintext read and not consumed.
    pub pending: Vec<u8>,
    /// The TLS session, with the ciphertext it has not processed yet.
    pub tls: Option<(rustls::Connection, Vec<u8>)>,
}

/// A TCP stream with one owned read buffer.
pub struct BufConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    /// Reads performed; lets a caller tell whether bytes it saw earlier are still in place.
    pub reads: u64,
    /// Kept across the grace reads of a busy connection (a new one costs two allocations);
    /// dropped when the connection parks.
    canceller: Option<monoio::io::Canceller>,
    /// A TLS session on this connection: reads decrypt into `buf`, writes encrypt.
    tls: Option<Box<TlsSession>>,
}

/// The TLS state of a connection: the rustls session and its ciphertext buffers. Plaintext
/// lands in the connection's own buffer, so the request path reads it as it reads plain TCP.
pub struct TlsSession {
    /// A server session (a client of lb) or a client session (to a backend).
    conn: rustls::Connection,
    /// Ciphertext read from the socket; `cipher_pos..cipher_len` is not yet given to rustls.
    cipher_in: Vec<u8>,
    cipher_pos: usize,
    cipher_len: usize,
    cipher_out: Vec<u8>,
    /// When the session started, until its handshake is counted.
    handshake_started: HandshakeClock,
    /// The verified certificate the client presented (mTLS), read once the handshake ends.
    client_cert: Option<crate::tls::ClientCert>,
}

impl TlsSession {
    /// Counts the handshake once it has finished.
    fn note_handshake(&mut self) {
        if self.conn.is_handshaking() {
            return;
        }
        let Some(started) = self.handshake_started.0.take() else {
            return;
        };
        let version = match self.conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
            _ => "other",
        };
        let resumed = matches!(
            self.conn.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        crate::metrics::tls_handshake("ok", version, resumed, Some(started.elapsed()));
        self.client_cert = self
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(crate::tls::client_cert);
    }

    /// Counts a handshake that did not finish: `result` says how it ended.
    fn note_failure(&mut self, result: &'static str) {
        if self.handshake_started.0.take().is_some() {
            crate::metrics::tls_handshake(result, "none", false, None);
        }
    }
}

/// When a server session started, until its handshake is counted; one dropped before that
/// (the client left, or timed out, mid-handshake) counts as incomplete.
struct HandshakeClock(Option<std::time::Instant>);

impl Drop for HandshakeClock {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            crate::metrics::tls_handshake("incomplete", "none", false, None);
        }
    }
}

/// The least time a TLS session's own output (handshake flights, alerts) gets to be
/// written, whatever is left of the read deadline it is sent under: a short keep-alive grace
/// must not cut a handshake flight in half.
const TLS_FLUSH_MIN: Duration = Duration::from_secs(1);

/// Ciphertext read at once: a full TLS record and a bit.
const CIPHER_READ: usize = 17 * 1024;

impl BufConn {
    pub fn new(stream: TcpStream, buf: Vec<u8>) -> BufConn {
        BufConn {
            stream,
            buf,
            pos: 0,
            reads: 0,
            canceller: None,
            tls: None,
        }
    }

    /// A connection that terminates TLS with `conn` (the handshake runs as the first reads
    /// and writes go).
    pub fn new_tls(stream: TcpStream, buf: Vec<u8>, conn: rustls::ServerConnection) -> BufConn {
        BufConn::with_session(stream, buf, rustls::Connection::Server(conn))
    }

    /// Like [`BufConn::new_tls`], with `cipher` already read from the socket (the bytes that
    /// followed a PROXY protocol header).
    pub fn new_tls_after(
        stream: TcpStream,
        buf: Vec<u8>,
        conn: rustls::ServerConnection,
        cipher: Vec<u8>,
    ) -> BufConn {
        let mut c = BufConn::new_tls(stream, buf, conn);
        if let Some(t) = c.tls.as_mut() {
            t.cipher_pos = 0;
            t.cipher_len = cipher.len();
            t.cipher_in = cipher;
        }
        c
    }

    /// A connection that originates TLS with `conn` (to a backend); [`BufConn::handshake`]
    /// runs the handshake. Its handshakes are not counted in the listener metrics.
    pub fn new_tls_client(
        stream: TcpStream,
        buf: Vec<u8>,
        conn: rustls::ClientConnection,
    ) -> BufConn {
        let mut c = BufConn::with_session(stream, buf, rustls::Connection::Client(conn));
        if let Some(t) = c.tls.as_mut() {
            t.handshake_started = HandshakeClock(None);
        }
        c
    }

    fn with_session(stream: TcpStream, buf: Vec<u8>, conn: rustls::Connection) -> BufConn {
        let mut c = BufConn::new(stream, buf);
        c.tls = Some(Box::new(TlsSession {
            conn,
            cipher_in: Vec::new(),
            cipher_pos: 0,
            cipher_len: 0,
            cipher_out: Vec::new(),
            handshake_started: HandshakeClock(Some(std::time::Instant::now())),
            client_cert: None,
        }));
        c
    }

    /// Runs the TLS handshake to its end within `timeout` (a client session's first flight
    /// goes out here). Errors from rustls come back as `InvalidData` IO errors that carry the
    /// `rustls::Error`.
    pub async fn handshake(&mut self, timeout: Duration) -> Result<(), IoFail> {
        let deadline = crate::timer::now_ms() + timeout.as_millis() as u64;
        loop {
            let Some(t) = self.tls.as_ref() else {
                return Ok(());
            };
            let handshaking = t.conn.is_handshaking();
            self.flush_tls(crate::timer::until(deadline).max(Duration::from_millis(1)))
                .await?;
            if !handshaking {
                return Ok(());
            }
            if self.feed_tls().await? {
                continue;
            }
            let Some(got) = self.read_cipher(deadline, false).await? else {
                return Err(IoFail::Timeout);
            };
            if let Some(t) = self.tls.as_mut() {
                t.cipher_pos = 0;
                t.cipher_len = got;
            }
        }
    }

    /// True if the connection runs TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Waits until a read would not wait: decrypted bytes are buffered in the TLS session,
    /// or the socket is readable. Cancel-safe: nothing is read.
    pub async fn readable(&mut self) -> io::Result<()> {
        if let Some(t) = self.tls.as_mut() {
            if t.cipher_pos < t.cipher_len {
                return Ok(());
            }
            // Plaintext the session already holds, or its end: no need to wait.
            match t.conn.process_new_packets() {
                Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() => {
                    return Ok(())
                }
                Ok(_) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        self.stream.readable(false).await
    }

    /// The verified certificate the client presented, on a TLS connection with mTLS.
    pub fn client_cert(&self) -> Option<&crate::tls::ClientCert> {
        self.tls.as_ref().and_then(|t| t.client_cert.as_ref())
    }

    /// The protocol ALPN settled on, on a TLS connection.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.tls.as_ref()?.conn.alpn_protocol()
    }

    /// Takes the connection apart for another protocol's driver (HTTP/2): the socket, the
    /// plaintext read and not consumed, and the TLS session with the ciphertext it has not
    /// processed yet.
    pub fn hand_over(mut self) -> HandOver {
        let pending = self
            .buf
            .get(self.pos..)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let tls = self.tls.take().map(|t| {
            let TlsSession {
                conn,
                cipher_in,
                cipher_pos,
                cipher_len,
                ..
            } = *t;
            let leftover = cipher_in.get(cipher_pos..cipher_len).map(<[u8]>::to_vec);
            (conn, leftover.unwrap_or_default())
        });
        HandOver {
            stream: self.stream,
            pending,
            tls,
        }
    }

    /// The SNI name the client sent, on a TLS connection.
    pub fn sni(&self) -> Option<&str> {
        match &self.tls.as_ref()?.conn {
            rustls::Connection::Server(s) => s.server_name(),
            rustls::Connection::Client(_) => None,
        }
    }

    /// Unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }

    /// The consumed offset, to rewind to with [`BufConn::rewind`] while `reads` is unchanged.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Moves the unconsumed bytes into `buf` (which must have room for them, else nothing
    /// changes and `buf` comes back) and returns the old buffer. Positions taken before
    /// refer to the old buffer.
    pub fn swap_buf(&mut self, mut buf: Vec<u8>) -> Vec<u8> {
        let left = self.buf.len() - self.pos;
        if buf.capacity() < left.max(1) {
            return buf;
        }
        buf.clear();
        buf.extend_from_slice(&self.buf[self.pos..]);
        self.pos = 0;
        std::mem::replace(&mut self.buf, buf)
    }

    pub fn rewind(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    /// True if the buffer holds `capacity` unconsumed bytes: a reader that still wants more
    /// has hit its limit.
    pub fn is_full(&self) -> bool {
        self.buf.len() - self.pos >= self.buf.capacity()
    }

    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.buf)
    }

    /// Takes the TLS session out (to park the connection), with its ciphertext buffers
    /// released: a parked session holds only what rustls keeps.
    pub fn take_tls(&mut self) -> Option<Box<TlsSession>> {
        let mut t = self.tls.take()?;
        if t.cipher_pos >= t.cipher_len {
            t.cipher_in = Vec::new();
            t.cipher_pos = 0;
            t.cipher_len = 0;
        }
        t.cipher_out = Vec::new();
        Some(t)
    }

    /// True if the TLS session holds input not yet read: ciphertext not given to rustls, or
    /// plaintext not taken. Such a connection is not idle.
    pub fn tls_input_pending(&mut self) -> bool {
        let Some(t) = self.tls.as_mut() else {
            return false;
        };
        t.cipher_pos < t.cipher_len
            || t.conn.process_new_packets().map_or(true, |s| {
                s.plaintext_bytes_to_read() > 0 || s.peer_has_closed()
            })
    }

    /// Frees the TLS session's ciphertext buffers while the connection sits idle.
    pub fn shed_tls_buffers(&mut self) {
        if let Some(t) = self.tls.as_mut() {
            if t.cipher_pos >= t.cipher_len {
                t.cipher_in = Vec::new();
                t.cipher_pos = 0;
                t.cipher_len = 0;
            }
            t.cipher_out = Vec::new();
        }
    }

    /// A connection resuming a TLS session that was parked.
    pub fn with_tls(stream: TcpStream, buf: Vec<u8>, tls: Box<TlsSession>) -> BufConn {
        let mut c = BufConn::new(stream, buf);
        c.tls = Some(tls);
        c
    }

    /// Capacity of the read buffer (0 while parked without one).
    pub fn buf_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Gives the connection a (cleared) read buffer.
    pub fn set_buf(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        self.buf = buf;
        self.pos = 0;
    }

    /// Takes the read buffer out (to give it back to a pool).
    pub fn take_buf(&mut self) -> Vec<u8> {
        self.pos = 0;
        std::mem::take(&mut self.buf)
    }

    /// Makes room after the unconsumed bytes: reset when all is consumed, compact when the
    /// buffer is full, never a zero-length read (which would look like EOF).
    fn prepare_read(&mut self) -> Result<(), IoFail> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.buf.len() == self.buf.capacity() && self.pos > 0 {
            self.buf.copy_within(self.pos.., 0);
            let left = self.buf.len() - self.pos;
            self.buf.truncate(left);
            self.pos = 0;
        }
        if self.buf.capacity() == 0 {
            // A timed-out IO took the buffer with it; the caller should have closed, but never
            // hand the kernel a zero-length read that looks like EOF.
            self.buf.reserve(DEFAULT_BUF_SIZE);
        }
        if self.buf.len() == self.buf.capacity() {
            return Err(IoFail::Io(io::Error::other("read buffer full")));
        }
        Ok(())
    }

    /// Reads more bytes after the unconsumed ones; fails with `Eof` if the peer closed.
    pub async fn fill(&mut self, timeout: Duration) -> Result<usize, IoFail> {
        if self.tls.is_some() {
            let deadline = crate::timer::deadline_after(timeout);
            return self.fill_tls(deadline, false).await?.ok_or(IoFail::Timeout);
        }
        self.prepare_read()?;
        let buf = std::mem::take(&mut self.buf);
        let start = buf.len();
        let read = self.stream.read(buf.slice_mut(start..));
        let (res, slice) = match crate::timer::timeout(timeout, read).await {
            Ok(r) => r,
            Err(_) => return Err(IoFail::Timeout),
        };
        self.buf = slice.into_inner();
        self.reads += 1;
        match res {
            Ok(0) => Err(IoFail::Eof),
            Ok(n) => Ok(n),
            Err(e) => Err(IoFail::Io(e)),
        }
    }

    /// Like [`BufConn::fill`], but while nothing is buffered the connection holds no buffer:
    /// it goes back to `pool`, the wait is a readiness poll, and a pooled buffer is taken only
    /// once the peer has sent something. (Connections idle between requests do not wait here:
    /// they park, see `worker::idle`.) A timeout keeps what was read before it, so the caller
    /// can still answer (a 408 for a head that did not finish in time).
    pub async fn fill_idle(&mut self, pool: &BufPool, timeout: Duration) -> Result<usize, IoFail> {
        if self.tls.is_some() {
            // Decrypted bytes may already wait inside the session: no readiness wait.
            if self.buf.capacity() == 0 {
                self.buf = pool.take();
            }
            let deadline = crate::timer::deadline_after(timeout);
            return self.fill_tls(deadline, true).await?.ok_or(IoFail::Timeout);
        }
        if self.pos == self.buf.len() {
            pool.give(self.take_buf());
            match crate::timer::timeout(timeout, self.stream.readable(false)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(IoFail::Io(e)),
                Err(_) => return Err(IoFail::Timeout),
            }
            self.buf = pool.take();
        }
        match self.read_within(timeout).await? {
            Some(n) => Ok(n),
            None => Err(IoFail::Timeout),
        }
    }

    /// Waits up to `grace` for more bytes, holding the buffer. `Ok(None)`: nothing came; the
    /// read was cancelled cleanly (bytes that raced the cancel are kept, not lost), and the
    /// caller can park the connection without a buffer.
    pub async fn fill_or_park(&mut self, grace: Duration) -> Result<Option<usize>, IoFail> {
        self.read_within(grace).await
    }

    /// Reads more bytes within `wait`. `Ok(None)`: nothing came in time; the read was
    /// cancelled and the buffer (with everything read before) is back in place.
    async fn read_within(&mut self, wait: Duration) -> Result<Option<usize>, IoFail> {
        use monoio::io::{CancelableAsyncReadRent, Canceller};
        if self.tls.is_some() {
            let deadline = crate::timer::deadline_after(wait);
            return self.fill_tls(deadline, true).await;
        }
        self.prepare_read()?;
        let buf = std::mem::take(&mut self.buf);
        let start = buf.len();
        let handle = self.canceller.get_or_insert_with(Canceller::new).handle();
        let read = self.stream.cancelable_read(buf.slice_mut(start..), handle);
        futures::pin_mut!(read);
        let done = monoio::select! {
            r = &mut read => Some(r),
            _ = crate::timer::sleep(wait) => None,
        };
        let (res, slice) = match done {
            Some(r) => r,
            None => {
                if let Some(c) = self.canceller.take() {
                    drop(c.cancel());
                }
                read.await
            }
        };
        self.buf = slice.into_inner();
        self.reads += 1;
        match res {
            Ok(0) => Err(IoFail::Eof),
            Ok(n) => Ok(Some(n)),
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Ok(None),
            Err(e) => Err(IoFail::Io(e)),
        }
    }

    /// Writes `n` unconsumed bytes of this connection's buffer to `dst` (encrypted if `dst`
    /// runs TLS) and consumes them.
    pub async fn forward_to(
        &mut self,
        dst: &mut BufConn,
        n: usize,
        timeout: Duration,
    ) -> Result<(), IoFail> {
        forward_owned(&mut self.buf, &mut self.pos, dst, n, timeout).await
    }

    /// Writes `buf[range]` (encrypted on a TLS connection) and gives the buffer back. After
    /// a timeout the buffer is gone with the cancelled write (an empty one comes back) and
    /// the connection must not be used again.
    pub async fn write_owned(
        &mut self,
        buf: Vec<u8>,
        range: std::ops::Range<usize>,
        timeout: Duration,
    ) -> (Result<(), IoFail>, Vec<u8>) {
        if self.tls.is_some() {
            let r = match buf.get(range) {
                Some(data) => self.send_tls(data, timeout).await,
                None => Ok(()),
            };
            return (r, buf);
        }
        let write = self.stream.write_all(buf.slice(range));
        match crate::timer::timeout(timeout, write).await {
            Ok((res, slice)) => (res.map(|_| ()).map_err(IoFail::Io), slice.into_inner()),
            Err(_) => (Err(IoFail::Timeout), Vec::new()),
        }
    }

    /// Writes the whole of `buf` to the peer (encrypted on a TLS connection) and gives the
    /// buffer back.
    pub async fn write_all(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<(), IoFail> {
        if self.tls.is_none() {
            return write_buf(&mut self.stream, buf, timeout).await;
        }
        let plain = std::mem::take(buf);
        let r = self.send_tls(&plain, timeout).await;
        *buf = plain;
        r
    }

    /// Ends the sending side: a TLS `close_notify` first, then the TCP FIN.
    pub async fn shutdown_write(&mut self) {
        use monoio::io::AsyncWriteRent;
        if let Some(t) = self.tls.as_mut() {
            t.conn.send_close_notify();
            let _ = self.flush_tls(Duration::from_secs(1)).await;
        }
        let _ = self.stream.shutdown().await;
    }

    /// Ends a TLS session cleanly before the connection closes: a `close_notify` alert,
    /// written within `timeout`. Without it clients see a truncated connection, and OpenSSL
    /// clients then refuse to resume the session. A no-op for plain connections and for
    /// sessions still in their handshake.
    pub async fn close_notify(&mut self, timeout: Duration) {
        let Some(t) = self.tls.as_mut() else {
            return;
        };
        if t.conn.is_handshaking() {
            return;
        }
        t.conn.send_close_notify();
        let _ = self.flush_tls(timeout).await;
    }

    /// Encrypts `data` and writes it, in pieces as the session's buffer allows.
    async fn send_tls(&mut self, data: &[u8], timeout: Duration) -> Result<(), IoFail> {
        use std::io::Write;
        let mut off = 0;
        while off < data.len() {
            let t = self.tls.as_mut().ok_or(IoFail::Eof)?;
            let k = t.conn.writer().write(&data[off..])?;
            off += k;
            self.flush_tls(timeout).await?;
            if k == 0 && off < data.len() {
                return Err(IoFail::Io(io::Error::other(
                    "TLS session refused more data",
                )));
            }
        }
        Ok(())
    }

    /// Writes what the TLS session has to send (handshake, records, alerts).
    async fn flush_tls(&mut self, timeout: Duration) -> Result<(), IoFail> {
        loop {
            let Some(t) = self.tls.as_mut() else {
                return Ok(());
            };
            if !t.conn.wants_write() {
                return Ok(());
            }
            let mut out = std::mem::take(&mut t.cipher_out);
            out.clear();
            t.conn.write_tls(&mut out)?;
            let r = write_buf(&mut self.stream, &mut out, timeout).await;
            if let Some(t) = self.tls.as_mut() {
                t.cipher_out = out;
            }
            r?;
        }
    }

    /// Moves decrypted bytes from the session into the buffer, as many as fit; `Ok(0)`: none
    /// yet. Copies straight from rustls' buffers: no zero-filling of the spare capacity.
    fn take_plaintext(&mut self) -> Result<usize, IoFail> {
        use std::io::BufRead;
        let Some(t) = self.tls.as_mut() else {
            return Ok(0);
        };
        let room = self.buf.capacity() - self.buf.len();
        let mut taken = 0;
        let mut reader = t.conn.reader();
        while taken < room {
            match reader.fill_buf() {
                // `close_notify`: a clean end, once what came before it is taken.
                Ok([]) if taken == 0 => return Err(IoFail::Eof),
                Ok([]) => break,
                Ok(chunk) => {
                    let n = chunk.len().min(room - taken);
                    self.buf.extend_from_slice(&chunk[..n]);
                    reader.consume(n);
                    taken += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) if taken > 0 => break,
                Err(e) => return Err(IoFail::Io(e)),
            }
        }
        Ok(taken)
    }

    /// Reads until the session yields plaintext, running the handshake on the way.
    /// `Ok(None)`: `deadline` passed first (with `cancelable`, the pending read was cancelled
    /// and nothing read is lost; without, the connection is not usable afterwards).
    async fn fill_tls(&mut self, deadline: u64, cancelable: bool) -> Result<Option<usize>, IoFail> {
        loop {
            self.prepare_read()?;
            let n = self.take_plaintext()?;
            if n > 0 {
                self.reads += 1;
                return Ok(Some(n));
            }
            // Ciphertext left from an earlier read goes in first, a step at a time, so rustls
            // never holds more plaintext than its limit.
            if self.feed_tls().await? {
                continue;
            }
            self.flush_tls(crate::timer::until(deadline).max(TLS_FLUSH_MIN))
                .await?;
            let Some(got) = self.read_cipher(deadline, cancelable).await? else {
                return Ok(None);
            };
            if let Some(t) = self.tls.as_mut() {
                t.cipher_pos = 0;
                t.cipher_len = got;
            }
        }
    }

    /// Hands rustls one piece of the buffered ciphertext and processes it. `Ok(false)`:
    /// nothing was left to feed.
    async fn feed_tls(&mut self) -> Result<bool, IoFail> {
        let Some(t) = self.tls.as_mut() else {
            return Ok(false);
        };
        if t.cipher_pos >= t.cipher_len {
            return Ok(false);
        }
        let mut rd = &t.cipher_in[t.cipher_pos..t.cipher_len];
        let before = rd.len();
        match t.conn.read_tls(&mut rd) {
            // After close_notify rustls takes nothing more: what follows is dropped.
            Ok(0) => t.cipher_pos = t.cipher_len,
            Ok(_) => t.cipher_pos += before - rd.len(),
            Err(e) => {
                // Its plaintext buffer is full: the caller drains it before more goes in.
                let waiting = t
                    .conn
                    .process_new_packets()
                    .map_or(0, |s| s.plaintext_bytes_to_read());
                return if waiting > 0 {
                    Ok(true)
                } else {
                    Err(IoFail::Io(e))
                };
            }
        }
        if let Err(e) = t.conn.process_new_packets() {
            tracing::debug!(error = %e, "TLS error");
            t.note_failure("error");
            t.cipher_pos = t.cipher_len;
            // The alert rustls queued goes out before the close.
            let _ = self.flush_tls(Duration::from_millis(100)).await;
            return Err(IoFail::Io(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        t.note_handshake();
        Ok(true)
    }

    /// One read of ciphertext into the session's input buffer; `Ok(None)` at the deadline.
    async fn read_cipher(
        &mut self,
        deadline: u64,
        cancelable: bool,
    ) -> Result<Option<usize>, IoFail> {
        use monoio::io::{CancelableAsyncReadRent, Canceller};
        let t = self.tls.as_mut().ok_or(IoFail::Eof)?;
        let mut cbuf = std::mem::take(&mut t.cipher_in);
        cbuf.clear();
        cbuf.reserve(CIPHER_READ);
        let wait = crate::timer::until(deadline);
        let (res, slice) = if cancelable {
            let handle = self.canceller.get_or_insert_with(Canceller::new).handle();
            let read = self.stream.cancelable_read(cbuf, handle);
            futures::pin_mut!(read);
            let done = monoio::select! {
                r = &mut read => Some(r),
                _ = crate::timer::sleep(wait) => None,
            };
            match done {
                Some(r) => r,
                None => {
                    if let Some(c) = self.canceller.take() {
                        drop(c.cancel());
                    }
                    read.await
                }
            }
        } else {
            match crate::timer::timeout(wait, self.stream.read(cbuf)).await {
                Ok(r) => r,
                Err(_) => return Ok(None),
            }
        };
        if let Some(t) = self.tls.as_mut() {
            t.cipher_in = slice;
        }
        match res {
            // A TCP close after close_notify is a clean end; without one the stream may
            // have been cut (a close-delimited body would end short), so it is an error.
            Ok(0) => match self.tls.as_mut().map(|t| t.conn.process_new_packets()) {
                Some(Ok(state)) if !state.peer_has_closed() => Err(IoFail::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the TLS peer closed the connection without close_notify",
                ))),
                _ => Err(IoFail::Eof),
            },
            Ok(n) => Ok(Some(n)),
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Ok(None),
            Err(e) => Err(IoFail::Io(e)),
        }
    }
}

/// Writes the whole of `buf` to `stream` and gives the buffer back.
pub async fn write_buf(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), IoFail> {
    let owned = std::mem::take(buf);
    let (res, owned) = match crate::timer::timeout(timeout, stream.write_all(owned)).await {
        Ok(r) => r,
        Err(_) => return Err(IoFail::Timeout),
    };
    *buf = owned;
    res.map(|_| ()).map_err(IoFail::Io)
}

/// The two ends bytes move between: a [`Source`] with a read buffer of what has arrived
/// and a way to get more, and a [`Sink`] that takes bytes. A connection ([`BufConn`]) is
/// both; so are an HTTP/2 stream on either side of the proxy.
/// Where bytes come from: a buffer of what has arrived, and a way to get more.
#[allow(async_fn_in_trait)] // used with static dispatch only, on one thread
pub trait Source {
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
#[allow(async_fn_in_trait)] // used with static dispatch only, on one thread
pub trait Sink {
    /// Writes all of `buf` (which is left as it was, for reuse).
    async fn write_all(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<(), IoFail>;
    /// Writes `buf[range]`, owning the buffer meanwhile (completion IO), and gives it back.
    async fn write_owned(
        &mut self,
        buf: Vec<u8>,
        range: std::ops::Range<usize>,
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
        forward_owned(&mut self.buf, &mut self.pos, dst, n, timeout).await
    }
}

/// Writes the `n` bytes of `buf` from `pos` to `dst`, lending it the buffer (owned-buffer
/// IO), and moves `pos` past them once written: the `forward_to` of every [`Source`] that
/// reads into one buffer.
pub async fn forward_owned<D: Sink>(
    buf: &mut Vec<u8>,
    pos: &mut usize,
    dst: &mut D,
    n: usize,
    timeout: Duration,
) -> Result<(), IoFail> {
    let n = n.min(buf.len().saturating_sub(*pos));
    let range = *pos..*pos + n;
    let (res, back) = dst.write_owned(std::mem::take(buf), range, timeout).await;
    *buf = back;
    if res.is_ok() {
        *pos = (*pos + n).min(buf.len());
    }
    res
}

impl Sink for BufConn {
    async fn write_all(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<(), IoFail> {
        BufConn::write_all(self, buf, timeout).await
    }

    async fn write_owned(
        &mut self,
        buf: Vec<u8>,
        range: std::ops::Range<usize>,
        timeout: Duration,
    ) -> (Result<(), IoFail>, Vec<u8>) {
        BufConn::write_owned(self, buf, range, timeout).await
    }
}

/// Asks the kernel, without blocking, whether an idle connection is still clean: open, with
/// nothing to read. A peer that closed or reset it, or that sent bytes nobody asked for (a
/// late body after a 204, a second response), makes it unusable.
pub fn idle_and_clean(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let mut byte = [0u8; 1];
    // SAFETY: `fd` is a live socket owned by `stream` for the duration of this call, and the
    // buffer is a valid 1-byte stack array. MSG_PEEK leaves any data in the socket.
    let n = unsafe {
        libc::recv(
            fd,
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::BufPool;

    #[test]
    fn trim_releases_only_buffers_that_stayed_unused() {
        let pool = BufPool::new(1024, 100);
        // A burst: 10 buffers out at once, all back.
        let burst: Vec<_> = (0..10).map(|_| pool.take()).collect();
        burst.into_iter().for_each(|b| pool.give(b));
        assert_eq!(pool.free_count(), 10);
        // The burst itself counts as use: nothing was idle yet.
        assert_eq!(pool.trim(), 0);
        // Then steady traffic that needs 2 at a time.
        for _ in 0..5 {
            let (a, b) = (pool.take(), pool.take());
            pool.give(a);
            pool.give(b);
        }
        assert_eq!(pool.trim(), 8 * 1024, "8 buffers stayed free all interval");
        assert_eq!(pool.free_count(), 2);
        // No traffic at all: the rest go too.
        assert_eq!(pool.trim(), 2 * 1024);
        assert_eq!(pool.free_count(), 0);
    }
}
