//! Binary upgrades: ten back to back under load, with keep-alive and new-connection
//! traffic, a long upload and an open WebSocket in flight. Nothing fails, the release state
//! operators set carries over, and descriptors return to where they were.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A process this test ends up owning (an upgrade's new lb): stopped by PID at the end.
struct Owned(i32);

impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: kill with a PID and a signal number; the PID is an lb this test started
        // (through an upgrade) and has not seen exit.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
        }
    }
}

/// Whether `pid` has exited (gone, or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(s) => s
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
    }
}

/// One GET on `conn` (a kept-alive connection, made if `None`). A request on a connection
/// that closed while idle, before any byte of the answer, goes again on a new one: what
/// HTTP clients do with idempotent requests (RFC 9112 §9.3.1). Anything else is a failure.
fn keepalive_get(addr: SocketAddr, conn: &mut Option<Client>) -> Result<(), String> {
    for fresh in [false, true] {
        if fresh || conn.is_none() {
            *conn = Some(Client::connect(addr));
        }
        let Some(c) = conn.as_mut() else {
            continue;
        };
        let reused = !fresh;
        if c.stream
            .write_all(b"GET /ka HTTP/1.1\r\nHost: t\r\n\r\n")
            .is_err()
            && reused
        {
            continue;
        }
        match c.try_response(false) {
            Ok(r) if r.status == 200 => {
                if r.header("connection") == Some("close") {
                    *conn = None;
                }
                return Ok(());
            }
            Ok(r) => return Err(format!("status {}", r.status)),
            Err(e) if reused && c.take_buffered().is_empty() => {
                let _ = e;
                continue;
            }
            Err(e) => return Err(format!("keep-alive: {e}")),
        }
    }
    Err("no answer on a fresh connection".into())
}

/// One GET on a new connection; every error is a failure.
fn fresh_get(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(BOUND)).map_err(|e| e.to_string())?;
    s.write_all(b"GET /new HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).map_err(|e| format!("read: {e}"))?;
    if all.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "answer: {:?}",
            String::from_utf8_lossy(&all[..all.len().min(80)])
        ))
    }
}

