//! gRPC end to end through lb with real gRPC code on both sides (Python's grpcio, from the
//! package registry): unary, server-streaming, client-streaming and bidirectional calls
//! from an HTTP/2 client through lb to an h2c backend, trailers (grpc-status,
//! grpc-message) passed through, a backend's error status, `grpc-timeout` honoured by lb
//! as the response deadline, and lb's own failures answered as gRPC statuses.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;

const SERVER: &str = r#"
import sys, time, grpc
from concurrent import futures
def unary(req, ctx):
    if req == b'fail':
        ctx.abort(grpc.StatusCode.NOT_FOUND, 'no such thing')
    if req.startswith(b'sleep'):
        time.sleep(float(req[5:]))
    return b'echo:' + req
def server_stream(req, ctx):
    for i in range(int(req)):
        yield b'item%d' % i
def client_stream(it, ctx):
    return b'+'.join(it)
def bidi(it, ctx):
    for m in it:
        yield b'bidi:' + m
def flaky(req, ctx):
    if len(sys.argv) > 3 and sys.argv[3] == 'flaky':
        ctx.abort(grpc.StatusCode.UNAVAILABLE, 'this one is down')
    return b'ok'
def health(req, ctx):
    # HealthCheckResponse { status: SERVING (1) }, or NOT_SERVING (2) on the flaky server.
    flaky = len(sys.argv) > 3 and sys.argv[3] == 'flaky'
    return b'\x08\x02' if flaky else b'\x08\x01'
health_handler = grpc.method_handlers_generic_handler('grpc.health.v1.Health', {
    'Check': grpc.unary_unary_rpc_method_handler(health),
})
handler = grpc.method_handlers_generic_handler('test.Echo', {
    'Flaky': grpc.unary_unary_rpc_method_handler(flaky),
    'Unary': grpc.unary_unary_rpc_method_handler(unary),
    'ServerStream': grpc.unary_stream_rpc_method_handler(server_stream),
    'ClientStream': grpc.stream_unary_rpc_method_handler(client_stream),
    'Bidi': grpc.stream_stream_rpc_method_handler(bidi),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((handler, health_handler))
port = server.add_insecure_port('127.0.0.1:0')
# With a certificate and key: a TLS port too (HTTP/2 over TLS, ALPN h2).
tls_port = 0
if len(sys.argv) > 2:
    creds = grpc.ssl_server_credentials([(open(sys.argv[2], 'rb').read(), open(sys.argv[1], 'rb').read())])
    tls_port = server.add_secure_port('127.0.0.1:0', creds)
server.start()
print(port, tls_port, flush=True)
server.wait_for_termination()
"#;

const CLIENT: &str = r#"
import sys, json, grpc, queue
ch = grpc.insecure_channel(sys.argv[1])
unary = ch.unary_unary('/test.Echo/Unary')
r = {}
r['unary'] = unary(b'hello', timeout=10).decode()
r['server_stream'] = [x.decode() for x in ch.unary_stream('/test.Echo/ServerStream')(b'3', timeout=10)]
r['client_stream'] = ch.stream_unary('/test.Echo/ClientStream')(iter([b'a', b'b', b'c']), timeout=10).decode()
r['bidi'] = [x.decode() for x in ch.stream_stream('/test.Echo/Bidi')(iter([b'x', b'y']), timeout=10)]
# Ping-pong: each message waits for the answer to the one before, so the call only ends if
# answers flow while the request stream is still open (full duplex).
answers, got = queue.Queue(), []
def pings():
    for m in [b'p1', b'p2', b'p3']:
        yield m
        got.append(answers.get(timeout=5))
try:
    for x in ch.stream_stream('/test.Echo/Bidi')(pings(), timeout=10):
        answers.put(x.decode())
    r['pingpong'] = got
except grpc.RpcError as e:
    r['pingpong'] = [e.code().name, e.details(), got]
try:
    unary(b'fail', timeout=10)
except grpc.RpcError as e:
    r['error'] = [e.code().name, e.details()]
print(json.dumps(r), flush=True)
"#;

/// A call routed (by authority) to a cluster nobody listens on: the code and message lb
/// answered with.
const FAILING: &str = r#"
import sys, json, grpc
r = {}
ch = grpc.insecure_channel(sys.argv[1], options=[('grpc.default_authority', 'gone.test')])
try:
    ch.unary_unary('/test.Echo/Unary')(b'x', timeout=10)
except grpc.RpcError as e:
    r['unavailable'] = [e.code().name, e.details()]
print(json.dumps(r), flush=True)
"#;

/// `n` unary calls with the authority `authority`: "OK", or the code and message of each.
const CALLS: &str = r#"
import sys, json, grpc
ch = grpc.insecure_channel(sys.argv[1], options=[('grpc.default_authority', sys.argv[2])])
r = []
for _ in range(int(sys.argv[3])):
    try:
        ch.unary_unary('/test.Echo/Unary')(b'x', timeout=10)
        r.append('OK')
    except grpc.RpcError as e:
        r.append([e.code().name, e.details()])
print(json.dumps(r), flush=True)
"#;

fn have_grpc() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip(
            "grpc",
            "Python's grpcio is not installed; `cargo xtask test` installs it",
        );
    }
    ok
}

