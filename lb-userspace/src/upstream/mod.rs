//! Upstream connections: connecting with a deadline, a worker-local pool of idle keep-alive
//! connections per endpoint, the shared endpoint state, and active health checks.

pub mod cluster;
pub mod h2;
pub mod policy;
pub mod state;
pub mod tls;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;
use rustc_hash::FxHashMap;

use crate::net::{idle_and_clean, BufConn, BufPool, IoFail, Sink, Source};
use state::{ClusterState, EndpointState};

/// One upstream exchange's connection and whether it came from the pool: an HTTP/1.1
/// connection of its own, or a stream on a shared HTTP/2 connection. While an HTTP/1.1
/// connection exists it counts toward its endpoint's and cluster's open connections (an
/// HTTP/2 connection counts once, for as long as its driver runs).
pub struct Upstream {
    pub conn: UpConn,
    pub addr: SocketAddr,
    /// It served an earlier request; a failure before any response byte may mean the backend
    /// closed it while idle, and the request can go again on a fresh connection.
    pub reused: bool,
    /// What it may be reused for: 0 for plaintext, else the cluster's [`tls::ClusterTls::key`].
    pub pool_key: u64,
    count: Option<ConnCount>,
}

/// The connection under an [`Upstream`].
pub enum UpConn {
    H1(BufConn),
    H2(Box<h2::H2Up>),
}

/// One open connection in its endpoint's and cluster's counts, until dropped.
pub struct ConnCount {
    endpoint: Arc<EndpointState>,
    cluster: Arc<ClusterState>,
}

impl ConnCount {
    fn new(endpoint: &Arc<EndpointState>, cluster: &Arc<ClusterState>) -> ConnCount {
        endpoint.connections.fetch_add(1, Ordering::Relaxed);
        cluster.connections.fetch_add(1, Ordering::Relaxed);
        ConnCount {
            endpoint: endpoint.clone(),
            cluster: cluster.clone(),
        }
    }
}

impl Drop for ConnCount {
    fn drop(&mut self) {
        self.endpoint.connections.fetch_sub(1, Ordering::Relaxed);
        self.cluster.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// Gives the read buffer back to `bufs` and closes the connection (an HTTP/2 stream
    /// still open is reset).
    pub fn close(mut self, bufs: &BufPool) {
        match &mut self.conn {
            UpConn::H1(c) => bufs.give(c.take_buf()),
            UpConn::H2(h) => h.abandon(),
        }
    }

    /// A stream on an HTTP/2 connection, for one exchange.
    pub fn h2(stream: h2::H2Up, addr: SocketAddr, pool_key: u64) -> Upstream {
        Upstream {
            conn: UpConn::H2(Box::new(stream)),
            addr,
            reused: false,
            pool_key,
            count: None,
        }
    }

    /// An HTTP/2 stream the backend refused unprocessed (GOAWAY, REFUSED_STREAM): the
    /// request may go again on a fresh connection whatever its method.
    pub fn refused(&self) -> bool {
        match &self.conn {
            UpConn::H1(_) => false,
            UpConn::H2(h) => h.refused(),
        }
    }

    /// An HTTP/2 stream's request side, once its head is sent and while its body is still
    /// to send (see [`h2::H2Up::take_request_half`]); `None` on HTTP/1.1.
    pub fn take_request_half(&mut self) -> Option<h2::RequestHalf> {
        match &mut self.conn {
            UpConn::H1(_) => None,
            UpConn::H2(h) => h.take_request_half(),
        }
    }

    pub fn put_request_half(&mut self, half: h2::RequestHalf) {
        if let UpConn::H2(h) = &mut self.conn {
            h.put_request_half(half);
        }
    }

    /// The HTTP/1.1 connection, if this is one.
    pub fn h1(&mut self) -> Option<&mut BufConn> {
        match &mut self.conn {
            UpConn::H1(c) => Some(c),
            UpConn::H2(_) => None,
        }
    }

    /// Takes a fresh connection apart to run HTTP/2 on it: the connection and its place
    /// in the counts.
    pub fn into_h2_base(self) -> Option<(BufConn, ConnCount)> {
        let Upstream { conn, count, .. } = self;
        match (conn, count) {
            (UpConn::H1(c), Some(n)) => Some((c, n)),
            _ => None,
        }
    }
}

impl Source for Upstream {
    fn data(&self) -> &[u8] {
        match &self.conn {
            UpConn::H1(c) => c.data(),
            UpConn::H2(h) => h.data(),
        }
    }

    fn consume(&mut self, n: usize) {
        match &mut self.conn {
            UpConn::H1(c) => c.consume(n),
            UpConn::H2(h) => h.consume(n),
        }
    }

