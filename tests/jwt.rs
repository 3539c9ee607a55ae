//! JWT bearer tokens end to end: real tokens signed by keys made here, a JWKS file and a JWKS
//! URL served by a test server, and lb deciding by them: 401s that say why, routing, split
//! targeting and stickiness, rate limits by claim, forwarded claims a client cannot forge, and
//! key rotation picked up without a reload.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use lb::client::jwt::sign::{jwks, SigningKey};
use lb::client::jwt::{unix_now, Alg};
use serde_json::json;

const ISS: &str = "https://id.test";

struct Keys {
    es: SigningKey,
    rsa: SigningKey,
    ed: SigningKey,
}

fn keys() -> Keys {
    Keys {
        es: SigningKey::generate(Alg::ES256).expect("key"),
        rsa: SigningKey::generate(Alg::RS256).expect("key"),
        ed: SigningKey::generate(Alg::EdDSA).expect("key"),
    }
}

/// A token signed by `key` as `kid` with `alg`, for `sub`, valid for ten minutes, with
/// `extra` claims on top.
fn token(key: &SigningKey, alg: &str, kid: &str, sub: &str, extra: serde_json::Value) -> String {
    let mut claims = json!({ "iss": ISS, "aud": "shop", "sub": sub, "exp": unix_now() + 600 });
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    key.sign(&json!({ "alg": alg, "kid": kid, "typ": "JWT" }), &claims)
        .expect("sign")
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// Two echo clusters and a JWKS file with the three keys; `provider_extra` and `routes` go
/// into the config.
fn setup(
    k: &Keys,
    provider_extra: &str,
    routes: &str,
) -> (Lb, Backend, Backend, std::path::PathBuf) {
    let dir = scratch_dir("jwt");
    std::fs::write(
        dir.join("jwks.json"),
        jwks(&[("es", &k.es), ("rsa", &k.rsa), ("ed", &k.ed)]),
    )
    .expect("jwks");
    let stable = Backend::start(echo("stable")).expect("backend");
    let canary = Backend::start(echo("canary")).expect("backend");
    let cfg = config(&format!(
        "[[jwt_providers]]\nname = \"auth\"\nissuer = \"{ISS}\"\naudiences = [\"shop\"]\n\
         jwks_file = \"{}\"\n{provider_extra}\n\
         [[clusters]]\nname = \"stable\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[clusters]]\nname = \"canary\"\nendpoints = [{{ addr = \"{}\" }}]\n{routes}",
        dir.join("jwks.json").display(),
        stable.addr,
        canary.addr
    ));
    (Lb::start(&cfg), stable, canary, dir)
}

fn backend(r: &Response) -> String {
    r.header("x-backend").unwrap_or("").to_string()
}

#[test]
fn every_bad_token_gets_401_saying_why() {
    let k = keys();
    let routes = "[[routes]]\npath_prefix = \"/private\"\ncluster = \"stable\"\njwt = { provider = \"auth\" }\n";
    let (lb, _s, _c, dir) = setup(&k, "", routes);
    let get_auth = |auth: Option<String>| {
        let h: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        get_with(lb.addr, "/private", &h)
    };
    for (alg, key, kid) in [
        ("ES256", &k.es, "es"),
        ("RS256", &k.rsa, "rsa"),
        ("EdDSA", &k.ed, "ed"),
    ] {
        let r = get_auth(Some(bearer(&token(key, alg, kid, "u1", json!({})))));
        assert_eq!(r.status, 200, "{alg}: {}", String::from_utf8_lossy(&r.body));
    }
    let r = get_auth(None);
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"auth\""));
    let now = unix_now();
    let hs = SigningKey::generate(Alg::HS256).expect("secret");
    let other = SigningKey::generate(Alg::ES256).expect("key");
    let good = token(&k.es, "ES256", "es", "u1", json!({}));
    let none = {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = good.split('.');
        let _ = parts.next();
        format!(
            "{}.{}.",
            b.encode(br#"{"alg":"none","kid":"es"}"#),
            parts.next().unwrap_or("")
        )
    };
    let cases = [
        (
            token(&k.es, "ES256", "es", "u1", json!({ "exp": now - 120 })),
            "the token has expired",
        ),
        (
            token(&k.es, "ES256", "es", "u1", json!({ "nbf": now + 600 })),
            "the token is not valid yet",
        ),
        (
            token(&k.es, "ES256", "es", "u1", json!({ "aud": "billing" })),
            "the token's audience is not accepted",
        ),
        (
            token(
                &k.es,
                "ES256",
                "es",
                "u1",
                json!({ "iss": "https://evil.test" }),
            ),
            "the token's issuer is not accepted",
        ),
        (
            token(&hs, "HS256", "es", "u1", json!({})),
            "the token's algorithm is not allowed",
        ),
        (none, "the token's algorithm is not allowed"),
        (
            token(&other, "ES256", "es", "u1", json!({})),
            "the token's signature does not verify",
        ),
        (
            token(&k.es, "ES256", "nope", "u1", json!({})),
            "the token's key is not known",
        ),
        ("not.a-token".to_string(), "the token is not a signed JWT"),
    ];
    for (t, why) in &cases {
        let r = get_auth(Some(bearer(t)));
        assert_eq!(r.status, 401, "{why}");
        assert_eq!(
            r.header("www-authenticate"),
            Some(
                format!(
                    "Bearer realm=\"auth\", error=\"invalid_token\", error_description=\"{why}\""
                )
                .as_str()
            )
        );
        assert_eq!(r.json()["message"], *why);
    }
    let m = lb.scrape();
    for (result, n) in [
        ("ok", 3.0),
        ("missing", 1.0),
        ("expired", 1.0),
        ("bad_signature", 1.0),
        ("algorithm", 2.0),
        ("unknown_kid", 1.0),
    ] {
        assert_eq!(
            metric(
                &m,
                "lb_jwt_verifications_total",
                &[("provider", "auth"), ("result", result)]
            ),
            n,
            "{result}"
        );
    }
    // A repeat is answered from the worker's cache.
    for _ in 0..4 {
        assert_eq!(get_auth(Some(bearer(&good))).status, 200);
    }
    assert!(
        metric(
            &lb.scrape(),
            "lb_jwt_cache_hits_total",
            &[("provider", "auth")]
        ) >= 2.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn claims_route_target_stick_and_limit() {
    let k = keys();
    let routes = r#"
[[routes]]
name = "beta"
path_prefix = "/app"
jwt = { provider = "auth", required = false }
jwt_claims = [{ name = "role", equals = "beta-tester" }]
cluster = "canary"

[[routes]]
name = "admins"
path_prefix = "/app"
jwt = { provider = "auth", required = false }
jwt_claims = [{ name = "realm_access.roles", contains = "admin" }]
cluster = "canary"

[[routes]]
name = "app"
path_prefix = "/app"
cluster = "stable"

[[routes]]
path_prefix = "/target"
jwt = { provider = "auth" }
[routes.split]
name = "beta-first"
targets = [{ name = "stable", cluster = "stable", weight = 0 }, { name = "canary", cluster = "canary", weight = 100 }]
default_target = "stable"
include = [{ jwt_claim = "groups", values = ["beta"] }]

[[routes]]
path_prefix = "/sticky"
jwt = { provider = "auth" }
[routes.split]
name = "by-user"
targets = [{ name = "stable", cluster = "stable", weight = 50 }, { name = "canary", cluster = "canary", weight = 50 }]
sticky = "jwt:sub"
salt = "t"

[[routes]]
path_prefix = "/limited"
cluster = "stable"
jwt = { provider = "auth" }
rate_limit = { key = "jwt:sub", limits = [{ when_claims = [{ name = "plan", equals = "pro" }], requests = 3, per = "1m" }, { requests = 1, per = "1m" }] }
"#;
    let (lb, _s, _c, dir) = setup(&k, "", routes);
    let with = |path: &str, sub: &str, extra: serde_json::Value| {
        let t = bearer(&token(&k.es, "ES256", "es", sub, extra));
        get_with(lb.addr, path, &[("Authorization", &t)])
    };
    assert_eq!(
        backend(&with("/app", "u1", json!({ "role": "beta-tester" }))),
        "canary"
    );
    assert_eq!(
        backend(&with(
            "/app",
            "u1",
            json!({ "realm_access": { "roles": ["dev", "admin"] } })
        )),
        "canary"
    );
    assert_eq!(
        backend(&with("/app", "u1", json!({ "role": "customer" }))),
        "stable"
    );
    assert_eq!(backend(&get(lb.addr, "/app")), "stable");
    // A token that does not verify is no token: its claims are never read.
    let forged = token(
        &SigningKey::generate(Alg::ES256).expect("key"),
        "ES256",
        "es",
        "u1",
        json!({ "role": "beta-tester" }),
    );
    assert_eq!(
        backend(&get_with(
            lb.addr,
            "/app",
            &[("Authorization", &bearer(&forged))]
        )),
        "stable"
    );

    assert_eq!(
        backend(&with(
            "/target",
            "u1",
            json!({ "groups": ["staff", "beta"] })
        )),
        "canary"
    );
    assert_eq!(
        backend(&with("/target", "u1", json!({ "groups": ["staff"] }))),
        "stable"
    );

    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let sub = format!("user-{i}");
        let first = backend(&with("/sticky", &sub, json!({})));
        assert_eq!(
            backend(&with("/sticky", &sub, json!({}))),
            first,
            "{sub} sticks"
        );
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2);

    let statuses: Vec<u16> = ["a", "a", "b"]
        .iter()
        .map(|s| with("/limited", s, json!({})).status)
        .collect();
    assert_eq!(statuses, [200, 429, 200], "one a minute per subject");
    let pro: Vec<u16> = (0..4)
        .map(|_| with("/limited", "p", json!({ "plan": "pro" })).status)
        .collect();
    assert_eq!(pro, [200, 200, 200, 429], "the pro tier has three");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn forwarded_claims_cannot_be_forged_and_the_token_can_be_stripped() {
    let k = keys();
    let routes = r#"
[[routes]]
path_prefix = "/api"
jwt = { provider = "auth" }
cluster = "stable"

[[routes]]
path_prefix = "/maybe"
jwt = { provider = "auth", required = false }
cluster = "stable"

[[routes]]
path_prefix = "/open"
cluster = "stable"
"#;
    let (lb, _s, _c, dir) = setup(
        &k,
        "forward_claims = { sub = \"X-User-Id\", \"realm_access.roles\" = \"X-User-Roles\" }\nstrip_token = true\n",
        routes,
    );
    let t = bearer(&token(
        &k.es,
        "ES256",
        "es",
        "u42",
        json!({ "realm_access": { "roles": ["a", "b"] } }),
    ));
    let seen = |path: &str, headers: &[(&str, &str)]| {
        let r = get_with(lb.addr, path, headers);
        assert_eq!(r.status, 200, "{path}");
        r.json()["headers"].clone()
    };
    let h = seen(
        "/api",
        &[
            ("Authorization", &t),
            ("X-User-Id", "admin"),
            ("x-user-roles", "root"),
        ],
    );
    assert_eq!(h["x-user-id"], "u42");
    assert_eq!(h["x-user-roles"], "a,b");
    assert!(h.get("authorization").is_none(), "stripped: {h}");
    // Routes without a token never pass a client's copy on.
    let h = seen("/open", &[("X-User-Id", "admin")]);
    assert!(h.get("x-user-id").is_none(), "{h}");
    // An optional token that does not verify: served, without claims, and counted.
    let bad = bearer(&token(
        &k.es,
        "ES256",
        "es",
        "u42",
        json!({ "exp": unix_now() - 3600 }),
    ));
    let h = seen("/maybe", &[("Authorization", &bad), ("X-User-Id", "admin")]);
    assert!(h.get("x-user-id").is_none(), "{h}");
    assert_eq!(
        metric(
            &lb.scrape(),
            "lb_jwt_verifications_total",
            &[("provider", "auth"), ("result", "expired")]
        ),
        1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A JWKS URL: fetched by lb, rotated by the issuer, picked up on the unknown `kid` without a
/// reload; a failing fetch keeps the last good keys.
#[test]
fn jwks_url_rotation_is_picked_up_without_a_reload() {
    let one = SigningKey::generate(Alg::ES256).expect("key");
    let two = SigningKey::generate(Alg::ES256).expect("key");
    let doc = Arc::new(Mutex::new(Some(jwks(&[("one", &one)]))));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (d, f) = (doc.clone(), fetches.clone());
    let issuer = Backend::start(Arc::new(move |_req, res| {
        f.fetch_add(1, Ordering::SeqCst);
        match d.lock().expect("lock").clone() {
            Some(body) => res.send(
                200,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            ),
            None => res.send(500, &[], b"down"),
        }
    }))
    .expect("jwks server");
    let app = Backend::start(echo("app")).expect("backend");
    let cfg = config(&format!(
        "[[jwt_providers]]\nname = \"idp\"\njwks_url = \"http://{}/jwks.json\"\njwks_min_refetch = \"1s\"\nalgorithms = [\"ES256\"]\n\
         [[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[routes]]\ncluster = \"app\"\njwt = {{ provider = \"idp\" }}\n",
        issuer.addr, app.addr
    ));
    let lb = Lb::start(&cfg);
    let kids = || -> Vec<String> {
        let (_, v) = lb.admin("GET", "/jwt");
        v["providers"][0]["keys"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|k| k["kid"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_until("lb fetched the JWKS", || kids() == ["one"]);
    let call = |key: &SigningKey, kid: &str| {
        let t = bearer(&token(key, "ES256", kid, "u1", json!({ "iss": "any" })));
        get_with(lb.addr, "/", &[("Authorization", &t)]).status
    };
    assert_eq!(call(&one, "one"), 200);
    // The issuer rotates to key two; lb has not seen it yet.
    *doc.lock().expect("lock") = Some(jwks(&[("two", &two)]));
    let before = fetches.load(Ordering::SeqCst);
    wait_until("a token signed by the new key is accepted", || {
        call(&two, "two") == 200
    });
    assert!(
        fetches.load(Ordering::SeqCst) > before,
        "the unknown kid caused a fetch"
    );
    assert_eq!(kids(), ["two"]);
    // Key one is gone from the set: its tokens, even cached ones, fail now.
    assert_eq!(call(&one, "one"), 401);
    // The issuer fails: lb keeps key two and says what went wrong.
    *doc.lock().expect("lock") = None;
    let before = fetches.load(Ordering::SeqCst);
    wait_until("a refetch after an unknown kid", || {
        let _ = call(&one, "three");
        fetches.load(Ordering::SeqCst) > before
    });
    wait_until("the failure is reported", || {
        let (_, v) = lb.admin("GET", "/jwt");
        v["providers"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("answered 500"))
    });
    assert_eq!(call(&two, "two"), 200);
    assert_eq!(kids(), ["two"]);
}

#[test]
fn explain_shows_the_claims() {
    let k = keys();
    let dir = scratch_dir("jwt-explain");
    std::fs::write(dir.join("jwks.json"), jwks(&[("es", &k.es)])).expect("jwks");
    let path = dir.join("lb.toml");
    std::fs::write(
        &path,
            "[[listeners]]\naddr = \"127.0.0.1:8080\"\n[[jwt_providers]]\nname = \"auth\"\njwks_file = \"jwks.json\"\n\
             [[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:9\" }]\n\
             [[routes]]\nname = \"beta\"\njwt = { provider = \"auth\" }\njwt_claims = [{ name = \"role\", equals = \"beta-tester\" }]\ncluster = \"a\"\n\
             [[routes]]\nname = \"rest\"\ncluster = \"a\"\n",
    )
    .expect("config");
    let t = token(&k.es, "ES256", "es", "u7", json!({ "role": "customer" }));
    let out = std::process::Command::new(lb_bin())
        .args(["explain", "--config"])
        .arg(&path)
        .args([
            "-H",
            &format!("Authorization: Bearer {t}"),
            "GET",
            "http://x/",
        ])
        .output()
        .expect("explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("jwt auth: valid, claims {") && text.contains("\"sub\":\"u7\""),
        "{text}"
    );
    assert!(
        text.contains("claim role = \"beta-tester\" does not hold"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tokens from a cookie or a query parameter, and a split override by claim.
#[test]
fn tokens_from_cookies_and_queries_and_overrides_by_claim() {
    let k = keys();
    let routes = r#"
[[routes]]
path_prefix = "/"
jwt = { provider = "auth" }
[routes.split]
name = "staff-first"
targets = [{ name = "stable", cluster = "stable", weight = 100 }, { name = "canary", cluster = "canary", weight = 0 }]
override = [{ jwt_claim = "role", value = "staff", target = "canary" }]
"#;
    for (source, how) in [
        ("cookie:session", "cookie"),
        ("query:access_token", "query"),
    ] {
        let (lb, _s, _c, dir) = setup(
            &k,
            &format!("token = \"{source}\"\nstrip_token = true\n"),
            routes,
        );
        let send = |role: &str| {
            let t = token(&k.ed, "EdDSA", "ed", "u1", json!({ "role": role }));
            if how == "cookie" {
                get_with(
                    lb.addr,
                    "/x",
                    &[("Cookie", &format!("theme=dark; session={t}"))],
                )
            } else {
                get(lb.addr, &format!("/x?a=1&access_token={t}"))
            }
        };
        let r = send("staff");
        assert_eq!(backend(&r), "canary", "{how}");
        // The token reached lb, not the backend; the rest of the cookie or query did.
        let seen = r.json();
        if how == "cookie" {
            assert_eq!(seen["headers"]["cookie"], "theme=dark", "{seen}");
        } else {
            assert_eq!(seen["path"], "/x?a=1", "{seen}");
        }
        assert_eq!(backend(&send("customer")), "stable", "{how}");
        // A bearer header is not where this provider looks.
        let t = bearer(&token(&k.ed, "EdDSA", "ed", "u1", json!({})));
        assert_eq!(
            get_with(lb.addr, "/x", &[("Authorization", &t)]).status,
            401,
            "{how}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// What the review of the JWT work found, held: a forged claim header spelled with `_` or
/// sent as a chunked trailer never reaches the backend; a route that requires a token
/// answers 401 rather than letting the request fall through to a route that asks for less;
/// two `Authorization` fields are refused.
#[test]
fn claim_headers_cannot_be_smuggled_and_required_routes_do_not_fall_through() {
    use std::io::{Read, Write};
    let k = keys();
    // A backend that keeps every byte it was sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let raw_addr = listener.local_addr().expect("addr");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(8) {
            let Ok(mut s) = conn else { continue };
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Until the end of the head, or of a chunked body's trailer section.
            let done = |g: &[u8]| {
                let text = String::from_utf8_lossy(g).to_ascii_lowercase();
                match text.find("\r\n\r\n") {
                    None => false,
                    Some(end) if !text[..end].contains("transfer-encoding: chunked") => true,
                    Some(end) => text[end..].contains("\r\n0\r\n") && text.ends_with("\r\n\r\n"),
                }
            };
            while !done(&got) {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = tx.send(got);
        }
    });
    let dir = scratch_dir("jwt-smuggle");
    std::fs::write(dir.join("jwks.json"), jwks(&[("es", &k.es)])).expect("jwks");
    let cfg = config(&format!(
        "[[jwt_providers]]\nname = \"auth\"\njwks_file = \"{}\"\nforward_claims = {{ sub = \"X-User-Id\" }}\n\
         [[clusters]]\nname = \"raw\"\nendpoints = [{{ addr = \"{raw_addr}\" }}]\n\
         [[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\njwt = {{ provider = \"auth\" }}\n\
         jwt_claims = [{{ name = \"role\", equals = \"admin\" }}]\ncluster = \"raw\"\n\
         [[routes]]\nname = \"rest\"\ncluster = \"raw\"\n",
        dir.join("jwks.json").display()
    ));
    let lb = Lb::start(&cfg);
    // A forged claim as a header spelled with `_`, and as a trailer of a chunked body.
    let mut c = Client::connect(lb.addr);
    c.send(b"POST /open HTTP/1.1\r\nHost: t\r\nX_User_Id: admin\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-User-Id: admin\r\nx_user_id: admin\r\n\r\n");
    assert_eq!(c.response().status, 200);
    let seen = String::from_utf8_lossy(&rx.recv_timeout(BOUND).expect("the backend's bytes"))
        .to_ascii_lowercase();
    assert!(
        seen.contains("hi") && !seen.contains("user-id") && !seen.contains("user_id"),
        "{seen}"
    );
    // No token, or a token without the role: 401 from the admin route, not the catch-all.
    assert_eq!(get(lb.addr, "/admin/users").status, 401);
    let user = bearer(&token(
        &k.es,
        "ES256",
        "es",
        "u1",
        json!({ "role": "user", "iss": "x" }),
    ));
    let r = get_with(lb.addr, "/admin/users", &[("Authorization", &user)]);
    assert_eq!(
        r.status, 200,
        "a valid token whose claims do not hold falls through to the next route"
    );
    let admin = bearer(&token(
        &k.es,
        "ES256",
        "es",
        "u1",
        json!({ "role": "admin" }),
    ));
    assert_eq!(
        get_with(lb.addr, "/admin/users", &[("Authorization", &admin)]).status,
        200
    );
    // Two Authorization fields: which one would the backend take?
    let r = get_with(
        lb.addr,
        "/admin/users",
        &[("Authorization", &admin), ("Authorization", &user)],
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "the token is not a signed JWT");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An explanation asked through the admin API verifies the token as a request would, but
/// counts nothing: the verification metrics move only for real requests.
#[test]
fn explain_through_the_admin_api_counts_no_verification() {
    let k = keys();
    let (lb, _s, _c, dir) = setup(
        &k,
        "",
        "[[routes]]\nname = \"api\"\ncluster = \"stable\"\njwt = { provider = \"auth\" }\n",
    );
    let t = token(&k.es, "ES256", "es", "alice", json!({}));
    let verifications = |lb: &Lb| -> f64 {
        lb.scrape()
            .iter()
            .filter(|s| s.name == "lb_jwt_verifications_total")
            .map(|s| s.value)
            .sum()
    };
    let before = verifications(&lb);
    for auth in [bearer(&t), bearer("not.a.token")] {
        let (status, x) = lb.admin_json(
            "POST",
            "/explain",
            &json!({ "url": "http://shop.test/x", "headers": [format!("Authorization: {auth}")] }),
        );
        assert_eq!(status, 200, "{x}");
    }
    assert_eq!(verifications(&lb), before, "explanations count nothing");
    let r = get_with(lb.addr, "/x", &[("Authorization", &bearer(&t))]);
    assert_eq!(r.status, 200);
    assert_eq!(verifications(&lb), before + 1.0, "a request does");
    let _ = std::fs::remove_dir_all(dir);
}
