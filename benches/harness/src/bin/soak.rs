//! `lb-soak`: mixed traffic through a real `lb` for a fixed time while backends restart and
//! the config reloads. Reports requests served and failed (each failure explained or not),
//! and the proxy's descriptors and memory over the run. Exits non-zero on an unexplained
//! failure. Loopback only; every loop is bounded in time and count.
//!
//! Usage: `lb-soak [--seconds N] [--lb PATH]` (`cargo xtask soak` builds lb and runs it).

#[path = "../procs.rs"]
#[allow(dead_code)]
mod procs;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lb::demo::backend::{Backend, Handler};

/// Every client loop stops after this many iterations even if time remains.
const MAX_ITERATIONS: u64 = 50_000_000;
const RESTART_EVERY: Duration = Duration::from_secs(20);
const RELOAD_EVERY: Duration = Duration::from_secs(7);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// A failure this close to a backend restart is explained by it.
const RESTART_SLACK: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What happened, shared by the client threads.
#[derive(Default)]
struct Tally {
    ok: BTreeMap<&'static str, u64>,
    failures: Vec<(Instant, &'static str, String)>,
}

struct Shared {
    stop: AtomicBool,
    tally: Mutex<Tally>,
    /// (start, end) of each backend restart; end is None while it is down.
    restarts: Mutex<Vec<(Instant, Option<Instant>)>>,
}

impl Shared {
    fn ok(&self, kind: &'static str) {
        if let Ok(mut t) = self.tally.lock() {
            *t.ok.entry(kind).or_default() += 1;
        }
    }
    fn fail(&self, kind: &'static str, why: String) {
        if let Ok(mut t) = self.tally.lock() {
            t.failures.push((Instant::now(), kind, why));
        }
    }
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }
}

fn handler() -> Handler {
    Arc::new(|req, res| {
        if req.path == "/ws" {
            let _ = res.raw(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
            let s = res.stream();
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            res.close_after();
            return;
        }
        let body = format!("{} {}", req.path, req.body_len);
        res.send(200, &[("Content-Type", "text/plain")], body.as_bytes());
    })
}

/// Reads one response with a Content-Length body; returns (status, body).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, Vec<u8>)> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(n) = r.parse(buf)? {
            let status = r.code.unwrap_or(0);
            let len = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                });
            let Some(len) = len else {
                if status == 101 {
                    return Ok((status, buf[n..].to_vec()));
                }
                bail!("response {status} without Content-Length");
            };
            while buf.len() < n + len {
                let k = s.read(&mut chunk)?;
                if k == 0 {
                    bail!("closed mid-body");
                }
                buf.extend_from_slice(&chunk[..k]);
            }
            return Ok((status, buf[n..n + len].to_vec()));
        }
        let k = s.read(&mut chunk)?;
        if k == 0 {
            bail!("closed before a response");
        }
        buf.extend_from_slice(&chunk[..k]);
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Runs `exchange` on one keep-alive connection until the soak ends, reconnecting after any
/// failure; each iteration counts under `kind`.
fn on_keep_alive(
    addr: SocketAddr,
    sh: &Shared,
    kind: &'static str,
    mut exchange: impl FnMut(&mut TcpStream, u64, &mut Vec<u8>) -> Result<()>,
) {
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::new();
    for i in 0..MAX_ITERATIONS {
        if !sh.running() {
            break;
        }
        let result = (|| -> Result<()> {
            if conn.is_none() {
                conn = Some(connect(addr)?);
            }
            exchange(conn.as_mut().context("no connection")?, i, &mut buf)
        })();
        match result {
            Ok(()) => sh.ok(kind),
            Err(e) => {
                conn = None;
                sh.fail(kind, e.to_string());
            }
        }
    }
}

/// Keep-alive GETs whose answers must name the path asked for.
fn keep_alive(addr: SocketAddr, sh: &Shared) {
    on_keep_alive(addr, sh, "keep-alive GET", |s, i, buf| {
        s.write_all(format!("GET /k/{i} HTTP/1.1\r\nHost: soak\r\n\r\n").as_bytes())?;
        let (status, body) = read_response(s, buf)?;
        if status != 200 || !body.starts_with(format!("/k/{i} ").as_bytes()) {
            bail!("status {status}, body {:?}", String::from_utf8_lossy(&body));
        }
        Ok(())
    });
}

