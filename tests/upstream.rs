//! Balancing, health, outlier ejection, breakers, limits, retries and draining, against real
//! backends on loopback.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn cluster_config(endpoints: &[SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{}]\n{extra}\n\n[[routes]]\ncluster = \"app\"\n",
        eps.join(", ")
    ))
}

fn status_handler(status: u16, name: &'static str) -> Handler {
    Arc::new(move |_req, res| res.send(status, &[("X-Backend", name)], name.as_bytes()))
}

fn backend_of(r: &Response) -> String {
    r.header("x-backend").unwrap_or("").to_string()
}

/// The endpoint entry for `addr` in the admin's `/clusters`.
fn endpoint_view(lb: &Lb, addr: SocketAddr) -> serde_json::Value {
    let (_, v) = lb.admin("GET", "/clusters");
    v["clusters"][0]["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["addr"] == addr.to_string()).cloned())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn least_connections_sends_less_to_a_slow_endpoint_across_workers() {
    let fast = Backend::start(status_handler(200, "fast")).unwrap();
    let slow = Backend::start(Arc::new(|_req, res| {
        std::thread::sleep(Duration::from_millis(150));
        res.send(200, &[("X-Backend", "slow")], b"slow");
    }))
    .unwrap();
    let lb = Lb::start(&cluster_config(
        &[fast.addr, slow.addr],
        "balancer = \"least_connections\"",
    ));
    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, counts) = (lb.addr, counts.clone());
            std::thread::spawn(move || {
                for _ in 0..20 {
                    // A new connection each time, so the kernel spreads them over both workers.
                    let r = get(addr, "/");
                    assert_eq!(r.status, 200);
                    counts[usize::from(backend_of(&r) == "slow")].fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let (f, s) = (
        counts[0].load(Ordering::SeqCst),
        counts[1].load(Ordering::SeqCst),
    );
    println!("least_connections over 2 workers: fast {f}, slow {s}");
    assert_eq!(f + s, 160);
    assert!(s * 4 < f, "the slow endpoint got {s} of {}", f + s);
}

#[test]
fn consistent_hash_is_sticky_and_the_same_in_two_processes() {
    let backends: Vec<Backend> = ["a", "b", "c"]
        .iter()
        .map(|n| Backend::start(status_handler(200, n)).unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let cfg = cluster_config(
        &addrs,
        "balancer = \"maglev\"\nhash_key = \"header:X-User-ID\"",
    );
    let lb1 = Lb::start(&cfg);
    let lb2 = Lb::start(&cfg);
    let owner = |lb: &Lb, user: u32| {
        let mut c = Client::connect(lb.addr);
        c.send(format!("GET / HTTP/1.1\r\nHost: t\r\nX-User-ID: user-{user}\r\n\r\n").as_bytes());
        backend_of(&c.response())
    };
    let mut spread = std::collections::HashMap::new();
    for user in 0..60 {
        let first = owner(&lb1, user);
        assert_eq!(
            owner(&lb1, user),
            first,
            "user {user} moved between requests"
        );
        assert_eq!(
            owner(&lb2, user),
            first,
            "user {user} lands elsewhere in another process"
        );
        *spread.entry(first).or_insert(0) += 1;
    }
    assert_eq!(spread.len(), 3, "keys use every endpoint: {spread:?}");
}

#[test]
fn health_checks_take_a_dead_backend_out_and_bring_it_back() {
    let healthy = |name: &'static str| -> Handler {
        Arc::new(move |req, res| {
            if req.path == "/health" {
                res.send(200, &[], b"ok");
            } else {
                res.send(200, &[("X-Backend", name)], name.as_bytes());
            }
        })
    };
    let mut a = Backend::start(healthy("a")).unwrap();
    let b = Backend::start(healthy("b")).unwrap();
    let a_addr = a.addr;
    let lb = Lb::start(&cluster_config(
        &[a_addr, b.addr],
        "panic_threshold = 0\nhealth_check = { path = \"/health\", interval = \"50ms\", jitter = \"10ms\", timeout = \"200ms\", healthy_threshold = 2, unhealthy_threshold = 2 }",
    ));
    wait_until("a to be checked", || a.requests() >= 2);
    a.stop();
    wait_until("a to be marked down", || {
        endpoint_view(&lb, a_addr)["healthy"] == false
    });
    for _ in 0..20 {
        let r = get(lb.addr, "/");
        assert_eq!(r.status, 200, "no request may fail while a is down");
        assert_eq!(backend_of(&r), "b");
    }
    let a = Backend::start_on(a_addr, healthy("a")).unwrap();
    wait_until("a to be marked up", || {
        endpoint_view(&lb, a_addr)["healthy"] == true
    });
    let back = (0..20)
        .filter(|_| backend_of(&get(lb.addr, "/")) == "a")
        .count();
    assert!(back >= 5, "a is back but got {back} of 20");
    drop(a);
}

#[test]
fn outlier_detection_ejects_and_respects_its_cap() {
    let good1 = Backend::start(status_handler(200, "good1")).unwrap();
    let good2 = Backend::start(status_handler(200, "good2")).unwrap();
    let bad1 = Backend::start(status_handler(500, "bad1")).unwrap();
    let bad2 = Backend::start(status_handler(500, "bad2")).unwrap();
    let lb = Lb::start(&cluster_config(
        &[good1.addr, bad1.addr, good2.addr, bad2.addr],
        "outlier_detection = { consecutive_5xx = 3, base_ejection_time = \"30s\", max_ejected_percent = 25 }",
    ));
    for _ in 0..60 {
        get(lb.addr, "/");
    }
    let ejected: Vec<bool> = [bad1.addr, bad2.addr]
        .iter()
        .map(|a| {
            endpoint_view(&lb, *a)["ejected_for_ms"]
                .as_u64()
                .unwrap_or(0)
                > 0
        })
        .collect();
    assert_eq!(
        ejected.iter().filter(|e| **e).count(),
        1,
        "25% of 4 is one ejection at most: {ejected:?}"
    );
    assert_eq!(endpoint_view(&lb, good1.addr)["ejections"], 0);
    // The ejected endpoint gets nothing now.
    let before = bad1.requests() + bad2.requests();
    for _ in 0..20 {
        get(lb.addr, "/");
    }
    let after = bad1.requests() + bad2.requests();
    assert!(
        after - before <= 7,
        "only the bad endpoint left in rotation should be hit: {}",
        after - before
    );
}

#[test]
fn breaker_opens_then_recovers_through_half_open() {
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let backend = Backend::start(Arc::new(move |_req, res| {
        let status = if f.load(Ordering::SeqCst) { 500 } else { 200 };
        res.send(status, &[], b"x");
    }))
    .unwrap();
    let lb = Lb::start(&cluster_config(
        &[backend.addr],
        // Long enough that the checks of the open state below come well inside it on a
        // loaded machine (200 ms was not, under CI).
        "breaker = { consecutive_failures = 3, open_for = \"1s\", half_open_probes = 1 }",
    ));
    for _ in 0..3 {
        assert_eq!(get(lb.addr, "/").status, 500);
    }
    let r = get(lb.addr, "/");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-lb-limit"), Some("breaker_open"));
    assert_eq!(endpoint_view(&lb, backend.addr)["breaker"], "open");
    let seen = backend.requests();
    assert_eq!(
        get(lb.addr, "/").status,
        503,
        "open: refused without reaching the backend"
    );
    assert_eq!(backend.requests(), seen);
    // Still failing at the half-open probe: open again.
    wait_until("a half-open probe", || get(lb.addr, "/").status == 500);
    assert_eq!(endpoint_view(&lb, backend.addr)["breaker"], "open");
    failing.store(false, Ordering::SeqCst);
    wait_until("the breaker to close", || get(lb.addr, "/").status == 200);
    assert_eq!(endpoint_view(&lb, backend.addr)["breaker"], "closed");
    assert_eq!(endpoint_view(&lb, backend.addr)["breaker_opened"], 2);
}

#[test]
fn limits_answer_503_at_once() {
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let backend = Backend::start(Arc::new(move |_req, res| {
        s.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(800));
        res.send(200, &[], b"slow");
    }))
    .unwrap();
    let lb = Lb::start(&cluster_config(
        &[backend.addr],
        "limits = { max_requests = 1 }",
    ));
    let addr = lb.addr;
    let first = std::thread::spawn(move || get(addr, "/").status);
    wait_until("the first request to reach the backend", || {
        started.load(Ordering::SeqCst) == 1
    });
    let t = std::time::Instant::now();
    let r = get(lb.addr, "/");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-lb-limit"), Some("cluster_max_requests"));
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "refused at once, not after the slow request"
    );
    assert_eq!(first.join().unwrap(), 200);
    let limit = |lb: &Lb, name: &str| {
        metric(
            &lb.scrape(),
            "lb_limit_rejections_total",
            &[("cluster", "app"), ("limit", name)],
        )
    };
    assert_eq!(
        limit(&lb, "cluster_max_requests"),
        1.0,
        "each refusal is counted by limit"
    );

    // Connection limit with no waiting room.
    let lb = Lb::start(&cluster_config(
        &[backend.addr],
        "endpoint_limits = { max_connections = 1, max_pending = 0 }",
    ));
    let addr = lb.addr;
    let before = started.load(Ordering::SeqCst);
    let first = std::thread::spawn(move || get(addr, "/").status);
    wait_until("the first request to reach the backend", || {
        started.load(Ordering::SeqCst) == before + 1
    });
    let r = get(lb.addr, "/");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-lb-limit"), Some("max_pending"));
    assert_eq!(first.join().unwrap(), 200);
    assert_eq!(limit(&lb, "max_pending"), 1.0);
}

#[test]
fn retries_go_to_another_endpoint() {
    let bad = Backend::start(status_handler(503, "bad")).unwrap();
    let good = Backend::start(status_handler(200, "good")).unwrap();
    let lb = Lb::start(&cluster_config(
        &[bad.addr, good.addr],
        "retry = { attempts = 2, retry_on = [\"503\"], backoff_base = \"1ms\", backoff_max = \"5ms\" }",
    ));
    for _ in 0..20 {
        let r = get(lb.addr, "/");
        assert_eq!(r.status, 200);
        assert_eq!(backend_of(&r), "good");
    }
    assert!(
        bad.requests() >= 5,
        "round robin sends first tries to bad too: {}",
        bad.requests()
    );
    // Not for POST unless configured.
    let mut saw_503 = false;
    for _ in 0..6 {
        let mut c = Client::connect(lb.addr);
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
        saw_503 |= c.response().status == 503;
    }
    assert!(saw_503, "a POST is not retried");
}

#[test]
fn the_retry_budget_stops_a_retry_storm() {
    let slow_503 = || -> Handler {
        Arc::new(|_req, res| {
            std::thread::sleep(Duration::from_millis(100));
            res.send(503, &[], b"down");
        })
    };
    let backends: Vec<Backend> = (0..3)
        .map(|_| Backend::start(slow_503()).unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let lb = Lb::start(&cluster_config(
        &addrs,
        "retry = { attempts = 3, retry_on = [\"503\"], backoff_base = \"1ms\", backoff_max = \"2ms\", budget_percent = 0, min_retry_concurrency = 1 }",
    ));
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let addr = lb.addr;
            std::thread::spawn(move || get(addr, "/").status)
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 503);
    }
    let total: usize = backends.iter().map(|b| b.requests()).sum();
    println!("20 failing requests made {total} backend requests (60 without a budget)");
    assert!((20..=32).contains(&total), "{total}");
}

