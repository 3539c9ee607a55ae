//! The admin API: JSON over HTTP/1.1 on its own listener (127.0.0.1 by default), never on the
//! traffic port. Off the request path: one thread reads requests, two answer them
//! (`listener`); `guard` decides who may call what.

mod console;
mod guard;
mod listener;
mod metrics;

use std::borrow::Cow;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use serde_json::{json, Value};

use crate::control::{Control, SteeringState};
use listener::AdminRequest;
pub use listener::{start, start_on, ADMIN_IO_TIMEOUT, ADMIN_MAX_CONNECTIONS};

/// An admin response body.
enum Body {
    Json(Value),
    /// Prometheus text exposition.
    Metrics(String),
    /// A console file: content type and body.
    Static(&'static str, &'static str),
}

/// Answers one complete request (or says why it was invalid) and closes the connection.
fn serve(mut stream: TcpStream, req: Result<AdminRequest, String>, control: &Control) {
    let _ = stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT));
    let upgrade = matches!(&req, Ok(r) if r.method == "POST" && r.path == "/upgrade");
    let head_only = matches!(&req, Ok(r) if r.method == "HEAD");
    let (status, body) = match req {
        Ok(req) => {
            let snap = control.cell.load();
            match guard::check(&req, snap.config.admin.as_ref()) {
                Ok(()) => handle(&req, control),
                Err((status, value)) => (status, Body::Json(value)),
            }
        }
        Err(reason) => (
            400,
            Body::Json(json!({ "error": "bad_request", "reason": reason })),
        ),
    };
    let (content_type, body, page) = match body {
        Body::Json(v) => ("application/json", Cow::Owned(format!("{v}\n")), false),
        Body::Metrics(text) => ("text/plain; version=0.0.4", Cow::Owned(text), false),
        Body::Static(t, b) => (t, Cow::Borrowed(b), true),
    };
    // Nothing the admin listener says is cached or sniffed; the console's page also says
    // where it may load from and that no other site may frame it.
    let page_headers = if page {
        format!(
            "Content-Security-Policy: {}\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\n",
            console::CSP
        )
    } else {
        String::new()
    };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n{page_headers}Connection: close\r\n\r\n",
        crate::http::write::reason(status),
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    if !head_only {
        let _ = stream.write_all(body.as_bytes());
    }
    // An upgrade that succeeded: once its caller has the answer, this process drains (as on
    // SIGTERM; the new process serves the sockets already).
    if upgrade && status == 200 && control.upgraded.load(std::sync::atomic::Ordering::SeqCst) {
        drop(stream);
        // SAFETY: kill with our own PID and a signal number: the main thread's handler
        // starts the drain.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGTERM);
        }
    }
}

