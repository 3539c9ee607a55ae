//! Security findings, each reproduced the way an attacker (or a broken backend) would:
//! raw sockets, scripted backends that misbehave on purpose, and the real `lb` binary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// A one-worker lb (so that a client's keep-alive requests and the upstream pool share one
/// worker) in front of `backend`, with pooled upstream connections.
fn pooled_config(backend: SocketAddr, extra_http: &str) -> String {
    format!(
        "[server]\nworkers = 1\ndrain_timeout = \"5s\"\n\n[[listeners]]\nname = \"http\"\naddr = \"127.0.0.1:0\"\n\n[admin]\naddr = \"127.0.0.1:0\"\n\n[http]\n{extra_http}\n\n[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{backend}\" }}]\nresponse_timeout = \"2s\"\n\n[[routes]]\npath_prefix = \"/\"\ncluster = \"app\"\n"
    )
}

/// What a scripted backend does with the first request on a connection, before it writes
/// bytes nobody asked for.
#[derive(Debug, Clone, Copy)]
enum Late {
    /// A complete `Content-Length` response, then a second, unsolicited response.
    ExtraResponse,
    /// A 204, then bytes that look like a body (or a response).
    NoContent,
    /// A 304, then a late body.
    NotModified,
    /// The answer to a HEAD (`Content-Length` but no body), then the body after all.
    HeadBody,
    /// A chunked response, then more bytes after its last chunk.
    AfterChunked,
    /// A response and the extra bytes in one write: they arrive together.
    Glued,
}

const STALE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTALE";

/// A backend that answers `/late/<mode>` as [`Late`] says, and any other path with its own
/// path as the body. The late bytes are written when the test says so, and the test hears
/// back once they are on the wire: no timing guesses.
struct LateBackend {
    addr: SocketAddr,
    go: Sender<()>,
    written: Receiver<()>,
    /// Connections accepted so far.
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

fn read_head(r: &mut BufReader<TcpStream>) -> Option<(String, String)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h == "\r\n" {
            return Some((method, path));
        }
    }
}

impl LateBackend {
    fn start() -> LateBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (go_tx, go_rx) = channel::<()>();
        let (written_tx, written_rx) = channel::<()>();
        let go_rx = Arc::new(Mutex::new(go_rx));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let go = go_rx.clone();
                let written = written_tx.clone();
                std::thread::spawn(move || serve_late(stream, &go, &written));
            }
        });
        LateBackend {
            addr,
            go: go_tx,
            written: written_rx,
            accepted,
        }
    }

    /// Lets the backend write its late bytes and waits until it has.
    fn release_late_bytes(&self) {
        self.go.send(()).expect("backend alive");
        self.written
            .recv_timeout(BOUND)
            .expect("backend wrote its late bytes");
    }
}

fn serve_late(stream: TcpStream, go: &Mutex<Receiver<()>>, written: &Sender<()>) {
    // Without it, Nagle's algorithm may hold the late bytes back until lb acknowledges the
    // response (up to a delayed-ACK interval), and they would arrive after lb's next request
    // went out: indistinguishable from its answer for any HTTP/1.1 proxy.
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::new(stream);
    while let Some((method, path)) = read_head(&mut r) {
        let Some(mode) = path.strip_prefix("/late/") else {
            let body = path.as_bytes();
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            let mut out = head.into_bytes();
            if method != "HEAD" {
                out.extend_from_slice(body);
            }
            if w.write_all(&out).is_err() {
                return;
            }
            continue;
        };
        let (first, late): (&[u8], &[u8]) = match mode {
            "extra-response" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", STALE),
            "no-content" => (b"HTTP/1.1 204 No Content\r\n\r\n", STALE),
            "not-modified" => (b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", STALE),
            "head-body" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", STALE),
            "after-chunked" => (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                STALE,
            ),
            "glued" => {
                let mut both = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
                both.extend_from_slice(STALE);
                let _ = w.write_all(&both);
                continue;
            }
            _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", b""),
        };
        if w.write_all(first).is_err() {
            return;
        }
        let lock = go.lock().expect("go lock");
        if lock.recv_timeout(BOUND).is_err() {
            return;
        }
        drop(lock);
        let _ = w.write_all(late);
        let _ = w.flush();
        let _ = written.send(());
    }
}

fn path_of(mode: Late) -> &'static str {
    match mode {
        Late::ExtraResponse => "/late/extra-response",
        Late::NoContent => "/late/no-content",
        Late::NotModified => "/late/not-modified",
        Late::HeadBody => "/late/head-body",
        Late::AfterChunked => "/late/after-chunked",
        Late::Glued => "/late/glued",
    }
}

