//! The ACME control thread: for every TLS listener with an `acme` table it checks, at start,
//! after every reload that changes the table, and hourly, whether the stored certificate is
//! missing or within `renew_before` of expiry, orders a new one, and reloads to serve it. A
//! failed order keeps the old certificate, is logged and counted, and is tried again after
//! a backoff (30 s, doubling to an hour).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Control;
use crate::acme::AcmeConfig;

/// How often a certificate that is not due is looked at again.
const CHECK_EVERY: Duration = Duration::from_secs(3600);
/// The first wait after a failed order; it doubles up to `CHECK_EVERY`.
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
/// How often the thread wakes to look for new or changed `acme` tables.
const TICK: Duration = Duration::from_millis(250);

struct Track {
    next: Instant,
    failures: u32,
}

/// Starts the thread.
pub fn spawn(control: Arc<Control>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("lb-acme".into())
        .spawn(move || {
            crate::control::background_thread();
            run(&control)
        })?;
    Ok(())
}

fn run(control: &Control) {
    let mut tracks: HashMap<AcmeConfig, Track> = HashMap::new();
    while !control.draining.load(Ordering::SeqCst) {
        let wanted: Vec<(String, AcmeConfig)> = {
            let snap = control.cell.load();
            snap.config
                .listeners
                .iter()
                .filter_map(|l| {
                    let a = l.tls.as_ref()?.acme.as_ref()?;
                    Some((l.name.clone(), a.clone()))
                })
                .collect()
        };
        // Tables a reload removed or changed are forgotten; a changed one is new.
        tracks.retain(|a, _| wanted.iter().any(|(_, w)| w == a));
        for (listener, a) in wanted {
            let now = Instant::now();
            let t = tracks.entry(a.clone()).or_insert(Track {
                next: now,
                failures: 0,
            });
            if now < t.next {
                continue;
            }
            let Some(reason) = crate::acme::due(&a) else {
                t.next = now + CHECK_EVERY;
                continue;
            };
            tracing::info!(listener, hosts = ?a.hosts, directory = a.directory, reason, "ordering a certificate");
            match crate::acme::issue(&a) {
                Ok(()) => {
                    crate::metrics::acme_order(true);
                    t.failures = 0;
                    t.next = Instant::now() + CHECK_EVERY;
                    // A certificate due the moment it is issued (renew_before at least its
                    // lifetime) would be ordered again every check: wait a third of its
                    // lifetime instead, and say so.
                    if crate::acme::due(&a).is_some() {
                        let left = crate::acme::time_left(&a).unwrap_or(0).max(0) as u64;
                        let wait = Duration::from_secs(left / 3).max(CHECK_EVERY);
                        t.next = Instant::now() + wait;
                        tracing::warn!(listener, hosts = ?a.hosts, next_in = ?wait, "the new certificate is already within renew_before (its lifetime is shorter); the next order waits a third of its lifetime");
                    }
                    tracing::info!(listener, hosts = ?a.hosts, "certificate issued; reloading to serve it");
                    if let Err(e) = control.reload() {
                        tracing::error!("the reload after issuance failed; the new certificate waits on disk for the next one:\n{e}");
                    }
                }
                Err(e) => {
                    crate::metrics::acme_order(false);
                    t.failures += 1;
                    let wait = FIRST_BACKOFF
                        .saturating_mul(1 << (t.failures - 1).min(7))
                        .min(CHECK_EVERY);
                    t.next = Instant::now() + wait;
                    tracing::error!(listener, hosts = ?a.hosts, error = e, retry_in = ?wait, "ordering a certificate failed; the current certificate (if any) stays in service");
                }
            }
        }
        std::thread::sleep(TICK);
    }
}
