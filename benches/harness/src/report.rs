//! Medians, ratios, targets, and the JSON and Markdown reports.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::procs::version_of;
use crate::scenarios::{Run, Sample};
use crate::Opts;

/// A core this busy (share of its time) is saturated.
const LOAD_SATURATED: f64 = 0.95;

pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn medians(samples: &[Sample]) -> Value {
    let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f));
    let mut v = json!({
        "rps": m(|s| s.rps),
        "p50_ms": m(|s| s.p50_ms),
        "p99_ms": m(|s| s.p99_ms),
        "cpu_us_per_req": m(|s| s.cpu_us_per_req),
        "peak_rss_kib": m(|s| s.peak_rss_kib as f64),
        "requests": m(|s| s.requests as f64),
        "rounds": samples.len(),
    });
    if samples.iter().any(|s| s.kib_per_conn.is_some()) {
        v["kib_per_idle_connection"] = json!(median(samples.iter().filter_map(|s| s.kib_per_conn)));
    }
    for (key, f) in [
        (
            "proxy_busy",
            (|s: &Sample| s.proxy_busy) as fn(&Sample) -> Option<f64>,
        ),
        ("load_busy", |s: &Sample| s.load_busy),
    ] {
        if samples.iter().any(|s| f(s).is_some()) {
            v[key] = json!(median(samples.iter().filter_map(f)));
        }
    }
    if let Some((rate, _, _)) = samples.iter().find_map(|s| s.fixed_rate) {
        let p50 = median(samples.iter().filter_map(|s| s.fixed_rate.map(|f| f.1)));
        let p99 = median(samples.iter().filter_map(|s| s.fixed_rate.map(|f| f.2)));
        v["fixed_rate"] = json!({ "rate": rate, "p50_ms": p50, "p99_ms": p99 });
    }
    v
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({ "cpu": cpu, "cores": crate::procs::cores(), "kernel": kernel })
}

