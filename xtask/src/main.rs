//! `cargo xtask`: the one entry point for people working on lb.
//!
//! - `cargo xtask demo`   build lb and run the embedded demo with its built-in backends
//! - `cargo xtask test`   install what the tests need, then run the whole test suite
//! - `cargo xtask build`  release build of the lb binary
//! - `cargo xtask deb`    the Debian package (cargo-deb), in target/debian
//! - `cargo xtask ci`     formatting, lints, then `test`: what `.ci/run` runs
//! - `cargo xtask bench`  micro benchmarks (criterion), figures printed
//! - `cargo xtask fuzz`   every cargo-fuzz target for a bounded time (nightly toolchain)
//! - `cargo xtask soak`   10 minutes of mixed traffic with restarts and reloads, then a report

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[args.len().min(1)..];
    match task {
        "demo" => demo(rest),
        "test" => test(rest),
        "build" => build(),
        "deb" => deb().map(|p| println!("{}", p.display())),
        "ci" => ci(),
        "bench" => bench(rest),
        "build-ebpf" => build_ebpf(),
        "fuzz" => fuzz(rest),
        "soak" => soak(rest),
        "setup" => ensure_packages(&BUILD_TOOLS),
        _ => {
            eprintln!("usage: cargo xtask <demo | test | build | ci>");
            eprintln!("  demo   build lb and run the embedded demo config with built-in backends");
            eprintln!("  test   install what the tests need, then run every test");
            eprintln!("  build  release build of target/release/lb");
            eprintln!(
                "  deb    the Debian package, in target/debian (installs cargo-deb if missing)"
            );
            eprintln!("  setup  install what building lb needs (protoc)");
            eprintln!("  ci     cargo fmt --check, clippy -D warnings, then test");
            eprintln!("  bench  micro benchmarks and the load benchmark (--micro, --load)");
            eprintln!(
                "  build-ebpf  build the XDP program (installs the eBPF toolchain if missing)"
            );
            eprintln!("  fuzz   run each fuzz target for [SECONDS] (default 60); crashes fail it");
            eprintln!("  soak   [SECONDS] (default 600) of mixed traffic, restarts and reloads");
            if task == "help" {
                Ok(())
            } else {
                bail!("unknown task {task:?}")
            }
        }
    }
}

/// Builds lb and the soak driver (release), then runs `lb-soak` for [SECONDS] (600 by
/// default). The report goes to stdout and `target/soak/report.md`.
fn soak(extra: &[String]) -> Result<()> {
    ensure_packages(&BUILD_TOOLS)?;
    let seconds = extra.first().map_or("600", String::as_str);
    let mut c = cargo();
    c.args([
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "--bin",
        "lb",
        "-p",
        "lb-bench",
        "--bin",
        "lb-soak",
    ]);
    run(c)?;
    let mut c = Command::new(root().join("target/release/lb-soak"));
    c.current_dir(root())
        .args(["--seconds", seconds, "--lb"])
        .arg(root().join("target/release/lb"));
    run(c)
}

/// The cargo-fuzz targets in `fuzz/`.
const FUZZ_TARGETS: [&str; 5] = ["request", "response", "config", "path", "forward"];

/// Runs every fuzz target for a bounded time with libFuzzer and AddressSanitizer. Needs a
/// rustup nightly; installs cargo-fuzz when missing. Inputs that crash are left in
/// `fuzz/artifacts/TARGET/` and fail the run; fix them and keep them as regression tests.
fn fuzz(extra: &[String]) -> Result<()> {
    ensure_packages(&BUILD_TOOLS)?;
    let seconds: u64 = match extra.first() {
        None => 60,
        Some(s) => s
            .parse()
            .with_context(|| format!("expected the seconds per target, got {s:?}"))?,
    };
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        bail!("fuzzing needs a rustup nightly toolchain (`rustup toolchain install nightly`)");
    }
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        let mut c = Command::new("cargo");
        c.args(["install", "cargo-fuzz", "--locked"]);
        run(c)?;
    }
    let dir = root().join("fuzz");
    for target in FUZZ_TARGETS {
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let mut c = Command::new("cargo");
        c.current_dir(&dir)
            .args(["+nightly", "fuzz", "run", target, "--target-dir"])
            .arg(root().join("target/fuzz"))
            .arg(&corpus)
            .arg(dir.join("seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048");
        run(c).with_context(|| {
            format!("fuzz target {target} found a failure: see fuzz/artifacts/{target}/")
        })?;
    }
    eprintln!(
        "fuzz: {} targets ran {seconds} s each without a failure",
        FUZZ_TARGETS.len()
    );
    Ok(())
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut c: Command) -> Result<()> {
    eprintln!("+ {c:?}");
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed with {status}");
    }
    Ok(())
}

