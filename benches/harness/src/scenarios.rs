//! The scenarios, the proxies' configs, wrk runs and the fixed-rate latency probe.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{self, Proc};
use crate::Opts;

/// One proxy in one round of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_us_per_req: f64,
    pub peak_rss_kib: u64,
    pub requests: u64,
    /// Idle scenario only: KiB per idle connection.
    pub kib_per_conn: Option<f64>,
    /// Fixed-rate latency (small keep-alive scenario only).
    pub fixed_rate: Option<(f64, f64, f64)>,
    /// Share of the measured run the proxy's process was on a CPU (1.0: its core was full).
    pub proxy_busy: Option<f64>,
    /// Share of the measured run the load core (wrk and the backend) was busy. Near 1.0 the
    /// load side, not the proxy, set the pace, and the proxy's req/s is a lower bound.
    pub load_busy: Option<f64>,
}

/// All samples: scenario -> proxy -> rounds.
pub type Results = Vec<(String, Vec<(String, Vec<Sample>)>)>;

struct Ports {
    backend: SocketAddr,
    lb: SocketAddr,
    nginx: SocketAddr,
    haproxy: SocketAddr,
    lb_tls: SocketAddr,
    nginx_tls: SocketAddr,
    haproxy_tls: SocketAddr,
    /// The hello backend's gRPC (h2c) listener.
    grpc_backend: SocketAddr,
}

fn ports(base: u16) -> Ports {
    let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], base + p));
    Ports {
        backend: a(1),
        lb: a(2),
        nginx: a(3),
        haproxy: a(4),
        lb_tls: a(5),
        nginx_tls: a(6),
        haproxy_tls: a(7),
        grpc_backend: a(8),
    }
}

impl Ports {
    /// The TLS listener of proxy `name`.
    fn tls(&self, name: &str) -> SocketAddr {
        match name {
            "lb" => self.lb_tls,
            "nginx" => self.nginx_tls,
            _ => self.haproxy_tls,
        }
    }
}

/// The certificate every proxy serves on its TLS listener: an ECDSA P-256 leaf for
/// `bench.test` from a CA made here (`tls-ca.pem`), as `tls.crt`/`tls.key`, and both in one
/// file for HAProxy (`tls.pem`).
fn write_certificate(dir: &Path) -> Result<()> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "lb bench CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec![TLS_NAME.to_string()])?.signed_by(&key, &ca)?;
    std::fs::write(dir.join("tls-ca.pem"), ca.pem())?;
    std::fs::write(dir.join("tls.crt"), leaf.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    std::fs::write(
        dir.join("tls.pem"),
        format!("{}{}", leaf.pem(), key.serialize_pem()),
    )?;
    Ok(())
}

/// The name on the benchmark certificate.
const TLS_NAME: &str = "bench.test";

