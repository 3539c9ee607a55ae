//! The Debian package (`cargo xtask deb`, given to the tests as `LB_DEB`): installed on this
//! machine and removed again by the test, as root. Checks what it installs, that its config
//! passes `lb check` and its unit `systemd-analyze verify`, that a conffile edited by hand
//! survives a reinstall, that lintian finds no error, and that purging leaves nothing running
//! and nothing of its files.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::skip;

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes what the test installed, whatever happened: the package, and the user its
/// postinst made if the test made it.
struct Installed {
    made_user: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "lb"]);
        if self.made_user {
            let _ = run("userdel", &["lb"]);
            let _ = run("groupdel", &["lb"]);
        }
    }
}

/// The package's path, when the test can install it: it was built (`LB_DEB`) and this is
/// root. Otherwise the test `name` is skipped.
fn package_as_root(name: &str) -> Option<std::ffi::OsString> {
    let Some(deb) = std::env::var_os("LB_DEB") else {
        skip(
            name,
            "LB_DEB is not set (cargo xtask test builds the package)",
        );
        return None;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(name, "installing a package needs root");
        return None;
    }
    Some(deb)
}

/// The tests here one at a time: each installs the package (on this machine, or in a
/// container whose processes this machine sees) and looks for processes of it.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn the_package_installs_checks_keeps_edited_config_and_purges_clean() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(deb) = package_as_root("package") else {
        return;
    };
    if run("dpkg", &["-s", "lb"]).status.success() {
        skip(
            "package",
            "an lb package is already installed on this machine",
        );
        return;
    }
    let deb = deb.to_string_lossy().into_owned();
    let made_user = !run("getent", &["passwd", "lb"]).status.success();

    // lintian: no error.
    let lint = run(
        "lintian",
        &["--fail-on", "error", "--no-tag-display-limit", &deb],
    );
    assert!(
        lint.status.success(),
        "lintian found errors:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let _installed = Installed { made_user };
    ok("dpkg", &["-i", &deb]);
    for f in [
        "/usr/bin/lb",
        "/etc/lb/lb.toml",
        "/lib/systemd/system/lb.service",
        "/usr/lib/sysctl.d/60-lb.conf",
        "/etc/logrotate.d/lb",
        "/usr/share/lb/grafana/lb.json",
        "/usr/share/lb/prometheus/alerts.yml",
        "/usr/share/doc/lb/operations.md",
        "/usr/share/doc/lb/copyright",
    ] {
        assert!(Path::new(f).exists(), "{f} is installed");
    }
    assert!(ok("dpkg-query", &["-W", "-f=${Conffiles}", "lb"]).contains("/etc/lb/lb.toml"));
    assert!(
        run("getent", &["passwd", "lb"]).status.success(),
        "postinst made the lb user"
    );
    let checked = ok("/usr/bin/lb", &["check", "--config", "/etc/lb/lb.toml"]);
    assert!(checked.contains("ok"), "{checked}");
    ok(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/lb.service"],
    );

    // An operator's edit to the config survives the package going on again.
    let edited = format!(
        "{}\n# edited by the operator\n",
        std::fs::read_to_string("/etc/lb/lb.toml").expect("config")
    );
    std::fs::write("/etc/lb/lb.toml", &edited).expect("edit");
    ok("dpkg", &["-i", "--force-confold", &deb]);
    assert_eq!(
        std::fs::read_to_string("/etc/lb/lb.toml").expect("config"),
        edited
    );

    // Upgrading the package under a running lb (started by hand here: no systemd runs in
    // this sandbox) hands its sockets to the new binary: no request fails.
    upgrade_in_place(&deb);

    // Purged: no file left, nothing of it running.
    ok("dpkg", &["--purge", "lb"]);
    for f in [
        "/usr/bin/lb",
        "/etc/lb/lb.toml",
        "/lib/systemd/system/lb.service",
    ] {
        assert!(!Path::new(f).exists(), "{f} is gone");
    }
    let running = std::fs::read_dir("/proc")
        .expect("proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_link(e.path().join("exe")).ok())
        .any(|exe| exe.to_string_lossy().starts_with("/usr/bin/lb"));
    assert!(!running, "a process of the removed package still runs");
}

/// A package upgrade under a live systemd: the package goes into a container that boots
/// systemd (systemd-nspawn on an overlay of this machine's root, changes kept in memory),
/// its service starts with the unit as shipped (hardening, `Type=notify`, a watchdog), and
/// under load the package goes on again. The service's main PID moves to the new binary,
/// the service stays active and is never restarted, the watchdog takes the new process's
/// pings, `systemctl reload` reaches the new process, and no request fails.
#[test]
fn under_systemd_a_package_upgrade_moves_the_main_pid_and_drops_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(deb) = package_as_root("package under systemd") else {
        return;
    };
    for tool in [
        "/usr/bin/systemd-nspawn",
        "/lib/systemd/systemd",
        "/usr/bin/nsenter",
    ] {
        if !Path::new(tool).exists() {
            skip("package under systemd", &format!("{tool} is missing"));
            return;
        }
    }
    let backend = common::Backend::start(common::echo("app")).expect("backend");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
    };
    let (listen, admin) = (free(), free());
    let config = |header: &str| {
        format!(
            "[server]\nworkers = 2\ndrain_timeout = \"10s\"\n[[listeners]]\naddr = \"{listen}\"\n\
             [admin]\naddr = \"{admin}\"\n[[clusters]]\nname = \"app\"\n\
             endpoints = [{{ addr = \"{}\" }}]\n[[routes]]\ncluster = \"app\"\n\
             response_headers = {{ set = {{ x-config = \"{header}\" }} }}\n",
            backend.addr
        )
    };

    let c = Container::boot(Path::new(&deb));
    c.ok("dpkg -i /root/lb.deb");
    // The test's ports and backend; a watchdog short enough to see it work within the test.
    std::fs::write(c.root.join("etc/lb/lb.toml"), config("first")).expect("config");
    let dropin = c.root.join("etc/systemd/system/lb.service.d");
    std::fs::create_dir_all(&dropin).expect("drop-in dir");
    std::fs::write(dropin.join("test.conf"), "[Service]\nWatchdogSec=2s\n").expect("drop-in");
    c.ok("systemctl daemon-reload && systemctl start lb");
    let old_pid = c.show("MainPID");
    assert_ne!(old_pid, "0", "lb runs: {}", c.journal());
    assert_eq!(header(listen), "first");

    let load = Load::start(listen);
    load.wait_for_more("load before the upgrade", 100);
    let pinged_at = || -> u64 {
        c.show("WatchdogTimestampMonotonic")
            .parse()
            .expect("a monotonic timestamp")
    };
    let before = pinged_at();
    let out = c.ok("dpkg -i --force-confold /root/lb.deb");
    let new_pid = c.show("MainPID");
    assert_ne!(
        new_pid,
        old_pid,
        "the main PID moved:\n{out}\n{}",
        c.journal()
    );
    // The old process drained and left; the new one is the service's and serves.
    common::wait_until("the old lb to exit", || {
        !c.sh(&format!("test -d /proc/{old_pid}")).status.success()
    });
    load.wait_for_more("the new process to serve", 100);
    // The watchdog: pinged after the switch, twice (the old process's last word counts
    // once), and never fired.
    common::wait_until("the new process to pet the watchdog", || {
        pinged_at() > before
    });
    let pinged = pinged_at();
    common::wait_until("the new process to pet the watchdog again", || {
        pinged_at() > pinged
    });
    assert_eq!(c.show("ActiveState"), "active", "{}", c.journal());
    assert_eq!(c.show("NRestarts"), "0", "{}", c.journal());
    assert_eq!(c.show("MainPID"), new_pid, "{}", c.journal());

    // A reload goes to the new process (ExecReload checks, then signals $MAINPID).
    std::fs::write(c.root.join("etc/lb/lb.toml"), config("second")).expect("config");
    c.ok("systemctl reload lb");
    common::wait_until("the reloaded config to answer", || {
        header(listen) == "second"
    });
    assert_eq!(c.show("MainPID"), new_pid);
    load.wait_for_more("load after the reload", 100);
    load.finish("the package upgrade under systemd");

    // Stopped and purged: nothing of it runs.
    c.ok("systemctl stop lb");
    // Drained and exited by itself: not killed (the service would be "failed").
    assert_eq!(c.show("ActiveState"), "inactive", "{}", c.journal());
    let journal = c.journal();
    assert!(
        journal
            .lines()
            .any(|l| l.contains(&format!("lb[{new_pid}]")) && l.ends_with("stopped")),
        "{journal}"
    );
    c.ok("dpkg --purge lb");
    assert!(
        !c.sh("pidof lb").status.success(),
        "no lb runs after the purge"
    );
    assert!(
        std::net::TcpStream::connect(listen).is_err(),
        "nothing listens on lb's port"
    );
}

