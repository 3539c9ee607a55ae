//! A fleet of appliances sharing a real etcd: the config pushed once reaches every lb, a bad
//! revision reaches none, and each lb rides out etcd going away (down, frozen, partitioned,
//! compacted past its watch) and starts from its persisted copy when etcd is unreachable.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fleet::{Etcd, Redis, Relay};
use common::*;

const PREFIX: &str = "/lb/fleet-test";

/// A host's local file: listeners and admin here, the rest from etcd through `endpoint`.
fn local(endpoint: &str, state: &Path) -> String {
    local_with(endpoint, state, "")
}

/// [`local`] with more `[source.etcd]` settings (`, node = "a"`).
fn local_with(endpoint: &str, state: &Path, more: &str) -> String {
    format!(
        "[server]\nworkers = 1\n\n[[listeners]]\nname = \"http\"\naddr = \"127.0.0.1:0\"\n\n\
         [admin]\naddr = \"127.0.0.1:0\"\n\n\
         [source]\nstate_dir = \"{}\"\n\
         etcd = {{ endpoints = [\"{endpoint}\"], prefix = \"{PREFIX}\", keepalive = \"1s\", startup_timeout = \"2s\"{more} }}\n",
        state.display()
    )
}

/// The fleet's document: one route answering `body`.
fn doc(body: &str) -> String {
    format!("[[routes]]\nname = \"all\"\nrespond = {{ body = \"{body}\\n\" }}\n")
}

/// `lb push` of `text` to `etcd`; exit code and output.
fn push(etcd: &Etcd, dir: &Path, text: &str, extra: &[&str]) -> (Option<i32>, String) {
    let file = dir.join("push.toml");
    std::fs::write(&file, text).expect("write doc");
    let file = file.display().to_string();
    let endpoint = etcd.endpoint();
    let mut args = vec!["push", &file, "--etcd", &endpoint, "--prefix", PREFIX];
    args.extend_from_slice(extra);
    lb_in(&args, dir)
}

/// `lb push` that must write; the revision it wrote.
fn push_ok(etcd: &Etcd, dir: &Path, text: &str) -> i64 {
    let (code, out) = push(etcd, dir, text, &[]);
    assert_eq!(code, Some(0), "lb push: {out}");
    pushed_revision(&out)
}