/// Finding 1: bytes a backend writes after a complete response (or while its connection
/// sits in the pool) must never reach the next client as that client's response.
#[test]
fn late_upstream_bytes_never_reach_the_next_request() {
    let modes = [
        Late::ExtraResponse,
        Late::NoContent,
        Late::NotModified,
        Late::HeadBody,
        Late::AfterChunked,
        Late::Glued,
    ];
    for mode in modes {
        let backend = LateBackend::start();
        let lb = Lb::start(&pooled_config(backend.addr, ""));
        let mut c = Client::connect(lb.addr);
        // The pool is in play: two clean exchanges share one upstream connection.
        for p in ["/warm-1", "/warm-2"] {
            c.send(format!("GET {p} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            assert_eq!(String::from_utf8_lossy(&c.response().body), p);
        }
        assert_eq!(
            backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the upstream connection is reused"
        );
        let method = if matches!(mode, Late::HeadBody) {
            "HEAD"
        } else {
            "GET"
        };
        c.send(format!("{method} {} HTTP/1.1\r\nHost: t\r\n\r\n", path_of(mode)).as_bytes());
        let first = c
            .try_response(method == "HEAD")
            .unwrap_or_else(|e| panic!("{mode:?}: first response: {e}"));
        assert!(
            first.status < 400,
            "{mode:?}: first status {}",
            first.status
        );
        if !matches!(mode, Late::Glued) {
            backend.release_late_bytes();
        }
        // The same client connection, so the same worker and its pooled upstream connection.
        for next in ["/second", "/third", "/fourth"] {
            c.send(format!("GET {next} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            let r = c.response();
            assert_eq!(
                String::from_utf8_lossy(&r.body),
                next,
                "{mode:?}: the answer to {next} must be its own, got status {} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
    }
}

/// Finding 1, the other direction: pipelined requests get their answers in order, each its
/// own, even when the backend is slow to answer the first.
#[test]
fn pipelined_requests_get_their_own_responses_in_order() {
    let backend = Backend::start(Arc::new(|req, res| {
        if req.path == "/slow" {
            // Makes the second request arrive at lb long before the first is answered.
            std::thread::sleep(Duration::from_millis(50));
        }
        res.send(200, &[], req.path.as_bytes());
    }))
    .expect("backend");
    let lb = Lb::start(&pooled_config(backend.addr, ""));
    let mut c = Client::connect(lb.addr);
    let paths = ["/slow", "/b", "/c", "/slow", "/e"];
    let mut all = Vec::new();
    for p in paths {
        all.extend_from_slice(format!("GET {p} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    c.send(&all);
    for p in paths {
        let r = c.response();
        assert_eq!(r.status, 200);
        assert_eq!(String::from_utf8_lossy(&r.body), p);
    }
}

/// A backend that records every path it is asked for and answers with it.
fn recording_backend() -> (Backend, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let backend = Backend::start(Arc::new(move |req, res| {
        s.lock().expect("seen").push(req.path.clone());
        let body = format!("backend:{}", req.path);
        res.send(200, &[], body.as_bytes());
    }))
    .expect("backend");
    (backend, seen)
}

/// A deny rule on `/admin` in front of everything else, and a rewrite under `/api`.
fn deny_config(backend: SocketAddr, http: &str) -> String {
    config(&format!(
        "[http]\n{http}\n\n[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{backend}\" }}]\n\n\
         [[routes]]\nname = \"deny-admin\"\npath_prefix = \"/admin\"\nrespond = {{ status = 403, body = \"denied\" }}\n\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\ncluster = \"app\"\nrewrite = {{ strip_prefix = \"/api\", add_prefix = \"/internal\" }}\n\n\
         [[routes]]\nname = \"rest\"\npath_prefix = \"/\"\ncluster = \"app\"\n"
    ))
}

/// The raw request line's target, sent as is (no client-side normalisation).
fn raw_get(lb: &Lb, target: &str) -> Response {
    let mut c = Client::connect(lb.addr);
    c.send(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    c.response()
}

/// Finding 2: every way of spelling `/admin` that a normalising backend would serve as
/// `/admin` meets the deny rule (or is refused); none reaches the backend.
#[test]
fn unnormalised_paths_cannot_bypass_a_deny_rule() {
    let (backend, seen) = recording_backend();
    let lb = Lb::start(&deny_config(backend.addr, ""));
    let attacks = [
        ("/admin/x", 403),
        ("/public/%2e%2e/admin/x", 403),
        ("/public/%2E%2E/admin/x", 403),
        ("/public/../admin/x", 403),
        ("/public/./../admin/x", 403),
        ("//admin/x", 403),
        ("/%61dmin/x", 403),
        ("/%61%64%6D%69%6E", 403),
        ("/admin%2fx", 400),
        ("/admin%2Fx", 400),
        ("/public/..%2fadmin/x", 400),
        ("/public/..%5cadmin/x", 400),
        ("/public\\..\\admin/x", 400),
        ("/../admin/x", 400),
        ("/public/../../admin", 400),
        ("/admin#x", 400),
        ("/public#/../admin", 400),
        ("/a%zz", 400),
    ];
    for (target, want) in attacks {
        let r = raw_get(&lb, target);
        assert_eq!(
            r.status,
            want,
            "{target}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert!(
        seen.lock().expect("seen").is_empty(),
        "the backend was reached: {:?}",
        seen.lock().expect("seen")
    );
    // What routing saw is what the backend gets: the normal form.
    for (target, want) in [
        ("/public/./x//y", "/public/x/y"),
        ("/public/a/../b?q=%2e%2e", "/public/b?q=%2e%2e"),
        ("/%7Euser/%41%3a", "/~user/A%3A"),
        ("http://t/public/%2E/z", "/public/z"),
    ] {
        let r = raw_get(&lb, target);
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(String::from_utf8_lossy(&r.body), format!("backend:{want}"));
    }
}

/// Finding 2: a rewrite works on the normal form, so `strip_prefix`/`add_prefix` cannot be
/// climbed out of.
#[test]
fn rewrites_cannot_escape_their_prefix() {
    let (backend, seen) = recording_backend();
    let lb = Lb::start(&deny_config(backend.addr, ""));
    assert_eq!(raw_get(&lb, "/api/../../admin").status, 400);
    assert_eq!(raw_get(&lb, "/api/%2e%2e/%2e%2e/admin").status, 400);
    // `/api/../admin` is `/admin`: the deny rule, not the rewrite.
    assert_eq!(raw_get(&lb, "/api/../admin").status, 403);
    let r = raw_get(&lb, "/api/v1/./orders//7");
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "backend:/internal/v1/orders/7"
    );
    let seen = seen.lock().expect("seen");
    assert_eq!(*seen, ["/internal/v1/orders/7"]);
}

/// Finding 2: a template rewrite that inserts raw query values cannot make a path that a
/// normalising backend resolves outside the template's prefix.
#[test]
fn template_rewrites_cannot_smuggle_dot_segments() {
    let (backend, seen) = recording_backend();
    let lb = Lb::start(&config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}]\n\n\
         [[routes]]\nname = \"tpl\"\npath = \"/tpl\"\ncluster = \"app\"\n\
         rewrite = {{ path = \"/internal/${{query.p}}\" }}\n",
        backend.addr
    )));
    for p in ["%2e%2e/%2e%2e/admin", "../admin", "..", "a%2fb", "x//y"] {
        let r = raw_get(&lb, &format!("/tpl?p={p}"));
        assert_eq!(
            r.status,
            400,
            "?p={p}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
    assert!(seen.lock().expect("seen").is_empty());
    let r = raw_get(&lb, "/tpl?p=orders");
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "backend:/internal/orders?p=orders"
    );
}

/// Finding 2: a host with a trailing dot is the same host for routing.
#[test]
fn a_trailing_dot_in_host_does_not_escape_host_rules() {
    let (backend, seen) = recording_backend();
    let lb = Lb::start(&config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}]\n\n\
         [[routes]]\nname = \"deny\"\nhost = \"admin.example\"\nrespond = {{ status = 403, body = \"denied\" }}\n\n\
         [[routes]]\nname = \"rest\"\ncluster = \"app\"\n",
        backend.addr
    )));
    for host in ["admin.example", "admin.example.", "ADMIN.example.:8080"] {
        let mut c = Client::connect(lb.addr);
        c.send(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        assert_eq!(c.response().status, 403, "{host}");
    }
    assert!(seen.lock().expect("seen").is_empty());
}

/// Finding 2: the options that loosen normalisation do what they say.
#[test]
fn slash_options_keep_what_they_are_told_to() {
    let (backend, _seen) = recording_backend();
    let lb = Lb::start(&deny_config(
        backend.addr,
        "merge_slashes = false\nescaped_slashes = \"keep\"",
    ));
    let r = raw_get(&lb, "/files/a%2fb");
    assert_eq!(r.status, 200);
    assert_eq!(String::from_utf8_lossy(&r.body), "backend:/files/a%2Fb");
    let r = raw_get(&lb, "//admin/x");
    assert_eq!(r.status, 200, "unmerged, //admin is not /admin");
    assert_eq!(String::from_utf8_lossy(&r.body), "backend://admin/x");
    // Still never decoded into a separator, still no climbing.
    assert_eq!(raw_get(&lb, "/admin%2fx").status, 200);
    assert_eq!(raw_get(&lb, "/x/../../admin").status, 400);
}

/// Finding 2 against a real normalising origin (nginx): through lb, its admin page is never
/// served, whatever the spelling.
#[test]
fn a_normalising_nginx_origin_never_serves_its_admin_page_through_lb() {
    let Some(nginx) = Nginx::start(1, |ports| {
        format!(
            "server {{\n listen 127.0.0.1:{};\n\
             location /admin {{ return 200 \"ADMIN PAGE\"; }}\n\
             location / {{ return 200 \"public:$uri\"; }}\n}}\n",
            ports[0]
        )
    }) else {
        return;
    };
    let lb = Lb::start(&deny_config(nginx.addr, ""));
    for target in [
        "/admin/",
        "/public/%2e%2e/admin/",
        "/public/../admin/",
        "//admin/",
        "/%61dmin/",
        "/admin%2f",
        "/public/..%2fadmin/",
    ] {
        let r = raw_get(&lb, target);
        assert!(
            !String::from_utf8_lossy(&r.body).contains("ADMIN PAGE"),
            "{target} reached nginx's admin page (status {})",
            r.status
        );
        assert!(r.status == 403 || r.status == 400, "{target}: {}", r.status);
    }
    // The same origin serves its public pages through lb.
    let r = raw_get(&lb, "/public/./index");
    assert_eq!(r.status, 200);
    assert_eq!(String::from_utf8_lossy(&r.body), "public:/public/index");
}

/// A backend that keeps each request's raw bytes (head, body and trailers) and answers
/// every request with `reply`.
struct RawBackend {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawBackend {
    fn start(reply: &'static [u8]) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let seen = seen.clone();
                std::thread::spawn(move || raw_serve(stream, reply, &seen));
            }
        });
        RawBackend { addr, requests }
    }

    /// The raw bytes of every request seen so far, as text.
    fn seen(&self) -> Vec<String> {
        self.requests
            .lock()
            .expect("requests")
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }
}

fn raw_serve(mut stream: TcpStream, reply: &[u8], seen: &Mutex<Vec<Vec<u8>>>) {
    use lb::http::chunked::{ChunkedDecoder, Step};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // The head, then a chunked body if the head says so.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let chunked = head.contains("transfer-encoding: chunked");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let mut end = head_end + length;
        if chunked {
            let mut d = ChunkedDecoder::new();
            loop {
                match d.step(&buf[end..]) {
                    Ok(Step::Data(n) | Step::Skip(n) | Step::LastChunk(n) | Step::Trailer(n)) => {
                        end += n
                    }
                    Ok(Step::End(n)) => {
                        end += n;
                        break;
                    }
                    Ok(Step::NeedMore) => match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    },
                    Err(_) => return,
                }
            }
        }
        seen.lock().expect("seen").push(buf[..end].to_vec());
        buf.drain(..end);
        if stream.write_all(reply).is_err() {
            return;
        }
    }
}

