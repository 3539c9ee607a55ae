//! The admin listener's connections: one thread reads every request head with `poll(2)`, and
//! a small fixed pool of handler threads answers complete requests. A connection costs a
//! buffer, not a thread, until it has sent a whole request; at most
//! [`ADMIN_MAX_CONNECTIONS`] are held (the oldest is dropped to make room), and one that
//! has not sent a whole request within [`ADMIN_IO_TIMEOUT`] of its accept is closed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control::Control;

/// An admin client that has not sent its whole request this long after connecting is
/// dropped; also the write timeout of an answer.
pub const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest admin request (head and body) accepted.
pub const ADMIN_MAX_REQUEST: usize = 64 * 1024;
/// Connections held open at once, waiting for their request; a new one beyond this drops
/// the oldest, so idle connections cannot lock operators out.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Threads that answer complete requests (a reload or a scrape can take a while).
const ADMIN_HANDLERS: usize = 2;
/// Complete requests waiting for a handler; beyond this the answer is 503.
const ADMIN_QUEUE: usize = 16;

/// A parsed admin request.
pub struct AdminRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    pub authorization: Option<String>,
    pub host: Option<String>,
    pub origin: Option<String>,
    pub sec_fetch_site: Option<String>,
    pub content_type: Option<String>,
}

/// What the reader hands a handler: the connection and its request, or why it is invalid.
type Job = (TcpStream, Result<AdminRequest, String>);

/// Binds the admin listener, starts its reader and handler threads; returns the bound address.
pub fn start(addr: SocketAddr, control: Arc<Control>) -> std::io::Result<SocketAddr> {
    start_on(TcpListener::bind(addr)?, control)
}

/// [`start`] on a socket already listening (an upgrade's, handed over).
pub fn start_on(listener: TcpListener, control: Arc<Control>) -> std::io::Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "admin API listening");
    let (tx, rx) = sync_channel::<Job>(ADMIN_QUEUE);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..ADMIN_HANDLERS {
        let rx = rx.clone();
        let control = control.clone();
        std::thread::Builder::new()
            .name(format!("lb-admin-{i}"))
            .spawn(move || {
                crate::control::background_thread();
                handle_jobs(&rx, &control)
            })?;
    }
    std::thread::Builder::new()
        .name("lb-admin".into())
        .spawn(move || read_loop(listener, tx, &control))?;
    Ok(local)
}

fn handle_jobs(rx: &Mutex<Receiver<Job>>, control: &Control) {
    loop {
        let job = match rx.lock() {
            Ok(r) => r.recv(),
            Err(p) => p.into_inner().recv(),
        };
        let Ok((stream, req)) = job else { return };
        super::serve(stream, req, control);
    }
}

/// A connection that has not sent its whole request yet.
struct Pending {
    stream: TcpStream,
    buf: Vec<u8>,
    since: Instant,
}

enum Progress {
    /// Still waiting for more.
    More,
    /// Closed, failed, or too large to wait for: drop it.
    Gone,
    Done(Result<AdminRequest, String>),
}

