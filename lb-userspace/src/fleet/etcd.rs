//! The fleet's config in etcd: one TOML document at `PREFIX/config`, merged into each host's
//! local file. A control thread with its own tokio runtime keeps a watch on it and applies
//! each revision as a whole, validated snapshot, or not at all; the last one applied is kept
//! in the state directory for starts while etcd is unreachable. `lb push` writes it in a
//! transaction guarded by the revision it read.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};

use crate::config::source::EtcdConfig;
use crate::control::fleet::{persist, persisted, EtcdSource, Fleet, Put, Revision, StartedFrom};
use crate::control::upgrade::SplitSaved;
use crate::control::Control;

/// Connects to the endpoints with the configured TLS, credentials and keepalive.
pub async fn connect(s: &EtcdConfig) -> Result<Client, String> {
    let mut opts = ConnectOptions::new()
        .with_keep_alive(s.keepalive, s.keepalive)
        .with_keep_alive_while_idle(true)
        .with_connect_timeout(s.keepalive)
        // A member cut off from the others has no leader: its watch fails, and the next
        // attempt may reach a member that has one.
        .with_require_leader(true);
    if let Some((user, password)) = &s.auth {
        opts = opts.with_user(user.clone(), password.0.clone());
    }
    if let Some(tls) = &s.tls {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        opts = opts.with_tls(t);
    }
    Client::connect(&s.endpoints, Some(opts))
        .await
        .map_err(|e| format!("connecting to etcd {}: {e}", s.endpoints.join(",")))
}

/// The document now in etcd (`None` if there is none) and the store's revision.
async fn read(client: &mut Client, key: &str) -> Result<(Option<Revision>, i64), String> {
    let resp = client
        .get(key, None)
        .await
        .map_err(|e| format!("reading {key}: {e}"))?;
    let store = resp.header().map_or(0, |h| h.revision());
    let doc = match resp.kvs().first() {
        None => None,
        Some(kv) => Some(Revision {
            text: kv
                .value_str()
                .map_err(|_| format!("{key} is not UTF-8 text"))?
                .to_string(),
            revision: kv.mod_revision(),
        }),
    };
    Ok((doc, store))
}

/// A current-thread runtime for the control side.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the etcd client's runtime: {e}"))
}

/// Reads the fleet's document for `lb run`: from etcd within the startup timeout, else the
/// persisted one (saying so). An invalid document in etcd is passed over for a valid
/// persisted one. Fails only when there is neither.
///
/// `persist` keeps what was read in the state directory (`lb run`); `lb check` passes false.
pub fn open(
    local: &Path,
    settings: EtcdConfig,
    persist_it: bool,
) -> Result<Arc<EtcdSource>, String> {
    let rt = runtime()?;
    let key = settings.config_key();
    let fetched = rt.block_on(async {
        tokio::time::timeout(settings.startup_timeout, async {
            let mut client = connect(&settings).await?;
            read(&mut client, &key).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "etcd {} did not answer within {:?}",
                settings.endpoints.join(","),
                settings.startup_timeout
            ))
        })
    });
    let source = |applied: Option<Revision>, from: StartedFrom| {
        EtcdSource::new(local.to_path_buf(), settings.clone(), applied, from)
    };
    let saved = persisted(&settings).unwrap_or_else(|e| {
        tracing::warn!("{e}");
        None
    });
    match fetched {
        // The key gone (deleted, or a new prefix): a running appliance keeps its config in
        // that case, and so does one that restarts.
        Ok((None, _)) if saved.is_some() => {
            let Some(saved) = saved else {
                return Ok(source(None, StartedFrom::LocalOnly));
            };
            tracing::warn!(
                revision = saved.revision,
                "etcd has no config at {key}: starting from the config last applied, kept in {}",
                settings.persisted_path().display()
            );
            Ok(source(Some(saved), StartedFrom::Persisted))
        }
        Ok((None, _)) => {
            tracing::warn!(
                "etcd has no config at {key} yet: serving the local file alone until one is pushed"
            );
            Ok(source(None, StartedFrom::LocalOnly))
        }
        Ok((Some(doc), _)) => {
            let src = source(Some(doc.clone()), StartedFrom::Etcd);
            match crate::config::Config::load_with(local, Some(&src.document(&doc))) {
                Ok(_) => {
                    tracing::info!(revision = doc.revision, "config read from etcd {key}");
                    if let Err(e) = if persist_it {
                        persist(&settings, &doc)
                    } else {
                        Ok(())
                    } {
                        tracing::error!("keeping the config read from etcd failed: {e}");
                    }
                    Ok(src)
                }
                // Not counted here: the watch's first full read, right after start, judges
                // the same revision again and counts it.
                Err(errors) => {
                    let Some(saved) = saved else {
                        // Nothing better: `lb run` reports these errors.
                        return Ok(src);
                    };
                    tracing::error!(revision = doc.revision, "the config in etcd is invalid; starting from the last one applied (revision {}):\n{errors}", saved.revision);
                    Ok(source(Some(saved), StartedFrom::Persisted))
                }
            }
        }
        Err(e) => match saved {
            Some(saved) => {
                tracing::warn!(
                    revision = saved.revision,
                    "{e}; starting from the config last applied, kept in {}",
                    settings.persisted_path().display()
                );
                let src = source(Some(saved), StartedFrom::Persisted);
                src.status().last_error = Some(e);
                Ok(src)
            }
            None => Err(format!(
                "{e}, and no config from it was ever applied on this host ({} does not exist)",
                settings.persisted_path().display()
            )),
        },
    }
}