const OK_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Finding 4: transfer codings lb does not implement are refused, not passed off as chunked.
#[test]
fn unimplemented_transfer_codings_are_refused() {
    let backend = RawBackend::start(OK_REPLY);
    let lb = Lb::start(&pooled_config(backend.addr, ""));
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for (te, status, says) in [
        ("Transfer-Encoding: gzip, chunked", 501, "only the chunked"),
        (
            "Transfer-Encoding: identity, chunked",
            501,
            "only the chunked",
        ),
        (
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
            501,
            "only the chunked",
        ),
        ("Transfer-Encoding: chunked, identity", 400, "not the last"),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            400,
            "more than once",
        ),
    ] {
        let mut c = Client::connect(lb.addr);
        c.send(format!("POST /up HTTP/1.1\r\nHost: t\r\n{te}\r\n\r\n{body}").as_bytes());
        let r = c.response();
        assert_eq!(r.status, status, "{te}");
        let reason = r.json()["message"].as_str().unwrap_or("").to_string();
        assert!(reason.contains(says), "{te}: {reason}");
    }
    assert!(backend.seen().is_empty(), "{:?}", backend.seen());
    // A backend that answers with one is a bad gateway, not gzip bytes passed off as data.
    let gz = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n\x1f\x8b\r\n0\r\n\r\n",
    );
    let lb = Lb::start(&pooled_config(gz.addr, ""));
    assert_eq!(raw_get(&lb, "/").status, 502);
}