/// Writes the three proxies' configurations so that they do the same work.
///
/// `lb` runs with its production defaults: it passes the client's Host, adds
/// X-Forwarded-For, X-Forwarded-Proto and X-Forwarded-Host, and adds Via to the
/// request and the response. nginx and HAProxy are told to do the same, so no
/// proxy wins by skipping header work or by sending the backend a shorter head.
/// `samework::check` verifies this on the wire before any load runs.
fn write_configs(dir: &Path, p: &Ports, opts: &Opts) -> Result<()> {
    let fds = opts.fd_limit;
    let maxconn = opts.idle + 100;
    write_certificate(dir)?;
    let d = dir.display();
    std::fs::write(
        dir.join("lb.toml"),
        format!(
            "[server]\nworkers = 1\npin_workers = false\n\n[[listeners]]\naddr = \"{}\"\n\n\
             [[listeners]]\nname = \"tls\"\naddr = \"{}\"\nprotocols = [\"h2\", \"http/1.1\"]\ntls = {{ certificates = [{{ cert = \"{d}/tls.crt\", key = \"{d}/tls.key\" }}] }}\n\n\
             [http]\nmax_request_body = \"4MiB\"\n\n\
             [[clusters]]\nname = \"hello\"\nendpoints = [{{ addr = \"{}\" }}]\n\n\
             [[clusters]]\nname = \"grpc\"\nprotocol = \"h2c\"\nendpoints = [{{ addr = \"{}\" }}]\n\n\
             [[routes]]\nname = \"grpc\"\npath_prefix = \"{GRPC_SERVICE}\"\ncluster = \"grpc\"\n\n\
             [[routes]]\ncluster = \"hello\"\n",
            p.lb, p.lb_tls, p.backend, p.grpc_backend
        ),
    )?;
    // The same proxying for nginx's plain and TLS servers.
    let nginx_location = "location / {\n      proxy_pass http://hello;\n\
                   proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_request_buffering off;\n\
                   proxy_set_header Host $http_host;\n      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
                   proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_set_header X-Forwarded-Host $http_host;\n\
                   proxy_set_header Via \"1.1 nginx\";\n      add_header Via \"1.1 nginx\";\n    }";
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile {fds};\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log warn;\n\
             events {{ worker_connections {fds}; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_max_body_size 4m;\n\
               client_body_temp_path {dir}/nginx-body;\n  proxy_temp_path {dir}/nginx-proxy;\n\
               upstream hello {{ server {}; keepalive 1024; }}\n  server {{\n    listen {};\n    {nginx_location}\n  }}\n\
               server {{\n    listen {} ssl http2;\n    ssl_certificate {d}/tls.crt;\n    ssl_certificate_key {d}/tls.key;\n\
                   ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache shared:SSL:10m;\n    ssl_session_tickets on;\n\
                   location {GRPC_SERVICE} {{ grpc_pass grpc://grpcb; }}\n\
                   {nginx_location}\n  }}\n\
               upstream grpcb {{ server {}; keepalive 1024; }}\n}}\n",
            p.backend,
            p.nginx,
            p.nginx_tls,
            p.grpc_backend,
            dir = dir.display()
        ),
    )?;
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n  nbthread 1\n  maxconn {maxconn}\n  no strict-limits\n\ndefaults\n  mode http\n  option http-keep-alive\n  http-reuse always\n\
               timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout http-keep-alive 60s\n\n\
             frontend fe\n  bind {}\n  option forwardfor\n  http-request set-header X-Forwarded-Proto http\n\
               http-request set-header X-Forwarded-Host %[req.hdr(host)]\n  http-request add-header Via \"1.1 haproxy\"\n\
               http-response add-header Via \"1.1 haproxy\"\n  default_backend be\n\n\
             frontend fe_tls\n  bind {} ssl crt {d}/tls.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2\n  option forwardfor\n\
               http-request set-header X-Forwarded-Proto https\n\
               http-request set-header X-Forwarded-Host %[req.hdr(host)]\n  http-request add-header Via \"1.1 haproxy\"\n\
               http-response add-header Via \"1.1 haproxy\"\n  use_backend be_grpc if {{ path_beg {GRPC_SERVICE} }}\n  default_backend be\n\n\
             backend be\n  server hello {}\n\nbackend be_grpc\n  server grpc {} proto h2\n",
            p.haproxy, p.haproxy_tls, p.backend, p.grpc_backend
        ),
    )?;
    // One unary call's request: a length-prefixed message (field 1, the string "world").
    std::fs::write(
        dir.join("grpc-request.bin"),
        b"\x00\x00\x00\x00\x07\x0a\x05world",
    )?;
    std::fs::write(
        dir.join("upload.lua"),
        "wrk.method = \"POST\"\nwrk.path = \"/upload\"\nwrk.body = string.rep(\"a\", 1048576)\n",
    )?;
    Ok(())
}