fn lines(errors: &crate::config::ConfigErrors) -> Vec<String> {
    errors
        .errors
        .iter()
        .map(|e| match &e.file {
            Some(f) => format!("{}: {}: {}", f.display(), e.path, e.message),
            None => format!("{}: {}", e.path, e.message),
        })
        .collect()
}

/// Starts the control thread that watches the fleet's document and applies each revision.
pub fn spawn(control: Arc<Control>, source: Arc<EtcdSource>) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<Revision>();
    source.set_applier(tx);
    let (c, src) = (control.clone(), source.clone());
    std::thread::Builder::new()
        .name("lb-etcd-apply".into())
        .spawn(move || {
            crate::control::background_thread();
            while let Ok(mut doc) = rx.recv() {
                // Revisions that came meanwhile: only the latest is applied.
                while let Ok(next) = rx.try_recv() {
                    doc = next;
                }
                if src.applied().as_ref() == Some(&doc) {
                    continue;
                }
                apply(&c, &src, doc);
            }
        })?;
    std::thread::Builder::new()
        .name("lb-etcd".into())
        .spawn(move || {
            crate::control::background_thread();
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("{e}: the config from etcd will not follow changes");
                    return;
                }
            };
            rt.block_on(watch(control, source));
        })
        .map(|_| ())
}

/// Why a watch session ended.
enum Ended {
    /// Reconnect after a pause, and resume from the revision after the last seen.
    Lost(String),
    /// The revision to resume from was compacted: read the whole document again.
    Compacted(i64),
    /// This process drains: no reconnect.
    Draining,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn watch(control: Arc<Control>, source: Arc<EtcdSource>) {
    use std::sync::atomic::Ordering;
    // The store revision up to which every change was seen; 0 forces a full read first.
    let mut seen: i64 = 0;
    let mut backoff = BACKOFF_MIN;
    let Some(mut requests) = source.fleet.take_requests() else {
        tracing::error!("the etcd watch was started twice");
        return;
    };
    let age = tokio::spawn(sync_age(source.clone()));
    loop {
        if control.draining.load(Ordering::SeqCst) {
            break;
        }
        let started = Instant::now();
        let ended = session(&control, &source, &mut seen, &mut requests).await;
        source.status().connected = false;
        if source.fleet.leader.swap(false, Ordering::SeqCst) {
            tracing::warn!("no longer leading the fleet's canary analysis");
        }
        crate::metrics::etcd_connected(false);
        crate::metrics::fleet_leader(false);
        match ended {
            Ended::Compacted(at) => {
                tracing::warn!(
                    resume_from = seen + 1,
                    compacted_to = at,
                    "etcd compacted the revisions this watch had not seen: reading the config again"
                );
                seen = 0;
                backoff = BACKOFF_MIN;
                continue;
            }
            Ended::Draining => break,
            Ended::Lost(e) => {
                tracing::warn!("etcd watch lost: {e}; reconnecting");
                let mut st = source.status();
                st.last_error = Some(e);
                st.reconnects += 1;
                drop(st);
                crate::metrics::etcd_reconnect();
            }
        }
        // Writes asked for meanwhile cannot be made: whoever asked is told now.
        while let Ok(put) = requests.try_recv() {
            let _ = put
                .reply
                .send(Err(crate::control::fleet::WriteError::Refused(
                    "etcd is unreachable".into(),
                )));
        }
        // A session that lasted resets the backoff; quick failures double it.
        if started.elapsed() > BACKOFF_MAX * 2 {
            backoff = BACKOFF_MIN;
        }
        let jitter = Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64 / 2));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    age.abort();
}

