//! HTTP/2 from clients with real tools: curl over TLS (ALPN h2) and with prior knowledge
//! (h2c), nghttp and h2load from nghttp2-client, and hand-made frames for the floods, both
//! from a raw socket and from Python's `h2`. Every stream goes through the same pipeline as HTTP/1.1: routing,
//! rate limits and splits are checked over HTTP/2 too.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A CA and a certificate for `h2.test` in `dir`.
fn certs(dir: &std::path::Path) {
    write_ca_and_cert(dir, "h2 test CA", &["h2.test"]);
}

/// lb with a TLS listener speaking h2 and http/1.1 (first, so `lb.addr` is it) and a plain
/// one speaking h2c and http/1.1, in front of `backend`; `extra` is appended.
fn h2_config(dir: &Path, backend: SocketAddr, extra: &str) -> String {
    format!(
        "[server]\nworkers = 2\ndrain_timeout = \"10s\"\n\n\
         [[listeners]]\nname = \"tls\"\naddr = \"127.0.0.1:0\"\nprotocols = [\"h2\", \"http/1.1\"]\n\
         tls = {{ certificates = [{{ cert = \"{d}/cert.pem\", key = \"{d}/key.pem\" }}] }}\n\n\
         [[listeners]]\nname = \"plain\"\naddr = \"127.0.0.1:0\"\nprotocols = [\"http/1.1\", \"h2c\"]\n\n\
         [admin]\naddr = \"127.0.0.1:0\"\n\n{extra}\n\
         [[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{backend}\" }}]\n\
         [[routes]]\nname = \"all\"\ncluster = \"app\"\n",
        d = dir.display()
    )
}

fn listener(lb: &Lb, name: &str) -> SocketAddr {
    let ready: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lb.dir.join("ready.json")).expect("ready file"),
    )
    .expect("JSON");
    ready["listeners"][name]
        .as_str()
        .expect("listener")
        .parse()
        .expect("addr")
}

fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok();
    if !ok {
        skip(
            "http2",
            &format!("{tool} is not installed; `cargo xtask test` installs it"),
        );
    }
    ok
}

/// curl with `args`; (HTTP version, status, body).
fn curl(args: &[&str]) -> (String, u16, String) {
    let (body, tail, stderr, ok) = curl_with(args, "%{http_version} %{http_code}");
    let mut parts = tail.split_whitespace();
    let version = parts.next().unwrap_or("").to_string();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    assert!(ok || status != 0, "curl {args:?}: {stderr}");
    (version, status, body)
}