fn start_proxy(name: &str, opts: &Opts, dir: &Path, p: &Ports) -> Result<(Proc, SocketAddr)> {
    for a in [p.lb, p.nginx, p.haproxy] {
        procs::wait_port_free(a);
    }
    let (cmd, addr) = match name {
        "lb" => {
            let mut c = procs::pinned(0, &opts.lb);
            c.arg("run").arg("--config").arg(dir.join("lb.toml")).env(
                "RUST_LOG",
                std::env::var("LB_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            );
            (c, p.lb)
        }
        "nginx" => {
            let mut c = procs::pinned(0, Path::new("/usr/sbin/nginx"));
            c.arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(dir);
            std::fs::create_dir_all(dir.join("nginx-body"))?;
            std::fs::create_dir_all(dir.join("nginx-proxy"))?;
            (c, p.nginx)
        }
        "haproxy" => {
            let mut c = procs::pinned(0, Path::new("/usr/sbin/haproxy"));
            c.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
            (c, p.haproxy)
        }
        other => bail!("unknown proxy {other}"),
    };
    let mut proc = Proc::spawn(name, cmd, &dir.join(format!("{name}.log")))?;
    procs::wait_listening(addr, &mut proc.child)
        .with_context(|| format!("{name} did not start; see {}/{name}.log", dir.display()))?;
    Ok((proc, addr))
}

/// Follows taskset to the proxy process itself.
fn proxy_pid(proc: &Proc) -> u32 {
    // taskset execs the program, so the PID is the proxy's.
    proc.pid()
}

/// The core of the backend and the load generator (the proxy has core 0).
const LOAD_CORE: usize = 1;

/// Runs wrk on core 1 against `http://addr/path` (`https://` for a TLS listener) and
/// parses its report.
fn wrk(
    addr: Target,
    path: &str,
    connections: usize,
    seconds: u64,
    extra: &[&str],
    dir: &Path,
) -> Result<(f64, f64, f64, u64)> {
    let mut c = procs::pinned(1, Path::new("/usr/bin/wrk"));
    c.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
        "--timeout",
        "10s",
    ]);
    c.args(extra);
    c.arg(match addr {
        Target::Plain(a) => format!("http://{a}{path}"),
        Target::Tls(a) => format!("https://{a}{path}"),
    });
    c.current_dir(dir);
    let out = c.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_wrk(&text).with_context(|| {
        format!(
            "unexpected wrk output:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn to_ms(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// (requests/s, p50 ms, p99 ms, requests).
pub fn parse_wrk(text: &str) -> Option<(f64, f64, f64, u64)> {
    let rps: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let pct = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).and_then(to_ms))
    };
    let requests: u64 = text.lines().find_map(|l| {
        l.trim()
            .split(" requests in ")
            .next()
            .filter(|_| l.contains(" requests in "))?
            .trim()
            .parse()
            .ok()
    })?;
    Some((rps, pct("50%")?, pct("99%")?, requests))
}

/// Open-loop load at `rate` requests/s for `seconds` over `conns` keep-alive connections,
/// from one thread on the load core (see `openloop.rs`); (p50, p99) in milliseconds,
/// counted from when each request was due.
fn fixed_rate(addr: SocketAddr, rate: f64, seconds: u64, conns: usize) -> Result<(f64, f64)> {
    let load = std::thread::spawn(move || {
        procs::pin_current_thread(LOAD_CORE);
        crate::openloop::run(addr, rate, seconds, conns)
    });
    let mut all = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    all.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Ok((q(0.50), q(0.99)))
}

/// Opens `n` keep-alive connections that each complete one request, then reports the
/// proxy's resident memory growth per connection.
fn idle_connections(addr: SocketAddr, pid: u32, n: usize) -> Result<f64> {
    let ask = |s: &mut TcpStream| -> Result<()> {
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut buf = [0u8; 1024];
        let mut got = 0;
        while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") || got < 50 {
            let r = s.read(&mut buf[got..])?;
            if r == 0 {
                bail!("closed");
            }
            got += r;
        }
        Ok(())
    };
    let mut warm = TcpStream::connect(addr)?;
    ask(&mut warm)?;
    std::thread::sleep(Duration::from_millis(200));
    let before = procs::status_kib(pid, "VmRSS")?;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).with_context(|| format!("connection {i}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        ask(&mut s).with_context(|| format!("request on connection {i}"))?;
        held.push(s);
    }
    let after = settled_rss(pid)?;
    drop(held);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// The proxy's resident memory once it stops changing: the same reading for [`STILL`] (each
/// proxy frees a burst's buffers on its own schedule), or the last after [`SETTLE_MAX`].
fn settled_rss(pid: u32) -> Result<u64> {
    let until = Instant::now() + SETTLE_MAX;
    let mut last = procs::status_kib(pid, "VmRSS")?;
    let mut since = Instant::now();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        let now = procs::status_kib(pid, "VmRSS")?;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= STILL {
            break;
        }
    }
    Ok(last)
}