/// The Python gRPC server (plain and TLS ports); killed on drop.
struct GrpcServer {
    child: Child,
    addr: SocketAddr,
    tls_addr: SocketAddr,
}

impl GrpcServer {
    fn start(cert: &std::path::Path, key: &std::path::Path, mode: &str) -> GrpcServer {
        let mut child = Command::new("python3")
            .args(["-c", SERVER])
            .arg(cert)
            .arg(key)
            .arg(mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 gRPC server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("port line");
        let mut ports = line
            .split_whitespace()
            .map(|p| p.parse::<u16>().expect("port"));
        let (port, tls_port) = (ports.next().expect("port"), ports.next().expect("TLS port"));
        GrpcServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tls_addr: SocketAddr::from(([127, 0, 0, 1], tls_port)),
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python(script: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .args(["-c", script])
        .args(args)
        .output()
        .expect("python3");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "client said: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The HTTP/1.1 and unreachable backends the gRPC test's clusters point at.
struct Others {
    /// Nobody listens.
    dead: SocketAddr,
    /// Answers after 3 s.
    slow: SocketAddr,
    /// Connecting times out.
    stuck: SocketAddr,
    /// Answers every call with a plain HTTP 503.
    http503: SocketAddr,
    /// Answers every call with gRPC's OK.
    http_ok: SocketAddr,
}

fn grpc_config(
    backend: &GrpcServer,
    flaky: &GrpcServer,
    others: &Others,
    ca: &std::path::Path,
    access_log: &std::path::Path,
) -> String {
    let (plain, tls, down, down_tls) = (backend.addr, backend.tls_addr, flaky.addr, flaky.tls_addr);
    let Others {
        dead,
        slow,
        stuck,
        http503,
        http_ok,
    } = others;
    format!(
        "[server]\nworkers = 2\ndrain_timeout = \"5s\"\n\n\
         [[listeners]]\nname = \"h2c\"\naddr = \"127.0.0.1:0\"\nprotocols = [\"http/1.1\", \"h2c\"]\n\n\
         [admin]\naddr = \"127.0.0.1:0\"\n\n\
         [access_log]\npath = \"{log}\"\n\n\
         [[clusters]]\nname = \"grpc\"\nprotocol = \"h2c\"\nendpoints = [{{ addr = \"{plain}\" }}]\n\
         [[clusters]]\nname = \"grpc-tls\"\nprotocol = \"h2\"\nendpoints = [{{ addr = \"{tls}\" }}]\n\
         tls = {{ ca = \"{}\", server_name = \"grpc.test\" }}\n\
         [[routes]]\nname = \"tls\"\nhost = \"tls.test\"\ncluster = \"grpc-tls\"\n\
         [[clusters]]\nname = \"gone\"\nprotocol = \"h2c\"\nendpoints = [{{ addr = \"{dead}\" }}]\n\
         [[clusters]]\nname = \"slow\"\nendpoints = [{{ addr = \"{slow}\" }}]\n\
         [[clusters]]\nname = \"five-oh-three\"\nendpoints = [{{ addr = \"{http503}\" }}, {{ addr = \"{http_ok}\" }}]\n\
         retry = {{ attempts = 2, retry_on = [\"5xx\", \"reset\", \"grpc:UNAVAILABLE\"] }}\n\
         [[clusters]]\nname = \"stuck\"\nconnect_timeout = \"200ms\"\nendpoints = [{{ addr = \"{stuck}\" }}]\n\
         [[clusters]]\nname = \"retrying\"\nprotocol = \"h2c\"\nendpoints = [{{ addr = \"{down}\" }}, {{ addr = \"{plain}\" }}]\n\
         retry = {{ attempts = 2, retry_on = [\"connect_failure\", \"grpc:UNAVAILABLE\"] }}\n\
         [[clusters]]\nname = \"not-retrying\"\nprotocol = \"h2c\"\nendpoints = [{{ addr = \"{down}\" }}]\n\
         [[clusters]]\nname = \"checked\"\nprotocol = \"h2\"\nendpoints = [{{ addr = \"{tls}\" }}, {{ addr = \"{down_tls}\" }}]\n\
         tls = {{ ca = \"{ca}\", server_name = \"grpc.test\" }}\n\
         health_check = {{ grpc_service = \"\", interval = \"100ms\", unhealthy_threshold = 1 }}\n\
         [[clusters]]\nname = \"checked-plain\"\nprotocol = \"h2c\"\nendpoints = [{{ addr = \"{plain}\" }}]\n\
         health_check = {{ grpc_service = \"test.Echo\", interval = \"100ms\", unhealthy_threshold = 1 }}\n\
         [[routes]]\nname = \"retrying\"\nhost = \"retry.test\"\ncluster = \"retrying\"\n\
         [[routes]]\nname = \"not-retrying\"\nhost = \"noretry.test\"\ncluster = \"not-retrying\"\n\
         [[routes]]\nname = \"slow\"\npath_prefix = \"/slow\"\ncluster = \"slow\"\n\
         [[routes]]\nname = \"five-oh-three\"\nhost = \"h503.test\"\ncluster = \"five-oh-three\"\n\
         [[routes]]\nname = \"stuck\"\npath_prefix = \"/stuck\"\ncluster = \"stuck\"\n\
         [[routes]]\nname = \"gone\"\nhost = \"gone.test\"\ncluster = \"gone\"\n\
         [[clusters]]\nname = \"sick\"\nprotocol = \"h2c\"\npanic_threshold = 0\nendpoints = [{{ addr = \"{dead}\" }}]\n\
         health_check = {{ grpc_service = \"\", interval = \"100ms\", unhealthy_threshold = 1 }}\n\
         [[routes]]\nname = \"sick\"\nhost = \"sick.test\"\ncluster = \"sick\"\n\
         [[routes]]\nname = \"limited\"\nhost = \"limited.test\"\ncluster = \"grpc\"\n\
         rate_limit = {{ key = \"client_ip\", limits = [{{ requests = 1, per = \"1m\" }}] }}\n\
         [[routes]]\nname = \"grpc\"\ncluster = \"grpc\"\n",
        ca.display(),
        ca = ca.display(),
        log = access_log.display()
    )
}

/// A listener that never accepts, with its one-slot accept queue filled: a new connection's
/// SYN goes unanswered, so connecting times out. (The socket, the connection holding the
/// slot, the address.)
fn full_backlog() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    s.listen(0).expect("listen");
    let addr = s
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("an IP address");
    let mut held = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)) {
            Ok(c) => held.push(c),
            // The queue is full.
            Err(_) => return (s, held, addr),
        }
    }
    panic!("the accept queue of a listen(0) socket never filled");
}

