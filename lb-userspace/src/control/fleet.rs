//! What the control side holds of a fleet (see `docs/fleet.md`): the fleet's config document
//! from etcd as applied here, the watch's status, and the release state the appliances share.
//! The etcd and Redis clients that fill these in are in the `fleet` module; this one talks
//! to neither.
//!
//! Release state: with the etcd source on, each split's runtime state (weights set through
//! the admin API, rollback, pause, the promotion step) lives at `PREFIX/splits/NAME`, and
//! every appliance applies what it holds: an admin call on any appliance changes all of
//! them. Each appliance publishes its window counts per target at
//! `PREFIX/windows/SPLIT/NODE` under its lease; the one elected at `PREFIX/leader` runs the
//! canary analysis on their sums and writes its decisions back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::include::Document;
use crate::config::source::EtcdConfig;
use crate::control::upgrade::SplitSaved;
use crate::release::state::{Counts, SplitState};
use crate::snapshot::Snapshot;

/// One revision of the fleet's config document: its text and the revision that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    pub text: String,
    pub revision: i64,
}

/// Where the running config came from at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartedFrom {
    /// Read from etcd.
    Etcd,
    /// etcd had no document yet: the local file alone.
    LocalOnly,
    /// etcd was unreachable (or its document invalid): the last one applied, from disk.
    Persisted,
}

impl StartedFrom {
    pub fn label(self) -> &'static str {
        match self {
            StartedFrom::Etcd => "etcd",
            StartedFrom::LocalOnly => "local file only (no config in etcd yet)",
            StartedFrom::Persisted => {
                "persisted (etcd was unreachable, or had no valid config, at start)"
            }
        }
    }
}

/// How the watch is doing, for the admin API.
#[derive(Debug, Clone)]
pub struct Status {
    pub started_from: StartedFrom,
    pub connected: bool,
    /// When the watch last confirmed it was up to date.
    pub last_sync: Option<SystemTime>,
    pub rejected: u64,
    /// The latest revision refused, and why.
    pub last_rejected: Option<(i64, Vec<String>)>,
    pub reconnects: u64,
    pub full_reads: u64,
    pub last_error: Option<String>,
}

/// The local file plus the fleet's document in etcd.
#[derive(Debug)]
pub struct EtcdSource {
    pub local: PathBuf,
    pub settings: EtcdConfig,
    /// The document the running config was built from; `None` while etcd has none.
    applied: Mutex<Option<Revision>>,
    pub status: Mutex<Status>,
    /// The fleet's release state and canary analysis.
    pub fleet: Fleet,
    /// Revisions of the document to apply, for the thread that reloads (a reload builds a
    /// snapshot and may resolve names: never on the thread that renews the lease).
    applier: Mutex<Option<std::sync::mpsc::Sender<Revision>>>,
}

impl EtcdSource {
    pub fn new(
        local: PathBuf,
        settings: EtcdConfig,
        applied: Option<Revision>,
        started_from: StartedFrom,
    ) -> Arc<EtcdSource> {
        let node = settings.node_name();
        Arc::new(EtcdSource {
            local,
            settings,
            applied: Mutex::new(applied),
            status: Mutex::new(Status {
                started_from,
                connected: false,
                last_sync: None,
                rejected: 0,
                last_rejected: None,
                reconnects: 0,
                full_reads: 0,
                last_error: None,
            }),
            fleet: Fleet::new(node),
            applier: Mutex::new(None),
        })
    }

    /// Where [`EtcdSource::submit`] sends revisions: the thread that applies them.
    pub(crate) fn set_applier(&self, tx: std::sync::mpsc::Sender<Revision>) {
        *self.applier.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// The document as merged into the local file, named by key and revision.
    pub fn document(&self, rev: &Revision) -> Document {
        Document {
            name: format!(
                "etcd {} (revision {})",
                self.settings.config_key(),
                rev.revision
            ),
            text: rev.text.clone(),
        }
    }

    /// Hands a revision of the document to the applying thread.
    pub(crate) fn submit(&self, doc: Revision) {
        if let Some(tx) = self
            .applier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(doc);
        }
    }