/// Keeps the sync age gauge current.
async fn sync_age(source: Arc<EtcdSource>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let last = source.status().last_sync;
        if let Some(age) = last.and_then(|t| t.elapsed().ok()) {
            crate::metrics::etcd_sync_age(age.as_secs_f64());
        }
    }
}

/// The keys one watch follows: the config document and the splits' state, which sort
/// together (`config` < `leader...` < `splits/...` < `splits0`); the appliances' counts
/// (`windows/...`) are read by the leader only.
struct Keys {
    config: String,
    splits: String,
    end: String,
    windows: String,
    election: String,
}

impl Keys {
    fn of(s: &EtcdConfig) -> Keys {
        Keys {
            config: s.config_key(),
            splits: format!("{}/splits/", s.prefix),
            end: format!("{}/splits0", s.prefix),
            windows: format!("{}/windows/", s.prefix),
            election: format!("{}/leader", s.prefix),
        }
    }
}

/// How often an appliance publishes its window counts, and the leader evaluates.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);
const LEAD_EVERY: Duration = Duration::from_millis(200);

/// One connection: a full read if needed, then the watch from the revision after `seen`,
/// this appliance's lease, its candidacy for the fleet's analysis, its counts, and the
/// writes asked for; until something fails.
async fn session(
    control: &Control,
    source: &EtcdSource,
    seen: &mut i64,
    requests: &mut tokio::sync::mpsc::UnboundedReceiver<Put>,
) -> Ended {
    use std::sync::atomic::Ordering;
    let keys = Keys::of(&source.settings);
    let fleet = &source.fleet;
    let mut client = match connect(&source.settings).await {
        Ok(c) => c,
        Err(e) => return Ended::Lost(e),
    };
    if *seen == 0 {
        let range = GetOptions::new().with_range(keys.end.as_str());
        let resp = match client.get(keys.config.as_str(), Some(range)).await {
            Ok(r) => r,
            Err(e) => return Ended::Lost(format!("reading {}: {e}", keys.config)),
        };
        source.status().full_reads += 1;
        crate::metrics::etcd_full_read();
        let mut doc = None;
        for kv in resp.kvs() {
            let key = kv.key_str().unwrap_or_default();
            if key == keys.config {
                match kv.value_str() {
                    Ok(text) => {
                        doc = Some(Revision {
                            text: text.to_string(),
                            revision: kv.mod_revision(),
                        })
                    }
                    Err(_) => reject(
                        source,
                        kv.mod_revision(),
                        vec![format!("{}: the value is not UTF-8 text", keys.config)],
                    ),
                }
            }
        }
        match doc {
            Some(doc) if source.applied().as_ref() != Some(&doc) => source.submit(doc),
            Some(_) => {}
            None if source.applied().is_some() => tracing::warn!(
                "{} is gone from etcd: the running config stays until a new one is pushed",
                keys.config
            ),
            None => {}
        }
        // Split state after the config: it is for the splits the config has.
        for kv in resp.kvs() {
            split_state(control, source, &keys, kv);
        }
        *seen = resp.header().map_or(0, |h| h.revision());
        synced(source);
    }
    let options = WatchOptions::new()
        .with_range(keys.end.as_str())
        .with_start_revision(*seen + 1)
        .with_progress_notify();
    let mut stream = match client.watch(keys.config.as_str(), Some(options)).await {
        Ok(s) => s,
        Err(e) => return Ended::Lost(format!("watching {}: {e}", keys.config)),
    };
    // This appliance's lease: its counts and its candidacy end with it.
    let ttl = source.settings.lease.as_secs().max(1) as i64;
    let lease = match client.lease_grant(ttl, None).await {
        Ok(l) => l.id(),
        Err(e) => return Ended::Lost(format!("granting a lease: {e}")),
    };
    let (mut keeper, mut kept) = match client.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => return Ended::Lost(format!("keeping the lease alive: {e}")),
    };
    let mut candidate = client.clone();
    let campaign = candidate.campaign(keys.election.as_str(), fleet.node.as_str(), lease);
    tokio::pin!(campaign);
    let mut campaigning = true;
    // The election key this appliance holds while it leads: its decisions are written only
    // while the key still exists.
    let mut leader_key: Option<(Vec<u8>, i64)> = None;
    // Renewed by a task of its own: a slow write or leader round awaited below never holds
    // up the renewal. The task ends (and says why) when the lease cannot be kept.
    let (lost_tx, mut lost) = tokio::sync::oneshot::channel::<String>();
    let renewal = tokio::spawn(async move {
        let ttl_d = Duration::from_secs(ttl as u64);
        let mut every =
            tokio::time::interval(Duration::from_millis((ttl as u64 * 1000 / 3).max(300)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut acked = Instant::now();
        let why = loop {
            every.tick().await;
            // Not renewed for a whole TTL (counted from the last renewal sent before an
            // answer): the lease may be gone, and with it this appliance's leadership.
            if acked.elapsed() >= ttl_d {
                break "the lease was not renewed within its time to live".to_string();
            }
            let sent = Instant::now();
            if let Err(e) = keeper.keep_alive().await {
                break format!("renewing the lease: {e}");
            }
            match tokio::time::timeout(ttl_d, kept.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => acked = sent,
                Ok(Ok(Some(_))) => break "this appliance's lease expired".to_string(),
                Ok(Ok(None)) => break "etcd closed the lease stream".to_string(),
                Ok(Err(e)) => break format!("the lease stream: {e}"),
                Err(_) => break "the lease was not renewed within its time to live".to_string(),
            }
        };
        let _ = lost_tx.send(why);
    });

    source.status().connected = true;
    fleet.connected.store(true, Ordering::SeqCst);
    crate::metrics::etcd_connected(true);
    tracing::info!(from = *seen + 1, node = %fleet.node, "watching etcd {}", keys.config);
    let every = source.settings.keepalive;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = tokio::time::interval(Duration::from_millis(200));
    let mut publish = tokio::time::interval(PUBLISH_EVERY);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lead = tokio::time::interval(LEAD_EVERY);
    lead.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A progress request unanswered for three intervals means the stream is stuck even if
    // the connection's pings are answered.
    let mut asked: Option<Instant> = None;
    let ended = loop {
        tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => break Ended::Lost("etcd closed the watch".into()),
                    Err(e) => break Ended::Lost(e.to_string()),
                };
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        break Ended::Compacted(resp.compact_revision());
                    }
                    break Ended::Lost(format!("etcd canceled the watch: {}", resp.cancel_reason()));
                }
                asked = None;
                // Several revisions may come at once (after a reconnect): only the latest
                // document is applied.
                let mut latest = None;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    if kv.key() != keys.config.as_bytes() {
                        if ev.event_type() == EventType::Put {
                            split_state(control, source, &keys, kv);
                        }
                        continue;
                    }
                    match ev.event_type() {
                        EventType::Put => match kv.value_str() {
                            Ok(text) => latest = Some(Revision { text: text.to_string(), revision: kv.mod_revision() }),
                            Err(_) => {
                                reject(source, kv.mod_revision(), vec![format!("{}: the value is not UTF-8 text", keys.config)]);
                                latest = None;
                            }
                        },
                        EventType::Delete => {
                            tracing::warn!(revision = kv.mod_revision(), "{} was deleted from etcd: the running config stays until a new one is pushed", keys.config);
                            latest = None;
                        }
                    }
                }
                if let Some(doc) = latest {
                    source.submit(doc);
                }
                // Up to where every change was seen: the events' revisions; the header's
                // only on a progress answer (a created or catching-up answer's header is
                // the store's revision, not how far this watch got).
                // (Progress answers are not trusted for it either: etcd before 3.4.24 and
                // 3.5.8 could send one ahead of events still queued, etcd-io/etcd#15220.)
                let newest = resp.events().iter().filter_map(|e| e.kv()).map(|kv| kv.mod_revision()).max();
                if let Some(r) = newest {
                    *seen = (*seen).max(r);
                }
                synced(source);
            }
            _ = tick.tick() => {
                if asked.is_some_and(|t| t.elapsed() > every * 3) {
                    break Ended::Lost(format!("no progress from the etcd watch in {:?}", every * 3));
                }
                if let Err(e) = stream.request_progress().await {
                    break Ended::Lost(e.to_string());
                }
                asked.get_or_insert_with(Instant::now);
            }
            why = &mut lost => {
                break Ended::Lost(why.unwrap_or_else(|_| "the lease renewal stopped".into()));
            }
            _ = draining.tick() => {
                if control.draining.load(Ordering::SeqCst) {
                    break Ended::Draining;
                }
            }
            won = &mut campaign, if campaigning => {
                campaigning = false;
                match won {
                    Ok(r) => {
                        let Some(k) = r.leader() else {
                            break Ended::Lost("etcd elected this appliance without naming its key".into());
                        };
                        leader_key = Some((k.key().to_vec(), k.rev()));
                        fleet.leader.store(true, Ordering::SeqCst);
                        crate::metrics::fleet_leader(true);
                        tracing::info!(node = %fleet.node, "leading the fleet's canary analysis");
                    }
                    Err(e) => break Ended::Lost(format!("campaigning for the fleet's analysis: {e}")),
                }
            }
            Some(put) = requests.recv() => {
                // Bounded by the caller's deadline; past it, whether etcd took the change is
                // unknown, and the caller says so.
                let left = put.deadline.saturating_duration_since(Instant::now());
                let result = if left.is_zero() {
                    Err(crate::control::fleet::WriteError::Refused("too late: the admin call gave up".into()))
                } else { match tokio::time::timeout(
                    left,
                    write_split(&mut client, &keys, fleet, &put.name, &put.doc, put.base, None),
                )
                .await
                {
                    Ok(r) => r.map_err(crate::control::fleet::WriteError::Refused),
                    Err(_) => Err(crate::control::fleet::WriteError::Unknown(
                        "etcd did not confirm the change in time".into(),
                    )),
                } };
                let _ = put.reply.send(result);
            }
            _ = publish.tick() => {
                let snap = control.cell.load();
                let mut failed = None;
                for (split, json) in crate::control::fleet::publishable(&snap, &fleet.node, crate::clock::now_ms()) {
                    let key = format!("{}{split}/{}", keys.windows, fleet.node);
                    if let Err(e) = client.put(key, json, Some(PutOptions::new().with_lease(lease))).await {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(e) = failed {
                    break Ended::Lost(format!("publishing this appliance's counts: {e}"));
                }
            }
            _ = lead.tick(), if fleet.is_leader() => {
                if let Err(e) = analyse(&mut client, control, &keys, fleet, leader_key.as_ref()).await {
                    break Ended::Lost(e);
                }
            }
        }
    };
    // Leadership and published counts end now rather than when the lease runs out (best
    // effort: etcd may be the reason the session ended).
    fleet.leader.store(false, Ordering::SeqCst);
    fleet.connected.store(false, Ordering::SeqCst);
    renewal.abort();
    let _ = tokio::time::timeout(Duration::from_millis(300), client.lease_revoke(lease)).await;
    ended
}