/// A CA and a certificate for `grpc.test` in `dir`.
fn certs(dir: &std::path::Path) {
    write_ca_and_cert(dir, "grpc test CA", &["grpc.test"]);
}

/// Six calls of the method the flaky backend fails with UNAVAILABLE, with `authority`.
const FLAKY_CALLS: &str = r#"
import sys, json, grpc
ch = grpc.insecure_channel(sys.argv[1], options=[('grpc.default_authority', sys.argv[2])])
out = []
for _ in range(6):
    try:
        out.append(ch.unary_unary('/test.Echo/Flaky')(b'x', timeout=10).decode())
    except grpc.RpcError as e:
        out.append(e.code().name)
print(json.dumps(out), flush=True)
"#;

/// One unary call with `authority` as the channel's authority.
const TLS_CALL: &str = r#"
import sys, json, grpc
ch = grpc.insecure_channel(sys.argv[1], options=[('grpc.default_authority', sys.argv[2])])
print(json.dumps({'unary': ch.unary_unary('/test.Echo/Unary')(b'over tls', timeout=10).decode()}), flush=True)
"#;

#[test]
fn grpc_calls_of_every_kind_pass_through_with_trailers_and_deadlines() {
    if !have_grpc() {
        return;
    }
    let dir = scratch_dir("grpc");
    certs(&dir);
    let server = GrpcServer::start(&dir.join("cert.pem"), &dir.join("key.pem"), "normal");
    let flaky = GrpcServer::start(&dir.join("cert.pem"), &dir.join("key.pem"), "flaky");
    // An HTTP/1.1 backend that knows nothing of gRPC deadlines and answers after 3 s.
    let slow = Backend::start(std::sync::Arc::new(|_req, res| {
        std::thread::sleep(std::time::Duration::from_secs(3));
        res.send(200, &[("content-type", "application/grpc")], b"");
    }))
    .expect("backend");
    // A backend whose accept queue is full: connecting to it times out.
    let (_stuck, _held, stuck_addr) = full_backlog();
    // Two HTTP/1.1 backends of one cluster: one answers every call with a plain HTTP 503
    // (no gRPC status), the other with gRPC's OK (a status alone).
    // Each counts the calls it answered.
    let hits = std::sync::Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let h = hits.clone();
    let http503 = Backend::start(std::sync::Arc::new(move |_req, res| {
        h[0].fetch_add(1, Ordering::SeqCst);
        res.send(503, &[("content-type", "text/plain")], b"down");
    }))
    .expect("backend");
    let h = hits.clone();
    let http_ok = Backend::start(std::sync::Arc::new(move |_req, res| {
        h[1].fetch_add(1, Ordering::SeqCst);
        res.send(
            200,
            &[("content-type", "application/grpc"), ("grpc-status", "0")],
            b"",
        );
    }))
    .expect("backend");
    let lb = Lb::start(&grpc_config(
        &server,
        &flaky,
        &Others {
            dead: dead_addr(),
            slow: slow.addr,
            stuck: stuck_addr,
            http503: http503.addr,
            http_ok: http_ok.addr,
        },
        &dir.join("ca.pem"),
        &dir.join("access.log"),
    ));
    let target = lb.addr.to_string();
    let r = python(CLIENT, &[&target]);
    assert_eq!(r["unary"], "echo:hello", "{r}");
    assert_eq!(
        r["server_stream"],
        serde_json::json!(["item0", "item1", "item2"]),
        "{r}"
    );
    assert_eq!(r["client_stream"], "a+b+c", "{r}");
    assert_eq!(r["bidi"], serde_json::json!(["bidi:x", "bidi:y"]), "{r}");
    assert_eq!(
        r["pingpong"],
        serde_json::json!(["bidi:p1", "bidi:p2", "bidi:p3"]),
        "{r}"
    );
    // The backend's error status and message come through as trailers.
    assert_eq!(
        r["error"],
        serde_json::json!(["NOT_FOUND", "no such thing"]),
        "{r}"
    );
    // The same backend over TLS (a cluster with protocol = "h2": ALPN h2, verified).
    let r = python(TLS_CALL, &[&target, "tls.test"]);
    assert_eq!(r["unary"], "echo:over tls", "{r}");

    // Retries on the gRPC statuses the operator lists: the flaky endpoint's UNAVAILABLE
    // (answered as a status alone) goes to the other endpoint; without the policy it
    // reaches the client.
    let r = python(FLAKY_CALLS, &[&target, "retry.test"]);
    assert_eq!(
        r,
        serde_json::json!(["ok", "ok", "ok", "ok", "ok", "ok"]),
        "{r}"
    );
    let r = python(FLAKY_CALLS, &[&target, "noretry.test"]);
    assert_eq!(r[0], "UNAVAILABLE", "{r}");

    let m = lb.scrape();
    assert!(
        metric(&m, "lb_retries_total", &[("cluster", "retrying")]) >= 1.0,
        "the flaky endpoint was tried and retried"
    );

    // A cluster that cannot be reached is UNAVAILABLE, as a gRPC status, not an HTTP error.
    let r = python(FAILING, &[&target]);
    assert_eq!(r["unavailable"][0], "UNAVAILABLE", "{r}");
    assert!(
        r["unavailable"][1]
            .as_str()
            .unwrap_or("")
            .contains("refused"),
        "lb's reason: {r}"
    );

    // A rate limit is RESOURCE_EXHAUSTED; a cluster whose only endpoint failed its health
    // check is UNAVAILABLE, with lb's reason.
    let r = python(CALLS, &[&target, "limited.test", "2"]);
    assert_eq!(r[0], "OK", "{r}");
    assert_eq!(r[1][0], "RESOURCE_EXHAUSTED", "{r}");
    wait_until("the sick endpoint marked unhealthy", || {
        lb.scrape().iter().any(|s| {
            s.name == "lb_endpoint_healthy"
                && s.labels.get("cluster").map(String::as_str) == Some("sick")
                && s.value == 0.0
        })
    });
    let r = python(CALLS, &[&target, "sick.test", "1"]);
    assert_eq!(r[0][0], "UNAVAILABLE", "{r}");
    assert!(
        r[0][1].as_str().unwrap_or("").contains("no endpoint"),
        "lb's reason: {r}"
    );

    // lb honours grpc-timeout as the response deadline: a raw gRPC call (curl, so that no
    // client deadline races lb's) asking for 300 ms, to a backend that ignores it, gets
    // DEADLINE_EXCEEDED from lb well before the backend's 3 s.
    let frame = lb.dir.join("frame.bin");
    let payload = b"sleep3";
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(payload);
    std::fs::write(&frame, bytes).expect("frame");
    let started = std::time::Instant::now();
    let body = format!("@{}", frame.display());
    let head = grpc_curl(
        &["-H", "grpc-timeout: 300m", "--data-binary", &body],
        &format!("http://{target}/slow/test.Echo/Unary"),
    );
    let took = started.elapsed();
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("grpc-status: 4"), "DEADLINE_EXCEEDED: {head}");
    assert!(
        head.contains("grpc-message: the backend did not answer in time"),
        "lb's: {head}"
    );
    assert!(
        took < std::time::Duration::from_secs(2),
        "ended by lb at 300 ms: {took:?}"
    );

    // lb maps its own failures from what failed, not from the HTTP status it stands for:
    // a connect timeout (504 over HTTP/1.1) is UNAVAILABLE for gRPC, with lb's reason.
    let head = grpc_curl(
        &["--data-binary", &body],
        &format!("http://{target}/stuck/test.Echo/Unary"),
    );
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("grpc-status: 14"), "UNAVAILABLE: {head}");
    assert!(
        head.contains("grpc-message: connecting to the backend timed out"),
        "lb's: {head}"
    );

    // Only the gRPC statuses listed go again: a plain HTTP 503, which "5xx" retries for a
    // repeatable request, reaches a gRPC call's client (as UNAVAILABLE) from the endpoint
    // that answered it: each call reaches one backend once. (The calls carry no message, so
    // each could be sent again: nothing stops a retry but the policy.)
    let statuses: Vec<String> = (0..6)
        .map(|_| {
            let head = grpc_curl(
                &["-H", "host: h503.test", "-X", "POST"],
                &format!("http://{target}/test.Echo/Unary"),
            );
            head.lines()
                .find_map(|l| l.strip_prefix("grpc-status: "))
                .unwrap_or("none")
                .trim()
                .to_string()
        })
        .collect();
    let (down, ok) = (
        hits[0].load(Ordering::SeqCst),
        hits[1].load(Ordering::SeqCst),
    );
    assert_eq!(down + ok, 6, "a 503 was retried: {statuses:?}");
    assert!(down >= 1 && ok >= 1, "{down} {ok}");
    assert_eq!(
        statuses.iter().filter(|s| *s == "14").count(),
        down,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "0").count(),
        ok,
        "{statuses:?}"
    );

    // The access log names each call's gRPC method and the status its client got: the
    // backend's, and lb's own for the cluster nobody listens on. (Workers flush their lines
    // at least once a second.)
    let logged = |method: &str, status: &str| {
        std::fs::read_to_string(dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| {
                l["protocol"] == "HTTP/2"
                    && l["grpc_method"] == method
                    && l["grpc_status"] == status
            })
    };
    for (method, status) in [
        ("test.Echo/Unary", "OK"),
        ("test.Echo/Unary", "NOT_FOUND"),
        ("test.Echo/Bidi", "OK"),
        ("test.Echo/Unary", "UNAVAILABLE"),
        // The method is the whole path, as gRPC defines it (this route has a prefix).
        ("slow/test.Echo/Unary", "DEADLINE_EXCEEDED"),
    ] {
        wait_until(&format!("{method} {status} in the access log"), || {
            logged(method, status)
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}
