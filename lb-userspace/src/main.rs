//! The `lb` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lb::config::Config;
use lb::server::{self, ConfigSource, RunOptions};

/// mimalloc's per-thread free lists suit thread-per-core workers: a stream's allocations are
/// made and freed on the same thread, without glibc's arena locking.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// lb: an eBPF/io_uring-accelerated HTTP load balancer.
#[derive(Parser)]
#[command(name = "lb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer with a config file. SIGHUP reloads it, SIGTERM drains and exits.
    Run {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
        /// Write the bound addresses as JSON to this file once ready (for scripts and tests).
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Upgrade a running lb to the binary now at its path, with no dropped connection: it
    /// starts the new binary, hands over its sockets and release state, and drains once the
    /// new one serves. Asks through the admin API of the config's `[admin]`; exits non-zero
    /// with the reason if the new binary does not start (the running one serves on).
    Upgrade {
        /// The running lb's TOML config file (for its admin address and token).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Stop running lb processes as the systemd unit's ExecStop does: SIGTERM to each (it
    /// drains), then wait until each has exited. systemd waits by itself for a main process
    /// that is its child, but not for one a binary upgrade started. No PID (systemd knows
    /// the service ended): nothing to do.
    Stop {
        /// The PIDs of lb processes (`$MAINPID` in the unit).
        pids: Vec<i32>,
        /// How long to wait for them to exit, in seconds, before giving up (exit 1).
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Validate a config file and print every error; exits non-zero if there is any.
    Check {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show what a reload from OLD to NEW would change: routes, clusters, endpoints and
    /// consumers added, removed or changed, other sections changed, and what needs a
    /// restart. Exits 0 if a reload applies it all, 1 if either config is invalid, 3 if a
    /// change needs a restart.
    Diff {
        /// The config in service (or a copy of it).
        old: PathBuf,
        /// The config to reload into.
        new: PathBuf,
        /// Print JSON, as the admin API's reload answer carries it.
        #[arg(long)]
        json: bool,
    },
    /// OpenAPI documents (3.0 and 3.1, JSON or YAML).
    Openapi {
        #[command(subcommand)]
        command: OpenapiCommand,
    },
    /// Show what lb would do with one request: which route matches and why the others do
    /// not, the rewritten request, and the cluster. Runs the same code as the workers.
    Explain {
        /// The TOML config file.
        #[arg(short, long)]
        config: PathBuf,
        /// The method, e.g. GET.
        method: String,
        /// The URL, e.g. http://api.example.com/api/orders/7
        url: String,
        /// A request header, `Name: value`; repeat for more.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The client address the request comes from.
        #[arg(long, default_value = "127.0.0.1:40000")]
        client: std::net::SocketAddr,
        /// Explain it as an HTTP/2 request (the URL's host is `:authority`).
        #[arg(long)]
        http2: bool,
    },
    /// Validate a config document and write it to etcd as the fleet's config
    /// (`PREFIX/config`), in a transaction guarded by the revision read first: if someone
    /// pushed meanwhile, nothing is written. Exits 0 when written (or already there), 1 if
    /// the document is invalid, 2 if etcd refused or could not be reached.
    Push {
        /// The fleet's config document (TOML; its `include`s are merged into it).
        file: PathBuf,
        /// A host's local file: its `[source.etcd]` says where to push (with its TLS and
        /// credentials), and the document is validated merged into it.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// etcd endpoints, comma-separated, instead of `--config`.
        #[arg(long, value_delimiter = ',')]
        etcd: Vec<String>,
        /// The key prefix, with `--etcd` (`/lb/prod`).
        #[arg(long)]
        prefix: Option<String>,
        /// Write only if the document in etcd is at this revision (0: there is none yet):
        /// the revision the change was based on, so that a push built on an older document
        /// fails rather than overwrite a newer one.
        #[arg(long)]
        expect_revision: Option<i64>,
        /// Check the document (as it would be pushed) and write nothing; no etcd needed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the embedded demo config with built-in echo backends.
    Demo {
        /// Do not start the built-in backends (bring your own on the demo's addresses).
        #[arg(long)]
        no_backends: bool,
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum OpenapiCommand {
    /// Print route TOML for every path of SPEC: path templates become exact paths,
    /// patterns (`/users/:id`) or regexes, methods become matchers, and each route validates
    /// its requests against SPEC. Paste it into the config (or a `conf.d` file) and `lb
    /// check` it.
    Import {
        spec: PathBuf,
        /// The cluster the routes forward to.
        #[arg(long)]
        cluster: String,
        /// A path prefix put before every path (`/api/v2`).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// The changes from OLD to NEW, breaking ones first (removed endpoints, methods and
    /// response fields, changed types, optional fields made required, removed enum values,
    /// stricter validation); additions are listed as compatible. Exits 1 on a breaking
    /// change, 2 if a document cannot be read, 0 otherwise: a CI pipeline can gate on it.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// Print JSON: `{"breaking": [...], "compatible": [...]}`.
        #[arg(long)]
        json: bool,
    },
}

fn openapi(command: OpenapiCommand) -> ExitCode {
    match command {
        OpenapiCommand::Import {
            spec,
            cluster,
            prefix,
        } => match lb::openapi::load(&spec) {
            Ok(doc) => {
                // The routes may land in any file: they name the spec by its absolute path.
                let path = std::fs::canonicalize(&spec).unwrap_or(spec);
                let path = path.to_string_lossy();
                print!("{}", lb::openapi::import(&doc, &path, &cluster, &prefix));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("lb openapi import: {e}");
                ExitCode::from(2)
            }
        },
        OpenapiCommand::Diff { old, new, json } => {
            let (a, b) = match (lb::openapi::load(&old), lb::openapi::load(&new)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("lb openapi diff: {e}");
                    return ExitCode::from(2);
                }
            };
            let changes = lb::openapi::diff(&a, &b);
            let breaking: Vec<&str> = changes
                .iter()
                .filter(|c| c.breaking)
                .map(|c| c.text.as_str())
                .collect();
            let compatible: Vec<&str> = changes
                .iter()
                .filter(|c| !c.breaking)
                .map(|c| c.text.as_str())
                .collect();
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "breaking": breaking, "compatible": compatible })
                );
            } else {
                for c in &breaking {
                    println!("BREAKING   {c}");
                }
                for c in &compatible {
                    println!("compatible {c}");
                }
                if changes.is_empty() {
                    println!("no changes");
                }
            }
            if breaking.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn main() -> ExitCode {
    // No transparent huge pages for lb's heap. mimalloc reserves its arenas in large aligned
    // blocks, which the kernel backs with 2 MiB pages where THP is "always": that tripled
    // lb's resident memory (33 MB instead of 11 at rest, 104 MB instead of 31 under HTTP/2)
    // for no measurable speed. The flag covers mappings made before this call too.
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and changes only this
    // process's memory policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    lb::worker::return_freed_memory_soon();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Diff { old, new, json } => return diff(&old, &new, json),
        Command::Openapi { command } => return openapi(command),
        Command::Upgrade { config } => return upgrade(&config),
        Command::Stop { pids, timeout_secs } => {
            return stop(&pids, std::time::Duration::from_secs(timeout_secs))
        }
        Command::Explain {
            config,
            method,
            url,
            headers,
            client,
            http2,
        } => {
            let req = lb::proxy::explain::ExplainRequest {
                method,
                url,
                headers,
                client,
                http2,
            };
            return explain(&config, &req);
        }
        Command::Push {
            file,
            config,
            etcd,
            prefix,
            expect_revision,
            dry_run,
        } => {
            return push(
                &file,
                config.as_deref(),
                etcd,
                prefix,
                expect_revision,
                dry_run,
            )
        }
        Command::Run { config, ready_file } => match host_source(&config, true) {
            Ok(source) => server::run(source, RunOptions { ready_file }),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        },
        Command::Demo {
            no_backends,
            ready_file,
        } => lb::demo::run(!no_backends, RunOptions { ready_file }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where a host's config comes from: the file, or the file with the fleet's document from
/// etcd (the persisted one if etcd cannot be reached). `persist` keeps what was read from
/// etcd in the state directory (`lb run`), which `lb check` and the like do not touch.
fn host_source(path: &std::path::Path, persist: bool) -> Result<ConfigSource, String> {
    match lb::config::source::read(path).map_err(|e| e.to_string())? {
        None => Ok(ConfigSource::File(path.to_path_buf())),
        Some(settings) => lb::fleet::etcd::open(path, settings, persist).map(ConfigSource::Etcd),
    }
}

/// The config of a host, as `lb run` would read it now.
fn load_host(path: &std::path::Path) -> Result<(Config, String), String> {
    host_source(path, false)?.load().map_err(|e| e.to_string())
}

fn push(
    file: &std::path::Path,
    local: Option<&std::path::Path>,
    endpoints: Vec<String>,
    prefix: Option<String>,
    expect: Option<i64>,
    dry_run: bool,
) -> ExitCode {
    let fail = |code: u8, e: &dyn std::fmt::Display| {
        eprintln!("lb push: {e}");
        ExitCode::from(code)
    };
    let settings = match (local, endpoints.is_empty(), prefix) {
        (Some(l), true, None) => match lb::config::source::read(l) {
            Ok(Some(s)) => s,
            Ok(None) => {
                return fail(
                    2,
                    &format!("{} has no [source.etcd] to push to", l.display()),
                )
            }
            Err(e) => return fail(1, &e),
        },
        (None, false, Some(prefix)) => {
            let raw = lb::config::source::RawSource {
                etcd: Some(lb::config::source::RawEtcd {
                    endpoints,
                    prefix,
                    tls: None,
                    auth: None,
                    keepalive: None,
                    startup_timeout: None,
                    node: None,
                    lease: None,
                }),
                state_dir: None,
            };
            match lb::config::source::validate(&raw, std::path::Path::new(".")) {
                Ok(Some(s)) => s,
                Ok(None) => return fail(2, &"no etcd settings"),
                Err(errors) => {
                    let lines: Vec<String> = errors
                        .iter()
                        .map(|e| format!("{}: {}", e.path.replace("source.etcd.", "--"), e.message))
                        .collect();
                    return fail(2, &lines.join("\n"));
                }
            }
        }
        _ => return fail(
            2,
            &"say where to push: --config HOST.toml, or --etcd URL[,URL...] with --prefix /PREFIX",
        ),
    };
    // What is validated is what is written: the document with its includes merged.
    let text = match lb::config::include::flatten(file) {
        Ok(t) => t,
        Err(e) => return fail(1, &e),
    };
    let checked = match local {
        Some(l) => {
            let doc = lb::config::include::Document {
                name: format!("{} (for etcd {})", file.display(), settings.config_key()),
                text: text.clone(),
            };
            Config::load_with(l, Some(&doc)).map(|(c, _)| c)
        }
        // Listeners are usually each host's: without a host's file, the document is checked
        // as if merged into one that has just a listener.
        None if !text
            .parse::<toml::Table>()
            .is_ok_and(|t| t.contains_key("listeners")) =>
        {
            eprintln!(
                "lb push: checked without a host's local file (--config HOST.toml checks it with one)"
            );
            let doc = lb::config::include::Document {
                name: file.display().to_string(),
                text: text.clone(),
            };
            Config::parse_with(
                "[[listeners]]\nname = \"host\"\naddr = \"127.0.0.1:0\"\n",
                std::path::Path::new("(a host's local file)"),
                &doc,
            )
        }
        None => Config::parse(&text, file),
    };
    match checked {
        Ok(config) => {
            for w in config.warnings() {
                eprintln!("{}: warning: {w}", file.display());
            }
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s); nothing pushed", errors.errors.len());
            return ExitCode::FAILURE;
        }
    }
    if dry_run {
        println!(
            "{}: ok; would push to {} (dry run: nothing written)",
            file.display(),
            settings.config_key()
        );
        return ExitCode::SUCCESS;
    }
    match lb::fleet::etcd::push(&settings, &text, expect) {
        Ok(lb::fleet::etcd::Pushed::Written(rev)) => {
            println!("{}: pushed as revision {rev}", settings.config_key());
            ExitCode::SUCCESS
        }
        Ok(lb::fleet::etcd::Pushed::Unchanged(rev)) => {
            println!(
                "{}: already this document (revision {rev}); nothing written",
                settings.config_key()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(2, &e),
    }
}

fn stop(pids: &[i32], timeout: std::time::Duration) -> ExitCode {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // Run by systemd (ExecStop), only a process of this unit: one in this cgroup.
    let own_cgroup = std::env::var_os("INVOCATION_ID")
        .and_then(|_| std::fs::read_to_string("/proc/self/cgroup").ok());
    let exited = |fd: &OwnedFd, wait_ms: i32| {
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd that lives on this stack frame.
        unsafe { libc::poll(&mut p, 1, wait_ms) > 0 }
    };
    let mut waiting = Vec::new();
    for &pid in pids {
        // 0 or below would name a process group.
        if pid <= 1 {
            eprintln!("lb stop: {pid} is not the PID of an lb process");
            return ExitCode::from(2);
        }
        // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ESRCH) {
                continue;
            }
            eprintln!("lb stop: {pid}: {e}");
            return ExitCode::FAILURE;
        }
        // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // The descriptor holds the process: while it has not exited, its PID is not
        // reused, so what /proc says below is about this process.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok();
        if exited(&pidfd, 0) {
            continue;
        }
        if comm.trim() != "lb" {
            eprintln!("lb stop: process {pid} is not lb");
            return ExitCode::from(2);
        }
        if own_cgroup.is_some() && cgroup != own_cgroup {
            eprintln!("lb stop: process {pid} is not of this service (another cgroup)");
            return ExitCode::from(2);
        }
        // SAFETY: pidfd_send_signal with a pidfd this process owns, no siginfo, no flags.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGTERM,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if sent != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                eprintln!("lb stop: signalling {pid}: {e}");
                return ExitCode::FAILURE;
            }
        }
        waiting.push((pid, pidfd));
    }
    let until = std::time::Instant::now() + timeout;
    for (pid, pidfd) in waiting {
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if exited(&pidfd, left.as_millis().min(1000) as i32) {
                break;
            }
            if left.is_zero() {
                eprintln!("lb stop: {pid} still running after {timeout:?}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn upgrade(path: &std::path::Path) -> ExitCode {
    use std::io::{Read, Write};
    let admin = match load_host(path) {
        Ok((config, _)) => config.admin,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let Some(admin) = admin else {
        eprintln!(
            "lb upgrade: {} has no [admin] section to reach the running lb through",
            path.display()
        );
        return ExitCode::FAILURE;
    };
    let auth = admin
        .token
        .as_ref()
        .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST /upgrade HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        admin.addr
    );
    let answer =
        std::net::TcpStream::connect_timeout(&admin.addr, std::time::Duration::from_secs(5))
            .and_then(|mut s| {
                s.set_read_timeout(Some(
                    lb::control::upgrade::READY_TIMEOUT + std::time::Duration::from_secs(10),
                ))?;
                s.write_all(request.as_bytes())?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text)
            });
    match answer {
        Ok(text) => {
            let ok = text.starts_with("HTTP/1.1 200");
            let body = text
                .split_once("\r\n\r\n")
                .map_or(text.as_str(), |(_, b)| b);
            if ok {
                print!("{body}");
                ExitCode::SUCCESS
            } else {
                eprint!("lb upgrade: {body}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!(
                "lb upgrade: cannot reach the admin API at {}: {e}",
                admin.addr
            );
            ExitCode::FAILURE
        }
    }
}

fn diff(old: &std::path::Path, new: &std::path::Path, json: bool) -> ExitCode {
    let load = |p: &std::path::Path| {
        Config::load(p).map(|(c, _)| c).map_err(|errors| {
            eprintln!("{errors}");
            eprintln!("{} error(s)", errors.errors.len());
        })
    };
    let (Ok(before), Ok(after)) = (load(old), load(new)) else {
        return ExitCode::FAILURE;
    };
    let buf = lb::control::read_buffer_size(&before);
    let changes = lb::config::diff::Changes::between(&before, &after, buf);
    if json {
        println!("{}", changes.json());
    } else {
        print!("{changes}");
    }
    if changes.restart.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let loaded = match host_source(path, false) {
        Ok(source) => source.load(),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match loaded {
        Ok((config, _)) => {
            for w in config.warnings() {
                eprintln!("{}: warning: {w}", path.display());
            }
            println!(
                "{}: ok ({} listeners, {} clusters, {} routes)",
                path.display(),
                config.listeners.len(),
                config.clusters.len(),
                config.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s)", errors.errors.len());
            ExitCode::FAILURE
        }
    }
}

fn explain(path: &std::path::Path, req: &lb::proxy::explain::ExplainRequest) -> ExitCode {
    let loaded = load_host(path).and_then(|(config, text)| {
        lb::snapshot::Snapshot::build(config, &text, &lb::snapshot::StateRegistry::default())
            .map_err(|errors| format!("{errors:?}"))
    });
    let snap = match loaded {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match lb::proxy::explain::explain(snap, req) {
        Ok(x) => {
            print!("{}", x.text);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lb explain: {e}");
            ExitCode::FAILURE
        }
    }
}