/// A split's state from a key under `splits/`.
fn split_state(control: &Control, source: &EtcdSource, keys: &Keys, kv: &etcd_client::KeyValue) {
    let Some(name) = kv
        .key_str()
        .ok()
        .and_then(|k| k.strip_prefix(keys.splits.as_str()))
    else {
        return;
    };
    match serde_json::from_slice::<SplitSaved>(kv.value()) {
        Ok(doc) => {
            let snap = control.cell.load();
            source
                .fleet
                .apply_remote(&snap, name, doc, kv.mod_revision());
        }
        Err(e) => tracing::warn!(
            split = name,
            "ignoring the fleet state of split {name}: {e}"
        ),
    }
}

/// Writes split `name`'s state if etcd still holds revision `base` of it.
async fn write_split(
    client: &mut Client,
    keys: &Keys,
    fleet: &Fleet,
    name: &str,
    doc: &SplitSaved,
    base: i64,
    leader: Option<&(Vec<u8>, i64)>,
) -> Result<(), String> {
    let key = format!("{}{name}", keys.splits);
    let json = serde_json::to_string(doc).map_err(|e| e.to_string())?;
    let mut compares = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, base)];
    // A decision of the leader's holds only while it still leads.
    if let Some((k, rev)) = leader {
        compares.push(Compare::create_revision(k.clone(), CompareOp::Equal, *rev));
    }
    let Some(revision) = put_if(client, &key, json, compares).await? else {
        return Err(format!(
            "split {name} was changed by another appliance meanwhile (this change was made on revision {base}), or this appliance no longer leads: etcd's state is applied; look, then try again"
        ));
    };
    fleet.set_known(name, doc.clone(), revision);
    Ok(())
}

