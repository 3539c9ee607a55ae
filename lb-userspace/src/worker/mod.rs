//! Workers: one OS thread per core, each pinned, each with its own monoio runtime and its own
//! `SO_REUSEPORT` listening sockets. Everything a worker touches per request is its own
//! (`Rc`, `Cell`) or immutable (the snapshot); nothing on the request path takes a lock.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use monoio::net::TcpListener;

use crate::accesslog;
use crate::balancing::WorkerBalancer;
use crate::config::IoDriver;
use crate::connlimit::Refusal;
use crate::net::BufPool;
use crate::snapshot::{Snapshot, SnapshotCell};
use crate::upstream::Pool;

pub mod idle;

/// How often idle pooled upstream connections are checked for expiry.
const POOL_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long a refused connection may take to read its answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Bytes read and dropped from a refused connection before it closes.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;
/// Refusals answered at once per worker; past this, refused connections just close.
const MAX_REFUSING: usize = 1024;
/// Connections one worker reads PROXY protocol headers from at once (unless
/// `max_connections_per_worker` is lower): they are not admitted yet, so no other limit
/// holds them, and each holds a socket and a buffer until its header or the head timeout.
const MAX_PROXY_PENDING: usize = 4096;
/// How long the accept loop backs off after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Spare read buffers kept per worker.
const MAX_FREE_BUFFERS: usize = 1024;
/// Size of an upstream connection's read buffer.
const UPSTREAM_BUF_SIZE: usize = 64 * 1024;
/// Spare upstream buffers kept per worker.
const MAX_FREE_UPSTREAM_BUFFERS: usize = 256;
/// Size of the output buffer for heads and re-encoded chunks.
const OUT_BUF_SIZE: usize = 16 * 1024;

/// The snapshot as one worker sees it, plus its worker-local balancing state.
pub struct View {
    pub snap: Arc<Snapshot>,
    /// Balancer state per cluster, by cluster index.
    pub balancers: Vec<WorkerBalancer>,
}

/// What serves an accepted (or resumed) client connection: the protocol side of the request
/// path (`proxy::start` for HTTP/1.1), given to the worker so that the worker knows nothing
/// of protocols. `head_deadline` is set while no request has been served on it yet; `tls`
/// when its listener terminates TLS.
pub type Handler = fn(
    monoio::net::TcpStream,
    SocketAddr,
    ConnGuard,
    Option<u64>,
    Option<Arc<rustls::ServerConfig>>,
);

/// Per-worker state shared by all of the worker's connection tasks.
pub struct Worker {
    pub id: usize,
    /// Serves connections.
    handler: Handler,
    cell: Arc<SnapshotCell>,
    view: RefCell<Rc<View>>,
    generation: Cell<u64>,
    pub bufs: BufPool,
    pub out_bufs: BufPool,
    /// Read buffers of upstream connections, large so that a response body moves in few
    /// reads; only connections in an exchange hold one.
    /// Shared with tasks that outlive a request (mirror copies).
    pub up_bufs: Rc<BufPool>,
    pub pool: Pool,
    /// HTTP/2 connections to backends, multiplexed.
    pub h2pool: crate::upstream::h2::H2Pool,
    draining: Cell<bool>,
    drain: Shared<oneshot::Receiver<()>>,
    active: Cell<usize>,
    connections_gauge: metrics::Gauge,
    access: RefCell<Vec<u8>>,
    access_tx: Option<mpsc::SyncSender<Vec<u8>>>,
    /// Connections waiting for their next request, with their deadlines.
    idle: RefCell<idle::IdleSet>,
    loads: Option<Arc<crate::steering::load::WorkerLoads>>,
    stats: Arc<Vec<crate::control::WorkerStats>>,
    conns: &'static crate::connlimit::Connections,
    /// Refused connections still being answered.
    refusing: Cell<usize>,
    /// Connections whose PROXY protocol header is still being read.
    proxy_pending: Cell<usize>,
    /// When a refusal was last logged, in `clock::now_ms` milliseconds.
    refusal_logged: Cell<u64>,
}