/// How long the RSS must hold still to count as settled. lb releases a pool's buffers once
/// they stayed unused through a whole one-second sweep interval, so up to two seconds after
/// a burst; a one-second window caught it before that about half of the time (0.18 KiB per
/// connection in one run, 0.6 in the next).
const STILL: Duration = Duration::from_millis(2500);
/// The longest wait for the RSS to settle.
const SETTLE_MAX: Duration = Duration::from_secs(10);

/// Records where lb's time goes while wrk drives the small keep-alive load.
fn profile_lb(opts: &Opts, dir: &Path, p: &Ports) -> Result<serde_json::Value> {
    let (proc, addr) = start_proxy("lb", opts, dir, p)?;
    let pid = proxy_pid(&proc);
    let _ = wrk(Target::Plain(addr), "/", 8, 1, &[], dir);
    let seconds = opts.seconds.max(2);
    let load_dir = dir.to_path_buf();
    // wrk runs a second longer than perf on both ends, so the samples are all under load.
    let load =
        std::thread::spawn(move || wrk(Target::Plain(addr), "/", 64, seconds + 2, &[], &load_dir));
    std::thread::sleep(Duration::from_secs(1));
    let profile = crate::profile::record(pid, seconds, dir);
    let _ = load.join();
    drop(proc);
    profile
}

/// What a whole run found.
pub struct Run {
    pub results: Results,
    pub profile: Option<serde_json::Value>,
    /// What each proxy forwarded in the same-work check.
    pub same_work: serde_json::Value,
    /// The large-config scenario's figures, when it ran.
    pub large_config: Option<serde_json::Value>,
    /// The upgrades scenario's figures, when it ran.
    pub upgrades: Option<serde_json::Value>,
    /// The fleet scenario's figures, when it ran.
    pub fleet: Option<serde_json::Value>,
}

/// Writes the configs and checks on the wire that the proxies do the same work.
pub fn check_same_work(opts: &Opts) -> Result<serde_json::Value> {
    let dir = opts.out.join("run");
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let p = ports(opts.base_port);
    write_configs(&dir, &p, opts)?;
    let seen = crate::samework::check(&opts.proxies, p.backend, |name| {
        start_proxy(name, opts, &dir, &p)
    })?;
    Ok(crate::samework::to_json(&seen))
}