/// A Rust toolchain that can build `core` for `bpfel-unknown-none`: a rustup nightly with
/// `rust-src`, or Debian's rustc-web with rust-web-src. Returns (cargo, rustc).
fn ebpf_toolchain() -> Option<(PathBuf, PathBuf)> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok();
    if let Some(o) = nightly.filter(|o| o.status.success()) {
        let sysroot = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if sysroot
            .join("lib/rustlib/src/rust/library/Cargo.lock")
            .is_file()
        {
            return Some((sysroot.join("bin/cargo"), sysroot.join("bin/rustc")));
        }
    }
    let debian = PathBuf::from("/usr/lib/rustlib/src/rust/library/Cargo.lock");
    if debian.is_file() && Path::new("/usr/bin/rustc").is_file() {
        return Some(("/usr/bin/cargo".into(), "/usr/bin/rustc".into()));
    }
    None
}

/// Builds `lb-ebpf` into `target/ebpf/lb-xdp.o`, installing what is missing first.
fn build_ebpf() -> Result<()> {
    if ebpf_toolchain().is_none() {
        eprintln!("xtask: no Rust toolchain with library source for eBPF; installing Debian's rustc-web and rust-web-src");
        apt_install(&["rustc-web", "rust-web-src", "cargo-web"])?;
    }
    let (cargo_bin, rustc_bin) =
        ebpf_toolchain().context("no eBPF-capable Rust toolchain even after installing one")?;
    if !have("bpf-linker") {
        apt_install(&[
            "llvm-22-dev",
            "libpolly-22-dev",
            "libzstd-dev",
            "zlib1g-dev",
        ])?;
        eprintln!("xtask: building bpf-linker 0.13 against LLVM 22 (a few minutes, once)");
        let mut c = cargo();
        c.args([
            "install",
            "bpf-linker",
            "--version",
            "0.13.0",
            "--no-default-features",
            "--features",
            "llvm-22",
            "--locked",
        ])
        .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
        .env("RUSTFLAGS", "-L native=/usr/lib/llvm-22/lib");
        run(c)?;
    }
    let build_dir = root().join("target/ebpf-build");
    let mut c = Command::new(&cargo_bin);
    c.current_dir(root().join("lb-ebpf"))
        .args([
            "build",
            "--release",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
        ])
        .env("RUSTC", &rustc_bin)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_DIR", &build_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO");
    run(c)?;
    let out = root().join("target/ebpf");
    std::fs::create_dir_all(&out)?;
    // Copied only when it changed: a new mtime makes lb's build script ask for a rebuild,
    // and a fat-LTO relink of lb takes minutes for nothing.
    let built = std::fs::read(build_dir.join("bpfel-unknown-none/release/lb-xdp"))?;
    let dest = out.join("lb-xdp.o");
    if std::fs::read(&dest).ok().as_deref() != Some(&built[..]) {
        std::fs::write(&dest, &built)?;
    }
    eprintln!("xtask: eBPF object at {}", out.join("lb-xdp.o").display());
    Ok(())
}

/// The cargo-deb version `deb` installs when it is missing (3.x builds on our Rust).
const CARGO_DEB: &str = "^3";