impl Worker {
    /// The state of worker `spec.id`, following the snapshots published in `cell`, told to
    /// drain through `drain`.
    pub fn new(
        spec: &WorkerSpec,
        cell: Arc<SnapshotCell>,
        drain: oneshot::Receiver<()>,
    ) -> std::io::Result<Worker> {
        let snap = cell.load();
        Ok(Worker {
            id: spec.id,
            handler: spec.handler,
            generation: Cell::new(cell.generation()),
            view: RefCell::new(Rc::new(make_view(snap, spec.id))),
            cell,
            bufs: BufPool::new(spec.buf_size, MAX_FREE_BUFFERS),
            out_bufs: BufPool::new(OUT_BUF_SIZE, MAX_FREE_BUFFERS),
            up_bufs: Rc::new(BufPool::new(UPSTREAM_BUF_SIZE, MAX_FREE_UPSTREAM_BUFFERS)),
            pool: Pool::default(),
            h2pool: Default::default(),
            draining: Cell::new(false),
            drain: drain.shared(),
            active: Cell::new(0),
            connections_gauge: crate::metrics::downstream_connections(spec.id),
            access: RefCell::new(Vec::new()),
            access_tx: spec.access_log.clone(),
            idle: RefCell::new(idle::IdleSet::new()?),
            loads: spec.loads.clone(),
            stats: spec.stats.clone(),
            conns: spec.conns,
            refusing: Cell::new(0),
            proxy_pending: Cell::new(0),
            refusal_logged: Cell::new(0),
        })
    }

    /// The current snapshot; refreshed when a reload has published a new one.
    pub fn view(&self) -> Rc<View> {
        let g = self.cell.generation();
        if g != self.generation.get() {
            self.generation.set(g);
            let snap = self.cell.load();
            // Endpoints a reload removed: their idle connections close now; requests still in
            // flight to them finish on the old snapshot.
            let addrs = snap.endpoint_addrs();
            self.pool.retain_endpoints(&addrs, &self.bufs);
            self.h2pool.retain_endpoints(&addrs);
            *self.view.borrow_mut() = Rc::new(make_view(snap, self.id));
        }
        self.view.borrow().clone()
    }

    /// Hands a connection to the handler (a parked one that turned readable).
    pub fn resume(
        &self,
        stream: monoio::net::TcpStream,
        peer: SocketAddr,
        guard: ConnGuard,
        head_deadline: Option<u64>,
    ) {
        (self.handler)(stream, peer, guard, head_deadline, None);
    }

    pub fn draining(&self) -> bool {
        self.draining.get()
    }

    /// Parks a connection until its next request arrives, or until `head_deadline` (a
    /// connection that has not sent its first request yet) or `idle` from now passes
    /// (enforced within [`idle::SWEEP_EVERY`]); see [`idle`]. The connection's task can end:
    /// another starts when bytes arrive. If the socket cannot be parked, it is closed.
    pub fn park(
        &self,
        stream: monoio::net::TcpStream,
        peer: SocketAddr,
        guard: ConnGuard,
        head_deadline: Option<u64>,
        idle: Duration,
    ) {
        use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
        let first = head_deadline.is_some();
        let deadline = head_deadline
            .unwrap_or_else(|| crate::timer::now_ms().saturating_add(idle.as_millis() as u64));
        // SAFETY: no operation is in flight on the stream, so it hands over its descriptor,
        // which the record then owns.
        let fd = unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) };
        if let Err(p) = self
            .idle
            .borrow_mut()
            .park(fd, peer, guard, first, deadline)
        {
            tracing::debug!(worker = self.id, error = %std::io::Error::last_os_error(), "could not park an idle connection; closing it");
            drop(p);
        }
    }

    /// Closes every parked connection that has been served (a drain). One that has not sent
    /// its first request yet was accepted to be served: it resumes, and its request is
    /// answered (within the header timeout) before the connection closes.
    fn close_idle(self: &Rc<Self>) {
        let all = self.idle.borrow_mut().take_all();
        for p in all {
            if p.first {
                idle::resume(p, self);
            }
        }
    }

    /// True if requests are access-logged.
    pub fn access_log_on(&self) -> bool {
        self.access_tx.is_some()
    }

    /// Appends one access log line (written by `write`) to this worker's buffer, and hands
    /// the buffer to the writer thread once it is full. Nothing happens with the log off.
    pub fn log_access(&self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.access_tx.is_none() {
            return;
        }
        let mut buf = self.access.borrow_mut();
        write(&mut buf);
        if buf.len() >= accesslog::FLUSH_AT {
            drop(buf);
            self.flush_access_log();
        }
    }

    /// Hands buffered access log lines to the writer thread.
    pub fn flush_access_log(&self) {
        let Some(tx) = &self.access_tx else { return };
        let mut buf = self.access.borrow_mut();
        if buf.is_empty() {
            return;
        }
        let full = std::mem::replace(&mut *buf, Vec::with_capacity(accesslog::FLUSH_AT + 1024));
        if tx.try_send(full).is_err() {
            tracing::warn!(
                worker = self.id,
                "access log writer is behind; lines dropped"
            );
        }
    }

    /// Resolves when the process starts draining.
    pub fn drain_signal(&self) -> Shared<oneshot::Receiver<()>> {
        self.drain.clone()
    }
}

