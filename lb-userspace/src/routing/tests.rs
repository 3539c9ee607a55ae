//! Route table precedence and shadowing, on configs parsed the way `lb` parses them.

use std::path::Path;

use super::matchers::Captures;
use super::{RouteRequest, RouteTable};
use crate::config::Config;

fn table(routes: &str) -> (RouteTable, Config) {
    let text = format!(
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n[[clusters]]\nname = \"c\"\nendpoints = [{{ addr = \"127.0.0.1:1\" }}]\n{routes}"
    );
    let config = Config::parse(&text, Path::new("t")).unwrap_or_else(|e| panic!("{e}"));
    (RouteTable::build(&config.routes), config)
}

/// The name of the route `method host target` (with `headers`) goes to.
fn pick(
    t: &RouteTable,
    method: &str,
    host: Option<&str>,
    target: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let hs: Vec<httparse::Header<'_>> = headers
        .iter()
        .map(|(n, v)| httparse::Header {
            name: n,
            value: v.as_bytes(),
        })
        .collect();
    let (path, query) = RouteRequest::split_target(target.as_bytes());
    let req = RouteRequest {
        sni: None,
        client_cert: None,
        host: host.map(str::as_bytes),
        path,
        query,
        method: method.as_bytes(),
        headers: &hs,
        consumer: None,
        client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        jwt: None,
        geo: None,
    };
    let mut caps = Captures::default();
    t.find(&req, &mut caps).map(|r| r.name.clone())
}

const ROUTES: &str = r#"
[[routes]]
name = "catch-all"
cluster = "c"
[[routes]]
name = "api"
path_prefix = "/api"
cluster = "c"
[[routes]]
name = "orders"
path_prefix = "/api/orders"
cluster = "c"
[[routes]]
name = "orders-post"
path_prefix = "/api/orders"
method = "POST"
cluster = "c"
[[routes]]
name = "order-by-id"
path_pattern = "/api/orders/:id"
cluster = "c"
[[routes]]
name = "health"
path = "/api/orders/health"
cluster = "c"
[[routes]]
name = "v2-header"
path_prefix = "/api"
headers = [{ name = "X-API-Version", equals = "2" }]
cluster = "c"
[[routes]]
name = "v2-query"
path_prefix = "/api"
query = [{ name = "version", equals = "2" }]
cluster = "c"
[[routes]]
name = "tenant"
path_prefix = "/api"
headers = [{ name = "X-Tenant-ID", present = true }]
cluster = "c"
[[routes]]
name = "vnd-json"
path_prefix = "/api"
headers = [{ name = "Accept", regex = "application/vnd\\.api\\.v2\\+json" }]
cluster = "c"
[[routes]]
name = "reports"
path_regex = "^/reports/(?P<year>[0-9]{4})$"
cluster = "c"
[[routes]]
name = "wild"
host = "*.example.com"
cluster = "c"
[[routes]]
name = "admin-host"
host = "admin.example.com"
path_prefix = "/api"
cluster = "c"
"#;

#[test]
fn precedence() {
    let (t, _) = table(ROUTES);
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a str,
    );
    let cases: &[Case<'_>] = &[
        ("GET", None, "/", &[], "catch-all"),
        ("GET", None, "/apix", &[], "catch-all"),
        ("GET", None, "/api", &[], "api"),
        ("GET", None, "/api/users", &[], "api"),
        ("GET", None, "/api/orders", &[], "orders"),
        ("POST", None, "/api/orders", &[], "orders-post"),
        ("GET", None, "/api/orders/7", &[], "order-by-id"),
        ("GET", None, "/api/orders/7/items", &[], "orders"),
        ("GET", None, "/api/orders/health", &[], "health"),
        (
            "GET",
            None,
            "/api/users",
            &[("X-API-Version", "2")],
            "v2-header",
        ),
        ("GET", None, "/api/users?version=2", &[], "v2-query"),
        ("GET", None, "/api/users?version=3", &[], "api"),
        (
            "GET",
            None,
            "/api/users",
            &[("X-Tenant-ID", "acme")],
            "tenant",
        ),
        (
            "GET",
            None,
            "/api/users",
            &[("Accept", "application/vnd.api.v2+json")],
            "vnd-json",
        ),
        ("GET", None, "/reports/2026", &[], "reports"),
        ("GET", None, "/reports/20", &[], "catch-all"),
        ("GET", Some("shop.example.com"), "/api", &[], "wild"),
        (
            "GET",
            Some("ADMIN.example.com"),
            "/api/x",
            &[],
            "admin-host",
        ),
        ("GET", Some("admin.example.com"), "/other", &[], "wild"),
        ("GET", Some("example.com"), "/api", &[], "api"),
    ];
    for (method, host, target, headers, want) in cases {
        assert_eq!(
            pick(&t, method, *host, target, headers).as_deref(),
            Some(*want),
            "{method} {host:?} {target} {headers:?}"
        );
    }
}

