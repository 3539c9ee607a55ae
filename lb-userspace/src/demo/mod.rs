//! `lb demo`: the embedded demo config with built-in echo backends, so that a newcomer sees
//! routing work in a minute.

pub mod backend;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;

use crate::config::Config;
use crate::server::{self, ConfigSource, RunOptions};
use backend::{Backend, Handler};

/// The demo config, compiled into the binary.
pub const DEMO_CONFIG: &str = include_str!("../../../conf/demo.toml");

/// A handler that answers every request with JSON naming `name` and describing what arrived:
/// method, path, headers and body length.
pub fn echo(name: &str) -> Handler {
    let name = name.to_string();
    Arc::new(move |req, res| {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), json!(v)))
            .collect();
        let body = json!({
            "backend": name,
            "method": req.method,
            "path": req.path,
            "headers": headers,
            "body_length": req.body_len,
        });
        let mut text = serde_json::to_vec_pretty(&body).unwrap_or_default();
        text.push(b'\n');
        res.send(
            200,
            &[("Content-Type", "application/json"), ("X-Backend", &name)],
            &text,
        );
    })
}

/// Like [`echo`], but every third request gets a 500: the demo's broken canary.
pub fn flaky_echo(name: &str) -> Handler {
    let inner = echo(name);
    let name = name.to_string();
    let count = std::sync::atomic::AtomicU64::new(0);
    Arc::new(move |req, res| {
        if count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 3 == 2 {
            let body = format!(
                "{{\"backend\":\"{name}\",\"error\":\"this canary is broken on purpose\"}}\n"
            );
            res.send(
                500,
                &[("Content-Type", "application/json"), ("X-Backend", &name)],
                body.as_bytes(),
            );
        } else {
            inner(req, res);
        }
    })
}

/// Where the demo serves HTTPS.
const DEMO_HTTPS: &str = "127.0.0.1:8443";

/// Makes a throwaway CA and a certificate for `localhost` and 127.0.0.1 signed by it, in
/// `dir`; returns the listener table that serves HTTPS with them.
fn demo_tls(dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "lb demo CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca)?;
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("localhost.pem"),
        dir.join("localhost.key"),
    );
    std::fs::write(&ca_path, ca.pem())?;
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok(format!(
        "\n[[listeners]]\nname = \"https\"\naddr = \"{DEMO_HTTPS}\"\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n",
        cert_path.display(),
        key_path.display()
    ))
}

/// Version 2 of the demo's users API, as OpenAPI.
pub const USERS_V2_SPEC: &str = include_str!("../../../conf/specs/users-v2.yaml");

/// Writes the users API's v2 spec into `dir`; returns the two versioned routes: chosen by
/// `Accept` on `/api/users`, by the path on `/v1/users` and `/v2/users`. v1 is deprecated
/// and in its warning phase (its last days before the sunset; the long `warning_days` keeps
/// the demo there), with the `_deprecation` member in its JSON answers; v2 is current and
/// validates its requests.
fn demo_versions(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("users-v2.yaml");
    std::fs::write(&path, USERS_V2_SPEC).with_context(|| format!("writing {}", path.display()))?;
    let v1 = "{ cluster = \"users\", deprecated = \"2026-01-01T00:00:00Z\", sunset = \"2030-01-01T00:00:00Z\", \
              warning_days = 3650, successor = \"2\", policy = \"https://docs.example.com/users-v2-migration\", \
              deprecation_field = true }";
    let v2 = |prefix: &str| {
        format!(
            "{{ cluster = \"users-v2\", validate = {{ openapi = \"{}\", prefix = \"{prefix}\" }} }}",
            path.display()
        )
    };
    Ok(format!(
        "\n[[routes]]\nname = \"users\"\npath_prefix = \"/api/users\"\n\
         [routes.versions]\nfrom = \"accept:demo\"\ndefault = \"2\"\necho_header = \"API-Version\"\n\
         map.\"1\" = {v1}\nmap.\"2\" = {}\n\n\
         [[routes]]\nname = \"users-by-path\"\npath_regex = \"^/v[0-9]+/users(/|$)\"\n\
         [routes.versions]\nfrom = \"path:/v{{version}}/\"\necho_header = \"API-Version\"\n\
         map.\"1\" = {v1}\nmap.\"2\" = {}\n",
        v2("/api"),
        v2("/v2"),
    ))
}

/// Writes the demo's country database into `dir`; returns the `[geoip]` table and the
/// route that sends European clients to the EU shop.
fn demo_geo(dir: &Path) -> anyhow::Result<String> {
    let net = |s: &str| -> anyhow::Result<std::net::IpAddr> { Ok(s.parse()?) };
    let db = crate::client::geo::write::country_db(&[
        (net("203.0.113.0")?, 24, "DE", "EU"),
        (net("192.0.2.0")?, 24, "FR", "EU"),
        (net("198.51.100.0")?, 24, "US", "NA"),
    ]);
    let path = dir.join("country.mmdb");
    std::fs::write(&path, db).with_context(|| format!("writing {}", path.display()))?;
    Ok(format!(
        "\n[geoip]\ndatabase = \"{}\"\nheader = \"X-Client-Country\"\n\n\
         [[routes]]\nname = \"shop-eu\"\npath_prefix = \"/shop\"\ncontinent = \"EU\"\ncluster = \"shop-eu\"\n",
        path.display()
    ))
}