pub fn make_view(snap: Arc<Snapshot>, worker_id: usize) -> View {
    let balancers = snap
        .clusters
        .iter()
        .map(|c| WorkerBalancer::new(c.endpoints.len(), worker_id as u64 + 1))
        .collect();
    View { snap, balancers }
}

/// What the main thread needs to start one worker.
pub struct WorkerSpec {
    pub id: usize,
    /// Serves each connection.
    pub handler: Handler,
    pub core: Option<core_affinity::CoreId>,
    pub listeners: Vec<std::net::TcpListener>,
    pub io: IoDriver,
    pub io_uring_entries: u32,
    pub buf_size: usize,
    pub access_log: Option<mpsc::SyncSender<Vec<u8>>>,
    /// The kernel's per-worker load table, for the `least_loaded` steering policy.
    pub loads: Option<Arc<crate::steering::load::WorkerLoads>>,
    pub stats: Arc<Vec<crate::control::WorkerStats>>,
    /// Open client connections across workers, for the connection limits.
    pub conns: &'static crate::connlimit::Connections,
}

/// Starts a worker thread. It reports on `started` once its runtime is up and it accepts.
pub fn spawn(
    spec: WorkerSpec,
    cell: Arc<SnapshotCell>,
    drain: oneshot::Receiver<()>,
    started: mpsc::Sender<Result<(usize, &'static str), String>>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("lb-worker-{}", spec.id))
        .spawn(move || {
            if let Some(core) = spec.core {
                if !core_affinity::set_for_current(core) {
                    tracing::warn!(
                        worker = spec.id,
                        core = core.id,
                        "could not pin worker to its core"
                    );
                }
            }
            let id = spec.id;
            let result = run_runtime(spec, cell, drain, &started);
            if let Err(e) = result {
                let _ = started.send(Err(format!("worker {id}: {e}")));
            }
        })
}

fn run_runtime(
    spec: WorkerSpec,
    cell: Arc<SnapshotCell>,
    drain: oneshot::Receiver<()>,
    started: &mpsc::Sender<Result<(usize, &'static str), String>>,
) -> std::io::Result<()> {
    let use_uring = match spec.io {
        IoDriver::Auto => monoio::utils::detect_uring(),
        IoDriver::IoUring => {
            if !monoio::utils::detect_uring() {
                return Err(std::io::Error::other(
                    "server.io = \"io_uring\" but io_uring is not available on this kernel",
                ));
            }
            true
        }
        IoDriver::Epoll => false,
    };
    let entries = spec.io_uring_entries;
    let fut = worker_main(
        spec,
        cell,
        drain,
        started.clone(),
        if use_uring { "io_uring" } else { "epoll" },
    );
    if use_uring {
        // The ring belongs to this thread alone, and completions are only needed when the
        // worker looks for them: no inter-processor interrupt per completion (COOP_TASKRUN),
        // and the kernel runs completion work when the worker enters it, in a batch
        // (DEFER_TASKRUN, which needs SINGLE_ISSUER). Kernels before 6.1 lack these flags;
        // the ring is then built without them.
        let mut urb = io_uring::IoUring::builder();
        urb.setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
        let mut rt = match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(urb)
            .enable_timer()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::debug!(error = %e, "io_uring without task-run flags");
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(entries)
                    .enable_timer()
                    .build()?
            }
        };
        rt.block_on(fut)
    } else {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()?;
        rt.block_on(fut)
    }
}

