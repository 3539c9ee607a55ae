//! TLS termination with real clients: curl over HTTPS, and a rustls client that checks which
//! certificate SNI selected. Certificates come from a test CA made at the start (rcgen).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// A CA and leaf certificates for `names` (one certificate per entry, each with its SANs),
/// written as PEM files into `dir`: `ca.pem`, `leafN.pem`, `leafN.key`.
fn make_certs(dir: &Path, names: &[&[&str]]) -> Vec<CertificateDer<'static>> {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("lb test CA {}", dir.display()),
    );
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
    let mut leaves = Vec::new();
    for (i, sans) in names.iter().enumerate() {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, sans[0]);
        let cert = params.signed_by(&key, &ca).expect("leaf");
        std::fs::write(dir.join(format!("leaf{i}.pem")), cert.pem()).expect("write cert");
        std::fs::write(dir.join(format!("leaf{i}.key")), key.serialize_pem()).expect("write key");
        leaves.push(cert.der().clone());
    }
    leaves
}

fn tls_config(dir: &Path, backend: std::net::SocketAddr, certs: usize) -> String {
    let entries: Vec<String> = (0..certs)
        .map(|i| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                dir.join(format!("leaf{i}.pem")).display(),
                dir.join(format!("leaf{i}.key")).display()
            )
        })
        .collect();
    config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{backend}\" }}]\n[[routes]]\ncluster = \"app\"\n"
    ))
    .replace(
        "name = \"http\"\naddr = \"127.0.0.1:0\"",
        &format!(
            "name = \"https\"\naddr = \"127.0.0.1:0\"\ntls = {{ certificates = [{}] }}",
            entries.join(", ")
        ),
    )
}

fn curl() -> bool {
    let ok = Command::new("curl").arg("--version").output().is_ok();
    if !ok {
        skip(
            "tls curl",
            "curl is not installed; `cargo xtask test` installs it",
        );
    }
    ok
}

