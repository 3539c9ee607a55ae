//! Black-box routing: a config of many routes, a table of requests, and what the backend
//! received for each.

mod common;

use common::*;

struct Setup {
    lb: Lb,
    _backends: Vec<Backend>,
}

fn setup() -> Setup {
    let names = [
        "catalog",
        "orders",
        "orders-v2",
        "tenants",
        "legacy",
        "default",
        "static",
    ];
    let backends: Vec<Backend> = names
        .iter()
        .map(|n| Backend::start(echo(n)).unwrap())
        .collect();
    let mut cfg = String::new();
    for (n, b) in names.iter().zip(&backends) {
        cfg.push_str(&format!(
            "[[clusters]]\nname = \"{n}\"\nendpoints = [{{ addr = \"{}\" }}]\n\n",
            b.addr
        ));
    }
    cfg.push_str(
        r#"
[[routes]]
name = "default"
cluster = "default"

[[routes]]
name = "product-by-id"
path_pattern = "/api/v1/products/:id"
cluster = "catalog"
rewrite = { path = "/internal/catalog/items/${params.id}?source=${query.ref}" }
request_headers = { set = { "X-Route" = "product-by-id" }, append = { "X-Trace" = "lb" }, remove = ["X-Debug"] }
response_headers = { set = { "X-Served-By" = "lb" }, remove = ["X-Backend"] }

[[routes]]
name = "orders-v2-header"
path_prefix = "/api/orders"
headers = [{ name = "X-API-Version", equals = "2" }]
cluster = "orders-v2"

[[routes]]
name = "orders-v2-accept"
path_prefix = "/api/orders"
headers = [{ name = "Accept", regex = "application/vnd\\.api\\.v2\\+json" }]
cluster = "orders-v2"

[[routes]]
name = "orders-v2-query"
path_prefix = "/api/orders"
query = [{ name = "version", equals = "2" }]
cluster = "orders-v2"

# Same prefix, one condition each: declaration order puts the version routes first.
[[routes]]
name = "orders"
path_prefix = "/api/orders"
methods = ["GET", "POST"]
cluster = "orders"
rewrite = { strip_prefix = "/api", add_prefix = "/svc" }

[[routes]]
name = "tenants"
host = "*.tenants.example.com"
headers = [{ name = "X-Tenant-ID", present = true }]
cluster = "tenants"

[[routes]]
name = "static"
host = "cdn.example.com"
path_pattern = "/static/*rest"
cluster = "static"
rewrite = { path = "/files/${params.rest}" }

[[routes]]
name = "reports"
path_regex = "^/reports/(?P<year>[0-9]{4})/(?P<month>[0-9]{2})$"
cluster = "legacy"
rewrite = { path = "/legacy/report?y=${params.year}&m=${params.month}" }

[[routes]]
name = "old-shop"
host = "old.example.com"
redirect = { status = 301, location = "https://shop.example.com${path}?from=${host}" }

[[routes]]
name = "teapot"
path = "/teapot"
method = "GET"
respond = { status = 418, content_type = "application/json", body = "{\"short\":\"and stout\"}" }

[[routes]]
name = "products-v0"
path_prefix = "/api/v0/products"
cluster = "catalog"
deprecation = { since = "2025-01-01T00:00:00Z", sunset = "2099-01-01T00:00:00Z", successor = "/api/v1/products", link = "https://docs.example.com/v0" }

[[routes]]
name = "products-beta"
path_prefix = "/api/beta/products"
cluster = "catalog"
deprecation = { since = "2024-01-01T00:00:00Z", sunset = "2025-06-01T00:00:00Z", successor = "/api/v1/products" }
"#,
    );
    Setup {
        lb: Lb::start(&config(&cfg)),
        _backends: backends,
    }
}

struct Case {
    method: &'static str,
    host: &'static str,
    target: &'static str,
    headers: &'static [(&'static str, &'static str)],
    backend: &'static str,
    path: &'static str,
}

