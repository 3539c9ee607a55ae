//! Differential property test: for any request head lb accepts and forwards, the head it
//! writes upstream parses back to the same method, the normalised target, the same framing
//! and body length, without hop-by-hop headers or headers named in `Connection`.

#[path = "common/forwarded.rs"]
mod forwarded;

use std::sync::Arc;

const CONFIG: &str = r#"
[[listeners]]
addr = "127.0.0.1:0"

[http]
websocket = false

[[clusters]]
name = "app"
endpoints = [{ addr = "127.0.0.1:9" }]

[[routes]]
path_prefix = "/"
cluster = "app"
"#;

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE"];
const TARGETS: [&str; 12] = [
    "/",
    "/a/b",
    "/a/../b",
    "/%61%2e%2E/c",
    "//x//y/",
    "/p?q=1&r=%2e",
    "?only=query",
    "http://h.example/abs?x",
    "/a/./b/.",
    "/~user/%7e",
    "/x%3a",
    "*",
];
const HEADERS: [&str; 20] = [
    "Host: a.example",
    "Host: b.example:8080",
    "Content-Length: 5",
    "Content-Length: 0",
    "Transfer-Encoding: chunked",
    "Connection: close",
    "Connection: keep-alive, X-Secret",
    "Connection: Host, Content-Length, Transfer-Encoding, X-Other",
    "X-Secret: s",
    "X-Other: o",
    "Keep-Alive: 5",
    "Proxy-Connection: keep-alive",
    "TE: trailers",
    "Trailer: X-Sum",
    "Upgrade: h2c",
    "Expect: 100-continue",
    "X-Forwarded-For: 6.6.6.6",
    "Forwarded: for=6.6.6.6",
    "Accept: */*",
    "X-Plain: value",
];

#[test]
fn forwarded_heads_keep_meaning_and_drop_hop_by_hop() {
    let config = lb::config::Config::parse(CONFIG, std::path::Path::new("t")).expect("config");
    let snap = Arc::new(
        lb::snapshot::Snapshot::build(config, CONFIG, &lb::snapshot::StateRegistry::default())
            .expect("snapshot"),
    );
    let mut rng = fastrand::Rng::with_seed(0xd1ff);
    let (mut forwarded_count, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let method = METHODS[rng.usize(..METHODS.len())];
        let target = TARGETS[rng.usize(..TARGETS.len())];
        let minor = if rng.u8(..10) == 0 { 0 } else { 1 };
        let mut raw = format!("{method} {target} HTTP/1.{minor}\r\n");
        for _ in 0..rng.usize(0..7) {
            raw.push_str(HEADERS[rng.usize(..HEADERS.len())]);
            raw.push_str("\r\n");
        }
        raw.push_str("\r\n");
        match lb::proxy::explain::forwarded_head(snap.clone(), raw.as_bytes()) {
            Some(out) => {
                forwarded_count += 1;
                if let Err(e) = forwarded::check(raw.as_bytes(), &out) {
                    panic!(
                        "{e}\nsent:\n{raw}\nforwarded:\n{}",
                        String::from_utf8_lossy(&out)
                    );
                }
            }
            None => refused += 1,
        }
    }
    // The generator must exercise both sides, or the test proves nothing.
    assert!(forwarded_count > 3_000, "only {forwarded_count} forwarded");
    assert!(refused > 1_000, "only {refused} refused");
}
