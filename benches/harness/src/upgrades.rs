//! The upgrades scenario: each proxy replaces its own binary N times back to back while
//! clients send requests, and the report counts the requests that failed.
//!
//! - lb: `POST /upgrade` on its admin API (sockets handed over with SCM_RIGHTS), then the old
//!   process drains.
//! - nginx: `USR2` to the master (a new master inherits the listening sockets), then `QUIT` to
//!   the old master once the new one has a worker, as nginx's documentation describes.
//! - HAProxy: a new process started with `-x` (the listening sockets taken over the old
//!   process's stats socket, `expose-fd listeners`) and `-sf` (the old one finishes what it
//!   has, then exits).
//!
//! The same clients for each: two keep-alive and two new-connection loops of small GETs on
//! core 1. A keep-alive request on a connection that the proxy closed before sending any byte
//! of the answer is sent again on a new connection, as RFC 9112 §9.3.1 allows and browsers,
//! curl and wrk do (also when the reset came after the request was sent: the same for every
//! proxy); anything else that is not a 200 counts as failed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::procs;
use crate::Opts;

/// How long one upgrade may take, from asking to the old process being gone.
const UPGRADE_BOUND: Duration = Duration::from_secs(30);

/// Runs the scenario for each proxy of `opts.proxies`; the report section.
pub fn run(opts: &Opts) -> Result<Value> {
    let crate::scenarios::ScenarioBase {
        dir,
        listen,
        admin,
        backend,
        hello: backend_proc,
    } = crate::scenarios::scenario_base(opts, "upgrades", 40)?;
    let setup = Setup {
        lb: opts.lb.clone(),
        dir,
        listen,
        admin,
        backend,
    };
    let mut rows = Vec::new();
    for proxy in &opts.proxies {
        eprintln!("bench: upgrades, {proxy}");
        let row =
            measure(proxy, opts.upgrades, &setup).with_context(|| format!("upgrading {proxy}"))?;
        eprintln!("upgrades {proxy}: {row}");
        rows.push(json!({ "proxy": proxy, "figures": row }));
    }
    drop(backend_proc);
    Ok(json!({ "upgrades": opts.upgrades, "rows": rows }))
}

struct Setup {
    lb: PathBuf,
    dir: PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    backend: SocketAddr,
}

/// A running proxy that can replace itself.
trait Upgradable {
    /// Replaces the running binary with a new process of it; returns once the old process
    /// is gone.
    fn upgrade(&mut self) -> Result<()>;
    /// Stops whatever process serves now.
    fn stop(&mut self);
}

fn measure(proxy: &str, upgrades: usize, s: &Setup) -> Result<Value> {
    procs::wait_port_free(s.listen);
    let mut p: Box<dyn Upgradable> = match proxy {
        "lb" => Box::new(Lb::start(s)?),
        "nginx" => Box::new(Nginx::start(s)?),
        "haproxy" => Box::new(Haproxy::start(s)?),
        other => bail!("unknown proxy {other}"),
    };
    let load = Load::start(s.listen);
    let started = Instant::now();
    // Some load before the first upgrade, so that each upgrade meets busy connections; the
    // proxy and the clients are stopped whatever happens.
    let result = (|| -> Result<()> {
        load.wait_served(200)?;
        for _ in 0..upgrades {
            p.upgrade()?;
            load.wait_served(load.served() + 200)?;
        }
        Ok(())
    })();
    let elapsed = started.elapsed();
    let (served, failed, examples) = load.stop();
    p.stop();
    result?;
    Ok(json!({
        "requests": served,
        "failed": failed,
        "failed_per_upgrade": failed as f64 / upgrades.max(1) as f64,
        "seconds_per_upgrade": elapsed.as_secs_f64() / upgrades.max(1) as f64,
        "failures": examples,
    }))
}

