//! The metrics that the admin API samples from shared state at scrape time: gauges from the
//! snapshot (splits, clusters, endpoints) and the XDP program's counters. The handles and
//! names themselves live in `crate::metrics`, below every stage.

use std::sync::atomic::Ordering;

use metrics::{counter, gauge};

use crate::metrics::names::*;
use crate::snapshot::Snapshot;
use crate::steering::XdpFilter;

/// Sets the gauges that mirror `snap`'s shared state: split weights, cluster connections,
/// endpoint in-flight, health, ejection and breaker state.
pub fn sample(snap: &Snapshot) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for (l, tls) in snap.config.listeners.iter().zip(&snap.config.listener_tls) {
        for cert in tls.iter().flat_map(|t| &t.certs) {
            let name = cert.names.first().cloned().unwrap_or_default();
            gauge!(TLS_CERT_EXPIRY_SECONDS, "listener" => l.name.clone(), "certificate" => name)
                .set((cert.not_after_unix - now) as f64);
        }
    }
    let now = crate::clock::now_ms();
    for s in &snap.splits {
        let weights = s.state.weights();
        for (t, w) in s.config.targets.iter().zip(weights.iter()) {
            gauge!(SPLIT_WEIGHT_RATIO, "split" => s.config.name.clone(), "variant" => t.name.clone())
                .set(*w as f64 / crate::release::PPM as f64);
        }
    }
    for c in &snap.clusters {
        gauge!(CLUSTER_CONNECTIONS, "cluster" => c.name.clone())
            .set(c.state.connections.load(Ordering::Relaxed) as f64);
        for e in &c.endpoints {
            let labels = [
                ("cluster", c.name.clone()),
                ("endpoint", e.addr.to_string()),
            ];
            let s = &e.state;
            gauge!(ENDPOINT_IN_FLIGHT, &labels).set(s.in_flight.load(Ordering::Relaxed) as f64);
            gauge!(ENDPOINT_HEALTHY, &labels).set(if s.healthy.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            });
            gauge!(ENDPOINT_EJECTED, &labels).set(if s.is_ejected(now) { 1.0 } else { 0.0 });
            gauge!(ENDPOINT_BREAKER_STATE, &labels).set(s.breaker.state() as u8 as f64);
        }
    }
}

/// Copies the XDP program's per-CPU counters (summed) into the exported counters.
pub fn xdp(kernel: &XdpFilter) {
    use lb_common::Counter;
    for (c, action, reason) in [
        (Counter::Pass, "pass", "none"),
        (Counter::PassUnparsed, "pass", "unparsed"),
        (Counter::DropDenied, "drop", "denied"),
        (Counter::DropSynFlood, "drop", "syn_flood"),
        (Counter::Redirect, "redirect", "cpu_steering"),
    ] {
        if let Ok(v) = kernel.counter(c) {
            counter!(XDP_PACKETS_TOTAL, "action" => action, "reason" => reason).absolute(v.packets);
            counter!(XDP_BYTES_TOTAL, "action" => action, "reason" => reason).absolute(v.bytes);
        }
    }
}
