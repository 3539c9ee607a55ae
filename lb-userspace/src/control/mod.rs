//! Control-plane state shared by the main thread, the admin API and the control threads:
//! where the config comes from and how it is reloaded, whether the eBPF half runs, and what
//! the workers report. Workers read the snapshots it publishes; nothing here is on the
//! request path.

pub mod acme;
pub mod fleet;
pub mod health;
pub mod notify;
pub mod upgrade;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::config::{Config, ConfigErrors};
use crate::snapshot::{Snapshot, SnapshotCell, StateRegistry};
use crate::steering::XdpFilter;
use health::HealthChecks;

/// The nice value of the threads that build, publish and free snapshots (reloads, DNS
/// re-resolution, the admin API, the file watches): where one shares a core with a worker,
/// the worker wins it. Building a 20,000-route snapshot takes a quarter of a second of
/// CPU; at the same priority, a worker on that core answered in up to tens of ms meanwhile.
pub const CONTROL_NICE: i32 = 10;

/// Runs the calling thread at [`CONTROL_NICE`] from now on (threads it starts later
/// inherit it). Without the privilege to lower a nice value, it cannot be undone, so only
/// control threads call it.
pub fn background_thread() {
    // SAFETY: gettid and setpriority take plain integers; on Linux, PRIO_PROCESS with a
    // thread id changes that thread's nice value only.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, CONTROL_NICE);
    }
}

/// Where the running config comes from, and how to reload it.
pub struct Control {
    pub cell: Arc<SnapshotCell>,
    registry: StateRegistry,
    source: ConfigSource,
    /// Serialises reloads; also owns the health checks, which follow each published snapshot.
    health: Mutex<HealthChecks>,
    pub draining: AtomicBool,
    /// The kernel half, if configured.
    pub steering: Mutex<SteeringState>,
    /// Per-worker connection accounting.
    pub worker_stats: Mutex<Arc<Vec<WorkerStats>>>,
    /// The workers' read buffer size, fixed at start: the most `http.max_header_bytes` can be.
    buf_size: usize,
    /// Copies of the listening sockets, to hand to a new binary.
    pub handover: Mutex<upgrade::Sockets>,
    /// This binary and its arguments, as started.
    pub launch: upgrade::Launch,
    /// Held while an upgrade runs: one at a time.
    upgrading: Mutex<()>,
    /// A new process took over: this one drains, and says nothing more to systemd.
    pub upgraded: AtomicBool,
    /// When this process started serving (wall clock, and monotonic for its uptime).
    pub started: std::time::SystemTime,
    pub started_at: std::time::Instant,
    /// The latest reload, whichever way it was asked for.
    pub last_reload: Mutex<Option<ReloadOutcome>>,
}

/// What the latest reload did, for the admin API and the console.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub at: std::time::SystemTime,
    /// The version now serving and what changed, or why the new config was refused.
    pub result: Result<Reloaded, Vec<String>>,
}

/// A reload that took: the version now serving, and what it changed.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub version: String,
    pub changes: crate::config::diff::Changes,
}

/// Each worker's read buffer: room for the largest request head allowed.
pub fn read_buffer_size(config: &crate::config::Config) -> usize {
    config.http.max_header_bytes.max(4096)
}

/// Whether the eBPF programs run.
pub enum SteeringState {
    Off,
    On(XdpFilter),
    /// Configured, but they could not load; the reason.
    Unavailable(String),
}

/// Connections one worker accepted, and how many it holds now.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub accepted: std::sync::atomic::AtomicU64,
    pub active: std::sync::atomic::AtomicU64,
}

impl Control {
    /// The control state for a config loaded from `source` and published in `cell`.
    pub fn new(
        cell: Arc<SnapshotCell>,
        registry: StateRegistry,
        source: ConfigSource,
        health: HealthChecks,
        buf_size: usize,
    ) -> Control {
        Control {
            cell,
            registry,
            source,
            health: Mutex::new(health),
            draining: AtomicBool::new(false),
            steering: Mutex::new(SteeringState::Off),
            worker_stats: Mutex::new(Arc::new(Vec::new())),
            buf_size,
            handover: Mutex::new(upgrade::Sockets::default()),
            launch: upgrade::Launch::current(),
            upgrading: Mutex::new(()),
            upgraded: AtomicBool::new(false),
            started: std::time::SystemTime::now(),
            started_at: std::time::Instant::now(),
            last_reload: Mutex::new(None),
        }
    }

    /// Whether an upgrade is running now.
    pub fn upgrading(&self) -> bool {
        self.upgrading.try_lock().is_err()
    }

