//! The harness itself: a short run of one scenario completes and writes a well-formed report.
//! No timing is asserted.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn short_run_writes_a_report() {
    if !tools_present(&["wrk"]) {
        return;
    }
    let out = Scratch::new("smoke");
    // Below the ephemeral range, and different per process, so parallel runs do not collide.
    let base = 20_000 + (std::process::id() % 1000) as u16 * 10;
    let status = lb_bench(&out.0, base)
        .args([
            "--seconds",
            "1",
            "--rounds",
            "1",
            "--scenario",
            "small_keepalive",
            "--proxy",
            "lb",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.0.join("report.json")).unwrap()).unwrap();
    let lb_result = &report["scenarios"][0]["proxies"]["lb"];
    assert_eq!(report["scenarios"][0]["name"], "small_keepalive");
    assert!(lb_result["rps"].as_f64().unwrap() > 0.0, "{report}");
    assert!(lb_result["cpu_us_per_req"].as_f64().unwrap() > 0.0);
    assert!(lb_result["fixed_rate"]["p99_ms"].as_f64().is_some());
    assert!(lb_result["proxy_busy"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    // The same-work check ran first and its findings are in the report.
    assert!(
        report["same_work"]["lb"]["request_head_bytes"]
            .as_u64()
            .unwrap()
            > 0,
        "{report}"
    );
    // With perf installed, the report says where lb's time went.
    if let Some(p) = report.get("profile") {
        assert!(p["kernel_pct"].as_f64().is_some(), "{p}");
        assert!(!p["top"].as_array().unwrap().is_empty(), "{p}");
    }
    let md = std::fs::read_to_string(out.0.join("report.md")).unwrap();
    assert!(md.contains("| small_keepalive | lb |"), "{md}");
}

/// The same-work check passes on the shipped configs: lb, nginx and HAProxy send the
/// backend the same headers. (That it fails on differing configs is unit-tested.)
#[test]
fn the_three_proxies_forward_the_same_headers() {
    if !tools_present(&["nginx", "haproxy"]) {
        return;
    }
    let out = Scratch::new("samework");
    // Another block than the smoke run's (which takes base+1 to base+8), so the two tests
    // can run at once: an offset of 5 inside its block made this test's nginx collide with
    // the smoke run's gRPC backend now and then (a reset on the probe).
    let base = 10_000 + (std::process::id() % 1000) as u16 * 10;
    let status = lb_bench(&out.0, base).arg("--check-only").status().unwrap();
    assert!(status.success());
    let seen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.0.join("same-work.json")).unwrap())
            .unwrap();
    for proxy in ["lb", "nginx", "haproxy"] {
        let names = seen[proxy]["request_headers"].as_array().unwrap();
        for h in ["host", "x-forwarded-for", "x-forwarded-proto", "via"] {
            assert!(names.iter().any(|n| n == h), "{proxy} lacks {h}: {seen}");
        }
        let added = seen[proxy]["response_added"].as_array().unwrap();
        assert!(added.iter().any(|n| n == "via"), "{proxy}: {seen}");
    }
}

/// The upgrades scenario runs each proxy's own binary upgrade under load and counts failed
/// requests; lb's count is zero (as `tests/upgrade.rs` holds it to).
#[test]
fn upgrades_scenario_upgrades_each_proxy_under_load() {
    if !tools_present(&["nginx", "haproxy"]) {
        return;
    }
    let out = Scratch::new("upgrades");
    // A block of its own, below the ephemeral range: the other tests here may run at once.
    let base = 30_000 + (std::process::id() % 270) as u16 * 10;
    let status = lb_bench(&out.0, base)
        .args(["--scenario", "upgrades", "--upgrades", "2", "--no-profile"])
        .status()
        .unwrap();
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.0.join("report.json")).unwrap()).unwrap();
    let rows = report["upgrades"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{report}");
    for r in rows {
        assert!(r["figures"]["requests"].as_u64().unwrap() > 0, "{r}");
        assert!(r["figures"]["failed"].as_u64().is_some(), "{r}");
    }
    let lb = rows.iter().find(|r| r["proxy"] == "lb").unwrap();
    assert_eq!(lb["figures"]["failed"], 0, "{lb}");
    let md = std::fs::read_to_string(out.0.join("report.md")).unwrap();
    assert!(md.contains("## Binary upgrades under load"), "{md}");
}

/// Whether the tools are installed; if not, says the test is skipped (or fails it where
/// `LB_REQUIRE_TOOLS` says they must be there).
fn tools_present(bins: &[&str]) -> bool {
    let have = |bin: &&str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
    };
    if bins.iter().all(have) {
        return true;
    }
    // The same rule as the lb tests' `common::skip`: required tools fail, skips are counted.
    let required = std::env::var("LB_REQUIRE_TOOLS").is_ok_and(|v| v != "0");
    assert!(
        !required,
        "{bins:?} are required here (`cargo xtask test` installs them)"
    );
    eprintln!("SKIPPED: one of {bins:?} is not installed; `cargo xtask test` installs them");
    if let Some(path) = std::env::var_os("LB_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "bench smoke: {bins:?} missing");
        }
    }
    false
}

/// `lb-bench` with the debug lb, the hello backend, `out` and ports from `base`.
fn lb_bench(out: &Path, base: u16) -> Command {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The workspace's target directory, wherever CARGO_TARGET_DIR puts it.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let lb = target.join("debug/lb");
    assert!(lb.is_file(), "build the lb binary first: {}", lb.display());
    let mut c = Command::new(env!("CARGO_BIN_EXE_lb-bench"));
    c.arg("--lb")
        .arg(&lb)
        .arg("--hello")
        .arg(env!("CARGO_BIN_EXE_lb-hello"))
        .arg("--out")
        .arg(out)
        .args(["--base-port", &base.to_string()]);
    c
}

/// A directory for one test's output, removed however the test ends, failed assertions
/// included.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        Scratch(std::env::temp_dir().join(format!("lb-bench-{name}-{}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
