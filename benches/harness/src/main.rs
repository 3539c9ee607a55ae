//! `lb-bench`: lb, nginx and HAProxy side by side, with the same backend and the same
//! pinning (proxy on core 0; backend and load generator on core 1), each scenario in
//! interleaved rounds, medians reported with ratios. Writes JSON and Markdown reports.
//!
//! The TLS scenarios (`tls_*`) run the same proxies on a second listener each, with one
//! ECDSA P-256 certificate made at start, TLS 1.3 negotiated by the clients (wrk and
//! `openssl s_time`, both on Debian's OpenSSL).
//!
//! Usage: lb-bench --lb PATH --hello PATH --out DIR [--seconds N] [--rounds N]
//!                 [--scenario NAME]... [--proxy NAME]... [--base-port P] [--idle N]
//!                 [--no-profile] [--check-only] [--upgrades N]
//!
//! Before any load, `samework` checks on the wire that every proxy forwards the same
//! headers; `--check-only` runs just that check and prints what it saw.

mod fleet;
mod largeconfig;
mod openloop;
mod procs;
mod profile;
mod report;
mod samework;
mod scenarios;
mod upgrades;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// Everything the command line sets.
#[derive(Debug, Clone)]
pub struct Opts {
    pub lb: PathBuf,
    pub hello: PathBuf,
    pub out: PathBuf,
    pub seconds: u64,
    pub rounds: usize,
    pub scenarios: Vec<String>,
    pub proxies: Vec<String>,
    pub base_port: u16,
    /// Idle keep-alive connections for the memory scenario (10,000 by default). The proxies
    /// need up to two descriptors each (HAProxy reserves a server-side one per connection).
    pub idle: usize,
    /// Binary upgrades per proxy in the upgrades scenario (10 by default).
    pub upgrades: usize,
    /// Profile lb with `perf` during an extra small keep-alive run (when perf is installed).
    pub profile: bool,
    /// Only check that the proxies do the same work; measure nothing.
    pub check_only: bool,
    /// Open files each proxy may use (this process's limit, which they inherit).
    pub fd_limit: u64,
}

pub const ALL_SCENARIOS: [&str; 15] = [
    "small_keepalive",
    "response_16k",
    "upload_1m",
    "new_connection",
    "idle_connections",
    "tls_handshake",
    "tls_resumed",
    "tls_keepalive",
    "tls_16k",
    "tls_idle",
    "h2_tls",
    "grpc_unary",
    "large_config",
    "upgrades",
    "fleet",
];
pub const ALL_PROXIES: [&str; 3] = ["lb", "nginx", "haproxy"];

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        lb: PathBuf::new(),
        hello: PathBuf::new(),
        out: PathBuf::from("target/bench"),
        seconds: 5,
        rounds: 3,
        scenarios: Vec::new(),
        proxies: Vec::new(),
        base_port: 18180,
        idle: 10_000,
        upgrades: 10,
        profile: true,
        check_only: false,
        fd_limit: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--lb" => o.lb = val()?.into(),
            "--hello" => o.hello = val()?.into(),
            "--out" => o.out = val()?.into(),
            "--seconds" => o.seconds = val()?.parse()?,
            "--rounds" => o.rounds = val()?.parse()?,
            "--scenario" => o.scenarios.push(val()?),
            "--proxy" => o.proxies.push(val()?),
            "--base-port" => o.base_port = val()?.parse()?,
            "--idle" => o.idle = val()?.parse()?,
            "--upgrades" => o.upgrades = val()?.parse()?,
            "--no-profile" => o.profile = false,
            "--check-only" => o.check_only = true,
            _ => bail!("unknown argument {a}; see the top of benches/harness/src/main.rs"),
        }
    }
    if o.scenarios.is_empty() {
        o.scenarios = ALL_SCENARIOS.iter().map(|s| s.to_string()).collect();
    }
    if o.proxies.is_empty() {
        o.proxies = ALL_PROXIES.iter().map(|s| s.to_string()).collect();
    }
    for s in &o.scenarios {
        if !ALL_SCENARIOS.contains(&s.as_str()) {
            bail!("unknown scenario {s}; known: {ALL_SCENARIOS:?}");
        }
    }
    for p in &o.proxies {
        if !ALL_PROXIES.contains(&p.as_str()) {
            bail!("unknown proxy {p}; known: {ALL_PROXIES:?}");
        }
    }
    if !o.lb.is_file() || !o.hello.is_file() {
        bail!("--lb and --hello must name the built binaries");
    }
    Ok(o)
}

/// Open files a proxy may want with `idle` connections held: HAProxy counts two per
/// connection (a client and a server side), though idle ones hold only the first.
pub fn fds_for(idle: usize) -> u64 {
    idle as u64 * 2 + 4096
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    // The idle scenario's connections with room for the rest; more when the system allows.
    let limit = procs::raise_fd_limit(fds_for(opts.idle));
    if limit == 0 {
        bail!("could not read this process's open-file limit");
    }
    if opts.scenarios.iter().any(|s| s == "idle_connections") && limit < opts.idle as u64 + 4096 {
        bail!(
            "{} idle connections need at least {} open files and the limit here is {limit}; \
             raise the hard limit (which takes CAP_SYS_RESOURCE) or pass a smaller --idle",
            opts.idle,
            opts.idle + 4096
        );
    }
    let opts = Opts {
        fd_limit: limit,
        ..opts
    };
    std::fs::create_dir_all(&opts.out)?;
    if opts.check_only {
        let seen = scenarios::check_same_work(&opts)?;
        println!("{}", samework::markdown(&seen));
        std::fs::write(
            opts.out.join("same-work.json"),
            serde_json::to_string_pretty(&seen)? + "\n",
        )?;
        return Ok(());
    }
    let run = scenarios::run_all(&opts)?;
    let report = report::build(&opts, &run);
    let (json, md) = report::write(&opts.out, &report)?;
    println!("{}", report::markdown(&report));
    println!("report: {} and {}", json.display(), md.display());
    Ok(())
}
