//! A small, blocking HTTP/1.1 server for the demo and the black-box tests: real sockets, a
//! thread per connection, and a handler that decides what to answer (or how to misbehave).
//! It is deliberately simple and independent of the proxy's own IO path.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::hash::{fnv1a, FNV_OFFSET};
use crate::http::chunked::{ChunkedDecoder, Step};

/// Request bodies are hashed in full but only this much is kept.
const KEEP_BODY: usize = 1 << 20;
/// A backend connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// HTTP minor version.
    pub minor: u8,
    pub headers: Vec<(String, String)>,
    /// The first MiB of the body.
    pub body: Vec<u8>,
    pub body_len: u64,
    /// FNV-1a 64 over the whole body, to check large transfers without keeping them.
    pub body_hash: u64,
    pub chunked: bool,
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a handler writes to; it owns the connection for the exchange.
pub struct Responder<'a> {
    stream: &'a mut TcpStream,
    close: bool,
    head_request: bool,
}

impl Responder<'_> {
    /// A complete response with `Content-Length` (and no body bytes if the request was HEAD).
    pub fn send(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\n",
            crate::http::write::reason(status)
        );
        for (n, v) in headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let _ = self.stream.write_all(head.as_bytes());
        if !self.head_request {
            let _ = self.stream.write_all(body);
        }
    }

    /// Raw bytes, for framing the proxy must cope with: chunked, close-delimited, broken.
    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Close the connection after this exchange.
    pub fn close_after(&mut self) {
        self.close = true;
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        self.stream
    }
}

/// Handles one request.
pub type Handler = Arc<dyn Fn(&Request, &mut Responder<'_>) + Send + Sync>;

struct Shared {
    stop: AtomicBool,
    connections: AtomicUsize,
    open: AtomicUsize,
    requests: AtomicUsize,
    streams: Mutex<Vec<TcpStream>>,
}

/// A running backend; dropping it (or [`Backend::stop`]) closes the listener and every
/// connection, as a crashed server would.
pub struct Backend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Starts on an ephemeral loopback port.
    pub fn start(handler: Handler) -> io::Result<Backend> {
        Backend::start_on("127.0.0.1:0".parse().map_err(io::Error::other)?, handler)
    }

    /// Starts on `addr`.
    pub fn start_on(addr: SocketAddr, handler: Handler) -> io::Result<Backend> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            streams: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("backend-{}", addr.port()))
            .spawn(move || accept_loop(listener, s, handler))?;
        Ok(Backend {
            addr,
            shared,
            thread: Some(thread),
        })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Requests received so far (counted before they are answered).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes every open connection.
    pub fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the accept call; the loop sees the flag and exits, dropping the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self
            .shared
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, handler: Handler) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else { continue };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            let mut streams = shared.streams.lock().unwrap_or_else(|p| p.into_inner());
            streams.retain(|s| s.peer_addr().is_ok());
            streams.push(clone);
        }
        let (s, h) = (shared.clone(), handler.clone());
        let _ = std::thread::Builder::new()
            .name("backend-conn".into())
            .spawn(move || {
                s.open.fetch_add(1, Ordering::SeqCst);
                let _ = serve(stream, &s, &h);
                s.open.fetch_sub(1, Ordering::SeqCst);
            });
    }
}

fn serve(stream: TcpStream, shared: &Shared, handler: &Handler) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let Some(req) = read_request(&mut reader)? else {
            return Ok(());
        };
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || req.minor == 0;
        let mut responder = Responder {
            stream: &mut writer,
            close,
            head_request: req.method == "HEAD",
        };
        // Counted before the answer goes out, so a client that has its answer sees the count.
        shared.requests.fetch_add(1, Ordering::SeqCst);
        handler(&req, &mut responder);
        if responder.close || shared.stop.load(Ordering::SeqCst) {
            let _ = writer.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

/// Reads one request; `None` when the client closed between requests.
fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
            break;
        }
        if head.len() > 1 << 20 {
            return Err(io::Error::other("head too large"));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(io::Error::other("backend got an unparsable request")),
    }
    let mut req = Request {
        method: parsed.method.unwrap_or("").to_string(),
        path: parsed.path.unwrap_or("").to_string(),
        minor: parsed.version.unwrap_or(1),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: Vec::new(),
        body_len: 0,
        body_hash: FNV_OFFSET,
        chunked: false,
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().ends_with("chunked"))
    {
        req.chunked = true;
        read_chunked(reader, &mut req)?;
    } else if let Some(len) = req
        .header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        let mut left = len;
        let mut buf = [0u8; 64 * 1024];
        while left > 0 {
            let want = (buf.len() as u64).min(left) as usize;
            let n = reader.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            take_body(&mut req, &buf[..n]);
            left -= n as u64;
        }
    }
    Ok(Some(req))
}

fn read_chunked(reader: &mut BufReader<TcpStream>, req: &mut Request) -> io::Result<()> {
    let mut decoder = ChunkedDecoder::new();
    let mut pending: Vec<u8> = Vec::new();
    loop {
        match decoder.step(&pending).map_err(io::Error::other)? {
            Step::Data(n) => {
                let data: Vec<u8> = pending.drain(..n).collect();
                take_body(req, &data);
            }
            Step::Skip(n) | Step::LastChunk(n) | Step::Trailer(n) => {
                pending.drain(..n);
            }
            Step::End(_) => return Ok(()),
            Step::NeedMore => {
                let buf = reader.fill_buf()?;
                if buf.is_empty() {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let n = buf.len();
                pending.extend_from_slice(buf);
                reader.consume(n);
            }
        }
    }
}

fn take_body(req: &mut Request, data: &[u8]) {
    req.body_len += data.len() as u64;
    req.body_hash = fnv1a(req.body_hash, data);
    let room = KEEP_BODY.saturating_sub(req.body.len());
    req.body.extend_from_slice(&data[..room.min(data.len())]);
}
