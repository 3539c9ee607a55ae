//! The operator's view: metrics after known traffic, histogram buckets, the admin API, the
//! access log, and the dashboard and alert rules against a real scrape.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::*;

/// True if this process may load the eBPF programs (root, object built in).
fn kernel_half() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && !lb::steering::XDP_OBJECT.is_empty()
}

fn setup(extra: &str) -> (Lb, Backend) {
    let orders = Backend::start(Arc::new(|req, res| {
        if req.path.ends_with("/fail") {
            res.send(500, &[], b"boom");
        } else {
            res.send(200, &[], b"ok");
        }
    }))
    .unwrap();
    let dead = dead_addr();
    let steering = if kernel_half() {
        "[steering]\nmode = \"reuseport\"\n"
    } else {
        ""
    };
    let cfg = config(&format!(
        r#"{steering}
[[clusters]]
name = "orders"
endpoints = [{{ addr = "{}" }}, {{ addr = "{dead}" }}]
balancer = "round_robin"
breaker = {{ consecutive_failures = 100 }}
health_check = {{ path = "/", interval = "1s" }}

[[routes]]
name = "orders"
path_prefix = "/orders"
cluster = "orders"
rate_limit = {{ key = "client_ip", limits = [{{ requests = 100000, per = "1s" }}] }}

[[routes]]
name = "checkout"
path_prefix = "/checkout"
[routes.split]
targets = [{{ name = "stable", cluster = "orders", weight = 100 }}]
mirror = {{ cluster = "orders", percent = 0 }}
{extra}
"#,
        orders.addr
    ));
    (Lb::start(&cfg), orders)
}

#[test]
fn counters_move_by_exactly_the_traffic_sent() {
    let (lb, _orders) = setup("");
    let before = lb.scrape();
    for _ in 0..7 {
        assert_eq!(get(lb.addr, "/orders/1").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(lb.addr, "/orders/fail").status, 500);
    }
    for _ in 0..2 {
        assert_eq!(get(lb.addr, "/nowhere").status, 404);
    }
    // A request is counted just after its answer is written: wait for the last ones.
    let counted = |s: &[Sample]| {
        metric(
            s,
            "lb_requests_total",
            &[("route", "none"), ("status_class", "4xx")],
        ) - metric(
            &before,
            "lb_requests_total",
            &[("route", "none"), ("status_class", "4xx")],
        ) >= 2.0
            && metric(s, "lb_requests_total", &[("route", "orders")])
                - metric(&before, "lb_requests_total", &[("route", "orders")])
                >= 10.0
    };
    wait_until("the last requests to be counted", || counted(&lb.scrape()));
    let after = lb.scrape();
    let delta = |labels: &[(&str, &str)]| {
        metric(&after, "lb_requests_total", labels) - metric(&before, "lb_requests_total", labels)
    };
    assert_eq!(
        delta(&[
            ("route", "orders"),
            ("cluster", "orders"),
            ("status_class", "2xx")
        ]),
        7.0
    );
    assert_eq!(
        delta(&[
            ("route", "orders"),
            ("cluster", "orders"),
            ("status_class", "5xx")
        ]),
        3.0
    );
    assert_eq!(delta(&[("route", "none"), ("status_class", "4xx")]), 2.0);
    let count = |s: &[Sample]| {
        metric(
            s,
            "lb_request_duration_seconds_count",
            &[("route", "orders")],
        )
    };
    assert_eq!(count(&after) - count(&before), 10.0);
    // Half the first tries hit the dead endpoint and were retried on the live one.
    let retries = metric(&after, "lb_retries_total", &[("cluster", "orders")])
        - metric(&before, "lb_retries_total", &[("cluster", "orders")]);
    assert!(retries >= 3.0, "retries {retries}");
    assert!(
        metric(
            &after,
            "lb_upstream_failures_total",
            &[("cluster", "orders")]
        ) >= retries
    );
    assert_eq!(
        metric(&after, "lb_endpoint_in_flight", &[("cluster", "orders")]),
        0.0
    );
}

