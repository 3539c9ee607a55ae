//! API versions: a route's version map chosen from the path, a header, `Accept` (with
//! q-values) or the query; problem+json answers that list the versions; each version's
//! lifecycle from active to sunset at its dates (the clock set with `LB_TEST_NOW`); usage per
//! consumer on the admin API.

mod common;

use std::ffi::OsStr;

use common::*;
use serde_json::{json, Value};

const ALICE: &str = "72ee9d4355ccb9d3a4c9dbf37382e38e75c1b1a225b5bd1f729ee91bbda30c20";
const BOB: &str = "9b94dc1a51a38769f135edf04033ad7f2f487b6c25929be7a861cfc1ab10cf98";

/// 2026-12-01T00:00:00Z, and days.
const DEC1: u64 = 1_796_083_200;
const DAY: u64 = 86_400;

struct Apis {
    _v1: Backend,
    _v2: Backend,
    _v3: Backend,
    lb: Lb,
}

/// Three versions behind three routes, one per source: v1 deprecated on Dec 1 with its
/// sunset on Mar 1 (so the warning phase starts on Jan 30), v2 current, v3 current.
fn start(now: Option<u64>) -> Apis {
    let v1 = Backend::start(echo("users-v1")).expect("backend");
    let v2 = Backend::start(echo("users-v2")).expect("backend");
    let v3 = Backend::start(echo("users-v3")).expect("backend");
    let versions = |from: &str, default: &str| {
        format!(
            "versions = {{ from = \"{from}\", {default} echo_header = \"API-Version\", map = {{ \
             \"1\" = {{ cluster = \"v1\", deprecated = \"2026-12-01T00:00:00Z\", sunset = \"2027-03-01T00:00:00Z\", successor = \"2\", policy = \"https://docs.example.com/migrate\", deprecation_field = true, \
             gone = {{ type = \"https://docs.example.com/errors/retired\", title = \"Users v${{version}} is retired\", detail = \"Move to v${{successor}}: ${{guide}}\", code = \"users_v${{version}}_retired\" }} }}, \
             \"2\" = \"v2\", \"10\" = \"v3\" }} }}"
        )
    };
    let cfg = config(&format!(
        "[[consumers]]\nname = \"alice\"\nkey_sha256 = \"{ALICE}\"\n\
         [[consumers]]\nname = \"bob\"\nkey_sha256 = \"{BOB}\"\n\
         [[clusters]]\nname = \"v1\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[clusters]]\nname = \"v2\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[clusters]]\nname = \"v3\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[routes]]\nname = \"by-path\"\npath_prefix = \"/api\"\n{}\n\
         [[routes]]\nname = \"by-header\"\npath_prefix = \"/h\"\n{}\n\
         [[routes]]\nname = \"by-accept\"\npath_prefix = \"/a\"\n{}\n\
         [[routes]]\nname = \"by-query\"\npath_prefix = \"/q\"\n{}\n\
         [[routes]]\nname = \"legacy\"\npath_prefix = \"/legacy\"\ncluster = \"v1\"\n\
         deprecation = {{ since = \"2026-12-01T00:00:00Z\", sunset = \"2027-03-01T00:00:00Z\", successor = \"/api/v2/\", \
         link = \"https://docs.example.com/migrate\", warning_days = 10, gone = {{ detail = \"${{route}} is gone since ${{sunset}}\" }} }}\n",
        v1.addr,
        v2.addr,
        v3.addr,
        versions("path:/api/v{version}/", ""),
        versions("header:X-API-Version", "default = \"2\","),
        versions("accept:example", "default = \"2\","),
        versions("query:api-version", ""),
    ));
    let now_text = now.map(|n| n.to_string()).unwrap_or_default();
    let env: Vec<(&str, &OsStr)> = match now {
        Some(_) => vec![("LB_TEST_NOW", OsStr::new(&now_text))],
        None => vec![],
    };
    let lb = Lb::start_with_env(&cfg, &env);
    Apis {
        _v1: v1,
        _v2: v2,
        _v3: v3,
        lb,
    }
}

fn backend(r: &Response) -> String {
    r.header("x-backend").unwrap_or("").to_string()
}

