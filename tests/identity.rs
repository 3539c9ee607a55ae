//! Who the client is: trusted proxies' forwarding headers, the PROXY protocol (v1 and v2,
//! IPv4 and IPv6, plain and TLS), and `client_ip` matchers, checked through rate limits,
//! sticky splits, connection limits, routing, the backend's `X-Forwarded-For`, the access
//! log and `lb explain`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use lb::client::proxy_protocol;

/// Two echo clusters, "stable" and "canary", and `routes` after them.
fn two_clusters(extra: &str, routes: &str) -> (String, Backend, Backend) {
    let stable = Backend::start(echo("stable")).expect("backend");
    let canary = Backend::start(echo("canary")).expect("backend");
    let cfg = config(&format!(
        "{extra}\n[[clusters]]\nname = \"stable\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[clusters]]\nname = \"canary\"\nendpoints = [{{ addr = \"{}\" }}]\n{routes}",
        stable.addr, canary.addr
    ));
    (cfg, stable, canary)
}

/// The backend that answered.
fn backend(r: &Response) -> String {
    r.header("x-backend").unwrap_or("").to_string()
}

/// What the backend was sent as `X-Forwarded-For`.
fn xff_seen(r: &Response) -> String {
    r.json()["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

const LIMITED: &str = r#"
[[routes]]
path_prefix = "/limited"
cluster = "stable"
rate_limit = { key = "client_ip", limits = [{ requests = 2, per = "1m" }] }

[[routes]]
path_prefix = "/sticky"
[routes.split]
name = "s"
targets = [{ name = "stable", cluster = "stable", weight = 50 }, { name = "canary", cluster = "canary", weight = 50 }]
sticky = "client_ip"
salt = "t"
"#;

/// From a peer that is not a trusted proxy, a spoofed `X-Forwarded-For` changes nothing: the
/// rate limit and the sticky split key on the peer, and the backend is told the peer.
#[test]
fn forwarding_headers_from_an_untrusted_peer_are_not_believed() {
    let (cfg, _s, _c) = two_clusters("[http]\ntrusted_proxies = [\"10.0.0.0/8\"]\n", LIMITED);
    let lb = Lb::start(&cfg);
    let statuses: Vec<u16> = (0..3)
        .map(|i| {
            get_with(
                lb.addr,
                "/limited",
                &[("X-Forwarded-For", &format!("203.0.113.{i}"))],
            )
            .status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429], "the limit counts the peer");
    let r = get_with(lb.addr, "/sticky", &[("X-Forwarded-For", "203.0.113.1")]);
    assert_eq!(xff_seen(&r), "127.0.0.1");
    let first = backend(&r);
    for i in 0..40 {
        let r = get_with(
            lb.addr,
            "/sticky",
            &[("Forwarded", &format!("for=198.51.100.{i}"))],
        );
        assert_eq!(backend(&r), first, "one peer, one sticky target");
    }
}

/// From a trusted proxy, the rightmost untrusted hop is the client: for the rate limit, the
/// sticky split, the backend's `X-Forwarded-For` (one entry in `replace` mode, the chain and
/// the hop in `append` mode) and the access log.
#[test]
fn a_trusted_proxy_names_the_client() {
    let dir = scratch_dir("identity-log");
    let log = dir.join("access.log");
    let extra = format!(
        "[http]\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n[access_log]\npath = \"{}\"\n",
        log.display()
    );
    let (cfg, _s, _c) = two_clusters(&extra, LIMITED);
    let lb = Lb::start(&cfg);
    let get_from = |path: &str, xff: &str| get_with(lb.addr, path, &[("X-Forwarded-For", xff)]);
    // Each client has its own budget; the proxies in the chain do not count.
    assert_eq!(get_from("/limited", "203.0.113.1").status, 200);
    assert_eq!(get_from("/limited", "203.0.113.2, 10.0.0.7").status, 200);
    assert_eq!(get_from("/limited", "6.6.6.6, 203.0.113.3").status, 200);
    assert_eq!(get_from("/limited", "203.0.113.1").status, 200);
    assert_eq!(
        get_from("/limited", "9.9.9.9, 203.0.113.1, 10.1.1.1").status,
        429
    );
    let r = get_from("/sticky", "6.6.6.6, 203.0.113.9, 10.0.0.7");
    assert_eq!(xff_seen(&r), "203.0.113.9");
    // Forty clients split 50/50 by their address: both targets serve.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        seen.insert(backend(&get_from("/sticky", &format!("198.51.100.{i}"))));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    wait_until("the access log names the forwarded client", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"client\":\"203.0.113.9\""))
    });
    drop(lb);

    // `append`: the chain goes on with the hop lb saw, each field line as it came.
    let chain = Backend::start(std::sync::Arc::new(|req, res| {
        let lines: Vec<&str> = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|(_, v)| v.as_str())
            .collect();
        res.send(200, &[], lines.join(" | ").as_bytes());
    }))
    .expect("backend");
    let cfg = config(&format!(
        "[http]\ntrusted_proxies = [\"127.0.0.1\"]\nclient_address_headers = \"append\"\n\
         [[clusters]]\nname = \"chain\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[routes]]\ncluster = \"chain\"\n",
        chain.addr
    ));
    let lb = Lb::start(&cfg);
    let r = get_with(lb.addr, "/", &[("X-Forwarded-For", "6.6.6.6, 203.0.113.9")]);
    assert_eq!(
        String::from_utf8_lossy(&r.body),
        "6.6.6.6, 203.0.113.9 | 127.0.0.1"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Routes and split targeting match on the client's prefix.
#[test]
fn client_ip_routes_and_targets_a_split() {
    let routes = r#"
[[routes]]
name = "office"
path_prefix = "/app"
client_ip = ["203.0.113.0/24", "2001:db8::/32"]
cluster = "canary"

[[routes]]
name = "everyone"
path_prefix = "/app"
cluster = "stable"

[[routes]]
path_prefix = "/rollout"
[routes.split]
name = "office-first"
targets = [{ name = "stable", cluster = "stable", weight = 0 }, { name = "canary", cluster = "canary", weight = 100 }]
default_target = "stable"
include = [{ client_ip = ["203.0.113.0/24"] }]
exclude = [{ client_ip = ["203.0.113.66"] }]

[[routes]]
path_prefix = "/forced"
[routes.split]
name = "office-override"
targets = [{ name = "stable", cluster = "stable", weight = 100 }, { name = "canary", cluster = "canary", weight = 0 }]
override = [{ client_ip = ["198.51.100.0/24"], target = "canary" }]
"#;
    let (cfg, _s, _c) = two_clusters("[http]\ntrusted_proxies = [\"127.0.0.1\"]\n", routes);
    let lb = Lb::start(&cfg);
    let from =
        |path: &str, who: &str| backend(&get_with(lb.addr, path, &[("X-Forwarded-For", who)]));
    assert_eq!(from("/app", "203.0.113.10"), "canary");
    assert_eq!(from("/app", "2001:db8:5::1"), "canary");
    assert_eq!(from("/app", "198.51.100.10"), "stable");
    // Without a forwarding header the client is the peer, 127.0.0.1.
    assert_eq!(backend(&get(lb.addr, "/app")), "stable");
    assert_eq!(from("/rollout", "203.0.113.10"), "canary");
    assert_eq!(from("/rollout", "203.0.113.66"), "stable", "excluded");
    assert_eq!(from("/rollout", "198.51.100.10"), "stable", "not included");
    assert_eq!(
        from("/forced", "198.51.100.10"),
        "canary",
        "overridden by address"
    );
    assert_eq!(from("/forced", "203.0.113.10"), "stable");
}

/// One request over a new connection that starts with `preamble` (sent in pieces of
/// `piece` bytes); returns the response.
fn request_after(addr: SocketAddr, preamble: &[u8], piece: usize, path: &str) -> Response {
    let mut c = Client::connect(addr);
    for chunk in preamble.chunks(piece) {
        c.send(chunk);
        if piece < preamble.len() {
            // Separate segments, so that the header arrives over several reads.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    c.response()
}

fn proxy_listener_config(extra: &str) -> (String, Backend, Backend) {
    let routes = "[[routes]]\npath_prefix = \"/\"\ncluster = \"stable\"\n\
                  rate_limit = { key = \"client_ip\", limits = [{ requests = 1, per = \"1m\" }] }\n";
    let (cfg, s, c) = two_clusters(extra, routes);
    (
        cfg.replacen(
            "name = \"http\"\naddr = \"127.0.0.1:0\"\n",
            "name = \"http\"\naddr = \"127.0.0.1:0\"\nproxy_protocol = true\n",
            1,
        ),
        s,
        c,
    )
}

/// PROXY protocol v1 and v2, IPv4 and IPv6, whole or split over reads: the header's source
/// is the client for the backend and the rate limit; a v2 LOCAL header (a balancer's health
/// check) leaves the peer.
#[test]
fn proxy_protocol_headers_name_the_client() {
    let (cfg, _s, _c) = proxy_listener_config("");
    let lb = Lb::start(&cfg);
    let dest = lb.addr;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            proxy_protocol::v1("192.0.2.1:5000".parse().unwrap(), dest),
            "192.0.2.1",
        ),
        (
            proxy_protocol::v1(
                "[2001:db8::1]:5000".parse().unwrap(),
                "[::1]:80".parse().unwrap(),
            ),
            "2001:db8::1",
        ),
        (
            proxy_protocol::v2("192.0.2.2:5000".parse().unwrap(), dest, 30),
            "192.0.2.2",
        ),
        (
            proxy_protocol::v2(
                "[2001:db8::2]:5000".parse().unwrap(),
                "[::1]:80".parse().unwrap(),
                0,
            ),
            "2001:db8::2",
        ),
    ];
    for (i, (header, who)) in cases.iter().enumerate() {
        let piece = if i % 2 == 0 { header.len() } else { 7 };
        let r = request_after(lb.addr, header, piece, "/");
        assert_eq!(r.status, 200, "{who}");
        assert_eq!(xff_seen(&r), *who);
        // The limit of one per client: the same source again is refused, whatever the
        // connection's real peer.
        assert_eq!(
            request_after(lb.addr, header, header.len(), "/").status,
            429,
            "{who}"
        );
    }
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let r = request_after(lb.addr, &local, local.len(), "/");
    assert_eq!((r.status, xff_seen(&r)), (200, "127.0.0.1".to_string()));
}

/// A connection without a valid PROXY header is closed without an answer, and counted.
#[test]
fn connections_without_a_valid_proxy_header_are_closed() {
    let (cfg, _s, _c) = proxy_listener_config("");
    let lb = Lb::start(&cfg);
    let bad: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        b"PROXY TCP4 192.0.2.1 nonsense 1 2\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0cxxxxxxxxxxxx",
    ];
    for bytes in bad {
        let mut c = Client::connect(lb.addr);
        c.send(bytes);
        assert!(
            c.closed_by_peer(),
            "closed without an answer: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let refused = metric(
        &lb.scrape(),
        "lb_connections_refused_total",
        &[("reason", "proxy_protocol")],
    );
    assert_eq!(refused, 3.0);
    // A good header still works afterwards.
    let header = proxy_protocol::v1("192.0.2.50:1".parse().unwrap(), lb.addr);
    assert_eq!(
        request_after(lb.addr, &header, header.len(), "/").status,
        200
    );
}

/// Per-IP connection limits count the PROXY header's client, not the balancer in front.
#[test]
fn connection_limits_count_the_proxied_client() {
    let (cfg, _s, _c) = proxy_listener_config("[http]\nmax_connections_per_ip = 1\n");
    let lb = Lb::start(&cfg);
    let held_header = proxy_protocol::v2("192.0.2.7:1".parse().unwrap(), lb.addr, 0);
    let mut held = Client::connect(lb.addr);
    held.send(&held_header);
    held.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(held.response().status, 200);
    // The same client on a second connection is over its limit.
    let mut again = Client::connect(lb.addr);
    again.send(&held_header);
    again.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(again.response().status, 429);
    // Another client behind the same balancer (the same peer, 127.0.0.1) is not.
    let other = proxy_protocol::v2("192.0.2.8:1".parse().unwrap(), lb.addr, 0);
    assert_eq!(request_after(lb.addr, &other, other.len(), "/").status, 200);
    drop(held);
}

/// On a TLS listener the PROXY header comes before the handshake, and what followed it in
/// the same read is the start of the handshake.
#[test]
fn proxy_protocol_before_tls() {
    let dir = scratch_dir("pp-tls");
    write_ca_and_cert(&dir, "Test CA", &["pp.test"]);
    let (cfg, _s, _c) = proxy_listener_config("");
    let cfg = cfg.replacen(
        "proxy_protocol = true\n",
        &format!(
            "proxy_protocol = true\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
        1,
    );
    let lb = Lb::start(&cfg);
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_file(dir.join("ca.pem")).expect("ca"))
        .expect("root");
    let client = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let name = rustls_pki_types::ServerName::try_from("pp.test").expect("name");
    let mut conn = rustls::ClientConnection::new(client, name).expect("client");
    let mut tcp = TcpStream::connect(lb.addr).expect("tcp");
    tcp.set_read_timeout(Some(BOUND)).expect("timeout");
    // The header and the ClientHello in one write.
    let mut first = proxy_protocol::v2("[2001:db8::77]:9".parse().unwrap(), lb.addr, 0);
    conn.write_tls(&mut first).expect("client hello");
    tcp.write_all(&first).expect("send");
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: pp.test\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("\"x-forwarded-for\": \"2001:db8::77\""),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `lb explain` says which client address it used and why.
#[test]
fn explain_shows_the_client_and_why() {
    let dir = scratch_dir("explain-client");
    let path = dir.join("lb.toml");
    std::fs::write(
        &path,
        "[[listeners]]\naddr = \"127.0.0.1:8080\"\n[http]\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
         [[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:9\" }]\n\
         [[clusters]]\nname = \"eu\"\nendpoints = [{ addr = \"127.0.0.1:9\" }]\n\
         [[routes]]\nname = \"office\"\nclient_ip = [\"203.0.113.0/24\"]\ncluster = \"eu\"\n\
         [[routes]]\nname = \"all\"\ncluster = \"a\"\n",
    )
    .expect("write");
    let explain = |client: &str| {
        let out = std::process::Command::new(lb_bin())
            .args(["explain", "--config"])
            .arg(&path)
            .args([
                "--client",
                client,
                "--header",
                "X-Forwarded-For: 203.0.113.7",
                "GET",
                "http://x/",
            ])
            .output()
            .expect("lb explain");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = explain("10.0.0.1:5000");
    assert!(
        text.contains("client: 203.0.113.7 (the rightmost hop of x-forwarded-for"),
        "{text}"
    );
    assert!(
        text.contains("MATCHED") && text.contains("cluster: eu"),
        "{text}"
    );
    let text = explain("192.0.2.1:5000");
    assert!(
        text.contains("client: 192.0.2.1 (the peer, which is not in trusted_proxies"),
        "{text}"
    );
    assert!(
        text.contains("client 192.0.2.1 is not in 203.0.113.0/24"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A country database: documentation networks in Germany, the US and France.
fn geo_db(path: &std::path::Path, extra: &[(&str, u8, &str, &str)]) {
    let mut entries: Vec<(std::net::IpAddr, u8, &str, &str)> = vec![
        ("203.0.113.0".parse().unwrap(), 24, "DE", "EU"),
        ("198.51.100.0".parse().unwrap(), 24, "US", "NA"),
        ("2001:db8:e0::".parse().unwrap(), 48, "FR", "EU"),
    ];
    entries.extend(
        extra
            .iter()
            .map(|(ip, len, c, k)| (ip.parse().unwrap(), *len, *c, *k)),
    );
    // Written aside and renamed: a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, lb::client::geo::write::country_db(&entries)).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

const GEO_ROUTES: &str = r#"
[[routes]]
name = "eu"
path_prefix = "/app"
continent = "EU"
cluster = "canary"

[[routes]]
name = "rest"
path_prefix = "/app"
cluster = "stable"

[[routes]]
path_prefix = "/rollout"
[routes.split]
name = "germany-first"
targets = [{ name = "stable", cluster = "stable", weight = 0 }, { name = "canary", cluster = "canary", weight = 100 }]
default_target = "stable"
include = [{ country = ["de"] }]

[[routes]]
path_prefix = "/limited"
cluster = "stable"
rate_limit = { key = "country", limits = [{ requests = 1, per = "1m" }] }

[[routes]]
path_prefix = "/forced"
[routes.split]
name = "us-override"
targets = [{ name = "stable", cluster = "stable", weight = 100 }, { name = "canary", cluster = "canary", weight = 0 }]
override = [{ country = ["US"], target = "canary" }]

[[routes]]
path_prefix = "/by-country"
[routes.split]
name = "by-country"
targets = [{ name = "stable", cluster = "stable", weight = 50 }, { name = "canary", cluster = "canary", weight = 50 }]
sticky = "country"
salt = "s"
"#;

/// Country and continent of the real client route, target and limit requests, reach the
/// backend in a header a client cannot forge, and are logged; unknown addresses get the
/// default and are counted.
#[test]
fn the_client_country_routes_targets_and_limits() {
    let dir = scratch_dir("geo");
    let db = dir.join("country.mmdb");
    geo_db(&db, &[]);
    let log = dir.join("access.log");
    let extra = format!(
        "[http]\ntrusted_proxies = [\"127.0.0.1\"]\n[geoip]\ndatabase = \"{}\"\nheader = \"X-Client-Country\"\n\
         [access_log]\npath = \"{}\"\n",
        db.display(),
        log.display()
    );
    let (cfg, _s, _c) = two_clusters(&extra, GEO_ROUTES);
    let lb = Lb::start(&cfg);
    let from = |path: &str, who: &str| {
        get_with(
            lb.addr,
            path,
            &[("X-Forwarded-For", who), ("X-Client-Country", "DE")],
        )
    };
    // Which backend, and the country it was told; not in the database: the default, not
    // what the client claimed.
    for (who, want_backend, want_country) in [
        ("203.0.113.9", "canary", "DE"),
        ("2001:db8:e0::7", "canary", "FR"),
        ("198.51.100.9", "stable", "US"),
        ("192.0.2.1", "stable", "ZZ"),
    ] {
        let r = from("/app", who);
        let told = r.json()["headers"]["x-client-country"].clone();
        assert_eq!(
            (backend(&r).as_str(), told.as_str()),
            (want_backend, Some(want_country)),
            "{who}"
        );
    }
    assert!(
        metric(
            &lb.scrape(),
            "lb_geoip_lookups_total",
            &[("result", "not_found")]
        ) >= 1.0
    );
    assert_eq!(backend(&from("/rollout", "203.0.113.1")), "canary");
    assert_eq!(backend(&from("/rollout", "198.51.100.1")), "stable");
    let limited: Vec<u16> = ["203.0.113.1", "203.0.113.2", "198.51.100.1"]
        .iter()
        .map(|w| from("/limited", w).status)
        .collect();
    assert_eq!(limited, [200, 429, 200], "one a minute per country");
    assert_eq!(
        backend(&from("/forced", "198.51.100.7")),
        "canary",
        "overridden by country"
    );
    assert_eq!(backend(&from("/forced", "203.0.113.7")), "stable");
    let german: Vec<String> = (1..=12)
        .map(|i| backend(&from("/by-country", &format!("203.0.113.{i}"))))
        .collect();
    assert!(
        german.iter().all(|b| *b == german[0]),
        "one country, one target: {german:?}"
    );
    wait_until("the access log has the country", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"country\":\"FR\""))
    });
    let out = std::process::Command::new(lb_bin())
        .args(["explain", "--config"])
        .arg(&lb.config_path)
        .args([
            "--client",
            "127.0.0.1:5",
            "-H",
            "X-Forwarded-For: 203.0.113.9",
            "GET",
            "http://x/app",
        ])
        .output()
        .expect("lb explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("country: DE (continent EU, from the database)"),
        "{text}"
    );
    assert!(
        text.contains("[0] eu") && text.contains("MATCHED"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A replaced database is picked up without a reload command; a broken one is refused and
/// the running one stays.
#[test]
fn the_geo_database_swaps_live_and_a_bad_one_is_refused() {
    let dir = scratch_dir("geo-swap");
    let db = dir.join("country.mmdb");
    geo_db(&db, &[]);
    let extra = format!(
        "[http]\ntrusted_proxies = [\"127.0.0.1\"]\n[geoip]\ndatabase = \"{}\"\nheader = \"X-Client-Country\"\ndefault_country = \"XX\"\n",
        db.display()
    );
    let (cfg, _s, _c) = two_clusters(&extra, GEO_ROUTES);
    let lb = Lb::start(&cfg);
    let country = || {
        get_with(lb.addr, "/app", &[("X-Forwarded-For", "192.0.2.1")]).json()["headers"]
            ["x-client-country"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(country(), "XX");
    geo_db(&db, &[("192.0.2.0", 24, "JP", "AS")]);
    wait_until("the new database is in use", || country() == "JP");
    std::fs::write(dir.join("bad.tmp"), b"not a database").expect("write");
    std::fs::rename(dir.join("bad.tmp"), &db).expect("rename");
    wait_until("the broken database is refused", || {
        lb.log().contains("geoip.database") && lb.log().contains("not a MaxMind DB file")
    });
    assert_eq!(country(), "JP", "the running database stays");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PROXY protocol header that does not come within the head timeout: the connection is
/// closed.
#[test]
fn a_proxy_header_that_never_comes_is_cut_at_the_head_timeout() {
    let (cfg, _s, _c) = proxy_listener_config("");
    let cfg = cfg.replacen(
        "[[clusters]]",
        "[http]\nclient_header_timeout = \"1s\"\n[[clusters]]",
        1,
    );
    let lb = Lb::start(&cfg);
    let started = std::time::Instant::now();
    let mut c = Client::connect(lb.addr);
    c.send(b"PROXY TCP4 192.0.2.1");
    assert!(c.closed_by_peer(), "closed without an answer");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before the timeout"
    );
    assert_eq!(
        metric(
            &lb.scrape(),
            "lb_connections_refused_total",
            &[("reason", "proxy_protocol")]
        ),
        1.0
    );
}