#[test]
fn removed_endpoint_drains() {
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let old = Backend::start(Arc::new(move |req, res| {
        if req.path == "/slow" {
            s.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(500));
        }
        res.send(200, &[("X-Backend", "old")], b"old");
    }))
    .unwrap();
    let new = Backend::start(status_handler(200, "new")).unwrap();
    let lb = Lb::start(&cluster_config(&[old.addr], ""));
    assert_eq!(backend_of(&get(lb.addr, "/")), "old");
    let addr = lb.addr;
    let in_flight = std::thread::spawn(move || get(addr, "/slow"));
    wait_until("the slow request to start", || {
        started.load(Ordering::SeqCst)
    });
    std::fs::write(&lb.config_path, cluster_config(&[new.addr], "")).unwrap();
    assert_eq!(lb.admin("POST", "/reload").0, 200);
    assert_eq!(backend_of(&get(lb.addr, "/")), "new");
    let r = in_flight.join().unwrap();
    assert_eq!(
        (r.status, backend_of(&r).as_str()),
        (200, "old"),
        "the in-flight request finished"
    );
    wait_until(
        "pooled connections to the removed endpoint to close",
        || old.open_connections() == 0,
    );
}

#[test]
fn host_name_endpoints_resolve() {
    let b = Backend::start(status_handler(200, "named")).unwrap();
    let cfg = config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"localhost:{}\" }}]\n[[routes]]\ncluster = \"app\"\n",
        b.addr.port()
    ));
    let lb = Lb::start(&cfg);
    for _ in 0..5 {
        assert_eq!(backend_of(&get(lb.addr, "/")), "named");
    }
    let (_, v) = lb.admin("GET", "/clusters");
    assert!(v["clusters"][0]["endpoints"][0]["target"]
        .as_str()
        .unwrap()
        .starts_with("localhost:"));
}

