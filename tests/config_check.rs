//! `lb check` on good and bad configs: every error names its key path.

mod common;

use std::process::Command;

use common::{lb_bin, scratch_dir};

fn check(text: &str) -> (bool, String) {
    let dir = scratch_dir("check");
    let path = dir.join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(lb_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

const BASE: &str = "[[listeners]]\naddr = \"127.0.0.1:8080\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:9001\" }]\n[[routes]]\ncluster = \"a\"\n";

#[test]
fn good_config_passes() {
    let (ok, out) = check(BASE);
    assert!(ok, "{out}");
    assert!(out.contains("ok"));
    let (ok, out) = check(lb::demo::DEMO_CONFIG);
    assert!(ok, "the demo config must pass its own check: {out}");
}

#[test]
fn each_bad_config_names_its_key_path() {
    let v = |versions: &str| {
        format!("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{{ addr = \"127.0.0.1:1\" }}]\n[[routes]]\nversions = {versions}\n")
    };
    let version_cases = [
        (v("{ from = \"cookie:v\", map = { \"1\" = \"a\" } }"), "routes[0].versions.from"),
        (v("{ from = \"path:/api/v\", map = { \"1\" = \"a\" } }"), "routes[0].versions.from"),
        (v("{ from = \"accept\", map = {} }"), "routes[0].versions.map"),
        (v("{ from = \"accept\", map = { \"1\" = \"ghost\" } }"), "routes[0].versions.map.\"1\".cluster"),
        (v("{ from = \"accept\", default = \"2\", map = { \"1\" = \"a\" } }"), "routes[0].versions.default"),
        (v("{ from = \"accept\", map = { \"1\" = { cluster = \"a\", successor = \"9\" } } }"), "routes[0].versions.map.\"1\".successor"),
        (v("{ from = \"accept\", map = { \"1\" = { cluster = \"a\", deprecated = \"2027-01-01T00:00:00Z\", sunset = \"2026-01-01T00:00:00Z\" } } }"), "routes[0].versions.map.\"1\".sunset"),
        (v("{ from = \"accept\", map = { \"1\" = { cluster = \"a\", sunset = \"soon\" } } }"), "routes[0].versions.map.\"1\".sunset"),
        (v("{ from = \"accept\", map = { \"v 1\" = \"a\" } }"), "routes[0].versions.map.\"v 1\""),
        (format!("{}cluster = \"a\"\n", v("{ from = \"accept\", map = { \"1\" = \"a\" } }")), "routes[0]"),
        (v("{ from = \"accept\", map = { \"1\" = { deprecated = \"2027-01-01T00:00:00Z\" } } }"), "routes[0].versions.map.\"1\""),
        (format!("{}[[routes]]\npath_prefix = \"/b\"\n[routes.split]\nname = \"s\"\ntargets = [{{ name = \"a\", cluster = \"a\", weight = 100 }}]\n", v("{ from = \"accept\", map = { \"1\" = { split = { name = \"s\", targets = [{ name = \"a\", cluster = \"a\", weight = 100 }] } } } }")), "routes[1].split.name"),
    ];
    for (text, path) in &version_cases {
        let (ok, out) = check(text);
        assert!(!ok, "{text} should fail");
        assert!(
            out.contains(&format!("{path}:")),
            "{text}: expected {path} in:\n{out}"
        );
    }
    let cases: &[(&str, &str)] = &[
        ("[[listeners]]\naddr = \"nope\"\n", "listeners[0].addr"),
        ("[server]\nworkers = \"many\"\n[[listeners]]\naddr = \"127.0.0.1:1\"\n", "server.workers"),
        ("[server]\nio = \"kqueue\"\n[[listeners]]\naddr = \"127.0.0.1:1\"\n", "server.io"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }, { addr = \"x\" }]\n", "clusters[0].endpoints[1].addr"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\", weight = 0 }]\n", "clusters[0].endpoints[0].weight"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = []\n", "clusters[0].endpoints"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\nconnect_timeout = \"soon\"\n", "clusters[0].connect_timeout"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[routes]]\ncluster = \"ghost\"\n", "routes[0].cluster"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\npath_prefix = \"api\"\ncluster = \"a\"\n", "routes[0].path_prefix"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[http]\nmax_request_body = \"lots\"\n", "http.max_request_body"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[http]\nmax_header_bytes = 10\n", "http.max_header_bytes"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\", wieght = 2 }]\n", "clusters[0].endpoints[0].wieght"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[surprise]\n", "surprise"),
        ("[[listeners]]\naddr = 8080\n", "listeners[0].addr"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\npath_prefix = \"/%61dmin\"\ncluster = \"a\"\n", "routes[0].path_prefix"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\npath = \"/a/../b\"\ncluster = \"a\"\n", "routes[0].path"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[admin]\naddr = \"0.0.0.0:9901\"\n", "admin.addr"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[admin]\nhosts = [\"evil example\"]\n", "admin.hosts[0]"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[http]\nescaped_slashes = \"decode\"\n", "http.escaped_slashes"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[http]\ntrailers = \"all\"\n", "http.trailers"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[http]\nclient_address_headers = \"keep\"\n", "http.client_address_headers"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n", "http.trusted_proxies[1]"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[http]\ntrusted_proxies = []\n", "http.trusted_proxies"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\nclient_ip = [\"192.0.2.0/33\"]\ncluster = \"a\"\n", "routes[0].client_ip[0]"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\n[routes.split]\nname = \"s\"\ntargets = [{ name = \"a\", cluster = \"a\", weight = 100 }]\ninclude = [{ client_ip = [\"office\"] }]\n", "routes[0].split.include[0].client_ip[0]"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\nproxy_protocol = \"yes\"\n", "listeners[0].proxy_protocol"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[jwt_providers]]\nname = \"p\"\njwks_file = \"/nonexistent/jwks.json\"\n", "jwt_providers[0].jwks_file"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[jwt_providers]]\nname = \"p\"\njwks_url = \"http://127.0.0.1:1/k\"\nalgorithms = [\"HS256\"]\n", "jwt_providers[0].algorithms"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[jwt_providers]]\nname = \"p\"\njwks_url = \"http://127.0.0.1:1/k\"\nalgorithms = [\"none\"]\n", "jwt_providers[0].algorithms[0]"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[jwt_providers]]\nname = \"p\"\njwks_url = \"ftp://x\"\n", "jwt_providers[0].jwks_url"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\ncluster = \"a\"\njwt = { provider = \"ghost\" }\n", "routes[0].jwt.provider"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\ncluster = \"a\"\njwt_claims = [{ name = \"role\", equals = \"x\" }]\n", "routes[0].jwt_claims"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[jwt_providers]]\nname = \"p\"\njwks_url = \"http://127.0.0.1:1/k\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\ncluster = \"a\"\njwt = { provider = \"p\" }\njwt_claims = [{ name = \"role\" }]\n", "routes[0].jwt_claims[0]"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\ncluster = \"a\"\nrate_limit = { key = \"jwt:sub\", limits = [{ requests = 1, per = \"1s\" }] }\n", "routes[0].jwt"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nbalancer = \"maglev\"\nhash_key = \"jwt:sub\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n", "clusters[0].hash_key"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[geoip]\ndatabase = \"/nonexistent.mmdb\"\n", "geoip.database"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[geoip]\ndatabase = \"/etc/hostname\"\n", "geoip.database"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\ncluster = \"a\"\ncountry = [\"DE\"]\n", "routes[0].country"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[jwt_providers]]\nname = \"p\"\njwks_url = \"http://idp.example/k\"\n", "jwt_providers[0].jwks_url"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[jwt_providers]]\nname = \"p\"\njwks_url = \"https://idp.example/k\"\nforward_claims = { sub = \"Content-Length\" }\n", "jwt_providers[0].forward_claims.sub"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[jwt_providers]]\nname = \"p\"\njwks_url = \"https://idp.example/k\"\njwks_refresh = \"0s\"\n", "jwt_providers[0].jwks_refresh"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\n[routes.split]\nname = \"s\"\ntargets = [{ name = \"a\", cluster = \"a\", weight = 100 }]\noverride = [{ client_ip = [\"10.0.0.1/8\"], target = \"a\" }]\n", "routes[0].split.override[0].client_ip[0]"),
        ("[[listeners]]\naddr = \"127.0.0.1:1\"\n[[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:1\" }]\n[[routes]]\n[routes.split]\nname = \"s\"\ntargets = [{ name = \"a\", cluster = \"a\", weight = 100 }]\noverride = [{ header = \"x\", target = \"a\" }]\n", "routes[0].split.override[0].value"),
        ("", "listeners"),
    ];
    for (text, path) in cases {
        let (ok, out) = check(text);
        assert!(!ok, "config should fail:\n{text}");
        assert!(
            out.contains(&format!("c.toml: {path}: ")),
            "error for {path} not reported as `file: path: message`:\n{out}"
        );
    }
}

