//! Configs of 20,000 routes: the scrape stays bounded with the default `[metrics]`, routes
//! marked for full metrics keep their histogram, and unmarked routes are counted in their
//! cluster's aggregate (`route="_other"`). Timing and memory live in the benchmark
//! (`cargo xtask bench --scenario large_config`), not here.

mod common;

use std::net::SocketAddr;

use common::*;

/// The scrape bound the default must hold for 20,000 routes.
const SCRAPE_BOUND: usize = 2 * 1024 * 1024;

/// 20,000 generated routes to cluster `c` (prefixes, exact paths, hosts and patterns, in
/// turn), after `first` (routes that must match before them).
fn many_routes(backend: SocketAddr, first: &str, n: usize) -> String {
    let mut s = config(&format!(
        "[[clusters]]\nname = \"c\"\nendpoints = [{{ addr = \"{backend}\" }}]\n\n{first}\n"
    ));
    for i in 0..n {
        let m = match i % 4 {
            0 => format!("path_prefix = \"/tenant{i}/\""),
            1 => format!("path = \"/exact/{i}\""),
            2 => format!("host = \"t{i}.example.com\""),
            _ => format!("path_pattern = \"/p{i}/:id/items\""),
        };
        s.push_str(&format!(
            "[[routes]]\nname = \"gen{i}\"\n{m}\ncluster = \"c\"\n"
        ));
    }
    s
}