fn send(lb: &Lb, method: &str, host: &str, target: &str, headers: &[(&str, &str)]) -> Response {
    let mut c = Client::connect(lb.addr);
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    c.send(req.as_bytes());
    c.try_response(method == "HEAD").expect("response")
}

fn table() -> Vec<Case> {
    vec![
        Case {
            method: "GET",
            host: "api.example.com",
            target: "/",
            headers: &[],
            backend: "default",
            path: "/",
        },
        Case {
            method: "GET",
            host: "api.example.com",
            target: "/api/v1/products/42?ref=mail",
            headers: &[],
            backend: "catalog",
            path: "/internal/catalog/items/42?source=mail",
        },
        Case {
            method: "GET",
            host: "api.example.com",
            target: "/api/v1/products/42/reviews",
            headers: &[],
            backend: "default",
            path: "/api/v1/products/42/reviews",
        },
        Case {
            method: "GET",
            host: "api.example.com",
            target: "/api/orders/7?x=1",
            headers: &[],
            backend: "orders",
            path: "/svc/orders/7?x=1",
        },
        Case {
            method: "POST",
            host: "api.example.com",
            target: "/api/orders",
            headers: &[],
            backend: "orders",
            path: "/svc/orders",
        },
        Case {
            method: "DELETE",
            host: "api.example.com",
            target: "/api/orders/7",
            headers: &[],
            backend: "default",
            path: "/api/orders/7",
        },
        Case {
            method: "GET",
            host: "api.example.com",
            target: "/api/orders/7",
            headers: &[("X-API-Version", "2")],
            backend: "orders-v2",
            path: "/api/orders/7",
        },
        Case {
            method: "GET",
            host: "api.example.com",
            target: "/api/orders/7",
            headers: &[("Accept", "application/vnd.api.v2+json")],
            backend: "orders-v2",
            path: "/api/orders/7",
        },
        Case {
            method: "GET",
            host: "api.example.com",
            target: "/api/orders/7?version=2",
            headers: &[],
            backend: "orders-v2",
            path: "/api/orders/7?version=2",
        },
        Case {
            method: "GET",
            host: "api.example.com",
            target: "/api/orders/7?version=3",
            headers: &[],
            backend: "orders",
            path: "/svc/orders/7?version=3",
        },
        Case {
            method: "GET",
            host: "acme.tenants.example.com:8443",
            target: "/x",
            headers: &[("X-Tenant-ID", "acme")],
            backend: "tenants",
            path: "/x",
        },
        Case {
            method: "GET",
            host: "acme.tenants.example.com",
            target: "/x",
            headers: &[],
            backend: "default",
            path: "/x",
        },
        Case {
            method: "GET",
            host: "CDN.example.com",
            target: "/static/css/site.css",
            headers: &[],
            backend: "static",
            path: "/files/css/site.css",
        },
        Case {
            method: "GET",
            host: "api.example.com",
            target: "/static/css/site.css",
            headers: &[],
            backend: "default",
            path: "/static/css/site.css",
        },
        Case {
            method: "GET",
            host: "api.example.com",
            target: "/reports/2026/11",
            headers: &[],
            backend: "legacy",
            path: "/legacy/report?y=2026&m=11",
        },
        Case {
            method: "GET",
            host: "api.example.com",
            target: "/reports/2026/1",
            headers: &[],
            backend: "default",
            path: "/reports/2026/1",
        },
    ]
}

#[test]
fn table_of_requests() {
    let s = setup();
    let cases = table();
    for c in &cases {
        let r = send(&s.lb, c.method, c.host, c.target, c.headers);
        assert_eq!(r.status, 200, "{} {}", c.method, c.target);
        let v = r.json();
        assert_eq!(
            v["backend"], c.backend,
            "{} {} {:?}",
            c.method, c.target, c.headers
        );
        assert_eq!(
            v["path"], c.path,
            "{} {} {:?}",
            c.method, c.target, c.headers
        );
        assert_eq!(v["method"], c.method);
    }
}