    pub fn applied(&self) -> Option<Revision> {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records `rev` as the document in service and persists it. Called with the reload
    /// lock held, right after the snapshot built from it was published.
    pub fn set_applied(&self, rev: &Revision) {
        *self.applied.lock().unwrap_or_else(|p| p.into_inner()) = Some(rev.clone());
        crate::metrics::etcd_revision(rev.revision);
        if let Err(e) = persist(&self.settings, rev) {
            tracing::error!(
                "keeping the applied config in {} failed: {e}",
                self.settings.persisted_path().display()
            );
        }
    }

    pub(crate) fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn describe(&self) -> String {
        match self.applied() {
            Some(r) => format!(
                "etcd {} revision {} with {}",
                self.settings.config_key(),
                r.revision,
                self.local.display()
            ),
            None => format!(
                "{} (etcd {} has no config yet)",
                self.local.display(),
                self.settings.config_key()
            ),
        }
    }
}

/// The persisted document, as written by [`persist`].
#[derive(serde::Serialize, serde::Deserialize)]
struct Persisted {
    key: String,
    revision: i64,
    applied_at_unix: u64,
    text: String,
}

pub(crate) fn persist(s: &EtcdConfig, rev: &Revision) -> Result<(), String> {
    let path = s.persisted_path();
    std::fs::create_dir_all(&s.state_dir)
        .map_err(|e| format!("creating {}: {e}", s.state_dir.display()))?;
    let body = serde_json::to_vec_pretty(&Persisted {
        key: s.config_key(),
        revision: rev.revision,
        applied_at_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        text: rev.text.clone(),
    })
    .map_err(|e| e.to_string())?;
    // Written whole to a new file and renamed over the old: a crash leaves one or the other.
    let tmp = path.with_extension("json.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        f.write_all(&body)
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The rename itself is durable once the directory is.
    std::fs::File::open(&s.state_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("{}: {e}", s.state_dir.display()))
}

/// The persisted document, if there is one for this key.
pub(crate) fn persisted(s: &EtcdConfig) -> Result<Option<Revision>, String> {
    let path = s.persisted_path();
    let body = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let p: Persisted = serde_json::from_slice(&body)
        .map_err(|e| format!("{}: not a persisted config: {e}", path.display()))?;
    if p.key != s.config_key() {
        return Err(format!(
            "{} holds {}, not {}: ignored",
            path.display(),
            p.key,
            s.config_key()
        ));
    }
    Ok(Some(Revision {
        text: p.text,
        revision: p.revision,
    }))
}

/// How long an admin call waits for its change to be written to etcd.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a split state was not confirmed written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteError {
    /// etcd refused it or could not be reached: nothing was written.
    Refused(String),
    /// No answer in time: it may still be written (the watch will tell).
    Unknown(String),
}

/// A split state to write, and who waits for the answer.
pub struct Put {
    pub name: String,
    pub doc: SplitSaved,
    /// The revision of the split's state the change was made on: the write happens only if
    /// etcd still holds that one.
    pub base: i64,
    /// Not written after this: whoever asked has given up and put things back.
    pub deadline: Instant,
    pub reply: std::sync::mpsc::Sender<Result<(), WriteError>>,
}

/// This appliance's part in the fleet's release state.
pub struct Fleet {
    pub node: String,
    /// Whether this appliance runs the fleet's analysis now.
    pub leader: AtomicBool,
    /// Whether the etcd session is up: without it, a change is refused at once rather than
    /// after the write's timeout.
    pub connected: AtomicBool,
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
            connected: AtomicBool::new(false),
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
    ) -> Result<(), WriteError> {
        if !self.connected.load(Ordering::SeqCst) {
            self.known(name)
                .as_ref()
                .unwrap_or(before)
                .apply_to(state, targets);
            return Err(WriteError::Refused("etcd is unreachable".into()));
        }
        let (reply, answer) = std::sync::mpsc::channel();
        let sent = self.tx.send(Put {
            name: name.to_string(),
            doc: SplitSaved::of(name, state),
            base,
            deadline: Instant::now() + WRITE_TIMEOUT,
            reply,
        });
        let result = match sent {
            Err(_) => Err(WriteError::Refused("the etcd client has stopped".into())),
            Ok(()) => answer
                .recv_timeout(WRITE_TIMEOUT + Duration::from_millis(500))
                .unwrap_or_else(|_| {
                    Err(WriteError::Unknown(format!(
                        "etcd did not confirm the change within {WRITE_TIMEOUT:?}"
                    )))
                }),
        };
        // Here, the split follows what etcd holds: if an unconfirmed change lands after
        // all, its watch event (a newer revision) applies it on every appliance.
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
        // An event older than what this appliance wrote or saw since changes nothing; nor
        // does one it has seen already (a full read after a reconnect repeats the latest):
        // applied again, it would undo a local change not yet confirmed and count a
        // rollback twice.
        if revision <= self.known_revision(name) {
            return;
        }
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