#[test]
fn declaration_order_breaks_ties() {
    let (t, _) = table(
        "[[routes]]\nname = \"first\"\npath_prefix = \"/a\"\ncluster = \"c\"\n[[routes]]\nname = \"second\"\npath_prefix = \"/a\"\ncluster = \"c\"\n",
    );
    assert_eq!(pick(&t, "GET", None, "/a/b", &[]).as_deref(), Some("first"));
}

#[test]
fn no_match_without_catch_all() {
    let (t, _) = table("[[routes]]\nhost = \"a.com\"\npath = \"/x\"\ncluster = \"c\"\n");
    assert_eq!(pick(&t, "GET", Some("a.com"), "/y", &[]), None);
    assert_eq!(pick(&t, "GET", None, "/x", &[]), None);
    assert_eq!(
        pick(&t, "GET", Some("a.com:8080"), "/x", &[]),
        None,
        "callers strip the port"
    );
}

#[test]
fn shadowed_routes_are_reported() {
    let (_, config) = table(
        r#"
[[routes]]
name = "all-get"
path_prefix = "/a"
methods = ["GET", "POST"]
cluster = "c"
[[routes]]
name = "only-get"
path_prefix = "/a"
method = "GET"
cluster = "c"
[[routes]]
name = "with-header"
path_prefix = "/a"
methods = ["GET", "POST", "PUT"]
headers = [{ name = "x", present = true }]
cluster = "c"
[[routes]]
name = "dup-exact"
path = "/e"
cluster = "c"
[[routes]]
name = "dup-exact-2"
path = "/e"
cluster = "c"
"#,
    );
    let warnings = config.warnings();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].contains("routes[1] (only-get) can never match: routes[0] (all-get)"),
        "{warnings:#?}"
    );
    assert!(
        warnings[1].contains("routes[4] (dup-exact-2)"),
        "{warnings:#?}"
    );
}