/// Builds the release binary and the Debian package (`[package.metadata.deb]` of
/// lb-userspace); returns the package's path.
fn deb() -> Result<PathBuf> {
    if !have("cargo-deb") {
        eprintln!("xtask: installing cargo-deb");
        let mut c = cargo();
        c.args(["install", "--locked", "cargo-deb", "--version", CARGO_DEB]);
        run(c)?;
    }
    ensure_packages(&[("lintian", "lintian")])?;
    build()?;
    let mut c = cargo();
    c.args(["deb", "-p", "lb-userspace", "--no-build", "--strip"]);
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .context("cargo deb printed no package path")?;
    eprintln!("xtask: package at {}", path.display());
    Ok(path)
}

/// What building lb itself needs: the etcd client's gRPC code is generated with protoc, which
/// needs the well-known types (a recommended package, not a dependency: named here).
const BUILD_TOOLS: [(&str, &str); 2] = [
    ("protoc", "protobuf-compiler"),
    (
        "/usr/include/google/protobuf/descriptor.proto",
        "libprotobuf-dev",
    ),
];

fn build() -> Result<()> {
    ensure_packages(&BUILD_TOOLS)?;
    build_ebpf()?;
    let mut c = cargo();
    c.args(["build", "--release", "-p", "lb-userspace", "--bin", "lb"]);
    run(c)
}

fn demo(extra: &[String]) -> Result<()> {
    build()?;
    let mut c = Command::new(root().join("target/release/lb"));
    c.arg("demo").args(extra);
    run(c)
}

/// Tools the tests use, and the Debian package that brings each.
const TEST_TOOLS: [(&str, &str); 25] = [
    ("promtool", "prometheus"),
    ("wrk", "wrk"),
    ("ethtool", "ethtool"),
    ("curl", "curl"),
    // TLS clients the tests drive besides curl.
    ("openssl", "openssl"),
    ("python3", "python3"),
    // pip, for the gRPC tests' grpcio.
    ("pip3", "python3-pip"),
    // The appliance tests: the unit file checked offline, a network namespace for the
    // sysctl drop-in.
    ("systemd-analyze", "systemd"),
    // A container booting systemd, for the package upgrade under a live service.
    ("systemd-nspawn", "systemd-container"),
    ("unshare", "util-linux"),
    ("ip", "iproute2"),
    ("sysctl", "procps"),
    // The shipped logrotate snippet, run by logrotate.
    ("logrotate", "logrotate"),
    // HTTP/2 clients.
    ("nghttp", "nghttp2-client"),
    ("h2load", "nghttp2-client"),
    // The ACME test server and its mock DNS (pebble-challtestsrv), for the ACME tests.
    ("pebble", "pebble"),
    // The bench's same-work check runs against the proxies it compares with.
    ("nginx", "nginx-light"),
    ("haproxy", "haproxy"),
    // The console tests: a real browser, driven over WebDriver.
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
    // The fleet tests: a real etcd and Redis, and etcd's own client.
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("redis-server", "redis-server"),
    ("protoc", "protobuf-compiler"),
    (
        "/usr/include/google/protobuf/descriptor.proto",
        "libprotobuf-dev",
    ),
];

/// Whether `bin` is on the PATH (or, given as an absolute path, whether that file exists).
fn have(bin: &str) -> bool {
    if bin.starts_with('/') {
        return Path::new(bin).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(bin).is_file()))
}

/// Installs missing Debian packages (as root, with apt-get), saying what it does.
fn ensure_packages(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        bail!("missing {missing:?} and no apt-get to install them with");
    }
    eprintln!("xtask: installing {missing:?} (Debian packages this task needs)");
    apt_install(&missing)
}

/// `apt-get update` (once per xtask run) and `apt-get install` of `packages`.
fn apt_install(packages: &[&str]) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static UPDATED: AtomicBool = AtomicBool::new(false);
    if !UPDATED.swap(true, Ordering::SeqCst) {
        let mut update = Command::new("apt-get");
        update.args(["update", "-qq"]);
        run(update)?;
    }
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run(install)
}

