//! Request validation per API version, with curl as the client (HTTP/1.1 and h2c): an
//! OpenAPI 3.0 document in YAML with `$ref`s across it checks v2's bodies, parameters and
//! content types while v1 goes unchecked; report mode passes and counts; the body cap answers
//! 413 or passes; chunked and `Expect: 100-continue` bodies are read whole and still reach
//! the backend intact; `lb check` refuses a broken spec by its path.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::Value;

const USERS_V2: &str = r##"openapi: 3.0.3
info: {title: users, version: "2"}
servers:
  - url: https://api.example.com/api/v2
paths:
  /users:
    get:
      parameters:
        - $ref: '#/components/parameters/Limit'
        - {name: X-Tenant, in: header, required: true, schema: {type: string, pattern: '^[a-z]+$'}}
      responses: {'200': {description: ok}}
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: {$ref: '#/components/schemas/NewUser'}
      responses: {'201': {description: created}}
  /users/{id}:
    get:
      parameters:
        - {name: id, in: path, required: true, schema: {type: integer, minimum: 1}}
      responses: {'200': {description: ok}}
components:
  parameters:
    Limit: {name: limit, in: query, required: true, schema: {type: integer, minimum: 1, maximum: 100}}
  schemas:
    NewUser:
      type: object
      required: [email, address]
      properties:
        email: {type: string, minLength: 3}
        nickname: {type: string, nullable: true}
        address: {$ref: '#/components/schemas/Address'}
    Address:
      type: object
      required: [city]
      properties:
        city: {type: string, minLength: 1}
"##;

const NOTE_SCHEMA: &str =
    r#"{"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}"#;

struct Api {
    _v1: Backend,
    _v2: Backend,
    lb: Lb,
    specs: PathBuf,
    log: PathBuf,
    h2c: std::net::SocketAddr,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.specs);
    }
}

fn specs_dir() -> PathBuf {
    let dir = scratch_dir("validation-specs");
    std::fs::write(dir.join("users-v2.yaml"), USERS_V2).expect("spec");
    std::fs::write(dir.join("note.json"), NOTE_SCHEMA).expect("schema");
    dir
}

/// v1 and v2 of a users API by path, v2 validated; a report-mode route; two capped routes
/// (one refuses, one passes); a plain listener that also speaks h2c.
fn start() -> Api {
    let v1 = Backend::start(echo("users-v1")).expect("backend");
    let v2 = Backend::start(echo("users-v2")).expect("backend");
    let specs = specs_dir();
    let log = specs.join("access.log");
    let spec = specs.join("users-v2.yaml");
    let note = specs.join("note.json");
    let cfg = format!(
        "[server]\nworkers = 2\ndrain_timeout = \"10s\"\n\n\
         [[listeners]]\nname = \"http\"\naddr = \"127.0.0.1:0\"\nprotocols = [\"http/1.1\", \"h2c\"]\n\n\
         [admin]\naddr = \"127.0.0.1:0\"\n\n\
         [access_log]\npath = \"{log}\"\n\
         [[clusters]]\nname = \"v1\"\nendpoints = [{{ addr = \"{v1}\" }}]\n\
         [[clusters]]\nname = \"v2\"\nendpoints = [{{ addr = \"{v2}\" }}]\n\
         [[routes]]\nname = \"users\"\npath_prefix = \"/api\"\n\
         versions = {{ from = \"path:/api/v{{version}}/\", map = {{ \"1\" = \"v1\", \
         \"2\" = {{ cluster = \"v2\", validate = {{ openapi = \"{spec}\" }} }} }} }}\n\
         [[routes]]\nname = \"report\"\npath_prefix = \"/report\"\ncluster = \"v2\"\n\
         validate = {{ openapi = \"{spec}\", prefix = \"/report\", mode = \"report\" }}\n\
         [[routes]]\nname = \"capped\"\npath_prefix = \"/capped\"\ncluster = \"v2\"\n\
         validate = {{ schema = {{ POST = \"{note}\" }}, max_body = \"1KiB\" }}\n\
         [[routes]]\nname = \"passed\"\npath_prefix = \"/passed\"\ncluster = \"v2\"\n\
         validate = {{ schema = {{ POST = \"{note}\" }}, max_body = \"1KiB\", oversize = \"pass\" }}\n",
        log = log.display(),
        v1 = v1.addr,
        v2 = v2.addr,
        spec = spec.display(),
        note = note.display(),
    );
    let lb = Lb::start(&cfg);
    let h2c = lb.addr;
    Api {
        _v1: v1,
        _v2: v2,
        lb,
        specs,
        log,
        h2c,
    }
}