/// The `x-config` response header of one GET on a new connection (empty without it).
fn header(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines()
        .find_map(|l| l.strip_prefix("x-config: "))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// A container booting systemd on an overlay of this machine's root: an upper layer in a
/// tmpfs of the test's, so nothing it changes reaches this machine. It shares this
/// machine's network (lb in it listens on loopback here). Dropped: powered off (killed if it
/// will not), unmounted, removed.
struct Container {
    dir: PathBuf,
    root: PathBuf,
    nspawn: Option<std::process::Child>,
    leader: i32,
    made_nspawn_dir: bool,
}

impl Container {
    fn boot(deb: &Path) -> Container {
        let dir = common::scratch_dir("nspawn");
        let made_nspawn_dir = !Path::new("/run/systemd/nspawn").exists();
        let layers = dir.join("layers");
        let root = dir.join("root");
        std::fs::create_dir_all(&layers).expect("layers dir");
        std::fs::create_dir_all(&root).expect("root dir");
        let mut c = Container {
            dir: dir.clone(),
            root: root.clone(),
            nspawn: None,
            leader: 0,
            made_nspawn_dir,
        };
        ok(
            "mount",
            &["-t", "tmpfs", "lb-test", &layers.to_string_lossy()],
        );
        for d in ["upper", "work"] {
            std::fs::create_dir(layers.join(d)).expect("layer dir");
        }
        ok(
            "mount",
            &[
                "-t",
                "overlay",
                "lb-test",
                "-o",
                &format!(
                    "lowerdir=/,upperdir={0}/upper,workdir={0}/work",
                    layers.display()
                ),
                &root.to_string_lossy(),
            ],
        );
        std::fs::copy(deb, root.join("root/lb.deb")).expect("the package into the container");
        let name = format!("lb-test-{}", std::process::id());
        let log = std::fs::File::create(dir.join("nspawn.log")).expect("log");
        let child = Command::new("systemd-nspawn")
            .args([
                "--quiet",
                "--register=no",
                "--keep-unit",
                "--machine",
                &name,
            ])
            .arg("--directory")
            .arg(&root)
            // Booted to basic.target: none of this machine's own services start in it.
            .args(["--boot", "--", "systemd.unit=basic.target"])
            // systemd in the container on cgroup v2 (where this machine mounts it beside v1),
            // as on today's hosts: it can follow a main process that is not its child (the
            // upgraded lb) only through v2's events.
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn");
        let nspawn_pid = child.id() as i32;
        c.nspawn = Some(child);
        // Its init: the child of systemd-nspawn that runs systemd.
        common::wait_until("the container's systemd to start", || {
            c.leader = children(nspawn_pid)
                .into_iter()
                .find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|comm| comm.trim() == "systemd")
                })
                .unwrap_or(0);
            c.leader != 0
        });
        common::wait_until("the container to boot", || {
            let state = c.sh("systemctl is-system-running");
            let state = String::from_utf8_lossy(&state.stdout);
            matches!(state.trim(), "running" | "degraded")
        });
        c
    }

    /// Runs `script` by sh inside the container.
    fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "sh", "-c", script])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("nsenter")
    }

    /// [`Container::sh`] that must succeed; its output.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "in the container: {script}: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A property of lb.service.
    fn show(&self, property: &str) -> String {
        self.ok(&format!("systemctl show --property {property} --value lb"))
            .trim()
            .to_string()
    }

    /// The service's journal, for failure messages.
    fn journal(&self) -> String {
        let out = self.sh("journalctl --unit lb --no-pager --lines 40");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            if self.leader != 0 {
                let _ = self.sh("systemctl poweroff");
            }
            let until = Instant::now() + common::BOUND;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                if self.leader != 0 {
                    // SAFETY: kill with the PID of the container's init, which this test
                    // started: everything in the container ends with it.
                    unsafe {
                        libc::kill(self.leader, libc::SIGKILL);
                    }
                }
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // Processes of a killed container may still hold the mounts a moment: detached
        // then, gone once they exit.
        for m in [self.root.clone(), self.dir.join("layers")] {
            let m = m.to_string_lossy().into_owned();
            if !run("umount", &[&m]).status.success() {
                let _ = run("umount", &["--lazy", &m]);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.made_nspawn_dir {
            let _ = std::fs::remove_dir_all("/run/systemd/nspawn");
        }
    }
}

/// The PIDs whose parent is `pid`.
fn children(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Runs lb from the package with a config of the test's, puts load on it, installs the
/// package again (an upgrade: postinst runs `lb upgrade`), and checks that the old process
/// handed over and exited, the new one serves, and no request failed. Stops the new process
/// by its PID.
fn upgrade_in_place(deb: &str) {
    let backend = common::Backend::start(common::echo("app")).expect("backend");
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
    };
    let (listen, admin) = (free(), free());
    let config = format!(
        "[server]\nworkers = 2\ndrain_timeout = \"10s\"\n[[listeners]]\naddr = \"{listen}\"\n\
         [admin]\naddr = \"{admin}\"\n[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[routes]]\ncluster = \"app\"\n",
        backend.addr
    );
    std::fs::write("/etc/lb/lb.toml", &config).expect("config");
    let dir = common::scratch_dir("package-upgrade");
    let ready = dir.join("ready.json");
    /// The lb this test starts: stopped and reaped however the test ends.
    struct Started(std::process::Child);
    impl Drop for Started {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut old = Started(
        Command::new("/usr/bin/lb")
            .args(["run", "--config", "/etc/lb/lb.toml", "--ready-file"])
            .arg(&ready)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("lb.log")).expect("log"))
            .spawn()
            .expect("start lb"),
    );
    common::wait_until("the packaged lb to be ready", || ready.exists());

    let load = Load::start(listen);
    load.wait_for_more("load before the upgrade", 100);
    let out = ok("dpkg", &["-i", "--force-confold", deb]);
    let old_pid = old.0.id();
    // The old process drains and exits: reaped here, as this test started it. If the
    // postinst did not upgrade it, it is stopped here and the test fails.
    let mut exited = None;
    let until = Instant::now() + Duration::from_secs(30);
    while exited.is_none() {
        exited = old.0.try_wait().expect("old lb");
        if exited.is_none() && Instant::now() > until {
            panic!("the package's postinst did not upgrade the running lb:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = exited.expect("exited");
    assert!(
        status.success(),
        "the old lb exits cleanly after the upgrade: {status}\n{out}"
    );
    // From here the new lb (not this test's child) is stopped however the test ends.
    struct NewLb(std::net::SocketAddr);
    impl Drop for NewLb {
        fn drop(&mut self) {
            if let Ok(mut c) = std::net::TcpStream::connect(self.0) {
                use std::io::{Read, Write};
                let _ = write!(
                    c,
                    "GET /stats HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.0
                );
                let mut text = String::new();
                let _ = c.read_to_string(&mut text);
                let pid = text
                    .split_once("\"pid\":")
                    .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|p| p.parse::<i32>().ok());
                if let Some(pid) = pid {
                    stop_pid(pid);
                }
            }
        }
    }
    let _new = NewLb(admin);
    load.wait_for_more("the new process to serve", 100);
    load.finish("the package upgrade");
    // The new process: its PID from the admin API, stopped by it.
    let mut c = common::Client::connect(admin);
    c.send(format!("GET /stats HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes());
    let stats = c.response().json();
    let new_pid = stats["pid"].as_i64().expect("pid") as i32;
    assert_ne!(new_pid as u32, old_pid, "a new process serves: {out}");
    stop_pid(new_pid);
    let _ = std::fs::remove_dir_all(&dir);
}

/// GETs on new connections from two threads until finished (at most two minutes): counts
/// the 200s and keeps every other outcome as a failure.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let threads = (0..2)
            .map(|_| {
                let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
                std::thread::spawn(move || {
                    let until = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                        // A refused or reset connection counts as failed, as a wrong answer
                        // does.
                        match one_get(addr) {
                            Ok(200) => {
                                served.fetch_add(1, Ordering::SeqCst);
                            }
                            other => failures
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(format!("{other:?}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            served,
            failures,
            threads,
        }
    }

    /// Waits until `n` more requests than now were served.
    fn wait_for_more(&self, what: &str, n: u64) {
        let from = self.served.load(Ordering::SeqCst);
        common::wait_until(what, || self.served.load(Ordering::SeqCst) > from + n);
    }

    /// Stops the load and asserts that no request failed across `what`.
    fn finish(mut self, what: &str) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            assert!(t.join().is_ok(), "a load thread failed");
        }
        let failed = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            failed.is_empty(),
            "{} of {} requests failed across {what}: {:?}",
            failed.len(),
            self.served.load(Ordering::SeqCst) + failed.len() as u64,
            &failed[..failed.len().min(5)]
        );
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One GET on a new connection: the status, or why there was none.
fn one_get(addr: std::net::SocketAddr) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut text = Vec::new();
    s.read_to_end(&mut text).map_err(|e| format!("read: {e}"))?;
    let head = String::from_utf8_lossy(&text);
    head.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {:?}", &head[..head.len().min(80)]))
}

/// Stops the lb with this PID (one the test's upgrade started) and waits until it is gone.
fn stop_pid(pid: i32) {
    // SAFETY: kill with the PID of an lb this test's package upgrade started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    common::wait_until("the new lb to stop", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    });
}