    /// Starts the new binary and hands it the sockets and release state; `Ok` with its PID
    /// once it serves. The caller then drains this process. On `Err` nothing changed.
    pub fn upgrade(&self) -> Result<u32, String> {
        use std::sync::atomic::Ordering;
        let Ok(_one) = self.upgrading.try_lock() else {
            return Err("an upgrade is already in progress".into());
        };
        if self.draining.load(Ordering::SeqCst) || self.upgraded.load(Ordering::SeqCst) {
            return Err("this process is draining; upgrade the one that serves".into());
        }
        tracing::info!(binary = %self.launch.exe.display(), "upgrade: starting the new binary");
        let mut state = upgrade::save_state(&self.cell.load());
        let sockets = self.handover.lock().unwrap_or_else(|p| p.into_inner());
        // The kernel half goes too: the deny list as it is now, and copies of the XDP links'
        // and the socket array's descriptors. The lock is not held while the new process
        // starts (the admin API's scrapes need it); deny list edits are refused meanwhile.
        let kernel = match &*self.steering.lock().unwrap_or_else(|p| p.into_inner()) {
            SteeringState::On(kernel) => {
                state.deny = Some(
                    kernel
                        .deny_entries()
                        .unwrap_or_default()
                        .iter()
                        .map(|(a, l)| format!("{a}/{l}"))
                        .collect(),
                );
                upgrade::Kernel {
                    xdp_links: kernel
                        .xdp_links()
                        .into_iter()
                        .filter_map(|(i, fd)| fd.try_clone_to_owned().ok().map(|fd| (i, fd)))
                        .collect(),
                    socket_map: kernel
                        .socket_map()
                        .ok()
                        .and_then(|fd| fd.try_clone_to_owned().ok()),
                }
            }
            _ => upgrade::Kernel::default(),
        };
        let result = upgrade::start_new(&self.launch, &sockets, &kernel, state);
        drop(kernel);
        let mut steering = self.steering.lock().unwrap_or_else(|p| p.into_inner());
        let took_kernel = matches!(&result, Err(f) if f.took_kernel);
        let result = result.map_err(|f| f.reason);
        if let (true, SteeringState::On(kernel)) = (took_kernel, &mut *steering) {
            // The new process may have swapped its program in and taken the sockets out of
            // this one's array before it failed (it has exited by now).
            if let Err(e) = kernel.reclaim_xdp() {
                tracing::error!("putting this process's XDP program back failed: {e}");
            }
            if let Err(e) = kernel.reclaim_steering(&sockets.steered()) {
                tracing::error!("putting this process's socket steering back failed: {e}");
            }
        }
        drop(steering);
        match &result {
            Ok(pid) => {
                self.upgraded.store(true, Ordering::SeqCst);
                // The service's main process is the new one now: its notifications (the
                // watchdog, reloads) count, this one's no longer do.
                notify::hand_over(*pid);
                tracing::info!(pid, "upgrade: the new process serves; this one drains");
            }
            Err(e) => tracing::error!("upgrade failed, this process serves on: {e}"),
        }
        result
    }
}

/// A config file on disk, the embedded demo config, or a local file with the fleet's
/// document from etcd.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Embedded {
        name: &'static str,
        text: &'static str,
    },
    Etcd(Arc<fleet::EtcdSource>),
}

impl ConfigSource {
    /// Reads and validates the config; returns it with its text.
    pub fn load(&self) -> Result<(Config, String), ConfigErrors> {
        self.load_with(None)
    }

    /// Like [`ConfigSource::load`], with `candidate` in place of the etcd document applied.
    fn load_with(
        &self,
        candidate: Option<&fleet::Revision>,
    ) -> Result<(Config, String), ConfigErrors> {
        match self {
            ConfigSource::File(p) => Config::load(p),
            ConfigSource::Embedded { name, text } => {
                Config::parse(text, Path::new(name)).map(|c| (c, text.to_string()))
            }
            ConfigSource::Etcd(src) => {
                let doc = candidate.cloned().or_else(|| src.applied());
                Config::load_with(&src.local, doc.map(|d| src.document(&d)).as_ref())
            }
        }
    }

    /// The local file a watch follows, if any.
    pub fn local_file(&self) -> Option<&Path> {
        match self {
            ConfigSource::File(p) => Some(p),
            ConfigSource::Etcd(src) => Some(&src.local),
            ConfigSource::Embedded { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ConfigSource::File(p) => p.display().to_string(),
            ConfigSource::Embedded { name, .. } => format!("{name} (embedded)"),
            ConfigSource::Etcd(src) => src.describe(),
        }
    }
}

impl Control {
    /// Validates the source again and publishes it. An invalid config changes nothing.
    pub fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        self.reload_from(None)
    }

