//! Helpers for black-box tests: start the real `lb` binary on ephemeral ports, real backends,
//! and a small raw HTTP/1.1 client.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod fleet;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use lb::demo::backend::{Backend, Handler, Request, Responder};
pub use lb::demo::echo;
use lb::http::chunked::{ChunkedDecoder, Step};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// How long anything in a test may take to become true before the test fails.
pub const BOUND: Duration = Duration::from_secs(20);

/// Waits until `cond` holds, checking often, failing after [`BOUND`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + BOUND;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reports a test that cannot run here as skipped: with `LB_REQUIRE_TOOLS` set (as
/// `cargo xtask test` sets it, unless given `LB_REQUIRE_TOOLS=0`) it fails instead, so CI never
/// passes a test that did not run. The caller returns right after. The skip is written to
/// stderr and appended to the file `LB_SKIP_LOG` names, which `cargo xtask test` counts.
pub fn skip(test: &str, reason: &str) {
    let required = std::env::var("LB_REQUIRE_TOOLS").is_ok_and(|v| v != "0");
    assert!(
        !required,
        "{test} cannot run: {reason} (LB_REQUIRE_TOOLS is set)"
    );
    eprintln!("SKIPPED: {test}: {reason}");
    if let Some(path) = std::env::var_os("LB_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// A running `lb` process; killed on drop if still running.
pub struct Lb {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
}

/// A scratch directory unique to this test process and call.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lb-test-{}-{}-{tag}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub fn lb_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lb")
}

/// `lb ARGS` run in `dir`: the exit code, and stdout and stderr together.
pub fn lb_in(args: &[&str], dir: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(lb_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run lb");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

impl Lb {
    /// Starts `lb run` with `config` (TOML text) and waits until it reports ready.
    pub fn start(config: &str) -> Lb {
        Lb::start_with_env(config, &[])
    }

    /// [`Lb::start`] with these environment variables set for lb.
    pub fn start_with_env(config: &str, env: &[(&str, &std::ffi::OsStr)]) -> Lb {
        let dir = scratch_dir("lb");
        let config_path = dir.join("lb.toml");
        std::fs::write(&config_path, config).expect("write config");
        let ready = dir.join("ready.json");
        let log = std::fs::File::create(dir.join("lb.log")).expect("log file");
        let child = Command::new(lb_bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn lb");
        let mut lb = Lb {
            child,
            addr: "127.0.0.1:0".parse().expect("addr"),
            admin: None,
            dir,
            config_path,
        };
        let until = Instant::now() + BOUND;
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let v: serde_json::Value = serde_json::from_str(&text).expect("ready file is JSON");
                let first = v["listeners"]
                    .as_object()
                    .and_then(|m| m.values().next())
                    .and_then(|a| a.as_str())
                    .expect("a listener");
                lb.addr = first.parse().expect("listener addr");
                lb.admin = v["admin"].as_str().map(|a| a.parse().expect("admin addr"));
                return lb;
            }
            if let Ok(Some(status)) = lb.child.try_wait() {
                panic!("lb exited during start-up with {status}:\n{}", lb.log());
            }
            assert!(
                Instant::now() < until,
                "lb did not become ready:\n{}",
                lb.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lb.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to the child we spawned and still own.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit, up to [`BOUND`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let until = Instant::now() + BOUND;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < until, "lb did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Peak resident memory of the process, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    /// An admin request; returns status and parsed JSON body.
    pub fn admin(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let addr = self.admin.expect("admin listener configured");
        let mut c = Client::connect(addr);
        c.send(
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        );
        let r = c.response();
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
        )
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("lb log ({}):\n{}", self.dir.display(), self.log());
        }
    }
}

/// A config with one listener on an ephemeral port, an admin port, and `rest` appended.
pub fn config(rest: &str) -> String {
    format!(
        "[server]\nworkers = 2\ndrain_timeout = \"10s\"\n\n[[listeners]]\nname = \"http\"\naddr = \"127.0.0.1:0\"\n\n[admin]\naddr = \"127.0.0.1:0\"\n\n{rest}"
    )
}

/// A loopback address where nothing listens (bound, then released).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// curl (`-sS`, 10 s at most) with `args`, writing `write_out` (a `-w` format) on a line of
/// its own after the body: (the body, that line, curl's stderr, whether curl succeeded).
pub fn curl_with(args: &[&str], write_out: &str) -> (String, String, String, bool) {
    let format = format!("\n{write_out}");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", &format])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", ""));
    (
        body.to_string(),
        tail.to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body arrived chunked.
    pub chunked: bool,
    pub trailers: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A raw HTTP/1.1 client connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(BOUND)).expect("timeout");
        let _ = stream.set_nodelay(true);
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads more into the buffer; false on EOF.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 64 * 1024];
        // A signal to the test process (a child's exit, in tests that run tools) interrupts
        // a read without ending it: read again.
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Takes the bytes already read past the last response (a tunnel's first bytes).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Reads one response to a non-HEAD request.
    pub fn response(&mut self) -> Response {
        self.try_response(false).expect("a complete response")
    }

    /// Reads one response; `head` says the request was HEAD. Errors if the connection ends
    /// before the response is complete.
    pub fn try_response(&mut self, head: bool) -> io::Result<Response> {
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).map_err(io::Error::other)? {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (r.code.unwrap_or(0), headers, n);
            }
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        self.buf.drain(..head_len);
        let mut res = Response {
            status,
            headers,
            body: Vec::new(),
            chunked: false,
            trailers: Vec::new(),
        };
        if (100..200).contains(&status) || status == 204 || status == 304 || head {
            return Ok(res);
        }
        if res.header("transfer-encoding").is_some() {
            res.chunked = true;
            let mut d = ChunkedDecoder::new();
            loop {
                match d.step(&self.buf).map_err(io::Error::other)? {
                    Step::Data(n) => res.body.extend(self.buf.drain(..n)),
                    Step::Skip(n) | Step::LastChunk(n) => {
                        self.buf.drain(..n);
                    }
                    Step::Trailer(n) => res.trailers.extend(self.buf.drain(..n)),
                    Step::End(n) => {
                        self.buf.drain(..n);
                        return Ok(res);
                    }
                    Step::NeedMore => {
                        if !self.fill()? {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                }
            }
        } else if let Some(len) = res.header("content-length") {
            let len: usize = len.trim().parse().map_err(io::Error::other)?;
            while self.buf.len() < len {
                if !self.fill()? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            res.body = self.buf.drain(..len).collect();
        } else {
            while self.fill()? {}
            res.body = std::mem::take(&mut self.buf);
        }
        Ok(res)
    }

    /// True if the server closed the connection (EOF without more bytes) within the bound.
    pub fn closed_by_peer(&mut self) -> bool {
        matches!(self.fill(), Ok(false) | Err(_)) && self.buf.is_empty()
    }
}

/// One request on a new connection.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let mut c = Client::connect(addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
    c.response()
}

/// Open file descriptors of a process.
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text exposition (enough for what `lb` writes).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or(f64::NAN),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = std::collections::BTreeMap::new();
        let mut rest = labels;
        while let Some(eq) = rest.find("=\"") {
            let key = rest[..eq].trim_start_matches(',').to_string();
            let after = &rest[eq + 2..];
            let end = after.find('"').unwrap_or(after.len());
            map.insert(key, after[..end].to_string());
            rest = &after[(end + 1).min(after.len())..];
        }
        out.push(Sample {
            name: name.to_string(),
            labels: map,
            value,
        });
    }
    out
}

/// The sum of samples named `name` whose labels include every pair of `labels`.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

impl Lb {
    /// Scrapes `/metrics` on the admin listener.
    pub fn scrape(&self) -> Vec<Sample> {
        let addr = self.admin.expect("admin listener configured");
        let mut c = Client::connect(addr);
        c.send(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
        let r = c.response();
        assert_eq!(r.status, 200);
        parse_prometheus(&String::from_utf8_lossy(&r.body))
    }
}

impl Lb {
    /// An admin request with a JSON body.
    pub fn admin_json(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let addr = self.admin.expect("admin listener configured");
        let text = body.to_string();
        let mut c = Client::connect(addr);
        c.send(
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}", text.len())
                .as_bytes(),
        );
        let r = c.response();
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The admin view of split `name`.
    pub fn split(&self, name: &str) -> serde_json::Value {
        let (_, v) = self.admin("GET", "/splits");
        v["splits"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or(serde_json::Value::Null)
    }
}

/// One GET with extra header lines on a new connection.
pub fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut c = Client::connect(addr);
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.send(req.as_bytes());
    c.response()
}

/// nginx on loopback ports, as a real origin (plaintext or TLS); stopped on drop. It runs
/// without a master process, so stopping it leaves nothing behind.
pub struct Nginx {
    child: Child,
    /// The first port's address.
    pub addr: SocketAddr,
    pub ports: Vec<u16>,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with the `server { ... }` blocks `servers` writes for `ports` free
    /// loopback ports. `None` (a skip) where nginx is not installed, unless the tools are
    /// required.
    pub fn start(ports: usize, servers: impl Fn(&[u16]) -> String) -> Option<Nginx> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(bin) = bin else {
            skip(
                "nginx origin",
                "nginx not found; `cargo xtask test` installs it",
            );
            return None;
        };
        let dir = scratch_dir("nginx");
        let ports: Vec<u16> = (0..ports).map(|_| dead_addr().port()).collect();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n access_log off;\n client_body_temp_path {dir};\n proxy_temp_path {dir};\n\
              fastcgi_temp_path {dir};\n uwsgi_temp_path {dir};\n scgi_temp_path {dir};\n{}\n}}\n",
            servers(&ports),
            dir = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx conf");
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().expect("addr");
        let mut n = Nginx {
            child,
            addr,
            ports,
            dir,
        };
        for port in n.ports.clone() {
            wait_until("nginx to listen", || {
                if let Ok(Some(status)) = n.child.try_wait() {
                    panic!(
                        "nginx exited with {status}: {}",
                        std::fs::read_to_string(n.dir.join("error.log")).unwrap_or_default()
                    );
                }
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
        }
        Some(n)
    }

    /// The address of port `i`.
    pub fn addr_of(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA named `ca_name` and one certificate it issued for `names`, written into `dir` as
/// `ca.pem`, `cert.pem` and `key.pem`.
pub fn write_ca_and_cert(dir: &std::path::Path, ca_name: &str, names: &[&str]) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params")
            .signed_by(&key, &ca)
            .expect("leaf");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("cert.pem"), leaf.pem()).expect("write");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write");
}

/// A raw gRPC call by curl over h2c (prior knowledge) to `url`, with `extra` curl arguments
/// (a body, more headers): the answer's head and trailers, lower-cased.
pub fn grpc_curl(extra: &[&str], url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "--max-time",
            "10",
            "-D",
            "-",
            "-o",
            "/dev/null",
        ])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