/// Checks that the proxies do the same work, then runs every selected scenario, rounds
/// interleaved across proxies.
pub fn run_all(opts: &Opts) -> Result<Run> {
    // Before the hello backend takes the port the check's capturing backend uses.
    let same_work = check_same_work(opts)?;
    let dir = opts.out.join("run").canonicalize()?;
    let p = ports(opts.base_port);
    let mut backend_cmd = procs::pinned(1, &opts.hello);
    backend_cmd
        .arg(p.backend.to_string())
        .arg(p.grpc_backend.to_string());
    let mut backend = Proc::spawn("hello", backend_cmd, &dir.join("hello.log"))?;
    procs::wait_listening(p.backend, &mut backend.child)?;
    procs::wait_listening(p.grpc_backend, &mut backend.child)?;

    let mut results: Results = Vec::new();
    // Not a per-proxy sample: it runs its own proxies with configs of its own, after the rest.
    for scenario in opts
        .scenarios
        .iter()
        .filter(|s| *s != "large_config" && *s != "upgrades" && *s != "fleet")
    {
        let mut per_proxy: Vec<(String, Vec<Sample>)> = opts
            .proxies
            .iter()
            .map(|p| (p.clone(), Vec::new()))
            .collect();
        for round in 0..opts.rounds {
            for (name, samples) in per_proxy.iter_mut() {
                eprintln!("bench: {scenario}, round {}, {name}", round + 1);
                let (proc, addr) = start_proxy(name, opts, &dir, &p)?;
                let pid = proxy_pid(&proc);
                let sample = run_one(scenario, addr, p.tls(name), pid, opts, &dir)?;
                samples.push(sample);
                drop(proc);
            }
        }
        results.push((scenario.clone(), per_proxy));
    }
    // Latency at a fixed offered rate every proxy sustains: half the slowest median rate of
    // the small keep-alive scenario.
    if let Some((_, per_proxy)) = results.iter_mut().find(|(s, _)| s == "small_keepalive") {
        let slowest = per_proxy
            .iter()
            .map(|(_, s)| crate::report::median(s.iter().map(|x| x.rps)))
            .fold(f64::INFINITY, f64::min);
        let rate = (slowest * 0.5).max(100.0);
        // Rounds interleaved like the rest; the report takes the medians.
        for round in 0..opts.rounds {
            for (name, samples) in per_proxy.iter_mut() {
                eprintln!("bench: fixed rate {rate:.0}/s, round {}, {name}", round + 1);
                let (proc, addr) = start_proxy(name, opts, &dir, &p)?;
                let (p50, p99) = fixed_rate(addr, rate, opts.seconds, 8)?;
                drop(proc);
                if let Some(s) = samples.get_mut(round) {
                    s.fixed_rate = Some((rate, p50, p99));
                }
            }
        }
    }
    let profile = if opts.profile
        && opts.proxies.iter().any(|p| p == "lb")
        && opts.scenarios.iter().any(|s| s == "small_keepalive")
        && crate::profile::available()
    {
        eprintln!("bench: profiling lb (small keep-alive)");
        match profile_lb(opts, &dir, &p) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("bench: no profile: {e:#}");
                None
            }
        }
    } else {
        None
    };
    drop(backend);
    let upgrades = if opts.scenarios.iter().any(|s| s == "upgrades") {
        eprintln!("bench: binary upgrades");
        Some(crate::upgrades::run(opts)?)
    } else {
        None
    };
    let large_config = if opts.scenarios.iter().any(|s| s == "large_config") {
        eprintln!("bench: large configs");
        Some(crate::largeconfig::run(opts)?)
    } else {
        None
    };
    let fleet = if opts.scenarios.iter().any(|s| s == "fleet") {
        eprintln!("bench: fleet canary analysis");
        Some(crate::fleet::run(opts)?)
    } else {
        None
    };
    Ok(Run {
        results,
        profile,
        same_work,
        large_config,
        upgrades,
        fleet,
    })
}

/// Where a scenario's load goes: a proxy's plain or TLS listener.
#[derive(Debug, Clone, Copy)]
enum Target {
    Plain(SocketAddr),
    Tls(SocketAddr),
}

fn run_one(
    scenario: &str,
    addr: SocketAddr,
    tls: SocketAddr,
    pid: u32,
    opts: &Opts,
    dir: &Path,
) -> Result<Sample> {
    if scenario == "idle_connections" || scenario == "tls_idle" {
        let kib = if scenario == "tls_idle" {
            idle_tls_connections(tls, pid, opts.idle.min(TLS_IDLE), dir)?
        } else {
            idle_connections(addr, pid, opts.idle)?
        };
        return Ok(Sample {
            kib_per_conn: Some(kib),
            peak_rss_kib: procs::status_kib(pid, "VmHWM")?,
            ..Sample::default()
        });
    }
    let target = if scenario.starts_with("tls_") {
        Target::Tls(tls)
    } else {
        Target::Plain(addr)
    };
    // Warm up: connections, pools, caches (and the TLS session cache).
    let _ = wrk(target, "/", 8, 1, &[], dir);
    let cpu_before = procs::cpu_us(pid)?;
    let load_before = procs::core_ticks(LOAD_CORE).ok();
    let started = std::time::Instant::now();
    let close = ["-H", "Connection: close"];
    let (rps, p50, p99, requests) = match scenario {
        "small_keepalive" | "tls_keepalive" => wrk(target, "/", 64, opts.seconds, &[], dir)?,
        "response_16k" | "tls_16k" => wrk(target, "/16k", 64, opts.seconds, &[], dir)?,
        "upload_1m" => wrk(
            target,
            "/upload",
            16,
            opts.seconds,
            &["-s", "upload.lua"],
            dir,
        )?,
        // A new connection per request; over TLS each is a full handshake (wrk keeps no
        // sessions).
        "new_connection" | "tls_handshake" => wrk(target, "/", 16, opts.seconds, &close, dir)?,
        "tls_resumed" => s_time_resumed(tls, opts.seconds)?,
        "h2_tls" => h2load(tls, opts.seconds, None)?,
        "grpc_unary" => h2load(tls, opts.seconds, Some(&dir.join("grpc-request.bin")))?,
        other => bail!("unknown scenario {other}"),
    };
    let cpu = procs::cpu_us(pid)?.saturating_sub(cpu_before);
    let wall_us = started.elapsed().as_micros().max(1) as f64;
    let load_busy = match (load_before, procs::core_ticks(LOAD_CORE).ok()) {
        (Some(a), Some(b)) => procs::busy_share(a, b),
        _ => None,
    };
    Ok(Sample {
        rps,
        p50_ms: p50,
        p99_ms: p99,
        cpu_us_per_req: if requests > 0 {
            cpu as f64 / requests as f64
        } else {
            0.0
        },
        peak_rss_kib: procs::status_kib(pid, "VmHWM")?,
        requests,
        kib_per_conn: None,
        fixed_rate: None,
        proxy_busy: Some(cpu as f64 / wall_us),
        load_busy,
    })
}