/// `lb explain` runs the workers' planning code: it must agree with what the proxy did.
#[test]
fn explain_agrees_with_the_proxy() {
    let s = setup();
    let text = std::fs::read_to_string(&s.lb.config_path).unwrap();
    let config = lb::config::Config::parse(&text, std::path::Path::new("t")).unwrap();
    let snap = std::sync::Arc::new(
        lb::snapshot::Snapshot::build(config, &text, &lb::snapshot::StateRegistry::default())
            .unwrap(),
    );
    for c in table() {
        let proxied = send(&s.lb, c.method, c.host, c.target, c.headers).json();
        let req = lb::proxy::explain::ExplainRequest {
            method: c.method.to_string(),
            url: format!("http://{}{}", c.host, c.target),
            headers: c
                .headers
                .iter()
                .map(|(n, v)| format!("{n}: {v}"))
                .chain((c.method == "POST").then(|| "Content-Length: 0".to_string()))
                .collect(),
            client: "127.0.0.1:5555".parse().unwrap(),
            http2: false,
        };
        let x = lb::proxy::explain::explain(snap.clone(), &req).unwrap();
        // As HTTP/2 (`lb explain --http2`): the same route.
        let as_h2 = lb::proxy::explain::ExplainRequest {
            http2: true,
            headers: req.headers.clone(),
            method: req.method.clone(),
            url: req.url.clone(),
            client: req.client,
        };
        let y = lb::proxy::explain::explain(snap.clone(), &as_h2).unwrap();
        assert_eq!(y.cluster, x.cluster, "HTTP/2: {} {}", c.method, c.target);
        assert_eq!(
            x.cluster.as_deref(),
            proxied["backend"].as_str(),
            "{} {}",
            c.method,
            c.target
        );
        let line = x.output.lines().next().unwrap_or("");
        assert_eq!(
            line,
            format!(
                "{} {} HTTP/1.1",
                c.method,
                proxied["path"].as_str().unwrap()
            ),
            "{} {}",
            c.method,
            c.target
        );
    }
    // Local answers too, and the command line prints the verdicts.
    for (target, status) in [("/teapot", 418), ("/api/beta/products/1", 410)] {
        let req = lb::proxy::explain::ExplainRequest {
            method: "GET".into(),
            url: format!("http://a{target}"),
            headers: vec![],
            client: "127.0.0.1:5555".parse().unwrap(),
            http2: false,
        };
        assert_eq!(
            lb::proxy::explain::explain(snap.clone(), &req)
                .unwrap()
                .status,
            Some(status)
        );
        assert_eq!(send(&s.lb, "GET", "a", target, &[]).status, status);
    }
    let out = std::process::Command::new(lb_bin())
        .args(["explain", "--config"])
        .arg(&s.lb.config_path)
        .args([
            "GET",
            "http://api.example.com/api/orders/7",
            "-H",
            "X-API-Version: 2",
        ])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        printed.contains("orders-v2-header") && printed.contains("MATCHED"),
        "{printed}"
    );
    assert!(
        printed.contains("no: header x-api-version is not")
            || printed.contains("matches, but a more specific route wins"),
        "{printed}"
    );
    // --http2: the same, and HTTP/2's own rules (no connection-specific fields).
    let h2 = |extra: &[&str]| {
        std::process::Command::new(lb_bin())
            .args(["explain", "--http2", "--config"])
            .arg(&s.lb.config_path)
            .args([
                "GET",
                "http://api.example.com/api/orders/7",
                "-H",
                "X-API-Version: 2",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = h2(&[]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("orders-v2-header"), "{printed}");
    let out = h2(&["-H", "Connection: keep-alive"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("connection-specific"), "{err}");
    // It explains the normal form, which is what routing and the backend see.
    let out = std::process::Command::new(lb_bin())
        .args(["explain", "--config"])
        .arg(&s.lb.config_path)
        .args(["GET", "http://api.example.com/x/%2e%2e//api/./orders/7"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("path: /api/orders/7 (normalised from /x/%2e%2e//api/./orders/7)"),
        "{printed}"
    );
    assert!(
        printed
            .lines()
            .any(|l| l.contains(" orders ") && l.contains("MATCHED")),
        "{printed}"
    );
    let out = std::process::Command::new(lb_bin())
        .args(["explain", "--config"])
        .arg(&s.lb.config_path)
        .args(["GET", "http://api.example.com/api/../../etc"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("refused: 400"), "{printed}");
}

#[test]
fn header_edits_both_ways() {
    let s = setup();
    let r = send(
        &s.lb,
        "GET",
        "a",
        "/api/v1/products/1",
        &[
            ("X-Debug", "1"),
            ("X-Trace", "client"),
            ("X-Route", "forged"),
        ],
    );
    let v = r.json();
    assert_eq!(
        v["headers"]["x-route"], "product-by-id",
        "set replaces what the client sent"
    );
    assert!(v["headers"].get("x-debug").is_none(), "removed");
    // The echo backend keeps the first of repeated headers in its JSON map, so check both
    // values arrived through the raw path.
    assert_eq!(r.header("x-served-by"), Some("lb"));
    assert_eq!(r.header("x-backend"), None, "response header removed");
    let trace_values: Vec<_> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("x-trace"))
        .collect();
    assert!(
        trace_values.is_empty(),
        "request edits do not leak into the response"
    );
}

#[test]
fn redirect_and_direct_response() {
    let s = setup();
    let r = send(&s.lb, "GET", "old.example.com", "/cart/7", &[]);
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://shop.example.com/cart/7?from=old.example.com")
    );
    assert_eq!(r.header("content-length"), Some("0"));

    let r = send(&s.lb, "GET", "a", "/teapot", &[]);
    assert_eq!(r.status, 418);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["short"], "and stout");
    let r = send(&s.lb, "POST", "a", "/teapot", &[]);
    assert_eq!(
        r.json()["backend"],
        "default",
        "the direct response is for GET only"
    );
}

#[test]
fn deprecation_before_and_after_sunset() {
    let s = setup();
    let r = send(&s.lb, "GET", "a", "/api/v0/products/3", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backend"], "catalog");
    assert_eq!(r.header("deprecation"), Some("@1735689600"));
    assert_eq!(r.header("sunset"), Some("Thu, 01 Jan 2099 00:00:00 GMT"));
    let links: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("link"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        links.contains(&"</api/v1/products>; rel=\"successor-version\""),
        "{links:?}"
    );
    assert!(
        links.contains(&"<https://docs.example.com/v0>; rel=\"deprecation\""),
        "{links:?}"
    );

    let catalog_before = get(s.lb.addr, "/api/v1/products/9").json()["backend"].clone();
    assert_eq!(catalog_before, "catalog");
    let r = send(&s.lb, "GET", "a", "/api/beta/products/3", &[]);
    assert_eq!(r.status, 410);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let v = r.json();
    assert_eq!(v["code"], "gone");
    assert_eq!(v["successor"], "/api/v1/products");
    assert_eq!(r.header("sunset"), Some("Sun, 01 Jun 2025 00:00:00 GMT"));
}

#[test]
fn gone_routes_never_reach_the_backend() {
    let catalog = Backend::start(echo("catalog")).unwrap();
    let cfg = config(&format!(
        "[[clusters]]\nname = \"catalog\"\nendpoints = [{{ addr = \"{}\" }}]\n[[routes]]\npath_prefix = \"/old\"\ncluster = \"catalog\"\n\
         deprecation = {{ since = \"2020-01-01T00:00:00Z\", sunset = \"2021-01-01T00:00:00Z\" }}\n",
        catalog.addr
    ));
    let lb = Lb::start(&cfg);
    for _ in 0..5 {
        assert_eq!(get(lb.addr, "/old/x").status, 410);
    }
    assert_eq!(catalog.requests(), 0);
    assert_eq!(catalog.connections(), 0);
}
