//! The main thread: load the config, bind, start workers and the admin API, then wait for
//! signals (SIGHUP reload, SIGTERM/SIGINT drain, SIGQUIT immediate stop).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::channel::oneshot;

use crate::config::{ConfigErrors, SteeringMode, Workers};
use crate::control::health::HealthChecks;
use crate::control::{read_buffer_size, unix_seconds};
pub use crate::control::{ConfigSource, Control, SteeringState, WorkerStats};
use crate::snapshot::{Snapshot, SnapshotCell, StateRegistry};
use crate::steering::XdpFilter;
use crate::worker::{self, WorkerSpec};

/// How long workers get to come up before start-up is declared failed.
const WORKER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads the programs, steers the workers' sockets, attaches XDP and fills the maps.
fn start_steering(
    cfg: &crate::config::SteeringConfig,
    per_worker: &[Vec<std::net::TcpListener>],
    mut inherited: Option<&mut crate::control::upgrade::Inherited>,
) -> Result<(XdpFilter, crate::steering::load::WorkerLoads), crate::steering::SteeringError> {
    let mut kernel = XdpFilter::load()?;
    kernel.set_deny(&cfg.deny)?;
    // After an upgrade, the deny list as the old process had it (the admin API's changes
    // last until a reload, not until an upgrade).
    if let Some(i) = inherited.as_deref() {
        if let Some(deny) = &i.state.deny {
            let mut list = Vec::new();
            for p in deny {
                if let Ok(entry) = crate::config::parse_prefix(p) {
                    list.push(entry);
                }
            }
            kernel.set_deny(&list)?;
        }
    }
    kernel.set_syn_limit(cfg.syn_rate, cfg.syn_burst)?;
    // The old process's socket array lets go of the sockets, for this one's to take them.
    if let Some(i) = inherited.as_deref_mut() {
        if let Some(old) = i.socket_map.as_ref() {
            XdpFilter::release_sockets_of(std::os::fd::AsFd::as_fd(old));
            i.took_kernel = true;
        }
    }
    // XDP first: if an interface refuses it, nothing was attached to the sockets yet, and
    // dropping `kernel` detaches what was attached to interfaces. An interface the old
    // process of an upgrade had: its link, with this program swapped in.
    if cfg.mode == SteeringMode::Xdp {
        for iface in &cfg.interfaces {
            match inherited
                .as_deref_mut()
                .and_then(|i| i.take_xdp_link(iface))
            {
                Some(link) => kernel.take_over_xdp(iface, link)?,
                None => kernel.attach_xdp(iface, cfg.xdp_mode)?,
            }
        }
    }
    let sockets: Vec<Vec<&std::net::TcpListener>> =
        per_worker.iter().map(|l| l.iter().collect()).collect();
    let loads = kernel.steer(&sockets, cfg.policy, cfg.cpu_steering)?;
    Ok((kernel, loads))
}

/// Options of `lb run` that are not in the config file.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Written once every listener is bound and every worker runs: JSON with the bound
    /// addresses, for scripts and tests that let the kernel pick ports.
    pub ready_file: Option<PathBuf>,
}

/// Runs the appliance until it is told to stop.
pub fn run(source: ConfigSource, opts: RunOptions) -> anyhow::Result<()> {
    // Started by a running lb for a binary upgrade: its sockets and release state.
    let mut inherited = match crate::control::upgrade::Inherited::from_env() {
        None => None,
        Some(Ok(i)) => Some(i),
        Some(Err(e)) => bail!("{e}"),
    };
    let result = serve(source, opts, &mut inherited);
    if let (Err(e), Some(i)) = (&result, &inherited) {
        i.failed(&format!("{e:#}"));
    }
    result
}