fn pushed_revision(out: &str) -> i64 {
    out.split("pushed as revision ")
        .nth(1)
        .and_then(|r| {
            r.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no revision in {out:?}"))
}

fn body(lb: &Lb) -> String {
    String::from_utf8_lossy(&get(lb.addr, "/").body)
        .trim()
        .to_string()
}

fn etcd_status(lb: &Lb) -> serde_json::Value {
    let (status, v) = lb.admin("GET", "/config");
    assert_eq!(status, 200);
    v["etcd"].clone()
}

fn state_dir(tag: &str) -> PathBuf {
    scratch_dir(tag)
}

/// Three appliances following the etcd at `endpoint`, each with its own state directory.
fn three(endpoint: &str) -> (Vec<PathBuf>, Vec<Lb>) {
    let states: Vec<PathBuf> = (0..3).map(|i| state_dir(&format!("state{i}"))).collect();
    let lbs = states
        .iter()
        .map(|s| Lb::start(&local(endpoint, s)))
        .collect();
    (states, lbs)
}

/// Stops the appliances, then removes their state directories and `dir`.
fn clean_up<T>(lbs: T, states: Vec<PathBuf>, dir: &Path) {
    drop(lbs);
    for s in states {
        let _ = std::fs::remove_dir_all(s);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_pushed_config_reaches_every_appliance_and_a_bad_revision_none() {
    let Some(etcd) = Etcd::start("a_pushed_config_reaches_every_appliance_and_a_bad_revision_none")
    else {
        return;
    };
    let dir = scratch_dir("fleet-push");
    push_ok(&etcd, &dir, &doc("v1"));
    let (states, lbs) = three(&etcd.endpoint());
    for lb in &lbs {
        assert_eq!(body(lb), "v1");
        assert_eq!(etcd_status(lb)["started_from"], "etcd");
    }

    // One push, three appliances.
    let v2 = push_ok(&etcd, &dir, &doc("v2"));
    for lb in &lbs {
        wait_until("v2 on every appliance", || body(lb) == "v2");
    }

    // lb push refuses an invalid document before it reaches etcd.
    let bad = "[[routes]]\nname = \"all\"\nrespond = { body = \"v3\" }\nbogus = 1\n";
    let (code, out) = push(&etcd, &dir, bad, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("bogus") && out.contains("nothing pushed"),
        "{out}"
    );
    // Written past lb push, it reaches etcd, and no appliance takes it.
    etcd.ctl(&["put", &format!("{PREFIX}/config"), bad]);
    let bad_revision = etcd.revision();
    for lb in &lbs {
        wait_until("the bad revision refused", || {
            etcd_status(lb)["rejected"] == 1
        });
        let st = etcd_status(lb);
        assert_eq!(st["last_rejected"]["revision"], bad_revision, "{st}");
        assert!(
            st["last_rejected"]["errors"].to_string().contains("bogus"),
            "{st}"
        );
        assert_eq!(st["revision"].as_i64(), Some(v2), "{st}");
        assert_eq!(body(lb), "v2");
        assert_eq!(
            metric(&lb.scrape(), "lb_config_etcd_rejected_total", &[]),
            1.0
        );
    }
    // A revision that would need a restart (a section the local files also set) is refused
    // the same way.
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}/config"),
        &(doc("v3") + "[server]\nworkers = 4\n"),
    ]);
    for lb in &lbs {
        wait_until("the conflicting revision refused", || {
            etcd_status(lb)["rejected"] == 2
        });
        assert_eq!(body(lb), "v2");
    }

    // A revision that only a restart could apply (a Redis for fleet rate limits where the
    // appliances started without one) is refused too, saying so.
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}/config"),
        &(doc("v3") + "[redis]\nurl = \"redis://127.0.0.1:1\"\n"),
    ]);
    for lb in &lbs {
        wait_until("the restart-only revision refused", || {
            etcd_status(lb)["rejected"] == 3
        });
        let st = etcd_status(lb);
        assert!(
            st["last_rejected"]["errors"]
                .to_string()
                .contains("restart lb to apply it"),
            "{st}"
        );
        assert_eq!(body(lb), "v2");
    }

    // The guarded write: a push that read an older revision writes nothing.
    let now = etcd.revision();
    let stale = (now - 1).to_string();
    let (code, out) = push(&etcd, &dir, &doc("v4"), &["--expect-revision", &stale]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("nothing written"), "{out}");
    assert_eq!(etcd.revision(), now, "a refused push wrote");
    let current = now.to_string();
    let (code, out) = push(&etcd, &dir, &doc("v4"), &["--expect-revision", &current]);
    assert_eq!(code, Some(0), "{out}");
    let v4 = pushed_revision(&out);
    for lb in &lbs {
        wait_until("v4 everywhere", || body(lb) == "v4");
        let samples = lb.scrape();
        assert_eq!(metric(&samples, "lb_config_etcd_revision", &[]), v4 as f64);
        assert_eq!(metric(&samples, "lb_config_etcd_connected", &[]), 1.0);
    }
    // Pushing the same document again writes nothing.
    let (code, out) = push(&etcd, &dir, &doc("v4"), &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("nothing written"), "{out}");
    assert_eq!(etcd.revision(), v4);

    // Every etcd series the alert rules use is exported.
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/prometheus/alerts.yml"),
    )
    .expect("alert rules");
    let scraped: Vec<String> = lbs[0].scrape().into_iter().map(|s| s.name).collect();
    let used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("lb_config_etcd_") || w.starts_with("lb_fleet_"))
        .collect();
    assert!(used.len() >= 3, "{used:?}");
    for f in used {
        assert!(
            scraped.iter().any(|s| s == f),
            "{f} is used by an alert but not exported"
        );
    }

    // lb check on a host's local file checks it with the fleet's document.
    let host = dir.join("host.toml");
    std::fs::write(&host, local(&etcd.endpoint(), &states[0])).expect("write");
    let (code, out) = lb_in(&["check", "--config", &host.display().to_string()], &dir);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 routes"), "{out}");

    clean_up(lbs, states, &dir);
}