    /// Validates the local file with this revision of the fleet's etcd document and
    /// publishes it, whole or not at all.
    pub fn reload_revision(&self, rev: &fleet::Revision) -> Result<Reloaded, ConfigErrors> {
        self.reload_from(Some(rev))
    }

    fn reload_from(&self, candidate: Option<&fleet::Revision>) -> Result<Reloaded, ConfigErrors> {
        notify::reloading();
        let result = self.try_reload(candidate);
        crate::metrics::reload(result.is_ok());
        *self.last_reload.lock().unwrap_or_else(|p| p.into_inner()) = Some(ReloadOutcome {
            at: std::time::SystemTime::now(),
            result: match &result {
                Ok(r) => Ok(r.clone()),
                Err(e) => Err(e
                    .errors
                    .iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect()),
            },
        });
        match &result {
            Ok(r) => notify::notify(&format!("READY=1\nSTATUS=serving config {}", r.version)),
            Err(_) => notify::notify("READY=1\nSTATUS=reload refused; the running config stays"),
        }
        result
    }

    fn try_reload(&self, candidate: Option<&fleet::Revision>) -> Result<Reloaded, ConfigErrors> {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let (config, text) = self.source.load_with(candidate)?;
        for w in config.warnings() {
            tracing::warn!("{w}");
        }
        let current = self.cell.load();
        let changes =
            crate::config::diff::Changes::between(&current.config, &config, self.buf_size);
        if !changes.restart.is_empty() {
            return Err(ConfigErrors {
                file: PathBuf::from(self.source.describe()),
                errors: changes.restart,
            });
        }
        let snap =
            Snapshot::build(config, &text, &self.registry).map_err(|errors| ConfigErrors {
                file: PathBuf::from(self.source.describe()),
                errors,
            })?;
        let version = snap.version.clone();
        if let SteeringState::On(kernel) =
            &mut *self.steering.lock().unwrap_or_else(|p| p.into_inner())
        {
            let st = &snap.config.steering;
            if let Err(e) = kernel
                .set_deny(&st.deny)
                .and_then(|_| kernel.set_syn_limit(st.syn_rate, st.syn_burst))
            {
                tracing::error!("updating the eBPF deny list failed: {e}");
            }
        }
        health.reconcile(&snap);
        crate::metrics::config_active(
            &version,
            Some(&current.version),
            unix_seconds(snap.loaded_at),
        );
        // Kept (and on disk) before it serves, under the reload lock: a reload of the local
        // file meanwhile cannot go back to the previous document, and a crash right after
        // it serves restarts with it.
        if let (Some(rev), ConfigSource::Etcd(src)) = (candidate, &self.source) {
            src.set_applied(rev);
        }
        self.cell.publish(snap);
        // Splits whose config changed start afresh; the fleet's state for them applies.
        if let Some(fleet) = self.fleet() {
            fleet.reapply(&self.cell.load());
        }
        tracing::info!(version = %version, "config reloaded: {}", changes.to_string().trim_end().replace('\n', "; "));
        Ok(Reloaded { version, changes })
    }

    /// Resolves host-name endpoints again; publishes a new snapshot if any address changed.
    pub fn re_resolve(&self) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.cell.load();
        match Snapshot::build(current.config.clone(), &current.text, &self.registry) {
            Ok(snap) => {
                let (mut old, mut new) = (current.endpoint_addrs(), snap.endpoint_addrs());
                old.sort();
                new.sort();
                if old != new {
                    tracing::info!(before = ?old, after = ?new, "endpoint addresses changed");
                    health.reconcile(&snap);
                    self.cell.publish(snap);
                }
            }
            // Keep serving the addresses we have; DNS may be back next time.
            Err(errors) => tracing::warn!(
                ?errors,
                "re-resolving endpoints failed; keeping the current addresses"
            ),
        }
    }

    pub fn source(&self) -> &ConfigSource {
        &self.source
    }

    /// The fleet's release state, when the config comes from etcd.
    pub fn fleet(&self) -> Option<&fleet::Fleet> {
        match &self.source {
            ConfigSource::Etcd(src) => Some(&src.fleet),
            _ => None,
        }
    }

    /// Marks the appliance draining and stops the health checks.
    pub fn start_drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop_all();
    }
}

/// Seconds since the Unix epoch, for gauges.
pub fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