#[test]
fn connect_failures_go_elsewhere_for_any_method_and_outside_the_budget() {
    let live = Backend::start(echo("live")).unwrap();
    let dead = dead_addr();
    // No retry budget at all, no passive or active health: only the connect-failure rule can
    // save a request that lands on the dead endpoint.
    let lb = Lb::start(&cluster_config(
        &[dead, live.addr],
        "retry = { attempts = 2, backoff_base = \"0ms\", budget_percent = 0, min_retry_concurrency = 0 }",
    ));
    for i in 0..10 {
        let r = get(lb.addr, "/");
        assert_eq!(
            r.status,
            200,
            "GET {i}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let mut c = Client::connect(lb.addr);
        c.send(b"POST /orders HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
        let r = c.response();
        assert_eq!(
            r.status, 200,
            "POST {i}: nothing reached the dead endpoint, so it may go elsewhere"
        );
        assert_eq!(r.json()["body_length"], 5);
    }
    let retries = metric(&lb.scrape(), "lb_retries_total", &[("cluster", "app")]);
    assert!(
        retries >= 1.0,
        "the dead endpoint was never tried ({retries} retries)"
    );
}

/// `endpoint_limits.max_retries`: retries in flight to one endpoint stay under its limit; a
/// retry that would pass it is not made, and the client gets the first failure.
#[test]
fn endpoint_max_retries_bounds_retries_to_one_endpoint() {
    let release = Arc::new(AtomicBool::new(false));
    let r = release.clone();
    let held = Backend::start(Arc::new(move |_req, res| {
        let until = std::time::Instant::now() + BOUND;
        while !r.load(Ordering::SeqCst) && std::time::Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        res.send(200, &[], b"held");
    }))
    .unwrap();
    let dead = dead_addr();
    // Nearly every first pick goes to the dead endpoint, so every request needs a retry on
    // the held one.
    let lb = Lb::start(
        &config(&format!(
            "[[clusters]]\nname = \"app\"\nbalancer = \"weighted_round_robin\"\n\
             endpoints = [{{ addr = \"{dead}\", weight = 100 }}, {{ addr = \"{}\", weight = 1 }}]\n\
             endpoint_limits = {{ max_retries = 1 }}\n\n[[routes]]\ncluster = \"app\"\n",
            held.addr
        ))
        .replace("workers = 2", "workers = 1"),
    );
    let mut first = Client::connect(lb.addr);
    first.send(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n");
    wait_until(
        "the first request's retry to reach the held endpoint",
        || held.requests() == 1,
    );
    // A second retry to the same endpoint would be the second in flight: refused.
    let second = get(lb.addr, "/b");
    assert_eq!(second.status, 502);
    assert_eq!(second.json()["error"], "connect_failed");
    assert_eq!(held.requests(), 1, "the second retry was made anyway");
    let s = lb.scrape();
    assert_eq!(
        metric(&s, "lb_limit_rejections_total", &[("limit", "max_retries")]),
        1.0
    );
    release.store(true, Ordering::SeqCst);
    assert_eq!(first.response().status, 200);
    // With the retry finished, the next one may go again.
    assert_eq!(get(lb.addr, "/c").status, 200);
}