/// Puts `value` at `key` if every compare holds: the revision written, or `None` if one
/// did not.
async fn put_if(
    client: &mut Client,
    key: &str,
    value: String,
    compares: Vec<Compare>,
) -> Result<Option<i64>, String> {
    let txn = Txn::new()
        .when(compares)
        .and_then([TxnOp::put(key, value, None)]);
    let resp = client
        .txn(txn)
        .await
        .map_err(|e| format!("writing {key}: {e}"))?;
    Ok(resp
        .succeeded()
        .then(|| resp.header().map_or(0, |h| h.revision())))
}

/// The leader's round: each split whose analysis is due is judged on the fleet's sums, and
/// what it decides is written for every appliance.
async fn analyse(
    client: &mut Client,
    control: &Control,
    keys: &Keys,
    fleet: &Fleet,
    leader: Option<&(Vec<u8>, i64)>,
) -> Result<(), String> {
    use crate::control::fleet::{basis, sum, Published};
    use std::sync::atomic::Ordering::Relaxed;
    let snap = control.cell.load();
    let now = crate::clock::now_ms();
    for s in &snap.splits {
        let Some(a) = &s.config.analysis else {
            continue;
        };
        let last = s.state.last_evaluated_ms.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < a.interval.as_millis() as u64 {
            continue;
        }
        let name = &s.config.name;
        let resp = client
            .get(
                format!("{}{name}/", keys.windows),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| format!("reading the fleet's counts: {e}"))?;
        let published: Vec<Published> = resp
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        let (sums, appliances) = sum(
            &published,
            s.state.fingerprint.load(Relaxed),
            s.config.targets.len(),
        );
        // A change made here through the admin API and not yet written is not judged
        // before it is: the write would then find the split changed under it.
        let base = fleet.known_revision(name);
        let before = SplitSaved::of(name, &s.state);
        if fleet.known(name).is_some_and(|k| k != before) {
            continue;
        }
        crate::release::analysis::evaluate_on(&s.config, &s.state, now, |cfg| {
            let (b, c) = (&sums[cfg.baseline], &sums[cfg.canary]);
            (b.stats(), c.stats(), basis(b, c, appliances))
        });
        let after = SplitSaved::of(name, &s.state);
        if after != before {
            tracing::info!(split = %name, action = %after.decision.1, reason = %after.decision.2, "fleet decision");
            if let Err(e) = write_split(client, keys, fleet, name, &after, base, leader).await {
                tracing::error!(split = %name, "the fleet decision could not be written, so it is undone here: {e}");
                fleet.revert(&snap, name);
                // Perhaps because this appliance no longer leads: then it stops, and campaigns
                // again in its next session.
                if let Some((key, rev)) = leader {
                    let held = client
                        .get(key.clone(), None)
                        .await
                        .map_err(|e| format!("reading the election key: {e}"))?
                        .kvs()
                        .first()
                        .is_some_and(|kv| kv.create_revision() == *rev);
                    if !held {
                        return Err(
                            "this appliance's election key is gone: it no longer leads".into()
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn synced(source: &EtcdSource) {
    source.status().last_sync = Some(SystemTime::now());
    crate::metrics::etcd_sync_age(0.0);
}

fn reject(source: &EtcdSource, revision: i64, errors: Vec<String>) {
    tracing::error!(
        revision,
        "config revision {revision} from etcd refused; the running config stays:\n{}",
        errors.join("\n")
    );
    crate::metrics::etcd_rejected();
    let mut st = source.status();
    st.rejected += 1;
    st.last_rejected = Some((revision, errors));
}

/// Validates and publishes one revision, whole or not at all.
fn apply(control: &Control, source: &EtcdSource, doc: Revision) {
    match control.reload_revision(&doc) {
        Ok(r) => tracing::info!(
            revision = doc.revision,
            version = %r.version,
            "config revision {} from etcd applied",
            doc.revision
        ),
        Err(errors) => reject(source, doc.revision, lines(&errors)),
    }
}

/// What `lb push` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Written at this revision.
    Written(i64),
    /// etcd already holds this text (at this revision).
    Unchanged(i64),
}

/// Writes `text` as the fleet's document, in a transaction that succeeds only if the key is
/// still at the revision read first (or at `expect`, if given): two operators pushing at
/// once cannot overwrite each other's change unseen.
pub fn push(settings: &EtcdConfig, text: &str, expect: Option<i64>) -> Result<Pushed, String> {
    let rt = runtime()?;
    let key = settings.config_key();
    rt.block_on(async {
        tokio::time::timeout(settings.startup_timeout.max(Duration::from_secs(10)), async {
            let mut client = connect(settings).await?;
            let (current, _) = read(&mut client, &key).await?;
            let at = current.as_ref().map_or(0, |c| c.revision);
            if let Some(want) = expect {
                if want != at {
                    return Err(format!(
                        "{key} is at revision {at}, not {want}: someone pushed since; nothing written"
                    ));
                }
            }
            if let Some(c) = current.as_ref().filter(|c| c.text == text) {
                return Ok(Pushed::Unchanged(c.revision));
            }
            // mod_revision 0 is "the key does not exist".
            let guard = vec![Compare::mod_revision(key.as_str(), CompareOp::Equal, at)];
            match put_if(&mut client, &key, text.to_string(), guard).await? {
                Some(revision) => Ok(Pushed::Written(revision)),
                None => Err(format!(
                    "{key} changed after it was read at revision {at}: someone else pushed; nothing written (check theirs, then push again)"
                )),
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("etcd {} did not answer in time", settings.endpoints.join(","))))
    })
}

/// The document now in etcd, for `lb check` of a host's local file.
pub fn fetch(settings: &EtcdConfig) -> Result<Option<Revision>, String> {
    let rt = runtime()?;
    let key = settings.config_key();
    rt.block_on(async {
        tokio::time::timeout(settings.startup_timeout, async {
            let mut client = connect(settings).await?;
            read(&mut client, &key).await.map(|(d, _)| d)
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "etcd {} did not answer in time",
                settings.endpoints.join(",")
            ))
        })
    })
}