/// Whether process `pid` is gone (exited, or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: u32, children: &mut [Child]) -> Result<()> {
    let until = Instant::now() + UPGRADE_BOUND;
    while !gone(pid) {
        // Reap our own children as they exit, or they stay zombies.
        for c in children.iter_mut() {
            let _ = c.try_wait();
        }
        if Instant::now() > until {
            bail!("the old process {pid} did not exit within {UPGRADE_BOUND:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill with a PID this scenario started (or that its own upgrade started)
        // and a signal number.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

// ---------- lb ----------

struct Lb {
    pid: u32,
    admin: SocketAddr,
    children: Vec<Child>,
}

impl Lb {
    fn start(s: &Setup) -> Result<Lb> {
        let config = s.dir.join("lb.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nworkers = 1\npin_workers = false\ndrain_timeout = \"10s\"\n\n\
                 [[listeners]]\naddr = \"{}\"\n\n[admin]\naddr = \"{}\"\n\n\
                 [[clusters]]\nname = \"hello\"\nendpoints = [{{ addr = \"{}\" }}]\n\n\
                 [[routes]]\ncluster = \"hello\"\n",
                s.listen, s.admin, s.backend
            ),
        )?;
        // Not through taskset: the upgrade starts the binary at lb's own path.
        let mut cmd = Command::new(&s.lb);
        cmd.args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn");
        let log = std::fs::File::create(s.dir.join("lb.log"))?;
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting lb")?;
        procs::wait_listening(s.listen, &mut child)?;
        Ok(Lb {
            pid: child.id(),
            admin: s.admin,
            children: vec![child],
        })
    }
}

impl Upgradable for Lb {
    fn upgrade(&mut self) -> Result<()> {
        let mut c = TcpStream::connect(self.admin)?;
        c.set_read_timeout(Some(UPGRADE_BOUND))?;
        write!(
            c,
            "POST /upgrade HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.admin
        )?;
        let mut text = String::new();
        let _ = c.read_to_string(&mut text);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let Some(pid) = v["pid"].as_u64() else {
            bail!("lb's upgrade answered {text}");
        };
        let old = self.pid;
        self.pid = pid as u32;
        wait_gone(old, &mut self.children)
    }

    fn stop(&mut self) {
        signal(self.pid, libc::SIGTERM);
        let _ = wait_gone(self.pid, &mut self.children);
    }
}

// ---------- nginx ----------

struct Nginx {
    dir: PathBuf,
    master: u32,
    children: Vec<Child>,
}

impl Nginx {
    fn start(s: &Setup) -> Result<Nginx> {
        let d = s.dir.display();
        let conf = s.dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon on;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/nginx-error.log warn;\nevents {{ worker_connections 4096; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n\
                 upstream hello {{ server {}; keepalive 64; }}\n\
                 server {{\n    listen {};\n    location / {{ proxy_pass http://hello; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
                s.backend, s.listen
            ),
        )?;
        let _ = std::fs::remove_file(s.dir.join("nginx.pid"));
        let _ = std::fs::remove_file(s.dir.join("nginx.pid.oldbin"));
        // As nginx runs in production: a daemon. Its master takes USR2 only once the process
        // that started it is gone (it ignores the signal while its parent is the one it
        // started with, taking it for an upgrade's old binary). USR2 starts argv[0] again:
        // the absolute path.
        let mut cmd = Command::new("/usr/sbin/nginx");
        cmd.arg("-c").arg(&conf).arg("-p").arg(&s.dir);
        let log = std::fs::File::create(s.dir.join("nginx.log"))?;
        let status = cmd
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .status()
            .context("starting nginx")?;
        if !status.success() {
            bail!("nginx exited with {status}; see nginx.log");
        }
        let mut n = Nginx {
            dir: s.dir.clone(),
            master: 0,
            children: Vec::new(),
        };
        let until = Instant::now() + UPGRADE_BOUND;
        n.master = loop {
            if let Some(p) = n.pid_file() {
                if TcpStream::connect(s.listen).is_ok() {
                    break p;
                }
            }
            if Instant::now() > until {
                bail!("nginx did not start serving on {}", s.listen);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(n)
    }

    fn pid_file(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("nginx.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// The children of process `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Upgradable for Nginx {
    fn upgrade(&mut self) -> Result<()> {
        let old = self.master;
        signal(old, libc::SIGUSR2);
        // The new master writes its PID file once it runs; it serves once it has a worker.
        let until = Instant::now() + UPGRADE_BOUND;
        let new = loop {
            if let Some(p) = self.pid_file().filter(|p| *p != old) {
                if children_of(p).iter().any(|c| !gone(*c)) {
                    break p;
                }
            }
            if Instant::now() > until {
                bail!("nginx's new master did not start within {UPGRADE_BOUND:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The old master: stop gracefully (its workers finish what they have).
        signal(old, libc::SIGQUIT);
        self.master = new;
        wait_gone(old, &mut self.children)
    }

    fn stop(&mut self) {
        signal(self.master, libc::SIGQUIT);
        let _ = wait_gone(self.master, &mut self.children);
    }
}

// ---------- HAProxy ----------

struct Haproxy {
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    pid: u32,
    children: Vec<Child>,
}

impl Haproxy {
    fn start(s: &Setup) -> Result<Haproxy> {
        let config = s.dir.join("haproxy.cfg");
        let socket = s.dir.join("haproxy.sock");
        let _ = std::fs::remove_file(&socket);
        std::fs::write(
            &config,
            format!(
                "global\n  nbthread 1\n  maxconn 4096\n  stats socket {} mode 600 level admin expose-fd listeners\n\n\
                 defaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\n\
                 frontend fe\n  bind {}\n  default_backend be\n\nbackend be\n  server hello {}\n",
                socket.display(),
                s.listen,
                s.backend
            ),
        )?;
        let mut h = Haproxy {
            config,
            socket,
            log: s.dir.join("haproxy.log"),
            pid: 0,
            children: Vec::new(),
        };
        let mut child = h.spawn(&[])?;
        procs::wait_listening(s.listen, &mut child)?;
        let until = Instant::now() + UPGRADE_BOUND;
        while !h.socket.exists() {
            if Instant::now() > until {
                bail!("HAProxy made no stats socket");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        h.pid = child.id();
        h.children.push(child);
        Ok(h)
    }

    fn spawn(&self, extra: &[String]) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        Command::new("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&self.config)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting HAProxy")
    }
}

impl Upgradable for Haproxy {
    fn upgrade(&mut self) -> Result<()> {
        let old = self.pid;
        let child = self.spawn(&[
            "-x".into(),
            self.socket.display().to_string(),
            "-sf".into(),
            old.to_string(),
        ])?;
        self.pid = child.id();
        self.children.push(child);
        wait_gone(old, &mut self.children)
    }

    fn stop(&mut self) {
        signal(self.pid, libc::SIGTERM);
        let _ = wait_gone(self.pid, &mut self.children);
    }
}

// ---------- the clients ----------

struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    fn start(addr: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let threads = [true, true, false, false]
            .into_iter()
            .map(|keepalive| {
                let (stop, served) = (stop.clone(), served.clone());
                std::thread::spawn(move || {
                    procs::pin_current_thread(1);
                    let mut conn: Option<TcpStream> = None;
                    let mut failed = 0;
                    let mut examples = Vec::new();
                    // Bounded: a run that never stops still ends.
                    let until = Instant::now() + Duration::from_secs(600);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        let r = if keepalive {
                            keepalive_get(addr, &mut conn)
                        } else {
                            TcpStream::connect(addr)
                                .map_err(|e| e.to_string())
                                .and_then(|mut s| get(&mut s, addr).map(|_| ()))
                        };
                        match r {
                            Ok(()) => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                failed += 1;
                                if examples.len() < 5 {
                                    examples.push(e);
                                }
                            }
                        }
                    }
                    (failed, examples)
                })
            })
            .collect();
        Load {
            stop,
            served,
            threads,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    fn wait_served(&self, n: u64) -> Result<()> {
        let until = Instant::now() + UPGRADE_BOUND;
        while self.served() < n {
            if Instant::now() > until {
                bail!("requests stopped being served ({} of {n})", self.served());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Stops the clients: requests served, failed, and a few failures' reasons.
    fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failed = 0;
        let mut examples = Vec::new();
        for t in self.threads {
            if let Ok((f, e)) = t.join() {
                failed += f;
                examples.extend(e);
            }
        }
        (self.served.load(Ordering::Relaxed), failed, examples)
    }
}

/// A GET on a kept-alive connection; on one the proxy closed before answering, once more on
/// a new connection.
fn keepalive_get(addr: SocketAddr, conn: &mut Option<TcpStream>) -> Result<(), String> {
    if let Some(s) = conn.as_mut() {
        match get(s, addr) {
            Ok(true) => return Ok(()),
            Ok(false) => {
                *conn = None;
                return Ok(());
            }
            Err(e) if e.starts_with("closed before") => *conn = None,
            Err(e) => {
                *conn = None;
                return Err(e);
            }
        }
    }
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let keep = get(&mut s, addr)?;
    if keep {
        *conn = Some(s);
    }
    Ok(())
}

/// One GET on `s`: `Ok(keep)` for a 200 (whether the connection stays open), `Err` with
/// why otherwise. "closed before ..." means no byte of the answer came.
fn get(s: &mut TcpStream, addr: SocketAddr) -> Result<bool, String> {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("closed before the request was sent: {e}"))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = match s.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err("closed before any byte of the answer".into()),
            Err(e) if buf.is_empty() && e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err("closed before any byte of the answer (reset)".into())
            }
            Ok(0) => return Err("closed in the middle of the head".into()),
            Ok(n) => n,
            Err(e) => return Err(format!("read: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no Content-Length")?;
    while buf.len() < head_end + length {
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed in the middle of the body".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(!head.contains("connection: close"))
}

/// The report's section.
pub fn markdown(v: &Value) -> String {
    let mut s = format!(
        "## Binary upgrades under load\n\n{} upgrades back to back per proxy, two keep-alive and two new-connection clients (`--scenario upgrades`).\n\n\
         | proxy | how | requests | failed | failed per upgrade | s per upgrade |\n|---|---|---|---|---|---|\n",
        v["upgrades"]
    );
    for r in v["rows"].as_array().into_iter().flatten() {
        let f = &r["figures"];
        let how = match r["proxy"].as_str() {
            Some("lb") => "`POST /upgrade` (SCM_RIGHTS)",
            Some("nginx") => "USR2, then QUIT to the old master",
            Some("haproxy") => "`-x` socket transfer, `-sf`",
            _ => "",
        };
        s.push_str(&format!(
            "| {} | {how} | {} | {} | {:.2} | {:.2} |\n",
            r["proxy"].as_str().unwrap_or(""),
            f["requests"],
            f["failed"],
            f["failed_per_upgrade"].as_f64().unwrap_or(0.0),
            f["seconds_per_upgrade"].as_f64().unwrap_or(0.0),
        ));
    }
    for r in v["rows"].as_array().into_iter().flatten() {
        if let Some(list) = r["figures"]["failures"]
            .as_array()
            .filter(|l| !l.is_empty())
        {
            s.push_str(&format!(
                "\n{} failures, first few: {}\n",
                r["proxy"].as_str().unwrap_or(""),
                list.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
    s
}