    fn is_full(&self) -> bool {
        match &self.conn {
            UpConn::H1(c) => c.is_full(),
            UpConn::H2(h) => h.is_full(),
        }
    }

    async fn fill(&mut self, timeout: Duration) -> Result<usize, IoFail> {
        match &mut self.conn {
            UpConn::H1(c) => c.fill(timeout).await,
            // Boxed: HTTP/2's futures are large, and would otherwise sit in every HTTP/1.1
            // request's future.
            UpConn::H2(h) => Box::pin(h.fill(timeout)).await,
        }
    }

    async fn forward_to<D: Sink>(
        &mut self,
        dst: &mut D,
        n: usize,
        timeout: Duration,
    ) -> Result<(), IoFail> {
        match &mut self.conn {
            UpConn::H1(c) => Source::forward_to(c, dst, n, timeout).await,
            UpConn::H2(h) => Box::pin(h.forward_to(dst, n, timeout)).await,
        }
    }
}

impl Sink for Upstream {
    async fn write_all(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> Result<(), IoFail> {
        match &mut self.conn {
            UpConn::H1(c) => c.write_all(buf, timeout).await,
            UpConn::H2(h) => Box::pin(h.write_all(buf, timeout)).await,
        }
    }

    async fn write_owned(
        &mut self,
        buf: Vec<u8>,
        range: std::ops::Range<usize>,
        timeout: Duration,
    ) -> (Result<(), IoFail>, Vec<u8>) {
        match &mut self.conn {
            UpConn::H1(c) => c.write_owned(buf, range, timeout).await,
            UpConn::H2(h) => Box::pin(h.write_owned(buf, range, timeout)).await,
        }
    }
}

/// The limits a request can be refused by (see `docs/upstream.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    ClusterMaxRequests,
    EndpointMaxRequests,
    MaxPending,
    PendingTimeout,
    BreakerOpen,
    MaxRetries,
}

impl Limit {
    /// Every limit, in the order of their metric series.
    pub const ALL: [Limit; 6] = [
        Limit::ClusterMaxRequests,
        Limit::EndpointMaxRequests,
        Limit::MaxPending,
        Limit::PendingTimeout,
        Limit::BreakerOpen,
        Limit::MaxRetries,
    ];

    /// The name in `X-LB-Limit` and in the `limit` metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::ClusterMaxRequests => "cluster_max_requests",
            Limit::EndpointMaxRequests => "endpoint_max_requests",
            Limit::MaxPending => "max_pending",
            Limit::PendingTimeout => "pending_timeout",
            Limit::BreakerOpen => "breaker_open",
            Limit::MaxRetries => "max_retries",
        }
    }
}

/// Why connecting failed.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(std::io::Error),
    /// The TLS handshake failed.
    Tls(tls::TlsFailure),
}

/// Where to connect: an endpoint, its shared state, and the TLS to run on the connection.
pub struct Dial<'a> {
    pub addr: SocketAddr,
    pub endpoint: &'a Arc<EndpointState>,
    pub cluster: &'a Arc<ClusterState>,
    /// The cluster's TLS and the name this endpoint is verified against.
    pub tls: Option<(
        &'a tls::ClusterTls,
        &'a rustls_pki_types::ServerName<'static>,
    )>,
    /// What a connection made this way may be reused for: 0 for plaintext, else a hash of
    /// the TLS identity and the server name.
    pub pool_key: u64,
}

/// Opens a connection within `timeout`, including its TLS handshake.
pub async fn connect(
    dial: &Dial<'_>,
    timeout: Duration,
    bufs: &BufPool,
) -> Result<Upstream, ConnectError> {
    let started = crate::timer::now_ms();
    let stream = match crate::timer::timeout(timeout, TcpStream::connect_addr(dial.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::Io(e)),
        Err(_) => return Err(ConnectError::Timeout),
    };
    let _ = stream.set_nodelay(true);
    let conn = match dial.tls {
        None => BufConn::new(stream, bufs.take()),
        Some((t, name)) => {
            let session = rustls::ClientConnection::new(t.config.clone(), name.clone())
                .map_err(|e| ConnectError::Tls(tls::TlsFailure::of(&e)))?;
            BufConn::new_tls_client(stream, bufs.take(), session)
        }
    };
    let mut up = Upstream {
        conn: UpConn::H1(conn),
        addr: dial.addr,
        reused: false,
        pool_key: dial.pool_key,
        count: Some(ConnCount::new(dial.endpoint, dial.cluster)),
    };
    if let (Some(_), Some(conn)) = (dial.tls, up.h1()) {
        let left = timeout.saturating_sub(Duration::from_millis(
            crate::timer::now_ms().saturating_sub(started),
        ));
        let failure = match conn.handshake(left).await {
            Ok(()) => return Ok(up),
            Err(IoFail::Timeout) => ConnectError::Timeout,
            Err(IoFail::Io(e)) => match tls::TlsFailure::of_io(&e) {
                Some(f) => ConnectError::Tls(f),
                // Closed mid-handshake: it does not speak TLS (or gave up on it).
                None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    ConnectError::Tls(tls::TlsFailure::Protocol)
                }
                None => ConnectError::Io(e),
            },
            Err(IoFail::Eof) => ConnectError::Tls(tls::TlsFailure::Protocol),
        };
        up.close(bufs);
        return Err(failure);
    }
    Ok(up)
}