fn read_loop(listener: TcpListener, tx: SyncSender<Job>, control: &Control) {
    let mut conns: Vec<Pending> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        fds.clear();
        let mut listen = pollfd(listener.as_raw_fd());
        // After an upgrade the new process answers the admin API on this same socket.
        if control.upgraded.load(std::sync::atomic::Ordering::SeqCst) {
            listen.events = 0;
        }
        fds.push(listen);
        fds.extend(conns.iter().map(|c| pollfd(c.stream.as_raw_fd())));
        let now = Instant::now();
        let wait = conns
            .iter()
            .map(|c| (c.since + ADMIN_IO_TIMEOUT).saturating_duration_since(now))
            .min()
            .map_or(-1, |d| d.as_millis().min(60_000) as i32 + 1);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd records that lives across the
        // call; every descriptor in it is owned by `listener` or an entry of `conns`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!(error = %e, "admin poll failed");
                std::thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        // Connections first (their indexes match `fds[1..]`), from the back so removals
        // do not shift the ones still to look at.
        let now = Instant::now();
        for i in (0..conns.len()).rev() {
            let ready = fds[i + 1].revents != 0;
            let step = if ready {
                read_more(&mut conns[i])
            } else if now.duration_since(conns[i].since) >= ADMIN_IO_TIMEOUT {
                let c = conns.remove(i);
                refuse(c.stream, 408, "request_timeout");
                continue;
            } else {
                Progress::More
            };
            match step {
                Progress::More => {}
                Progress::Gone => {
                    conns.remove(i);
                }
                Progress::Done(req) => {
                    let c = conns.remove(i);
                    dispatch(&tx, c.stream, req);
                }
            }
        }
        if fds[0].revents != 0 && !control.upgraded.load(std::sync::atomic::Ordering::SeqCst) {
            accept_all(&listener, &mut conns);
        }
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn accept_all(listener: &TcpListener, conns: &mut Vec<Pending>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                if conns.len() >= ADMIN_MAX_CONNECTIONS {
                    // The oldest has had the longest to send its request.
                    let oldest = conns.remove(0);
                    tracing::debug!(peer = ?oldest.stream.peer_addr().ok(), "admin connection limit: dropping the oldest");
                }
                conns.push(Pending {
                    stream,
                    buf: Vec::new(),
                    since: Instant::now(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors, most likely: let poll come round again.
                tracing::warn!(error = %e, "admin accept failed");
                return;
            }
        }
    }
}

fn read_more(c: &mut Pending) -> Progress {
    let mut chunk = [0u8; 4096];
    loop {
        match c.stream.read(&mut chunk) {
            Ok(0) => return Progress::Gone,
            Ok(n) => {
                c.buf.extend_from_slice(&chunk[..n]);
                match parse(&c.buf) {
                    Ok(Some(req)) => return Progress::Done(Ok(req)),
                    Ok(None) if c.buf.len() > ADMIN_MAX_REQUEST => {
                        return Progress::Done(Err("request too large".into()))
                    }
                    Ok(None) => {}
                    Err(e) => return Progress::Done(Err(e)),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Progress::More,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Progress::Gone,
        }
    }
}

/// Hands a complete request to a handler; with every handler busy and the queue full the
/// client hears 503 at once rather than waiting unboundedly.
fn dispatch(tx: &SyncSender<Job>, stream: TcpStream, req: Result<AdminRequest, String>) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    match tx.try_send((stream, req)) {
        Ok(()) => {}
        Err(TrySendError::Full((stream, _))) => refuse(stream, 503, "busy"),
        Err(TrySendError::Disconnected(_)) => {}
    }
}

/// A short JSON error, written without waiting on a slow client.
fn refuse(mut stream: TcpStream, status: u16, code: &str) {
    let body = format!("{{\"error\":\"{code}\"}}\n");
    let msg = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        crate::http::write::reason(status),
        body.len()
    );
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(msg.as_bytes());
}

/// Parses a complete request at the front of `buf`; `Ok(None)` if more is needed.
fn parse(buf: &[u8]) -> Result<Option<AdminRequest>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("invalid request: {e}")),
    };
    let header = |name: &str| -> Result<Option<String>, String> {
        let mut found = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name));
        let first = found.next();
        if found.next().is_some() {
            return Err(format!("more than one {name} header"));
        }
        Ok(first.map(|h| String::from_utf8_lossy(h.value).into_owned()))
    };
    if req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Err("chunked admin requests are not supported; send Content-Length".into());
    }
    let body_len = match header("content-length")? {
        None => 0,
        Some(v) => crate::http::parse_content_length(v.as_bytes())
            .ok_or_else(|| "invalid Content-Length".to_string())? as usize,
    };
    if head_len.saturating_add(body_len) > ADMIN_MAX_REQUEST {
        return Err("request too large".into());
    }
    if buf.len() < head_len + body_len {
        return Ok(None);
    }
    Ok(Some(AdminRequest {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("/").to_string(),
        body: buf[head_len..head_len + body_len].to_vec(),
        authorization: header("authorization")?,
        host: header("host")?,
        origin: header("origin")?,
        sec_fetch_site: header("sec-fetch-site")?,
        content_type: header("content-type")?,
    }))
}