/// A backend that answers a WebSocket upgrade with `head` (the 101 and any bytes sent right
/// after it), then echoes what it gets until the client closes; other requests get 426.
pub fn ws_echo(head: &'static [u8]) -> Handler {
    std::sync::Arc::new(move |req, res| {
        let upgrade = req.header("upgrade").map(str::to_ascii_lowercase);
        let connection = req.header("connection").map(str::to_ascii_lowercase);
        if upgrade.as_deref() != Some("websocket")
            || !connection.is_some_and(|c| c.contains("upgrade"))
        {
            res.send(426, &[], b"upgrade required");
            return;
        }
        let _ = res.raw(head);
        let s = res.stream();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        res.close_after();
    })
}

/// A datagram socket standing in for systemd's notification socket (`NOTIFY_SOCKET`).
pub struct NotifySocket {
    pub path: PathBuf,
    sock: std::os::unix::net::UnixDatagram,
}

impl NotifySocket {
    pub fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        sock.set_read_timeout(Some(BOUND)).expect("timeout");
        NotifySocket { path, sock }
    }

    /// The next notification, within the bound.
    pub fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .sock
            .recv(&mut buf)
            .expect("a notification within the bound");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// The notifications already waiting, without waiting for more.
    pub fn pending(&self) -> Vec<String> {
        self.sock.set_nonblocking(true).expect("nonblocking");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.sock.set_nonblocking(false).expect("blocking");
        out
    }
}
