//! Active HTTP health checks, off the request path: one control thread per checked endpoint,
//! started and stopped as snapshots come and go. Results flip `EndpointState::healthy` after
//! the configured thresholds.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod grpc;

use crate::snapshot::Snapshot;
use crate::upstream::policy::HealthCheckConfig;
use crate::upstream::state::EndpointState;

/// Largest health check response head read.
const MAX_HEAD: usize = 16 * 1024;

struct Task {
    stop: Arc<AtomicBool>,
    /// The check as configured, to restart the task when it changes.
    signature: String,
}

/// Runs the checks a snapshot asks for.
#[derive(Default)]
pub struct HealthChecks {
    tasks: HashMap<(String, SocketAddr), Task>,
}

impl HealthChecks {
    /// Starts checks for endpoints that need them and stops the rest.
    pub fn reconcile(&mut self, snap: &Snapshot) {
        let mut wanted = HashMap::new();
        for c in &snap.clusters {
            let Some(hc) = &c.config.health_check else {
                continue;
            };
            for e in &c.endpoints {
                let tls = c
                    .config
                    .tls
                    .as_ref()
                    .zip(e.tls_name.clone())
                    .map(|(t, name)| CheckTls {
                        config: t.config.clone(),
                        name,
                        key: t.key,
                    });
                wanted.insert((c.name.clone(), e.addr), (hc.clone(), tls, e.state.clone()));
            }
        }
        let signature = |hc: &HealthCheckConfig, tls: &Option<CheckTls>| {
            format!("{hc:?} {:?}", tls.as_ref().map(|t| t.key))
        };
        self.tasks.retain(|key, task| {
            let keep = wanted
                .get(key)
                .is_some_and(|(hc, tls, _)| signature(hc, tls) == task.signature);
            if !keep {
                task.stop.store(true, Ordering::SeqCst);
            }
            keep
        });
        for (key, (hc, tls, state)) in wanted {
            if self.tasks.contains_key(&key) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let signature = signature(&hc, &tls);
            let (cluster, addr) = key.clone();
            let s = stop.clone();
            let target = Target { addr, tls };
            let spawned = std::thread::Builder::new()
                .name(format!("lb-health-{addr}"))
                .spawn(move || run(cluster, target, hc, state, s));
            match spawned {
                Ok(_) => {
                    self.tasks.insert(key, Task { stop, signature });
                }
                Err(e) => {
                    tracing::error!(endpoint = %addr, error = %e, "cannot start health checks")
                }
            }
        }
    }

    /// Stops every check.
    pub fn stop_all(&mut self) {
        for t in self.tasks.values() {
            t.stop.store(true, Ordering::SeqCst);
        }
        self.tasks.clear();
    }
}

/// TLS for the checks of a TLS cluster's endpoint.
#[derive(Clone)]
pub struct CheckTls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls_pki_types::ServerName<'static>,
    key: u64,
}

/// What a check connects to.
pub struct Target {
    pub addr: SocketAddr,
    pub tls: Option<CheckTls>,
}

fn run(
    cluster: String,
    target: Target,
    hc: HealthCheckConfig,
    state: Arc<EndpointState>,
    stop: Arc<AtomicBool>,
) {
    let addr = target.addr;
    let mut rng = fastrand::Rng::with_seed(crate::hash::fnv1a_of(addr.to_string().as_bytes()));
    while !stop.load(Ordering::SeqCst) {
        let jitter = if hc.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_millis(rng.u64(0..=hc.jitter.as_millis() as u64))
        };
        // Sleep in small steps so that a stopped task ends soon after it is told.
        let mut left = hc.interval + jitter;
        while !left.is_zero() && !stop.load(Ordering::SeqCst) {
            let step = left.min(Duration::from_millis(50));
            std::thread::sleep(step);
            left -= step;
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let result = check(&target, &hc);
        let ok = matches!(result, Ok(status) if hc.accepts(status));
        if let Some(now_healthy) =
            state.record_check(ok, hc.healthy_threshold, hc.unhealthy_threshold)
        {
            if now_healthy {
                tracing::info!(cluster, endpoint = %addr, "endpoint is healthy again");
            } else {
                tracing::warn!(cluster, endpoint = %addr, result = ?result, "endpoint failed its health checks");
            }
        }
    }
}

/// One check: the status of `GET path`, or why there was none. Over TLS when the cluster
/// uses it, verified the same way requests are. A gRPC check answers 200 for SERVING.
pub fn check(target: &Target, hc: &HealthCheckConfig) -> Result<u16, String> {
    if let Some(service) = &hc.grpc_service {
        return grpc::check(target, service, hc.timeout);
    }
    let addr = target.addr;
    let s = TcpStream::connect_timeout(&addr, hc.timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(hc.timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(hc.timeout))
        .map_err(|e| e.to_string())?;
    match &target.tls {
        None => exchange(s, addr, hc),
        Some(t) => {
            let session = rustls::ClientConnection::new(t.config.clone(), t.name.clone())
                .map_err(|e| format!("tls: {e}"))?;
            exchange(rustls::StreamOwned::new(session, s), addr, hc)
        }
    }
}

fn exchange(
    mut s: impl Read + Write,
    addr: SocketAddr,
    hc: &HealthCheckConfig,
) -> Result<u16, String> {
    let host = hc.host.clone().unwrap_or_else(|| addr.to_string());
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-health-check\r\nConnection: close\r\n\r\n",
        hc.path
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut res = httparse::Response::new(&mut headers);
        match res.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return res.code.ok_or_else(|| "no status".to_string())
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err("response head too large".into()),
            Err(e) => return Err(format!("invalid response: {e}")),
        }
        let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
