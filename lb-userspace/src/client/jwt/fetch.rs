//! JWKS URLs, fetched on control threads (never a worker): one thread per URL, on a schedule
//! and when a worker meets an unknown `kid` (at most once per `min_refetch`). A failed fetch
//! keeps the last good key set. The key holder outlives reloads that keep the URL, so a
//! reload neither refetches nor forgets the keys.

use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use super::keys::{parse_jwks, Alg};
use super::{next_generation, KeyHolder, Keys};

/// Holders by URL, CA and algorithms: reloads reuse them while some snapshot holds one.
static HOLDERS: Mutex<Vec<(String, Weak<KeyHolder>)>> = Mutex::new(Vec::new());

/// Where a URL's keys are fetched from and how.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub url: String,
    pub refresh: Duration,
    pub min_refetch: Duration,
    pub tls: Arc<rustls::ClientConfig>,
    pub ca: Option<String>,
    pub algorithms: Vec<Alg>,
}

/// The key holder for `f`, shared with earlier snapshots if one is alive; a new one starts
/// its fetcher thread (its first fetch at once).
pub fn holder(f: &Fetch) -> Arc<KeyHolder> {
    let id = format!("{}\n{:?}\n{:?}\n{:?}", f.url, f.ca, f.algorithms, f.refresh);
    let mut all = HOLDERS.lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|(_, w)| w.strong_count() > 0);
    if let Some(h) = all
        .iter()
        .find(|(k, _)| *k == id)
        .and_then(|(_, w)| w.upgrade())
    {
        h.min_refetch_ms.store(
            f.min_refetch.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        return h;
    }
    let h = Arc::new(KeyHolder::default());
    h.min_refetch_ms.store(
        f.min_refetch.as_millis() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let (tx, rx) = sync_channel::<()>(1);
    let _ = h.refetch.set(tx);
    let weak = Arc::downgrade(&h);
    let url = f.url.clone();
    let f = f.clone();
    let spawned = std::thread::Builder::new()
        .name("lb-jwks".into())
        .spawn(move || {
            let http = crate::acme::client::Http::new(f.tls.clone());
            let mut last_body: Option<Vec<u8>> = None;
            loop {
                let Some(h) = weak.upgrade() else {
                    return;
                };
                fetch_once(&http, &f, &h, &mut last_body);
                drop(h);
                match rx.recv_timeout(f.refresh) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    // Every snapshot that used these keys is gone.
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(url = %url, error = %e, "could not start the JWKS fetcher");
    }
    all.push((id, Arc::downgrade(&h)));
    h
}

/// One fetch: a new key set replaces the old one (and invalidates cached verifications); a
/// failure is recorded and the old set stays.
fn fetch_once(
    http: &crate::acme::client::Http,
    f: &Fetch,
    h: &KeyHolder,
    last_body: &mut Option<Vec<u8>>,
) {
    let got = http.get(&f.url).and_then(|(status, body)| {
        if status != 200 {
            return Err(format!("{}: answered {status}", f.url));
        }
        let set = parse_jwks(&body, &f.algorithms).map_err(|e| format!("{}: {e}", f.url))?;
        if set.keys.is_empty() {
            return Err(format!(
                "{}: no usable key for the allowed algorithms ({} skipped){}",
                f.url,
                set.skipped,
                set.problems
                    .iter()
                    .map(|p| format!("; {p}"))
                    .collect::<String>()
            ));
        }
        for p in &set.problems {
            tracing::warn!(url = %f.url, "JWKS key skipped: {p}");
        }
        Ok((set, body))
    });
    let old = h.current.load_full();
    match got {
        Ok((set, body)) => {
            let changed = last_body.as_deref() != Some(&body[..]);
            if changed {
                tracing::info!(url = %f.url, keys = set.keys.len(), skipped = set.skipped, "JWKS loaded");
            }
            h.current.store(Arc::new(Keys {
                generation: if changed {
                    next_generation()
                } else {
                    old.generation
                },
                set,
                fetched: Some(SystemTime::now()),
                error: None,
            }));
            *last_body = Some(body);
        }
        Err(e) => {
            tracing::warn!(url = %f.url, error = %e, "JWKS fetch failed; the last good keys stay");
            h.current.store(Arc::new(Keys {
                set: old.set.clone(),
                generation: old.generation,
                fetched: old.fetched,
                error: Some(e),
            }));
        }
    }
}