/// HTTPS end to end with curl: the backend learns the request came over TLS, a body goes
/// both ways intact, and one TLS connection carries several requests.
#[test]
fn curl_gets_https_through_lb() {
    if !curl() {
        return;
    }
    let dir = scratch_dir("tls");
    make_certs(&dir, &[&["a.test"]]);
    let backend = Backend::start(Arc::new(|req, res| {
        let proto = req.header("x-forwarded-proto").unwrap_or("").to_string();
        let body = format!(
            "{} {} {} {:x}",
            req.path, proto, req.body_len, req.body_hash
        );
        res.send(200, &[], body.as_bytes());
    }))
    .expect("backend");
    let lb = Lb::start(&tls_config(&dir, backend.addr, 1));
    let port = lb.addr.port();
    let upload = dir.join("upload.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&upload, &data).expect("upload file");
    let out = Command::new("curl")
        .args(["-sS", "--http1.1", "--cacert"])
        .arg(dir.join("ca.pem"))
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1")])
        .arg(format!("https://a.test:{port}/one"))
        .arg(format!("https://a.test:{port}/two"))
        .args(["--data-binary"])
        .arg(format!("@{}", upload.display()))
        .args(["-w", "\n%{num_connects}\n"])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = {
        let mut h = lb::hash::FNV_OFFSET;
        h = lb::hash::fnv1a(h, &data);
        format!("{h:x}")
    };
    assert!(
        text.contains(&format!("/one https 300000 {hash}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("/two https 300000 {hash}")),
        "{text}"
    );
    // The second request reused the first one's TLS connection.
    let connects: Vec<&str> = text.lines().filter(|l| l.len() == 1).collect();
    assert_eq!(connects, ["1", "0"], "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The certificate a client gets follows its SNI name; without SNI it gets the first.
#[test]
fn sni_picks_the_certificate() {
    let dir = scratch_dir("sni");
    let leaves = make_certs(&dir, &[&["a.test"], &["b.test", "*.wild.test"]]);
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&tls_config(&dir, backend.addr, 2));
    let client = client_trusting(&dir);
    for (name, want) in [("a.test", 0), ("b.test", 1), ("x.wild.test", 1)] {
        let (answer, _, cert) = tls_request(&client, lb.addr, name, "/", "");
        assert!(answer.starts_with("HTTP/1.1 200"), "{name}: {answer}");
        assert_eq!(
            cert.as_ref(),
            Some(&leaves[want]),
            "{name} got the wrong certificate"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A key that does not belong to its certificate fails the check, naming both files.
#[test]
fn a_mismatched_key_is_refused_naming_the_files() {
    let dir = scratch_dir("badkey");
    make_certs(&dir, &[&["a.test"], &["b.test"]]);
    let backend = Backend::start(echo("b")).expect("backend");
    let text = tls_config(&dir, backend.addr, 1).replace("leaf0.key", "leaf1.key");
    let path = dir.join("lb.toml");
    std::fs::write(&path, text).expect("config");
    let out = Command::new(lb_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("lb check");
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("listeners[0].tls.certificates")
            && err.contains("leaf1.key")
            && err.contains("does not fit"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The admin API lists the certificates in service; the metrics count handshakes (a second
/// connection resumes with a ticket) and tell how long each certificate has left.
#[test]
fn certificates_handshakes_and_resumption_are_visible() {
    let dir = scratch_dir("tls-observe");
    let leaves = make_certs(&dir, &[&["a.test"]]);
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&tls_config(&dir, backend.addr, 1));
    let (status, body) = lb.admin("GET", "/certificates");
    assert_eq!(status, 200);
    let certs = body["certificates"].as_array().cloned().unwrap_or_default();
    assert_eq!(certs.len(), 1, "{body}");
    assert_eq!(certs[0]["names"], serde_json::json!(["a.test"]));
    assert_eq!(certs[0]["key_type"], "ECDSA");
    assert!(
        certs[0]["issuer"]
            .as_str()
            .unwrap_or("")
            .contains("lb test CA"),
        "{body}"
    );
    let sha = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(leaves[0].as_ref());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert_eq!(certs[0]["sha256"], sha.as_str());

    let client = client_trusting(&dir);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (answer, kind, _) = tls_request(&client, lb.addr, "a.test", "/", "");
        assert!(answer.starts_with("HTTP/1.1 200"));
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed)
        ],
        "the second connection resumes"
    );
    wait_until("both handshakes to be counted", || {
        let s = lb.scrape();
        metric(
            &s,
            "lb_tls_handshakes_total",
            &[("result", "ok"), ("version", "1.3"), ("resumed", "false")],
        ) == 1.0
            && metric(
                &s,
                "lb_tls_handshakes_total",
                &[("result", "ok"), ("resumed", "true")],
            ) == 1.0
    });
    let s = lb.scrape();
    let left = metric(
        &s,
        "lb_tls_certificate_expiry_seconds",
        &[("certificate", "a.test")],
    );
    assert!(left > 86_400.0 * 365.0, "{left}");
    assert!(metric(&s, "lb_tls_handshake_duration_seconds_count", &[]) >= 2.0);
    // A plain-text client on the TLS port is a failed handshake, counted as such.
    let mut raw = TcpStream::connect(lb.addr).expect("tcp");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .expect("plain");
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    wait_until("the failed handshake to be counted", || {
        metric(
            &lb.scrape(),
            "lb_tls_handshakes_total",
            &[("result", "error")],
        ) == 1.0
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// `lb check` warns about a certificate that has expired (or expires within 14 days).
#[test]
fn lb_check_warns_about_expiring_certificates() {
    let dir = scratch_dir("tls-expired");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["old.test".to_string()]).expect("params");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).expect("cert");
    std::fs::write(dir.join("leaf0.pem"), cert.pem()).expect("cert file");
    std::fs::write(dir.join("leaf0.key"), key.serialize_pem()).expect("key file");
    let backend = Backend::start(echo("b")).expect("backend");
    let path = dir.join("lb.toml");
    std::fs::write(&path, tls_config(&dir, backend.addr, 1)).expect("config");
    let out = Command::new(lb_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("lb check");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a warning, not an error: {text}");
    assert!(
        text.contains("warning") && text.contains("old.test") && text.contains("has expired"),
        "{text}"
    );
    // A route host that no certificate covers is worth a warning too.
    let with_host = tls_config(&dir, backend.addr, 1).replace(
        "[[routes]]\ncluster = \"app\"\n",
        "[[routes]]\nname = \"shop\"\nhost = \"shop.test\"\ncluster = \"app\"\n\
         [[routes]]\nname = \"old\"\nhost = \"old.test\"\ncluster = \"app\"\n",
    );
    std::fs::write(&path, with_host).expect("config");
    let out = Command::new(lb_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("lb check");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("host shop.test is covered by no certificate"),
        "{text}"
    );
    assert!(!text.contains("host old.test is covered"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS request over `client` with SNI `name` and `Host: host`; returns the answer.
fn tls_get(
    client: &Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    name: &str,
    host: &str,
) -> String {
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).expect("name");
    let conn = rustls::ClientConnection::new(client.clone(), server_name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).expect("tcp"));
    let _ = tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn client_trusting(dir: &Path) -> Arc<rustls::ClientConfig> {
    client_config(&[dir], None)
}

/// A rustls client trusting the `ca.pem` of each of `dirs`, presenting `identity` if given.
fn client_config(
    dirs: &[&Path],
    identity: Option<(
        Vec<CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for d in dirs {
        roots
            .add(CertificateDer::from_pem_file(d.join("ca.pem")).expect("ca pem"))
            .expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    Arc::new(match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    })
}

/// One `GET path` over a fresh TLS connection with SNI `name` (and `extra` header lines);
/// returns the answer and how the handshake went.
fn tls_request(
    client: &Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    name: &str,
    path: &str,
    extra: &str,
) -> (
    String,
    Option<rustls::HandshakeKind>,
    Option<CertificateDer<'static>>,
) {
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).expect("name");
    let conn = rustls::ClientConnection::new(client.clone(), server_name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(addr).expect("tcp"));
    let _ = tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {name}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    );
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let cert = tls
        .conn
        .peer_certificates()
        .map(|c| c[0].clone().into_owned());
    (
        String::from_utf8_lossy(&answer).into_owned(),
        tls.conn.handshake_kind(),
        cert,
    )
}

/// Routes can match on the SNI name; a route with `sni` never matches plain-text requests.
#[test]
fn routes_match_on_sni() {
    let dir = scratch_dir("sni-route");
    make_certs(&dir, &[&["a.test", "b.test"]]);
    let a = Backend::start(echo("A")).expect("backend");
    let b = Backend::start(echo("B")).expect("backend");
    let text = tls_config(&dir, a.addr, 1).replace(
        "[[routes]]\ncluster = \"app\"\n",
        &format!(
            "[[clusters]]\nname = \"bee\"\nendpoints = [{{ addr = \"{}\" }}]\n\
             [[routes]]\nname = \"by-sni\"\nsni = \"b.test\"\ncluster = \"bee\"\n\
             [[routes]]\nname = \"rest\"\ncluster = \"app\"\n",
            b.addr
        ),
    );
    let lb = Lb::start(&text);
    let client = client_trusting(&dir);
    // The Host header says a.test; the SNI name decides.
    assert!(tls_get(&client, lb.addr, "b.test", "a.test").contains("\"backend\": \"B\""));
    assert!(tls_get(&client, lb.addr, "a.test", "b.test").contains("\"backend\": \"A\""));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plain-text listener can send everything to HTTPS with one setting.
#[test]
fn a_plain_listener_redirects_to_https() {
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(
        &config(&format!(
            "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}]\n[[routes]]\ncluster = \"app\"\n",
            backend.addr
        ))
        .replace(
            "name = \"http\"\naddr = \"127.0.0.1:0\"",
            "name = \"http\"\naddr = \"127.0.0.1:0\"\nredirect_to_https = 8443",
        ),
    );
    let r = get_with(lb.addr, "/x/../y?q=1", &[]);
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://test:8443/x/../y?q=1"));
    assert_eq!(backend.requests(), 0);
}

/// The certificate a client gets, over a fresh TLS connection with SNI `name`.
fn served_cert(
    client: &Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    name: &str,
) -> Option<CertificateDer<'static>> {
    // A full handshake every time: a resumed session shows the certificate it began with.
    let mut fresh = (**client).clone();
    fresh.resumption = rustls::client::Resumption::disabled();
    tls_request(&Arc::new(fresh), addr, name, "/", "").2
}

/// Renewed certificate files are picked up without a signal; a broken file is refused and
/// the running certificate stays in service.
#[test]
fn renewed_files_are_picked_up_and_broken_ones_refused() {
    let dir = scratch_dir("tls-renew");
    let v1 = make_certs(&dir, &[&["a.test"]]);
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&tls_config(&dir, backend.addr, 1));
    let client = client_trusting(&dir);
    assert_eq!(served_cert(&client, lb.addr, "a.test"), Some(v1[0].clone()));
    // Renewal: a new CA too, so the client must trust both for the check below.
    let renewed = scratch_dir("tls-renew-new");
    let v2 = make_certs(&renewed, &[&["a.test"]]);
    let both = client_config(&[&dir, &renewed], None);
    for f in ["leaf0.key", "leaf0.pem"] {
        std::fs::copy(renewed.join(f), dir.join(format!("{f}.new"))).expect("copy");
        std::fs::rename(dir.join(format!("{f}.new")), dir.join(f)).expect("rename");
    }
    wait_until("the renewed certificate to be served", || {
        served_cert(&both, lb.addr, "a.test") == Some(v2[0].clone())
    });
    // Rotation under load: clients making new connections throughout, none fails; once
    // the new certificate is in service every new connection gets it.
    let rotated = scratch_dir("tls-renew-3");
    let v3 = make_certs(&rotated, &[&["a.test"]]);
    let all = client_config(&[&dir, &renewed, &rotated], None);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, client, addr) = (stop.clone(), all.clone(), lb.addr);
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && ok < 20_000 {
                    let (answer, _, _) = tls_request(&client, addr, "a.test", "/", "");
                    if answer.starts_with("HTTP/1.1 200") {
                        ok += 1;
                    } else {
                        failed.push(answer);
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    wait_until("load to start", || {
        metric(&lb.scrape(), "lb_tls_handshakes_total", &[("result", "ok")]) > 20.0
    });
    for f in ["leaf0.key", "leaf0.pem"] {
        std::fs::copy(rotated.join(f), dir.join(format!("{f}.new"))).expect("copy");
        std::fs::rename(dir.join(format!("{f}.new")), dir.join(f)).expect("rename");
    }
    wait_until("the third certificate under load", || {
        served_cert(&all, lb.addr, "a.test") == Some(v3[0].clone())
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for t in load {
        let (ok, failed) = t.join().expect("load thread");
        total += ok;
        assert!(
            failed.is_empty(),
            "requests failed during rotation: {failed:?}"
        );
    }
    assert!(total > 20, "the load ran: {total}");
    // Back to the renewed certificate for the broken-file check below.
    for f in ["leaf0.key", "leaf0.pem"] {
        std::fs::copy(renewed.join(f), dir.join(format!("{f}.new"))).expect("copy");
        std::fs::rename(dir.join(format!("{f}.new")), dir.join(f)).expect("rename");
    }
    wait_until("the renewed certificate again", || {
        served_cert(&both, lb.addr, "a.test") == Some(v2[0].clone())
    });
    std::fs::write(dir.join("leaf0.pem"), "not a certificate").expect("break");
    wait_until("the broken file to be refused", || {
        lb.log().contains("the running certificates stay")
    });
    assert_eq!(served_cert(&both, lb.addr, "a.test"), Some(v2[0].clone()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&renewed);
    let _ = std::fs::remove_dir_all(&rotated);
}

/// A client CA and one client certificate issued by it, as rustls client auth material.
fn client_identity(
    dir: &Path,
    cn: &str,
) -> (
    Vec<CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "clients CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    std::fs::write(dir.join("clients-ca.pem"), ca.pem()).expect("write");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec![format!("{cn}.clients.test")]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.signed_by(&key, &ca).expect("cert");
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    (vec![cert.der().clone()], der)
}

/// mTLS: a verified client certificate reaches the backend in a header a client cannot
/// forge, routes can require it or match its subject, and `required` refuses clients
/// without one.
#[test]
fn client_certificates_are_verified_routed_on_and_passed_on() {
    let dir = scratch_dir("mtls");
    make_certs(&dir, &[&["a.test"]]);
    let (chain, key) = client_identity(&dir, "client-1");
    let a = Backend::start(echo("A")).expect("backend");
    let b = Backend::start(echo("B")).expect("backend");
    let base = tls_config(&dir, a.addr, 1);
    let text = base
        .replace(
            "] }",
            &format!(
                "], client_auth = {{ ca = \"{}\", mode = \"optional\" }} }}",
                dir.join("clients-ca.pem").display()
            ),
        )
        .replace(
            "[[routes]]\ncluster = \"app\"\n",
            &format!(
                "[[clusters]]\nname = \"bee\"\nendpoints = [{{ addr = \"{}\" }}]\n\
                 [[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nclient_cert_subject = \"CN=client-1\"\ncluster = \"bee\"\n\
                 [[routes]]\nname = \"admin-deny\"\npath_prefix = \"/admin\"\nrespond = {{ status = 403, body = \"no\" }}\n\
                 [[routes]]\nname = \"rest\"\ncluster = \"app\"\n",
                b.addr
            ),
        );
    let lb = Lb::start(&text);
    let anonymous = client_trusting(&dir);
    let with_cert = client_config(&[&dir], Some((chain, key)));
    let forged = "X-Forwarded-Client-Cert: Subject=\"CN=forged\"\r\n";
    let get = |client: &Arc<rustls::ClientConfig>, path: &str| {
        tls_request(client, lb.addr, "a.test", path, forged).0
    };
    let r = get(&anonymous, "/admin/x");
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let r = get(&anonymous, "/other");
    assert!(
        r.contains("\"backend\": \"A\"") && !r.contains("forged"),
        "{r}"
    );
    assert!(!r.contains("x-forwarded-client-cert"), "{r}");
    let r = get(&with_cert, "/admin/x");
    assert!(r.contains("\"backend\": \"B\""), "{r}");
    assert!(
        r.contains("Subject=\\\"CN=client-1\\\"") && !r.contains("forged"),
        "{r}"
    );
    assert!(
        r.contains("DNS=\\\"client-1.clients.test\\\"") && r.contains("Hash="),
        "{r}"
    );

    // Required: a client without a certificate does not get through the handshake.
    let required = text.replace("mode = \"optional\"", "mode = \"required\"");
    std::fs::write(&lb.config_path, required).expect("config");
    assert_eq!(lb.admin("POST", "/reload").0, 200);
    assert!(!get(&anonymous, "/other").starts_with("HTTP/1.1 200"));
    assert!(get(&with_cert, "/other").starts_with("HTTP/1.1 200"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// With tickets and the session cache turned off, nothing resumes.
#[test]
fn resumption_can_be_turned_off() {
    let dir = scratch_dir("tls-noresume");
    make_certs(&dir, &[&["a.test"]]);
    let backend = Backend::start(echo("b")).expect("backend");
    let text =
        tls_config(&dir, backend.addr, 1).replace("] }", "], tickets = false, session_cache = 0 }");
    let lb = Lb::start(&text);
    let client = client_trusting(&dir);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (answer, kind, _) = tls_request(&client, lb.addr, "a.test", "/", "");
        assert!(answer.starts_with("HTTP/1.1 200"));
        kinds.push(kind);
    }
    assert_eq!(kinds, [Some(rustls::HandshakeKind::Full); 2]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An idle TLS keep-alive connection parks (its task ends, the session waits with the
/// socket) and resumes with its session when the next request comes.
#[test]
fn idle_tls_connections_park_and_resume() {
    let dir = scratch_dir("tls-park");
    make_certs(&dir, &[&["a.test"]]);
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&tls_config(&dir, backend.addr, 1));
    let client = client_trusting(&dir);
    let name = rustls_pki_types::ServerName::try_from("a.test").expect("name");
    let conn = rustls::ClientConnection::new(client, name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(lb.addr).expect("tcp"));
    for round in 0..4 {
        tls.write_all(format!("GET /r{round} HTTP/1.1\r\nHost: a.test\r\n\r\n").as_bytes())
            .expect("request");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !(buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"}\n")) {
            let n = tls.read(&mut chunk).expect("read");
            assert!(n > 0, "lb closed the connection in round {round}");
            buf.extend_from_slice(&chunk[..n]);
        }
        assert!(String::from_utf8_lossy(&buf).contains(&format!("/r{round}")));
        // Quiet for far longer than the 10 ms grace: the connection parks.
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(backend.requests(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A WebSocket upgrade over a TLS listener becomes a tunnel: bytes both ways, encrypted on
/// the client side, plain to the backend.
#[test]
fn websocket_over_tls() {
    let dir = scratch_dir("tls-ws");
    make_certs(&dir, &[&["a.test"]]);
    let backend = Backend::start(ws_echo(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nhello",
    ))
    .expect("backend");
    let lb = Lb::start(&tls_config(&dir, backend.addr, 1));
    let client = client_trusting(&dir);
    let name = rustls_pki_types::ServerName::try_from("a.test").expect("name");
    let conn = rustls::ClientConnection::new(client, name).expect("client");
    let sock = TcpStream::connect(lb.addr).expect("tcp");
    sock.set_read_timeout(Some(BOUND)).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET /chat HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .expect("upgrade");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"hello") {
        let n = tls.read(&mut buf).expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    for msg in [&b"frame-1"[..], b"frame-2 longer", &[b'z'; 40_000][..]] {
        tls.write_all(msg).expect("send");
        let mut echoed = vec![0u8; msg.len()];
        tls.read_exact(&mut echoed).expect("echo");
        assert_eq!(echoed, msg);
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    wait_until("the backend side of the tunnel to close", || {
        backend.open_connections() == 0
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bytes after a client's close_notify are dropped without stalling the worker, and bodies
/// sent in many small TLS records arrive whole.
#[test]
fn close_notify_with_trailing_bytes_and_small_records() {
    let dir = scratch_dir("tls-edge");
    make_certs(&dir, &[&["a.test"]]);
    let backend = Backend::start(Arc::new(|req, res| {
        let body = format!("{} {:x}", req.body_len, req.body_hash);
        res.send(200, &[], body.as_bytes());
    }))
    .expect("backend");
    let lb = Lb::start(&tls_config(&dir, backend.addr, 1).replace("workers = 2", "workers = 1"));
    let client = client_trusting(&dir);
    let name = rustls_pki_types::ServerName::try_from("a.test").expect("name");
    let conn = rustls::ClientConnection::new(client.clone(), name).expect("client");
    let sock = TcpStream::connect(lb.addr).expect("tcp");
    sock.set_read_timeout(Some(BOUND)).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .expect("request");
    let mut buf = [0u8; 4096];
    let n = tls.read(&mut buf).expect("answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.write_all(&vec![0x17u8; 5000]);
    // The only worker still serves.
    assert!(tls_request(&client, lb.addr, "a.test", "/", "")
        .0
        .starts_with("HTTP/1.1 200"));

    // 300 kB in 512-byte records.
    let mut small = (*client).clone();
    small.max_fragment_size = Some(512);
    let small = Arc::new(small);
    let name = rustls_pki_types::ServerName::try_from("a.test").expect("name");
    let conn = rustls::ClientConnection::new(small, name).expect("client");
    let sock = TcpStream::connect(lb.addr).expect("tcp");
    sock.set_read_timeout(Some(BOUND)).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    tls.write_all(
        format!(
            "POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .expect("head");
    tls.write_all(&body).expect("body");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    let want = format!("300000 {:x}", lb::hash::fnv1a(lb::hash::FNV_OFFSET, &body));
    let text = String::from_utf8_lossy(&answer);
    assert!(text.ends_with(&want), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// nginx as a TLS origin on two ports: the first with a certificate for `backend.test` that
/// asks for (and reports) a client certificate, the second for `wrong.test`. Each answer
/// names the TLS connection and its request count, so reuse is visible.
fn tls_origins(dir: &Path) -> Option<Nginx> {
    let d = dir.display();
    Nginx::start(2, |p| {
        format!(
            "server {{\n listen 127.0.0.1:{} ssl;\n ssl_certificate {d}/leaf0.pem;\n ssl_certificate_key {d}/leaf0.key;\n\
              ssl_client_certificate {d}/ca.pem;\n ssl_verify_client optional;\n keepalive_requests 1000;\n\
              location / {{ return 200 \"conn=$connection req=$connection_requests sni=$ssl_server_name client=$ssl_client_s_dn\\n\"; }}\n}}\n\
             server {{\n listen 127.0.0.1:{} ssl;\n ssl_certificate {d}/leaf1.pem;\n ssl_certificate_key {d}/leaf1.key;\n\
              location / {{ return 200 \"wrong-name origin\\n\"; }}\n}}\n",
            p[0], p[1]
        )
    })
}

/// A field of an nginx answer line (`conn=7 req=2 ...`).
fn field<'a>(body: &'a str, name: &str) -> &'a str {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .unwrap_or("")
}

/// TLS to the backends: verified against the configured CA and name, a client certificate
/// presented, connections pooled and reused; a wrong name or an unknown CA is a 502 that
/// names the reason (also in the access log) and, with another endpoint, a retry there;
/// health checks run over TLS and fail on a certificate that does not verify.
#[test]
fn upstream_tls_verifies_pools_and_names_failures() {
    let dir = scratch_dir("up-tls");
    make_certs(&dir, &[&["backend.test"], &["wrong.test"], &["lb-client"]]);
    let other = dir.join("other");
    std::fs::create_dir_all(&other).expect("dir");
    make_certs(&other, &[&["backend.test"]]);
    let Some(nginx) = tls_origins(&dir) else {
        return;
    };
    let (good, wrong) = (nginx.addr_of(0), nginx.addr_of(1));
    let d = dir.display();
    let verified = format!("{{ ca = \"{d}/ca.pem\", server_name = \"backend.test\" }}");
    let log = dir.join("access.log");
    let text = config(&format!(
        "[access_log]\npath = \"{}\"\n\
         [[clusters]]\nname = \"good\"\nendpoints = [{{ addr = \"{good}\" }}]\n\
         tls = {{ ca = \"{d}/ca.pem\", server_name = \"backend.test\", certificate = \"{d}/leaf2.pem\", key = \"{d}/leaf2.key\" }}\n\
         [[clusters]]\nname = \"mixed\"\nendpoints = [{{ addr = \"{wrong}\" }}, {{ addr = \"{good}\" }}]\ntls = {verified}\n\
         [[clusters]]\nname = \"wrong\"\nendpoints = [{{ addr = \"{wrong}\" }}]\ntls = {verified}\n\
         [[clusters]]\nname = \"unknown\"\nendpoints = [{{ addr = \"{good}\" }}]\n\
         tls = {{ ca = \"{}/ca.pem\", server_name = \"backend.test\" }}\n\
         [[clusters]]\nname = \"insecure\"\nendpoints = [{{ addr = \"{wrong}\" }}]\ntls = {{ insecure_skip_verify = true }}\n\
         [[clusters]]\nname = \"hc-good\"\nendpoints = [{{ addr = \"{good}\" }}]\ntls = {verified}\n\
         health_check = {{ path = \"/\", interval = \"100ms\", unhealthy_threshold = 1 }}\n\
         [[clusters]]\nname = \"hc-wrong\"\nendpoints = [{{ addr = \"{wrong}\" }}]\ntls = {verified}\n\
         health_check = {{ path = \"/\", interval = \"100ms\", unhealthy_threshold = 1 }}\n\
         [[routes]]\npath_prefix = \"/good\"\ncluster = \"good\"\n\
         [[routes]]\npath_prefix = \"/mixed\"\ncluster = \"mixed\"\n\
         [[routes]]\npath_prefix = \"/wrong\"\ncluster = \"wrong\"\n\
         [[routes]]\npath_prefix = \"/unknown\"\ncluster = \"unknown\"\n\
         [[routes]]\npath_prefix = \"/insecure\"\ncluster = \"insecure\"\n",
        log.display(),
        other.display()
    ));
    let lb = Lb::start(&text);

    // Verified, with lb's client certificate, and one pooled TLS connection for all.
    let mut c = Client::connect(lb.addr);
    let mut conns = Vec::new();
    for i in 1..=5 {
        c.send(b"GET /good HTTP/1.1\r\nHost: x\r\n\r\n");
        let r = c.response();
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 200, "{body}");
        assert_eq!(field(&body, "sni"), "backend.test", "{body}");
        assert_eq!(field(&body, "client"), "CN=lb-client", "{body}");
        assert_eq!(field(&body, "req"), i.to_string(), "request {i}: {body}");
        conns.push(field(&body, "conn").to_string());
    }
    conns.dedup();
    assert_eq!(conns.len(), 1, "one pooled TLS connection: {conns:?}");

    // A failed handshake is a connect failure: the retry goes to the other endpoint.
    for _ in 0..4 {
        let r = get(lb.addr, "/mixed");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            field(&String::from_utf8_lossy(&r.body), "sni"),
            "backend.test"
        );
    }
    // With nowhere else to go, the answer names the reason.
    for (path, code) in [
        ("/wrong", "upstream_tls_name_mismatch"),
        ("/unknown", "upstream_tls_unknown_ca"),
    ] {
        let r = get(lb.addr, path);
        assert_eq!(r.status, 502, "{path}");
        assert_eq!(r.json()["error"], code, "{path}");
    }
    // Verification off: the wrong name is accepted.
    let r = get(lb.addr, "/insecure");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"wrong-name origin\n");
    wait_until("access log lines naming the TLS failures", || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains("\"upstream_tls_name_mismatch\"") && t.contains("\"upstream_tls_unknown_ca\"")
    });

    // Health checks speak TLS: the endpoint whose name does not verify goes unhealthy, the
    // one that verifies stays healthy.
    let health = |cluster: &str| {
        let (_, v) = lb.admin("GET", "/clusters");
        v["clusters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == cluster).cloned())
            .map(|c| c["endpoints"][0]["healthy"].clone())
            .unwrap_or(serde_json::Value::Null)
    };
    wait_until("the wrong-name endpoint to fail its checks", || {
        health("hc-wrong") == false
    });
    let (_, all) = lb.admin("GET", "/clusters");
    assert_eq!(health("hc-good"), true, "{all}\n{}", lb.log());
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `openssl s_client` against `addr` with `args`, sends `input`, and returns what it
/// printed (stdout and stderr). Bounded: a client still running after 10 s is killed.
fn s_client(addr: std::net::SocketAddr, args: &[&str], input: &str) -> String {
    use std::process::Stdio;
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &addr.to_string(), "-ign_eof"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn request_for(host: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// Python's `ssl` module as a client: prints the version, ALPN, the certificate's CN and
/// the status line, as JSON.
fn python_tls(addr: std::net::SocketAddr, ca: &Path, sni: &str, extra: &str) -> serde_json::Value {
    let script = format!(
        "import json, socket, ssl\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         ctx.set_alpn_protocols(['http/1.1'])\n\
         hdr = b''\n\
         {extra}\n\
         with socket.create_connection(('127.0.0.1', {port})) as raw:\n\
         \x20   with ctx.wrap_socket(raw, server_hostname={sni:?}) as s:\n\
         \x20       cn = [v for rdn in s.getpeercert()['subject'] for (k, v) in rdn if k == 'commonName']\n\
         \x20       seen = {{'version': s.version(), 'alpn': s.selected_alpn_protocol(), 'cn': cn[0]}}\n\
         \x20       s.sendall(b'GET / HTTP/1.1\\r\\nHost: {sni}\\r\\n' + hdr + b'Connection: close\\r\\n\\r\\n')\n\
         \x20       data = b''\n\
         \x20       while True:\n\
         \x20           chunk = s.recv(65536)\n\
         \x20           if not chunk: break\n\
         \x20           data += chunk\n\
         \x20       print(json.dumps({{**seen, 'status': data.split(b'\\r\\n')[0].decode(), 'body': data.decode(errors='replace')}}))\n",
        ca = ca.display().to_string(),
        port = addr.port(),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    serde_json::from_slice(&out.stdout).unwrap_or_else(
        |_| serde_json::json!({ "error": String::from_utf8_lossy(&out.stderr).into_owned() }),
    )
}

/// openssl and Python's ssl against a two-certificate listener: SNI picks the certificate,
/// a client without SNI gets the first one (or nothing with `require_sni`), ALPN says
/// http/1.1, and TLS 1.2 and 1.3 both work.
#[test]
fn openssl_and_python_see_sni_alpn_and_both_versions() {
    let dir = scratch_dir("tls-clients");
    make_certs(&dir, &[&["a.test"], &["b.test"]]);
    let backend = Backend::start(echo("b")).expect("backend");
    let text = tls_config(&dir, backend.addr, 2);
    let lb = Lb::start(&text);
    let ca = dir.join("ca.pem");
    let ca_arg = ca.display().to_string();
    for (name, version, flag) in [
        ("b.test", "TLSv1.2", "-tls1_2"),
        ("a.test", "TLSv1.3", "-tls1_3"),
    ] {
        let out = s_client(
            lb.addr,
            &[
                "-servername",
                name,
                flag,
                "-alpn",
                "http/1.1",
                "-CAfile",
                &ca_arg,
            ],
            &request_for(name),
        );
        assert!(out.contains(&format!("subject=CN = {name}")), "{out}");
        assert!(out.contains(&format!("Protocol  : {version}")), "{out}");
        assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    }
    let out = s_client(
        lb.addr,
        &["-noservername", "-CAfile", &ca_arg],
        &request_for("x"),
    );
    assert!(
        out.contains("subject=CN = a.test"),
        "no SNI: the first certificate\n{out}"
    );

    for (sni, extra, version) in [
        (
            "b.test",
            "ctx.maximum_version = ssl.TLSVersion.TLSv1_2",
            "TLSv1.2",
        ),
        ("a.test", "", "TLSv1.3"),
    ] {
        let v = python_tls(lb.addr, &ca, sni, extra);
        assert_eq!(v["version"], version, "{v}");
        assert_eq!(v["alpn"], "http/1.1", "{v}");
        assert_eq!(v["cn"], sni, "{v}");
        assert_eq!(v["status"], "HTTP/1.1 200 OK", "{v}");
    }
    drop(lb);

    let strict = Lb::start(&text.replace(
        "tls = { certificates",
        "tls = { require_sni = true, certificates",
    ));
    let out = s_client(
        strict.addr,
        &["-noservername", "-CAfile", &ca_arg],
        &request_for("x"),
    );
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    assert!(out.contains("alert"), "refused with an alert: {out}");
    let out = s_client(
        strict.addr,
        &["-servername", "b.test", "-CAfile", &ca_arg],
        &request_for("b.test"),
    );
    assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Connections accepted so far by each worker (`GET /steering`).
fn accepted_by_worker(lb: &Lb) -> Vec<u64> {
    let (_, v) = lb.admin("GET", "/steering");
    v["workers"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["accepted"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// The worker that accepted the connection `f` made (the one whose count went up by one).
fn on_worker(lb: &Lb, f: impl FnOnce() -> String) -> (usize, String) {
    let before = accepted_by_worker(lb);
    let out = f();
    let mut after = accepted_by_worker(lb);
    // The admin connection itself is not a listener connection; wait for the count.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while after.iter().sum::<u64>() == before.iter().sum::<u64>()
        && std::time::Instant::now() < until
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
        after = accepted_by_worker(lb);
    }
    let w = (0..after.len())
        .find(|&i| after[i] > before.get(i).copied().unwrap_or(0))
        .unwrap_or_else(|| panic!("a worker accepted the connection: {before:?} {after:?} {out}"));
    (w, out)
}

/// A ticket from one worker resumes on another: the ticket keys are shared. Checked with
/// `openssl s_client -sess_out/-sess_in` and the per-worker accept counters.
#[test]
fn a_session_resumes_on_another_worker() {
    let dir = scratch_dir("tls-resume-workers");
    make_certs(&dir, &[&["a.test"]]);
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&tls_config(&dir, backend.addr, 1));
    let sess = dir.join("session.pem");
    let ca = dir.join("ca.pem").display().to_string();
    let sess_arg = sess.display().to_string();
    let (first, out) = on_worker(&lb, || {
        s_client(
            lb.addr,
            &[
                "-servername",
                "a.test",
                "-CAfile",
                &ca,
                "-sess_out",
                &sess_arg,
            ],
            &request_for("a.test"),
        )
    });
    assert!(out.contains("New, TLSv1.3"), "{out}");
    let mut elsewhere = None;
    for _ in 0..40 {
        let (w, out) = on_worker(&lb, || {
            s_client(
                lb.addr,
                &[
                    "-servername",
                    "a.test",
                    "-CAfile",
                    &ca,
                    "-sess_in",
                    &sess_arg,
                ],
                &request_for("a.test"),
            )
        });
        assert!(
            out.contains("Reused, TLSv1.3"),
            "resumed on worker {w}: {out}"
        );
        assert!(out.contains("HTTP/1.1 200 OK"), "{out}");
        if w != first {
            elsewhere = Some(w);
            break;
        }
    }
    assert!(
        elsewhere.is_some(),
        "40 resumptions all landed on worker {first}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// mTLS with Python's ssl: required refuses a client without a certificate, optional lets it
/// in, and a forged client-certificate header never reaches the backend.
#[test]
fn python_mtls_required_optional_and_forged() {
    let dir = scratch_dir("tls-py-mtls");
    make_certs(&dir, &[&["a.test"]]);
    let (chain, key) = client_identity(&dir, "py-client");
    let pem = |der: &[u8], label: &str| {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or(""))
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    };
    std::fs::write(
        dir.join("client.pem"),
        pem(chain[0].as_ref(), "CERTIFICATE"),
    )
    .expect("write");
    std::fs::write(dir.join("client.key"), pem(key.secret_der(), "PRIVATE KEY")).expect("write");
    let backend = Backend::start(echo("b")).expect("backend");
    let ca = dir.join("ca.pem");
    let forged = "hdr = b'X-Forwarded-Client-Cert: Hash=forged;Subject=\\\"CN=admin\\\"\\r\\n'";
    let with_cert = format!(
        "{forged}\nctx.load_cert_chain({:?}, {:?})",
        dir.join("client.pem").display().to_string(),
        dir.join("client.key").display().to_string()
    );
    for mode in ["required", "optional"] {
        let text = tls_config(&dir, backend.addr, 1).replace(
            "tls = { certificates",
            &format!(
                "tls = {{ client_auth = {{ ca = \"{}\", mode = \"{mode}\" }}, certificates",
                dir.join("clients-ca.pem").display()
            ),
        );
        let lb = Lb::start(&text);
        let v = python_tls(lb.addr, &ca, "a.test", &with_cert);
        assert_eq!(v["status"], "HTTP/1.1 200 OK", "{mode}: {v}");
        let body = v["body"].as_str().unwrap_or("");
        assert!(
            body.contains("Subject=\\\"CN=py-client\\\""),
            "{mode}: {body}"
        );
        assert!(
            !body.contains("forged"),
            "{mode}: the client's copy is dropped: {body}"
        );
        let v = python_tls(lb.addr, &ca, "a.test", forged);
        if mode == "required" {
            let error = v["error"].as_str().unwrap_or("").to_ascii_lowercase();
            assert!(error.contains("certificate required"), "required: {v}");
        } else {
            assert_eq!(v["status"], "HTTP/1.1 200 OK", "optional: {v}");
            let body = v["body"].as_str().unwrap_or("");
            assert!(
                !body.contains("forged") && !body.contains("CN=admin"),
                "{v}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first flight of a TLS client (its ClientHello), as bytes.
fn client_hello(dir: &Path) -> Vec<u8> {
    let name = rustls_pki_types::ServerName::try_from("a.test").expect("name");
    let mut conn = rustls::ClientConnection::new(client_trusting(dir), name).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("hello");
    out
}

/// True if lb closes `s` (EOF or reset, after any alert) within `bound`.
fn closed_within(s: &mut TcpStream, bound: std::time::Duration) -> bool {
    s.set_read_timeout(Some(bound)).expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Hostile handshakes: garbage before the ClientHello and a truncated handshake are
/// closed; a client that stalls mid-handshake is closed by the handshake (header) timeout;
/// 1,000 half-open handshakes later lb still serves, and they are all closed in time.
#[test]
fn hostile_handshakes_are_closed_and_lb_keeps_serving() {
    let dir = scratch_dir("tls-hostile");
    make_certs(&dir, &[&["a.test"]]);
    let backend = Backend::start(echo("b")).expect("backend");
    let text = tls_config(&dir, backend.addr, 1).replace(
        "[[clusters]]",
        "[http]\nclient_header_timeout = \"1s\"\n\n[[clusters]]",
    );
    let lb = Lb::start(&text);
    let client = client_trusting(&dir);
    let hello = client_hello(&dir);
    let serves = || {
        tls_request(&client, lb.addr, "a.test", "/", "")
            .0
            .starts_with("HTTP/1.1 200")
    };
    let bound = std::time::Duration::from_secs(5);

    let mut garbage = TcpStream::connect(lb.addr).expect("tcp");
    garbage
        .write_all(b"\x00\x01\x02garbage\xff\xfe")
        .expect("write");
    garbage.write_all(&hello).expect("write");
    assert!(closed_within(&mut garbage, bound), "garbage first: closed");

    let mut truncated = TcpStream::connect(lb.addr).expect("tcp");
    truncated
        .write_all(&hello[..hello.len() / 2])
        .expect("write");
    truncated
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    assert!(closed_within(&mut truncated, bound), "truncated: closed");

    let started = std::time::Instant::now();
    let mut stalled = TcpStream::connect(lb.addr).expect("tcp");
    stalled.write_all(&hello[..hello.len() / 2]).expect("write");
    assert!(
        closed_within(&mut stalled, bound),
        "stalled: closed by the timeout"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "not before the timeout"
    );
    assert!(serves());

    let mut half_open = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(lb.addr).expect("tcp");
        s.write_all(&hello[..hello.len() / 2]).expect("write");
        half_open.push(s);
    }
    assert!(serves(), "lb serves beside 1,000 half-open handshakes");
    for s in &mut half_open {
        assert!(
            closed_within(s, bound),
            "every half-open handshake is closed in time"
        );
    }
    assert!(serves());
    wait_until("the failed handshakes to be counted", || {
        let s = lb.scrape();
        metric(&s, "lb_tls_handshakes_total", &[("result", "error")]) >= 1.0
            && metric(&s, "lb_tls_handshakes_total", &[("result", "incomplete")]) >= 1002.0
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connection lb closes (the client asked for `Connection: close`) ends with a TLS
/// `close_notify`, not a bare TCP close: clients can tell a complete answer from a cut one,
/// and OpenSSL clients keep the session for resumption.
#[test]
fn a_closed_connection_ends_with_close_notify() {
    let dir = scratch_dir("tls-close-notify");
    make_certs(&dir, &[&["a.test"]]);
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&tls_config(&dir, backend.addr, 1));
    let name = rustls_pki_types::ServerName::try_from("a.test").expect("name");
    let conn = rustls::ClientConnection::new(client_trusting(&dir), name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(lb.addr).expect("tcp"));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut answer = Vec::new();
    let end = tls.read_to_end(&mut answer);
    assert!(
        end.is_ok(),
        "the session ended cleanly: {end:?} after {} bytes",
        answer.len()
    );
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// ECDSA and RSA certificates for one host: a client that can verify ECDSA gets the ECDSA
/// one, a client that offers only RSA signatures gets the RSA one.
#[test]
fn a_host_with_ecdsa_and_rsa_serves_each_client_what_it_can_verify() {
    let dir = scratch_dir("tls-rsa");
    make_certs(&dir, &[&["a.test"]]);
    let rsa = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args([
            "-subj",
            "/CN=a.test",
            "-addext",
            "subjectAltName=DNS:a.test",
        ])
        .arg("-keyout")
        .arg(dir.join("rsa.key"))
        .arg("-out")
        .arg(dir.join("rsa.pem"))
        .output()
        .expect("openssl req");
    assert!(
        rsa.status.success(),
        "{}",
        String::from_utf8_lossy(&rsa.stderr)
    );
    let backend = Backend::start(echo("b")).expect("backend");
    // RSA listed first: the ECDSA certificate is still preferred for clients that take it.
    let text = tls_config(&dir, backend.addr, 1).replace(
        "tls = { certificates = [",
        &format!(
            "tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}, ",
            dir.join("rsa.pem").display(),
            dir.join("rsa.key").display()
        ),
    );
    let lb = Lb::start(&text);
    let any = s_client(lb.addr, &["-servername", "a.test"], &request_for("a.test"));
    assert!(
        any.contains("Server public key is 256 bit"),
        "ECDSA P-256: {any}"
    );
    assert!(any.contains("HTTP/1.1 200 OK"), "{any}");
    let rsa_only = s_client(
        lb.addr,
        &[
            "-servername",
            "a.test",
            "-sigalgs",
            "RSA-PSS+SHA256:RSA+SHA256",
        ],
        &request_for("a.test"),
    );
    assert!(
        rsa_only.contains("Server public key is 2048 bit"),
        "RSA: {rsa_only}"
    );
    assert!(rsa_only.contains("HTTP/1.1 200 OK"), "{rsa_only}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Names configured on a certificate replace its SANs for SNI selection.
#[test]
fn configured_names_override_the_sans() {
    let dir = scratch_dir("tls-names");
    let leaves = make_certs(&dir, &[&["a.test"], &["b.test"]]);
    let backend = Backend::start(echo("b")).expect("backend");
    let text = tls_config(&dir, backend.addr, 2).replace(
        &format!("key = \"{}\" }}]", dir.join("leaf1.key").display()),
        &format!(
            "key = \"{}\", names = [\"c.test\"] }}]",
            dir.join("leaf1.key").display()
        ),
    );
    assert!(text.contains("names = [\"c.test\"]"), "{text}");
    let lb = Lb::start(&text);
    let fresh = |name: &str| {
        let mut c = (*client_trusting(&dir)).clone();
        c.resumption = rustls::client::Resumption::disabled();
        // The client does not verify the name here: the test looks at which certificate
        // came back.
        c.dangerous().set_certificate_verifier(Arc::new(AnyCert(
            rustls::crypto::aws_lc_rs::default_provider(),
        )));
        tls_request(&Arc::new(c), lb.addr, name, "/", "").2
    };
    assert_eq!(
        fresh("c.test").as_ref(),
        Some(&leaves[1]),
        "by its configured name"
    );
    assert_eq!(
        fresh("b.test").as_ref(),
        Some(&leaves[0]),
        "its SAN no longer selects it: the default (first) certificate answers"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A verifier that accepts any certificate (tests that look at which one was served).
#[derive(Debug)]
struct AnyCert(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS backend on one port that answers one request with a close-delimited body, then
/// ends the session with `close_notify` or just drops the TCP connection (`cut`).
fn close_delimited_tls_backend(dir: &Path, cut: bool) -> std::net::SocketAddr {
    let chain = vec![CertificateDer::from_pem_file(dir.join("leaf0.pem")).expect("cert")];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(dir.join("leaf0.key")).expect("key");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config"),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for tcp in listener.incoming().take(4) {
            let Ok(tcp) = tcp else { return };
            let conn = rustls::ServerConnection::new(config.clone()).expect("session");
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthe whole body");
            if !cut {
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
            // Dropped: the TCP connection closes.
        }
    });
    addr
}

/// A close-delimited body from a TLS backend is complete only if the session ended with
/// `close_notify`; a bare TCP close may be a truncation, and the client is told so (its
/// chunked body never gets its last chunk).
#[test]
fn a_tls_backend_that_closes_without_close_notify_is_a_cut_body() {
    let dir = scratch_dir("tls-cut");
    make_certs(&dir, &[&["backend.test"]]);
    for (cut, complete) in [(false, true), (true, false)] {
        let backend = close_delimited_tls_backend(&dir, cut);
        let text = config(&format!(
            "[[clusters]]\nname = \"b\"\nendpoints = [{{ addr = \"{backend}\" }}]\n\
             tls = {{ ca = \"{}\", server_name = \"backend.test\" }}\n[[routes]]\ncluster = \"b\"\n",
            dir.join("ca.pem").display()
        ));
        let lb = Lb::start(&text);
        let mut c = TcpStream::connect(lb.addr).expect("tcp");
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("send");
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut answer = Vec::new();
        let _ = c.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("the whole body"), "{text}");
        assert_eq!(text.ends_with("0\r\n\r\n"), complete, "cut={cut}: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `lb check` on certificate chains: certificates that are not a chain fail, naming the
/// file; a leaf whose issuer is neither in the file nor a system root is a warning; the
/// leaf followed by its issuer is neither.
#[test]
fn lb_check_checks_the_chain() {
    let dir = scratch_dir("tls-chain");
    make_certs(&dir, &[&["a.test"], &["b.test"]]);
    let backend = Backend::start(echo("b")).expect("backend");
    let path = dir.join("lb.toml");
    std::fs::write(&path, tls_config(&dir, backend.addr, 1)).expect("config");
    let check = || {
        let out = Command::new(lb_bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("lb check");
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        (out.status.success(), text)
    };
    let (ok, text) = check();
    assert!(ok, "{text}");
    assert!(
        text.contains("clients will likely miss the intermediate"),
        "{text}"
    );

    let leaf = std::fs::read_to_string(dir.join("leaf0.pem")).expect("leaf");
    let ca = std::fs::read_to_string(dir.join("ca.pem")).expect("ca");
    std::fs::write(dir.join("leaf0.pem"), format!("{leaf}{ca}")).expect("write");
    let (ok, text) = check();
    assert!(ok, "{text}");
    assert!(
        !text.contains("miss the intermediate"),
        "a complete chain: {text}"
    );

    let other = std::fs::read_to_string(dir.join("leaf1.pem")).expect("leaf");
    std::fs::write(dir.join("leaf0.pem"), format!("{leaf}{other}")).expect("write");
    let (ok, text) = check();
    assert!(!ok, "{text}");
    assert!(
        text.contains("leaf0.pem") && text.contains("not a chain"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