/// The whole report as JSON.
pub fn build(opts: &Opts, run: &Run) -> Value {
    let results = &run.results;
    let mut scenarios = Vec::new();
    let mut targets = Vec::new();
    for (name, per_proxy) in results {
        let mut proxies = serde_json::Map::new();
        for (proxy, samples) in per_proxy {
            proxies.insert(proxy.clone(), medians(samples));
        }
        let ratio = |other: &str, field: &str| -> Option<f64> {
            let a = proxies.get("lb")?.get(field)?.as_f64()?;
            let b = proxies.get(other)?.get(field)?.as_f64()?;
            (b > 0.0).then(|| a / b)
        };
        let mut ratios = serde_json::Map::new();
        for other in ["nginx", "haproxy"] {
            let fields = [
                "rps",
                "cpu_us_per_req",
                "p99_ms",
                "peak_rss_kib",
                "kib_per_idle_connection",
            ];
            let r: serde_json::Map<String, Value> = fields
                .iter()
                .filter_map(|f| ratio(other, f).map(|x| (f.to_string(), json!(x))))
                .collect();
            ratios.insert(format!("lb_vs_{other}"), Value::Object(r));
        }
        let t = |label: &str, got: Option<f64>, want: &str, ok: fn(f64) -> bool| json!({ "target": label, "value": got, "want": want, "met": got.map(ok) });
        // Rounds run the proxies back to back, so a round's ratio is the least disturbed
        // by the host drifting; the spread of those says how settled the median is.
        let by_round = |other: &str, f: fn(&Sample) -> f64| -> Vec<f64> {
            let of = |p: &str| per_proxy.iter().find(|(n, _)| n == p).map(|(_, s)| s);
            match (of("lb"), of(other)) {
                (Some(a), Some(b)) => a
                    .iter()
                    .zip(b)
                    .filter(|(_, y)| f(y) > 0.0)
                    .map(|(x, y)| f(x) / f(y))
                    .collect(),
                _ => Vec::new(),
            }
        };
        if name == "small_keepalive" {
            let lb_share = |k: &str| {
                proxies
                    .get("lb")
                    .and_then(|m| m.get(k))
                    .and_then(Value::as_f64)
            };
            let lb_load = lb_share("load_busy");
            let lb_own = lb_share("proxy_busy").unwrap_or(0.0);
            let mut rps_target = |label: &str, other: &str, want: &str, ok: fn(f64) -> bool| {
                let mut v = t(label, ratio(other, "rps"), want, ok);
                v["rounds"] = json!(by_round(other, |s| s.rps));
                if let Some(busy) = lb_load.filter(|b| *b >= LOAD_SATURATED) {
                    v["note"] = json!(format!(
                        "the load core (wrk and the backend) was {:.0}% busy during lb's runs (lb's own process {:.0}%): lb's req/s was held by the load side, so this ratio is a lower bound; CPU per request is the measure of lb alone",
                        busy * 100.0,
                        lb_own * 100.0
                    ));
                }
                targets.push(v);
            };
            rps_target("requests/s vs nginx", "nginx", ">= 1.2", |x| x >= 1.2);
            rps_target("requests/s vs HAProxy", "haproxy", ">= 1.3", |x| x >= 1.3);
            let mut cpu = t(
                "CPU per request vs nginx",
                ratio("nginx", "cpu_us_per_req"),
                "<= 0.8",
                |x| x <= 0.8,
            );
            cpu["rounds"] = json!(by_round("nginx", |s| s.cpu_us_per_req));
            targets.push(cpu);
            let fixed = |p: &str| proxies.get(p)?.get("fixed_rate")?.get("p99_ms")?.as_f64();
            let p99 = match (fixed("lb"), fixed("nginx")) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let mut tail = t("p99 at a fixed rate vs nginx", p99, "<= 1.0", |x| x <= 1.0);
            tail["rounds"] = json!(by_round("nginx", |s| s.fixed_rate.map_or(0.0, |f| f.2)));
            targets.push(tail);
        }
        if name == "tls_handshake" {
            // Handshakes per CPU-second: the inverse ratio of CPU per handshake, which the
            // load side (sharing a core with the backend) cannot cap.
            for (other, label, want, ok) in [
                (
                    "nginx",
                    "full TLS handshakes per core vs nginx",
                    ">= 1.5",
                    (|x| x >= 1.5) as fn(f64) -> bool,
                ),
                (
                    "haproxy",
                    "full TLS handshakes per core vs HAProxy",
                    ">= 1.3",
                    |x| x >= 1.3,
                ),
            ] {
                let per_core = ratio(other, "cpu_us_per_req")
                    .filter(|r| *r > 0.0)
                    .map(|r| 1.0 / r);
                let mut v = t(label, per_core, want, ok);
                v["rounds"] = json!(by_round(other, |s| s.cpu_us_per_req)
                    .into_iter()
                    .filter(|r| *r > 0.0)
                    .map(|r| 1.0 / r)
                    .collect::<Vec<_>>());
                targets.push(v);
            }
        }
        if name == "tls_keepalive" || name == "h2_tls" {
            // Against the better of the two: the higher req/s, the lower CPU per request.
            let of = |p: &str, f: &str| proxies.get(p)?.get(f)?.as_f64();
            let lb_rps = of("lb", "rps");
            let best_rps = ["nginx", "haproxy"]
                .iter()
                .filter_map(|p| of(p, "rps"))
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
            let lb_cpu = of("lb", "cpu_us_per_req");
            let best_cpu = ["nginx", "haproxy"]
                .iter()
                .filter_map(|p| of(p, "cpu_us_per_req"))
                .filter(|x| *x > 0.0)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))));
            let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let what = if name == "h2_tls" {
                "HTTP/2 (h2load, TLS)"
            } else {
                "TLS keep-alive"
            };
            targets.push(t(
                &format!("{what} requests/s vs the better of nginx and HAProxy"),
                div(lb_rps, best_rps),
                ">= 1.2",
                |x| x >= 1.2,
            ));
            targets.push(t(
                &format!("{what} CPU per request vs the better of nginx and HAProxy"),
                div(lb_cpu, best_cpu),
                "<= 0.8",
                |x| x <= 0.8,
            ));
        }
        if name == "tls_idle" {
            let mut mem = t(
                "memory per idle TLS connection vs nginx",
                ratio("nginx", "kib_per_idle_connection"),
                "<= 1.0",
                |x| x <= 1.0,
            );
            mem["rounds"] = json!(by_round("nginx", |s| s.kib_per_conn.unwrap_or(0.0)));
            targets.push(mem);
        }
        if name == "idle_connections" {
            let mut mem = t(
                "memory per idle connection vs nginx",
                ratio("nginx", "kib_per_idle_connection"),
                "<= 1.0",
                |x| x <= 1.0,
            );
            mem["rounds"] = json!(by_round("nginx", |s| s.kib_per_conn.unwrap_or(0.0)));
            targets.push(mem);
        }
        scenarios.push(json!({ "name": name, "proxies": proxies, "ratios": ratios }));
    }
    let mut report = json!({
        "date": humantime_now(),
        "machine": machine(),
        "versions": {
            "lb": version_of(&opts.lb.to_string_lossy(), "--version"),
            "nginx": version_of("/usr/sbin/nginx", "-v"),
            "haproxy": version_of("/usr/sbin/haproxy", "-v"),
            "wrk": version_of("/usr/bin/wrk", "-v"),
        },
        "settings": {
            "seconds": opts.seconds,
            "rounds": opts.rounds,
            "pinning": "proxy on core 0; backend and load generator on core 1",
            "idle_connections": opts.idle,
        },
        "scenarios": scenarios,
        "targets": targets,
        "same_work": run.same_work,
        "large_config": run.large_config,
        "upgrades": run.upgrades,
        "fleet": run.fleet,
    });
    if let Some(p) = &run.profile {
        report["profile"] = p.clone();
    }
    report
}

