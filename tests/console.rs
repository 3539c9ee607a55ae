//! The console on the admin listener (`/ui`), in a real browser: headless Chromium driven
//! over WebDriver, against a running `lb demo` and an lb with an admin token.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::browser::{self, Browser};
use common::*;
use serde_json::{json, Value};

/// One `lb demo` at a time: it serves on the demo's own ports.
static DEMO_PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `lb demo` with its built-in backends, on the demo's own ports; killed on drop.
struct Demo {
    _ports: std::sync::MutexGuard<'static, ()>,
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    dir: PathBuf,
}

impl Demo {
    fn start() -> Demo {
        let ports = DEMO_PORTS.lock().unwrap_or_else(|p| p.into_inner());
        let dir = scratch_dir("demo");
        let ready = dir.join("ready.json");
        let log = std::fs::File::create(dir.join("lb.log")).expect("log file");
        let child = Command::new(lb_bin())
            .args(["demo", "--ready-file"])
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn lb demo");
        let mut demo = Demo {
            _ports: ports,
            child,
            addr: "127.0.0.1:8080".parse().expect("addr"),
            admin: "127.0.0.1:9901".parse().expect("addr"),
            dir,
        };
        let until = Instant::now() + BOUND;
        while !ready.exists() {
            if let Ok(Some(status)) = demo.child.try_wait() {
                panic!("lb demo exited with {status}:\n{}", demo.log());
            }
            assert!(Instant::now() < until, "lb demo did not become ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&ready).expect("ready file"))
            .expect("ready JSON");
        if let Some(a) = v["admin"].as_str() {
            demo.admin = a.parse().expect("admin addr");
        }
        if let Some(a) = v["listeners"]["http"].as_str() {
            demo.addr = a.parse().expect("listener addr");
        }
        demo
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lb.log")).unwrap_or_default()
    }

    fn admin(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        admin_call(self.admin, None, method, path, body)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One admin call, with the bearer token if given.
fn admin_call(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut c = Client::connect(addr);
    c.send(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )
        .as_bytes(),
    );
    let r = c.response();
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

/// The demo's users API answers the curl lines its banner and docs/versions.md print: v1 by
/// `Accept` in its warning phase, an unknown version, a body and a path parameter that fail
/// v2's validation, and who still calls v1.
#[test]
fn the_demos_users_api_answers_as_its_banner_says() {
    let demo = Demo::start();
    let url = |path: &str| format!("http://{}{path}", demo.addr);
    let (body, status, err, ok) = curl_with(
        &[
            "-D",
            "-",
            "-H",
            "Accept: application/vnd.demo.v1+json",
            &url("/api/users/7"),
        ],
        "%{http_code}",
    );
    assert!(ok, "{err}");
    assert_eq!(status, "200", "{body}");
    let lower = body.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nwarning: 299 lb ") && lower.contains("\r\napi-version: 1\r\n"),
        "{body}"
    );
    assert!(body.contains("\"_deprecation\":{"), "{body}");

    let (body, status, _, _) = curl_with(&[&url("/v9/users/7")], "%{http_code}");
    assert_eq!(status, "400", "{body}");
    let v: Value = serde_json::from_str(&body).expect("problem JSON");
    assert_eq!(v["supported_versions"], json!(["1", "2"]), "{v}");

    let (body, status, _, _) = curl_with(
        &[
            "-H",
            "Content-Type: application/json",
            "--data",
            "{\"email\":\"nope\",\"plan\":\"gold\"}",
            &url("/api/users"),
        ],
        "%{http_code}",
    );
    assert_eq!(status, "400", "{body}");
    for pointer in ["/email", "/plan", "/name"] {
        assert!(
            body.contains(&format!("\"{pointer}\"")),
            "{pointer}: {body}"
        );
    }

    let (body, status, _, _) = curl_with(&[&url("/v2/users/abc")], "%{http_code}");
    assert_eq!(status, "400", "{body}");
    assert!(body.contains("integer"), "{body}");

    let (_, v) = demo.admin("GET", "/deprecations", &Value::Null);
    let v1 = v["versions"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|e| e["route"] == "users" && e["version"] == "1")
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(v1["phase"], "warning", "{v}");
    assert_eq!(v1["consumers"][0]["consumer"], "anonymous", "{v}");
}

/// Where the screenshots go: `target/console/`.
fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/console")
}

/// Requests to `path` from a thread until stopped (at most `max`).
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Traffic {
    fn start(addr: SocketAddr, path: &'static str, max: u64) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0;
            while sent < max && !flag.load(Ordering::Relaxed) {
                let _ = get(addr, path);
                sent += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn split_weight(demo: &Demo, target: &str) -> f64 {
    let (_, v) = demo.admin("GET", "/splits", &Value::Null);
    v["splits"][0]["targets"]
        .as_array()
        .and_then(|l| l.iter().find(|t| t["name"] == target))
        .and_then(|t| t["weight_percent"].as_f64())
        .unwrap_or(-1.0)
}

fn canary_requests(demo: &Demo) -> f64 {
    let text = {
        let mut c = Client::connect(demo.admin);
        c.send(format!("GET /metrics HTTP/1.1\r\nHost: {}\r\n\r\n", demo.admin).as_bytes());
        String::from_utf8_lossy(&c.response().body).into_owned()
    };
    metric(
        &parse_prometheus(&text),
        "lb_split_requests_total",
        &[("split", "checkout"), ("variant", "canary")],
    )
}

/// Each page of the console shows what the running demo does, and the Releases page's buttons
/// act on the split through the admin API.
#[test]
fn the_console_shows_the_demo_and_acts_on_its_canary() {
    if let Some(why) = browser::unavailable() {
        return skip("the_console_shows_the_demo_and_acts_on_its_canary", &why);
    }
    let demo = Demo::start();
    let ui = format!("http://{}/ui", demo.admin);
    let b = Browser::start();
    let shots = shots();

    // Overview: the version and source of the config, and live traffic figures.
    let (_, config) = demo.admin("GET", "/config", &Value::Null);
    let version = config["version"].as_str().expect("version").to_string();
    b.goto(&format!("{ui}#overview"));
    b.wait_text("#ov-version", "the config version", |t| {
        t.starts_with(&version[..12])
    });
    b.wait_text("#ov-source", "the config source", |t| {
        t.contains("demo.toml")
    });
    {
        let _traffic = Traffic::start(demo.addr, "/api/orders/1", 5_000);
        b.wait_text("#ov-rps", "requests/s above zero", |t| {
            t.parse::<f64>().is_ok_and(|x| x > 0.0)
        });
        b.wait_text("#ov-p99", "a p99", |t| t.ends_with("ms"));
        b.wait_text("#ov-errors", "the 5xx share", |t| {
            t.strip_suffix('%')
                .is_some_and(|n| n.parse::<f64>().is_ok())
        });
        b.wait_text("#ov-uptime", "the uptime", |t| {
            t.ends_with('s') && t.chars().next().is_some_and(|c| c.is_ascii_digit())
        });
        b.wait_text("#ov-conns", "an open connection count", |t| {
            t.parse::<u64>().is_ok()
        });
        let (_, stats) = demo.admin("GET", "/stats", &Value::Null);
        let workers = stats["workers"].as_array().map_or(0, Vec::len);
        assert!(workers > 0);
        assert_eq!(
            b.eval("return document.querySelectorAll('#ov-workers tbody tr').length;"),
            json!(workers),
            "a row per worker"
        );
        b.screenshot(&shots.join("overview.png"));
    }

    // Routes: counts per route, and an explanation that spends nothing.
    b.goto(&format!("{ui}#routes"));
    b.wait_text(
        "tr[data-route=orders] td:nth-child(7)",
        "the orders route's request count",
        |t| t.parse::<u64>().is_ok_and(|n| n > 0),
    );
    b.wait_text("tr[data-route=shop-eu]", "the EU shop's matchers", |t| {
        t.contains("path prefix /shop") && t.contains("continent EU")
    });
    let before = canary_requests(&demo);
    b.fill("#ex-url", &format!("http://{}/api/checkout", demo.addr));
    b.fill("#ex-headers", "X-Canary: true");
    b.click("#ex-go");
    let text = b.wait_text("#ex-text", "the explanation", |t| t.contains("cluster"));
    assert!(
        text.contains("checkout-canary") && text.contains("route"),
        "the explanation names the canary's cluster: {text}"
    );
    assert_eq!(
        canary_requests(&demo),
        before,
        "an explanation counts no split decision"
    );
    b.screenshot(&shots.join("routes.png"));

    // Clusters: endpoints with their health.
    b.goto(&format!("{ui}#clusters"));
    b.wait_text("[data-cluster=orders]", "the orders cluster", |t| {
        t.contains("127.0.0.1:9101") && t.contains("healthy")
    });
    assert_eq!(
        b.eval("return document.querySelectorAll('[data-cluster=orders] tbody tr').length;"),
        json!(2)
    );
    let (_, clusters) = demo.admin("GET", "/clusters", &Value::Null);
    let orders = clusters["clusters"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == "orders"))
        .expect("orders")
        .clone();
    let card = b.text("[data-cluster=orders]").unwrap_or_default();
    assert!(
        card.contains(orders["balancer"].as_str().expect("balancer"))
            && card.contains("closed")
            && card.contains("in flight"),
        "balancer, breaker and in-flight count: {card}"
    );
    b.screenshot(&shots.join("clusters.png"));

    // Kernel: the steering state as the admin API says it, and the workers.
    let (_, steering) = demo.admin("GET", "/steering", &Value::Null);
    b.goto(&format!("{ui}#kernel"));
    let status = steering["status"].as_str().expect("status").to_string();
    b.wait_text("#k-status", "the steering status", |t| t == status);
    assert!(
        b.eval("return document.querySelectorAll('#k-workers tbody tr').length;")
            .as_u64()
            .is_some_and(|n| n > 0),
        "a row per worker"
    );
    b.screenshot(&shots.join("kernel.png"));

    // Certificates: the demo's TLS listener's certificate.
    let (_, certs) = demo.admin("GET", "/certificates", &Value::Null);
    let name = certs["certificates"][0]["names"][0]
        .as_str()
        .expect("the demo serves a certificate")
        .to_string();
    b.goto(&format!("{ui}#certificates"));
    b.wait_text("#cert-table", "the demo's certificate", |t| {
        t.contains(&name) && t.contains("days")
    });
    b.screenshot(&shots.join("certificates.png"));

    // API versions: the demo's users API v1, deprecated, with the consumer that called it.
    let r = get_with(
        demo.addr,
        "/api/users/7",
        &[("Accept", "application/vnd.demo.v1+json")],
    );
    assert_eq!(r.status, 200);
    assert!(r.header("warning").is_some(), "v1 is in its warning phase");
    b.goto(&format!("{ui}#versions"));
    b.wait_text(
        "[data-version='users/1']",
        "the users API's v1 and its caller",
        |t| t.contains("warning") && t.contains("anonymous: 1"),
    );
    b.screenshot(&shots.join("versions.png"));

    // Releases: each button asks first, then calls the admin API.
    b.goto(&format!("{ui}#releases"));
    b.wait_text("#split-checkout", "the checkout split", |t| {
        t.contains("as configured")
    });
    let press = |action: &str| {
        b.click(&format!("#split-checkout button[data-action={action}]"));
        common::wait_until("the confirmation dialog", || b.visible("#confirm-ok"));
        b.click("#confirm-ok");
    };
    press("promote");
    wait_until("promote to put the canary at 100%", || {
        split_weight(&demo, "canary") == 100.0
    });
    b.wait_text("#split-checkout .decision", "the promotion", |t| {
        t == "promote"
    });
    press("rollback");
    wait_until("roll back to put the canary at 0%", || {
        split_weight(&demo, "canary") == 0.0
    });
    b.wait_text("#split-checkout", "the rolled-back badge", |t| {
        t.contains("rolled back")
    });
    press("pause");
    wait_until("pause", || {
        demo.admin("GET", "/splits", &Value::Null).1["splits"][0]["paused"] == true
    });
    b.wait_text(
        "#split-checkout button[data-action=resume]",
        "Resume",
        |t| t == "Resume",
    );
    press("resume");
    wait_until("resume", || {
        demo.admin("GET", "/splits", &Value::Null).1["splits"][0]["paused"] == false
    });
    // Cancel changes nothing.
    b.wait_text(
        "#split-checkout button[data-action=promote]",
        "Promote",
        |t| t == "Promote",
    );
    b.click("#split-checkout button[data-action=promote]");
    wait_until("the confirmation dialog", || b.visible("#confirm-cancel"));
    b.click("#confirm-cancel");
    wait_until("the dialog to close", || !b.visible("#confirm-cancel"));
    // Two refreshes later, still nothing has changed.
    for _ in 0..2 {
        let seen = b.text("#status").unwrap_or_default();
        b.wait_text("#status", "a refresh", |t| t != seen);
    }
    assert_eq!(split_weight(&demo, "canary"), 0.0, "cancel did nothing");
    assert_eq!(
        demo.admin("GET", "/splits", &Value::Null).1["splits"][0]["last_decision"]["action"],
        "resume",
        "cancel did nothing"
    );
    // Set weights back to 70/30 through the weights dialog.
    b.click("#split-checkout button[data-action=weights]");
    wait_until("the weights dialog", || {
        b.visible("#confirm-extra input[data-target=canary]")
    });
    b.fill("#confirm-extra input[data-target=stable]", "70");
    b.fill("#confirm-extra input[data-target=canary]", "30");
    b.click("#confirm-ok");
    wait_until("weights of 70/30", || split_weight(&demo, "canary") == 30.0);
    b.wait_text("#split-checkout", "weights set at runtime", |t| {
        t.contains("weights set at runtime")
    });

    // The demo canary fails one request in three: lb rolls it back on its own, and the page
    // shows it within a few seconds.
    // The budget: the traffic to reach the analysis' 20 canary requests (well under a
    // second here), its 1 s interval, and the page's 1 s poll, with room to spare.
    let started = Instant::now();
    let traffic = Traffic::start(demo.addr, "/api/checkout", 2_000);
    loop {
        let decision = b.text("#split-checkout .decision").unwrap_or_default();
        let card = b.text("#split-checkout").unwrap_or_default();
        if decision == "rollback" && card.contains("rolled back") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the Releases page did not show the rollback within 8 s of the failing traffic: {card}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(traffic);
    let split = demo.admin("GET", "/splits", &Value::Null).1["splits"][0].clone();
    assert_eq!(split["rolled_back"], true);
    let reason = split["last_decision"]["reason"]
        .as_str()
        .expect("a reason")
        .to_string();
    assert!(reason.contains("canary"), "{reason}");
    let card = b.wait_text("#split-checkout", "the reason", |t| t.contains(&reason));
    assert!(card.contains("0%"), "the canary's weight is 0 now: {card}");
    // The charts have the canary's line and the threshold.
    assert!(
        b.eval("return document.querySelectorAll('#chart-checkout-errors .canary').length;")
            .as_u64()
            .is_some_and(|n| n > 0),
        "the error chart draws the canary"
    );
    assert!(
        b.eval("return document.querySelectorAll('#chart-checkout-errors line.limit').length;")
            == json!(1),
        "the error chart draws the threshold"
    );
    b.screenshot(&shots.join("releases.png"));
}

fn token_config() -> (String, Backend) {
    let backend = Backend::start(echo("app")).expect("backend");
    let cfg = format!(
        "[server]\nworkers = 1\n[[listeners]]\naddr = \"127.0.0.1:0\"\n\
         [admin]\naddr = \"127.0.0.1:0\"\ntoken = \"s3cret-token-for-the-console\"\n\
         [[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{0}\" }}]\n\
         [[clusters]]\nname = \"app-next\"\nendpoints = [{{ addr = \"{0}\" }}]\n\
         [[routes]]\nname = \"release\"\npath_prefix = \"/release\"\n\
         [routes.split]\nname = \"rel\"\n\
         targets = [{{ name = \"stable\", cluster = \"app\", weight = 90 }}, {{ name = \"next\", cluster = \"app-next\", weight = 10 }}]\n\
         analysis = {{ baseline = \"stable\", canary = \"next\", window = \"30s\", interval = \"1s\", min_requests = 20, max_error_rate = 0.05, max_p99 = \"250ms\" }}\n\
         [[routes]]\nname = \"all\"\ncluster = \"app\"\n",
        backend.addr
    );
    (cfg, backend)
}

/// With an admin token, the page loads (it holds no data), asks for the token, says so when
/// a wrong one is given, and shows the data once the right one is.
#[test]
fn the_console_asks_for_the_admin_token() {
    let (cfg, _backend) = token_config();
    let lb = Lb::start(&cfg);
    let admin = lb.admin.expect("admin");
    // The files need no token; the data does.
    assert_eq!(admin_call(admin, None, "GET", "/ui", &Value::Null).0, 200);
    assert_eq!(
        admin_call(admin, None, "GET", "/stats", &Value::Null).0,
        401
    );
    let (status, stats) = admin_call(
        admin,
        Some("s3cret-token-for-the-console"),
        "GET",
        "/stats",
        &Value::Null,
    );
    assert_eq!(status, 200);
    let version = stats["version"].as_str().expect("version").to_string();

    if let Some(why) = browser::unavailable() {
        return skip("the_console_asks_for_the_admin_token", &why);
    }
    let b = Browser::start();
    b.goto(&format!("http://{admin}/ui"));
    wait_until("the token form", || b.visible("#token"));
    assert!(!b.visible("#error"), "no error before a token is given");

    b.fill("#token", "wrong-token");
    b.click("#login-go");
    let error = b.wait_text("#error", "the refusal", |t| t.contains("refused"));
    assert!(b.visible("#error"), "the refusal is shown: {error}");
    assert!(b.visible("#token"), "the form stays, to try again");
    b.screenshot(&shots().join("token-refused.png"));

    b.fill("#token", "s3cret-token-for-the-console");
    b.click("#login-go");
    b.wait_text("#ov-version", "the config version", |t| {
        t.starts_with(&version[..12])
    });
    assert!(!b.visible("#error"), "the refusal is gone");
    assert!(!b.visible("#token"), "the form is gone");
    // A pasted request explains as well: its request line gives the method and target.
    b.goto(&format!("http://{admin}/ui#routes"));
    b.wait_text("tr[data-route=all]", "the route", |t| t.contains("app"));
    b.fill(
        "#ex-headers",
        "DELETE /pasted HTTP/1.1\nHost: app.example\nX-Trace: 1",
    );
    b.click("#ex-go");
    b.wait_text("#ex-text", "the pasted request's explanation", |t| {
        t.contains("DELETE /pasted HTTP/1.1") && t.contains("X-Trace: 1")
    });

    // The last reload and its result: a refused one with its error.
    std::fs::write(
        &lb.config_path,
        cfg.replace("[[routes]]", "[[routes]]\nbogus = 1"),
    )
    .expect("write config");
    let (status, _) = admin_call(
        admin,
        Some("s3cret-token-for-the-console"),
        "POST",
        "/reload",
        &Value::Null,
    );
    assert_eq!(status, 400);
    b.goto(&format!("http://{admin}/ui#overview"));
    b.wait_text("#ov-reload", "the refused reload", |t| {
        t.contains("refused") && t.contains("bogus")
    });
    std::fs::write(&lb.config_path, &cfg).expect("write config");
    let (status, _) = admin_call(
        admin,
        Some("s3cret-token-for-the-console"),
        "POST",
        "/reload",
        &Value::Null,
    );
    assert_eq!(status, 200);
    b.wait_text("#ov-reload", "the reload that took", |t| {
        t.starts_with("ok")
    });

    // Both thresholds of a split's analysis are drawn, each on its chart.
    b.goto(&format!("http://{admin}/ui#releases"));
    b.wait_text("#split-rel", "the split", |t| t.contains("stable"));
    for chart in ["errors", "p99"] {
        let limits = b.eval(&format!(
            "return Array.from(document.querySelectorAll('#chart-rel-{chart} text')).map((t) => t.textContent).join('|');"
        ));
        let limits = limits.as_str().unwrap_or("");
        assert!(limits.contains("max"), "{chart}: {limits}");
        assert_eq!(
            b.eval(&format!(
                "return document.querySelectorAll('#chart-rel-{chart} line.limit').length;"
            )),
            json!(1),
            "{chart}: {limits}"
        );
    }
    assert!(
        b.text("#chart-rel-p99")
            .unwrap_or_default()
            .contains("250 ms"),
        "the p99 limit at 250 ms"
    );
    assert!(
        b.text("#chart-rel-errors")
            .unwrap_or_default()
            .contains("5.00%"),
        "the error limit at 5%"
    );

    // The token lasts for the session: a reload does not ask again.
    b.goto(&format!("http://{admin}/ui?again#clusters"));
    b.wait_text("[data-cluster=app]", "the app cluster", |t| {
        t.contains("healthy")
    });
}

/// The console's files are served with a policy that keeps other sites from framing the page
/// or loading anything into it.
#[test]
fn the_console_page_cannot_be_framed_or_injected() {
    let (cfg, _backend) = token_config();
    let lb = Lb::start(&cfg);
    let admin = lb.admin.expect("admin");
    let mut c = Client::connect(admin);
    c.send(format!("GET /ui HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes());
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    let csp = r.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(String::from_utf8_lossy(&r.body).contains("/ui/app.js"));
    // HEAD: the same head, no body.
    let mut c = Client::connect(admin);
    c.send(format!("HEAD /ui/app.js HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes());
    let r = c.try_response(true).expect("a response");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert!(c.closed_by_peer(), "nothing follows the head");
    // A rebinding page still may not read it.
    let mut c = Client::connect(admin);
    c.send(b"GET /ui/app.js HTTP/1.1\r\nHost: evil.example\r\n\r\n");
    assert_eq!(c.response().status, 403);
}

/// An explanation asked through the admin API plans the request on the live config, but
/// takes no rate-limit token: the client still gets its one request a minute.
#[test]
fn explain_through_the_admin_api_spends_no_rate_limit_token() {
    let backend = Backend::start(echo("app")).expect("backend");
    let lb = Lb::start(&config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[routes]]\nname = \"limited\"\ncluster = \"app\"\n\
         rate_limit = {{ key = \"client_ip\", limits = [{{ requests = 1, per = \"1m\" }}] }}\n",
        backend.addr
    )));
    let ask = json!({ "method": "GET", "url": "http://app.example/x", "client": "127.0.0.1" });
    for _ in 0..3 {
        let (status, x) = lb.admin_json("POST", "/explain", &ask);
        assert_eq!(status, 200, "{x}");
        assert_eq!(x["route"], "limited");
        assert_eq!(x["cluster"], "app", "not refused: {x}");
        assert!(x["status"].is_null(), "forwarded, not answered: {x}");
    }
    assert_eq!(get(lb.addr, "/x").status, 200, "the token is still there");
    assert_eq!(get(lb.addr, "/x").status, 429, "and there was only one");
    // Now the explanation says the client would be limited.
    let (_, x) = lb.admin_json("POST", "/explain", &ask);
    assert_eq!(x["status"], 429, "{x}");
    // Bad input gets a reason.
    let (status, x) = lb.admin_json("POST", "/explain", &json!({ "url": "" }));
    assert_eq!(status, 400);
    assert!(
        x["reason"].as_str().is_some_and(|r| r.contains("url")),
        "{x}"
    );
    let (status, x) = lb.admin_json(
        "POST",
        "/explain",
        &json!({ "url": "http://a/", "client": "not-an-ip" }),
    );
    assert_eq!(status, 400);
    assert!(
        x["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not-an-ip")),
        "{x}"
    );
}
