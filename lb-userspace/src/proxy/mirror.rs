//! Mirroring: a share of a route's requests copied to a shadow cluster. The copy runs as its
//! own task on the worker; its answer is read and thrown away, and nothing about it can delay
//! or change the primary response. Copies are bounded in number and body size; the rest are
//! shed and counted.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::net::{BufPool, Sink, Source};
use crate::snapshot::Snapshot;
use crate::upstream;

/// Sends `head` (a complete request with its body) to the mirror cluster of split `split`,
/// with upstream buffers from `bufs`.
pub fn send(
    bufs: &Rc<BufPool>,
    snap: &Arc<Snapshot>,
    split: usize,
    head: Vec<u8>,
    in_flight: Arc<AtomicU64>,
) {
    let bufs = bufs.clone();
    let snap = snap.clone();
    monoio::spawn(async move {
        let result = copy(&bufs, &snap, split, head).await;
        in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Err(why) = result {
            tracing::debug!(why, "mirror copy failed");
        }
    });
}

async fn copy(
    bufs: &BufPool,
    snap: &Snapshot,
    split: usize,
    mut head: Vec<u8>,
) -> Result<(), &'static str> {
    // The shadow closes after answering, so its answer's end is its close.
    if let Some(end) = head.windows(4).position(|x| x == b"\r\n\r\n") {
        head.splice(end + 2..end + 2, b"Connection: close\r\n".iter().copied());
    }
    let s = &snap.splits[split];
    let Some(m) = &s.config.mirror else {
        return Ok(());
    };
    let cluster = &snap.clusters[m.cluster];
    let Some(ep) = cluster
        .endpoints
        .get(crate::hash::fnv1a_of(&head) as usize % cluster.endpoints.len().max(1))
    else {
        return Err("mirror cluster has no endpoints");
    };
    let deadline = m.timeout;
    let mut up = upstream::connect(&cluster.dial(ep), deadline, bufs)
        .await
        .map_err(|_| "connect")?;
    up.write_all(&mut head, deadline)
        .await
        .map_err(|_| "send")?;
    // Read until the shadow closes or the deadline: the answer is discarded.
    let until = std::time::Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let n = up.data().len();
        up.consume(n);
        if up.fill(left.min(Duration::from_secs(5))).await.is_err() {
            break;
        }
    }
    up.close(bufs);
    Ok(())
}
