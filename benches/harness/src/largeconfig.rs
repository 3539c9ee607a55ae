//! The large-config scenario: lb and nginx with the same 1, 1,000 and 20,000 routes, made
//! from one description ([`Routes`]): prefixes, exact paths, host names and patterns in
//! turn (nginx: prefix, `=`, `server_name` and regex locations). For each size and proxy:
//! start time and RSS; requests/s for the first route, the last and no match; reload time
//! and RSS after 10 reloads; lb's scrape size; and for 20,000 routes, lb's worst request
//! latency while reloads run under load.
//!
//! nginx runs with a master process here (a reload needs one); its RSS is the master's and
//! the workers' together.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::procs::{self, Proc};
use crate::Opts;

/// The route counts measured.
const SIZES: [usize; 3] = [1, 1_000, 20_000];
/// Reloads per size (RSS is read after the last).
const RELOADS: usize = 10;
/// Seconds of load per requests/s figure.
const LOAD_SECONDS: u64 = 3;

/// One generated route: what it matches, and a request it takes.
#[derive(Debug, Clone)]
enum Route {
    Prefix(String),
    Exact(String),
    Host(String),
    /// An lb pattern with one parameter, `/pN/:id/items`.
    Pattern(usize),
}

impl Route {
    fn nth(i: usize) -> Route {
        match i % 4 {
            0 => Route::Prefix(format!("/tenant{i}/")),
            1 => Route::Exact(format!("/exact/{i}")),
            2 => Route::Host(format!("t{i}.example.com")),
            _ => Route::Pattern(i),
        }
    }

    /// (path, Host header) of a request this route takes.
    fn request(&self) -> (String, String) {
        match self {
            Route::Prefix(p) => (format!("{p}x"), "bench".into()),
            Route::Exact(p) => (p.clone(), "bench".into()),
            Route::Host(h) => ("/".into(), h.clone()),
            Route::Pattern(i) => (format!("/p{i}/7/items"), "bench".into()),
        }
    }
}

/// The routes of one size, and the two proxies' configs made from them.
struct Routes(Vec<Route>);

impl Routes {
    fn new(n: usize) -> Routes {
        Routes((0..n).map(Route::nth).collect())
    }

    fn lb_toml(&self, listen: SocketAddr, admin: SocketAddr, backend: SocketAddr) -> String {
        let mut s = format!(
            "[server]\nworkers = 1\npin_workers = false\n\n[[listeners]]\naddr = \"{listen}\"\n\n\
             [admin]\naddr = \"{admin}\"\n\n[[clusters]]\nname = \"hello\"\n\
             endpoints = [{{ addr = \"{backend}\" }}]\n\n"
        );
        for (i, r) in self.0.iter().enumerate() {
            let m = match r {
                Route::Prefix(p) => format!("path_prefix = \"{p}\""),
                Route::Exact(p) => format!("path = \"{p}\""),
                Route::Host(h) => format!("host = \"{h}\""),
                Route::Pattern(i) => format!("path_pattern = \"/p{i}/:id/items\""),
            };
            s.push_str(&format!(
                "[[routes]]\nname = \"r{i}\"\n{m}\ncluster = \"hello\"\n"
            ));
        }
        s
    }

    fn nginx_conf(&self, listen: SocketAddr, backend: SocketAddr, dir: &Path) -> String {
        let pass = "{ proxy_pass http://hello; proxy_http_version 1.1; proxy_set_header Connection \"\"; }";
        let mut locations = String::new();
        let mut servers = String::new();
        for r in &self.0 {
            match r {
                Route::Prefix(p) => locations.push_str(&format!("    location {p} {pass}\n")),
                Route::Exact(p) => locations.push_str(&format!("    location = {p} {pass}\n")),
                Route::Pattern(i) => {
                    locations.push_str(&format!("    location ~ ^/p{i}/[^/]+/items$ {pass}\n"))
                }
                Route::Host(h) => servers.push_str(&format!(
                    "  server {{ listen {listen}; server_name {h}; location / {pass} }}\n"
                )),
            }
        }
        let d = dir.display();
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx-lc.pid;\n\
             error_log {d}/nginx-lc-error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  server_names_hash_max_size 131072;\n\
             server_names_hash_bucket_size 128;\n  client_body_temp_path {d}/nginx-body;\n\
             proxy_temp_path {d}/nginx-proxy;\n  upstream hello {{ server {backend}; keepalive 64; }}\n\
             server {{\n    listen {listen} default_server;\n    server_name _;\n{locations}\
                 location / {{ return 404; }}\n  }}\n{servers}}}\n"
        )
    }
}