struct Idle {
    up: Upstream,
    /// When it went idle, in [`crate::timer::now_ms`] milliseconds.
    since: u64,
    idle_timeout: Duration,
}

/// Idle connections of one worker, by endpoint address and pool key (plaintext, or which
/// TLS settings). `!Sync` by design: never shared.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<FxHashMap<(SocketAddr, u64), Vec<Idle>>>,
}

impl Pool {
    /// The most recently used clean idle connection to `addr`, if any. Each candidate is first
    /// asked (one non-blocking peek) whether the backend closed it or wrote anything while it
    /// sat idle: a connection with unsolicited bytes would hand them to the next request as
    /// its response, so it is closed, never reused.
    pub fn checkout(&self, addr: SocketAddr, key: u64, bufs: &BufPool) -> Option<Upstream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&(addr, key))?;
        let now = crate::timer::now_ms();
        while let Some(c) = list.pop() {
            let clean = match &c.up.conn {
                UpConn::H1(conn) => idle_and_clean(&conn.stream),
                UpConn::H2(_) => false,
            };
            if now.saturating_sub(c.since) >= c.idle_timeout.as_millis() as u64 || !clean {
                c.up.close(bufs);
                continue;
            }
            let mut up = c.up;
            up.reused = true;
            // The read buffer went back to the pool at checkin.
            if let Some(conn) = up.h1() {
                conn.set_buf(bufs.take());
            }
            return Some(up);
        }
        None
    }

    /// Keeps a connection for reuse, up to `max_idle` per endpoint; beyond that it is closed.
    pub fn checkin(
        &self,
        mut up: Upstream,
        idle_timeout: Duration,
        max_idle: usize,
        bufs: &BufPool,
    ) {
        let Some(conn) = up.h1() else {
            // An HTTP/2 stream: its connection stays in the HTTP/2 pool.
            return;
        };
        if !conn.data().is_empty() || conn.tls_input_pending() {
            // Bytes after the response: the backend is confused; never reuse.
            up.close(bufs);
            return;
        }
        bufs.give(conn.take_buf());
        conn.shed_tls_buffers();
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry((up.addr, up.pool_key)).or_default();
        if list.len() >= max_idle {
            up.close(bufs);
            return;
        }
        list.push(Idle {
            up,
            since: crate::timer::now_ms(),
            idle_timeout,
        });
    }

    /// Closes connections idle past their timeout. Returns how many are left.
    pub fn sweep(&self, bufs: &BufPool) -> usize {
        let now = crate::timer::now_ms();
        let mut idle = self.idle.borrow_mut();
        let mut left = 0;
        for list in idle.values_mut() {
            let mut i = 0;
            while i < list.len() {
                if now.saturating_sub(list[i].since) >= list[i].idle_timeout.as_millis() as u64 {
                    list.swap_remove(i).up.close(bufs);
                } else {
                    i += 1;
                }
            }
            left += list.len();
        }
        idle.retain(|_, l| !l.is_empty());
        left
    }

    /// Closes idle connections to endpoints not in `keep` (after a reload removed them).
    pub fn retain_endpoints(&self, keep: &[SocketAddr], bufs: &BufPool) {
        let mut idle = self.idle.borrow_mut();
        idle.retain(|(addr, _), list| {
            if keep.contains(addr) {
                return true;
            }
            for c in list.drain(..) {
                c.up.close(bufs);
            }
            false
        });
    }

    /// Closes every idle connection (drain and shutdown).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }

    /// Idle connections held for `addr`.
    pub fn idle_count(&self, addr: SocketAddr) -> usize {
        self.idle
            .borrow()
            .iter()
            .filter(|((a, _), _)| *a == addr)
            .map(|(_, l)| l.len())
            .sum()
    }
}