/// The counters dashboards graph exist from the first scrape, at 0: a fresh install's panels
/// show 0, not "no data".
#[test]
fn dashboard_counters_start_at_zero() {
    let (lb, _orders) = setup("");
    let s = lb.scrape();
    for (name, labels) in [
        ("lb_config_reloads_total", [("result", "ok")]),
        ("lb_config_reloads_total", [("result", "error")]),
        ("lb_connections_refused_total", [("reason", "per_ip")]),
        ("lb_limit_rejections_total", [("limit", "max_retries")]),
        ("lb_retries_total", [("cluster", "orders")]),
    ] {
        assert!(
            s.iter().any(|x| x.name == name
                && labels
                    .iter()
                    .all(|(k, v)| x.labels.get(*k).map(String::as_str) == Some(*v))
                && x.value == 0.0),
            "{name} {labels:?} is missing or not 0"
        );
    }
}

#[test]
fn request_counts_carry_on_across_a_reload() {
    let (lb, _orders) = setup("");
    let labels = [
        ("route", "orders"),
        ("cluster", "orders"),
        ("status_class", "2xx"),
    ];
    let before = metric(&lb.scrape(), "lb_requests_total", &labels);
    for _ in 0..3 {
        assert_eq!(get(lb.addr, "/orders/1").status, 200);
    }
    assert_eq!(lb.admin("POST", "/reload").0, 200);
    for _ in 0..2 {
        assert_eq!(get(lb.addr, "/orders/1").status, 200);
    }
    let after = lb.scrape();
    assert_eq!(metric(&after, "lb_requests_total", &labels) - before, 5.0);
    let count = metric(
        &after,
        "lb_request_duration_seconds_count",
        &[("route", "orders")],
    );
    assert!(count >= 5.0, "{count}");
}

#[test]
fn histograms_have_the_expected_buckets() {
    let (lb, _orders) = setup("");
    get(lb.addr, "/orders/1");
    let samples = lb.scrape();
    let les: BTreeSet<String> = samples
        .iter()
        .filter(|s| {
            s.name == "lb_request_duration_seconds_bucket"
                && s.labels.get("route").map(String::as_str) == Some("orders")
        })
        .filter_map(|s| s.labels.get("le").cloned())
        .collect();
    let mut want: BTreeSet<String> = lb::metrics::names::SECONDS_BUCKETS
        .iter()
        .map(|b| format!("{b}"))
        .collect();
    want.insert("+Inf".into());
    assert_eq!(les, want);
    assert!(samples
        .iter()
        .any(|s| s.name == "lb_upstream_connect_duration_seconds_bucket"));
}