/// What curl got: status, content type, body.
struct Got {
    status: u16,
    content_type: String,
    body: String,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The problem's failures as (in, pointer or name).
    fn failures(&self) -> Vec<(String, String)> {
        let p = self.json();
        let mut out: Vec<(String, String)> = p["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no errors: {p}"))
            .iter()
            .map(|e| {
                let at = e["pointer"].as_str().or(e["name"].as_str()).unwrap_or("");
                (e["in"].as_str().unwrap_or("").to_string(), at.to_string())
            })
            .collect();
        out.sort();
        out
    }
}

fn curl(args: &[&str]) -> Got {
    let (body, tail, _, _) = curl_with(args, "%{http_code} %{content_type}");
    let (status, ct) = tail.split_once(' ').unwrap_or((&tail, ""));
    Got {
        status: status.parse().unwrap_or(0),
        content_type: ct.to_string(),
        body,
    }
}

fn url(a: &Api, path: &str) -> String {
    format!("http://{}{path}", a.lb.addr)
}

fn post_json(a: &Api, path: &str, body: &str, extra: &[&str]) -> Got {
    let u = url(a, path);
    let mut args = vec![
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
    ];
    args.extend_from_slice(extra);
    args.push(&u);
    curl(&args)
}

const GOOD_USER: &str =
    r#"{"email":"ada@example.com","nickname":null,"address":{"city":"London"}}"#;

