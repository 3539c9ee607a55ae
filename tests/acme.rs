//! ACME end to end against Pebble, the ACME test server (with pebble-challtestsrv as its DNS,
//! pointing every name at 127.0.0.1): lb orders a certificate over HTTPS, answers the HTTP-01
//! challenge on its own plain listener, serves the issued chain (verified by curl against
//! Pebble's root), keeps it across a restart, renews it when the renewal threshold moves,
//! and keeps serving it when an order fails.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::*;

const HOST: &str = "site.lb.test";

/// Pebble and its DNS server, on loopback ports; stopped on drop.
struct Pebble {
    children: Vec<Child>,
    dir: PathBuf,
    directory: String,
    /// The CA of Pebble's own HTTPS certificate.
    ca: PathBuf,
    management: SocketAddr,
}

impl Pebble {
    /// `http_port`: where Pebble sends HTTP-01 validations (lb's plain listener).
    fn start(http_port: u16) -> Option<Pebble> {
        let (pebble, chall) = ("/usr/bin/pebble", "/usr/bin/pebble-challtestsrv");
        if !Path::new(pebble).exists() || !Path::new(chall).exists() {
            skip(
                "acme",
                "pebble not found; `cargo xtask test` installs it (Debian package pebble)",
            );
            return None;
        }
        let dir = scratch_dir("pebble");
        // Pebble's HTTPS certificate, for 127.0.0.1, from a CA the test hands to lb.
        write_ca_and_cert(&dir, "pebble test CA", &["127.0.0.1"]);
        let port = || dead_addr().port();
        let (listen, mgmt, tls_port, dns, chall_mgmt) = (port(), port(), port(), port(), port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": dir.join("cert.pem"),
                "privateKey": dir.join("key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        std::fs::write(dir.join("pebble.json"), config.to_string()).expect("write");
        let logs = dir.clone();
        let log = move |name: &str| {
            Stdio::from(std::fs::File::create(logs.join(name)).expect("log file"))
        };
        let dns_server = Command::new(chall)
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{chall_mgmt}")])
            .stdout(log("chall.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pebble-challtestsrv");
        let mut p = Pebble {
            children: vec![dns_server],
            directory: format!("https://127.0.0.1:{listen}/dir"),
            ca: dir.join("ca.pem"),
            management: SocketAddr::from(([127, 0, 0, 1], mgmt)),
            dir,
        };
        let server = Command::new(pebble)
            .arg("-config")
            .arg(p.dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random waits before validating; nonces are still rejected at random (5 %),
            // which lb retries.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pebble");
        p.children.push(server);
        for addr in [
            SocketAddr::from(([127, 0, 0, 1], listen)),
            SocketAddr::from(([127, 0, 0, 1], chall_mgmt)),
        ] {
            wait_until("pebble to listen", || {
                std::net::TcpStream::connect(addr).is_ok()
            });
        }
        Some(p)
    }

    /// Pebble's root certificate (random per run), which issued chains lead to.
    fn root(&self) -> PathBuf {
        let path = self.dir.join("root.pem");
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&self.ca)
            .arg(format!("https://{}/roots/0", self.management))
            .arg("-o")
            .arg(&path)
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("pebble log:\n{}", self.log());
        }
    }
}

fn lb_config(
    http_port: u16,
    pebble: &Pebble,
    state: &Path,
    backend: SocketAddr,
    renew: &str,
) -> String {
    format!(
        "[server]\nworkers = 2\ndrain_timeout = \"2s\"\n\n\
         [[listeners]]\nname = \"http\"\naddr = \"127.0.0.1:{http_port}\"\n\n\
         [[listeners]]\nname = \"https\"\naddr = \"127.0.0.1:0\"\n\
         tls = {{ acme = {{ directory = \"{}\", email = \"ops@example.com\", hosts = [\"{HOST}\"], ca = \"{}\", state_dir = \"{}\"{renew} }} }}\n\n\
         [admin]\naddr = \"127.0.0.1:0\"\n\n\
         [[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{backend}\" }}]\n\
         [[routes]]\ncluster = \"app\"\n",
        pebble.directory,
        pebble.ca.display(),
        state.display()
    )
}

/// The ACME certificate lb serves, as `GET /certificates` shows it: its SHA-256.
fn acme_cert(lb: &Lb) -> Option<String> {
    let (_, v) = lb.admin("GET", "/certificates");
    v["certificates"].as_array()?.iter().find_map(|c| {
        (c["source"].as_str()?.starts_with("acme:") && c["names"][0] == HOST)
            .then(|| c["sha256"].as_str().map(str::to_string))
            .flatten()
    })
}

fn https_port(lb: &Lb) -> u16 {
    let ready: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lb.dir.join("ready.json")).expect("ready file"),
    )
    .expect("JSON");
    let addr: SocketAddr = ready["listeners"]["https"]
        .as_str()
        .expect("https listener")
        .parse()
        .expect("addr");
    addr.port()
}