#[test]
fn ten_upgrades_under_load_drop_nothing() {
    // An echo backend, and one that accepts WebSockets and echoes.
    let backend = Backend::start(echo("app")).expect("backend");
    let ws = Backend::start(ws_echo(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ))
    .expect("ws backend");
    let cfg = config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[clusters]]\nname = \"canary\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[clusters]]\nname = \"ws\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[routes]]\npath_prefix = \"/chat\"\ncluster = \"ws\"\n\
         [[routes]]\npath_prefix = \"/\"\n[routes.split]\nname = \"main\"\n\
         targets = [{{ name = \"stable\", cluster = \"app\", weight = 100 }}, {{ name = \"canary\", cluster = \"canary\", weight = 0 }}]\n",
        backend.addr, backend.addr, ws.addr
    ))
    .replace("drain_timeout = \"10s\"", "drain_timeout = \"8s\"");
    let lb = Lb::start(&cfg);
    let addr = lb.addr;
    let admin = lb.admin.expect("admin");
    // Release state an operator set: it must survive every upgrade.
    let (status, _) = lb.admin_json(
        "POST",
        "/splits/main/weights",
        &serde_json::json!({ "weights": { "stable": 93, "canary": 7 } }),
    );
    assert_eq!(status, 200);
    // Warm, then the descriptor baseline of an idle lb.
    for _ in 0..20 {
        fresh_get(addr).expect("warm-up");
    }
    wait_until("lb idles", || fd_count(lb.pid()) > 0);
    let baseline = fd_count(lb.pid());

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let served = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for keepalive in [true, false] {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        load.push(std::thread::spawn(move || {
            let mut conn = None;
            let until = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                let r = if keepalive {
                    keepalive_get(addr, &mut conn)
                } else {
                    fresh_get(addr)
                };
                match r {
                    Ok(()) => served.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        let e = format!("{e} (at {:?} into the test)", t0.elapsed());
                        failures.lock().expect("lock").push(e);
                        0
                    }
                };
            }
        }));
    }
    // A long upload: 1 MiB in 64 pieces, spread over the first upgrades.
    let upload = std::thread::spawn(move || -> Result<u64, String> {
        let mut c = Client::connect(addr);
        c.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n");
        for _ in 0..64 {
            c.stream
                .write_all(&[b'u'; 16384])
                .map_err(|e| format!("upload write: {e}"))?;
            std::thread::sleep(Duration::from_millis(40));
        }
        let r = c
            .try_response(false)
            .map_err(|e| format!("upload answer: {e}"))?;
        Ok(r.json()["body_length"].as_u64().unwrap_or(0))
    });
    // An open WebSocket, exchanging a message now and then.
    let mut chat = Client::connect(addr);
    chat.send(
        b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert_eq!(chat.try_response(true).expect("101").status, 101);

    let mut pids = vec![lb.pid()];
    let mut owned: Vec<Owned> = Vec::new();
    for round in 0..10 {
        let started = Instant::now();
        // The admin socket is shared too: a request the draining process took as it handed
        // over is refused with a reason, and goes again.
        let mut answer = admin_post(admin, "/upgrade");
        for _ in 0..20 {
            if answer.0 == 200
                || !answer.1["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("draining"))
            {
                break;
            }
            answer = admin_post(admin, "/upgrade");
        }
        let (status, v) = answer;
        assert_eq!(status, 200, "upgrade {round}: {v}");
        let pid = v["pid"].as_i64().expect("new pid") as i32;
        owned.push(Owned(pid));
        pids.push(pid);
        // The WebSocket still carries messages while its process drains.
        if round < 2 {
            let msg = format!("ping-{round}");
            chat.stream.write_all(msg.as_bytes()).expect("ws write");
            let mut back = vec![0u8; msg.len()];
            chat.stream.read_exact(&mut back).expect("ws echo");
            assert_eq!(back, msg.as_bytes());
        }
        // The next upgrade asks the new process, which answers the admin API now.
        wait_until("the new process answers the admin API", || {
            admin_get(admin, "/healthz").0 == 200 && started.elapsed() > Duration::from_millis(200)
        });
    }
    let length = upload.join().expect("upload thread");
    assert_eq!(length, Ok(1 << 20), "the long upload went through whole");
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().expect("load thread");
    }
    let failed = failures.lock().expect("lock").clone();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        served.load(Ordering::Relaxed),
        &failed[..failed.len().min(10)]
    );
    assert!(served.load(Ordering::Relaxed) > 100, "the load ran");
    // The WebSocket's process drained: the tunnel was closed at its drain timeout, cleanly.
    let mut rest = Vec::new();
    let end = chat.stream.read_to_end(&mut rest);
    assert!(end.is_ok(), "closed with a FIN, not reset: {end:?}");

    // Every old process is gone; the newest serves with the state the operator set.
    let newest = *pids.last().expect("a pid");
    for &p in &pids[..pids.len() - 1] {
        wait_until("an old process exits after its drain", || gone(p));
    }
    let (_, split) = admin_get(admin, "/splits");
    let canary = &split["splits"][0]["targets"][1];
    assert_eq!(canary["weight_percent"], 7.0, "{split}");
    assert_eq!(split["splits"][0]["runtime_weights"], true, "{split}");
    wait_until("descriptors return to the baseline", || {
        fd_count(newest) <= baseline
    });
    drop(owned);
    wait_until("the last lb is stopped", || gone(newest));
}