async fn worker_main(
    spec: WorkerSpec,
    cell: Arc<SnapshotCell>,
    drain: oneshot::Receiver<()>,
    started: mpsc::Sender<Result<(usize, &'static str), String>>,
    driver: &'static str,
) -> std::io::Result<()> {
    let worker = Rc::new(Worker::new(&spec, cell, drain)?);
    let mut accept_tasks = Vec::new();
    // One socket per config listener, in the config's order.
    for (index, std_listener) in spec.listeners.into_iter().enumerate() {
        let listener = TcpListener::from_std(std_listener)?;
        accept_tasks.push(monoio::spawn(accept_loop(listener, index, worker.clone())));
    }
    monoio::spawn(sweep_pool(worker.clone()));
    monoio::spawn(sweep_idle(worker.clone()));
    monoio::spawn(idle::run_parker(worker.clone()));
    let _ = started.send(Ok((spec.id, driver)));

    let _ = worker.drain_signal().await;
    worker.draining.set(true);
    Worker::close_idle(&worker);
    for t in accept_tasks {
        t.await;
    }
    worker.pool.clear();
    worker.h2pool.clear();
    // The current config's, so a reload can change it.
    let deadline = Instant::now() + worker.view().snap.config.server.drain_timeout;
    // Connection tasks end on their own once their request finishes; poll their count.
    while worker.active.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if worker.active.get() > 0 {
        tracing::warn!(
            worker = worker.id,
            open = worker.active.get(),
            "drain deadline passed with requests still open"
        );
    }
    Ok(())
}

/// Accepts on the worker's socket of listener `index` until the drain.
async fn accept_loop(listener: TcpListener, index: usize, worker: Rc<Worker>) {
    let drain = worker.drain_signal();
    // One canceller for the loop: used once, at the drain.
    let mut canceller = Some(monoio::io::Canceller::new());
    while let Some(handle) = canceller.as_ref().map(|c| c.handle()) {
        let accept = listener.cancelable_accept(handle);
        futures::pin_mut!(accept);
        let accepted = monoio::select! {
            r = &mut accept => Some(r),
            _ = drain.clone() => None,
        };
        match accepted {
            Some(Ok((stream, peer))) => on_accept(stream, peer, index, &worker),
            Some(Err(e)) => {
                // EMFILE and friends: back off instead of spinning on an error that persists.
                tracing::warn!(worker = worker.id, error = %e, "accept failed");
                crate::metrics::connection_refused("accept_error");
                monoio::time::sleep(ACCEPT_BACKOFF).await;
            }
            None => {
                // The accept may have taken a connection off the queue already. After an
                // upgrade this socket is shared with the new process, which must get every
                // connection this one does not: cancel, and serve what the accept returns.
                if let Some(c) = canceller.take() {
                    drop(c.cancel());
                }
                if let Ok((stream, peer)) = accept.await {
                    tracing::debug!(
                        worker = worker.id,
                        "serving a connection accepted as the drain began"
                    );
                    on_accept(stream, peer, index, &worker);
                }
                take_queued(&listener, index, &worker);
            }
        }
    }
}

/// Accepts, without waiting, what is queued on a listener this worker stops accepting on.
/// A cancelled accept may have taken the wakeup for a connection that arrived just before:
/// the kernel wakes one waiter per connection, so another process sharing the socket (an
/// upgrade's) would not hear of it until the next connection. Served here instead.
fn take_queued(listener: &TcpListener, index: usize, worker: &Rc<Worker>) {
    use std::os::fd::{AsRawFd, FromRawFd};
    let raw = listener.as_raw_fd();
    for _ in 0..1024 {
        // SAFETY: accept4 on a listening socket this worker owns; null address pointers are
        // allowed. A returned descriptor is new and owned by the stream made from it.
        let fd = unsafe {
            libc::accept4(
                raw,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return;
        }
        // SAFETY: `fd` was just returned by accept4 and nothing else owns it.
        let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        let Ok(peer) = std.peer_addr() else {
            continue;
        };
        match monoio::net::TcpStream::from_std(std) {
            Ok(stream) => on_accept(stream, peer, index, worker),
            Err(e) => tracing::debug!(error = %e, "a queued connection could not be served"),
        }
    }
}

/// A connection accepted on listener `index`: its PROXY protocol header first if the
/// listener expects one, then admission.
fn on_accept(stream: monoio::net::TcpStream, peer: SocketAddr, index: usize, worker: &Rc<Worker>) {
    let view = worker.view();
    let head_deadline = crate::timer::deadline_after(view.snap.http.client_header_timeout);
    let arrival = Accepted {
        peer,
        listener: index,
        head_deadline,
        early: Vec::new(),
        proxied: false,
    };
    if view
        .snap
        .config
        .listeners
        .get(index)
        .is_some_and(|l| l.proxy_protocol)
    {
        let cap = view
            .snap
            .http
            .conn_limits
            .per_worker
            .map_or(MAX_PROXY_PENDING, |n| n.min(MAX_PROXY_PENDING));
        if worker.proxy_pending.get() >= cap {
            // Closed at once: a flood of connections that send nothing must not hold the
            // worker's sockets and buffers.
            crate::metrics::connection_refused("proxy_protocol");
            if let Some(l) = &worker.loads {
                l.closed(worker.id);
            }
            return;
        }
        worker.proxy_pending.set(worker.proxy_pending.get() + 1);
        monoio::spawn(proxy_protocol(stream, arrival, worker.clone()));
    } else {
        admit(stream, arrival, worker);
    }
}

/// A connection just accepted, on its way to the handler.
struct Accepted {
    /// The client: the socket's peer, or the PROXY protocol header's source.
    peer: SocketAddr,
    listener: usize,
    /// The first request head is due by then, counted from accept (a PROXY header too).
    head_deadline: u64,
    /// Bytes read past a PROXY protocol header.
    early: Vec<u8>,
    /// `peer` came from a PROXY protocol header.
    proxied: bool,
}

/// Reads the PROXY protocol header a listener expects before anything else, under the head
/// timeout, then admits the connection by the client address it names. A connection without
/// a valid header is closed and counted (`lb_connections_refused_total{reason="proxy_protocol"}`).
async fn proxy_protocol(stream: monoio::net::TcpStream, mut a: Accepted, w: Rc<Worker>) {
    use monoio::buf::IoBufMut;
    use monoio::io::AsyncReadRent;
    /// Gives the pending place back however the read ends.
    struct Pending(Rc<Worker>);
    impl Drop for Pending {
        fn drop(&mut self) {
            self.0
                .proxy_pending
                .set(self.0.proxy_pending.get().saturating_sub(1));
        }
    }
    let pending = Pending(w.clone());
    let mut stream = stream;
    let mut buf = w.bufs.take();
    buf.clear();
    buf.reserve(crate::client::proxy_protocol::V2_MAX);
    let header = loop {
        match crate::client::proxy_protocol::parse(&buf) {
            Ok(Some(h)) => break Ok(h),
            Ok(None) if buf.len() < buf.capacity() => {}
            Ok(None) => break Err("the PROXY protocol header does not fit the buffer"),
            Err(e) => break Err(e),
        }
        let start = buf.len();
        let read = stream.read(buf.slice_mut(start..));
        let wait = crate::timer::until(a.head_deadline);
        let (res, slice) = match crate::timer::timeout(wait, read).await {
            Ok(r) => r,
            Err(_) => {
                buf = Vec::new();
                break Err("no PROXY protocol header before the head timeout");
            }
        };
        buf = slice.into_inner();
        match res {
            Ok(0) => break Err("the connection closed before its PROXY protocol header"),
            Ok(_) => {}
            Err(_) => break Err("the connection failed before its PROXY protocol header"),
        }
    };
    drop(pending);
    match header {
        Ok(h) => {
            buf.drain(..h.len);
            if let Some(source) = h.source {
                a.peer = source;
                a.proxied = true;
            }
            a.early = buf;
            admit(stream, a, &w);
        }
        Err(why) => {
            if buf.capacity() > 0 {
                w.bufs.give(buf);
            }
            crate::metrics::connection_refused("proxy_protocol");
            if let Some(l) = &w.loads {
                l.closed(w.id);
            }
            let now = crate::clock::now_ms();
            if now.saturating_sub(w.refusal_logged.get()) >= 1000 {
                w.refusal_logged.set(now);
                tracing::warn!(worker = w.id, peer = %a.peer, reason = why, "connection closed: no valid PROXY protocol header (logged at most once a second per worker)");
            }
        }
    }
}

/// Admits an accepted connection by its client's address, or refuses it by a limit.
fn admit(stream: monoio::net::TcpStream, a: Accepted, w: &Rc<Worker>) {
    let limits = w.view().snap.http.conn_limits;
    match w
        .conns
        .admit(a.peer.ip().to_canonical(), w.active.get(), &limits)
    {
        Ok(admitted) => serve_connection(stream, a, admitted, w.clone()),
        Err(why) => {
            if a.early.capacity() > 0 {
                w.bufs.give(a.early);
            }
            refuse(stream, a.peer, why, w)
        }
    }
}

fn serve_connection(
    stream: monoio::net::TcpStream,
    a: Accepted,
    admitted: crate::connlimit::Admitted,
    w: Rc<Worker>,
) {
    let view = w.view();
    // The listener's certificates as of now: a reload that renewed them applies to new
    // connections.
    let tls = view
        .snap
        .config
        .listener_tls
        .get(a.listener)
        .and_then(|t| t.as_ref())
        .map(|t| t.config.clone());
    w.active.set(w.active.get() + 1);
    w.connections_gauge.increment(1.0);
    if let Some(s) = w.stats.get(w.id) {
        s.accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s.active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let handler = w.handler;
    handler(
        stream,
        a.peer,
        ConnGuard {
            worker: w,
            listener: a.listener,
            tls: None,
            early: a.early,
            proxied: a.proxied,
            _admitted: admitted,
        },
        Some(a.head_deadline),
        tls,
    );
}

/// A client connection's place in its worker's accounting, given back when the connection
/// ends, however it ends.
pub struct ConnGuard {
    pub worker: Rc<Worker>,
    /// The config listener (by index) the connection arrived on.
    pub listener: usize,
    /// A parked TLS connection's session, handed back when it resumes.
    pub tls: Option<Box<crate::net::TlsSession>>,
    /// Bytes read past a PROXY protocol header, for the handler to start from (plaintext,
    /// or TLS records on a TLS listener).
    pub early: Vec<u8>,
    /// The peer address came from a PROXY protocol header.
    pub proxied: bool,
    _admitted: crate::connlimit::Admitted,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let w = &self.worker;
        w.active.set(w.active.get() - 1);
        w.connections_gauge.decrement(1.0);
        if let Some(s) = w.stats.get(w.id) {
            s.active.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(l) = &w.loads {
            l.closed(w.id);
        }
    }
}

/// Answers a connection a limit refused, 503 or 429 with `Connection: close`, then closes it.
/// After the answer, what the client sends is read and dropped (up to `REFUSAL_DRAIN_BYTES`,
/// for at most `REFUSAL_LINGER`), so that closing does not reset the connection before the
/// client has read the answer. Past `MAX_REFUSING` refusals in progress, new ones are closed
/// at once.
fn refuse(stream: monoio::net::TcpStream, peer: SocketAddr, why: Refusal, w: &Rc<Worker>) {
    crate::metrics::connection_refused(why.label());
    if let Some(l) = &w.loads {
        l.closed(w.id);
    }
    let now = crate::clock::now_ms();
    if now.saturating_sub(w.refusal_logged.get()) >= 1000 {
        w.refusal_logged.set(now);
        tracing::warn!(worker = w.id, client = %peer.ip(), limit = why.label(), "connection refused by a limit (logged at most once a second per worker)");
    }
    if w.refusing.get() >= MAX_REFUSING {
        return;
    }
    w.refusing.set(w.refusing.get() + 1);
    let w = w.clone();
    monoio::spawn(async move {
        let mut stream = stream;
        let mut out = Vec::with_capacity(256);
        let message = match why {
            Refusal::PerIp => "too many connections from this address",
            Refusal::Worker | Refusal::Total => "the server is at its connection limit",
        };
        crate::http::write::error_response(
            &mut out,
            why.status(),
            "connection_limit",
            message,
            true,
        );
        let deadline = Instant::now() + REFUSAL_LINGER;
        if crate::net::write_buf(&mut stream, &mut out, REFUSAL_LINGER)
            .await
            .is_ok()
        {
            let _ = monoio::io::AsyncWriteRent::shutdown(&mut stream).await;
            let mut buf = out;
            let mut drained = 0;
            while drained < REFUSAL_DRAIN_BYTES {
                let left = deadline.saturating_duration_since(Instant::now());
                buf.clear();
                let Ok((Ok(n), b)) =
                    monoio::time::timeout(left, monoio::io::AsyncReadRent::read(&mut stream, buf))
                        .await
                else {
                    break;
                };
                if n == 0 {
                    break;
                }
                drained += n;
                buf = b;
            }
        }
        w.refusing.set(w.refusing.get() - 1);
    });
}

/// Ends the waits of idle connections whose deadline has passed.
async fn sweep_idle(worker: Rc<Worker>) {
    while !worker.draining() {
        monoio::time::sleep(idle::SWEEP_EVERY).await;
        let due = worker.idle.borrow_mut().expire(crate::clock::now_ms());
        // Closing the sockets (and giving back their accounting) outside the borrow.
        drop(due);
    }
}

/// Past this many bytes of buffers released in one sweep, free heap pages go back to the OS.
const RELEASE_TO_OS_BYTES: usize = 1 << 20;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (libmimalloc-sys =0.1.49, pinned;
/// a test checks the index against the option's default).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long a free heap page stays committed before mimalloc gives it back to the kernel.
/// mimalloc's default, a second, kept the pages an old snapshot freed resident after a
/// reload (the threads that build snapshots sit idle afterwards): RSS after 50 reloads of
/// 20,000 routes was 1.43x that after the first. No delay at all fixed that but made every
/// request whose buffers emptied a page fault the page back in: HTTP/2 and gRPC cost up to
/// twice the CPU per request. A short delay keeps pages a busy worker reuses, and the
/// release thread collects after it frees a snapshot ([`release_free_memory`]).
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Sets how soon mimalloc gives free pages back to the kernel ([`PURGE_DELAY_MS`]).
pub fn return_freed_memory_soon() {
    // SAFETY: mi_option_set only stores an option value, read when pages are freed.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

/// Hands this thread's free heap pages back to the kernel. Buffers released after a burst
/// sit between long-lived allocations, where the allocator would otherwise keep them
/// resident; an idle worker makes no allocation that would purge them on its own.
pub fn release_free_memory() {
    // SAFETY: mi_collect only frees and purges unused pages of the calling thread's own
    // mimalloc heap (the global allocator of the `lb` binary); it touches no live block.
    // In a test binary, where the system allocator is global, it finds nothing to do.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}

async fn sweep_pool(worker: Rc<Worker>) {
    while !worker.draining() {
        monoio::time::sleep(POOL_SWEEP_EVERY).await;
        // Picks up a reload even when no request comes, so that idle connections to removed
        // endpoints close within a sweep.
        worker.view();
        worker.pool.sweep(&worker.up_bufs);
        worker.h2pool.sweep();
        worker.flush_access_log();
        let released = worker.bufs.trim() + worker.out_bufs.trim() + worker.up_bufs.trim();
        if released >= RELEASE_TO_OS_BYTES {
            release_free_memory();
        }
    }
}

/// Binds one listening socket with `SO_REUSEPORT`. With port 0, the kernel picks one; pass
/// the result's port for the remaining sockets of the group.
pub fn bind_reuseport(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Inherited by every accepted connection.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    /// The option index lb sets is mimalloc's purge delay: its default is 1,000 ms in
    /// mimalloc 3 (and the arena eager-commit option just before it is 2, "on Linux").
    #[test]
    fn mimalloc_option_index_is_the_purge_delay() {
        // SAFETY: mi_option_get reads an option value.
        let (delay, eager) = unsafe {
            (
                libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY),
                libmimalloc_sys::mi_option_get(4),
            )
        };
        assert_eq!((delay, eager), (1000, 2));
    }

    use std::net::SocketAddr;

    #[test]
    fn accepted_connections_inherit_nodelay_from_the_listener() {
        let l = super::bind_reuseport(SocketAddr::from(([127, 0, 0, 1], 0)), 16).expect("bind");
        l.set_nonblocking(false).expect("blocking");
        let addr = l.local_addr().expect("addr");
        let _c = std::net::TcpStream::connect(addr).expect("connect");
        let (a, _) = l.accept().expect("accept");
        assert!(
            a.nodelay().expect("getsockopt"),
            "serve() relies on it and sets no option per connection"
        );
    }
}