#[test]
fn admin_endpoints_answer_and_refuse_bad_input_as_json() {
    let (lb, _orders) = setup("");
    let (status, clusters) = lb.admin("GET", "/clusters");
    assert_eq!(status, 200);
    assert_eq!(clusters["clusters"][0]["name"], "orders");
    assert_eq!(
        clusters["clusters"][0]["endpoints"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let (status, routes) = lb.admin("GET", "/routes");
    assert_eq!(status, 200);
    assert_eq!(routes["routes"][0]["action"]["cluster"], "orders");
    assert_eq!(lb.admin("GET", "/config").0, 200);
    let (status, body) = lb.admin("DELETE", "/clusters");
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let mut c = Client::connect(lb.admin.unwrap());
    c.send(b"NOT HTTP\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");
}

#[test]
fn admin_token_is_required_when_set() {
    let backend = Backend::start(echo("b")).unwrap();
    let cfg = config(&format!(
        "[[clusters]]\nname = \"c\"\nendpoints = [{{ addr = \"{}\" }}]\n[[routes]]\ncluster = \"c\"\n",
        backend.addr
    ))
    .replace("[admin]\naddr = \"127.0.0.1:0\"", "[admin]\naddr = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef-secret\"");
    let lb = Lb::start(&cfg);
    let (status, body) = lb.admin("GET", "/clusters");
    assert_eq!(status, 401);
    assert_eq!(body["error"], "unauthorized");
    let mut c = Client::connect(lb.admin.unwrap());
    c.send(b"GET /clusters HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer 0123456789abcdef-secret\r\n\r\n");
    assert_eq!(c.response().status, 200);
    let mut c = Client::connect(lb.admin.unwrap());
    c.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer 0123456789abcdef-wrong!\r\n\r\n");
    assert_eq!(c.response().status, 401);
}

#[test]
fn access_log_has_one_json_line_per_request() {
    let backend = Backend::start(echo("b")).unwrap();
    let dir = scratch_dir("access");
    let log = dir.join("access.log");
    let cfg = config(&format!(
        "[access_log]\npath = \"{}\"\n\n[[clusters]]\nname = \"c\"\nendpoints = [{{ addr = \"{}\" }}]\n[[routes]]\nname = \"r\"\npath_prefix = \"/in\"\ncluster = \"c\"\n",
        log.display(),
        backend.addr
    ));
    let lb = Lb::start(&cfg);
    for i in 0..5 {
        assert_eq!(get(lb.addr, &format!("/in/{i}?q=\"x\"")).status, 200);
    }
    assert_eq!(get(lb.addr, "/out").status, 404);
    wait_until("six access log lines", || {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().count() >= 6)
            .unwrap_or(false)
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 6);
    let first = lines
        .iter()
        .find(|l| l["path"] == "/in/0?q=\"x\"")
        .expect("line for /in/0");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "r");
    assert_eq!(first["cluster"], "c");
    assert_eq!(first["endpoint"], backend.addr.to_string());
    assert!(first["bytes"].as_u64().unwrap() > 0);
    assert!(first["duration_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    let miss = lines.iter().find(|l| l["path"] == "/out").unwrap();
    assert_eq!(
        (miss["status"].as_u64(), miss["route"].is_null()),
        (Some(404), true)
    );

    // Log rotation: the file moved away, SIGUSR1 opens a new one at the configured path;
    // later lines go there, and the moved file keeps its six.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    lb.signal(libc::SIGUSR1);
    wait_until("the access log reopened", || log.exists());
    assert_eq!(get(lb.addr, "/in/after").status, 200);
    wait_until("a line in the new file", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 1)
    });
    assert!(std::fs::read_to_string(&log)
        .expect("new log")
        .contains("/in/after"));
    assert_eq!(
        std::fs::read_to_string(&rotated)
            .expect("rotated log")
            .lines()
            .count(),
        6
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Metric families named in a dashboard or rules file.
fn families(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("lb_") {
        let start = i + pos;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
                .unwrap_or(text.len() - start);
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if before_ok {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            out.insert(family.to_string());
        }
        i = end;
    }
    out
}

#[test]
fn dashboard_and_alerts_use_only_metrics_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dashboard = std::fs::read_to_string(root.join("conf/grafana/lb.json")).unwrap();
    let rules = std::fs::read_to_string(root.join("conf/prometheus/alerts.yml")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(v["panels"].as_array().is_some_and(|p| p.len() >= 6));

    // A TLS listener too, so that the certificate and handshake series exist.
    let dir = scratch_dir("dash-tls");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("c.key"), key.serialize_pem()).unwrap();
    let tls = format!(
        "\n[[listeners]]\nname = \"https\"\naddr = \"127.0.0.1:0\"\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n",
        dir.join("c.pem").display(),
        dir.join("c.key").display()
    );
    // A versioned route with a deprecated version, for the API-version series.
    let versions = "\n[[routes]]\nname = \"versioned\"\npath_prefix = \"/versioned/\"\n\
        versions = { from = \"path:/versioned/v{version}/\", map = { \"1\" = { cluster = \"orders\", deprecated = \"2020-01-01T00:00:00Z\" } } }\n";
    // A Redis for fleet rate limits where nothing listens, for the Redis series.
    let redis = format!("\n[redis]\nurl = \"redis://{}\"\n", dead_addr());
    // A validated route, for the validation series.
    let schema = dir.join("note.json");
    std::fs::write(&schema, r#"{"type": "object", "required": ["text"]}"#).unwrap();
    let validated = format!(
        "\n[[routes]]\nname = \"validated\"\npath_prefix = \"/validated\"\ncluster = \"orders\"\n\
         validate = {{ schema = {{ POST = \"{}\" }} }}\n",
        schema.display()
    );
    let (lb, _orders) = setup(&format!("{tls}{versions}{redis}{validated}"));
    for p in ["/orders/1", "/orders/fail", "/nowhere", "/versioned/v1/x"] {
        get(lb.addr, p);
    }
    let mut c = Client::connect(lb.addr);
    c.send(b"POST /validated HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(c.response().status, 400, "an invalid body");
    // One TLS handshake (the certificate is self-signed: the client does not verify it; the
    // handshake completes all the same).
    let ready: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lb.dir.join("ready.json")).unwrap()).unwrap();
    let https = ready["listeners"]["https"].as_str().unwrap().to_string();
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            &format!("https://{https}/orders/1"),
        ])
        .status()
        .expect("curl");
    assert!(out.success());
    assert_eq!(lb.admin("POST", "/reload").0, 200);
    let scraped: BTreeSet<String> = lb
        .scrape()
        .iter()
        .map(|s| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .fold(s.name.as_str(), |n, x| n.strip_suffix(x).unwrap_or(n))
                .to_string()
        })
        .collect();
    let used: BTreeSet<String> = families(&dashboard)
        .union(&families(&rules))
        .cloned()
        .collect();
    println!("metric families used by the dashboard and alert rules: {used:?}");
    assert!(used.len() >= 10, "{used:?}");
    assert!(
        used.contains("lb_requests_total") && used.contains("lb_request_duration_seconds"),
        "{used:?}"
    );
    // The etcd source's series exist only with etcd: tests/fleet.rs checks those.
    let missing: Vec<&String> = used
        .difference(&scraped)
        .filter(|f| !f.starts_with("lb_config_etcd_") && !f.starts_with("lb_fleet_"))
        .collect();
    assert!(missing.is_empty(), "used but never exported: {missing:?}");
}