fn handle(req: &AdminRequest, control: &Control) -> (u16, Body) {
    if matches!(req.method.as_str(), "GET" | "HEAD") {
        if let Some((content_type, body)) = console::asset(&req.path) {
            return (200, Body::Static(content_type, body));
        }
    }
    if req.method == "GET" && req.path.split('?').next() == Some("/metrics") {
        if let SteeringState::On(kernel) =
            &*control.steering.lock().unwrap_or_else(|p| p.into_inner())
        {
            metrics::xdp(kernel);
        }
        return (
            200,
            Body::Metrics({
                metrics::sample(&control.cell.load());
                crate::metrics::render()
            }),
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
                    "etcd": etcd_status(control),
                    "routes": snap.config.routes.len(),
                    "clusters": snap.config.clusters.iter().map(|c| &c.name).collect::<Vec<_>>(),
                }),
            )
        }
        ("GET", "/clusters") => (200, clusters(control)),
        ("GET", "/stats") => (200, console::stats(control)),
        ("POST", "/explain") => console::explain(control, &req.body),
        ("GET", "/splits") => (200, splits(control)),
        ("GET", "/steering") => (200, steering(control)),
        ("POST", "/steering/deny") => steering_edit(control, &req.body, true),
        ("POST", "/steering/allow") => steering_edit(control, &req.body, false),
        (method, p) if p.starts_with("/splits/") => split_control(method, p, &req.body, control),
        ("GET", "/routes") => (200, routes(control)),
        ("GET", "/certificates") => (200, certificates(control)),
        ("GET", "/jwt") => (200, jwt_providers(control)),
        ("GET", "/deprecations") => (200, deprecations(control)),
        ("PUT", "/test/clock") => test_clock(&req.body),
        ("POST", "/upgrade") => match control.upgrade() {
            Ok(pid) => (
                200,
                json!({ "result": "upgraded", "pid": pid, "old_pid": std::process::id(),
                        "message": "the new process serves; this one drains" }),
            ),
            Err(reason) => (
                500,
                json!({ "error": "upgrade_failed", "reason": reason,
                        "message": "this process serves on, unchanged" }),
            ),
        },
        ("POST", "/reload") => match control.reload() {
            Ok(r) => (
                200,
                json!({ "result": "reloaded", "version": r.version, "changes": r.changes.json() }),
            ),
            Err(errors) => (
                400,
                json!({
                    "error": "invalid_config",
                    "reason": "the new config was rejected; the running config is unchanged",
                    "errors": errors.errors.iter().map(|e| json!({
                        "file": e.file.as_ref().map(|f| f.display().to_string()),
                        "path": e.path,
                        "message": e.message,
                    })).collect::<Vec<_>>(),
                }),
            ),
        },
        (
            _,
            "/healthz" | "/readyz" | "/config" | "/reload" | "/clusters" | "/routes" | "/metrics"
            | "/stats" | "/explain" | "/ui" | "/ui/" | "/ui/app.js" | "/ui/app.css",
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

/// Where the fleet's config stands in etcd: the revision in service, the watch, and the
/// latest revision refused. `null` when the config comes from a file alone.
fn etcd_status(control: &Control) -> Value {
    let crate::control::ConfigSource::Etcd(src) = control.source() else {
        return Value::Null;
    };
    let st = src.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
    json!({
        "endpoints": src.settings.endpoints,
        "key": src.settings.config_key(),
        "revision": src.applied().map(|r| r.revision),
        "started_from": st.started_from.label(),
        "connected": st.connected,
        "sync_age_seconds": st.last_sync.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs_f64()),
        "rejected": st.rejected,
        "last_rejected": st.last_rejected.map(|(revision, errors)| json!({"revision": revision, "errors": errors})),
        "reconnects": st.reconnects,
        "full_reads": st.full_reads,
        "last_error": st.last_error,
        "node": src.fleet.node,
        "leader": src.fleet.is_leader(),
    })
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

/// Moves the lifecycle clock of a process started with `LB_TEST_NOW` (the body: Unix
/// seconds). Any other process refuses: its phases follow the system clock.
fn test_clock(body: &[u8]) -> (u16, Value) {
    let Some(unix) = std::str::from_utf8(body)
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    else {
        return (
            400,
            json!({ "error": "bad_request", "reason": "the body must be Unix seconds" }),
        );
    };
    if !crate::routing::version::set_test_clock(unix) {
        return (
            404,
            json!({ "error": "not_found",
                    "reason": "no test clock: this process was not started with LB_TEST_NOW set to Unix seconds" }),
        );
    }
    (200, json!({ "result": "set", "now_unix": unix }))
}

/// Every version of a versioned route, and every route with a lifecycle of its own
/// (`version` null), that is deprecated, in its warning phase or past its sunset, with the
/// consumers still calling it: requests and when last seen.
fn deprecations(control: &Control) -> Value {
    use crate::routing::version::{now, usage, Phase};
    let snap = control.cell.load();
    let unix = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut list = Vec::new();
    for r in snap.routes.routes() {
        let own = r
            .deprecation
            .as_deref()
            .map(|d| (&d.entry, d.successor.as_deref()));
        let versions = r.versions.iter().flat_map(|v| &v.entries);
        for (e, successor) in own
            .into_iter()
            .chain(versions.map(|e| (e, e.life.successor.as_deref())))
        {
            let phase = e.life.phase(now());
            let mut consumers = usage().of(&r.name, &e.name);
            if phase == Phase::Active && consumers.is_empty() {
                continue;
            }
            consumers.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(&b.0)));
            list.push(json!({
                "route": r.name,
                "version": (!e.name.is_empty()).then_some(&e.name),
                "phase": phase.name(),
                "deprecated_unix": e.life.deprecated.map(unix),
                "sunset_unix": e.life.sunset.map(unix),
                "successor": successor,
                "consumers": consumers.iter().map(|(name, seen)| json!({
                    "consumer": name,
                    "requests": seen.requests,
                    "last_seen_unix": seen.last_unix,
                })).collect::<Vec<_>>(),
            }));
        }
    }
    json!({ "versions": list })
}