#[test]
fn etcd_down_frozen_or_restarted_leaves_the_config_serving_then_resyncs() {
    let Some(mut etcd) =
        Etcd::start("etcd_down_frozen_or_restarted_leaves_the_config_serving_then_resyncs")
    else {
        return;
    };
    let dir = scratch_dir("fleet-down");
    push_ok(&etcd, &dir, &doc("v1"));
    let (states, lbs) = three(&etcd.endpoint());
    for lb in &lbs {
        assert_eq!(body(lb), "v1");
        wait_until("the watch", || etcd_status(lb)["connected"] == true);
    }

    // Frozen: the connections stay open and nothing answers. Keepalive finds them dead.
    // SAFETY: signals to the etcd process this test started.
    assert_eq!(unsafe { libc::kill(etcd.pid(), libc::SIGSTOP) }, 0);
    for lb in &lbs {
        wait_until("the dead connection noticed", || {
            etcd_status(lb)["connected"] == false
        });
        assert_eq!(body(lb), "v1");
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(etcd.pid(), libc::SIGCONT) }, 0);
    for lb in &lbs {
        wait_until("the watch again", || etcd_status(lb)["connected"] == true);
    }

    // Down: every lb serves on; the watches come back with etcd and pick up what changed.
    etcd.stop();
    for lb in &lbs {
        wait_until("the watch lost", || etcd_status(lb)["connected"] == false);
        for _ in 0..20 {
            assert_eq!(body(lb), "v1");
        }
        let samples = lb.scrape();
        assert!(metric(&samples, "lb_config_etcd_reconnects_total", &[]) >= 2.0);
        assert_eq!(metric(&samples, "lb_config_etcd_connected", &[]), 0.0);
    }
    etcd.run();
    push_ok(&etcd, &dir, &doc("v2"));
    for lb in &lbs {
        wait_until("v2 after etcd came back", || body(lb) == "v2");
        wait_until("the watch again", || etcd_status(lb)["connected"] == true);
    }
    clean_up(lbs, states, &dir);
}

#[test]
fn a_compacted_revision_forces_a_full_read() {
    let Some(etcd) = Etcd::start("a_compacted_revision_forces_a_full_read") else {
        return;
    };
    let dir = scratch_dir("fleet-compact");
    let relay = Relay::start(etcd.client);
    push_ok(&etcd, &dir, &doc("v1"));
    let (states, lbs) = three(&format!("http://{}", relay.addr));
    for lb in &lbs {
        assert_eq!(body(lb), "v1");
        wait_until("the watch", || etcd_status(lb)["connected"] == true);
        assert_eq!(etcd_status(lb)["full_reads"], 1);
    }

    // Partitioned from etcd while a revision comes: back, each resumes its watch from
    // the revision after the last it saw, with no full read.
    relay.cut();
    for lb in &lbs {
        wait_until("the watch lost", || etcd_status(lb)["connected"] == false);
    }
    push_ok(&etcd, &dir, &doc("v2"));
    relay.restore();
    for lb in &lbs {
        wait_until("v2 after the first partition", || body(lb) == "v2");
        wait_until("the watch again", || etcd_status(lb)["connected"] == true);
        assert_eq!(etcd_status(lb)["full_reads"], 1, "{}", etcd_status(lb));
    }

    // Partitioned while two revisions come and the history is compacted past the one the
    // watches would resume from: a full read.
    relay.cut();
    for lb in &lbs {
        wait_until("the watch lost", || etcd_status(lb)["connected"] == false);
    }
    push_ok(&etcd, &dir, &doc("v3"));
    push_ok(&etcd, &dir, &doc("v4"));
    etcd.ctl(&["compact", &etcd.revision().to_string()]);
    relay.restore();
    for lb in &lbs {
        wait_until("v4 after the partition", || body(lb) == "v4");
        let st = etcd_status(lb);
        assert_eq!(st["full_reads"], 2, "{st}");
        assert!(
            lb.log()
                .contains("compacted the revisions this watch had not seen"),
            "{}",
            lb.log()
        );
        assert_eq!(
            metric(&lb.scrape(), "lb_config_etcd_full_reads_total", &[]),
            2.0
        );
    }
    clean_up(lbs, states, &dir);
}

