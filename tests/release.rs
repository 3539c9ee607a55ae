//! Releases at the gateway: splits, stickiness, overrides, targeting, identity, blue-green,
//! mirroring, automatic rollback, promotion and rate limits, with real backends.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Backends named by cluster, answering with `X-Backend: <name>`.
fn named(name: &'static str) -> Handler {
    Arc::new(move |_req, res| res.send(200, &[("X-Backend", name)], name.as_bytes()))
}

fn clusters(list: &[(&str, SocketAddr)]) -> String {
    list.iter()
        .map(|(n, a)| {
            format!("[[clusters]]\nname = \"{n}\"\nendpoints = [{{ addr = \"{a}\" }}]\n\n")
        })
        .collect()
}

fn variant(r: &Response) -> String {
    r.header("x-backend").unwrap_or("").to_string()
}

struct Pair {
    stable: Backend,
    canary: Backend,
}

fn pair() -> Pair {
    Pair {
        stable: Backend::start(named("stable")).unwrap(),
        canary: Backend::start(named("canary")).unwrap(),
    }
}

fn split_config(p: &Pair, split: &str) -> String {
    config(&format!(
        "{}[[routes]]\nname = \"shop\"\npath_prefix = \"/\"\n[routes.split]\nname = \"shop\"\n{split}\n",
        clusters(&[("stable", p.stable.addr), ("canary", p.canary.addr)])
    ))
}

const TARGETS_90_10: &str = "targets = [{ name = \"stable\", cluster = \"stable\", weight = 90 }, { name = \"canary\", cluster = \"canary\", weight = 10 }]";

#[test]
fn weights_are_accurate_over_ten_thousand_requests() {
    let p = pair();
    let lb = Lb::start(&split_config(&p, TARGETS_90_10));
    let canary = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (addr, canary) = (lb.addr, canary.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..2500 {
                    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
                    if variant(&c.response()) == "canary" {
                        canary.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let share = canary.load(Ordering::SeqCst) as f64 / 10_000.0;
    println!(
        "canary share over 10,000 requests: {:.2}% (configured 10%)",
        share * 100.0
    );
    assert!(
        (share - 0.10).abs() < 0.015,
        "tolerance ±1.5 points: {share}"
    );
    let s = lb.split("shop");
    assert_eq!(
        s["targets"][1]["window"]["requests"].as_u64().unwrap() as f64 / 10_000.0,
        share
    );
    let m = lb.scrape();
    assert_eq!(
        metric(
            &m,
            "lb_split_requests_total",
            &[("split", "shop"), ("variant", "canary")]
        ) as usize,
        canary.load(Ordering::SeqCst)
    );
}

#[test]
fn sticky_assignment_holds_across_requests_processes_and_a_raise() {
    let p = pair();
    let sticky = "sticky = \"header:X-User-ID\"\nsalt = \"2026-11\"\n";
    let at_5 = sticky.to_string()
        + &TARGETS_90_10
            .replace("90", "95")
            .replace("weight = 10", "weight = 5");
    let lb1 = Lb::start(&split_config(&p, &at_5));
    let lb2 = Lb::start(&split_config(&p, &at_5));
    let of = |lb: &Lb, user: u32| {
        variant(&get_with(
            lb.addr,
            "/",
            &[("X-User-ID", &format!("user-{user}"))],
        ))
    };
    let first = of(&lb1, 7);
    for _ in 0..1000 {
        assert_eq!(of(&lb1, 7), first);
    }
    let mut before = HashMap::new();
    for u in 0..400 {
        let v = of(&lb1, u);
        assert_eq!(of(&lb2, u), v, "user {u} differs between two lb processes");
        before.insert(u, v);
    }
    let canaries = before.values().filter(|v| *v == "canary").count();
    assert!((8..=40).contains(&canaries), "about 5% of 400: {canaries}");
    // Raise to 10% by reload: every earlier canary user stays on the canary.
    let at_10 = sticky.to_string() + TARGETS_90_10;
    std::fs::write(&lb1.config_path, split_config(&p, &at_10)).unwrap();
    assert_eq!(lb1.admin("POST", "/reload").0, 200);
    let mut after = 0;
    for (u, v) in &before {
        let now = of(&lb1, *u);
        if v == "canary" {
            assert_eq!(now, "canary", "user {u} left the canary when it grew");
        }
        after += usize::from(now == "canary");
    }
    assert!(
        after > canaries,
        "the raise added users: {canaries} -> {after}"
    );
    // Changing the salt re-randomizes.
    std::fs::write(
        &lb1.config_path,
        split_config(&p, &at_10.replace("2026-11", "2026-12")),
    )
    .unwrap();
    assert_eq!(lb1.admin("POST", "/reload").0, 200);
    let moved = (0..400).filter(|u| of(&lb1, *u) != of(&lb2, *u)).count();
    assert!(moved > 0);
}

#[test]
fn overrides_and_targeting() {
    let p = pair();
    let lb = Lb::start(&split_config(
        &p,
        r#"targets = [{ name = "stable", cluster = "stable", weight = 100 }, { name = "canary", cluster = "canary", weight = 0 }]
override = [
  { header = "X-Canary", value = "true", target = "canary" },
  { query = "stage", value = "canary", target = "canary" },
  { cookie = "stage", value = "canary", target = "canary" },
]
force_header = "X-Variant"
ab_test = "shop-2026"
"#,
    ));
    assert_eq!(
        variant(&get(lb.addr, "/")),
        "stable",
        "weight 0 gets nothing"
    );
    assert_eq!(
        variant(&get_with(lb.addr, "/", &[("X-Canary", "true")])),
        "canary"
    );
    assert_eq!(variant(&get(lb.addr, "/x?stage=canary")), "canary");
    assert_eq!(
        variant(&get_with(lb.addr, "/", &[("Cookie", "a=1; stage=canary")])),
        "canary"
    );
    assert_eq!(
        variant(&get_with(lb.addr, "/", &[("X-Variant", "canary")])),
        "canary"
    );
    assert_eq!(
        variant(&get_with(lb.addr, "/", &[("X-Canary", "false")])),
        "stable"
    );
    let r = get_with(lb.addr, "/", &[("X-Canary", "true")]);
    assert_eq!(r.header("x-ab-test"), Some("shop-2026"));
    assert_eq!(r.header("x-ab-variant"), Some("canary"));

    // Targeting: only pro and enterprise plans, never from CN or RU.
    let lb = Lb::start(&split_config(
        &p,
        r#"targets = [{ name = "stable", cluster = "stable", weight = 0 }, { name = "canary", cluster = "canary", weight = 100 }]
default_target = "stable"
include = [{ header = "X-User-Plan", values = ["pro", "enterprise"] }]
exclude = [{ header = "X-User-Country", values = ["CN", "RU"] }]
"#,
    ));
    let v = |h: &[(&str, &str)]| variant(&get_with(lb.addr, "/", h));
    assert_eq!(v(&[("X-User-Plan", "pro")]), "canary");
    assert_eq!(
        v(&[("X-User-Plan", "enterprise"), ("X-User-Country", "DE")]),
        "canary"
    );
    assert_eq!(v(&[("X-User-Plan", "free")]), "stable");
    assert_eq!(v(&[]), "stable");
    assert_eq!(
        v(&[("X-User-Plan", "pro"), ("X-User-Country", "RU")]),
        "stable"
    );
}

fn sha256_hex(key: &str) -> String {
    use std::fmt::Write;
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(key.as_bytes())?;
            c.wait_with_output()
        });
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string(),
        Err(_) => key.bytes().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }),
    }
}