#[test]
fn an_exposed_admin_api_needs_a_token() {
    let exposed = format!("{BASE}[admin]\naddr = \"0.0.0.0:9901\"\n");
    let (ok, out) = check(&exposed);
    assert!(!ok, "{out}");
    assert!(out.contains("admin.token is not set"), "{out}");
    let with_token = format!("{exposed}token = \"0123456789abcdef-secret\"\n");
    let (ok, out) = check(&with_token);
    assert!(ok, "{out}");
}

#[test]
fn all_errors_are_reported_together() {
    let text =
        "[server]\nworkers = 0\n[[listeners]]\naddr = \"bad\"\n[[routes]]\ncluster = \"none\"\n";
    let (ok, out) = check(text);
    assert!(!ok);
    for path in ["server.workers", "listeners[0].addr", "routes[0].cluster"] {
        assert!(out.contains(path), "missing {path} in:\n{out}");
    }
    assert!(out.contains("3 error(s)"), "{out}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = Command::new(lb_bin())
        .args(["check", "--config", "/nonexistent/lb.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

#[test]
fn consumer_keys_must_be_hashes() {
    let text = format!("{BASE}[[consumers]]\nname = \"a\"\nkey_sha256 = \"my-plain-secret\"\n");
    let (ok, out) = check(&text);
    assert!(!ok);
    assert!(
        out.contains("consumers[0].key_sha256: expected 64 hex digits"),
        "{out}"
    );
}

#[test]
fn routes_that_can_never_match_are_warned_about() {
    let text = format!("{BASE}[[routes]]\nname = \"again\"\ncluster = \"a\"\n");
    let (ok, out) = check(&text);
    assert!(ok, "a warning is not an error: {out}");
    assert!(
        out.contains("warning: routes[1] (again) can never match: routes[0]"),
        "{out}"
    );
}

#[test]
fn the_etcd_source_is_checked_before_anything_is_read_from_it() {
    let src = |etcd: &str| format!("{BASE}[source]\netcd = {etcd}\n");
    let cases = [
        (src("{ endpoints = [], prefix = \"/lb\" }"), "source.etcd.endpoints:"),
        (src("{ endpoints = [\"127.0.0.1:2379\"], prefix = \"/lb\" }"), "source.etcd.endpoints[0]: expected http://HOST:PORT"),
        (src("{ endpoints = [\"https://127.0.0.1:2379\"], prefix = \"/lb\" }"), "source.etcd.endpoints[0]: an https endpoint needs source.etcd.tls"),
        (src("{ endpoints = [\"http://127.0.0.1:2379\"], prefix = \"lb\" }"), "source.etcd.prefix: expected a key prefix"),
        (src("{ endpoints = [\"http://127.0.0.1:2379\"], prefix = \"/\" }"), "source.etcd.prefix: expected a key prefix"),
        (src("{ endpoints = [\"http://127.0.0.1:2379\"], prefix = \"/lb\", keepalive = \"0s\" }"), "source.etcd.keepalive: must be at least 1ms"),
        (src("{ endpoints = [\"http://127.0.0.1:2379\"], prefix = \"/lb\", auth = { user = \"lb\", password_file = \"/nonexistent/pw\" } }"), "source.etcd.auth.password_file: cannot read"),
        (src("{ endpoints = [\"https://127.0.0.1:2379\"], prefix = \"/lb\", tls = { ca = \"/nonexistent/ca.pem\", cert = \"c.pem\" } }"), "source.etcd.tls.ca: /nonexistent/ca.pem does not exist"),
        (src("{ endpoints = [\"http://127.0.0.1:2379\"], prefix = \"/lb\", bogus = 1 }"), "source.etcd.bogus"),
        (format!("{BASE}[source]\nstate_dir = \"/tmp\"\n"), "source.state_dir: only a config from etcd is persisted"),
        (src("{ endpoints = [\"http://127.0.0.1:2379\"], prefix = \"/lb\", lease = \"500ms\" }"), "source.etcd.lease: etcd leases count whole seconds"),
        (src("{ endpoints = [\"http://127.0.0.1:2379\"], prefix = \"/lb\", node = \"a b\" }"), "source.etcd.node: expected letters"),
        (format!("{BASE}[redis]\nurl = \"127.0.0.1:6379\"\n"), "redis.url: expected redis://HOST:PORT"),
        (format!("{BASE}[redis]\n"), "redis: set either url, or sentinels with master"),
        (format!("{BASE}[redis]\nsentinels = [\"redis://127.0.0.1:26379\"]\n"), "redis: set either url, or sentinels with master"),
        (format!("{BASE}[redis]\nurl = \"redis://127.0.0.1:6379\"\non_failure = \"maybe\"\n"), "redis.on_failure: expected \"fail_open\" or \"fail_closed\""),
        (format!("{BASE}[redis]\nurl = \"redis://127.0.0.1:6379\"\nsync_interval = \"0s\"\n"), "redis.sync_interval: must be at least 1ms"),
        ("[[listeners]]\naddr = \"127.0.0.1:8080\"\n[[routes]]\nrespond = { body = \"x\" }\nrate_limit = { key = \"client_ip\", scope = \"fleet\", limits = [{ requests = 1, per = \"1s\" }] }\n".to_string(), "routes[0].rate_limit.scope: a fleet-scoped rate limit needs [redis]"),
        ("[[listeners]]\naddr = \"127.0.0.1:8080\"\n[[routes]]\nrespond = { body = \"x\" }\nrate_limit = { key = \"client_ip\", scope = \"world\", limits = [{ requests = 1, per = \"1s\" }] }\n".to_string(), "routes[0].rate_limit.scope: expected \"local\" or \"fleet\""),
    ];
    for (text, want) in &cases {
        let (ok, out) = check(text);
        assert!(!ok, "{text} should fail");
        assert!(out.contains(want), "{text}: expected {want:?} in:\n{out}");
    }
}