/// Finding 4: trailer fields that RFC 9110 forbids (framing, routing, auth, ...) are dropped
/// both ways; the others go on. `trailers = "drop"` drops them all.
#[test]
fn forbidden_trailer_fields_are_dropped_both_ways() {
    let backend = RawBackend::start(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\
          X-Resp-Sum: 7\r\nContent-Length: 99\r\nSet-Cookie: session=stolen\r\nHost: evil\r\n\r\n",
    );
    let lb = Lb::start(&pooled_config(backend.addr, ""));
    let mut c = Client::connect(lb.addr);
    c.send(
        b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\
          X-Sum: 1\r\nContent-Length: 5\r\nHost: evil\r\nTransfer-Encoding: gzip\r\nAuthorization: x\r\n\
          X-Forwarded-For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\n\r\n",
    );
    let r = c.response();
    assert_eq!(r.status, 200);
    let trailers = String::from_utf8_lossy(&r.trailers).to_ascii_lowercase();
    assert!(trailers.contains("x-resp-sum: 7"), "{trailers}");
    for bad in ["content-length", "set-cookie", "host"] {
        assert!(
            !trailers.contains(bad),
            "{bad} went to the client: {trailers}"
        );
    }
    let seen = backend.seen();
    let req = seen
        .first()
        .expect("the backend got the request")
        .to_ascii_lowercase();
    let tail = &req[req.find("\r\n\r\n").expect("head") + 4..];
    assert!(tail.contains("x-sum: 1"), "{tail}");
    for bad in [
        "content-length",
        "host",
        "transfer-encoding",
        "authorization",
    ] {
        assert!(
            !tail.contains(bad),
            "{bad} went upstream as a trailer: {tail}"
        );
    }

    let lb = Lb::start(&pooled_config(backend.addr, "trailers = \"drop\""));
    let mut c = Client::connect(lb.addr);
    c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-Sum: 1\r\n\r\n");
    let r = c.response();
    assert!(
        r.trailers.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&r.trailers)
    );
    let seen = backend.seen();
    let last = seen.last().expect("request");
    assert!(!last.contains("X-Sum"), "{last}");
}

