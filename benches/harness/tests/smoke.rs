//! The harness itself: a short run of one scenario completes and writes a well-formed report.
//! No timing is asserted.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn short_run_writes_a_report() {
    let have_wrk = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("wrk").is_file()));
    if !have_wrk {
        if std::env::var_os("LB_REQUIRE_TOOLS").is_some() {
            panic!("wrk is required here (`cargo xtask test` installs it)");
        }
        eprintln!("SKIPPED: wrk not installed; `cargo xtask test` installs it");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lb = root.join("target/debug/lb");
    assert!(lb.is_file(), "build the lb binary first: {}", lb.display());
    let out = std::env::temp_dir().join(format!("lb-bench-smoke-{}", std::process::id()));
    // Removed however the test ends, failed assertions included.
    let _cleanup = RemoveOnDrop(out.clone());
    // Below the ephemeral range, and different per process, so parallel runs do not collide.
    let base = 20_000 + (std::process::id() % 1000) as u16 * 10;
    let status = Command::new(env!("CARGO_BIN_EXE_lb-bench"))
        .arg("--lb")
        .arg(&lb)
        .arg("--hello")
        .arg(env!("CARGO_BIN_EXE_lb-hello"))
        .arg("--out")
        .arg(&out)
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
        .args(["--base-port", &base.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
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
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| small_keepalive | lb |"), "{md}");
}

/// The same-work check passes on the shipped configs: lb, nginx and HAProxy send the
/// backend the same headers. (That it fails on differing configs is unit-tested.)
#[test]
fn the_three_proxies_forward_the_same_headers() {
    let have = |bin: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
    };
    if !have("nginx") || !have("haproxy") {
        if std::env::var_os("LB_REQUIRE_TOOLS").is_some() {
            panic!("nginx and haproxy are required here (`cargo xtask test` installs them)");
        }
        eprintln!("SKIPPED: nginx or haproxy not installed; `cargo xtask test` installs them");
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lb = root.join("target/debug/lb");
    assert!(lb.is_file(), "build the lb binary first: {}", lb.display());
    let out = std::env::temp_dir().join(format!("lb-bench-samework-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(out.clone());
    // Offset from the smoke run's ports so the two tests can run at once.
    let base = 20_005 + (std::process::id() % 1000) as u16 * 10;
    let status = Command::new(env!("CARGO_BIN_EXE_lb-bench"))
        .arg("--lb")
        .arg(&lb)
        .arg("--hello")
        .arg(env!("CARGO_BIN_EXE_lb-hello"))
        .arg("--out")
        .arg(&out)
        .arg("--check-only")
        .args(["--base-port", &base.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let seen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("same-work.json")).unwrap())
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

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
