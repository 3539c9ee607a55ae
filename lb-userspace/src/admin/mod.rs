//! The admin API: JSON over HTTP/1.1 on its own listener (127.0.0.1 by default), never on the
//! traffic port. Off the request path: plain threads, one per admin connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::server::Control;

/// An admin client that sends nothing for this long is dropped.
const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest admin request (head and body) accepted.
const ADMIN_MAX_REQUEST: usize = 64 * 1024;

/// Binds the admin listener and serves it on a background thread; returns the bound address.
pub fn start(addr: SocketAddr, control: Arc<Control>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "admin API listening");
    std::thread::Builder::new()
        .name("lb-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let control = control.clone();
                        let _ = std::thread::Builder::new()
                            .name("lb-admin-conn".into())
                            .spawn(move || serve(stream, &control));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(local)
}

/// A parsed admin request.
struct AdminRequest {
    method: String,
    path: String,
    /// The `Authorization` header, if any.
    authorization: Option<String>,
}

/// An admin response body.
enum Body {
    Json(Value),
    /// Prometheus text exposition.
    Metrics(String),
}

fn serve(mut stream: TcpStream, control: &Control) {
    let _ = stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT));
    let (status, body) = match read_request(&mut stream) {
        Ok(req) => match authorize(&req, control) {
            Ok(()) => handle(&req, control),
            Err(reply) => reply,
        },
        Err(reason) => (
            400,
            Body::Json(json!({ "error": "bad_request", "reason": reason })),
        ),
    };
    let (content_type, body) = match body {
        Body::Json(v) => ("application/json", format!("{v}\n")),
        Body::Metrics(text) => ("text/plain; version=0.0.4", text),
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::http::write::reason(status),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body.as_bytes());
}

fn read_request(stream: &mut TcpStream) -> Result<AdminRequest, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("/").to_string();
                let authorization = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned());
                let body_len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| crate::http::parse_content_length(h.value))
                    .unwrap_or(0) as usize;
                if head_len + body_len > ADMIN_MAX_REQUEST {
                    return Err("request too large".into());
                }
                // Bodies are not used yet; read them so the client sees a clean close.
                while buf.len() < head_len + body_len {
                    let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                return Ok(AdminRequest {
                    method,
                    path,
                    authorization,
                });
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("invalid request: {e}")),
        }
        if buf.len() > ADMIN_MAX_REQUEST {
            return Err("request head too large".into());
        }
        let n = stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the request was complete".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// With an admin token configured, every request must carry it as a bearer token.