/// Runs the demo: echo backends on every endpoint of the demo config, then `lb` itself, on
/// plain HTTP and on HTTPS with a certificate made at start.
pub fn run(with_backends: bool, opts: RunOptions) -> anyhow::Result<()> {
    let config = Config::parse(DEMO_CONFIG, Path::new("conf/demo.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut backends = Vec::new();
    if with_backends {
        for cluster in &config.clusters {
            for (i, ep) in cluster.endpoints.iter().enumerate() {
                let name = format!("{}-{}", cluster.name, i + 1);
                if let crate::config::Target::Addr(addr) = ep.target {
                    let handler = if cluster.name.contains("canary") {
                        flaky_echo(&name)
                    } else {
                        echo(&name)
                    };
                    backends.push(start_backend(addr, &name, handler)?);
                }
            }
        }
    }
    // A fixed place, so the README's curl line works as written (the demo's ports are fixed
    // too: one demo runs at a time).
    let tls_dir = std::env::temp_dir().join("lb-demo");
    let text = format!(
        "{DEMO_CONFIG}{}{}{}",
        demo_tls(&tls_dir)?,
        demo_geo(&tls_dir)?,
        demo_versions(&tls_dir)?
    );
    print_banner(&config, &tls_dir.join("ca.pem"));
    // The process serves this config until it exits.
    let text: &'static str = Box::leak(text.into_boxed_str());
    let result = server::run(
        ConfigSource::Embedded {
            name: "conf/demo.toml",
            text,
        },
        opts,
    );
    let _ = std::fs::remove_dir_all(&tls_dir);
    drop(backends);
    result
}

fn start_backend(addr: SocketAddr, name: &str, handler: Handler) -> anyhow::Result<Backend> {
    let b = Backend::start_on(addr, handler)
        .with_context(|| format!("demo backend {name}: cannot listen on {addr}"))?;
    tracing::info!(backend = name, %addr, "demo backend up");
    Ok(b)
}

fn print_banner(config: &Config, ca: &Path) {
    let Some(listener) = config.listeners.first() else {
        return;
    };
    let base = format!("http://{}", listener.addr);
    println!(
        "lb demo: proxy on {base}{}",
        config
            .admin
            .as_ref()
            .map_or(String::new(), |a| format!(", admin on http://{}", a.addr))
    );
    println!("try:");
    println!("  curl -s {base}/api/orders/42          # alternates between orders-1 and orders-2");
    println!("  curl -s {base}/api/users/7            # API version 2 (the default): users-v2-1");
    println!("  curl -si -H 'Accept: application/vnd.demo.v1+json' {base}/api/users/7   # v1: deprecated, a Warning before its sunset");
    println!("  curl -s {base}/v1/users/7             # v1 by the path: a _deprecation member in the answer");
    println!(
        "  curl -si {base}/v9/users/7            # 400 problem+json: the versions are 1 and 2"
    );
    println!("  curl -si -H 'Content-Type: application/json' --data '{{\"email\":\"nope\",\"plan\":\"gold\"}}' {base}/api/users   # v2 validates: 400 naming /email, /plan and the missing name");
    println!("  curl -si {base}/v2/users/abc          # 400: the id is an integer in v2's spec");
    println!("  curl -s -X POST --data 'hello' {base}/api/orders");
    let port = DEMO_HTTPS.rsplit(':').next().unwrap_or("8443");
    println!(
        "  curl -s --cacert {} https://localhost:{port}/api/orders/42   # HTTPS, certificate made at start",
        ca.display()
    );
    println!("  curl -s {base}/api/v1/products/42?ref=mail   # rewritten for the catalog backend");
    println!(
        "  curl -s -i {base}/api/v0/products/1    # deprecated: Deprecation, Sunset, Link headers"
    );
    println!("  curl -s -i {base}/api/beta/products/1  # past its sunset: 410 Gone");
    println!("  curl -s -i {base}/nowhere             # 404 from lb, no route");
    println!("  curl -s -H 'X-Forwarded-For: 203.0.113.7' {base}/shop    # a client in Germany, says the trusted proxy: shop-eu");
    println!(
        "  curl -s -H 'X-Forwarded-For: 198.51.100.7' {base}/shop   # a client in the US: shop"
    );
    println!("  curl -s -H 'X-Canary: true' {base}/api/checkout   # forced onto the canary");
    println!("  for i in $(seq 60); do curl -s -o /dev/null {base}/api/checkout; done   # the canary fails 1 in 3...");
    if let Some(a) = &config.admin {
        println!("  curl -s http://{}/splits                # ...and gets rolled back: canary weight 0, with the reason", a.addr);
        println!("  curl -s http://{}/config", a.addr);
        println!(
            "  curl -s http://{}/deprecations          # who still calls v1 of the users API",
            a.addr
        );
        println!("  curl -s http://{}/metrics | grep lb_canary", a.addr);
        println!(
            "console: open http://{}/ui in a browser (Releases shows the canary's rollback)",
            a.addr
        );
    }
    println!("stop with Ctrl-C");
}