#[test]
fn alert_rules_pass_promtool() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let rules = root.join("conf/prometheus/alerts.yml");
    let out = match std::process::Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            skip(
                "alert_rules_pass_promtool",
                &format!("promtool not found ({e}); `cargo xtask test` installs it"),
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The rules' behaviour: conf/prometheus/alerts_test.yml feeds series to the API-version
    // alerts and says when each fires.
    let out = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(root.join("conf/prometheus/alerts_test.yml"))
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped logrotate snippet (`conf/logrotate/lb`) rotates the access log of a running lb
/// with logrotate itself: the snippet as shipped but for the log's path and, instead of
/// `systemctl kill` (no systemd here), the same SIGUSR1 sent by PID. Lines before the
/// rotation stay in `access.log.1`, lines after go to a new `access.log`.
#[test]
fn the_logrotate_snippet_rotates_a_running_lb() {
    if std::process::Command::new("logrotate")
        .arg("--version")
        .output()
        .is_err()
    {
        skip(
            "observe",
            "logrotate is not installed; `cargo xtask test` installs it",
        );
        return;
    }
    let backend = Backend::start(echo("b")).unwrap();
    let dir = scratch_dir("logrotate");
    let log = dir.join("access.log");
    let lb = Lb::start(&config(&format!(
        "[access_log]\npath = \"{}\"\n\n[[clusters]]\nname = \"c\"\nendpoints = [{{ addr = \"{}\" }}]\n[[routes]]\ncluster = \"c\"\n",
        log.display(),
        backend.addr
    )));
    for _ in 0..3 {
        assert_eq!(get(lb.addr, "/before").status, 200);
    }
    wait_until("three lines", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() == 3)
    });
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/logrotate/lb"))
            .expect("the snippet");
    let systemctl = "systemctl kill --signal=SIGUSR1 --kill-whom=main lb.service";
    assert!(shipped.contains(systemctl) && shipped.contains("/var/log/lb/access.log"));
    let snippet = shipped
        .replace("/var/log/lb/access.log", &log.display().to_string())
        .replace(systemctl, &format!("kill -USR1 {}", lb.pid()))
        // The lb user and adm group exist where the package is installed.
        .replace("create 0640 lb adm", "create 0640");
    let conf = dir.join("logrotate.conf");
    std::fs::write(&conf, snippet).expect("write");
    let out = std::process::Command::new("logrotate")
        .arg("-f")
        .arg("-s")
        .arg(dir.join("state"))
        .arg(&conf)
        .output()
        .expect("logrotate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // lb opens the new file (logrotate created it empty) and writes later lines there.
    wait_until("lb to reopen its access log", || {
        lb.log().contains("access log reopened")
    });
    assert_eq!(get(lb.addr, "/after").status, 200);
    wait_until("a line in the new file", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("/after"))
    });
    let rotated = std::fs::read_to_string(dir.join("access.log.1")).expect("access.log.1");
    assert_eq!(rotated.lines().count(), 3);
    assert!(!rotated.contains("/after"));
    let _ = std::fs::remove_dir_all(&dir);
}