#[test]
fn bodies_parameters_and_content_types_are_checked_per_version() {
    let a = start();
    // A valid body reaches v2 whole.
    let r = post_json(&a, "/api/v2/users", GOOD_USER, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["backend"], "users-v2");
    assert_eq!(r.json()["body_length"], GOOD_USER.len());
    // Invalid: each failing field by JSON pointer, through $refs across the document.
    let r = post_json(
        &a,
        "/api/v2/users",
        r#"{"email":"a","address":{"city":""},"nickname":7}"#,
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(
        r.failures(),
        [
            ("body".into(), "/address/city".into()),
            ("body".into(), "/email".into()),
            ("body".into(), "/nickname".into())
        ]
    );
    assert_eq!(r.json()["status"], 400);
    // A missing required field, and a body that is not JSON.
    let r = post_json(&a, "/api/v2/users", r#"{"email":"ada@example.com"}"#, &[]);
    assert_eq!(
        (r.status, r.failures()),
        (400, vec![("body".into(), "/address".into())])
    );
    assert!(r.body.contains("address"), "{}", r.body);
    let r = post_json(&a, "/api/v2/users", "{\"email\": ", &[]);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("not JSON"), "{}", r.body);
    // The content type.
    let u = url(&a, "/api/v2/users");
    let r = curl(&[
        "-H",
        "Content-Type: text/plain",
        "--data-binary",
        "hello",
        &u,
    ]);
    assert_eq!(r.status, 415, "{}", r.body);
    assert_eq!(r.failures(), [("content-type".into(), "text/plain".into())]);
    // A required body.
    let r = curl(&["-X", "POST", &u]);
    assert_eq!(
        (r.status, r.failures()),
        (400, vec![("body".into(), "".into())])
    );
    // Required query and header parameters, and their types.
    let r = curl(&[&url(&a, "/api/v2/users")]);
    assert_eq!(
        (r.status, r.failures()),
        (
            400,
            vec![
                ("header".into(), "X-Tenant".into()),
                ("query".into(), "limit".into())
            ]
        )
    );
    let r = curl(&["-H", "X-Tenant: ACME", &url(&a, "/api/v2/users?limit=abc")]);
    assert_eq!(
        r.failures(),
        [
            ("header".into(), "X-Tenant".into()),
            ("query".into(), "limit".into())
        ]
    );
    let r = curl(&["-H", "X-Tenant: acme", &url(&a, "/api/v2/users?limit=20")]);
    assert_eq!(r.status, 200, "{}", r.body);
    // Path parameters' types.
    assert_eq!(curl(&[&url(&a, "/api/v2/users/17")]).status, 200);
    let r = curl(&[&url(&a, "/api/v2/users/x17")]);
    assert_eq!(
        (r.status, r.failures()),
        (400, vec![("path".into(), "id".into())])
    );
    assert_eq!(
        curl(&[&url(&a, "/api/v2/users/0")]).status,
        400,
        "minimum 1"
    );
    // Paths and methods the spec does not have.
    let r = curl(&[&url(&a, "/api/v2/orders")]);
    assert_eq!(r.status, 404, "{}", r.body);
    let r = curl(&["-X", "DELETE", &url(&a, "/api/v2/users/17")]);
    assert_eq!(r.status, 405, "{}", r.body);
    // v1 is not validated.
    let r = post_json(&a, "/api/v1/users", "{\"email\": ", &[]);
    assert_eq!(
        (r.status, r.json()["backend"].as_str()),
        (200, Some("users-v1"))
    );

    // Chunked and 100-continue bodies are read whole, checked, and forwarded intact.
    let chunked = ["-H", "Transfer-Encoding: chunked"];
    let r = post_json(&a, "/api/v2/users", GOOD_USER, &chunked);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["body_length"], GOOD_USER.len());
    let r = post_json(&a, "/api/v2/users", r#"{"email":"a"}"#, &chunked);
    assert_eq!(r.status, 400);
    let r = post_json(
        &a,
        "/api/v2/users",
        GOOD_USER,
        &["-H", "Expect: 100-continue"],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["body_length"], GOOD_USER.len());

    // HTTP/2 takes the same path.
    let h2 = format!("http://{}/api/v2/users", a.h2c);
    let r = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        GOOD_USER,
        &h2,
    ]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["body_length"], GOOD_USER.len());
    let r = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        r#"{"email":"a"}"#,
        &h2,
    ]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json");

    // Counted by route, version and result.
    let samples = a.lb.scrape();
    let count = |result: &str| {
        metric(
            &samples,
            "lb_api_validations_total",
            &[("route", "users"), ("version", "2"), ("result", result)],
        )
    };
    assert_eq!(count("valid"), 6.0);
    assert_eq!(count("invalid"), 13.0);
}

#[test]
fn an_invalid_request_keeps_its_connection_when_its_body_was_read() {
    let a = start();
    let mut c = Client::connect(a.lb.addr);
    let bad = r#"{"email":"a"}"#;
    let req = |body: &str| {
        format!(
            "POST /api/v2/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    c.send(req(bad).as_bytes());
    let r = c.response();
    assert_eq!(r.status, 400);
    c.send(req(GOOD_USER).as_bytes());
    let r = c.response();
    assert_eq!(r.status, 200, "the next request on the same connection");
    assert_eq!(r.json()["body_length"], GOOD_USER.len());
}

/// Requests in one write, the first refused after its body was read: the second is still
/// read from where the first ended.
#[test]
fn pipelined_requests_after_an_invalid_body() {
    let a = start();
    let mut c = Client::connect(a.lb.addr);
    let req = |body: &str| {
        format!(
            "POST /api/v2/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let both = req(r#"{"email":"a"}"#) + &req(GOOD_USER);
    c.send(both.as_bytes());
    assert_eq!(c.response().status, 400);
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_length"], GOOD_USER.len());
}

/// `Expect: 100-continue`: lb answers `100 Continue` itself (the body is needed before the
/// backend is chosen), and only then does the client send it.
#[test]
fn a_client_that_waits_for_100_continue_gets_it() {
    use std::io::{Read, Write};
    let a = start();
    let mut s = std::net::TcpStream::connect(a.lb.addr).expect("connect");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let head = format!(
        "POST /api/v2/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        GOOD_USER.len()
    );
    s.write_all(head.as_bytes()).expect("head");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s
            .read(&mut buf)
            .expect("the interim answer, before any body byte");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(GOOD_USER.as_bytes()).expect("body");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    got.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("HTTP/1.1 200 OK"), "{text}");
    assert_eq!(
        text.matches("100 Continue").count(),
        1,
        "one interim answer: {text}"
    );
    assert!(
        text.contains(&format!("\"body_length\": {}", GOOD_USER.len())),
        "{text}"
    );
}

#[test]
fn head_requests_405s_and_repeated_members() {
    let a = start();
    let r = curl(&["-I", &url(&a, "/api/v2/users/17")]);
    assert_eq!(r.status, 200, "HEAD is checked as GET");
    let r = curl(&["-I", &url(&a, "/api/v2/users/x17")]);
    assert_eq!(r.status, 400);
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-X",
            "PUT",
            &url(&a, "/api/v2/users/17"),
        ])
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 405") && head.contains("allow: get\r\n"),
        "{head}"
    );
    // A member twice: parsers disagree on which counts, so it is refused.
    let r = post_json(
        &a,
        "/api/v2/users",
        r#"{"email":"ok@example.com","address":{"city":"x"},"email":5}"#,
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("appears twice"), "{}", r.body);
}

