//! The console: a page on the admin listener (`GET /ui`) that shows what the admin API knows
//! and acts through its existing endpoints. Its files are built into the binary, so it works
//! on a host with no route to the internet. Everything here runs on the admin threads.

use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use serde_json::{json, Value};

use crate::control::Control;

/// The console's files: path, content type, body.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "/ui",
        "text/html; charset=utf-8",
        include_str!("console/index.html"),
    ),
    (
        "/ui/app.js",
        "text/javascript; charset=utf-8",
        include_str!("console/app.js"),
    ),
    (
        "/ui/app.css",
        "text/css; charset=utf-8",
        include_str!("console/app.css"),
    ),
];

/// The page may load only its own files and talk only to this listener; no other site may
/// frame it (its buttons change state).
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console file at `path` (`/ui/` is `/ui`): content type and body.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    let path = path.split('?').next().unwrap_or("");
    let path = if path == "/ui/" { "/ui" } else { path };
    ASSETS
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, t, b)| (*t, *b))
}

/// `GET /stats`: what the overview and routes pages draw. Counters are totals since the
/// process started; the page turns two readings into rates.
pub fn stats(control: &Control) -> Value {
    let snap = control.cell.load();
    let unix = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let workers: Vec<Value> = control
        .worker_stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "worker": i,
                "active": s.active.load(Ordering::Relaxed),
                "accepted": s.accepted.load(Ordering::Relaxed),
            })
        })
        .collect();
    let last_reload = control
        .last_reload
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|r| match &r.result {
            Ok(done) => json!({
                "at_unix": unix(r.at),
                "ok": true,
                "version": done.version,
                "changes": done.changes.to_string(),
            }),
            Err(errors) => json!({ "at_unix": unix(r.at), "ok": false, "errors": errors }),
        });
    let series: Vec<Value> = crate::metrics::request_totals()
        .into_iter()
        .map(|s| {
            json!({
                "route": s.route,
                "cluster": s.cluster,
                "classes": s.classes,
                "buckets": s.buckets,
                "sum_seconds": s.sum_seconds,
            })
        })
        .collect();
    json!({
        "now_unix_ms": std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        "pid": std::process::id(),
        "version": snap.version,
        "source": control.source().describe(),
        "loaded_at_unix": unix(snap.loaded_at),
        "started_unix": unix(control.started),
        "uptime_seconds": control.started_at.elapsed().as_secs(),
        "draining": control.draining.load(Ordering::SeqCst),
        "last_reload": last_reload,
        "workers": workers,
        "duration_bounds_seconds": crate::metrics::duration_bounds(),
        "series": series,
    })
}

/// `POST /explain` with `{"method", "url", "headers": ["Name: value"], "client"}`: what lb
/// would do with that request, planned on the live snapshot without side effects (see
/// [`crate::dryrun`]).
pub fn explain(control: &Control, body: &[u8]) -> (u16, Value) {
    use crate::proxy::explain::{explain, ExplainRequest};
    let bad = |reason: String| (400, json!({ "error": "bad_request", "reason": reason }));
    let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(body) else {
        return bad(
            "expected JSON such as {\"method\": \"GET\", \"url\": \"http://example.com/path\", \"headers\": [\"Accept: */*\"], \"client\": \"203.0.113.7\"}"
                .into(),
        );
    };
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::trim);
    let Some(url) = text("url").filter(|u| !u.is_empty()) else {
        return bad("url is required: a full URL, or a path with a Host header".into());
    };
    let method = text("method").filter(|m| !m.is_empty()).unwrap_or("GET");
    if !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return bad(format!("{method:?} is not an HTTP method"));
    }
    let headers: Vec<String> = match v.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            for h in list {
                match h.as_str() {
                    Some(h) if h.trim().is_empty() => {}
                    Some(h) if h.contains(['\r', '\n']) => {
                        return bad("a header may not hold a line break".into())
                    }
                    Some(h) => out.push(h.trim().to_string()),
                    None => return bad("headers must be strings of the form `Name: value`".into()),
                }
            }
            out
        }
        Some(_) => return bad("headers must be a list of `Name: value` strings".into()),
    };
    if url.contains(['\r', '\n', ' ']) {
        return bad("the URL may not hold spaces or line breaks".into());
    }
    let client = match text("client").filter(|c| !c.is_empty()) {
        None => std::net::SocketAddr::from(([127, 0, 0, 1], 50000)),
        Some(c) => match c
            .parse::<std::net::SocketAddr>()
            .or_else(|_| c.parse::<std::net::IpAddr>().map(|ip| (ip, 50000).into()))
        {
            Ok(a) => a,
            Err(_) => return bad(format!("client {c:?} is not an IP address")),
        },
    };
    let req = ExplainRequest {
        method: method.to_string(),
        url: url.to_string(),
        headers,
        client,
        http2: v.get("http2").and_then(Value::as_bool).unwrap_or(false),
    };
    let snap = control.cell.load();
    match crate::dryrun::run(|| explain(snap, &req)) {
        Ok(x) => (
            200,
            json!({
                "text": x.text,
                "route": x.route,
                "cluster": x.cluster,
                "status": x.status,
                "client": x.client,
                "client_source": x.client_source,
            }),
        ),
        Err(reason) => bad(reason),
    }
}