#[test]
fn every_source_chooses_the_version() {
    let a = start(Some(DEC1 - DAY));
    let lb = &a.lb;
    // The path.
    let r = get(lb.addr, "/api/v2/users/7");
    assert_eq!((r.status, backend(&r).as_str()), (200, "users-v2"));
    assert_eq!(r.header("api-version"), Some("2"), "echoed");
    assert_eq!(backend(&get(lb.addr, "/api/v10/users")), "users-v3");
    // A header, with a default.
    let r = get_with(lb.addr, "/h/users", &[("X-API-Version", "1")]);
    assert_eq!(backend(&r), "users-v1");
    assert_eq!(
        r.header("vary"),
        Some("x-api-version"),
        "caches key on the header"
    );
    assert_eq!(
        backend(&get(lb.addr, "/h/users")),
        "users-v2",
        "the default"
    );
    // Accept: the highest q, then the newest; a version parameter; Vary.
    let accept = |v: &str| get_with(lb.addr, "/a/users", &[("Accept", v)]);
    let r = accept("application/vnd.example.v1+json, application/vnd.example.v10+json");
    assert_eq!(backend(&r), "users-v3", "equal q: the newest");
    assert_eq!(r.header("vary"), Some("Accept"));
    assert_eq!(
        backend(&accept(
            "application/vnd.example.v10+json;q=0.2, application/vnd.example.v1+json;q=0.9"
        )),
        "users-v1",
        "the higher q"
    );
    assert_eq!(backend(&accept("application/json; version=10")), "users-v3");
    assert_eq!(
        backend(&accept("application/json")),
        "users-v2",
        "no version: the default"
    );
    // Java's default Accept (a range that does not parse, and wildcards): the default.
    assert_eq!(
        backend(&accept(
            "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"
        )),
        "users-v2"
    );
    // The query.
    assert_eq!(
        backend(&get(lb.addr, "/q/users?x=1&api-version=1")),
        "users-v1"
    );
}

/// A problem+json answer that names the supported versions.
fn problem(r: &Response, status: u16) -> Value {
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let v = r.json();
    assert_eq!(v["status"], status);
    assert_eq!(
        v["supported_versions"],
        json!(["1", "10", "2"]),
        "the versions there are: {v}"
    );
    v
}

#[test]
fn unknown_missing_and_malformed_versions_get_problems() {
    let a = start(Some(DEC1 - DAY));
    let lb = &a.lb;
    let v = problem(&get(lb.addr, "/api/v3/users"), 400);
    assert!(
        v["detail"].as_str().is_some_and(|d| d.contains("\"3\"")),
        "{v}"
    );
    problem(&get_with(lb.addr, "/h/x", &[("X-API-Version", "9")]), 400);
    problem(&get(lb.addr, "/q/users?api-version=beta"), 400);
    // No version and no default.
    let v = problem(&get(lb.addr, "/q/users"), 400);
    assert_eq!(v["title"], "API version required");
    // Accept: only unsupported versions is 406; a malformed header is 400.
    let r = get_with(
        lb.addr,
        "/a/x",
        &[("Accept", "application/vnd.example.v7+json")],
    );
    problem(&r, 406);
    assert_eq!(
        r.header("vary"),
        Some("Accept"),
        "a cache keeps it per Accept"
    );
    problem(
        &get_with(
            lb.addr,
            "/a/x",
            &[("Accept", "application/vnd.example.v2+json;q=0")],
        ),
        406,
    );
    let v = problem(
        &get_with(lb.addr, "/a/x", &[("Accept", "application/json;q=7")]),
        400,
    );
    assert_eq!(v["title"], "Malformed Accept header");
}