/// The `/metrics` text as the admin API serves it.
fn scrape_text(lb: &Lb) -> String {
    let addr = lb.admin.expect("admin listener");
    let mut c = Client::connect(addr);
    c.send(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
    let r = c.response();
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn twenty_thousand_routes_scrape_under_the_bound_with_marked_routes_in_full() {
    let backend = Backend::start(echo("b")).expect("backend");
    let marked = "[[routes]]\nname = \"checkout\"\npath_prefix = \"/checkout\"\nmetrics = \"full\"\ncluster = \"c\"\n\
                  [[routes]]\nname = \"search\"\npath_prefix = \"/search\"\nmetrics = \"counters\"\ncluster = \"c\"\n";
    // lb says when a reload starts (systemd's protocol), to a socket of the test's own.
    let notify_path = scratch_dir("notify").join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind");
    notify.set_read_timeout(Some(BOUND)).expect("timeout");
    let lb = Lb::start_with_env(
        &many_routes(backend.addr, marked, 20_000),
        &[("NOTIFY_SOCKET", notify_path.as_os_str())],
    );
    for path in [
        "/checkout/1",
        "/search?q=x",
        "/tenant0/a",
        "/exact/19997",
        "/p19999/7/items",
    ] {
        assert_eq!(get(lb.addr, path).status, 200, "{path}");
    }
    // A request is counted just after its answer went out.
    let l = |route| [("route", route), ("cluster", "c"), ("status_class", "2xx")];
    let counted = |text: &str| metric(&parse_prometheus(text), "lb_requests_total", &l("_other"));
    wait_until("the generated routes' requests to be counted", || {
        counted(&scrape_text(&lb)) == 3.0
    });
    let text = scrape_text(&lb);
    assert!(
        text.len() < SCRAPE_BOUND,
        "the scrape is {} bytes, over {SCRAPE_BOUND}",
        text.len()
    );
    let samples = parse_prometheus(&text);
    // Marked full: its own counters and histogram.
    assert_eq!(metric(&samples, "lb_requests_total", &l("checkout")), 1.0);
    assert_eq!(
        metric(
            &samples,
            "lb_request_duration_seconds_count",
            &[("route", "checkout"), ("cluster", "c")]
        ),
        1.0
    );
    // Counters only: its own count, its duration in the aggregate.
    assert_eq!(metric(&samples, "lb_requests_total", &l("search")), 1.0);
    assert!(!text.contains("lb_request_duration_seconds_count{route=\"search\""));
    // The generated routes: none of their own, all three counted in the aggregate, whose
    // histogram also holds the counters-only route's request.
    assert!(
        !text.contains("route=\"gen0\""),
        "an unmarked route has series"
    );
    assert_eq!(metric(&samples, "lb_requests_total", &l("_other")), 3.0);
    assert_eq!(
        metric(
            &samples,
            "lb_request_duration_seconds_count",
            &[("route", "_other"), ("cluster", "c")]
        ),
        4.0
    );

    // A reload of the 20,000 routes blocks neither the admin API nor the worker: both
    // answer while it runs (it takes a second or more in a debug build; a blocked answer
    // would only come once the reload had returned). Counted from when lb says the reload
    // started.
    let mut buf = [0u8; 4096];
    let n = notify.recv(&mut buf).expect("READY=1");
    assert!(buf[..n].starts_with(b"READY=1"));
    let admin = lb.admin.expect("admin listener");
    let reloading = std::thread::spawn(move || {
        let mut c = Client::connect(admin);
        c.send(
            format!("POST /reload HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        );
        c.response().status
    });
    let n = notify.recv(&mut buf).expect("RELOADING=1");
    assert!(buf[..n].starts_with(b"RELOADING=1"));
    let (mut admin_during, mut proxy_during) = (0, 0);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reloading.is_finished() && std::time::Instant::now() < until {
        let (status, _) = lb.admin("GET", "/healthz");
        assert_eq!(status, 200);
        admin_during += usize::from(!reloading.is_finished());
        assert_eq!(get(lb.addr, "/tenant0/a").status, 200);
        proxy_during += usize::from(!reloading.is_finished());
    }
    assert_eq!(reloading.join().expect("the reload"), 200);
    assert!(
        admin_during >= 1 && proxy_during >= 1,
        "answered during the reload: admin {admin_during}, proxy {proxy_during}"
    );
    if let Some(dir) = notify_path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The default gives every route its series while a config is small, and an operator can
/// choose otherwise for all routes at once; a reload that changes it takes the old series
/// off the scrape.
#[test]
fn metrics_defaults_and_reload() {
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&many_routes(backend.addr, "", 10));
    assert_eq!(get(lb.addr, "/tenant0/x").status, 200);
    wait_until("gen0's own histogram to count the request", || {
        scrape_text(&lb)
            .contains("lb_request_duration_seconds_count{route=\"gen0\",cluster=\"c\"} 1")
    });

    let config = many_routes(backend.addr, "", 10).replacen(
        "[admin]",
        "[metrics]\nroutes = \"none\"\n\n[admin]",
        1,
    );
    std::fs::write(&lb.config_path, config).expect("write config");
    let (status, body) = lb.admin("POST", "/reload");
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(lb.addr, "/tenant0/x").status, 200);
    let other = [
        ("route", "_other"),
        ("cluster", "c"),
        ("status_class", "2xx"),
    ];
    wait_until("the aggregate to count the request", || {
        metric(&lb.scrape(), "lb_requests_total", &other) == 1.0
    });
    let text = scrape_text(&lb);
    assert!(
        !text.contains("route=\"gen0\""),
        "the old series stayed: {}",
        text.lines()
            .filter(|l| l.contains("gen0"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn bad_metrics_settings_are_refused_with_their_key() {
    let dir = scratch_dir("metrics-config");
    for (toml, key) in [
        ("[metrics]\nroutes = \"some\"\n", "metrics.routes"),
        (
            "[[clusters]]\nname = \"c\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\ncluster = \"c\"\nmetrics = \"histograms\"\n",
            "routes[0].metrics",
        ),
        (
            "[[clusters]]\nname = \"c\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\nname = \"_other\"\ncluster = \"c\"\n",
            "routes[0].name",
        ),
    ] {
        let path = dir.join("lb.toml");
        std::fs::write(&path, config(toml)).expect("write");
        let out = std::process::Command::new(lb_bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("lb check");
        let said = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{toml} was accepted");
        assert!(said.contains(key), "{key} not named: {said}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