/// The gRPC service the gRPC scenario calls; each proxy routes its path prefix to the hello
/// backend's h2c listener (lb: an `h2c` cluster, nginx: `grpc_pass`, HAProxy: `proto h2`).
const GRPC_SERVICE: &str = "/bench.Echo/";

/// HTTP/2 over TLS: h2load on the load core, 64 connections with 10 streams each, for
/// `seconds`: small GETs, or with `grpc` unary gRPC calls whose request is that file.
/// (requests/s, mean ms, max ms, requests succeeded).
fn h2load(tls: SocketAddr, seconds: u64, grpc: Option<&Path>) -> Result<(f64, f64, f64, u64)> {
    let mut c = procs::pinned(LOAD_CORE, Path::new("/usr/bin/h2load"));
    c.args([
        "-t",
        "1",
        "-c",
        "64",
        "-m",
        "10",
        "-D",
        &seconds.to_string(),
    ]);
    match grpc {
        Some(request) => c
            .arg("-d")
            .arg(request)
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg(format!("https://{tls}{GRPC_SERVICE}Say")),
        None => c.arg(format!("https://{tls}/")),
    };
    let out = c.output().context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_h2load(&text).with_context(|| format!("unexpected h2load output:\n{text}"))
}

/// (requests/s, mean ms, max ms, succeeded) from h2load's report.
pub fn parse_h2load(text: &str) -> Option<(f64, f64, f64, u64)> {
    let rps: f64 = text
        .lines()
        .find(|l| l.starts_with("finished in"))?
        .split(", ")
        .find_map(|p| p.strip_suffix(" req/s"))?
        .trim()
        .parse()
        .ok()?;
    let succeeded: u64 = text
        .lines()
        .find(|l| l.starts_with("requests:"))?
        .split(", ")
        .find_map(|p| p.strip_suffix(" succeeded"))?
        .trim()
        .parse()
        .ok()?;
    let times = text
        .lines()
        .find(|l| l.trim_start().starts_with("time for request:"))?;
    let fields: Vec<&str> = times.split_whitespace().skip(3).collect();
    // min, max, mean, sd, +/- sd
    let max = fields.get(1).and_then(|v| to_ms(v)).unwrap_or(0.0);
    let mean = fields.get(2).and_then(|v| to_ms(v)).unwrap_or(0.0);
    Some((rps, mean, max, succeeded))
}

/// Idle TLS connections held in the TLS memory scenario (at most `--idle`).
const TLS_IDLE: usize = 2_000;
/// `openssl s_time` clients run at once in the resumed-handshake scenario.
const S_TIME_CLIENTS: usize = 4;