/// One GET on a new connection; the status.
fn status_of(addr: SocketAddr, path: &str, host: &str) -> Result<u16> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {text:?}"))
}

/// wrk on the load core: (requests/s, p99 ms, max ms).
fn load(addr: SocketAddr, path: &str, host: &str, seconds: u64) -> Result<(f64, f64, f64)> {
    let mut c = procs::pinned(1, Path::new("/usr/bin/wrk"));
    c.args([
        "-t1",
        "-c32",
        &format!("-d{seconds}s"),
        "--latency",
        "--timeout",
        "10s",
    ])
    .args(["-H", &format!("Host: {host}")])
    .arg(format!("http://{addr}{path}"));
    let out = c.output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rps, _, p99, _) =
        crate::scenarios::parse_wrk(&text).with_context(|| format!("wrk said:\n{text}"))?;
    // "Latency   avg   stdev   max   +/- stdev"
    let max = text
        .lines()
        .find(|l| l.trim_start().starts_with("Latency"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(crate::scenarios::to_ms)
        .unwrap_or(0.0);
    Ok((rps, p99, max))
}

/// [`rss_tree`] once it held still for 1.5 s (at most 15 s): lb frees a replaced
/// snapshot once its worker next looks (within a second), nginx's old workers exit.
fn settled_rss(pid: u32) -> u64 {
    let until = Instant::now() + Duration::from_secs(15);
    let mut last = rss_tree(pid);
    let mut since = Instant::now();
    while Instant::now() < until && since.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(100));
        let now = rss_tree(pid);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

/// Resident memory of `pid` and its children, KiB.
fn rss_tree(pid: u32) -> u64 {
    let mut total = procs::status_kib(pid, "VmRSS").unwrap_or(0);
    for c in children(pid) {
        total += procs::status_kib(c, "VmRSS").unwrap_or(0);
    }
    total
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// lb's admin: POST /reload; the seconds it took.
fn lb_reload(admin: SocketAddr) -> Result<f64> {
    let started = Instant::now();
    let mut s = TcpStream::connect(admin)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(
        format!("POST /reload HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    if !buf.starts_with(b"HTTP/1.1 200") {
        bail!("reload failed: {}", String::from_utf8_lossy(&buf));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// nginx: SIGHUP to the master; the seconds until every worker is a new one.
fn nginx_reload(master: u32) -> Result<f64> {
    let before = children(master);
    let started = Instant::now();
    // SAFETY: kill with a PID this harness started and a valid signal number.
    if unsafe { libc::kill(master as i32, libc::SIGHUP) } != 0 {
        bail!("SIGHUP to nginx failed");
    }
    let until = started + Duration::from_secs(120);
    loop {
        let now = children(master);
        if !now.is_empty() && now.iter().all(|c| !before.contains(c)) {
            return Ok(started.elapsed().as_secs_f64());
        }
        if Instant::now() > until {
            bail!("nginx did not replace its workers within 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn scrape_bytes(admin: SocketAddr) -> Result<usize> {
    let mut s = TcpStream::connect(admin)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let body = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| buf.len() - i - 4);
    Ok(body)
}

/// Runs the scenario for lb and nginx (those of `opts.proxies`); the report section.
pub fn run(opts: &Opts) -> Result<Value> {
    let crate::scenarios::ScenarioBase {
        dir,
        listen,
        admin,
        backend,
        hello: backend_proc,
    } = crate::scenarios::scenario_base(opts, "large-config", 30)?;
    let setup = Setup {
        lb: opts.lb.clone(),
        dir: dir.clone(),
        listen,
        admin,
        backend,
    };
    let mut rows = Vec::new();
    for n in SIZES {
        let routes = Routes::new(n);
        for proxy in opts.proxies.iter().filter(|p| *p == "lb" || *p == "nginx") {
            let row = measure(proxy, &routes, &setup)
                .with_context(|| format!("{proxy} with {n} routes"))?;
            eprintln!("large_config {proxy} {n}: {row}");
            rows.push(json!({ "proxy": proxy, "routes": n, "figures": row }));
        }
    }
    drop(backend_proc);
    Ok(json!({ "sizes": SIZES, "rows": rows }))
}

/// Where the scenario runs: the lb binary, its directory and its three addresses.
struct Setup {
    lb: std::path::PathBuf,
    dir: std::path::PathBuf,
    listen: SocketAddr,
    admin: SocketAddr,
    backend: SocketAddr,
}

fn measure(proxy: &str, routes: &Routes, setup: &Setup) -> Result<Value> {
    let Setup {
        lb,
        dir,
        listen,
        admin,
        backend,
    } = setup;
    let (listen, admin, backend) = (*listen, *admin, *backend);
    let first = &routes.0[0].request();
    let last = &routes.0[routes.0.len() - 1].request();
    procs::wait_port_free(listen);
    procs::wait_port_free(admin);
    let (cmd, log) = if proxy == "lb" {
        let path = dir.join("lb.toml");
        std::fs::write(&path, routes.lb_toml(listen, admin, backend))?;
        let mut c = procs::pinned(0, lb);
        c.arg("run")
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn");
        (c, dir.join("lb.log"))
    } else {
        let path = dir.join("nginx.conf");
        std::fs::write(&path, routes.nginx_conf(listen, backend, dir))?;
        let mut c = procs::pinned(0, Path::new("/usr/sbin/nginx"));
        c.arg("-c").arg(&path).arg("-p").arg(dir);
        (c, dir.join("nginx.log"))
    };
    let started = Instant::now();
    let mut proc = Proc::spawn(proxy, cmd, &log)?;
    procs::wait_listening(listen, &mut proc.child)
        .with_context(|| format!("{proxy} did not start; see {}", log.display()))?;
    let start_s = started.elapsed().as_secs_f64();
    if proxy == "lb" {
        procs::wait_listening(admin, &mut proc.child)?;
    }
    let pid = proc.pid();
    std::thread::sleep(Duration::from_millis(500));
    let rss_start = rss_tree(pid);
    for (what, (path, host), want) in [("first", first, 200), ("last", last, 200)] {
        let got = status_of(listen, path, host)?;
        if got != want {
            bail!("the {what} route ({host}{path}) answered {got}");
        }
    }
    if status_of(listen, "/nomatch/x", "bench")? != 404 {
        bail!("a request no route takes was not answered 404");
    }
    let (rps_first, _, _) = load(listen, &first.0, &first.1, LOAD_SECONDS)?;
    let (rps_last, _, _) = load(listen, &last.0, &last.1, LOAD_SECONDS)?;
    let (rps_none, _, _) = load(listen, "/nomatch/x", "bench", LOAD_SECONDS)?;
    let reload = || {
        if proxy == "lb" {
            lb_reload(admin)
        } else {
            nginx_reload(pid)
        }
    };
    let mut reloads = vec![reload()?];
    let rss_first_reload = settled_rss(pid);
    for _ in 1..RELOADS {
        reloads.push(reload()?);
    }
    let rss_reloads = settled_rss(pid);
    let mut out = json!({
        "start_s": start_s,
        "rss_start_kib": rss_start,
        "rps_first": rps_first,
        "rps_last": rps_last,
        "rps_no_match": rps_none,
        "reload_s": crate::report::median(reloads.iter().copied()),
        "rss_after_first_reload_kib": rss_first_reload,
        "rss_after_reloads_kib": rss_reloads,
    });
    if proxy == "lb" {
        out["scrape_bytes"] = json!(scrape_bytes(admin)?);
        if routes.0.len() >= 20_000 {
            for _ in RELOADS..50 {
                lb_reload(admin)?;
            }
            out["rss_after_50_reloads_kib"] = json!(settled_rss(pid));
            // Reloads back to back under load on the first route: the worst latency.
            let reloader = std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(LOAD_SECONDS);
                let mut n = 0;
                std::thread::sleep(Duration::from_millis(300));
                while Instant::now() < until && lb_reload(admin).is_ok() {
                    n += 1;
                }
                n
            });
            let (_, p99, max) = load(listen, &first.0, &first.1, LOAD_SECONDS + 1)?;
            let n = reloader.join().unwrap_or(0);
            out["during_reloads"] = json!({ "reloads": n, "p99_ms": p99, "max_ms": max });
            let (_, p99, max) = load(listen, &first.0, &first.1, LOAD_SECONDS)?;
            out["without_reloads"] = json!({ "p99_ms": p99, "max_ms": max });
        }
    }
    if proxy == "nginx" {
        // A killed master leaves its worker holding the port (which lb, with SO_REUSEPORT,
        // would share): let the master stop its workers first.
        stop_gracefully(&mut proc)?;
    }
    drop(proc);
    Ok(out)
}

/// SIGTERM, then waits (bounded) for the process to exit.
fn stop_gracefully(proc: &mut Proc) -> Result<()> {
    // SAFETY: kill with the PID of a child this harness started and has not reaped.
    unsafe { libc::kill(proc.pid() as i32, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if proc.child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("nginx did not stop within 30 s of SIGTERM")
}

/// The report's Markdown section.
pub fn markdown(v: &Value) -> String {
    let mut s = String::from(
        "## Large configs\n\nlb and nginx with the same routes (prefixes, exact paths, hosts and \
         patterns in turn; nginx: prefix, `=`, `server_name` and regex locations), one worker each.\n\n\
         | proxy | routes | start s | RSS at start MiB | req/s first | req/s last | req/s no match | reload s | RSS after 1 / 10 reloads MiB | scrape KiB |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let empty = Vec::new();
    let rows = v["rows"].as_array().unwrap_or(&empty);
    for r in rows {
        let f = &r["figures"];
        let num = |k: &str| f[k].as_f64().unwrap_or(0.0);
        s.push_str(&format!(
            "| {} | {} | {:.2} | {:.1} | {:.0} | {:.0} | {:.0} | {:.3} | {:.1} / {:.1} | {} |\n",
            r["proxy"].as_str().unwrap_or(""),
            r["routes"],
            num("start_s"),
            num("rss_start_kib") / 1024.0,
            num("rps_first"),
            num("rps_last"),
            num("rps_no_match"),
            num("reload_s"),
            num("rss_after_first_reload_kib") / 1024.0,
            num("rss_after_reloads_kib") / 1024.0,
            f["scrape_bytes"]
                .as_f64()
                .map_or("-".into(), |b| format!("{:.1}", b / 1024.0)),
        ));
    }
    for r in rows {
        let f = &r["figures"];
        if let Some(d) = f.get("during_reloads") {
            s.push_str(&format!(
                "\nlb with {} routes under load on the first route: {} reloads back to back gave \
                 p99 {} ms and worst {} ms; without reloads p99 {} ms and worst {} ms.\n",
                r["routes"],
                d["reloads"],
                d["p99_ms"],
                d["max_ms"],
                f["without_reloads"]["p99_ms"],
                f["without_reloads"]["max_ms"]
            ));
        }
        if r["proxy"] == "lb" {
            let n = r["routes"].as_f64().unwrap_or(1.0);
            if n >= 20_000.0 {
                let kib = |k: &str| f[k].as_f64().unwrap_or(0.0);
                // Memory per route: against lb with one route, measured the same way.
                let one = rows
                    .iter()
                    .find(|o| o["proxy"] == "lb" && o["routes"] == 1)
                    .and_then(|o| o["figures"]["rss_start_kib"].as_f64())
                    .unwrap_or(0.0);
                let ratio =
                    kib("rss_after_50_reloads_kib") / kib("rss_after_first_reload_kib").max(1.0);
                s.push_str(&format!(
                    "\nlb with {n} routes: {:.1} KiB of RSS per route at start (over lb with one \
                     route); RSS after 50 reloads of the same config is {ratio:.2}x that after \
                     the first (target: at most 1.3x).\n",
                    (kib("rss_start_kib") - one) / n,
                ));
            }
        }
    }
    s
}
