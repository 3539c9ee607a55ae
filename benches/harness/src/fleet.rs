//! The fleet scenario: how long a canary failing everywhere takes to be rolled back on every
//! appliance of a fleet that shares one etcd, for 3, 5 and 10 lb processes on this machine.
//!
//! Each round starts a fresh etcd, pushes a config whose split sends half the users to a
//! canary that answers 500, starts the appliances, waits for one to lead the analysis, then
//! offers a fixed rate of requests round the appliances. The clock starts at the first
//! request (the first failure) and stops when every appliance's `/splits` says rolled back.
//! What it includes: the requests needed to reach `min_requests` at that rate, each
//! appliance's publishing interval, the leader's evaluation interval, and etcd's watch.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::procs::{self, Proc};
use crate::Opts;

/// Appliance counts measured.
const SIZES: [usize; 3] = [3, 5, 10];
/// Requests per second offered to the whole fleet.
const RATE: f64 = 300.0;
/// The analysis of the scenario's split.
const MIN_REQUESTS: u32 = 20;
const INTERVAL_MS: u64 = 200;
const BOUND: Duration = Duration::from_secs(30);

pub fn run(opts: &Opts) -> Result<Value> {
    if !procs::which("etcd") {
        bail!("the fleet scenario needs etcd (Debian etcd-server)");
    }
    let base = crate::scenarios::scenario_base(opts, "fleet", 60)?;
    let canary = failing_backend()?;
    let rounds = opts.rounds.max(1);
    let mut rows = Vec::new();
    for n in SIZES {
        let mut all = Vec::new();
        let mut first = Vec::new();
        let mut canary_requests = Vec::new();
        for round in 0..rounds {
            eprintln!("bench: fleet of {n}, round {}", round + 1);
            let m = measure(opts, &base.dir, n, base.backend, canary, round)
                .with_context(|| format!("fleet of {n}"))?;
            eprintln!(
                "fleet {n}: first rollback {:.0} ms, all {:.0} ms, {} canary requests",
                m.first_ms, m.all_ms, m.canary
            );
            all.push(m.all_ms);
            first.push(m.first_ms);
            canary_requests.push(m.canary as f64);
        }
        rows.push(json!({
            "appliances": n,
            "all_ms": crate::report::median(all.iter().copied()),
            "first_ms": crate::report::median(first.iter().copied()),
            "max_all_ms": all.iter().copied().fold(0.0, f64::max),
            "canary_requests": crate::report::median(canary_requests.iter().copied()),
        }));
    }
    drop(base.hello);
    Ok(json!({
        "rounds": rounds,
        "rate": RATE,
        "min_requests": MIN_REQUESTS,
        "interval_ms": INTERVAL_MS,
        "rows": rows,
    }))
}

pub fn markdown(v: &Value) -> String {
    let mut s = format!(
        "## Fleet canary analysis: from the first error to rollback everywhere\n\n\
         One etcd, N lb processes on this machine; a canary with half the users answers 500 \
         from the start; {} requests/s offered round the appliances; the analysis needs {} \
         canary requests and runs every {} ms on the leader; appliances publish their counts \
         every 500 ms. Medians of {} rounds (`--scenario fleet`).\n\n\
         | appliances | first rolled back (ms) | all rolled back (ms) | slowest round (ms) | canary requests before |\n|---|---|---|---|---|\n",
        v["rate"], v["min_requests"], v["interval_ms"], v["rounds"]
    );
    for r in v["rows"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            r["appliances"],
            r["first_ms"].as_f64().unwrap_or(0.0),
            r["all_ms"].as_f64().unwrap_or(0.0),
            r["max_all_ms"].as_f64().unwrap_or(0.0),
            r["canary_requests"].as_f64().unwrap_or(0.0),
        ));
    }
    s
}

struct Measured {
    first_ms: f64,
    all_ms: f64,
    canary: u64,
}

/// A backend that answers every request 500: the failing canary.
fn failing_backend() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve_500(s));
        }
    });
    Ok(addr)
}

fn serve_500(mut s: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut have = 0;
    loop {
        match s.read(&mut buf[have..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => have += n,
        }
        while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            let reply = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 6\r\n\r\nbroken";
            if s.write_all(reply).is_err() {
                return;
            }
            buf.copy_within(end + 4..have, 0);
            have -= end + 4;
        }
        if have == buf.len() {
            return;
        }
    }
}

fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// One HTTP/1.1 request on a new connection; the status and body.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn admin_json(addr: SocketAddr, path: &str) -> Result<Value> {
    let (_, body) = request(addr, "GET", path, "")?;
    Ok(serde_json::from_str(&body)?)
}

struct Appliance {
    _proc: Proc,
    listen: SocketAddr,
    admin: SocketAddr,
}