fn humantime_now() -> String {
    let out = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

/// A target's ratio, with the third decimal so that 1.297 does not read as a met 1.30.
fn ratio(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.3}"))
}

/// The report as a Markdown table.
pub fn markdown(r: &Value) -> String {
    let mut s = format!(
        "# lb benchmark\n\n{} · {} cores ({}) · kernel {}\n\n{} · {} · {} · {}\n\n",
        r["date"].as_str().unwrap_or(""),
        r["machine"]["cores"],
        r["machine"]["cpu"].as_str().unwrap_or(""),
        r["machine"]["kernel"].as_str().unwrap_or(""),
        r["versions"]["lb"].as_str().unwrap_or(""),
        r["versions"]["nginx"].as_str().unwrap_or(""),
        r["versions"]["haproxy"].as_str().unwrap_or(""),
        r["versions"]["wrk"].as_str().unwrap_or(""),
    );
    s.push_str("| scenario | proxy | req/s | p50 ms | p99 ms | CPU µs/req | busy % proxy / load core | peak RSS KiB | KiB/idle conn | fixed-rate p50/p99 ms |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for sc in r["scenarios"].as_array().into_iter().flatten() {
        for (proxy, m) in sc["proxies"].as_object().into_iter().flatten() {
            let fixed = m
                .get("fixed_rate")
                .map(|f| {
                    format!(
                        "{} / {} @ {}/s",
                        num(&f["p50_ms"]),
                        num(&f["p99_ms"]),
                        num(&f["rate"])
                    )
                })
                .unwrap_or_else(|| "-".into());
            let pct = |k: &str| {
                m.get(k)
                    .and_then(Value::as_f64)
                    .map_or("-".into(), |x| format!("{:.0}", x * 100.0))
            };
            s.push_str(&format!(
                "| {} | {proxy} | {} | {} | {} | {} | {} / {} | {} | {} | {fixed} |\n",
                sc["name"].as_str().unwrap_or(""),
                num(&m["rps"]),
                num(&m["p50_ms"]),
                num(&m["p99_ms"]),
                num(&m["cpu_us_per_req"]),
                pct("proxy_busy"),
                pct("load_busy"),
                num(&m["peak_rss_kib"]),
                m.get("kib_per_idle_connection").map_or("-".into(), num),
            ));
        }
        for (k, v) in sc["ratios"].as_object().into_iter().flatten() {
            let parts: Vec<String> = v
                .as_object()
                .into_iter()
                .flatten()
                .map(|(f, x)| format!("{f} {}", num(x)))
                .collect();
            if !parts.is_empty() {
                s.push_str(&format!(
                    "| {} | {k} | {} ||||||||\n",
                    sc["name"].as_str().unwrap_or(""),
                    parts.join(", ")
                ));
            }
        }
    }
    s.push_str(
        "\n## Targets\n\n| target | median | each round | want | met |\n|---|---|---|---|---|\n",
    );
    let mut notes = Vec::new();
    for t in r["targets"].as_array().into_iter().flatten() {
        let rounds: Vec<String> = t["rounds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(ratio)
            .collect();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            t["target"].as_str().unwrap_or(""),
            ratio(&t["value"]),
            if rounds.is_empty() {
                "-".to_string()
            } else {
                rounds.join(", ")
            },
            t["want"].as_str().unwrap_or(""),
            match t["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            }
        ));
        if let Some(n) = t["note"].as_str() {
            if !notes.contains(&n) {
                notes.push(n);
            }
        }
    }
    for n in notes {
        s.push_str(&format!("\nNote: {n}.\n"));
    }
    if let Some(w) = r.get("same_work") {
        s.push_str(&crate::samework::markdown(w));
    }
    if let Some(p) = r.get("profile") {
        s.push_str(&crate::profile::markdown(p));
    }
    if let Some(l) = r.get("large_config").filter(|l| !l.is_null()) {
        s.push('\n');
        s.push_str(&crate::largeconfig::markdown(l));
    }
    if let Some(f) = r.get("fleet").filter(|f| !f.is_null()) {
        s.push('\n');
        s.push_str(&crate::fleet::markdown(f));
    }
    if let Some(u) = r.get("upgrades").filter(|u| !u.is_null()) {
        s.push('\n');
        s.push_str(&crate::upgrades::markdown(u));
    }
    s
}

/// Writes `report.json` and `report.md` under `dir`.
pub fn write(dir: &Path, r: &Value) -> std::io::Result<(PathBuf, PathBuf)> {
    let json_path = dir.join("report.json");
    let md_path = dir.join("report.md");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(r).unwrap_or_default() + "\n",
    )?;
    std::fs::write(&md_path, markdown(r))?;
    Ok((json_path, md_path))
}