#[test]
fn curl_speaks_http2_over_tls_and_h2c_through_the_pipeline() {
    if !have("curl") {
        return;
    }
    let dir = scratch_dir("h2-curl");
    certs(&dir);
    let backend = Backend::start(echo("b")).expect("backend");
    let log = dir.join("access.log");
    let lb = Lb::start(&h2_config(
        &dir,
        backend.addr,
        &format!("[access_log]\npath = \"{}\"\n", log.display()),
    ));
    let tls = listener(&lb, "tls");
    let plain = listener(&lb, "plain");
    let ca = dir.join("ca.pem").display().to_string();
    let resolve = format!("h2.test:{}:127.0.0.1", tls.port());
    let url = format!("https://h2.test:{}/over/h2?x=1", tls.port());
    let (version, status, body) = curl(&["--http2", "--cacert", &ca, "--resolve", &resolve, &url]);
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(v["path"], "/over/h2?x=1");
    assert_eq!(v["headers"]["host"], format!("h2.test:{}", tls.port()));
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    assert!(v["headers"].get("connection").is_none() || v["headers"]["connection"] != "upgrade");

    // A body, with and without a length (curl sends none for a chunked upload).
    let (version, status, body) = curl(&[
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--data-binary",
        "hello body",
        &url,
    ]);
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body_length"], 10);
    let (_, status, body) = curl(&[
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "streamed body",
        &url,
    ]);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("echo JSON");
    assert_eq!(v["body_length"], 13);

    // h2c by prior knowledge on the plain listener; HTTP/1.1 still works there.
    let (version, status, body) =
        curl(&["--http2-prior-knowledge", &format!("http://{plain}/plain")]);
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    let (version, status, _) = curl(&[&format!("http://{plain}/plain")]);
    assert_eq!((version.as_str(), status), ("1.1", 200));
    // HTTP/1.1 over the TLS listener too, when the client offers only that.
    let (version, status, _) = curl(&["--http1.1", "--cacert", &ca, "--resolve", &resolve, &url]);
    assert_eq!((version.as_str(), status), ("1.1", 200));
    wait_until("requests by protocol in the metrics", || {
        let m = lb.scrape();
        metric(
            &m,
            "lb_requests_total",
            &[("route", "all"), ("protocol", "h2")],
        ) == 4.0
            && metric(
                &m,
                "lb_requests_total",
                &[("route", "all"), ("protocol", "http/1.1")],
            ) == 2.0
    });
    wait_until("six access log lines", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 6)
    });
    let text = std::fs::read_to_string(&log).expect("access log");
    assert_eq!(text.matches("\"protocol\":\"HTTP/2\"").count(), 4, "{text}");
    assert_eq!(
        text.matches("\"protocol\":\"HTTP/1.1\"").count(),
        2,
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn routing_rate_limits_and_splits_work_over_http2() {
    if !have("curl") {
        return;
    }
    let dir = scratch_dir("h2-routing");
    certs(&dir);
    let stable = Backend::start(echo("stable")).expect("backend");
    let canary = Backend::start(echo("canary")).expect("backend");
    let extra = format!(
        "[[clusters]]\nname = \"stable\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[clusters]]\nname = \"canary\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[routes]]\nname = \"limited\"\npath_prefix = \"/limited\"\ncluster = \"stable\"\n\
         rate_limit = {{ key = \"client_ip\", limits = [{{ requests = 2, per = \"1m\" }}] }}\n\
         [[routes]]\nname = \"by-header\"\npath_prefix = \"/api\"\nheaders = [{{ name = \"x-team\", equals = \"blue\" }}]\ncluster = \"canary\"\n\
         [[routes]]\nname = \"shop\"\npath_prefix = \"/shop\"\n[routes.split]\nname = \"shop\"\nsticky = \"header:X-User-ID\"\n\
         targets = [{{ name = \"stable\", cluster = \"stable\", weight = 50 }}, {{ name = \"canary\", cluster = \"canary\", weight = 50 }}]\n\
         override = [{{ header = \"X-Canary\", value = \"true\", target = \"canary\" }}]\n",
        stable.addr, canary.addr
    );
    let lb = Lb::start(&h2_config(&dir, stable.addr, &extra));
    let plain = listener(&lb, "plain");
    let get = |path: &str, headers: &[&str]| {
        let mut args = vec!["--http2-prior-knowledge".to_string()];
        for h in headers {
            args.push("-H".into());
            args.push(h.to_string());
        }
        args.push(format!("http://{plain}{path}"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(&refs)
    };
    let (v, status, body) = get("/api/x", &["x-team: blue"]);
    assert_eq!((v.as_str(), status), ("2", 200));
    assert!(body.contains("\"backend\": \"canary\""), "{body}");
    let (_, _, body) = get("/api/x", &[]);
    assert!(!body.contains("canary"), "{body}");
    let statuses: Vec<u16> = (0..3).map(|_| get("/limited", &[]).1).collect();
    assert_eq!(statuses, [200, 200, 429], "the third is over the limit");
    // A split: the same sticky key always lands on the same variant; the override wins.
    let backend = |body: &str| {
        serde_json::from_str::<serde_json::Value>(body)
            .map(|v| v["backend"].to_string())
            .unwrap_or_default()
    };
    for user in ["u-1", "u-2", "u-3"] {
        let seen: std::collections::BTreeSet<String> = (0..4)
            .map(|_| backend(&get("/shop", &[&format!("X-User-ID: {user}")]).2))
            .collect();
        assert_eq!(seen.len(), 1, "{user} is sticky: {seen:?}");
    }
    for _ in 0..4 {
        let (v, _, body) = get("/shop", &["X-Canary: true", "X-User-ID: u-1"]);
        assert_eq!(v, "2");
        assert_eq!(backend(&body), "\"canary\"", "the override header wins");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nghttp_and_h2load_complete_every_request() {
    if !have("nghttp") || !have("h2load") {
        return;
    }
    let dir = scratch_dir("h2-load");
    certs(&dir);
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&h2_config(&dir, backend.addr, ""));
    let plain = listener(&lb, "plain");
    let tls = listener(&lb, "tls");
    let out = Command::new("nghttp")
        .args(["-v", "-n", &format!("http://{plain}/nghttp")])
        .output()
        .expect("nghttp");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(":status: 200"), "{text}");
    assert!(text.contains("recv SETTINGS frame"), "{text}");
    for url in [
        format!("http://{plain}/load"),
        format!("https://{tls}/load"),
    ] {
        let out = Command::new("h2load")
            .args(["-n", "2000", "-c", "4", "-m", "10", &url])
            .output()
            .expect("h2load");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("2000 succeeded, 0 failed, 0 errored"),
            "{url}: {text}"
        );
        assert!(text.contains("status codes: 2000 2xx"), "{url}: {text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One frame: type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A HEADERS block for `GET /` (HPACK: indexed :method GET, :scheme http, :path /, and
/// :authority as a literal).
fn get_headers() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 0x01, b'x'];
    block.shrink_to_fit();
    block
}

/// Opens an h2c connection with the preface and an empty SETTINGS.
fn h2c(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("tcp");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("preface");
    s.write_all(&frame(0x4, 0, 0, &[])).expect("settings");
    s
}

/// Reads frames until a GOAWAY arrives (its error code) or the connection ends (`None`),
/// within 10 s.
fn goaway(s: &mut TcpStream) -> Option<u32> {
    wait_frame(s, |kind, _, p| {
        (kind == 0x7 && p.len() >= 8).then(|| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
    })
}

/// Reads frames until `pick` (given each frame's type, stream and payload) finds what it
/// wants, or the connection ends (`None`), within 10 s.
fn wait_frame(s: &mut TcpStream, pick: impl Fn(u8, u32, &[u8]) -> Option<u32>) -> Option<u32> {
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let until = Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while Instant::now() < until {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len = (buf[at] as usize) << 16 | (buf[at + 1] as usize) << 8 | buf[at + 2] as usize;
            if buf.len() < at + 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]);
            if let Some(v) = pick(
                buf[at + 3],
                stream & 0x7fff_ffff,
                &buf[at + 9..at + 9 + len],
            ) {
                return Some(v);
            }
            at += 9 + len;
        }
    }
    None
}

const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Each flood gets GOAWAY (ENHANCE_YOUR_CALM), is counted, and lb keeps serving others.
#[test]
fn floods_get_goaway_and_lb_keeps_serving() {
    if !have("curl") {
        return;
    }
    let dir = scratch_dir("h2-floods");
    certs(&dir);
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&h2_config(
        &dir,
        backend.addr,
        "[http2]\nmax_pings_per_second = 10\nmax_settings_per_second = 10\nmax_resets_per_second = 10\nmax_empty_frames_per_second = 10\nmax_continuation_frames = 4\nmax_header_list_size = \"4KiB\"\n",
    ));
    let plain = listener(&lb, "plain");
    let floods: Vec<(&str, Vec<u8>)> = vec![
        (
            "ping_flood",
            (0..50).flat_map(|_| frame(0x6, 0, 0, &[0; 8])).collect(),
        ),
        (
            "settings_flood",
            (0..50).flat_map(|_| frame(0x4, 0, 0, &[])).collect(),
        ),
        (
            "rapid_reset",
            (0..100u32)
                .flat_map(|i| {
                    let id = 2 * i + 1;
                    let mut f = frame(0x1, 0x4, id, &get_headers());
                    f.extend(frame(0x3, 0, id, &[0, 0, 0, 8]));
                    f
                })
                .collect(),
        ),
        ("empty_frames", {
            let mut f = frame(0x1, 0x4, 1, &get_headers());
            for _ in 0..50 {
                f.extend(frame(0x0, 0, 1, &[]));
            }
            f
        }),
        ("continuation_flood", {
            let mut f = frame(0x1, 0, 1, &get_headers());
            for _ in 0..50 {
                f.extend(frame(0x9, 0, 1, &[0x40, 0x01, b'a', 0x01, b'b']));
            }
            f
        }),
        ("header_list_too_large", {
            let mut big = get_headers();
            // A literal header with a 5,000-byte value (no Huffman).
            big.extend_from_slice(&[0x40, 0x01, b'a', 0x7f]);
            let mut n = 5000 - 127;
            while n >= 128 {
                big.push((n % 128) as u8 | 0x80);
                n /= 128;
            }
            big.push(n as u8);
            big.extend(std::iter::repeat_n(b'v', 5000));
            frame(0x1, 0x5, 1, &big)
        }),
    ];
    for (name, bytes) in floods {
        let mut s = h2c(plain);
        let _ = s.write_all(&bytes);
        assert_eq!(goaway(&mut s), Some(ENHANCE_YOUR_CALM), "{name}");
        wait_until(&format!("the {name} GOAWAY to be counted"), || {
            metric(&lb.scrape(), "lb_h2_goaways_total", &[("reason", name)]) >= 1.0
        });
        // Others are still served.
        let (v, status, _) = curl(&["--http2-prior-knowledge", &format!("http://{plain}/ok")]);
        assert_eq!((v.as_str(), status), ("2", 200), "after {name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same floods made with Python's `h2` (its state machine for the frames a client may
/// send) and `hyperframe` (for the ones it refuses to make, such as CONTINUATION without an
/// end): each connection prints the error code of the GOAWAY it got.
const PY_FLOODS: &str = r#"
import json, socket, sys
import h2.config, h2.connection, h2.events
from hyperframe.frame import HeadersFrame, ContinuationFrame, DataFrame

host, port = sys.argv[1], int(sys.argv[2])
HEADERS = [(':method', 'GET'), (':scheme', 'http'), (':authority', 'h2.test'), (':path', '/')]

def connect():
    s = socket.create_connection((host, port), timeout=10)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c

def goaway(s, c):
    while True:
        try:
            data = s.recv(65535)
        except (ConnectionResetError, socket.timeout):
            return None
        if not data:
            return None
        try:
            events = c.receive_data(data)
        except Exception:
            continue
        for e in events:
            if isinstance(e, h2.events.ConnectionTerminated):
                return e.error_code

def rapid_reset(s, c):
    for i in range(100):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, HEADERS, end_stream=True)
        c.reset_stream(sid)
    s.sendall(c.data_to_send())

def ping_flood(s, c):
    for i in range(50):
        c.ping(i.to_bytes(8, 'big'))
    s.sendall(c.data_to_send())

def settings_flood(s, c):
    for i in range(50):
        c.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
    s.sendall(c.data_to_send())

def header_list_too_large(s, c):
    c.send_headers(1, HEADERS + [('x-big', 'v' * 5000)], end_stream=True)
    s.sendall(c.data_to_send())

def continuation_flood(s, c):
    block = c.encoder.encode(HEADERS)
    out = HeadersFrame(1, block).serialize()
    for i in range(50):
        out += ContinuationFrame(1, c.encoder.encode([('a', 'b')])).serialize()
    s.sendall(out)

def empty_frames(s, c):
    c.send_headers(1, [(':method', 'POST')] + HEADERS[1:])
    s.sendall(c.data_to_send())
    s.sendall(b''.join(DataFrame(1, b'').serialize() for _ in range(50)))

r = {}
for name, flood in [('rapid_reset', rapid_reset), ('ping_flood', ping_flood),
                    ('settings_flood', settings_flood),
                    ('header_list_too_large', header_list_too_large),
                    ('continuation_flood', continuation_flood), ('empty_frames', empty_frames)]:
    s, c = connect()
    flood(s, c)
    r[name] = goaway(s, c)
    s.close()
print(json.dumps(r), flush=True)
"#;

/// Python's `h2` is installed by `cargo xtask test`.
fn have_python_h2() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import h2, hyperframe"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(
            "http2",
            "Python's h2 is not installed; `cargo xtask test` installs it",
        );
    }
    ok
}