/// A `/deprecations` entry's consumers and their request counts, in its order.
fn consumers_of(entry: &Value) -> Vec<(String, u64)> {
    entry["consumers"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|c| {
                    let name = c["consumer"].as_str().unwrap_or("").to_string();
                    (name, c["requests"].as_u64().unwrap_or(0))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Moves the running lb's lifecycle clock (it was started with `LB_TEST_NOW`).
fn set_clock(lb: &Lb, unix: u64) {
    let (status, v) = lb.admin_json("PUT", "/test/clock", &json!(unix));
    assert_eq!((status, &v["now_unix"]), (200, &json!(unix)), "{v}");
}

fn links(r: &Response) -> Vec<&str> {
    r.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("link"))
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn a_version_moves_through_its_phases_at_its_dates() {
    // One lb for every phase: the phase follows the clock, with no reload or restart.
    let a = start(Some(DEC1 - DAY));
    // Before its deprecation: no lifecycle header.
    let r = get(a.lb.addr, "/api/v1/users");
    assert_eq!(backend(&r), "users-v1");
    assert_eq!(r.header("deprecation"), None);

    // Deprecated.
    set_clock(&a.lb, DEC1 + DAY);
    let r = get(a.lb.addr, "/api/v1/users");
    assert_eq!(backend(&r), "users-v1");
    assert_eq!(r.header("deprecation"), Some(format!("@{DEC1}").as_str()));
    assert_eq!(r.header("sunset"), Some("Mon, 01 Mar 2027 00:00:00 GMT"));
    let l = links(&r);
    assert!(
        l.contains(&"</api/v2/>; rel=\"successor-version\"")
            && l.contains(&"<https://docs.example.com/migrate>; rel=\"deprecation\""),
        "{l:?}"
    );
    assert_eq!(r.header("warning"), None);
    assert!(
        r.json().get("_deprecation").is_none(),
        "only in the warning phase"
    );
    assert_eq!(get(a.lb.addr, "/api/v2/users").header("deprecation"), None);

    // The last 30 days: a warning as well.
    set_clock(&a.lb, DEC1 + 70 * DAY);
    let r = get(a.lb.addr, "/api/v1/users");
    assert_eq!(backend(&r), "users-v1");
    assert!(
        r.header("warning")
            .is_some_and(|w| w.starts_with("299 lb ") && w.contains("01 Mar 2027")),
        "{:?}",
        r.header("warning")
    );
    // The opted-in `_deprecation` member, first in the backend's object, with the length
    // adjusted: a second request on the same connection still reads cleanly.
    let mut c = Client::connect(a.lb.addr);
    for _ in 0..2 {
        c.send(b"GET /api/v1/users HTTP/1.1\r\nHost: x\r\n\r\n");
        let body = c.response().json();
        assert_eq!(body["backend"], "users-v1", "{body}");
        let d = &body["_deprecation"];
        assert_eq!(
            (d["version"].as_str(), d["phase"].as_str()),
            (Some("1"), Some("warning")),
            "{body}"
        );
        assert_eq!(d["successor_version"], "2");
        assert_eq!(d["sunset"], "Mon, 01 Mar 2027 00:00:00 GMT");
        assert_eq!(d["policy"], "https://docs.example.com/migrate");
    }
    assert!(get(a.lb.addr, "/api/v2/users")
        .json()
        .get("_deprecation")
        .is_none());

    // Past its sunset: 410 in the operator's words, with where to go.
    set_clock(&a.lb, DEC1 + 91 * DAY);
    let r = get(a.lb.addr, "/api/v1/users");
    assert_eq!(r.status, 410);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let v = r.json();
    assert_eq!(v["type"], "https://docs.example.com/errors/retired", "{v}");
    assert_eq!(v["title"], "Users v1 is retired", "{v}");
    assert_eq!(
        v["detail"], "Move to v2: https://docs.example.com/migrate",
        "{v}"
    );
    assert_eq!(v["code"], "users_v1_retired", "{v}");
    assert_eq!(v["successor_version"], "2", "{v}");
    assert_eq!(v["migration_guide"], "https://docs.example.com/migrate");
    assert_eq!(backend(&get(a.lb.addr, "/api/v2/users")), "users-v2");
    let m = a.lb.scrape();
    for (version, phase, n) in [
        ("1", "active", 1.0),
        ("1", "deprecated", 1.0),
        ("1", "warning", 3.0),
        ("1", "sunset", 1.0),
        ("2", "active", 3.0),
    ] {
        assert_eq!(
            metric(
                &m,
                "lb_api_version_requests_total",
                &[("route", "by-path"), ("version", version), ("phase", phase)]
            ),
            n,
            "version {version} in {phase}"
        );
    }
    // A process without LB_TEST_NOW reads the system clock: nobody can move it.
    let plain = start(None);
    let (status, v) = plain.lb.admin_json("PUT", "/test/clock", &json!(DEC1));
    assert_eq!(status, 404, "{v}");
}

#[test]
fn a_route_without_versions_has_the_same_lifecycle() {
    let a = start(Some(DEC1 - DAY));
    let lb = &a.lb;
    // Announced ahead (RFC 9745 allows a future date), nobody tracked yet.
    let r = get(lb.addr, "/legacy/users");
    assert_eq!((r.status, backend(&r)), (200, "users-v1".to_string()));
    assert_eq!(r.header("deprecation"), Some(format!("@{DEC1}").as_str()));
    assert_eq!(r.header("warning"), None);

    // Deprecated (its warning phase is 10 days, so still deprecated on Feb 9).
    set_clock(lb, DEC1 + 70 * DAY);
    let r = get_with(lb.addr, "/legacy/users", &[("X-API-Key", "alice-key")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("sunset"), Some("Mon, 01 Mar 2027 00:00:00 GMT"));
    assert!(
        links(&r).contains(&"</api/v2/>; rel=\"successor-version\""),
        "{:?}",
        links(&r)
    );
    assert_eq!(r.header("warning"), None, "warning_days = 10");

    // Its last 10 days: a warning.
    set_clock(lb, DEC1 + 85 * DAY);
    let r = get_with(lb.addr, "/legacy/users", &[("X-API-Key", "bob-key")]);
    assert_eq!(r.status, 200);
    assert!(
        r.header("warning")
            .is_some_and(|w| w.starts_with("299 lb ") && w.contains("01 Mar 2027")),
        "{:?}",
        r.header("warning")
    );
    get_with(lb.addr, "/legacy/users", &[("X-API-Key", "bob-key")]);

    // Who still calls it, listed with no version.
    let (status, v) = lb.admin("GET", "/deprecations");
    assert_eq!(status, 200, "{v}");
    let entry = v["versions"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["route"] == "legacy"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["version"], Value::Null, "{v}");
    assert_eq!(entry["phase"], "warning", "{v}");
    assert_eq!(entry["successor"], "/api/v2/", "{v}");
    let consumers = consumers_of(&entry);
    assert_eq!(
        consumers,
        vec![("bob".to_string(), 2), ("alice".to_string(), 1)],
        "{entry}"
    );

    // Past its sunset: a problem+json 410 in the operator's words; the backend sees nothing.
    set_clock(lb, DEC1 + 90 * DAY);
    let before = a._v1.requests();
    let r = get(lb.addr, "/legacy/users");
    assert_eq!(r.status, 410);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let p = r.json();
    assert_eq!(
        p["detail"], "legacy is gone since Mon, 01 Mar 2027 00:00:00 GMT",
        "{p}"
    );
    assert_eq!(
        (p["status"].as_u64(), p["code"].as_str()),
        (Some(410), Some("gone")),
        "{p}"
    );
    assert_eq!(p["successor"], "/api/v2/", "{p}");
    assert_eq!(a._v1.requests(), before);
    let m = lb.scrape();
    assert_eq!(
        metric(
            &m,
            "lb_api_version_requests_total",
            &[("route", "legacy"), ("phase", "warning")]
        ),
        2.0
    );
}

#[test]
fn deprecated_versions_list_who_still_calls_them() {
    let a = start(Some(DEC1 + DAY));
    let lb = &a.lb;
    for _ in 0..3 {
        get_with(lb.addr, "/api/v1/users", &[("X-API-Key", "alice-key")]);
    }
    get_with(
        lb.addr,
        "/h/users",
        &[("X-API-Key", "bob-key"), ("X-API-Version", "1")],
    );
    get(lb.addr, "/api/v1/users");
    // The current version is not tracked.
    get_with(lb.addr, "/api/v2/users", &[("X-API-Key", "alice-key")]);
    let (status, v) = lb.admin("GET", "/deprecations");
    assert_eq!(status, 200, "{v}");
    let entry = |route: &str| {
        v["versions"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|e| e["route"] == route && e["version"] == "1")
            })
            .cloned()
            .unwrap_or_default()
    };
    let by_path = entry("by-path");
    assert_eq!(by_path["phase"], "deprecated", "{v}");
    assert_eq!(by_path["sunset_unix"], DEC1 + 90 * DAY);
    let consumers = by_path["consumers"].as_array().expect("consumers");
    assert_eq!(
        consumers[0]["consumer"], "alice",
        "most requests first: {by_path}"
    );
    assert_eq!(consumers[0]["requests"], 3);
    assert!(consumers[0]["last_seen_unix"]
        .as_u64()
        .is_some_and(|t| t > 0));
    assert_eq!(consumers[1]["consumer"], "anonymous");
    assert_eq!(entry("by-header")["consumers"][0]["consumer"], "bob");
    assert!(
        !v["versions"]
            .as_array()
            .expect("list")
            .iter()
            .any(|e| e["version"] == "2"),
        "active versions nobody tracks are not listed: {v}"
    );
}

#[test]
fn explain_names_the_version() {
    let a = start(Some(DEC1 + DAY));
    let (status, x) = a.lb.admin_json(
        "POST",
        "/explain",
        &json!({ "url": "http://x.example/a/users", "headers": ["Accept: application/vnd.example.v1+json"] }),
    );
    assert_eq!(status, 200, "{x}");
    assert_eq!(x["cluster"], "v1", "{x}");
    assert!(
        x["text"]
            .as_str()
            .is_some_and(|t| t.contains("API version: 1 (deprecated)")),
        "{x}"
    );
    // The explanation is not a caller: nothing is counted.
    let (_, v) = a.lb.admin("GET", "/deprecations");
    assert!(
        v["versions"].as_array().is_some_and(|l| l
            .iter()
            .all(|e| e["consumers"].as_array().is_some_and(|c| c.is_empty()))),
        "{v}"
    );
}

/// `${version}` renders the chosen version in a route's rewrite, and the access log says the
/// version and, past its deprecation, the phase.
#[test]
fn the_version_reaches_templates_and_the_access_log() {
    let backend = Backend::start(echo("api")).expect("backend");
    let dir = scratch_dir("versions-log");
    let log = dir.join("access.log");
    let cfg = config(&format!(
        "[access_log]\npath = \"{}\"\n\
         [[clusters]]\nname = \"api\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\n\
         rewrite = {{ path = \"/internal/v${{version}}${{path}}\" }}\n\
         versions = {{ from = \"header:X-API-Version\", default = \"2\", map = {{ \
         \"1\" = {{ cluster = \"api\", deprecated = \"2020-01-01T00:00:00Z\" }}, \"2\" = \"api\" }} }}\n",
        log.display(),
        backend.addr
    ));
    let lb = Lb::start(&cfg);
    let r = get_with(lb.addr, "/api/users", &[("X-API-Version", "1")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/internal/v1/api/users", "{:?}", r.json());
    let r = get(lb.addr, "/api/users");
    assert_eq!(r.json()["path"], "/internal/v2/api/users");
    wait_until("two access log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2)
    });
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    // Two workers write their lines in their own order.
    let of = |v: &str| {
        lines
            .iter()
            .find(|l| l["api_version"] == v)
            .unwrap_or_else(|| panic!("no line for version {v}: {text}"))
    };
    assert_eq!(of("1")["api_version_phase"], "deprecated", "{text}");
    assert!(of("2").get("api_version_phase").is_none(), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A split inside one version: v2 has a canary that an override header reaches, v1 has none;
/// the admin API lists the version's split like any other.
#[test]
fn a_version_can_have_its_own_canary() {
    let v1 = Backend::start(echo("v1")).expect("backend");
    let v2 = Backend::start(echo("v2")).expect("backend");
    let v2c = Backend::start(echo("v2-canary")).expect("backend");
    let lb = Lb::start(&config(&format!(
        "[[clusters]]\nname = \"v1\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[clusters]]\nname = \"v2\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[clusters]]\nname = \"v2c\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\n\
         [routes.versions]\nfrom = \"path:/api/v{{version}}/\"\n\
         map.\"1\" = \"v1\"\n\
         map.\"2\" = {{ split = {{ name = \"v2-rollout\", targets = [{{ name = \"stable\", cluster = \"v2\", weight = 100 }}, {{ name = \"canary\", cluster = \"v2c\", weight = 0 }}], override = [{{ header = \"X-Canary\", value = \"true\", target = \"canary\" }}] }} }}\n\
         [[routes]]\nname = \"other\"\npath_prefix = \"/other\"\n\
         [routes.split]\nname = \"other-rollout\"\ntargets = [{{ name = \"only\", cluster = \"v1\", weight = 100 }}]\n",
        v1.addr, v2.addr, v2c.addr
    )));
    assert_eq!(backend(&get(lb.addr, "/api/v2/x")), "v2");
    assert_eq!(
        backend(&get_with(lb.addr, "/api/v2/x", &[("X-Canary", "true")])),
        "v2-canary"
    );
    assert_eq!(
        backend(&get_with(lb.addr, "/api/v1/x", &[("X-Canary", "true")])),
        "v1",
        "v1 has no canary"
    );
    let split = lb.split("v2-rollout");
    assert_eq!(split["route"], "api", "{split}");
    // A route's own split beside it keeps working.
    assert_eq!(backend(&get(lb.addr, "/other/x")), "v1");
    assert_eq!(lb.split("other-rollout")["route"], "other");
    // Its weights move through the admin API like any split's.
    let (status, body) = lb.admin_json(
        "POST",
        "/splits/v2-rollout/weights",
        &json!({ "weights": { "stable": 0, "canary": 100 } }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(backend(&get(lb.addr, "/api/v2/x")), "v2-canary");
    assert_eq!(backend(&get(lb.addr, "/api/v1/x")), "v1");
}

#[test]
fn jwt_consumers_are_named_by_their_providers_claim() {
    use lb::client::jwt::sign::{jwks, SigningKey};
    use lb::client::jwt::{unix_now, Alg};
    let key = SigningKey::generate(Alg::ES256).expect("key");
    let token = |claims: Value| {
        let mut c = json!({ "iss": "https://id.test", "exp": unix_now() + 600 });
        if let (Some(c), Some(extra)) = (c.as_object_mut(), claims.as_object()) {
            c.extend(extra.clone());
        }
        let t = key
            .sign(&json!({ "alg": "ES256", "kid": "k", "typ": "JWT" }), &c)
            .expect("sign");
        format!("Bearer {t}")
    };
    let dir = scratch_dir("versions-jwt");
    std::fs::write(dir.join("jwks.json"), jwks(&[("k", &key)])).expect("jwks");
    let v1 = Backend::start(echo("users-v1")).expect("backend");
    let provider = |name: &str, extra: &str| {
        format!(
            "[[jwt_providers]]\nname = \"{name}\"\nissuer = \"https://id.test\"\njwks_file = \"{}\"\n{extra}\n",
            dir.join("jwks.json").display()
        )
    };
    let route = |name: &str, prefix: &str, provider: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\njwt = {{ provider = \"{provider}\", required = false }}\n\
             versions = {{ from = \"header:X-API-Version\", default = \"1\", map = {{ \
             \"1\" = {{ cluster = \"v1\", deprecated = \"2026-01-01T00:00:00Z\" }} }} }}\n"
        )
    };
    let cfg = config(&format!(
        "{}{}[[clusters]]\nname = \"v1\"\nendpoints = [{{ addr = \"{}\" }}]\n{}{}",
        provider("apps", "consumer_claim = \"client_id\""),
        provider("people", ""),
        v1.addr,
        route("by-app", "/apps", "apps"),
        route("by-person", "/people", "people"),
    ));
    let lb = Lb::start(&cfg);
    let mobile = token(json!({ "sub": "user-1", "client_id": "mobile-app" }));
    for _ in 0..2 {
        let r = get_with(lb.addr, "/apps/users", &[("Authorization", &mobile)]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let no_client = token(json!({ "sub": "user-2" }));
    get_with(lb.addr, "/apps/users", &[("Authorization", &no_client)]);
    get_with(lb.addr, "/people/users", &[("Authorization", &mobile)]);
    let (status, v) = lb.admin("GET", "/deprecations");
    assert_eq!(status, 200, "{v}");
    let consumers = |route: &str| {
        let entry = v["versions"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["route"] == route))
            .cloned()
            .unwrap_or_default();
        consumers_of(&entry)
    };
    // The `apps` provider names consumers by `client_id`; a token without it is anonymous.
    assert_eq!(
        consumers("by-app"),
        vec![("mobile-app".to_string(), 2), ("anonymous".to_string(), 1)],
        "{v}"
    );
    // The `people` provider by the subject.
    assert_eq!(
        consumers("by-person"),
        vec![("user-1".to_string(), 1)],
        "{v}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
