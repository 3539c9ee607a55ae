//! Release state shared by the fleet. With the etcd source on, each split's runtime state
//! (weights set through the admin API, rollback, pause, the promotion step) lives at
//! `PREFIX/splits/NAME`, and every appliance applies what it holds: an admin call on any
//! appliance changes all of them. Each appliance publishes its window counts per target at
//! `PREFIX/windows/SPLIT/NODE` under its lease; the one elected at `PREFIX/leader` runs the
//! canary analysis on their sums and writes its decisions back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::control::upgrade::SplitSaved;
use crate::release::state::{Counts, SplitState};
use crate::snapshot::Snapshot;

/// How long an admin call waits for its change to be written to etcd.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A split state to write, and who waits for the answer.
pub struct Put {
    pub name: String,
    pub doc: SplitSaved,
    /// The revision of the split's state the change was made on: the write happens only if
    /// etcd still holds that one.
    pub base: i64,
    /// Not written after this: whoever asked has given up and put things back.
    pub deadline: Instant,
    pub reply: std::sync::mpsc::Sender<Result<(), String>>,
}

/// This appliance's part in the fleet's release state.
pub struct Fleet {
    pub node: String,
    /// Whether this appliance runs the fleet's analysis now.
    pub leader: AtomicBool,
    /// Each split's state as etcd holds it, with the revision that wrote it.
    known: Mutex<HashMap<String, (SplitSaved, i64)>>,
    tx: tokio::sync::mpsc::UnboundedSender<Put>,
    rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Put>>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("node", &self.node)
            .field("leader", &self.leader)
            .finish()
    }
}

impl Fleet {
    pub fn new(node: String) -> Fleet {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        Fleet {
            node,
            leader: AtomicBool::new(false),
            known: Mutex::new(HashMap::new()),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// The queue of writes, for the etcd thread (once).
    pub fn take_requests(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Put>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// The revision of split `name`'s state in etcd (0: none yet).
    pub fn known_revision(&self, name: &str) -> i64 {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map_or(0, |(_, r)| *r)
    }

    pub fn set_known(&self, name: &str, doc: SplitSaved, revision: i64) {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (doc, revision));
    }

    pub fn known(&self, name: &str) -> Option<SplitSaved> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|(d, _)| d.clone())
    }

    /// After a local change to split `name`, made on the fleet's state at revision `base`
    /// ([`Fleet::known_revision`] before the change), writes it for the fleet and waits for
    /// etcd's answer. If the write fails (etcd unreachable, or another appliance changed the
    /// split meanwhile) the split is put back to what etcd holds (`before` if it holds
    /// nothing) and the reason returned: an appliance never drifts from the fleet silently.
    pub fn publish(
        &self,
        name: &str,
        state: &SplitState,
        targets: usize,
        base: i64,
        before: &SplitSaved,
    ) -> Result<(), String> {
        let (reply, answer) = std::sync::mpsc::channel();
        let sent = self.tx.send(Put {
            name: name.to_string(),
            doc: SplitSaved::of(name, state),
            base,
            deadline: Instant::now() + WRITE_TIMEOUT,
            reply,
        });
        let result = match sent {
            Err(_) => Err("the etcd client has stopped".to_string()),
            Ok(()) => answer
                .recv_timeout(WRITE_TIMEOUT + Duration::from_millis(500))
                .unwrap_or_else(|_| {
                    Err(format!(
                        "etcd did not take the change within {WRITE_TIMEOUT:?}"
                    ))
                }),
        };
        if result.is_err() {
            self.known(name)
                .as_ref()
                .unwrap_or(before)
                .apply_to(state, targets);
        }
        result
    }