/// Each flood, made by Python's HTTP/2 stack rather than our own frame writer, gets GOAWAY
/// with ENHANCE_YOUR_CALM, is counted under its reason, and lb keeps serving others.
#[test]
fn floods_from_python_h2_get_goaway() {
    if !have_python_h2() || !have("curl") {
        return;
    }
    let dir = scratch_dir("h2-py-floods");
    certs(&dir);
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&h2_config(
        &dir,
        backend.addr,
        "[http2]\nmax_pings_per_second = 10\nmax_settings_per_second = 10\nmax_resets_per_second = 10\nmax_empty_frames_per_second = 10\nmax_continuation_frames = 4\nmax_header_list_size = \"4KiB\"\n",
    ));
    let plain = listener(&lb, "plain");
    let out = Command::new("python3")
        .args(["-c", PY_FLOODS, "127.0.0.1", &plain.port().to_string()])
        .output()
        .expect("python3");
    let codes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "the flood script said: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let scrape = lb.scrape();
    for name in [
        "rapid_reset",
        "ping_flood",
        "settings_flood",
        "header_list_too_large",
        "continuation_flood",
        "empty_frames",
    ] {
        assert_eq!(
            codes[name].as_u64(),
            Some(u64::from(ENHANCE_YOUR_CALM)),
            "{name}: {codes}"
        );
        assert!(
            metric(&scrape, "lb_h2_goaways_total", &[("reason", name)]) >= 1.0,
            "{name} not counted"
        );
    }
    let (v, status, _) = curl(&["--http2-prior-knowledge", &format!("http://{plain}/ok")]);
    assert_eq!((v.as_str(), status), ("2", 200));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client whose flow-control window never opens cannot hold a stream (and lb's buffers)
/// forever: past the send timeout the connection gets GOAWAY.
#[test]
fn a_window_that_never_opens_gets_goaway() {
    let dir = scratch_dir("h2-window");
    certs(&dir);
    // The head first, the body a moment later: the body is streamed (not sent with the
    // head), through the body pump and its own, longer write timeout.
    let backend = Backend::start(std::sync::Arc::new(|_req, res| {
        let _ = res.raw(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n");
        std::thread::sleep(Duration::from_millis(100));
        let _ = res.raw(b"hello world");
    }))
    .expect("backend");
    let lb = Lb::start(&h2_config(
        &dir,
        backend.addr,
        "[http]\nclient_body_timeout = \"1s\"\n",
    ));
    let plain = listener(&lb, "plain");
    let mut s = TcpStream::connect(plain).expect("tcp");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .expect("preface");
    // SETTINGS_INITIAL_WINDOW_SIZE = 0: no DATA may come.
    s.write_all(&frame(0x4, 0, 0, &[0, 4, 0, 0, 0, 0]))
        .expect("settings");
    s.write_all(&frame(0x1, 0x5, 1, &get_headers()))
        .expect("headers");
    assert_eq!(goaway(&mut s), Some(ENHANCE_YOUR_CALM));
    wait_until("the stall to be counted", || {
        metric(
            &lb.scrape(),
            "lb_h2_goaways_total",
            &[("reason", "stalled_window")],
        ) >= 1.0
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// 100 streams in flight on one connection through a reload and then a drain: none lost.
#[test]
fn reload_and_drain_with_100_streams_in_flight_lose_none() {
    if !have("h2load") {
        return;
    }
    let dir = scratch_dir("h2-drain");
    certs(&dir);
    let slow: Handler = std::sync::Arc::new(|_req, res| {
        std::thread::sleep(Duration::from_millis(400));
        res.send(200, &[], b"slow answer");
    });
    let backend = Backend::start(slow).expect("backend");
    let mut lb = Lb::start(&h2_config(&dir, backend.addr, ""));
    let plain = listener(&lb, "plain");
    let run = move || {
        std::thread::spawn(move || {
            let out = Command::new("h2load")
                .args([
                    "-n",
                    "100",
                    "-c",
                    "1",
                    "-m",
                    "100",
                    &format!("http://{plain}/slow"),
                ])
                .output()
                .expect("h2load");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let load = run();
    wait_until("streams in flight", || backend.requests() >= 50);
    let (status, _) = lb.admin("POST", "/reload");
    assert_eq!(status, 200);
    let text = load.join().expect("h2load");
    assert!(
        text.contains("100 succeeded, 0 failed"),
        "through a reload: {text}"
    );

    let before = backend.requests();
    let load = run();
    wait_until("streams in flight again", || {
        backend.requests() >= before + 50
    });
    lb.signal(libc::SIGTERM);
    let text = load.join().expect("h2load");
    assert!(
        text.contains("100 succeeded, 0 failed"),
        "through a drain: {text}"
    );
    assert!(lb.wait_exit().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload applies `protocols` and `[http2]` to new connections.
#[test]
fn reload_applies_protocols_and_http2_limits() {
    if !have("curl") || !have("nghttp") {
        return;
    }
    let backend = Backend::start(echo("b")).expect("backend");
    let base = config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}]\n[[routes]]\ncluster = \"app\"\n",
        backend.addr
    ));
    let lb = Lb::start(&base);
    let url = format!("http://{}/", lb.addr);
    let before = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2-prior-knowledge", &url])
        .output()
        .expect("curl");
    assert!(!before.status.success(), "no h2c before the reload");
    let with_h2c = base.replace(
        "name = \"http\"\naddr = \"127.0.0.1:0\"",
        "name = \"http\"\naddr = \"127.0.0.1:0\"\nprotocols = [\"http/1.1\", \"h2c\"]",
    ) + "[http2]\nmax_concurrent_streams = 7\n";
    std::fs::write(&lb.config_path, with_h2c).expect("write config");
    let (status, body) = lb.admin("POST", "/reload");
    assert_eq!(status, 200, "{body}");
    let (v, status, _) = curl(&["--http2-prior-knowledge", &url]);
    assert_eq!((v.as_str(), status), ("2", 200));
    let out = Command::new("nghttp")
        .args(["-v", "-n", &url])
        .output()
        .expect("nghttp");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("SETTINGS_MAX_CONCURRENT_STREAMS(0x03):7"),
        "the new limit is announced: {text}"
    );

    // A listener that speaks only h2c refuses HTTP/1.1 with a clear answer.
    let h2c_only = base.replace(
        "name = \"http\"\naddr = \"127.0.0.1:0\"",
        "name = \"http\"\naddr = \"127.0.0.1:0\"\nprotocols = [\"h2c\"]",
    );
    std::fs::write(&lb.config_path, h2c_only).expect("write config");
    let (status, body) = lb.admin("POST", "/reload");
    assert_eq!(status, 200, "{body}");
    let (v, status, body) = curl(&["--http1.1", &url]);
    assert_eq!((v.as_str(), status), ("1.1", 505), "{body}");
    assert!(body.contains("http2_only"), "{body}");
    let (v, status, _) = curl(&["--http2-prior-knowledge", &url]);
    assert_eq!((v.as_str(), status), ("2", 200));
}

/// An HTTP/2 backend that closes its connections gracefully, as a server does when it
/// recycles them (grpc-go's MaxConnectionAge, a draining Envoy): a request to `/hold` gets
/// GOAWAY at once (its stream the last one the connection takes) and its answer only once a
/// second connection has come, so the first connection stays open, going away, meanwhile.
/// Any other request is answered, then GOAWAY. Answers name their connection. Prints its
/// port, then `held` once a `/hold` request is held.
const PY_GOAWAY_BACKEND: &str = r#"
import socket, threading
import h2.config, h2.connection, h2.events
from hyperframe.frame import GoAwayFrame

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(64)
print(srv.getsockname()[1], flush=True)
second = threading.Event()

def answer(c, s, sid, n):
    body = ("conn %d" % n).encode()
    c.send_headers(sid, [(":status", "200"), ("content-length", str(len(body)))])
    c.send_data(sid, body, end_stream=True)
    s.sendall(c.data_to_send())

def goaway(c, s, last):
    # Written by hand: h2's own close_connection would refuse to answer the held stream.
    s.sendall(c.data_to_send())
    f = GoAwayFrame(0)
    f.last_stream_id = last
    f.error_code = 0
    s.sendall(f.serialize())

def release(c, s, lock, sid, n):
    second.wait(10)
    with lock:
        answer(c, s, sid, n)

def serve(s, n):
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    lock = threading.Lock()
    with lock:
        c.initiate_connection()
        s.sendall(c.data_to_send())
    paths, gone = {}, False
    while True:
        data = s.recv(65536)
        if not data:
            break
        with lock:
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if gone:
                    continue  # streams past the GOAWAY are not processed
                if isinstance(ev, h2.events.RequestReceived):
                    paths[ev.stream_id] = dict(ev.headers).get(b":path", b"")
                elif isinstance(ev, h2.events.StreamEnded):
                    gone = True
                    if paths.get(ev.stream_id) == b"/hold":
                        goaway(c, s, ev.stream_id)
                        threading.Thread(target=release, args=(c, s, lock, ev.stream_id, n), daemon=True).start()
                        print("held", flush=True)
                    else:
                        answer(c, s, ev.stream_id, n)
                        goaway(c, s, ev.stream_id)
            s.sendall(c.data_to_send())
    s.close()

n = 0
while True:
    s, _ = srv.accept()
    n += 1
    if n >= 2:
        second.set()
    threading.Thread(target=serve, args=(s, n), daemon=True).start()
"#;

/// A Python backend (ours, stopped by its PID however the test ends).
struct PyBackend(std::process::Child);

impl Drop for PyBackend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

type Lines = std::io::Lines<std::io::BufReader<std::process::ChildStdout>>;

/// Starts `script`, which prints its port first; the rest of its output is for the test.
fn python_backend(script: &str) -> (PyBackend, Lines, u16) {
    let mut backend = PyBackend(
        Command::new("python3")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        backend.0.stdout.take().expect("stdout"),
    ));
    let port: u16 = lines
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| l.trim().parse().ok())
        .expect("the backend's port");
    (backend, lines, port)
}

/// lb with one worker and a plain listener (HTTP/1.1 and h2c) in front of an h2c backend.
fn h2c_cluster_config(port: u16) -> String {
    format!(
        "[server]\nworkers = 1\n\n\
         [[listeners]]\nname = \"plain\"\naddr = \"127.0.0.1:0\"\nprotocols = [\"http/1.1\", \"h2c\"]\n\n\
         [admin]\naddr = \"127.0.0.1:0\"\n\n\
         [[clusters]]\nname = \"app\"\nprotocol = \"h2c\"\nendpoints = [{{ addr = \"127.0.0.1:{port}\" }}]\n\
         [[routes]]\nname = \"all\"\ncluster = \"app\"\n"
    )
}

/// A pooled HTTP/2 connection its backend is closing (GOAWAY) while a stream is still in
/// flight on it is not used again: a request that meets it (its stream refused, or opened
/// past the GOAWAY's last stream) goes on a new connection whatever its method. Before, a
/// POST got 502 until the last stream in flight ended.
#[test]
fn a_backend_going_away_costs_no_request() {
    if !have_python_h2() || !have("curl") {
        return;
    }
    let (backend, mut lines, port) = python_backend(PY_GOAWAY_BACKEND);
    // One worker, so the second request meets the first one's pooled connection.
    let lb = Lb::start(&h2c_cluster_config(port));
    let addr = lb.addr;
    let post = move |path: &'static str| {
        curl(&[
            "-X",
            "POST",
            "--data-binary",
            "an order",
            &format!("http://{addr}{path}"),
        ])
    };
    let held = std::thread::spawn(move || post("/hold"));
    // The backend has the first request and has said GOAWAY on its connection.
    assert_eq!(lines.next().and_then(|l| l.ok()).as_deref(), Some("held"));
    let (_, status, body) = post("/orders");
    // (Before the fix the second request failed, so no second connection came and the
    // first was never answered: its curl timed out.)
    assert_eq!((status, body.as_str()), (200, "conn 2"));
    let first = held.join().expect("the held request");
    drop(backend);
    assert_eq!((first.1, first.2.as_str()), (200, "conn 1"));
    drop(lb);
}

/// An HTTP/2 gRPC backend that gives its answers a `content-length` (allowed, and sent by
/// some servers) and then trailers. Prints its port.
const PY_GRPC_WITH_LENGTH: &str = r#"
import socket, threading
import h2.config, h2.connection, h2.events

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(64)
print(srv.getsockname()[1], flush=True)

def serve(s):
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    while True:
        data = s.recv(65536)
        if not data:
            break
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                msg = b"\x00\x00\x00\x00\x02hi"
                c.send_headers(ev.stream_id, [(":status", "200"), ("content-type", "application/grpc"), ("content-length", str(len(msg)))])
                c.send_data(ev.stream_id, msg)
                c.send_headers(ev.stream_id, [("grpc-status", "0"), ("grpc-message", "fine")], end_stream=True)
        s.sendall(c.data_to_send())
    s.close()

while True:
    s, _ = srv.accept()
    threading.Thread(target=serve, args=(s,), daemon=True).start()
"#;

/// A gRPC answer's trailers reach the client even when the backend gave the answer a
/// length (HTTP/1.1 can carry trailers only after a chunked body; they were dropped).
#[test]
fn grpc_trailers_pass_after_a_body_with_a_length() {
    if !have_python_h2() || !have("curl") {
        return;
    }
    let (_backend, _lines, port) = python_backend(PY_GRPC_WITH_LENGTH);
    let lb = Lb::start(&h2c_cluster_config(port));
    let head = grpc_curl(
        &["-X", "POST"],
        &format!("http://{}/test.Echo/Unary", lb.addr),
    );
    assert!(head.contains("grpc-status: 0"), "{head}");
    assert!(head.contains("grpc-message: fine"), "{head}");
}

/// A request whose DATA frames fall short of its `content-length` is reset with
/// PROTOCOL_ERROR (RFC 9113 8.1.1), and the backend never gets a whole request; the
/// connection goes on serving.
#[test]
fn a_body_short_of_its_content_length_is_reset() {
    if !have("curl") {
        return;
    }
    let dir = scratch_dir("h2-length");
    certs(&dir);
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&h2_config(&dir, backend.addr, ""));
    let mut s = h2c(listener(&lb, "plain"));
    // POST / with :authority x and content-length: 10 (HPACK: content-length is static
    // entry 28, a literal without indexing), then 3 bytes and the end of the stream.
    let block = [
        0x83, 0x86, 0x84, 0x41, 0x01, b'x', 0x0f, 0x0d, 0x02, b'1', b'0',
    ];
    s.write_all(&frame(0x1, 0x4, 1, &block)).expect("headers");
    s.write_all(&frame(0x0, 0x1, 1, b"abc")).expect("data");
    let reset = wait_frame(&mut s, |kind, stream, p| {
        (kind == 0x3 && stream == 1 && p.len() >= 4)
            .then(|| u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
    });
    assert_eq!(reset, Some(0x1), "RST_STREAM with PROTOCOL_ERROR");
    let (v, status, _) = curl(&[
        "--http2-prior-knowledge",
        &format!("http://{}/after", listener(&lb, "plain")),
    ]);
    assert_eq!((v.as_str(), status), ("2", 200));
    assert_eq!(
        backend.requests(),
        1,
        "only the whole request reached the backend"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `Host` and `:authority` must agree (RFC 9113 8.3.1): a request whose `Host` names
/// another host than its `:authority` is answered 400, and never reaches the backend.
#[test]
fn a_host_field_that_contradicts_the_authority_is_refused() {
    if !have("curl") {
        return;
    }
    let dir = scratch_dir("h2-authority");
    certs(&dir);
    let backend = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&h2_config(&dir, backend.addr, ""));
    let mut s = h2c(listener(&lb, "plain"));
    // GET / with :authority x and host: y (HPACK: host is static entry 38, a literal
    // without indexing), the stream ended with the head.
    let block = [0x82, 0x86, 0x84, 0x41, 0x01, b'x', 0x0f, 0x17, 0x01, b'y'];
    s.write_all(&frame(0x1, 0x5, 1, &block)).expect("headers");
    // The answer's HEADERS on stream 1 starts with :status 400, HPACK's static entry 12.
    let status = wait_frame(&mut s, |kind, stream, p| {
        (kind == 0x1 && stream == 1 && !p.is_empty()).then(|| u32::from(p[0]))
    });
    assert_eq!(status, Some(0x8c), "an indexed :status 400");
    // The same with a host that agrees is served.
    let (v, status, _) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "host: h2.test",
        &format!("http://{}/agrees", listener(&lb, "plain")),
    ]);
    assert_eq!((v.as_str(), status), ("2", 200));
    assert_eq!(
        backend.requests(),
        1,
        "the refused request never reached the backend"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HTTP/2 backend that takes one stream at a time (SETTINGS_MAX_CONCURRENT_STREAMS 1).
/// It holds its first request's answer until a second request comes, on any connection (or
/// 10 s pass), and answers it "released" (or "timeout"); any later request at once.
/// Prints its port, then `held` when it holds the first.
const PY_ONE_STREAM_BACKEND: &str = r#"
import socket, threading
import h2.config, h2.connection, h2.events, h2.settings

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(64)
print(srv.getsockname()[1], flush=True)
second = threading.Event()
seen = [0]
lock = threading.Lock()

def answer(c, s, sid, text):
    body = text.encode()
    c.send_headers(sid, [(":status", "200"), ("content-length", str(len(body)))])
    c.send_data(sid, body, end_stream=True)
    s.sendall(c.data_to_send())

def release(c, s, clock, sid):
    text = "released" if second.wait(10) else "timeout"
    with clock:
        answer(c, s, sid, text)

def serve(s):
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    c.local_settings = h2.settings.Settings(client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1})
    clock = threading.Lock()
    with clock:
        c.initiate_connection()
        s.sendall(c.data_to_send())
    while True:
        data = s.recv(65536)
        if not data:
            break
        with clock:
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    with lock:
                        seen[0] += 1
                        n = seen[0]
                    if n == 1:
                        threading.Thread(target=release, args=(c, s, clock, ev.stream_id), daemon=True).start()
                        print("held", flush=True)
                    else:
                        second.set()
                        answer(c, s, ev.stream_id, "second")
            s.sendall(c.data_to_send())
    s.close()

while True:
    s, _ = srv.accept()
    threading.Thread(target=serve, args=(s,), daemon=True).start()
"#;

/// lb puts no more streams on a backend connection than the backend's
/// SETTINGS_MAX_CONCURRENT_STREAMS allows: with one stream in flight on the only
/// connection, a second request opens another connection rather than queueing behind it.
#[test]
fn a_backend_stream_limit_opens_another_connection() {
    if !have_python_h2() || !have("curl") {
        return;
    }
    let (_backend, mut lines, port) = python_backend(PY_ONE_STREAM_BACKEND);
    let lb = Lb::start(&h2c_cluster_config(port));
    let addr = lb.addr;
    let first = std::thread::spawn(move || curl(&[&format!("http://{addr}/first")]));
    assert_eq!(lines.next().and_then(|l| l.ok()).as_deref(), Some("held"));
    let (_, status, body) = curl(&[&format!("http://{addr}/second")]);
    assert_eq!((status, body.as_str()), (200, "second"));
    let (_, status, body) = first.join().expect("the first request");
    assert_eq!(
        (status, body.as_str()),
        (200, "released"),
        "the second queued behind it"
    );
}
