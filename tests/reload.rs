//! Hot reload: by admin API, SIGHUP and file watch; under load with zero failed requests; a
//! broken config changes nothing.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn version_config(endpoint: SocketAddr, extra_server: &str) -> String {
    config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{endpoint}\" }}]\n[[routes]]\ncluster = \"app\"\n"
    ))
    .replace("[server]\n", &format!("[server]\n{extra_server}"))
}

/// Replaces the config file in one step, as an operator's deploy tool would.
fn write_config(lb: &Lb, text: &str) {
    let tmp = lb.config_path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &lb.config_path).unwrap();
}

fn served_by(addr: SocketAddr) -> String {
    get(addr, "/").json()["backend"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn reload_under_load_drops_nothing() {
    let a = Backend::start(echo("A")).unwrap();
    let b = Backend::start(echo("B")).unwrap();
    let config_a = version_config(a.addr, "");
    let config_b = version_config(b.addr, "");
    let lb = Lb::start(&config_a);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), lb.addr);
        clients.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let keep_alive = i % 2 == 0;
            let mut conn = Client::connect(addr);
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && n < 200_000 {
                n += 1;
                if !keep_alive {
                    conn = Client::connect(addr);
                }
                conn.send(b"GET /load HTTP/1.1\r\nHost: t\r\n\r\n");
                match conn.try_response(false) {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        eprintln!("failed request: {other:?}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    let mut kept = Client::connect(lb.addr);
    for i in 0..50 {
        let (text, want) = if i % 2 == 0 {
            (&config_b, "B")
        } else {
            (&config_a, "A")
        };
        write_config(&lb, text);
        let (status, body) = lb.admin("POST", "/reload");
        assert_eq!(status, 200, "reload {i}: {body}");
        // Once the reload call returns, new requests follow the new config, on new
        // connections and on one that was open before.
        assert_eq!(served_by(lb.addr), want, "reload {i}");
        kept.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(
            kept.response().json()["backend"],
            want,
            "reload {i}, old connection"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!("{ok} requests served during 50 reloads, {failed} failed");
    assert!(ok > 100, "the load generator barely ran: {ok}");
    assert_eq!(failed, 0);
}

#[test]
fn broken_config_changes_nothing() {
    let a = Backend::start(echo("A")).unwrap();
    let b = Backend::start(echo("B")).unwrap();
    let lb = Lb::start(&version_config(a.addr, ""));
    let (_, before) = lb.admin("GET", "/config");
    let version = before["version"].as_str().unwrap().to_string();
    assert_eq!(version.len(), 16);
    assert!(before["loaded_at_unix"].as_u64().unwrap() > 1_700_000_000);

    write_config(
        &lb,
        &version_config(b.addr, "").replace(&b.addr.to_string(), "not-an-address"),
    );
    let (status, body) = lb.admin("POST", "/reload");
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_config");
    assert_eq!(
        body["errors"][0]["path"], "clusters[0].endpoints[0].addr",
        "{body}"
    );
    assert_eq!(served_by(lb.addr), "A");
    assert_eq!(lb.admin("GET", "/config").1["version"], version.as_str());

    // SIGHUP with the same broken file: logged, nothing changes.
    lb.signal(libc::SIGHUP);
    wait_until("the refused reload to be logged", || {
        lb.log().contains("reload refused")
    });
    assert!(lb.log().contains("clusters[0].endpoints[0].addr"));
    assert_eq!(served_by(lb.addr), "A");

    // A valid file by SIGHUP takes effect.
    write_config(&lb, &version_config(b.addr, ""));
    lb.signal(libc::SIGHUP);
    wait_until("SIGHUP reload to take effect", || served_by(lb.addr) == "B");
    assert_ne!(lb.admin("GET", "/config").1["version"], version.as_str());
}

#[test]
fn file_watch_reloads_on_change() {
    let a = Backend::start(echo("A")).unwrap();
    let b = Backend::start(echo("B")).unwrap();
    let watch = "watch_config = \"100ms\"\n";
    let lb = Lb::start(&version_config(a.addr, watch));
    assert_eq!(served_by(lb.addr), "A");
    write_config(&lb, &version_config(b.addr, watch));
    wait_until("the watched file to be reloaded", || {
        served_by(lb.addr) == "B"
    });
    write_config(&lb, "this is not toml");
    wait_until("the broken file to be noticed", || {
        lb.log().contains("reload refused")
    });
    assert_eq!(served_by(lb.addr), "B");
}

#[test]
fn admin_errors_are_json() {
    let a = Backend::start(echo("A")).unwrap();
    let lb = Lb::start(&version_config(a.addr, ""));
    let (status, body) = lb.admin("GET", "/nope");
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");
    let (status, body) = lb.admin("GET", "/reload");
    assert_eq!(status, 405);
    assert!(body["reason"].as_str().unwrap().contains("GET"));
    assert_eq!(
        lb.admin("GET", "/healthz"),
        (200, serde_json::json!({ "status": "ok" }))
    );
    assert_eq!(lb.admin("GET", "/readyz").0, 200);
}

/// Keys that a running lb cannot change make the reload fail, naming the key and saying it
/// needs a restart; nothing else in that file is applied.
#[test]
fn reload_refuses_what_needs_a_restart() {
    let a = Backend::start(echo("A")).unwrap();
    let b = Backend::start(echo("B")).unwrap();
    let base = version_config(a.addr, "");
    let lb = Lb::start(&base);
    let version = lb.admin("GET", "/config").1["version"].clone();
    let other = dead_addr().to_string();
    let cases: Vec<(String, &str)> = vec![
        (base.replace("workers = 2", "workers = 1"), "server.workers"),
        (
            base.replace("[server]\n", "[server]\npin_workers = false\n"),
            "server.pin_workers",
        ),
        (
            base.replace("[server]\n", "[server]\nio = \"epoll\"\n"),
            "server.io",
        ),
        (
            base.replace("[server]\n", "[server]\nio_uring_entries = 256\n"),
            "server.io_uring_entries",
        ),
        (
            base.replace("[server]\n", "[server]\nwatch_config = \"1s\"\n"),
            "server.watch_config",
        ),
        (
            base.replace("name = \"http\"", "name = \"web\""),
            "listeners",
        ),
        (
            base.replace(
                "[admin]\naddr = \"127.0.0.1:0\"",
                &format!("[admin]\naddr = \"{other}\""),
            ),
            "admin.addr",
        ),
        (
            format!("{base}\n[access_log]\npath = \"stdout\"\n"),
            "access_log",
        ),
        (
            format!("{base}\n[steering]\nmode = \"reuseport\"\n"),
            "steering",
        ),
        (
            format!("{base}\n[http]\nmax_header_bytes = \"64KiB\"\n"),
            "http.max_header_bytes",
        ),
    ];
    for (text, key) in cases {
        // Every case also moves the route to B: none of it may take effect.
        write_config(&lb, &text.replace(&a.addr.to_string(), &b.addr.to_string()));
        let (status, body) = lb.admin("POST", "/reload");
        assert_eq!(status, 400, "{key}: {body}");
        let errors = body["errors"].as_array().cloned().unwrap_or_default();
        assert!(
            errors.iter().any(
                |e| e["path"] == key && e["message"].as_str().unwrap_or("").contains("restart")
            ),
            "{key}: {body}"
        );
        assert_eq!(served_by(lb.addr), "A", "{key}");
        assert_eq!(lb.admin("GET", "/config").1["version"], version, "{key}");
    }
}

/// What a reload can apply, it applies: a smaller head limit, the admin token, and the drain
/// timeout.
#[test]
fn reload_applies_limits_token_and_drain_timeout() {
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let a = Backend::start(Arc::new(move |req, res| {
        if req.path == "/stuck" {
            // Never answers within the test: only the drain timeout can end it.
            s.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(BOUND * 2);
        }
        res.send(200, &[], b"ok");
    }))
    .unwrap();
    let base =
        version_config(a.addr, "").replace("drain_timeout = \"10s\"", "drain_timeout = \"60s\"");
    let mut lb = Lb::start(&base);
    let big = "x".repeat(6000);
    assert_eq!(get_with(lb.addr, "/", &[("X-Big", &big)]).status, 200);
    write_config(
        &lb,
        &format!("{base}\n[http]\nmax_header_bytes = \"4KiB\"\n")
            .replace("drain_timeout = \"60s\"", "drain_timeout = \"200ms\"")
            .replace(
                "[admin]\naddr = \"127.0.0.1:0\"",
                "[admin]\naddr = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef-token\"",
            ),
    );
    assert_eq!(lb.admin("POST", "/reload").0, 200);
    assert_eq!(get_with(lb.addr, "/", &[("X-Big", &big)]).status, 431);
    assert_eq!(
        lb.admin("GET", "/config").0,
        401,
        "the new token is required"
    );
    // A request that never finishes: with the old 60 s drain timeout the exit would take a
    // minute; the reloaded 200 ms lets lb go at once.
    let mut stuck = Client::connect(lb.addr);
    stuck.send(b"GET /stuck HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until("the stuck request to reach the backend", || {
        started.load(Ordering::SeqCst) == 1
    });
    lb.signal(libc::SIGTERM);
    let status = lb.wait_exit();
    assert!(status.success(), "{status}");
}

/// `admin.hosts` applies at reload: a name the running config refuses (DNS rebinding
/// defence) is taken after a reload that lists it, and refused again after one that drops it.
#[test]
fn reload_applies_admin_hosts() {
    let a = Backend::start(echo("a")).unwrap();
    let base = version_config(a.addr, "");
    let lb = Lb::start(&base);
    let admin = lb.admin.expect("admin");
    let by_name = || {
        let mut c = Client::connect(admin);
        c.send(b"GET /stats HTTP/1.1\r\nHost: lb.example.test\r\nConnection: close\r\n\r\n");
        c.response().status
    };
    assert_eq!(by_name(), 403);
    write_config(
        &lb,
        &base.replace(
            "[admin]\naddr = \"127.0.0.1:0\"",
            "[admin]\naddr = \"127.0.0.1:0\"\nhosts = [\"lb.example.test\"]",
        ),
    );
    assert_eq!(lb.admin("POST", "/reload").0, 200);
    assert_eq!(by_name(), 200);
    write_config(&lb, &base);
    assert_eq!(lb.admin("POST", "/reload").0, 200);
    assert_eq!(by_name(), 403);
}

/// systemd's notification protocol, to a datagram socket of the test's own standing in for
/// systemd's: READY=1 once lb serves, RELOADING=1 with the monotonic time of the reload and
/// READY=1 again around a SIGHUP (also when the new config is refused), STOPPING=1 on
/// SIGTERM.
#[test]
fn tells_systemd_when_ready_reloading_and_stopping() {
    let dir = scratch_dir("notify");
    let notify = NotifySocket::bind(&dir);
    let path = notify.path.clone();
    let next = || notify.next();
    let monotonic_usec = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec on our stack.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
    };
    let backend = Backend::start(echo("b")).expect("backend");
    let mut lb = Lb::start_with_env(
        &version_config(backend.addr, ""),
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );
    let ready = next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");

    let before = monotonic_usec();
    lb.signal(libc::SIGHUP);
    let reloading = next();
    let after = monotonic_usec();
    assert!(reloading.lines().any(|l| l == "RELOADING=1"), "{reloading}");
    let at: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .expect("MONOTONIC_USEC");
    assert!(before <= at && at <= after, "{before} <= {at} <= {after}");
    let done = next();
    assert!(done.lines().any(|l| l == "READY=1"), "{done}");

    // A refused config: systemd still hears that lb is ready, on the old config.
    write_config(&lb, "this is not TOML [");
    lb.signal(libc::SIGHUP);
    assert!(next().contains("RELOADING=1"));
    let refused = next();
    assert!(refused.lines().any(|l| l == "READY=1"), "{refused}");
    assert!(refused.contains("refused"), "{refused}");

    lb.signal(libc::SIGTERM);
    let stopping = next();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    assert!(lb.wait_exit().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a watchdog set on the unit (`WATCHDOG_USEC`), lb pets it while it runs.
#[test]
fn pets_the_systemd_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let dir = scratch_dir("watchdog");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind");
    sock.set_read_timeout(Some(BOUND)).expect("timeout");
    let backend = Backend::start(echo("b")).expect("backend");
    let _lb = Lb::start_with_env(
        &version_config(backend.addr, ""),
        &[
            ("NOTIFY_SOCKET", path.as_os_str()),
            ("WATCHDOG_USEC", std::ffi::OsStr::new("100000")),
        ],
    );
    let mut pets = 0;
    while pets < 3 {
        let mut buf = [0u8; 4096];
        let n = sock
            .recv(&mut buf)
            .expect("a notification within the bound");
        pets += usize::from(&buf[..n] == b"WATCHDOG=1");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