#[test]
fn consumer_metadata_routes_and_unknown_keys_get_401() {
    let sandbox = Backend::start(named("sandbox")).unwrap();
    let production = Backend::start(named("production")).unwrap();
    let cfg = config(&format!(
        r#"{}
[[consumers]]
name = "acme-test"
key_sha256 = "{}"
metadata = {{ environment = "test", plan = "pro" }}

[[consumers]]
name = "acme-live"
key_sha256 = "{}"
metadata = {{ environment = "live", plan = "pro" }}

[[routes]]
name = "payments-test"
path_prefix = "/payments"
consumer = {{ environment = "test" }}
cluster = "sandbox"

[[routes]]
name = "payments-live"
path_prefix = "/payments"
consumer = {{ environment = "live" }}
cluster = "production"
"#,
        clusters(&[("sandbox", sandbox.addr), ("production", production.addr)]),
        sha256_hex("test-key-1"),
        sha256_hex("live-key-1"),
    ));
    let lb = Lb::start(&cfg);
    assert_eq!(
        variant(&get_with(
            lb.addr,
            "/payments/1",
            &[("X-API-Key", "test-key-1")]
        )),
        "sandbox"
    );
    assert_eq!(
        variant(&get_with(
            lb.addr,
            "/payments/1",
            &[("X-API-Key", "live-key-1")]
        )),
        "production"
    );
    let r = get_with(lb.addr, "/payments/1", &[("X-API-Key", "stolen")]);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    assert_eq!(get(lb.addr, "/payments/1").status, 401);
    assert_eq!(sandbox.requests() + production.requests(), 2);
}