fn admin_request(admin: SocketAddr, method: &str, path: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(admin).expect("admin connect");
    s.set_read_timeout(Some(Duration::from_secs(90)))
        .expect("timeout");
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .expect("admin write");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn admin_post(admin: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    admin_request(admin, "POST", path)
}

fn admin_get(admin: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    admin_request(admin, "GET", path)
}

/// A new binary that fails to start leaves the running one serving, and says why.
#[test]
fn a_failed_upgrade_keeps_the_old_process_serving() {
    let backend = Backend::start(echo("app")).expect("backend");
    let cfg = config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}]\n[[routes]]\ncluster = \"app\"\n",
        backend.addr
    ));
    let lb = Lb::start(&cfg);
    let admin = lb.admin.expect("admin");
    // The config on disk is now one the new binary refuses.
    std::fs::write(&lb.config_path, "[[listeners]]\naddr = \"nope\"\n").expect("write");
    let (status, v) = admin_post(admin, "/upgrade");
    assert_eq!(status, 500, "{v}");
    let reason = v["reason"].as_str().unwrap_or("");
    assert!(reason.contains("listeners[0].addr"), "{reason}");
    // Still the same process, still serving.
    assert_eq!(get(lb.addr, "/x").status, 200);
    assert!(!gone(lb.pid()));
    // `lb upgrade` says the same and exits non-zero; with a good config it upgrades.
    let cli_config = lb.dir.join("cli.toml");
    std::fs::write(
        &cli_config,
        cfg.replace(
            "[admin]\naddr = \"127.0.0.1:0\"",
            &format!("[admin]\naddr = \"{admin}\""),
        ),
    )
    .expect("write");
    let run = || {
        std::process::Command::new(lb_bin())
            .args(["upgrade", "--config"])
            .arg(&cli_config)
            .output()
            .expect("lb upgrade")
    };
    let out = run();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("listeners[0].addr"),
        "{out:?}"
    );
    std::fs::write(&lb.config_path, &cfg).expect("write");
    let out = run();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let pid = v["pid"].as_i64().expect("pid") as i32;
    let _owned = Owned(pid);
    wait_until("the old process drains and exits", || gone(lb.pid()));
    assert_eq!(get(lb.addr, "/x").status, 200, "the new process serves");
}

/// SIGUSR2 upgrades too; under systemd the old main process hands the service over with
/// `MAINPID=` (ready, the watchdog petted), and says nothing about stopping as it drains;
/// the new process pets the watchdog from then on. (tests/package.rs runs this under a real
/// systemd.)
#[test]
fn sigusr2_upgrades_and_systemd_hears_the_new_main_pid() {
    let dir = scratch_dir("upgrade-notify");
    let notify = NotifySocket::bind(&dir);
    let next = || notify.next();
    let backend = Backend::start(echo("app")).expect("backend");
    let cfg = config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}]\n[[routes]]\ncluster = \"app\"\n",
        backend.addr
    ));
    let lb = Lb::start_with_env(
        &cfg,
        &[
            ("NOTIFY_SOCKET", notify.path.as_os_str()),
            ("WATCHDOG_USEC", std::ffi::OsStr::new("200000")),
        ],
    );
    assert!(next().lines().any(|l| l == "READY=1"));
    let old = lb.pid();
    lb.signal(libc::SIGUSR2);
    let (new, handover) = loop {
        let m = next();
        if let Some(pid) = m.lines().find_map(|l| l.strip_prefix("MAINPID=")) {
            break (pid.parse::<i32>().expect("a pid"), m.clone());
        }
        // Before the handover only the old process speaks (the new one's READY=1 would be
        // a stranger's to systemd).
        assert!(!m.contains("READY=1"), "READY=1 before MAINPID=: {m:?}");
    };
    assert!(
        handover.lines().any(|l| l == "READY=1") && handover.lines().any(|l| l == "WATCHDOG=1"),
        "{handover:?}"
    );
    let _owned = Owned(new);
    assert_ne!(new, old);
    assert_eq!(get(lb.addr, "/x").status, 200);
    wait_until("the old process drains and exits", || gone(old));
    let rest = notify.pending();
    assert!(
        !rest.iter().any(|m| m.contains("STOPPING=1")),
        "the old process told systemd it stops: {rest:?}"
    );
    // Only the new process is left: the watchdog pings that come now are its own.
    wait_until("the new process to pet the watchdog", || {
        notify.pending().iter().any(|m| m == "WATCHDOG=1")
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// What outlier detection and rate limits decided before an upgrade holds after it: the
/// ejected endpoint stays out for the rest of its time, and a limited client stays limited.
#[test]
fn ejections_and_rate_limits_survive_an_upgrade() {
    let good = Backend::start(Arc::new(|_req, res| {
        res.send(200, &[("X-Backend", "good")], b"good")
    }))
    .expect("backend");
    let bad = Backend::start(Arc::new(|_req, res| {
        res.send(500, &[("X-Backend", "bad")], b"bad")
    }))
    .expect("backend");
    let cfg = config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n\
         outlier_detection = {{ consecutive_5xx = 3, base_ejection_time = \"5m\", max_ejected_percent = 50 }}\n\
         [[clusters]]\nname = \"one\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[routes]]\npath_prefix = \"/limited\"\ncluster = \"one\"\n\
         rate_limit = {{ key = \"client_ip\", limits = [{{ requests = 2, per = \"10m\" }}] }}\n\
         [[routes]]\npath_prefix = \"/\"\ncluster = \"app\"\n",
        good.addr, bad.addr, good.addr
    ));
    let lb = Lb::start(&cfg);
    let admin = lb.admin.expect("admin");
    let bad_view = |admin: SocketAddr| {
        let (_, v) = admin_get(admin, "/clusters");
        v["clusters"][0]["endpoints"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|e| e["addr"] == bad.addr.to_string())
                    .cloned()
            })
            .unwrap_or_default()
    };
    let mut sent = 0;
    while bad_view(admin)["ejected_for_ms"].as_u64().unwrap_or(0) == 0 {
        assert!(sent < 200, "the bad endpoint was never ejected");
        get(lb.addr, "/");
        sent += 1;
    }
    assert_eq!(get(lb.addr, "/limited").status, 200);
    assert_eq!(get(lb.addr, "/limited").status, 200);
    assert_eq!(get(lb.addr, "/limited").status, 429);

    let (status, v) = admin_post(admin, "/upgrade");
    assert_eq!(status, 200, "{v}");
    let pid = v["pid"].as_i64().expect("pid") as i32;
    let _owned = Owned(pid);
    wait_until("the old process drains and exits", || gone(lb.pid()));

    let after = bad_view(admin);
    assert!(
        after["ejected_for_ms"].as_u64().unwrap_or(0) > 60_000,
        "still ejected for most of its 5 minutes: {after}"
    );
    assert_eq!(after["ejections"], 1, "{after}");
    let before = bad.requests();
    for _ in 0..20 {
        assert_eq!(
            get(lb.addr, "/").status,
            200,
            "the ejected endpoint gets nothing"
        );
    }
    assert_eq!(bad.requests(), before);
    assert_eq!(
        get(lb.addr, "/limited").status,
        429,
        "the limited client is still limited"
    );
}