/// Installs Python modules the tests import (`(module, package)`) that `python3` cannot
/// import yet, with pip, for the user running the tests.
fn ensure_python_modules(modules: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = modules
        .iter()
        .filter(|(m, _)| {
            !Command::new("python3")
                .args(["-c", &format!("import {m}")])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, p)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Python packages {missing:?} (the gRPC tests' client and server, the HTTP/2 floods)");
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"]);
    // Debian's own Python refuses system-wide installs without this; pyenv's does not care.
    pip.env("PIP_BREAK_SYSTEM_PACKAGES", "1");
    pip.args(&missing);
    run(pip)
}

/// Runs every test, echoing cargo's output, and closes with one summed-up line.
fn test(extra: &[String]) -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    ensure_packages(&TEST_TOOLS)?;
    ensure_python_modules(&[("grpc", "grpcio"), ("h2", "h2")])?;
    build_ebpf()?;
    // The package test installs what `deb` builds.
    let package = deb()?;
    // Tests that cannot run here fail rather than pass (`LB_REQUIRE_TOOLS=0` lets them skip,
    // counted as skipped below).
    let require = std::env::var("LB_REQUIRE_TOOLS").unwrap_or_else(|_| "1".into());
    let skip_log = root().join("target/test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    let mut c = cargo();
    c.args(["test", "--workspace"])
        .args(extra)
        .stdout(Stdio::piped())
        .env("LB_REQUIRE_TOOLS", &require)
        .env("LB_SKIP_LOG", &skip_log)
        .env("LB_DEB", &package);
    eprintln!("+ {c:?}");
    let mut child = c.spawn().context("running cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next()) {
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let status = child.wait()?;
    // A skipped test returned early and libtest counted it as passed.
    let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let skipped = skips.lines().count() as u64;
    for line in skips.lines() {
        println!("skipped: {line}");
    }
    let passed = passed.saturating_sub(skipped);
    let ignored = ignored + skipped;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}

/// Tools the load benchmark compares against and drives.
const BENCH_TOOLS: [(&str, &str); 6] = [
    ("nginx", "nginx-light"),
    ("haproxy", "haproxy"),
    ("wrk", "wrk"),
    // `openssl s_time` drives the resumed-handshake scenario.
    ("openssl", "openssl"),
    // h2load drives the HTTP/2 scenario.
    ("h2load", "nghttp2-client"),
    // The fleet scenario's shared etcd.
    ("etcd", "etcd-server"),
];

/// `cargo xtask bench [--micro | --load] [load options…]`: criterion micro benchmarks, then
/// the side-by-side load benchmark (see benches/harness). Options after the mode go to
/// `lb-bench` (`--seconds`, `--rounds`, `--scenario`, `--proxy`, `--idle`).
fn bench(extra: &[String]) -> Result<()> {
    ensure_packages(&BUILD_TOOLS)?;
    let (micro, load) = match extra.first().map(String::as_str) {
        Some("--micro") => (true, false),
        Some("--load") => (false, true),
        _ => (true, true),
    };
    let rest: Vec<String> = extra
        .iter()
        .filter(|a| *a != "--micro" && *a != "--load")
        .cloned()
        .collect();
    if micro {
        let mut c = cargo();
        c.args(["bench", "-p", "lb-userspace"]);
        run(c)?;
    }
    if load {
        ensure_packages(&BENCH_TOOLS)?;
        // perf lets the report say where lb's time goes; the benchmark runs without it.
        if let Err(e) = ensure_packages(&[("perf", "linux-perf")]) {
            eprintln!("xtask: no perf ({e:#}); the report will have no profile");
        }
        build()?;
        let mut b = cargo();
        b.args(["build", "--release", "-p", "lb-bench"]);
        run(b)?;
        let target = root().join("target/release");
        let mut c = Command::new(target.join("lb-bench"));
        c.arg("--lb")
            .arg(target.join("lb"))
            .arg("--hello")
            .arg(target.join("lb-hello"))
            .arg("--out")
            .arg(root().join("target/bench"))
            .args(&rest);
        run(c)?;
    }
    Ok(())
}

fn ci() -> Result<()> {
    ensure_packages(&BUILD_TOOLS)?;
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run(fmt)?;
    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    run(clippy)?;
    test(&[])
}