/// 256 KiB uploads with Content-Length, keep-alive; the backend must see every byte.
fn uploads(addr: SocketAddr, sh: &Shared) {
    let body = vec![b'u'; 256 * 1024];
    let head = format!(
        "PUT /upload HTTP/1.1\r\nHost: soak\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let want = format!("/upload {}", body.len());
    on_keep_alive(addr, sh, "upload 256 KiB", |s, _, buf| {
        s.write_all(head.as_bytes())?;
        s.write_all(&body)?;
        let (status, got) = read_response(s, buf)?;
        if status != 200 || got != want.as_bytes() {
            bail!("status {status}, body {:?}", String::from_utf8_lossy(&got));
        }
        Ok(())
    });
}

/// A WebSocket upgrade, 20 echoed messages, close.
fn websockets(addr: SocketAddr, sh: &Shared) {
    let mut buf = Vec::new();
    for _ in 0..MAX_ITERATIONS {
        if !sh.running() {
            break;
        }
        let result = (|| -> Result<()> {
            let mut s = connect(addr)?;
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: soak\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: c29hay1zb2FrLXNvYWs=\r\n\r\n")?;
            let (status, early) = read_response(&mut s, &mut buf)?;
            if status != 101 || !early.is_empty() {
                bail!("upgrade answered {status}");
            }
            for m in 0..20u32 {
                let msg = format!("message {m}");
                s.write_all(msg.as_bytes())?;
                let mut echoed = vec![0u8; msg.len()];
                s.read_exact(&mut echoed)?;
                if echoed != msg.as_bytes() {
                    bail!("echo mismatch");
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => sh.ok("websocket session"),
            Err(e) => sh.fail("websocket session", e.to_string()),
        }
    }
}

/// Malformed requests: each must get its 400 (or 501) and a close.
fn malformed(addr: SocketAddr, sh: &Shared) {
    const BAD: [(&[u8], u16); 5] = [
        (b"POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: s\r\nX-A: a\r\n  folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: s\r\nHost: t\r\n\r\n", 400),
        (b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: s\r\n\r\n", 501),
    ];
    let mut buf = Vec::new();
    for i in 0..MAX_ITERATIONS {
        if !sh.running() {
            break;
        }
        let (req, want) = BAD[i as usize % BAD.len()];
        let result = (|| -> Result<()> {
            let mut s = connect(addr)?;
            s.write_all(req)?;
            let (status, _) = read_response(&mut s, &mut buf)?;
            if status != want {
                bail!(
                    "malformed request #{} answered {status}, not {want}",
                    i as usize % BAD.len()
                );
            }
            Ok(())
        })();
        match result {
            Ok(()) => sh.ok("malformed, rejected"),
            Err(e) => sh.fail("malformed, rejected", e.to_string()),
        }
        // A hostile client, but not a flood: the point is the mix.
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn admin(addr: SocketAddr, method: &str, path: &str) -> Result<u16> {
    let mut s = connect(addr)?;
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )?;
    let mut buf = Vec::new();
    Ok(read_response(&mut s, &mut buf)?.0)
}

fn config(listen: u16, admin: u16, backends: &[SocketAddr], generation: u64) -> String {
    let eps: Vec<String> = backends
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        "[server]\nworkers = 2\ndrain_timeout = \"5s\"\n\n[[listeners]]\nname = \"http\"\naddr = \"127.0.0.1:{listen}\"\n\n[admin]\naddr = \"127.0.0.1:{admin}\"\n\n[http]\nwebsocket_idle_timeout = \"30s\"\n\n[[clusters]]\nname = \"app\"\nendpoints = [{}]\nbalancer = \"least_connections\"\nhealth_check = {{ path = \"/health\", interval = \"200ms\", timeout = \"200ms\", healthy_threshold = 1, unhealthy_threshold = 1 }}\n\n[[routes]]\npath_prefix = \"/\"\ncluster = \"app\"\nresponse_headers = {{ set = {{ \"X-Soak-Generation\" = \"{generation}\" }} }}\n",
        eps.join(", ")
    )
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn main() -> Result<()> {
    let mut seconds = 600u64;
    let mut lb_path = PathBuf::from("target/release/lb");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().context("--seconds N")?.parse()?,
            "--lb" => lb_path = PathBuf::from(args.next().context("--lb PATH")?),
            other => bail!("unknown argument {other:?}; usage: lb-soak [--seconds N] [--lb PATH]"),
        }
    }
    let mut backends = [Backend::start(handler())?, Backend::start(handler())?];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let (listen, admin_port) = (free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(format!("lb-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg_path = dir.join("lb.toml");
    std::fs::write(&cfg_path, config(listen, admin_port, &addrs, 0))?;
    let log = std::fs::File::create(dir.join("lb.log"))?;
    let mut child = Command::new(&lb_path)
        .args(["run", "--config"])
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", lb_path.display()))?;
    let pid = child.id();
    let lb_addr: SocketAddr = format!("127.0.0.1:{listen}").parse()?;
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin_port}").parse()?;
    procs::wait_listening(lb_addr, &mut child)?;
    let until = Instant::now() + Duration::from_secs(15);
    while admin(admin_addr, "GET", "/readyz").unwrap_or(0) != 200 {
        if Instant::now() > until {
            bail!("lb did not become ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let sh = Arc::new(Shared {
        stop: AtomicBool::new(false),
        tally: Mutex::default(),
        restarts: Mutex::default(),
    });
    let start = Instant::now();
    let (fd_start, rss_start) = (fds(pid), procs::status_kib(pid, "VmRSS:")?);
    let mut threads = Vec::new();
    type Client = fn(SocketAddr, &Shared);
    let clients: [Client; 6] = [
        keep_alive, keep_alive, uploads, websockets, websockets, malformed,
    ];
    for f in clients {
        let sh = sh.clone();
        threads.push(std::thread::spawn(move || f(lb_addr, &sh)));
    }

    let end = start + Duration::from_secs(seconds);
    let (mut next_restart, mut next_reload, mut next_sample) =
        (start + RESTART_EVERY, start + RELOAD_EVERY, start);
    let (mut reloads, mut reload_failures, mut restarts) = (0u64, 0u64, 0u64);
    let mut samples = Vec::new();
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_sample {
            samples.push((
                now - start,
                fds(pid),
                procs::status_kib(pid, "VmRSS:").unwrap_or(0),
            ));
            let (ok, failed) = sh
                .tally
                .lock()
                .map(|t| (t.ok.values().sum::<u64>(), t.failures.len()))
                .unwrap_or_default();
            eprintln!(
                "soak: {:>4}s served {ok}, failed {failed}, fds {}, rss {} KiB",
                (now - start).as_secs(),
                fds(pid),
                procs::status_kib(pid, "VmRSS:").unwrap_or(0)
            );
            next_sample += SAMPLE_EVERY;
        }
        if now >= next_reload {
            reloads += 1;
            std::fs::write(&cfg_path, config(listen, admin_port, &addrs, reloads))?;
            if admin(admin_addr, "POST", "/reload").unwrap_or(0) != 200 {
                reload_failures += 1;
            }
            next_reload += RELOAD_EVERY;
        }
        if now >= next_restart {
            let i = (restarts % 2) as usize;
            restarts += 1;
            if let Ok(mut r) = sh.restarts.lock() {
                r.push((Instant::now(), None));
            }
            backends[i].stop();
            std::thread::sleep(Duration::from_millis(500));
            backends[i] = Backend::start_on(addrs[i], handler())?;
            if let Ok(mut r) = sh.restarts.lock() {
                if let Some(last) = r.last_mut() {
                    last.1 = Some(Instant::now());
                }
            }
            next_restart += RESTART_EVERY;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sh.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    // Let closed client connections settle before the last count.
    std::thread::sleep(Duration::from_secs(1));
    let (fd_end, rss_end) = (fds(pid), procs::status_kib(pid, "VmRSS:")?);
    // SAFETY: SIGTERM to the child we started.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let exit = child.wait()?;

    let tally = sh
        .tally
        .lock()
        .map_err(|_| anyhow::anyhow!("tally poisoned"))?;
    let windows = sh
        .restarts
        .lock()
        .map_err(|_| anyhow::anyhow!("restarts poisoned"))?;
    let explained = |at: Instant| {
        windows.iter().any(|&(s, e)| {
            let e = e.unwrap_or(s + Duration::from_secs(1));
            at + RESTART_SLACK >= s && at <= e + RESTART_SLACK
        })
    };
    let mut report = String::new();
    let served: u64 = tally.ok.values().sum();
    report.push_str(&format!(
        "# lb soak\n\n{seconds} s of mixed traffic through `lb` (2 workers) to 2 backends; a backend restarted every {} s ({restarts} restarts), the config reloaded every {} s ({reloads} reloads, {reload_failures} refused).\n\n| traffic | served |\n|---|---|\n",
        RESTART_EVERY.as_secs(),
        RELOAD_EVERY.as_secs()
    ));
    for (k, n) in &tally.ok {
        report.push_str(&format!("| {k} | {n} |\n"));
    }
    let mut by_kind: BTreeMap<(&str, bool, String), u64> = BTreeMap::new();
    for (at, kind, why) in &tally.failures {
        *by_kind
            .entry((kind, explained(*at), why.clone()))
            .or_default() += 1;
    }
    let unexplained: u64 = by_kind
        .iter()
        .filter(|((_, e, _), _)| !e)
        .map(|(_, n)| n)
        .sum();
    report.push_str(&format!(
        "\nServed {served}, failed {} ({unexplained} not explained by a backend restart).\n\n",
        tally.failures.len()
    ));
    if !by_kind.is_empty() {
        report.push_str(
            "| traffic | within 2 s of a backend restart | error | count |\n|---|---|---|---|\n",
        );
        for ((kind, e, why), n) in &by_kind {
            report.push_str(&format!(
                "| {kind} | {} | {why} | {n} |\n",
                if *e { "yes" } else { "no" }
            ));
        }
    }
    report.push_str(&format!(
        "\n| lb process | start | end | growth |\n|---|---|---|---|\n| descriptors | {fd_start} | {fd_end} | {} |\n| RSS (KiB) | {rss_start} | {rss_end} | {} |\n\nSamples (s, fds, RSS KiB): {}\n\nlb exit after SIGTERM: {exit}\n",
        fd_end as i64 - fd_start as i64,
        rss_end as i64 - rss_start as i64,
        samples
            .iter()
            .map(|(t, f, r)| format!("{}:{f}:{r}", t.as_secs()))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    print!("{report}");
    let out = PathBuf::from("target/soak");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("report.md"), &report)?;
    eprintln!(
        "soak: report in target/soak/report.md, lb log in {}",
        dir.display()
    );
    if unexplained > 0 {
        bail!("{unexplained} failures not explained by a backend restart");
    }
    if !exit.success() {
        bail!("lb exited with {exit} after SIGTERM");
    }
    Ok(())
}