fn serve(
    source: ConfigSource,
    opts: RunOptions,
    inherited: &mut Option<crate::control::upgrade::Inherited>,
) -> anyhow::Result<()> {
    raise_fd_limit();
    // Before any snapshot: its metric handles must come from the installed recorder.
    crate::metrics::install();
    let (config, text) = source.load().map_err(|e| anyhow::anyhow!("{e}"))?;
    if let ConfigSource::Etcd(src) = &source {
        crate::metrics::register_etcd();
        if let Some(r) = src.applied() {
            crate::metrics::etcd_revision(r.revision);
        }
        let rejected = src
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rejected;
        for _ in 0..rejected {
            crate::metrics::etcd_rejected();
        }
    }
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let registry = StateRegistry::default();
    let snapshot = Snapshot::build(config.clone(), &text, &registry).map_err(|errors| {
        anyhow::anyhow!(
            "{}",
            ConfigErrors {
                file: PathBuf::from(source.describe()),
                errors
            }
        )
    })?;
    let mut health = HealthChecks::default();
    health.reconcile(&snapshot);
    crate::metrics::register_at_zero(&[
        crate::connlimit::Refusal::Worker.label(),
        crate::connlimit::Refusal::Total.label(),
        crate::connlimit::Refusal::PerIp.label(),
        "accept_error",
    ]);
    crate::metrics::config_active(&snapshot.version, None, unix_seconds(snapshot.loaded_at));
    tracing::info!(config = %source.describe(), version = %snapshot.version, "config loaded");
    if let Some(i) = inherited.as_ref() {
        let r = crate::control::upgrade::restore_state(&snapshot, &i.state);
        tracing::info!(
            splits = r.splits,
            endpoints = r.endpoints,
            rate_limited_keys = r.rates,
            "upgrade: runtime state carried over"
        );
    }
    let cell = Arc::new(SnapshotCell::new(snapshot));
    let control = Arc::new(Control::new(
        cell.clone(),
        registry,
        source,
        health,
        read_buffer_size(&config),
    ));
    spawn_resolver(control.clone())?;
    spawn_cert_watch(control.clone())?;
    crate::control::acme::spawn(control.clone())?;
    spawn_release_control(control.clone())?;
    if let Some(redis) = &config.redis {
        crate::fleet::ratelimit::spawn(control.clone(), redis.clone())?;
    }

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let n_workers = match config.server.workers {
        Workers::Count(n) => n,
        Workers::Auto => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };

    // One socket per worker per listener, all in one SO_REUSEPORT group per address.
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..n_workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let mut handover = crate::control::upgrade::Sockets::default();
    for l in &config.listeners {
        // An upgrade's sockets where the old process had them: no connection in their
        // queues is lost, and the port stays the same even when configured as 0.
        let taken = inherited.as_mut().and_then(|i| i.take(&l.name, 0, l.addr));
        let first = match taken {
            Some(s) => s,
            None => worker::bind_reuseport(l.addr, l.backlog)
                .with_context(|| format!("listener {:?}: cannot listen on {}", l.name, l.addr))?,
        };
        let actual = first.local_addr()?;
        per_worker[0].push(first);
        for (w, sockets) in per_worker.iter_mut().enumerate().skip(1) {
            let taken = inherited.as_mut().and_then(|i| i.take(&l.name, w, l.addr));
            sockets.push(match taken {
                Some(s) => s,
                None => worker::bind_reuseport(actual, l.backlog)
                    .with_context(|| format!("listener {:?}: cannot listen on {actual}", l.name))?,
            });
        }
        for (w, sockets) in per_worker.iter().enumerate() {
            if let Some(s) = sockets.last() {
                handover.list.push((
                    crate::control::upgrade::SocketInfo {
                        listener: l.name.clone(),
                        worker: w,
                        configured: l.addr.to_string(),
                        bound: actual.to_string(),
                    },
                    s.try_clone()?.into(),
                ));
            }
        }
        tracing::info!(listener = %l.name, addr = %actual, "listening");
        bound.push((l.name.clone(), actual));
    }

    // The kernel half, before any worker accepts: sockets go into the steering map first.
    let conns = crate::connlimit::Connections::leak();
    let worker_stats: Arc<Vec<WorkerStats>> =
        Arc::new((0..n_workers).map(|_| WorkerStats::default()).collect());
    *control
        .worker_stats
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = worker_stats.clone();
    let mut loads = None;
    // An upgrade of an lb with XDP attached takes it over or fails, leaving the old process
    // serving with its program: an upgrade never quietly drops the kernel half.
    let had_xdp = inherited.as_ref().is_some_and(|i| i.has_xdp_links());
    if config.steering.mode != SteeringMode::Off {
        match start_steering(&config.steering, &per_worker, inherited.as_mut()) {
            Ok((kernel, l)) => {
                tracing::info!(mode = ?config.steering.mode, policy = ?config.steering.policy, "eBPF steering on");
                if config.steering.policy == crate::config::SteeringPolicy::LeastLoaded {
                    loads = Some(Arc::new(l));
                }
                *control.steering.lock().unwrap_or_else(|p| p.into_inner()) =
                    SteeringState::On(kernel);
            }
            Err(e) if had_xdp => bail!("taking over the old process's XDP programs: {e}"),
            Err(e) => {
                tracing::warn!("eBPF steering unavailable, running on plain SO_REUSEPORT: {e}");
                *control.steering.lock().unwrap_or_else(|p| p.into_inner()) =
                    SteeringState::Unavailable(e.to_string());
            }
        }
    }

    if let (Some(every), Some(path)) = (config.server.watch_config, control.source().local_file()) {
        spawn_watch(path.to_path_buf(), every, control.clone())?;
    }
    if let ConfigSource::Etcd(src) = control.source() {
        crate::fleet::etcd::spawn(control.clone(), src.clone())?;
    }

    let admin_addr = match &config.admin {
        Some(a) => {
            let listener = match inherited.as_mut().and_then(|i| i.take("", 0, a.addr)) {
                Some(l) => l,
                None => std::net::TcpListener::bind(a.addr)
                    .with_context(|| format!("admin: cannot listen on {}", a.addr))?,
            };
            let bound_at = listener.local_addr()?;
            handover.list.push((
                crate::control::upgrade::SocketInfo {
                    listener: String::new(),
                    worker: 0,
                    configured: a.addr.to_string(),
                    bound: bound_at.to_string(),
                },
                listener.try_clone()?.into(),
            ));
            Some(crate::admin::start_on(listener, control.clone())?)
        }
        None => None,
    };
    *control.handover.lock().unwrap_or_else(|p| p.into_inner()) = handover;

    let access_log = match &config.access_log {
        Some(path) => Some(
            crate::accesslog::start(path)
                .with_context(|| format!("access log: cannot open {path}"))?,
        ),
        None => None,
    };

    let (started_tx, started_rx) = mpsc::channel();
    let mut drains = Vec::new();
    let mut handles = Vec::new();
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        drains.push(tx);
        let core = if config.server.pin_workers && !cores.is_empty() {
            Some(cores[id % cores.len()])
        } else {
            None
        };
        let spec = WorkerSpec {
            id,
            handler: crate::proxy::start,
            core,
            listeners,
            io: config.server.io,
            io_uring_entries: config.server.io_uring_entries,
            buf_size: read_buffer_size(&config),
            access_log: access_log.clone(),
            loads: loads.clone(),
            stats: worker_stats.clone(),
            conns,
        };
        handles.push(worker::spawn(spec, cell.clone(), rx, started_tx.clone())?);
    }
    drop(started_tx);
    for _ in 0..n_workers {
        match started_rx.recv_timeout(WORKER_START_TIMEOUT) {
            Ok(Ok((id, driver))) => tracing::info!(worker = id, driver, "worker started"),
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("workers did not start within {WORKER_START_TIMEOUT:?}"),
        }
    }

    // Handlers go in before anyone is told we are ready, so an early SIGTERM drains.
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    let signals =
        signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2])?;
    if let Some(path) = &opts.ready_file {
        write_ready_file(path, &bound, admin_addr)?;
    }
    // After an upgrade the old process names this one the main one (systemd takes that only
    // from the main process, and would drop this one's READY=1 as a stranger's): its
    // MAINPID= says the service is ready.
    let upgraded = inherited.is_some();
    if let Some(i) = inherited.take() {
        i.ready();
        tracing::info!("upgrade: serving; the old process drains");
    } else {
        crate::control::notify::notify(&format!(
            "READY=1\nSTATUS=serving config {}",
            control.cell.load().version
        ));
    }
    crate::control::notify::spawn_watchdog(upgraded)?;

    // The main thread reloads on SIGHUP; every worker has started by now (and threads
    // started later, for health checks, run at the control threads' priority).
    crate::control::background_thread();
    wait_for_signals(signals, &control, drains, access_log);
    for h in handles {
        let _ = h.join();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Canary analysis, rollback and promotion for every split, off the request path; and
/// freeing the snapshots reloads replaced, once workers let go of them (see
/// [`crate::snapshot::SnapshotCell::reap`]).
fn spawn_release_control(control: Arc<Control>) -> std::io::Result<()> {
    const TICK: Duration = Duration::from_millis(100);
    std::thread::Builder::new()
        .name("lb-release".into())
        .spawn(move || {
            crate::control::background_thread();
            loop {
                std::thread::sleep(TICK);
                if control.draining.load(Ordering::SeqCst) {
                    return;
                }
                let snap = control.cell.load();
                let now = crate::clock::now_ms();
                // In a fleet, the elected appliance judges the fleet's sums instead.
                if control.fleet().is_none() {
                    for s in &snap.splits {
                        crate::release::analysis::evaluate(&s.config, &s.state, now);
                    }
                }
                drop(snap);
                // What of a freed snapshot this thread's heap holds goes back to the kernel
                // now; pages of the building thread's heap follow after mimalloc's purge
                // delay (measured: RSS after 50 reloads 0.98x that after the first).
                if control.cell.reap() > 0 {
                    crate::worker::release_free_memory();
                }
            }
        })?;
    Ok(())
}

/// An appliance holds a descriptor per connection: use all the kernel allows this process.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct on the stack.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}

/// Re-resolves host-name endpoints on the shortest interval any cluster of the running
/// config asks for (so a reload that adds names is covered too).
fn spawn_resolver(control: Arc<Control>) -> std::io::Result<()> {
    const TICK: Duration = Duration::from_millis(500);
    std::thread::Builder::new()
        .name("lb-resolver".into())
        .spawn(move || {
            crate::control::background_thread();
            let mut waited = Duration::ZERO;
            loop {
                std::thread::sleep(TICK);
                if control.draining.load(Ordering::SeqCst) {
                    return;
                }
                waited += TICK;
                let snap = control.cell.load();
                let every = snap
                    .config
                    .clusters
                    .iter()
                    .filter(|c| {
                        c.endpoints
                            .iter()
                            .any(|e| matches!(e.target, crate::config::Target::Host(..)))
                    })
                    .map(|c| c.resolve_interval)
                    .min();
                drop(snap);
                if every.is_some_and(|every| waited >= every) {
                    waited = Duration::ZERO;
                    control.re_resolve();
                }
            }
        })?;
    Ok(())
}

/// Polls the config file and reloads when its content changes. An invalid new version is
/// logged once and the running config stays.
/// How often certificate and key files are checked for changes.
const CERT_WATCH_EVERY: Duration = Duration::from_secs(2);

/// The certificate and key files of the running config's TLS listeners and clusters, and
/// its `[geoip]` database: replaced files reload the config.
fn cert_files(control: &Control) -> Vec<PathBuf> {
    let snap = control.cell.load();
    snap.config
        .listener_tls
        .iter()
        .flatten()
        .flat_map(|t| t.files.iter().cloned())
        .chain(
            snap.config
                .clusters
                .iter()
                .filter_map(|c| c.tls.as_ref())
                .flat_map(|t| t.files.iter().cloned()),
        )
        .chain(snap.config.geo.iter().map(|g| g.path.clone()))
        .collect()
}

/// Reloads when a certificate or key file in service changes on disk (renewed by certbot,
/// an operator, a secret manager), whether or not the config file is watched. A reload that
/// fails (a half-written file) keeps the running certificates and is tried again at the
/// next change.
fn spawn_cert_watch(control: Arc<Control>) -> std::io::Result<()> {
    let mut files = cert_files(&control);
    let mut last = crate::tls::files_fingerprint(files.iter());
    std::thread::Builder::new()
        .name("lb-cert-watch".into())
        .spawn(move || {
            crate::control::background_thread();
            loop {
                std::thread::sleep(CERT_WATCH_EVERY);
                if control.draining.load(Ordering::SeqCst) {
                    return;
                }
                let now = cert_files(&control);
                if now != files {
                    // A reload by other means changed the set of files.
                    files = now;
                    last = crate::tls::files_fingerprint(files.iter());
                    continue;
                }
                let seen = crate::tls::files_fingerprint(files.iter());
                if seen == last {
                    continue;
                }
                last = seen;
                tracing::info!("a certificate or key file changed; reloading");
                if let Err(e) = control.reload() {
                    tracing::error!(
                        "reload refused, the running certificates stay:
{e}"
                    );
                }
            }
        })?;
    Ok(())
}

/// A hash of the config file and every file it includes (names and contents): a file added
/// to `conf.d` changes it too. `None` if the main file cannot be read.
fn config_files_hash(path: &Path) -> Option<u64> {
    let mut h = crate::hash::fnv1a_of(&std::fs::read(path).ok()?);
    for f in crate::config::include::included_files(path) {
        h = crate::hash::fnv1a(h, f.as_os_str().as_encoded_bytes());
        h = crate::hash::fnv1a(h, &std::fs::read(&f).unwrap_or_default());
    }
    Some(h)
}

fn spawn_watch(path: PathBuf, every: Duration, control: Arc<Control>) -> std::io::Result<()> {
    let mut last = config_files_hash(&path);
    std::thread::Builder::new()
        .name("lb-config-watch".into())
        .spawn(move || {
            crate::control::background_thread();
            loop {
                std::thread::sleep(every);
                if control.draining.load(Ordering::SeqCst) {
                    return;
                }
                let Some(hash) = config_files_hash(&path).map(Some) else {
                    continue;
                };
                if hash == last {
                    continue;
                }
                last = hash;
                tracing::info!(file = %path.display(), "config file changed");
                if let Err(e) = control.reload() {
                    tracing::error!("reload refused, the running config stays:\n{e}");
                }
            }
        })?;
    Ok(())
}

fn write_ready_file(
    path: &Path,
    bound: &[(String, SocketAddr)],
    admin: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let listeners: serde_json::Map<String, serde_json::Value> = bound
        .iter()
        .map(|(name, addr)| (name.clone(), serde_json::Value::String(addr.to_string())))
        .collect();
    let doc = serde_json::json!({
        "pid": std::process::id(),
        "listeners": listeners,
        "admin": admin.map(|a| a.to_string()),
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn wait_for_signals(
    mut signals: signal_hook::iterator::Signals,
    control: &Control,
    drains: Vec<oneshot::Sender<()>>,
    access_log: Option<mpsc::SyncSender<Vec<u8>>>,
) {
    use signal_hook::consts::{SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    for sig in signals.forever() {
        match sig {
            // A binary upgrade: drain once the new process serves; keep serving if it fails.
            SIGUSR2 if control.upgrade().is_err() => continue,
            SIGUSR1 => match &access_log {
                Some(tx) => crate::accesslog::reopen(tx),
                None => tracing::info!("SIGUSR1: no access log file to reopen"),
            },
            SIGHUP => {
                if let Err(e) = control.reload() {
                    tracing::error!("reload refused, the running config stays:\n{e}");
                }
            }
            SIGQUIT => {
                tracing::warn!("SIGQUIT: stopping now without draining");
                std::process::exit(0);
            }
            _ => {
                tracing::info!(
                    "draining: no new connections; open requests get the drain timeout to finish"
                );
                // After an upgrade the new process is the service: this one tells systemd
                // nothing more.
                if !control.upgraded.load(Ordering::SeqCst) {
                    crate::control::notify::notify("STOPPING=1\nSTATUS=draining");
                }
                control.start_drain();
                for d in drains {
                    let _ = d.send(());
                }
                // A second stop signal while draining means now.
                std::thread::spawn(move || {
                    for sig in signals.forever() {
                        if sig != SIGHUP && sig != SIGUSR1 {
                            tracing::warn!("second stop signal: exiting without waiting");
                            std::process::exit(0);
                        }
                    }
                });
                return;
            }
        }
    }
}