    /// A split's state from etcd: remembered, and applied to the local split of that name
    /// and config. Logs (and counts) a rollback it brings.
    pub fn apply_remote(&self, snap: &Snapshot, name: &str, doc: SplitSaved, revision: i64) {
        self.set_known(name, doc.clone(), revision);
        let Some(s) = snap.splits.iter().find(|s| s.config.name == name) else {
            return;
        };
        let was_rolled_back = s.state.rolled_back.load(Ordering::SeqCst);
        if SplitSaved::of(name, &s.state) == doc {
            return;
        }
        if !doc.apply_to(&s.state, s.config.targets.len()) {
            tracing::debug!(
                split = name,
                "fleet state is for another config of the split"
            );
            return;
        }
        if doc.rolled_back && !was_rolled_back {
            crate::metrics::canary_rolled_back(name);
            tracing::warn!(split = name, reason = %doc.decision.2, "canary rolled back by the fleet");
        }
        tracing::info!(
            split = name,
            revision,
            action = %doc.decision.1,
            "fleet release state applied"
        );
    }

    /// Applies what etcd holds to the splits of a snapshot just published (a reload makes
    /// fresh state for splits whose config changed).
    pub fn reapply(&self, snap: &Snapshot) {
        for s in &snap.splits {
            if let Some(doc) = self.known(&s.config.name) {
                if SplitSaved::of(&s.config.name, &s.state) != doc {
                    doc.apply_to(&s.state, s.config.targets.len());
                }
            }
        }
    }

    /// Puts split `name` back to the state etcd holds (after a write of the leader's
    /// decision failed).
    pub fn revert(&self, snap: &Snapshot, name: &str) {
        let Some(s) = snap.splits.iter().find(|s| s.config.name == name) else {
            return;
        };
        match self.known(name) {
            Some(doc) => {
                doc.apply_to(&s.state, s.config.targets.len());
            }
            None => tracing::warn!(
                split = name,
                "a decision could not be written and etcd holds no state for the split yet"
            ),
        }
    }
}

/// One appliance's window counts for a split, as published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Published {
    pub node: String,
    pub fingerprint: u64,
    pub targets: Vec<TargetCounts>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetCounts {
    pub requests: u64,
    pub errors: u64,
    /// The latency histogram's buckets (see `release::state`).
    pub latency: Vec<u64>,
}

impl From<&Counts> for TargetCounts {
    fn from(c: &Counts) -> Self {
        TargetCounts {
            requests: c.requests,
            errors: c.errors,
            latency: c.latency.to_vec(),
        }
    }
}

impl TargetCounts {
    fn counts(&self) -> Counts {
        let mut c = Counts {
            requests: self.requests,
            errors: self.errors,
            ..Counts::default()
        };
        for (a, b) in c.latency.iter_mut().zip(&self.latency) {
            *a = *b;
        }
        c
    }
}

/// This appliance's counts for every split with an analysis: (split, JSON).
pub fn publishable(snap: &Snapshot, node: &str, now_ms: u64) -> Vec<(String, String)> {
    snap.splits
        .iter()
        .filter_map(|s| {
            let a = s.config.analysis.as_ref()?;
            let p = Published {
                node: node.to_string(),
                fingerprint: s.state.fingerprint.load(Ordering::Relaxed),
                targets: s
                    .state
                    .stats
                    .iter()
                    .map(|t| TargetCounts::from(&t.counts(now_ms, a.window)))
                    .collect(),
            };
            serde_json::to_string(&p)
                .ok()
                .map(|j| (s.config.name.clone(), j))
        })
        .collect()
}

/// The fleet's sums per target from the appliances' published counts that are for the
/// same config of the split; with how many appliances they came from.
pub fn sum(published: &[Published], fingerprint: u64, targets: usize) -> (Vec<Counts>, usize) {
    let mut out = vec![Counts::default(); targets];
    let mut n = 0;
    for p in published
        .iter()
        .filter(|p| p.fingerprint == fingerprint && p.targets.len() == targets)
    {
        n += 1;
        for (o, t) in out.iter_mut().zip(&p.targets) {
            o.add(&t.counts());
        }
    }
    (out, n)
}

/// What a decision was made on, for its reason and the log.
pub fn basis(baseline: &Counts, canary: &Counts, appliances: usize) -> String {
    format!(
        " (fleet counts from {appliances} appliance{}: canary {} requests, {} 5xx; baseline {} requests, {} 5xx)",
        if appliances == 1 { "" } else { "s" },
        canary.requests,
        canary.errors,
        baseline.requests,
        baseline.errors
    )
}