/// An HTTP/2 body without a length (DATA frames as they come) is read whole and checked.
#[test]
fn an_http2_body_without_a_length() {
    use std::io::Write;
    let a = start();
    let h2 = format!("http://{}/api/v2/users", a.h2c);
    let send = |body: &str| {
        let mut child = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--http2-prior-knowledge",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-T",
                "-",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                &h2,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("curl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", ""));
        (status.parse::<u16>().unwrap_or(0), body.to_string())
    };
    let (status, body) = send(GOOD_USER);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("\"body_length\": {}", GOOD_USER.len())),
        "{body}"
    );
    let (status, body) = send(r#"{"email":"a"}"#);
    assert_eq!(status, 400, "{body}");
}

#[test]
fn report_mode_passes_and_counts() {
    let a = start();
    let r = post_json(&a, "/report/users", r#"{"email":"a"}"#, &[]);
    assert_eq!(r.status, 200, "passed on: {}", r.body);
    assert_eq!(r.json()["backend"], "users-v2");
    let r = post_json(&a, "/report/users", GOOD_USER, &[]);
    assert_eq!(r.status, 200);
    let samples = a.lb.scrape();
    let count = |result: &str| {
        metric(
            &samples,
            "lb_api_validations_total",
            &[("route", "report"), ("version", ""), ("result", result)],
        )
    };
    assert_eq!((count("invalid"), count("valid")), (1.0, 1.0));
    wait_until("two access log lines", || {
        std::fs::read_to_string(&a.log).is_ok_and(|t| t.lines().count() >= 2)
    });
    let text = std::fs::read_to_string(&a.log).expect("log");
    let outcomes: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .map(|l| {
            format!(
                "{} {}",
                l["status"],
                l["validation"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert!(outcomes.contains(&"200 invalid".to_string()), "{text}");
    assert!(outcomes.contains(&"200 valid".to_string()), "{text}");
    assert!(a.lb.log().contains("report mode"), "logged: {}", a.lb.log());
}

#[test]
fn bodies_over_the_cap_are_refused_or_passed() {
    let a = start();
    let big = format!("{{\"text\":\"{}\"}}", "x".repeat(4096));
    let r = post_json(&a, "/capped/notes", &big, &[]);
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.content_type, "application/problem+json");
    let r = post_json(
        &a,
        "/capped/notes",
        &big,
        &["-H", "Transfer-Encoding: chunked"],
    );
    assert_eq!(r.status, 413, "chunked: {}", r.body);
    let r = post_json(&a, "/capped/notes", r#"{"text":7}"#, &[]);
    assert_eq!(r.status, 400, "plain JSON Schema: {}", r.body);
    assert_eq!(r.failures(), [("body".into(), "/text".into())]);
    assert_eq!(
        post_json(&a, "/capped/notes", r#"{"text":"hi"}"#, &[]).status,
        200
    );
    // Passed unchecked, whole.
    let r = post_json(&a, "/passed/notes", &big, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["body_length"], big.len());
    let samples = a.lb.scrape();
    let too_large = |route: &str| {
        metric(
            &samples,
            "lb_api_validations_total",
            &[("route", route), ("version", ""), ("result", "too_large")],
        )
    };
    assert_eq!((too_large("capped"), too_large("passed")), (2.0, 1.0));
}

/// `lb check` names the broken spec and the key that points at it.
#[test]
fn check_refuses_a_spec_that_does_not_compile() {
    let dir = scratch_dir("validation-check");
    let spec = dir.join("bad.yaml");
    std::fs::write(
        &spec,
        USERS_V2.replace(
            "$ref: '#/components/schemas/Address'",
            "$ref: '#/components/schemas/Nowhere'",
        ),
    )
    .expect("spec");
    let cfg = dir.join("lb.toml");
    let write = |validate: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[[listeners]]\naddr = \"127.0.0.1:0\"\n\
                 [[clusters]]\nname = \"v2\"\nendpoints = [{{ addr = \"127.0.0.1:9\" }}]\n\
                 [[routes]]\nname = \"users\"\ncluster = \"v2\"\nvalidate = {validate}\n"
            ),
        )
        .expect("config")
    };
    write("{ openapi = \"bad.yaml\" }");
    let (code, text) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("routes[0].validate.openapi"), "{text}");
    assert!(
        text.contains(&spec.display().to_string()) || text.contains("bad.yaml"),
        "{text}"
    );
    assert!(text.contains("Nowhere"), "{text}");
    write("{ openapi = \"missing.yaml\" }");
    let (code, text) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_ne!(code, Some(0));
    assert!(text.contains("missing.yaml"), "{text}");
    write("{ schema = { post = \"x.json\" }, mode = \"strict\" }");
    let (code, text) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_ne!(code, Some(0));
    assert!(text.contains("routes[0].validate.mode"), "{text}");
    std::fs::write(dir.join("ok.yaml"), USERS_V2).expect("spec");
    write("{ openapi = \"ok.yaml\", max_body = \"64KiB\" }");
    let (code, text) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_eq!(code, Some(0), "{text}");
    // Routes whose paths the spec does not have: warned of, each with why.
    std::fs::write(
        &cfg,
        "[[listeners]]\naddr = \"127.0.0.1:0\"\n\
         [[clusters]]\nname = \"v2\"\nendpoints = [{ addr = \"127.0.0.1:9\" }]\n\
         [[routes]]\nname = \"fine\"\npath_pattern = \"/api/v2/users/:id\"\nmethods = [\"GET\"]\ncluster = \"v2\"\nvalidate = { openapi = \"ok.yaml\" }\n\
         [[routes]]\nname = \"orders\"\npath = \"/api/v2/orders\"\ncluster = \"v2\"\nvalidate = { openapi = \"ok.yaml\" }\n\
         [[routes]]\nname = \"delete\"\npath_pattern = \"/api/v2/users/:id\"\nmethods = [\"DELETE\"]\ncluster = \"v2\"\nvalidate = { openapi = \"ok.yaml\" }\n\
         [[routes]]\nname = \"outside\"\npath = \"/v3/users\"\ncluster = \"v2\"\nvalidate = { openapi = \"ok.yaml\" }\n\
         [[routes]]\nname = \"elsewhere\"\npath_prefix = \"/api/v2/billing\"\ncluster = \"v2\"\nvalidate = { openapi = \"ok.yaml\" }\n\
         [[routes]]\nname = \"under\"\npath_prefix = \"/api/v2/users\"\ncluster = \"v2\"\nvalidate = { openapi = \"ok.yaml\" }\n",
    )
    .expect("config");
    let (code, text) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_eq!(code, Some(0), "warnings only: {text}");
    let warned: Vec<&str> = text.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warned.len(), 4, "{text}");
    for (route, why) in [
        ("routes[1] (orders)", "/api/v2/orders, which its spec"),
        ("routes[2] (delete)", "DELETE /api/v2/users/1"),
        ("routes[3] (outside)", "outside the prefix \"/api/v2\""),
        ("routes[4] (elsewhere)", "under /api/v2/billing"),
    ] {
        assert!(
            warned.iter().any(|l| l.contains(route) && l.contains(why)),
            "{route}: {text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