/// Resumed handshakes: [`S_TIME_CLIENTS`] `openssl s_time -reuse` clients on the load core,
/// each resuming its session for every new connection (and fetching `/` on it, which also
/// delivers TLS 1.3 tickets). Counts only connections s_time marks as reused ('r'), so a
/// proxy that fails to resume does no work that counts. (handshakes/s, 0, 0, handshakes).
fn s_time_resumed(tls: SocketAddr, seconds: u64) -> Result<(f64, f64, f64, u64)> {
    let started = Instant::now();
    let clients: Vec<_> = (0..S_TIME_CLIENTS)
        .map(|_| {
            let mut c = procs::pinned(LOAD_CORE, Path::new("/usr/bin/openssl"));
            c.args([
                "s_time",
                "-connect",
                &tls.to_string(),
                "-reuse",
                "-www",
                "/",
            ])
            .args(["-time", &seconds.to_string()]);
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null());
            c.spawn().context("openssl s_time")
        })
        .collect::<Result<_>>()?;
    let mut reused = 0u64;
    for c in clients {
        let out = c.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        // After "Now timing with session id reuse." each connection prints 'r' if resumed.
        let timed = text.split("session id reuse").nth(1).unwrap_or("");
        reused += timed
            .lines()
            .take_while(|l| !l.contains("connections in"))
            .map(|l| l.chars().filter(|&ch| ch == 'r').count() as u64)
            .sum::<u64>();
    }
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    if reused == 0 {
        bail!("s_time resumed no session");
    }
    Ok((reused as f64 / secs, 0.0, 0.0, reused))
}

/// Opens `n` TLS connections that each complete one request and stay open, then reports
/// the proxy's resident memory growth per connection.
fn idle_tls_connections(addr: SocketAddr, pid: u32, n: usize, dir: &Path) -> Result<f64> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_file(
        dir.join("tls-ca.pem"),
    )?)?;
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let open = || -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let name = rustls_pki_types::ServerName::try_from(TLS_NAME)?;
        let conn = rustls::ClientConnection::new(config.clone(), name)?;
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() < 50 {
            let r = s.read(&mut buf)?;
            if r == 0 {
                bail!("closed");
            }
            got.extend_from_slice(&buf[..r]);
        }
        Ok(s)
    };
    let warm = open()?;
    std::thread::sleep(Duration::from_millis(200));
    let before = procs::status_kib(pid, "VmRSS")?;
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        held.push(open().with_context(|| format!("TLS connection {i}"))?);
    }
    let after = settled_rss(pid)?;
    drop(held);
    drop(warm);
    Ok(after.saturating_sub(before) as f64 / n as f64)
}

/// What a scenario with proxies of its own starts from: its directory (with nginx's temp
/// directories), three loopback ports from `base_port + offset` (listener, admin API,
/// backend), and the hello backend listening on the third.
pub struct ScenarioBase {
    pub dir: std::path::PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub backend: SocketAddr,
    pub hello: procs::Proc,
}

pub fn scenario_base(opts: &crate::Opts, name: &str, offset: u16) -> Result<ScenarioBase> {
    let dir = opts.out.join(name);
    std::fs::create_dir_all(dir.join("nginx-body"))?;
    std::fs::create_dir_all(dir.join("nginx-proxy"))?;
    let dir = dir.canonicalize()?;
    let port = |i: u16| SocketAddr::from(([127, 0, 0, 1], opts.base_port + offset + i));
    let (listen, admin, backend) = (port(0), port(1), port(2));
    let mut cmd = procs::pinned(1, &opts.hello);
    cmd.arg(backend.to_string());
    let mut hello = procs::Proc::spawn("hello", cmd, &dir.join("hello.log"))?;
    procs::wait_listening(backend, &mut hello.child)?;
    Ok(ScenarioBase {
        dir,
        listen,
        admin,
        backend,
        hello,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn wrk_output() {
        let text = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 8 connections\n  Latency Distribution\n     50%  120.00us\n     75%  1.50ms\n     90%    2.00ms\n     99%    3.25ms\n  1234 requests in 1.00s, 100.00KB read\nRequests/sec:   1234.50\n";
        assert_eq!(super::parse_wrk(text), Some((1234.5, 0.12, 3.25, 1234)));
    }

    #[test]
    fn h2load_output() {
        let text = "finished in 5.00s, 47123.40 req/s, 2.10MB/s\nrequests: 235617 total, 235617 started, 235617 done, 235600 succeeded, 17 failed, 0 errored, 0 timeout\nstatus codes: 235600 2xx, 0 3xx, 0 4xx, 0 5xx\n                     min         max         mean         sd        +/- sd\ntime for request:      120us     25.31ms      6.50ms      1.20ms    70.00%\n";
        assert_eq!(
            super::parse_h2load(text),
            Some((47123.4, 6.5, 25.31, 235600))
        );
    }
}