/// Routes in declaration order, with what they match and do.
/// Every certificate in service, by listener: names, issuer, expiry, key type, fingerprint
/// and where it came from.
fn certificates(control: &Control) -> Value {
    let snap = control.cell.load();
    let list: Vec<Value> = snap
        .config
        .listeners
        .iter()
        .zip(&snap.config.listener_tls)
        .flat_map(|(l, tls)| {
            tls.iter().flat_map(|t| &t.certs).map(move |c| {
                json!({
                    "listener": l.name,
                    "names": c.names,
                    "subject": c.subject,
                    "issuer": c.issuer,
                    "not_after_unix": c.not_after_unix,
                    "key_type": c.key_type,
                    "sha256": c.sha256,
                    "source": c.source,
                })
            })
        })
        .collect();
    json!({ "certificates": list })
}

/// The JWT providers: settings, the keys in use (kid and algorithms, never material) and
/// the last fetch.
fn jwt_providers(control: &Control) -> Value {
    use crate::client::jwt::KeySource;
    let snap = control.cell.load();
    let list: Vec<Value> = snap
        .jwt
        .iter()
        .map(|p| {
            let c = &p.config;
            let keys = p.keys.current.load();
            let source = match &c.keys {
                KeySource::File(path) => json!({ "jwks_file": path.display().to_string() }),
                KeySource::Url { url, refresh, .. } => {
                    json!({ "jwks_url": url, "refresh_seconds": refresh.as_secs() })
                }
                KeySource::Secret => json!({ "secret_file": true }),
            };
            json!({
                "name": c.name,
                "issuer": c.issuer,
                "audiences": c.audiences,
                "algorithms": c.algorithms.iter().map(|a| a.name()).collect::<Vec<_>>(),
                "source": source,
                "keys": keys.set.keys.iter().map(|k| json!({
                    "kid": k.kid,
                    "algorithms": k.algs.iter().map(|a| a.name()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "skipped_keys": keys.set.skipped,
                "generation": keys.generation,
                "fetched_unix": keys.fetched.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs()),
                "last_error": keys.error,
            })
        })
        .collect();
    json!({ "providers": list })
}

fn routes(control: &Control) -> Value {
    let snap = control.cell.load();
    let list: Vec<Value> = snap
        .routes
        .routes()
        .iter()
        .map(|r| {
            let action = match &r.action {
                _ if r.versions.is_some() => {
                    let v = r.versions.as_deref().map(|v| {
                        v.entries
                            .iter()
                            .map(|e| (e.name.clone(), json!(snap.clusters[e.cluster].name)))
                            .collect::<serde_json::Map<String, Value>>()
                    });
                    json!({ "versions": v })
                }
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
                "matchers": matchers(r, &snap),
                "action": action,
                "deprecated": r.deprecation.is_some(),
            })
        })
        .collect();
    json!({ "version": snap.version, "routes": list })
}

/// Everything a route matches on, one line each, as `lb explain` words it.
fn matchers(r: &crate::routing::Route, snap: &crate::snapshot::Snapshot) -> Vec<String> {
    let codes = |list: &[[u8; 2]]| {
        list.iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = Vec::new();
    if !matches!(r.host, crate::routing::matchers::HostMatch::Any) {
        out.push(r.host.to_string());
    }
    if let Some(sni) = &r.sni {
        out.push(format!(
            "TLS SNI {}",
            sni.to_string().trim_start_matches("host ")
        ));
    }
    out.push(r.path.to_string());
    if !r.methods.is_empty() {
        out.push(format!("method {}", r.methods.join(" or ")));
    }
    out.extend(
        r.headers
            .iter()
            .map(|h| format!("header {} {}", h.name, h.test)),
    );
    out.extend(
        r.query
            .iter()
            .map(|q| format!("query {} {}", String::from_utf8_lossy(&q.name), q.test)),
    );
    if let Some(set) = &r.client_ip {
        out.push(format!("client in {set}"));
    }
    if !r.country.is_empty() {
        out.push(format!("country {}", codes(&r.country)));
    }
    if !r.continent.is_empty() {
        out.push(format!("continent {}", codes(&r.continent)));
    }
    match r.client_cert {
        Some(true) => out.push("a client certificate".into()),
        Some(false) => out.push("no client certificate".into()),
        None => {}
    }
    if let Some(subject) = &r.client_cert_subject {
        out.push(format!("client certificate subject {subject}"));
    }
    if let Some(j) = &r.jwt {
        let provider = snap
            .jwt
            .get(j.provider)
            .map_or("?", |p| p.config.name.as_str());
        out.push(if j.required {
            format!("a valid JWT from {provider}")
        } else {
            format!("a JWT from {provider}, if any, valid")
        });
    }
    out.extend(r.jwt_claims.iter().map(|c| c.to_string()));
    if r.auth_required && r.consumer.is_empty() {
        out.push("a known API key".into());
    }
    out.extend(
        r.consumer
            .iter()
            .map(|(k, v)| format!("consumer {k} = {v:?}")),
    );
    out
}

/// Every split: targets and weights in force, window statistics, state, last decision.
fn splits(control: &Control) -> Value {
    let snap = control.cell.load();
    let now = crate::clock::now_ms();
    let list: Vec<Value> = snap
        .splits
        .iter()
        .map(|s| {
            let window = s.config.analysis.as_ref().map_or(std::time::Duration::from_secs(60), |a| a.window);
            let weights = s.state.weights();
            let targets: Vec<Value> = s
                .config
                .targets
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let w = s.state.stats[i].window(now, window);
                    let series: Vec<Value> = s.state.stats[i]
                        .series(now, window)
                        .iter()
                        .map(|b| json!({
                            "requests": b.requests,
                            "errors": b.errors,
                            "error_rate": b.error_rate(),
                            "p99_ms": b.p99.map(|d| d.as_secs_f64() * 1000.0),
                        }))
                        .collect();
                    json!({
                        "series": series,
                        "name": t.name,
                        "cluster": snap.clusters[t.cluster].name,
                        "weight_percent": weights[i] as f64 / 10_000.0,
                        "configured_percent": t.weight_ppm as f64 / 10_000.0,
                        "window": {
                            "requests": w.requests,
                            "errors": w.errors,
                            "error_rate": w.error_rate(),
                            "p99_ms": w.p99.map(|d| d.as_secs_f64() * 1000.0),
                        },
                    })
                })
                .collect();
            let decision = s.state.decision.lock().map(|d| d.clone()).unwrap_or_default();
            let analysis = s.config.analysis.as_ref().map(|a| {
                json!({
                    "baseline": s.config.targets[a.baseline].name,
                    "canary": s.config.targets[a.canary].name,
                    "window_seconds": a.window.as_secs_f64(),
                    "interval_seconds": a.interval.as_secs_f64(),
                    "min_requests": a.min_requests,
                    "max_error_rate": a.max_error_rate,
                    "max_error_rate_increase": a.max_error_rate_increase,
                    "max_p99_ms": a.max_p99.map(|d| d.as_secs_f64() * 1000.0),
                    "max_p99_ratio": a.max_p99_ratio,
                })
            });
            let promotion = s.config.promotion.as_ref().map(|p| {
                json!({
                    "steps_percent": p.steps.iter().map(|w| *w as f64 / 10_000.0).collect::<Vec<_>>(),
                    "hold_seconds": p.hold.as_secs_f64(),
                })
            });
            json!({
                "analysis": analysis,
                "promotion": promotion,
                "window_seconds": window.as_secs_f64(),
                "name": s.config.name,
                "route": snap.routes.routes()[s.route].name,
                "targets": targets,
                "runtime_weights": s.state.runtime_weights.load(Ordering::SeqCst),
                "paused": s.state.paused.load(Ordering::SeqCst),
                "rolled_back": s.state.rolled_back.load(Ordering::SeqCst),
                "rollbacks": s.state.rollbacks.load(Ordering::SeqCst),
                "promotion_step": s.config.promotion.as_ref().map(|_| s.state.step.load(Ordering::SeqCst)),
                "last_decision": decision,
                "last_verdict": *s.state.last_verdict.lock().unwrap_or_else(|p| p.into_inner()),
            })
        })
        .collect();
    json!({ "version": snap.version, "splits": list })
}

fn bad(reason: String) -> (u16, Value) {
    (400, json!({ "error": "bad_request", "reason": reason }))
}

/// `POST /splits/{name}/{weights|promote|rollback|pause|resume}`.
fn split_control(method: &str, path: &str, body: &[u8], control: &Control) -> (u16, Value) {
    use crate::release::analysis;
    let mut parts = path.trim_start_matches("/splits/").splitn(2, '/');
    let (name, action) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "POST" {
        return (
            405,
            json!({ "error": "method_not_allowed", "reason": format!("use POST on {path}") }),
        );
    }
    let snap = control.cell.load();
    let Some(s) = snap.splits.iter().find(|s| s.config.name == name) else {
        return (
            404,
            json!({ "error": "not_found", "reason": format!("no split named {name:?}") }),
        );
    };
    let (cfg, state) = (&s.config, &s.state);
    // In a fleet, the change is made here and written for every appliance; if it cannot
    // be written, it is undone here too.
    let fleet = control.fleet().map(|f| {
        (
            f,
            f.known_revision(name),
            crate::control::upgrade::SplitSaved::of(name, state),
        )
    });
    // Baseline and canary: from the analysis, else the default target and the first other.
    let baseline = cfg
        .analysis
        .as_ref()
        .map_or(cfg.default_target, |a| a.baseline);
    let canary = cfg
        .analysis
        .as_ref()
        .map(|a| a.canary)
        .or_else(|| (0..cfg.targets.len()).find(|&i| i != baseline));
    let now = crate::clock::now_ms();
    match action {
        "weights" => {
            let parsed: Result<Value, _> = serde_json::from_slice(body);
            let Ok(Value::Object(map)) = parsed.map(|v| v.get("weights").cloned().unwrap_or(v))
            else {
                return bad(
                    "expected JSON such as {\"weights\": {\"stable\": 90, \"canary\": 10}}".into(),
                );
            };
            let mut w = vec![0u32; cfg.targets.len()];
            for (k, v) in &map {
                let Some(i) = cfg.targets.iter().position(|t| &t.name == k) else {
                    return bad(format!("no target named {k:?}"));
                };
                match v.as_f64() {
                    Some(p) if (0.0..=100.0).contains(&p) => w[i] = (p * 10_000.0).round() as u32,
                    _ => return bad(format!("weight of {k:?} must be a percent from 0 to 100")),
                }
            }
            let total: u64 = w.iter().map(|x| *x as u64).sum();
            if total != crate::release::PPM as u64 {
                return bad(format!(
                    "weights add up to {}%, expected 100%",
                    total as f64 / 10_000.0
                ));
            }
            state.set_weights(w);
            state.runtime_weights.store(true, Ordering::SeqCst);
            state.rolled_back.store(false, Ordering::SeqCst);
            state.decide(name, "set_weights", "set through the admin API".into());
        }
        "promote" => {
            let Some(canary) = canary else {
                return bad("the split has a single target".into());
            };
            match &cfg.promotion {
                Some(p) => {
                    let next =
                        (state.step.load(Ordering::SeqCst) as usize + 1).min(p.steps.len() - 1);
                    state.rolled_back.store(false, Ordering::SeqCst);
                    analysis::promote(
                        cfg,
                        state,
                        canary,
                        baseline,
                        next,
                        now,
                        "promoted through the admin API",
                    );
                }
                None => {
                    analysis::set_canary(state, canary, baseline, crate::release::PPM);
                    state.decide(
                        name,
                        "promote",
                        "canary set to 100% through the admin API".into(),
                    );
                }
            }
            state.runtime_weights.store(true, Ordering::SeqCst);
        }
        "rollback" => {
            let Some(canary) = canary else {
                return bad("the split has a single target".into());
            };
            analysis::rollback(
                cfg,
                state,
                canary,
                baseline,
                "rolled back through the admin API".into(),
            );
            state.runtime_weights.store(true, Ordering::SeqCst);
        }
        "pause" => {
            state.paused.store(true, Ordering::SeqCst);
            state.decide(
                name,
                "pause",
                "promotion paused through the admin API".into(),
            );
        }
        "resume" => {
            state.paused.store(false, Ordering::SeqCst);
            state.decide(
                name,
                "resume",
                "promotion resumed through the admin API".into(),
            );
        }
        other => {
            return (
                404,
                json!({ "error": "not_found", "reason": format!("no split action {other:?}") }),
            )
        }
    }
    if let Some((fleet, base, before)) = fleet {
        use crate::control::fleet::WriteError;
        match fleet.publish(name, state, cfg.targets.len(), base, &before) {
            Ok(()) => {}
            Err(WriteError::Refused(reason)) => {
                return (
                    503,
                    json!({ "error": "fleet_unavailable", "reason": format!("{reason}; nothing changed") }),
                )
            }
            Err(WriteError::Unknown(reason)) => {
                return (
                    504,
                    json!({ "error": "fleet_outcome_unknown", "reason": format!("{reason}: it may still apply, on every appliance; GET /splits shows what the fleet holds before you try again") }),
                )
            }
        }
    }
    let weights: serde_json::Map<String, Value> = cfg
        .targets
        .iter()
        .zip(state.weights().iter())
        .map(|(t, w)| (t.name.clone(), json!(*w as f64 / 10_000.0)))
        .collect();
    (
        200,
        json!({ "split": name, "action": action, "weights": weights }),
    )
}

/// The kernel half: mode, XDP counters, deny list, and per-worker connection accounting.
fn steering(control: &Control) -> Value {
    use lb_common::Counter;
    let snap = control.cell.load();
    let cfg = &snap.config.steering;
    let stats = control
        .worker_stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let workers: Vec<Value> = stats
        .iter()
        .enumerate()
        .map(|(i, s)| json!({ "worker": i, "accepted": s.accepted.load(Ordering::Relaxed), "active": s.active.load(Ordering::Relaxed) }))
        .collect();
    let state = control.steering.lock().unwrap_or_else(|p| p.into_inner());
    let (status, counters, deny) = match &*state {
        SteeringState::Off => ("off".to_string(), Value::Null, Value::Null),
        SteeringState::Unavailable(why) => {
            (format!("unavailable: {why}"), Value::Null, Value::Null)
        }
        SteeringState::On(kernel) => {
            let c = |k: Counter| {
                kernel
                    .counter(k)
                    .map(|v| json!({ "packets": v.packets, "bytes": v.bytes }))
                    .unwrap_or(Value::Null)
            };
            let deny: Vec<String> = kernel
                .deny_entries()
                .unwrap_or_default()
                .iter()
                .map(|(a, l)| format!("{a}/{l}"))
                .collect();
            (
                "on".to_string(),
                json!({
                    "pass": c(Counter::Pass),
                    "drop_denied": c(Counter::DropDenied),
                    "drop_syn_flood": c(Counter::DropSynFlood),
                    "pass_unparsed": c(Counter::PassUnparsed),
                    "redirect_cpu": c(Counter::Redirect),
                }),
                json!(deny),
            )
        }
    };
    json!({
        "mode": format!("{:?}", cfg.mode).to_lowercase(),
        "policy": format!("{:?}", cfg.policy),
        "status": status,
        "interfaces": cfg.interfaces,
        "cpu_steering": cfg.cpu_steering,
        "xdp": counters,
        "deny": deny,
        "workers": workers,
    })
}

/// `POST /steering/deny` or `/steering/allow` with `{"prefix": "10.0.0.0/8"}`. Changes last
/// until the next reload, which sets the deny list from the file again.
fn steering_edit(control: &Control, body: &[u8], deny: bool) -> (u16, Value) {
    let prefix = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("prefix").and_then(Value::as_str).map(str::to_string));
    let Some(prefix) = prefix else {
        return bad("expected JSON such as {\"prefix\": \"10.0.0.0/8\"}".into());
    };
    let (addr, len) = match crate::config::parse_prefix(&prefix) {
        Ok(p) => p,
        Err(e) => return bad(e),
    };
    if control.upgrading() {
        return (
            409,
            json!({ "error": "upgrade_in_progress", "reason": "the deny list is being handed to a new process; try again once the upgrade is done" }),
        );
    }
    let mut state = control.steering.lock().unwrap_or_else(|p| p.into_inner());
    let SteeringState::On(kernel) = &mut *state else {
        return (
            409,
            json!({ "error": "steering_off", "reason": "the eBPF programs are not running" }),
        );
    };
    let result = if deny {
        kernel.deny(addr, len)
    } else {
        kernel.allow(addr, len)
    };
    match result {
        Ok(()) => (
            200,
            json!({ "result": if deny { "denied" } else { "allowed" }, "prefix": format!("{addr}/{len}") }),
        ),
        Err(e) => (
            400,
            json!({ "error": "map_update_failed", "reason": e.to_string() }),
        ),
    }
}