fn authorize(req: &AdminRequest, control: &Control) -> Result<(), (u16, Body)> {
    let snap = control.cell.load();
    let Some(token) = snap.config.admin.as_ref().and_then(|a| a.token.as_deref()) else {
        return Ok(());
    };
    let given = req
        .authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "));
    // Compare without an early exit, so timing does not reveal a matching prefix.
    let matches = given.is_some_and(|g| {
        g.len() == token.len()
            && g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if matches {
        Ok(())
    } else {
        Err((
            401,
            Body::Json(
                json!({ "error": "unauthorized", "reason": "a valid bearer token is required" }),
            ),
        ))
    }
}

fn handle(req: &AdminRequest, control: &Control) -> (u16, Body) {
    if req.method == "GET" && req.path.split('?').next() == Some("/metrics") {
        return (
            200,
            Body::Metrics(crate::metrics::render(&control.cell.load())),
        );
    }
    let (status, value) = handle_json(req, control);
    (status, Body::Json(value))
}

fn handle_json(req: &AdminRequest, control: &Control) -> (u16, Value) {
    let path = req.path.split('?').next().unwrap_or("");
    match (req.method.as_str(), path) {
        ("GET", "/healthz") => (200, json!({ "status": "ok" })),
        ("GET", "/readyz") => {
            if control.draining.load(Ordering::SeqCst) {
                (503, json!({ "ready": false, "reason": "draining" }))
            } else {
                (200, json!({ "ready": true }))
            }
        }
        ("GET", "/config") => {
            let snap = control.cell.load();
            let loaded_at = snap
                .loaded_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            (
                200,
                json!({
                    "version": snap.version,
                    "loaded_at_unix": loaded_at,
                    "source": control.source().describe(),
                    "routes": snap.config.routes.len(),
                    "clusters": snap.config.clusters.iter().map(|c| &c.name).collect::<Vec<_>>(),
                }),
            )
        }
        ("GET", "/clusters") => (200, clusters(control)),
        ("GET", "/routes") => (200, routes(control)),
        ("POST", "/reload") => match control.reload() {
            Ok(version) => (200, json!({ "result": "reloaded", "version": version })),
            Err(errors) => (
                400,
                json!({
                    "error": "invalid_config",
                    "reason": "the new config was rejected; the running config is unchanged",
                    "errors": errors.errors.iter().map(|e| json!({ "path": e.path, "message": e.message })).collect::<Vec<_>>(),
                }),
            ),
        },
        (
            _,
            "/healthz" | "/readyz" | "/config" | "/reload" | "/clusters" | "/routes" | "/metrics",
        ) => (
            405,
            json!({ "error": "method_not_allowed", "reason": format!("{} is not allowed on {path}", req.method) }),
        ),
        _ => (
            404,
            json!({ "error": "not_found", "reason": format!("no admin endpoint {path}") }),
        ),
    }
}

/// Every cluster with its endpoints' health, breaker, ejection and load.
fn clusters(control: &Control) -> Value {
    let snap = control.cell.load();
    let now = crate::clock::now_ms();
    let list: Vec<Value> = snap
        .clusters
        .iter()
        .map(|c| {
            let endpoints: Vec<Value> = c
                .endpoints
                .iter()
                .map(|e| {
                    let s = &e.state;
                    json!({
                        "addr": e.addr.to_string(),
                        "target": e.target,
                        "weight": e.weight,
                        "healthy": s.healthy.load(Ordering::Relaxed),
                        "available": s.is_available(now),
                        "ejected_for_ms": s.ejected_for(now),
                        "ejections": s.ejections.load(Ordering::Relaxed),
                        "breaker": s.breaker.state().name(),
                        "breaker_opened": s.breaker.opened_total.load(Ordering::Relaxed),
                        "in_flight": s.in_flight.load(Ordering::Relaxed),
                        "connections": s.connections.load(Ordering::Relaxed),
                        "requests": s.requests_total.load(Ordering::Relaxed),
                        "failures": s.failures_total.load(Ordering::Relaxed),
                    })
                })
                .collect();
            json!({
                "name": c.name,
                "balancer": format!("{:?}", c.balancer),
                "in_flight": c.state.in_flight.load(Ordering::Relaxed),
                "retries_in_flight": c.state.retries_in_flight.load(Ordering::Relaxed),
                "connections": c.state.connections.load(Ordering::Relaxed),
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({ "version": snap.version, "clusters": list })
}

/// Routes in declaration order, with what they match and do.
fn routes(control: &Control) -> Value {
    let snap = control.cell.load();
    let list: Vec<Value> = snap
        .routes
        .routes()
        .iter()
        .map(|r| {
            let action = match &r.action {
                crate::routing::actions::Action::Forward(c) => {
                    json!({ "cluster": snap.clusters[*c].name })
                }
                crate::routing::actions::Action::Redirect { status, .. } => {
                    json!({ "redirect": status })
                }
                crate::routing::actions::Action::Respond { status, .. } => {
                    json!({ "respond": status })
                }
            };
            json!({
                "name": r.name,
                "index": r.index,
                "host": r.host.to_string(),
                "path": r.path.to_string(),
                "methods": r.methods,
                "conditions": r.headers.len() + r.query.len(),
                "action": action,
                "deprecated": r.deprecation.is_some(),
            })
        })
        .collect();
    json!({ "version": snap.version, "routes": list })
}