#[test]
fn route_config_errors_name_their_keys() {
    let bad = [
        ("path = \"/a\"\npath_prefix = \"/b\"\ncluster = \"c\"", "routes[0].path"),
        ("path_regex = \"(\"\ncluster = \"c\"", "routes[0].path_regex"),
        ("path_pattern = \"/a/:\"\ncluster = \"c\"", "routes[0].path_pattern"),
        ("headers = [{ name = \"x\" }]\ncluster = \"c\"", "routes[0].headers[0]"),
        ("headers = [{ name = \"bad name\", present = true }]\ncluster = \"c\"", "routes[0].headers[0].name"),
        ("query = [{ name = \"v\", equals = \"1\", present = true }]\ncluster = \"c\"", "routes[0].query[0]"),
        ("cluster = \"c\"\nrespond = { status = 200 }", "routes[0]"),
        ("redirect = { status = 200, location = \"/x\" }", "routes[0].redirect.status"),
        ("path_pattern = \"/p/:id\"\nredirect = { location = \"/x/${params.sku}\" }", "routes[0].redirect.location"),
        ("cluster = \"c\"\nrewrite = { path = \"/x\", strip_prefix = \"/a\" }", "routes[0].rewrite"),
        ("respond = { body = \"x\" }\nrewrite = { add_prefix = \"/a\" }", "routes[0].rewrite"),
        ("cluster = \"c\"\nrequest_headers = { set = { \"Content-Length\" = \"1\" } }", "routes[0].request_headers.set"),
        ("cluster = \"c\"\nresponse_headers = { set = { \"X-A\" = \"a\\nb\" } }", "routes[0].response_headers.set"),
        ("cluster = \"c\"\ndeprecation = { since = \"yesterday\" }", "routes[0].deprecation.since"),
        ("cluster = \"c\"\ndeprecation = { since = \"2026-01-01T00:00:00Z\", sunset = \"2025-01-01T00:00:00Z\" }", "routes[0].deprecation.sunset"),
        ("cluster = \"c\"\ndeprecation = { since = \"2026-01-01T00:00:00Z\", sunset = \"2027-01-01T00:00:00Z\", gone = { detail = \"see ${docs}\" } }", "routes[0].deprecation.gone.detail"),
        ("cluster = \"c\"\ndeprecation = { since = \"2026-01-01T00:00:00Z\", sunset = \"2027-01-01T00:00:00Z\", gone = { detail = \"v${version} is gone\" } }", "routes[0].deprecation.gone.detail"),
        ("cluster = \"c\"\ndeprecation = { since = \"2026-01-01T00:00:00Z\", sunset = \"2027-01-01T00:00:00Z\", gone = { type = \"not a uri\" } }", "routes[0].deprecation.gone.type"),
        ("cluster = \"c\"\ndeprecation = { since = \"2026-01-01T00:00:00Z\", sunset = \"2027-01-01T00:00:00Z\", gone = { title = \"\" } }", "routes[0].deprecation.gone.title"),
        ("cluster = \"c\"\ndeprecation = { since = \"2026-01-01T00:00:00Z\", gone = { title = \"t\" } }", "routes[0].deprecation.gone"),
        ("cluster = \"c\"\ndeprecation = { since = \"2026-01-01T00:00:00Z\", warning_days = 10 }", "routes[0].deprecation.warning_days"),
        ("deprecation = { since = \"2026-01-01T00:00:00Z\" }\nversions = { from = \"header:v\", map = { \"1\" = \"c\" } }", "routes[0].deprecation"),
        ("versions = { from = \"header:v\", map = { \"1\" = { cluster = \"c\", deprecated = \"2026-01-01T00:00:00Z\", gone = { title = \"t\" } } } }", "routes[0].versions.map.\"1\".gone"),
        ("versions = { from = \"header:v\", map = { \"1\" = { cluster = \"c\", sunset = \"2026-01-01T00:00:00Z\", gone = { code = \"${version\" } } } }", "routes[0].versions.map.\"1\".gone.code"),
        ("method = \"GET\"\nmethods = [\"POST\"]\ncluster = \"c\"", "routes[0].methods"),
        ("split = { targets = [{ name = \"a\", cluster = \"c\", weight = 60 }, { name = \"b\", cluster = \"c\", weight = 30 }] }", "routes[0].split.targets"),
        ("split = { targets = [{ name = \"a\", cluster = \"nope\", weight = 100 }] }", "routes[0].split.targets[0].cluster"),
        ("split = { targets = [{ name = \"a\", cluster = \"c\", weight = 101 }] }", "routes[0].split.targets[0].weight"),
        ("split = { targets = [{ name = \"a\", cluster = \"c\", weight = 100 }], sticky = \"path\" }", "routes[0].split.sticky"),
        ("split = { targets = [{ name = \"a\", cluster = \"c\", weight = 100 }], override = [{ header = \"x\", value = \"1\", target = \"zz\" }] }", "routes[0].split.override[0].target"),
        ("split = { targets = [{ name = \"a\", cluster = \"c\", weight = 100 }], promotion = { steps = [1, 5] } }", "routes[0].split.promotion"),
        ("split = { targets = [{ name = \"a\", cluster = \"c\", weight = 50 }, { name = \"b\", cluster = \"c\", weight = 50 }], analysis = { canary = \"a\", baseline = \"a\" } }", "routes[0].split.analysis.canary"),
        ("cluster = \"c\"\nsplit = { targets = [{ name = \"a\", cluster = \"c\", weight = 100 }] }", "routes[0]"),
        ("cluster = \"c\"\nrate_limit = { key = \"cookie:x\", limits = [{ requests = 1, per = \"1s\" }] }", "routes[0].rate_limit.key"),
        ("cluster = \"c\"\nrate_limit = { key = \"client_ip\", limits = [{ requests = 0, per = \"1s\" }] }", "routes[0].rate_limit.limits[0].requests"),
        ("cluster = \"c\"\nauth = \"maybe\"", "routes[0].auth"),
    ];
    for (route, path) in bad {
        let text = format!(
            "[[listeners]]\naddr = \"127.0.0.1:0\"\n[[clusters]]\nname = \"c\"\nendpoints = [{{ addr = \"127.0.0.1:1\" }}]\n[[routes]]\n{route}\n"
        );
        let err = Config::parse(&text, Path::new("t")).expect_err(route);
        assert!(
            err.errors.iter().any(|e| e.path == path),
            "{route:?}: expected an error at {path}, got {err}"
        );
    }
}