/// `lb stop PID` (the unit's ExecStop): lb drains, and the command returns only once lb has
/// exited, after the request in flight got its answer. It refuses a PID that is not lb's
/// and does nothing without one.
#[test]
fn lb_stop_waits_for_the_drain_and_refuses_other_processes() {
    let release = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicBool::new(false));
    let (r, h) = (release.clone(), held.clone());
    let backend = Backend::start(Arc::new(move |_req, res| {
        h.store(true, Ordering::SeqCst);
        let until = Instant::now() + BOUND;
        while !r.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        res.send(200, &[], b"late")
    }))
    .expect("backend");
    let lb = Lb::start(&config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}]\n[[routes]]\ncluster = \"app\"\n",
        backend.addr
    )));
    let stop = |args: &[&str]| {
        std::process::Command::new(lb_bin())
            .arg("stop")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("lb stop")
    };
    let refused = stop(&[&std::process::id().to_string()])
        .wait_with_output()
        .expect("lb stop");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not lb"));
    let refused = stop(&["0"]).wait_with_output().expect("lb stop");
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    let nothing = stop(&[]).wait_with_output().expect("lb stop");
    assert!(nothing.status.success(), "{nothing:?}");

    let addr = lb.addr;
    let request = std::thread::spawn(move || get(addr, "/slow"));
    wait_until("the request to reach the backend", || {
        held.load(Ordering::SeqCst)
    });
    let mut stopping = stop(&[&lb.pid().to_string()]);
    // lb drains (it says so in its log) while the request is still held.
    wait_until("lb to drain", || {
        std::fs::read_to_string(lb.dir.join("lb.log")).is_ok_and(|l| l.contains("draining"))
    });
    assert!(
        stopping.try_wait().expect("lb stop").is_none(),
        "lb stop returned while a request was in flight"
    );
    release.store(true, Ordering::SeqCst);
    let answer = request.join().expect("request thread");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"late");
    let out = stopping.wait_with_output().expect("lb stop");
    assert!(out.status.success(), "{out:?}");
    assert!(gone(lb.pid()), "lb has exited when lb stop returns");
}