/// Finding 4: `Connection: Host` (or naming the framing headers) does not strip what the
/// message needs.
#[test]
fn connection_cannot_strip_host_or_framing() {
    let backend = RawBackend::start(OK_REPLY);
    let lb = Lb::start(&pooled_config(backend.addr, ""));
    let mut c = Client::connect(lb.addr);
    c.send(b"POST /x HTTP/1.1\r\nHost: shop.example\r\nConnection: Host, Content-Length, X-Drop\r\nX-Drop: 1\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(c.response().status, 200);
    let seen = backend.seen();
    let req = seen.first().expect("request");
    assert!(req.contains("\r\nHost: shop.example\r\n"), "{req}");
    assert!(!req.contains("\r\nHost: app"), "{req}");
    assert!(req.contains("Content-Length: 3\r\n"), "{req}");
    assert!(req.ends_with("\r\n\r\nabc"), "{req}");
    assert!(!req.contains("X-Drop"), "{req}");
}

/// Finding 4: client-sent address headers do not reach the backend by default; lb's own
/// `X-Forwarded-For` is the only one. In append mode the client's list is kept in front.
#[test]
fn client_address_headers_are_not_believed() {
    let backend = RawBackend::start(OK_REPLY);
    let spoof = "X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\n\
                 X_Real_IP: 6.6.6.6\r\nX-Forwarded-Port: 6\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\n";
    let lb = Lb::start(&pooled_config(backend.addr, ""));
    let mut c = Client::connect(lb.addr);
    c.send(format!("GET / HTTP/1.1\r\nHost: t\r\n{spoof}\r\n").as_bytes());
    assert_eq!(c.response().status, 200);
    let req = backend.seen().pop().expect("request");
    assert!(!req.contains("6.6.6.6") && !req.contains("/admin"), "{req}");
    assert!(!req.contains("X-Forwarded-Port"), "{req}");
    assert!(req.contains("X-Forwarded-For: 127.0.0.1\r\n"), "{req}");

    let lb = Lb::start(&pooled_config(
        backend.addr,
        "client_address_headers = \"append\"",
    ));
    let mut c = Client::connect(lb.addr);
    c.send(format!("GET / HTTP/1.1\r\nHost: t\r\n{spoof}\r\n").as_bytes());
    assert_eq!(c.response().status, 200);
    let req = backend.seen().pop().expect("request");
    let xff = req
        .find("X-Forwarded-For: 6.6.6.6")
        .expect("client's entry kept");
    let ours = req.find("X-Forwarded-For: 127.0.0.1").expect("lb's entry");
    assert!(xff < ours, "lb's entry must be last: {req}");
    assert!(
        !req.contains("X-Real-IP") && !req.contains("Forwarded: for"),
        "{req}"
    );
}

/// Finding 4: a head that does not finish in time gets the documented 408, and the time is
/// counted from accept, so waiting silently first does not buy a second timeout.
#[test]
fn slow_heads_get_408_counted_from_accept() {
    let backend = RawBackend::start(OK_REPLY);
    let lb = Lb::start(&pooled_config(
        backend.addr,
        "client_header_timeout = \"2s\"",
    ));
    // Part of a head, then nothing.
    let mut c = Client::connect(lb.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n");
    let r = c.try_response(false).expect("a 408, not a silent close");
    assert_eq!(r.status, 408);
    assert_eq!(r.json()["error"], "request_timeout");

    // Silent for 1.5 s, then a head trickled a byte every 100 ms: the 408 comes 2 s after
    // accept, not 2 s after the first byte (3.5 s).
    let mut c = Client::connect(lb.addr);
    let accepted = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let head =
        b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut closed_at = None;
    for b in head {
        if c.stream.write_all(&[*b]).is_err() {
            closed_at = Some(accepted.elapsed());
            break;
        }
        c.stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        match c.stream.peek(&mut byte) {
            Ok(_) => {
                closed_at = Some(accepted.elapsed());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed_at = Some(accepted.elapsed());
                break;
            }
        }
    }
    let closed_at = closed_at.expect("lb answered before the head was complete");
    assert!(
        closed_at < Duration::from_millis(3000),
        "the header deadline restarted at the first byte: answered after {closed_at:?}"
    );
    c.stream.set_read_timeout(Some(BOUND)).expect("timeout");
    assert_eq!(c.response().status, 408);
    assert!(backend.seen().is_empty());
}

/// The admin listener's Host, for requests that should pass the Host check.
fn admin_request(lb: &Lb, raw: &str) -> Response {
    let addr = lb.admin.expect("admin");
    let mut c = Client::connect(addr);
    c.send(raw.replace("{ADMIN}", &addr.to_string()).as_bytes());
    c.response()
}

/// Finding 3: a page in an operator's browser cannot drive the admin API: cross-origin,
/// non-JSON and DNS-rebound requests change nothing.
#[test]
fn the_admin_api_cannot_be_driven_cross_site() {
    let backend = RawBackend::start(OK_REPLY);
    let lb = Lb::start(&pooled_config(backend.addr, ""));
    let (_, before) = lb.admin("GET", "/config");
    // A new config on disk, which only a real reload picks up.
    let text = std::fs::read_to_string(&lb.config_path).expect("config");
    std::fs::write(
        &lb.config_path,
        format!(
            "{text}\n[[routes]]\nname = \"extra\"\npath_prefix = \"/extra\"\ncluster = \"app\"\n"
        ),
    )
    .expect("write config");
    let attempts = [
        // The reported one: a simple cross-site form post.
        ("POST /reload HTTP/1.1\r\nHost: {ADMIN}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}", 403),
        ("POST /reload HTTP/1.1\r\nHost: {ADMIN}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}", 415),
        ("POST /reload HTTP/1.1\r\nHost: {ADMIN}\r\nContent-Length: 0\r\n\r\n", 415),
        ("POST /reload HTTP/1.1\r\nHost: {ADMIN}\r\nOrigin: http://evil.example\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n", 403),
        ("POST /reload HTTP/1.1\r\nHost: {ADMIN}\r\nSec-Fetch-Site: cross-site\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n", 403),
        // DNS rebinding: the page's own name, resolved to loopback.
        ("POST /reload HTTP/1.1\r\nHost: evil.example:9901\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n", 403),
        ("GET /config HTTP/1.1\r\nHost: evil.example\r\n\r\n", 403),
        ("POST /splits/none/weights HTTP/1.1\r\nHost: {ADMIN}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}", 415),
    ];
    for (raw, want) in attempts {
        let r = admin_request(&lb, raw);
        assert_eq!(r.status, want, "{raw}");
    }
    let (_, after) = lb.admin("GET", "/config");
    assert_eq!(
        before["version"], after["version"],
        "a refused call reloaded"
    );
    assert_eq!(before["routes"], after["routes"]);
    // The same call, same-origin and JSON, goes through.
    let r = admin_request(
        &lb,
        "POST /reload HTTP/1.1\r\nHost: {ADMIN}\r\nOrigin: http://{ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let (_, after) = lb.admin("GET", "/config");
    assert_ne!(before["version"], after["version"]);
}

/// Threads of a process.
fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// Finding 3: idle admin connections cost no thread each, are bounded, and time out; the
/// API keeps answering while they sit there.
#[test]
fn idle_admin_connections_cost_no_thread_and_time_out() {
    let backend = RawBackend::start(OK_REPLY);
    let lb = Lb::start(&pooled_config(backend.addr, ""));
    let admin = lb.admin.expect("admin");
    assert_eq!(lb.admin("GET", "/healthz").0, 200);
    let before = threads(lb.pid());
    let fds_before = fd_count(lb.pid());
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(admin).expect("connect"))
        .collect();
    // Every connection has been accepted once the admin API answers a request made after
    // them (one reader thread takes connections in order).
    assert_eq!(lb.admin("GET", "/healthz").0, 200);
    let during = threads(lb.pid());
    assert!(
        during <= before,
        "300 idle admin connections made threads: {before} -> {during}"
    );
    assert!(
        fd_count(lb.pid()) <= fds_before + lb::admin::ADMIN_MAX_CONNECTIONS + 1,
        "more idle admin connections held than the limit"
    );
    // The held ones are closed when their time is up.
    wait_until("idle admin connections to be closed", || {
        fd_count(lb.pid()) <= fds_before
    });
    drop(idle);
    assert_eq!(lb.admin("GET", "/healthz").0, 200);
}