/// curl over HTTPS to lb as `HOST`, verifying the chain against `root`.
fn curl_https(lb: &Lb, root: &Path) -> String {
    let port = https_port(lb);
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(root)
        .args(["--resolve", &format!("{HOST}:{port}:127.0.0.1")])
        .arg(format!("https://{HOST}:{port}/hello"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lb.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn orders(lb: &Lb, result: &str) -> f64 {
    metric(&lb.scrape(), "lb_acme_orders_total", &[("result", result)])
}

#[test]
fn certificates_are_issued_kept_renewed_and_kept_through_failures() {
    let http_port = dead_addr().port();
    let Some(mut pebble) = Pebble::start(http_port) else {
        return;
    };
    let backend = Backend::start(echo("app")).expect("backend");
    let state = scratch_dir("acme-state");
    let text = lb_config(http_port, &pebble, &state, backend.addr, "");

    // Issuance: the HTTP-01 challenge is answered by lb itself, and the chain verifies.
    let mut lb = Lb::start(&text);
    wait_until("the ACME certificate to be in service", || {
        acme_cert(&lb).is_some()
    });
    let first = acme_cert(&lb).expect("cert");
    assert_eq!(orders(&lb, "issued"), 1.0);
    let root = pebble.root();
    assert!(curl_https(&lb, &root).contains("\"backend\": \"app\""));
    assert!(state.join(format!("{HOST}.crt.pem")).is_file());
    lb.signal(libc::SIGTERM);
    assert!(lb.wait_exit().success());

    // A restart serves the stored certificate without ordering another.
    let lb = Lb::start(&text);
    assert_eq!(
        acme_cert(&lb).as_deref(),
        Some(first.as_str()),
        "served from disk at start"
    );
    assert!(curl_https(&lb, &root).contains("\"backend\": \"app\""));
    assert_eq!(orders(&lb, "issued"), 0.0);

    // Renewal: a threshold beyond the certificate's lifetime makes it due at once.
    std::fs::write(
        &lb.config_path,
        lb_config(
            http_port,
            &pebble,
            &state,
            backend.addr,
            ", renew_before = \"36500d\"",
        ),
    )
    .expect("write config");
    let (status, body) = lb.admin("POST", "/reload");
    assert_eq!(status, 200, "{body}");
    wait_until("the renewed certificate to be in service", || {
        acme_cert(&lb).is_some_and(|c| c != first)
    });
    let renewed = acme_cert(&lb).expect("cert");
    assert_eq!(orders(&lb, "issued"), 1.0);
    assert!(curl_https(&lb, &root).contains("\"backend\": \"app\""));

    // A failed renewal (the CA is gone) is counted and keeps the certificate in service.
    pebble.stop();
    std::fs::write(
        &lb.config_path,
        lb_config(
            http_port,
            &pebble,
            &state,
            backend.addr,
            ", renew_before = \"36000d\"",
        ),
    )
    .expect("write config");
    let (status, body) = lb.admin("POST", "/reload");
    assert_eq!(status, 200, "{body}");
    wait_until("the failed order to be counted", || {
        orders(&lb, "failed") >= 1.0
    });
    assert_eq!(acme_cert(&lb).as_deref(), Some(renewed.as_str()));
    assert!(curl_https(&lb, &root).contains("\"backend\": \"app\""));
    assert!(
        lb.log().contains("ordering a certificate failed"),
        "{}",
        lb.log()
    );
    let _ = std::fs::remove_dir_all(&state);
}