#[test]
fn blue_green_switch_and_back_under_load_with_zero_failures() {
    let blue = Backend::start(named("blue")).unwrap();
    let green = Backend::start(named("green")).unwrap();
    let lb = Lb::start(&config(&format!(
        "{}[[routes]]\nname = \"app\"\n[routes.split]\nname = \"app\"\ntargets = [{{ name = \"blue\", cluster = \"blue\", weight = 100 }}, {{ name = \"green\", cluster = \"green\", weight = 0 }}]\n",
        clusters(&[("blue", blue.addr), ("green", green.addr)])
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (addr, stop, failed, ok) = (lb.addr, stop.clone(), failed.clone(), ok.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let until = std::time::Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
                    match c.try_response(false) {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        })
        .collect();
    for round in 0..10 {
        let (to, weights) = if round % 2 == 0 {
            ("green", json!({"blue": 0, "green": 100}))
        } else {
            ("blue", json!({"blue": 100, "green": 0}))
        };
        let (status, body) = lb.admin_json(
            "POST",
            "/splits/app/weights",
            &json!({ "weights": weights }),
        );
        assert_eq!(status, 200, "{body}");
        for _ in 0..5 {
            assert_eq!(variant(&get(lb.addr, "/")), to, "round {round}");
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    println!(
        "{} requests during 10 switches, {} failed",
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst)
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    let (status, body) = lb.admin_json(
        "POST",
        "/splits/app/weights",
        &json!({ "weights": {"blue": 50, "green": 40} }),
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "weights must add up to 100"
    );
}

#[test]
fn mirror_copies_without_touching_the_primary() {
    let p = pair();
    let seen = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(AtomicUsize::new(0));
    let (s2, b2) = (seen.clone(), bodies.clone());
    let release = Arc::new(AtomicBool::new(false));
    let r2 = release.clone();
    let shadow = Backend::start(Arc::new(move |req, res| {
        s2.fetch_add(1, Ordering::SeqCst);
        b2.fetch_add(req.body_len as usize, Ordering::SeqCst);
        // A stalled shadow: holds every copy until the test lets go.
        while !r2.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        res.send(500, &[], b"shadow");
    }))
    .unwrap();
    let cfg = split_config(
        &p,
        "targets = [{ name = \"stable\", cluster = \"stable\", weight = 100 }]\nmirror = { cluster = \"shadow\", percent = 100, max_in_flight = 1000, timeout = \"20s\" }",
    )
    .replace("[[routes]]", &format!("{}[[routes]]", clusters(&[("shadow", shadow.addr)])));
    let lb = Lb::start(&cfg);
    for i in 0..20 {
        let mut c = Client::connect(lb.addr);
        c.send(
            format!("POST /m/{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello").as_bytes(),
        );
        let r = c.response();
        assert_eq!(
            (r.status, variant(&r).as_str()),
            (200, "stable"),
            "the primary answers while the shadow stalls"
        );
    }
    wait_until("the shadow to get every copy", || {
        seen.load(Ordering::SeqCst) == 20
    });
    assert_eq!(bodies.load(Ordering::SeqCst), 100, "bodies are copied");
    release.store(true, Ordering::SeqCst);
    let m = lb.scrape();
    assert_eq!(
        metric(
            &m,
            "lb_mirror_requests_total",
            &[("split", "shop"), ("result", "sent")]
        ),
        20.0
    );
    drop(shadow);
    // A dead shadow changes nothing either.
    for _ in 0..10 {
        assert_eq!(variant(&get(lb.addr, "/")), "stable");
    }
}

fn analysed(p: &Pair, extra: &str) -> String {
    split_config(
        p,
        &format!(
            "targets = [{{ name = \"stable\", cluster = \"stable\", weight = 50 }}, {{ name = \"canary\", cluster = \"canary\", weight = 50 }}]\n\
             analysis = {{ baseline = \"stable\", canary = \"canary\", window = \"30s\", interval = \"50ms\", min_requests = 20, max_error_rate_increase = 0.1 {extra} }}"
        ),
    )
}

#[test]
fn rollback_fires_when_the_canary_fails() {
    let stable = Backend::start(named("stable")).unwrap();
    let canary = Backend::start(Arc::new(|_req, res| {
        res.send(500, &[("X-Backend", "canary")], b"broken")
    }))
    .unwrap();
    let p = Pair { stable, canary };
    let lb = Lb::start(&analysed(&p, ""));
    wait_until("the rollback", || {
        get(lb.addr, "/");
        lb.split("shop")["rolled_back"] == true
    });
    let s = lb.split("shop");
    assert_eq!(s["targets"][1]["weight_percent"], 0.0);
    assert_eq!(s["targets"][0]["weight_percent"], 100.0);
    assert!(
        s["last_decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("5xx"),
        "{s}"
    );
    for _ in 0..20 {
        assert_eq!(variant(&get(lb.addr, "/")), "stable");
    }
    assert_eq!(
        metric(
            &lb.scrape(),
            "lb_canary_rollbacks_total",
            &[("split", "shop")]
        ),
        1.0
    );
    assert!(lb.log().contains("canary rolled back"));
}

/// The canary analysis counts a gRPC call as failed by its `grpc-status`, from the
/// operator's `[http2] grpc_error_codes`, though every answer is HTTP 200: a canary that
/// answers UNAVAILABLE is rolled back.
#[test]
fn rollback_fires_when_the_canary_fails_grpc_calls() {
    let grpc = |code: &'static str, name: &'static str| -> Handler {
        Arc::new(move |_req, res| {
            res.send(
                200,
                &[
                    ("content-type", "application/grpc"),
                    ("grpc-status", code),
                    ("X-Backend", name),
                ],
                b"",
            )
        })
    };
    let p = Pair {
        stable: Backend::start(grpc("0", "stable")).unwrap(),
        canary: Backend::start(grpc("14", "canary")).unwrap(),
    };
    let cfg = analysed(&p, "").replace(
        "name = \"http\"\naddr = \"127.0.0.1:0\"\n",
        "name = \"http\"\naddr = \"127.0.0.1:0\"\nprotocols = [\"http/1.1\", \"h2c\"]\n\n[http2]\ngrpc_error_codes = [\"UNAVAILABLE\"]\n",
    );
    assert!(cfg.contains("h2c"));
    let lb = Lb::start(&cfg);
    let url = format!("http://{}/shop.Cart/Add", lb.addr);
    wait_until("the rollback", || {
        grpc_curl(&["-X", "POST"], &url);
        lb.split("shop")["rolled_back"] == true
    });
    let s = lb.split("shop");
    assert_eq!(s["targets"][1]["weight_percent"], 0.0, "{s}");
    for _ in 0..5 {
        assert!(grpc_curl(&["-X", "POST"], &url).contains("grpc-status: 0"));
    }
}

#[test]
fn rollback_fires_when_the_canary_slows_down() {
    let stable = Backend::start(named("stable")).unwrap();
    let canary = Backend::start(Arc::new(|_req, res| {
        std::thread::sleep(Duration::from_millis(60));
        res.send(200, &[("X-Backend", "canary")], b"slow");
    }))
    .unwrap();
    let p = Pair { stable, canary };
    // Latency is judged only in this test: on a busy machine, p99s of small samples are noisy.
    let lb = Lb::start(&analysed(&p, ", max_p99_ratio = 4.0"));
    wait_until("the latency rollback", || {
        get(lb.addr, "/");
        lb.split("shop")["rolled_back"] == true
    });
    assert!(lb.split("shop")["last_decision"]["reason"]
        .as_str()
        .unwrap()
        .contains("p99"));
}

#[test]
fn no_rollback_below_the_minimum_or_when_stable_is_as_bad() {
    // Both fail alike: the relative threshold sees no difference.
    let both_bad = |name: &'static str| -> Handler {
        Arc::new(move |_req, res| res.send(500, &[("X-Backend", name)], b"x"))
    };
    let p = Pair {
        stable: Backend::start(both_bad("stable")).unwrap(),
        canary: Backend::start(both_bad("canary")).unwrap(),
    };
    let lb = Lb::start(&analysed(&p, ""));
    // Below the minimum: judged as not enough data.
    for _ in 0..10 {
        get(lb.addr, "/");
    }
    wait_until("an evaluation", || {
        lb.split("shop")["last_verdict"] != "none"
    });
    assert_eq!(lb.split("shop")["last_verdict"], "not_enough_data");
    wait_until("a healthy verdict with enough data", || {
        get(lb.addr, "/");
        lb.split("shop")["last_verdict"] == "healthy"
    });
    assert_eq!(lb.split("shop")["rolled_back"], false);
}

#[test]
fn progressive_promotion_steps_up_while_healthy() {
    let p = pair();
    // The split table is the last one in the file: the promotion key joins it.
    let cfg = analysed(&p, "") + "promotion = { steps = [10, 50, 100], hold = \"100ms\" }\n";
    let lb = Lb::start(&cfg);
    assert_eq!(
        lb.split("shop")["targets"][1]["weight_percent"],
        10.0,
        "promotion starts at its first step"
    );
    wait_until("promotion to 100%", || {
        for _ in 0..5 {
            get(lb.addr, "/");
        }
        lb.split("shop")["targets"][1]["weight_percent"] == 100.0
    });
    assert!(
        metric(
            &lb.scrape(),
            "lb_canary_promotions_total",
            &[("split", "shop")]
        ) >= 2.0
    );
}

#[test]
fn runtime_changes_survive_unrelated_reloads_and_yield_to_file_changes() {
    let p = pair();
    let lb = Lb::start(&split_config(&p, TARGETS_90_10));
    assert_eq!(
        lb.admin_json(
            "POST",
            "/splits/shop/weights",
            &json!({"weights": {"stable": 0, "canary": 100}})
        )
        .0,
        200
    );
    // Reload with the split untouched (another route added): the runtime weights stay.
    let mut text = split_config(&p, TARGETS_90_10);
    text.push_str("\n[[routes]]\nname = \"other\"\npath = \"/other\"\ncluster = \"stable\"\n");
    std::fs::write(&lb.config_path, &text).unwrap();
    assert_eq!(lb.admin("POST", "/reload").0, 200);
    assert_eq!(lb.split("shop")["targets"][1]["weight_percent"], 100.0);
    assert_eq!(lb.split("shop")["runtime_weights"], true);
    // Reload that changes the split: the file wins.
    std::fs::write(
        &lb.config_path,
        split_config(
            &p,
            &TARGETS_90_10
                .replace("90", "80")
                .replace("weight = 10", "weight = 20"),
        ),
    )
    .unwrap();
    assert_eq!(lb.admin("POST", "/reload").0, 200);
    assert_eq!(lb.split("shop")["targets"][1]["weight_percent"], 20.0);
    assert_eq!(lb.split("shop")["runtime_weights"], false);
    // Pause, rollback and promote answer, and bad requests are JSON errors.
    assert_eq!(lb.admin("POST", "/splits/shop/rollback").0, 200);
    assert_eq!(lb.split("shop")["targets"][1]["weight_percent"], 0.0);
    assert_eq!(lb.admin("POST", "/splits/shop/promote").0, 200);
    assert_eq!(lb.split("shop")["targets"][1]["weight_percent"], 100.0);
    assert_eq!(lb.admin("POST", "/splits/shop/pause").0, 200);
    assert_eq!(lb.split("shop")["paused"], true);
    assert_eq!(lb.admin("POST", "/splits/nope/pause").0, 404);
    assert_eq!(lb.admin("GET", "/splits/shop/pause").0, 405);
}

#[test]
fn rate_limits_are_exact_across_workers() {
    let b = Backend::start(named("app")).unwrap();
    let lb = Lb::start(&config(&format!(
        "{}[[routes]]\nname = \"api\"\ncluster = \"app\"\nrate_limit = {{ key = \"client_ip\", limits = [{{ requests = 20, per = \"1m\" }}] }}\n",
        clusters(&[("app", b.addr)])
    )));
    let mut ok = 0;
    let mut limited = Vec::new();
    for _ in 0..30 {
        // New connections: the kernel spreads them over both workers.
        let r = get(lb.addr, "/");
        match r.status {
            200 => ok += 1,
            429 => limited.push(r),
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(
        (ok, limited.len()),
        (20, 10),
        "20 per minute, whatever the number of workers"
    );
    let r = &limited[0];
    assert_eq!(r.header("ratelimit-limit"), Some("20"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3).contains(&retry), "one token every 3 s: {retry}");
    assert_eq!(
        metric(&lb.scrape(), "lb_rate_limited_total", &[("route", "api")]),
        10.0
    );
}

#[test]
fn rate_limits_by_consumer_plan() {
    let b = Backend::start(named("app")).unwrap();
    let lb = Lb::start(&config(&format!(
        r#"{}
[[consumers]]
name = "big"
key_sha256 = "{}"
metadata = {{ plan = "premium" }}

[[consumers]]
name = "small"
key_sha256 = "{}"
metadata = {{ plan = "free" }}

[[routes]]
name = "api"
cluster = "app"
rate_limit = {{ key = "consumer", limits = [{{ when = {{ plan = "premium" }}, requests = 15, per = "1m" }}, {{ requests = 3, per = "1m" }}] }}
"#,
        clusters(&[("app", b.addr)]),
        sha256_hex("premium-key"),
        sha256_hex("free-key"),
    )));
    let count = |key: &str| {
        (0..20)
            .filter(|_| get_with(lb.addr, "/", &[("X-API-Key", key)]).status == 200)
            .count()
    };
    assert_eq!(count("premium-key"), 15);
    assert_eq!(count("free-key"), 3);
}