fn measure(
    opts: &Opts,
    dir: &Path,
    n: usize,
    stable: SocketAddr,
    canary: SocketAddr,
    round: usize,
) -> Result<Measured> {
    let run = dir.join(format!("n{n}-r{round}"));
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run)?;
    let (client, peer) = (free_addr()?, free_addr()?);
    let endpoint = format!("http://{client}");
    let mut etcd = Command::new("etcd");
    etcd.arg("--name=bench")
        .arg(format!("--data-dir={}", run.join("etcd").display()))
        .arg(format!("--listen-client-urls={endpoint}"))
        .arg(format!("--advertise-client-urls={endpoint}"))
        .arg(format!("--listen-peer-urls=http://{peer}"))
        .arg(format!("--initial-advertise-peer-urls=http://{peer}"))
        .arg(format!("--initial-cluster=bench=http://{peer}"));
    let mut etcd = Proc::spawn("etcd", etcd, &run.join("etcd.log"))?;
    procs::wait_listening(client, &mut etcd.child)?;

    let doc = run.join("fleet.toml");
    std::fs::write(
        &doc,
        format!(
            "[[clusters]]\nname = \"stable\"\nendpoints = [{{ addr = \"{stable}\" }}]\n\n\
             [[clusters]]\nname = \"canary\"\nendpoints = [{{ addr = \"{canary}\" }}]\n\n\
             [[routes]]\nname = \"app\"\npath_prefix = \"/\"\n\
             [routes.split]\nname = \"app\"\nsticky = \"header:X-User-ID\"\nsalt = \"bench\"\n\
             targets = [{{ name = \"stable\", cluster = \"stable\", weight = 50 }}, {{ name = \"canary\", cluster = \"canary\", weight = 50 }}]\n\
             analysis = {{ baseline = \"stable\", canary = \"canary\", window = \"60s\", interval = \"{INTERVAL_MS}ms\", min_requests = {MIN_REQUESTS}, max_error_rate_increase = 0.1 }}\n"
        ),
    )?;
    // etcd answers a moment after it listens.
    let until = Instant::now() + BOUND;
    loop {
        let out = Command::new(&opts.lb)
            .arg("push")
            .arg(&doc)
            .args(["--etcd", &endpoint, "--prefix", "/bench/fleet"])
            .output()?;
        if out.status.success() {
            break;
        }
        if Instant::now() > until {
            bail!("lb push: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut fleet = Vec::new();
    for i in 0..n {
        let home = run.join(format!("lb{i}"));
        std::fs::create_dir_all(&home)?;
        let local = home.join("lb.toml");
        std::fs::write(
            &local,
            format!(
                "[server]\nworkers = 1\n\n[[listeners]]\naddr = \"127.0.0.1:0\"\n\n[admin]\naddr = \"127.0.0.1:0\"\n\n\
                 [source]\nstate_dir = \"{}\"\n\
                 etcd = {{ endpoints = [\"{endpoint}\"], prefix = \"/bench/fleet\", node = \"n{i}\", lease = \"2s\" }}\n",
                home.display()
            ),
        )?;
        let ready = home.join("ready.json");
        let mut cmd = procs::pinned(i % procs::cores(), &opts.lb);
        cmd.arg("run")
            .arg("--config")
            .arg(&local)
            .arg("--ready-file")
            .arg(&ready);
        let proc = Proc::spawn("lb", cmd, &home.join("lb.log"))?;
        let (listen, admin) = wait_ready(&ready)?;
        fleet.push(Appliance {
            _proc: proc,
            listen,
            admin,
        });
    }
    // One leader before the clock starts.
    let until = Instant::now() + BOUND;
    loop {
        let leaders = fleet
            .iter()
            .filter(|a| admin_json(a.admin, "/config").is_ok_and(|v| v["etcd"]["leader"] == true))
            .count();
        if leaders == 1 {
            break;
        }
        if Instant::now() > until {
            bail!("no leader among {n} appliances");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let canary_seen = Arc::new(AtomicU64::new(0));
    let targets: Vec<SocketAddr> = fleet.iter().map(|a| a.listen).collect();
    let started = Instant::now();
    let load = {
        let (stop, seen) = (stop.clone(), canary_seen.clone());
        std::thread::spawn(move || {
            let gap = Duration::from_secs_f64(1.0 / RATE);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && started.elapsed() < BOUND {
                let due = started + gap * i as u32;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let to = targets[i as usize % targets.len()];
                if let Ok((500, _)) = request(to, "GET", "/", &format!("X-User-ID: u{i}\r\n")) {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                i += 1;
            }
        })
    };
    let mut first = None;
    let all = loop {
        let rolled = fleet
            .iter()
            .filter(|a| {
                admin_json(a.admin, "/splits").is_ok_and(|v| v["splits"][0]["rolled_back"] == true)
            })
            .count();
        if rolled > 0 && first.is_none() {
            first = Some(started.elapsed());
        }
        if rolled == fleet.len() {
            break started.elapsed();
        }
        if started.elapsed() > BOUND {
            stop.store(true, Ordering::SeqCst);
            bail!("no fleet-wide rollback within {BOUND:?} ({rolled} of {n})");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    stop.store(true, Ordering::SeqCst);
    let _ = load.join();
    drop(fleet);
    drop(etcd);
    let _ = std::fs::remove_dir_all(run.join("etcd"));
    Ok(Measured {
        first_ms: first.unwrap_or(all).as_secs_f64() * 1000.0,
        all_ms: all.as_secs_f64() * 1000.0,
        canary: canary_seen.load(Ordering::SeqCst),
    })
}

fn wait_ready(ready: &PathBuf) -> Result<(SocketAddr, SocketAddr)> {
    let until = Instant::now() + BOUND;
    loop {
        if let Ok(text) = std::fs::read_to_string(ready) {
            let v: Value = serde_json::from_str(&text)?;
            let listen = v["listeners"]
                .as_object()
                .and_then(|m| m.values().next())
                .and_then(Value::as_str)
                .context("no listener in the ready file")?
                .parse()?;
            let admin = v["admin"]
                .as_str()
                .context("no admin address in the ready file")?
                .parse()?;
            return Ok((listen, admin));
        }
        if Instant::now() > until {
            bail!("lb did not become ready ({})", ready.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