#[test]
fn an_lb_started_while_etcd_is_down_serves_its_persisted_config() {
    let Some(mut etcd) =
        Etcd::start("an_lb_started_while_etcd_is_down_serves_its_persisted_config")
    else {
        return;
    };
    let dir = scratch_dir("fleet-persist");
    let state = state_dir("state");
    push_ok(&etcd, &dir, &doc("v1"));
    let first = Lb::start(&local(&etcd.endpoint(), &state));
    assert_eq!(body(&first), "v1");
    push_ok(&etcd, &dir, &doc("v2"));
    wait_until("v2", || body(&first) == "v2");
    drop(first);
    assert!(state.join("etcd-config.json").is_file());

    etcd.stop();
    let second = Lb::start(&local(&etcd.endpoint(), &state));
    assert_eq!(body(&second), "v2");
    let st = etcd_status(&second);
    assert!(
        st["started_from"]
            .as_str()
            .is_some_and(|s| s.starts_with("persisted")),
        "{st}"
    );
    assert!(second
        .log()
        .contains("starting from the config last applied"));
    // And it follows the fleet again once etcd is back.
    etcd.run();
    push_ok(&etcd, &dir, &doc("v3"));
    wait_until("v3 after etcd came back", || body(&second) == "v3");
    // The key deleted: the running lb keeps its config, and so does one started now.
    etcd.ctl(&["del", &format!("{PREFIX}/config")]);
    drop(second);
    let third = Lb::start(&local(&etcd.endpoint(), &state));
    assert_eq!(body(&third), "v3");
    assert!(etcd_status(&third)["started_from"]
        .as_str()
        .is_some_and(|s| s.starts_with("persisted")));
    drop(third);

    // No etcd and nothing persisted: lb says so and does not start.
    etcd.stop();
    let empty = state_dir("empty");
    let host = dir.join("host.toml");
    std::fs::write(&host, local(&etcd.endpoint(), &empty)).expect("write");
    let (code, out) = lb_in(&["run", "--config", &host.display().to_string()], &dir);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("no config from it was ever applied on this host"),
        "{out}"
    );
    for d in [&state, &empty, &dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The shop split of the fleet tests: stable and canary at 50% each, sticky by user, with
/// an analysis that needs 30 canary requests.
fn shop(stable: std::net::SocketAddr, canary: std::net::SocketAddr) -> String {
    format!(
        "[[clusters]]\nname = \"stable\"\nendpoints = [{{ addr = \"{stable}\" }}]\n\n\
         [[clusters]]\nname = \"canary\"\nendpoints = [{{ addr = \"{canary}\" }}]\n\n\
         [[routes]]\nname = \"shop\"\npath_prefix = \"/\"\n\
         [routes.split]\nname = \"shop\"\nsticky = \"header:X-User-ID\"\nsalt = \"fleet\"\n\
         targets = [{{ name = \"stable\", cluster = \"stable\", weight = 50 }}, {{ name = \"canary\", cluster = \"canary\", weight = 50 }}]\n\
         analysis = {{ baseline = \"stable\", canary = \"canary\", window = \"60s\", interval = \"200ms\", min_requests = 30, max_error_rate_increase = 0.1 }}\n"
    )
}

fn variant(lb: &Lb, user: &str) -> String {
    get_with(lb.addr, "/", &[("X-User-ID", user)])
        .header("x-backend")
        .unwrap_or("")
        .to_string()
}

fn weights(lb: &Lb) -> (f64, f64) {
    let s = lb.split("shop");
    (
        s["targets"][0]["weight_percent"].as_f64().unwrap_or(-1.0),
        s["targets"][1]["weight_percent"].as_f64().unwrap_or(-1.0),
    )
}

fn all(lbs: &[Option<Lb>]) -> Vec<&Lb> {
    lbs.iter().flatten().collect()
}

fn leaders(lbs: &[Option<Lb>]) -> Vec<usize> {
    lbs.iter()
        .enumerate()
        .filter(|(_, l)| l.as_ref().is_some_and(|l| etcd_status(l)["leader"] == true))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn the_fleet_shares_release_state_and_judges_a_canary_on_its_sums() {
    let Some(mut etcd) =
        Etcd::start("the_fleet_shares_release_state_and_judges_a_canary_on_its_sums")
    else {
        return;
    };
    let dir = scratch_dir("fleet-canary");
    let failing = Arc::new(AtomicBool::new(false));
    let stable = Backend::start(Arc::new(|_req, res| {
        res.send(200, &[("X-Backend", "stable")], b"stable")
    }))
    .expect("stable");
    let f = failing.clone();
    let canary = Backend::start(Arc::new(move |_req, res| {
        let status = if f.load(Ordering::SeqCst) { 500 } else { 200 };
        res.send(status, &[("X-Backend", "canary")], b"canary")
    }))
    .expect("canary");
    push_ok(&etcd, &dir, &shop(stable.addr, canary.addr));
    let states: Vec<PathBuf> = (0..3).map(|i| state_dir(&format!("state{i}"))).collect();
    let lease = Duration::from_secs(2);
    let mut lbs: Vec<Option<Lb>> = states
        .iter()
        .zip(["a", "b", "c"])
        .map(|(s, node)| {
            Some(Lb::start(&local_with(
                &etcd.endpoint(),
                s,
                &format!(", node = \"{node}\", lease = \"2s\""),
            )))
        })
        .collect();
    wait_until("one leader", || leaders(&lbs).len() == 1);

    // Same user, same variant, on every appliance (few users: each appliance's window
    // keeps these canary requests, and none may reach min_requests alone below).
    for u in 0..10 {
        let user = format!("user-{u}");
        let seen: Vec<String> = all(&lbs).iter().map(|l| variant(l, &user)).collect();
        assert!(seen.iter().all(|v| *v == seen[0]), "{user}: {seen:?}");
    }

    // A weight change through one appliance's admin API reaches the others.
    let (status, body) = all(&lbs)[0].admin_json(
        "POST",
        "/splits/shop/weights",
        &serde_json::json!({ "stable": 80, "canary": 20 }),
    );
    assert_eq!(status, 200, "{body}");
    for lb in all(&lbs) {
        wait_until("80/20 everywhere", || weights(lb) == (80.0, 20.0));
    }
    let (status, body) = all(&lbs)[1].admin_json(
        "POST",
        "/splits/shop/weights",
        &serde_json::json!({ "stable": 50, "canary": 50 }),
    );
    assert_eq!(status, 200, "{body}");
    for lb in all(&lbs) {
        wait_until("50/50 everywhere", || weights(lb) == (50.0, 50.0));
    }
    // Pause, roll back and resume likewise, each through another appliance.
    let (status, body) = all(&lbs)[2].admin("POST", "/splits/shop/pause");
    assert_eq!(status, 200, "{body}");
    for lb in all(&lbs) {
        wait_until("paused everywhere", || lb.split("shop")["paused"] == true);
    }
    let (status, body) = all(&lbs)[0].admin("POST", "/splits/shop/rollback");
    assert_eq!(status, 200, "{body}");
    for lb in all(&lbs) {
        wait_until("rolled back everywhere", || {
            lb.split("shop")["rolled_back"] == true && weights(lb) == (100.0, 0.0)
        });
    }
    let (status, body) = all(&lbs)[1].admin("POST", "/splits/shop/resume");
    assert_eq!(status, 200, "{body}");
    let (status, body) = all(&lbs)[1].admin_json(
        "POST",
        "/splits/shop/weights",
        &serde_json::json!({ "stable": 50, "canary": 50 }),
    );
    assert_eq!(status, 200, "{body}");
    for lb in all(&lbs) {
        wait_until("resumed at 50/50 everywhere", || {
            let s = lb.split("shop");
            s["paused"] == false && s["rolled_back"] == false && weights(lb) == (50.0, 50.0)
        });
    }
    for lb in all(&lbs) {
        assert_eq!(
            metric(
                &lb.scrape(),
                "lb_canary_rollbacks_total",
                &[("split", "shop")]
            ),
            1.0,
            "the admin rollback counts once on each appliance"
        );
    }

    // The canary fails, spread thin: no appliance alone sees min_requests (30) canary
    // requests, the fleet does. Requests go round the three until each has rolled back.
    failing.store(true, Ordering::SeqCst);
    let mut canary_seen = [0usize; 3];
    let mut n = 0;
    while !all(&lbs)
        .iter()
        .all(|l| l.split("shop")["rolled_back"] == true)
    {
        let i = n % 3;
        if variant(all(&lbs)[i], &format!("spread-{n}")) == "canary" {
            canary_seen[i] += 1;
        }
        n += 1;
        assert!(n < 2_000, "no rollback after {n} requests: {canary_seen:?}");
        if canary_seen.iter().sum::<usize>() >= 45 {
            // Enough sent; wait for the decision to reach everyone.
            for lb in all(&lbs) {
                wait_until("the fleet's rollback", || {
                    lb.split("shop")["rolled_back"] == true
                });
            }
        }
    }
    assert!(
        canary_seen.iter().all(|&c| c < 30),
        "an appliance saw min_requests alone: {canary_seen:?}"
    );
    for lb in all(&lbs) {
        assert_eq!(weights(lb), (100.0, 0.0));
        let reason = lb.split("shop")["last_decision"]["reason"].to_string();
        assert!(
            reason.contains("fleet counts from 3 appliances"),
            "{reason}"
        );
        assert_eq!(
            metric(
                &lb.scrape(),
                "lb_canary_rollbacks_total",
                &[("split", "shop")]
            ),
            2.0
        );
        for u in 0..10 {
            assert_eq!(variant(lb, &format!("after-{u}")), "stable");
        }
    }
    let leader = leaders(&lbs)[0];
    let leader_log = lbs[leader].as_ref().map(Lb::log).unwrap_or_default();
    assert!(leader_log.contains("fleet decision"), "{leader_log}");

    // The leader dies: another takes the analysis over within the lease.
    let killed = Instant::now();
    lbs[leader] = None;
    wait_until("a new leader", || leaders(&lbs).len() == 1);
    let took = killed.elapsed();
    assert!(
        took <= lease + Duration::from_millis(1500),
        "the analysis was leaderless for {took:?}, with a lease of {lease:?}"
    );
    let new_leader = leaders(&lbs)[0];
    assert_ne!(new_leader, leader);
    // The canary back at 50% through a survivor: the new leader judges it (on the window
    // that still holds its errors) and rolls it back on every appliance again.
    let (status, body) = all(&lbs)[0].admin_json(
        "POST",
        "/splits/shop/weights",
        &serde_json::json!({ "stable": 50, "canary": 50 }),
    );
    assert_eq!(status, 200, "{body}");
    for lb in all(&lbs) {
        wait_until("the second rollback", || {
            metric(
                &lb.scrape(),
                "lb_canary_rollbacks_total",
                &[("split", "shop")],
            ) == 3.0
        });
        assert_eq!(weights(lb), (100.0, 0.0));
    }
    let log = lbs[new_leader].as_ref().map(Lb::log).unwrap_or_default();
    assert!(log.contains("fleet decision"), "{log}");

    // Without etcd, a change through the admin API is refused, and nothing changes.
    etcd.stop();
    let survivor = all(&lbs)[0];
    wait_until("the watch lost", || {
        etcd_status(survivor)["connected"] == false
    });
    let (status, body) = survivor.admin_json(
        "POST",
        "/splits/shop/weights",
        &serde_json::json!({ "stable": 10, "canary": 90 }),
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reason"].to_string().contains("nothing changed"),
        "{body}"
    );
    assert_eq!(weights(survivor), (100.0, 0.0));
    assert_eq!(variant(survivor, "after-0"), "stable");

    clean_up(lbs, states, &dir);
}

/// Two local routes: `/fleet`, limited across the fleet, and `/local`, limited here only.
fn limited(redis: &str, on_failure: &str) -> String {
    config(&format!(
        "[redis]\nurl = \"{redis}\"\non_failure = \"{on_failure}\"\ntimeout = \"2s\"\n\n\
         [[routes]]\nname = \"fleet\"\npath_prefix = \"/fleet\"\nrespond = {{ body = \"ok\" }}\n\
         rate_limit = {{ key = \"header:X-Key\", scope = \"fleet\", limits = [{{ requests = 100, per = \"1s\" }}] }}\n\n\
         [[routes]]\nname = \"local\"\npath_prefix = \"/local\"\nrespond = {{ body = \"ok\" }}\n\
         rate_limit = {{ key = \"header:X-Key\", limits = [{{ requests = 50, per = \"1s\" }}] }}\n\n\
         [[routes]]\nname = \"login\"\npath_prefix = \"/login\"\nrespond = {{ body = \"ok\" }}\n\
         rate_limit = {{ key = \"header:X-Key\", scope = \"fleet\", strict = true, limits = [{{ requests = 5, per = \"1m\" }}] }}\n"
    ))
}

/// Requests to `path` with key `key` on one keep-alive connection for `span`: how many
/// were admitted (200) and refused (429).
fn hammer(addr: std::net::SocketAddr, path: &str, key: &str, span: Duration) -> (u64, u64) {
    paced(addr, path, key, span, Duration::ZERO)
}

/// [`hammer`] with at least `gap` between requests.
fn paced(
    addr: std::net::SocketAddr,
    path: &str,
    key: &str,
    span: Duration,
    gap: Duration,
) -> (u64, u64) {
    let started = Instant::now();
    let until = started + span;
    let (mut ok, mut refused) = (0, 0);
    let mut c = Client::connect(addr);
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Key: {key}\r\n\r\n");
    // Bounded in time and in count.
    for i in 0..200_000u32 {
        if Instant::now() >= until {
            break;
        }
        if let Some(wait) = (started + gap * i).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        c.send(req.as_bytes());
        let r = c.response();
        match r.status {
            200 => ok += 1,
            429 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
        if r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            c = Client::connect(addr);
        }
    }
    (ok, refused)
}

#[test]
fn a_fleet_rate_limit_holds_across_appliances_within_the_documented_bound() {
    let Some(mut redis) =
        Redis::start("a_fleet_rate_limit_holds_across_appliances_within_the_documented_bound")
    else {
        return;
    };
    let lbs = [
        Lb::start(&limited(&redis.url(), "fail_open")),
        Lb::start(&limited(&redis.url(), "fail_open")),
    ];
    let closed = Lb::start(&limited(&redis.url(), "fail_closed"));
    for lb in lbs.iter().chain([&closed]) {
        wait_until("Redis up", || {
            metric(&lb.scrape(), "lb_ratelimit_redis_up", &[]) == 1.0
        });
    }

    // One key, 100/s, five seconds of load split between two appliances.
    let span = Duration::from_secs(5);
    let started = Instant::now();
    let counts: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = lbs
            .iter()
            // 500 requests/s per appliance, five times the limit: enough to be refused,
            // and the CPU left for the sync threads to keep their interval.
            .map(|lb| {
                s.spawn(move || paced(lb.addr, "/fleet", "k1", span, Duration::from_millis(2)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("load"))
            .collect()
    });
    let took = started.elapsed().as_secs_f64();
    let admitted: u64 = counts.iter().map(|c| c.0).sum();
    // docs/fleet.md: rate × span + burst, plus what each of N appliances can admit between
    // two syncs: N × rate × interval, and (N − 1) × burst when all start on a full bucket.
    let (rate, burst, n, interval) = (100.0, 100.0, 2.0, 0.1);
    let bound = rate * took + burst + n * rate * interval + (n - 1.0) * burst;
    assert!(
        (admitted as f64) <= bound,
        "admitted {admitted} over {took:.2}s (per appliance {counts:?}) is above the bound {bound:.0}"
    );
    assert!(
        admitted as f64 >= rate * took * 0.9,
        "admitted {admitted} over {took:.2}s: the fleet limit refuses more than it should"
    );
    // Each appliance alone would have admitted about its own 100/s.
    assert!(
        counts.iter().all(|c| c.1 > 0),
        "both appliances refused some: {counts:?}"
    );

    // A strict limit asks Redis on each request: exactly 5 a minute across the fleet,
    // however the requests are spread.
    let mut admitted = 0;
    for i in 0..20 {
        let r = get_with(lbs[i % 2].addr, "/login", &[("X-Key", "alice")]);
        match r.status {
            200 => admitted += 1,
            429 => assert!(r.header("retry-after").is_some(), "{r:?}"),
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(admitted, 5, "a strict fleet limit of 5 admitted {admitted}");
    assert_eq!(
        get_with(closed.addr, "/login", &[("X-Key", "alice")]).status,
        429,
        "the third appliance shares the count"
    );

    // Redis down. fail_open: each appliance holds the limit alone; fail_closed: the
    // fleet-scoped route refuses all. Local limits work either way.
    redis.stop();
    for lb in lbs.iter().chain([&closed]) {
        wait_until("Redis down noticed", || {
            metric(&lb.scrape(), "lb_ratelimit_redis_up", &[]) == 0.0
        });
    }
    let (ok, _) = hammer(lbs[0].addr, "/fleet", "k2", Duration::from_secs(2));
    assert!(
        ok > 0 && ok as f64 <= 100.0 * 2.5 + 100.0,
        "fail_open admitted {ok} in 2s with a local limit of 100/s"
    );
    assert!(metric(&lbs[0].scrape(), "lb_ratelimit_redis_errors_total", &[]) >= 1.0);
    let (ok, refused) = hammer(closed.addr, "/fleet", "k3", Duration::from_millis(500));
    assert_eq!(ok, 0, "fail_closed admitted {ok} with Redis down");
    assert!(refused > 0);
    assert!(metric(&closed.scrape(), "lb_ratelimit_fail_closed_total", &[]) >= refused as f64);
    let (ok, refused) = hammer(closed.addr, "/local", "k3", Duration::from_millis(500));
    assert!(
        ok > 0 && ok <= 50 + 50,
        "the local limit: {ok} admitted, {refused} refused"
    );
    // Strict limits without Redis: fail_open counts here alone, fail_closed refuses.
    let (ok, _) = hammer(lbs[0].addr, "/login", "bob", Duration::from_millis(300));
    assert_eq!(
        ok, 5,
        "fail_open strict falls back to this appliance's own limit"
    );
    assert!(metric(&lbs[0].scrape(), "lb_ratelimit_strict_fallback_total", &[]) >= 1.0);
    let (ok, _) = hammer(closed.addr, "/login", "carol", Duration::from_millis(300));
    assert_eq!(ok, 0, "fail_closed strict admitted {ok} with Redis down");

    // Redis back: the fail_closed appliance admits again.
    redis.run();
    wait_until("fail_closed lifted", || {
        get_with(closed.addr, "/fleet", &[("X-Key", "k4")]).status == 200
    });
}

#[test]
fn etcd_over_tls_with_credentials() {
    let Some(mut etcd) = Etcd::start_tls("etcd_over_tls_with_credentials") else {
        return;
    };
    etcd.enable_auth("lb", "s3cret", "/lb/");
    let dir = scratch_dir("fleet-tls");
    let state = state_dir("state");
    std::fs::write(dir.join("password"), "s3cret\n").expect("write");
    let host = |password_file: &str| {
        local_with(
            &etcd.endpoint(),
            &state,
            &format!(
                ", tls = {{ ca = \"{}\", cert = \"{}\", key = \"{}\" }}, auth = {{ user = \"lb\", password_file = \"{}\" }}",
                etcd.tls_dir().join("ca.pem").display(),
                etcd.tls_dir().join("cert.pem").display(),
                etcd.tls_dir().join("key.pem").display(),
                dir.join(password_file).display()
            ),
        )
    };
    let host_file = dir.join("host.toml");
    std::fs::write(&host_file, host("password")).expect("write");
    // lb push with the host's file: over TLS, as user lb.
    std::fs::write(dir.join("doc.toml"), doc("secure")).expect("write");
    let (code, out) = lb_in(
        &[
            "push",
            "doc.toml",
            "--config",
            &host_file.display().to_string(),
        ],
        &dir,
    );
    assert_eq!(code, Some(0), "{out}");
    let lb1 = Lb::start(&host("password"));
    assert_eq!(body(&lb1), "secure");
    // The watch, the lease and the candidacy work with the same credentials.
    wait_until("leading over TLS", || etcd_status(&lb1)["leader"] == true);
    drop(lb1);

    // A wrong password, and nothing persisted for it: lb says why it cannot start.
    std::fs::write(dir.join("wrong"), "nope\n").expect("write");
    let _ = std::fs::remove_dir_all(&state);
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, host("wrong")).expect("write");
    let (code, out) = lb_in(&["run", "--config", &bad.display().to_string()], &dir);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.to_lowercase().contains("authentication failed"),
        "{out}"
    );
    for d in [&state, &dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn fleet_rate_limits_find_redis_through_sentinel() {
    let Some(redis) = Redis::start("fleet_rate_limits_find_redis_through_sentinel") else {
        return;
    };
    let sentinel = common::fleet::Sentinel::start(&redis, "lbmaster");
    let cfg = |_: ()| {
        config(&format!(
            "[redis]\nsentinels = [\"redis://{}\"]\nmaster = \"lbmaster\"\n\n\
             [[routes]]\nname = \"login\"\npath_prefix = \"/login\"\nrespond = {{ body = \"ok\" }}\n\
             rate_limit = {{ key = \"header:X-Key\", scope = \"fleet\", strict = true, limits = [{{ requests = 3, per = \"1m\" }}] }}\n",
            sentinel.addr
        ))
    };
    let lbs = [Lb::start(&cfg(())), Lb::start(&cfg(()))];
    let mut admitted = 0;
    for i in 0..10 {
        if get_with(lbs[i % 2].addr, "/login", &[("X-Key", "dave")]).status == 200 {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 3,
        "through the sentinel's master, a strict limit of 3"
    );
}
