//! The log phase: what one finished request leaves behind: its request series, its split
//! target's window statistics, and its access log line.

use std::time::Duration;

use super::Record;
use crate::accesslog;
use crate::client::ClientAddr;
use crate::worker::Worker;

/// Records a finished request: metrics, and the access log line if it is on.
pub fn finish(w: &Worker, rec: &Record, conn: ClientAddr) {
    let current;
    let view = match &rec.view {
        Some(v) => v,
        None => {
            current = w.view();
            &current
        }
    };
    let snap = &view.snap;
    let took = rec.started.map_or(Duration::ZERO, |s| s.elapsed());
    let metrics = rec
        .route
        .and_then(|r| snap.route_metrics.get(r as usize))
        .unwrap_or(&snap.unrouted_metrics);
    metrics.record(w.id, rec.protocol == super::Protocol::H2, rec.status, took);
    let grpc_status = rec.grpc_status.map(|code| {
        let name = crate::http::h2::GRPC_CODES
            .get(code as usize)
            .copied()
            .unwrap_or("UNKNOWN");
        metrics.grpc(code as usize, name);
        name
    });
    if let (Some(e), Some(c)) = (
        rec.error,
        rec.cluster.and_then(|c| snap.clusters.get(c as usize)),
    ) {
        c.metrics.error(e.code_slot(), e.code());
    }
    split_window(w, snap, rec, took);
    if w.access_log_on() {
        access_line(w, snap, rec, conn, took, grpc_status);
    }
}

/// The split target's window statistics, which canary analysis judges.
fn split_window(w: &Worker, snap: &crate::snapshot::Snapshot, rec: &Record, took: Duration) {
    let Some((si, t, _)) = rec.variant else {
        return;
    };
    let Some(split) = snap.splits.get(si) else {
        return;
    };
    // A gRPC call that failed by the operator's list of codes is an error as much as a 5xx.
    let failed = rec.status >= 500
        || rec
            .grpc_status
            .is_some_and(|c| c < 32 && snap.http2.grpc_error_codes & 1 << c != 0);
    let window = split
        .config
        .analysis
        .as_ref()
        .map_or(Duration::from_secs(60), |a| a.window);
    if let Some(stats) = split.state.stats.get(t) {
        stats.record(w.id, crate::timer::now_ms(), window, failed, took);
    }
}

/// The request's access log line.
fn access_line(
    w: &Worker,
    snap: &crate::snapshot::Snapshot,
    rec: &Record,
    conn: ClientAddr,
    took: Duration,
    grpc_status: Option<&'static str>,
) {
    let route = rec.route.and_then(|r| snap.routes.routes().get(r as usize));
    let version = route
        .and_then(|r| r.versions.as_deref())
        .zip(rec.version)
        .and_then(|(v, i)| v.entries.get(i as usize));
    // The phase of the version chosen, or of a deprecated route's own lifecycle.
    let life = version.map(|e| &e.life).or_else(|| {
        route
            .and_then(|r| r.deprecation.as_deref())
            .map(|d| &d.entry.life)
    });
    let line = accesslog::Line {
        time: std::time::SystemTime::now(),
        client: rec
            .forwarded
            .map_or(conn.socket(), |(ip, _)| std::net::SocketAddr::new(ip, 0)),
        method: rec.method(),
        path: rec.target(),
        protocol: rec.protocol.label(),
        status: rec.status,
        route: route.map(|r| r.name.as_str()),
        cluster: rec
            .cluster
            .and_then(|c| snap.clusters.get(c as usize))
            .map(|c| c.name.as_str()),
        endpoint: rec.endpoint,
        variant: rec.variant.and_then(|(si, t, _)| {
            snap.splits
                .get(si)
                .map(|s| s.config.targets[t].name.as_str())
        }),
        bytes: rec.bytes,
        duration_ms: took.as_secs_f64() * 1000.0,
        upstream_ms: rec.upstream.map(|d| d.as_secs_f64() * 1000.0),
        error: rec.error.map(|e| e.code()),
        grpc_method: rec
            .grpc
            .then(|| rec.target().split('?').next().unwrap_or(""))
            .map(|p| p.strip_prefix('/').unwrap_or(p)),
        grpc_status,
        country: rec
            .country
            .as_ref()
            .and_then(|c| std::str::from_utf8(c).ok()),
        api_version: version.map(|e| e.name.as_str()),
        api_version_phase: life
            .map(|l| l.phase(crate::routing::version::now()))
            .filter(|p| *p != crate::routing::version::Phase::Active)
            .map(|p| p.name()),
        validation: rec.validation.map(|o| o.label()),
    };
    w.log_access(|buf| line.write(buf));
}
