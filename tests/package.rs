//! The Debian package (`cargo xtask deb`, given to the tests as `LB_DEB`): installed on this
//! machine and removed again by the test, as root. Checks what it installs, that its config
//! passes `lb check` and its unit `systemd-analyze verify`, that a conffile edited by hand
//! survives a reinstall, that lintian finds no error, and that purging leaves nothing running
//! and nothing of its files.

mod common;

use std::path::Path;
use std::process::{Command, Output};

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

#[test]
fn the_package_installs_checks_keeps_edited_config_and_purges_clean() {
    let Some(deb) = std::env::var_os("LB_DEB") else {
        skip(
            "package",
            "LB_DEB is not set (cargo xtask test builds the package)",
        );
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("package", "installing a package needs root");
        return;
    }
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

/// Runs lb from the package with a config of the test's, puts load on it, installs the
/// package again (an upgrade: postinst runs `lb upgrade`), and checks that the old process
/// handed over and exited, the new one serves, and no request failed. Stops the new process
/// by its PID.
fn upgrade_in_place(deb: &str) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

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

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
            std::thread::spawn(move || {
                let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
                while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                    // A refused or reset connection counts as failed, as a wrong answer does.
                    let result = one_get(listen);
                    match result {
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
    common::wait_until("load before the upgrade", || {
        served.load(Ordering::SeqCst) > 100
    });
    let out = ok("dpkg", &["-i", "--force-confold", deb]);
    let old_pid = old.0.id();
    // The old process drains and exits: reaped here, as this test started it. If the
    // postinst did not upgrade it, it is stopped here and the test fails.
    let mut exited = None;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while exited.is_none() {
        exited = old.0.try_wait().expect("old lb");
        if exited.is_none() && std::time::Instant::now() > until {
            stop.store(true, Ordering::SeqCst);
            panic!("the package's postinst did not upgrade the running lb:\n{out}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let status = exited.expect("exited");
    assert!(
        status.success(),
        "the old lb exits cleanly after the upgrade: {status}\n{out}"
    );
    let after = served.load(Ordering::SeqCst);
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
    common::wait_until("the new process to serve", || {
        served.load(Ordering::SeqCst) > after + 100
    });
    stop.store(true, Ordering::SeqCst);
    for t in load {
        assert!(t.join().is_ok(), "a load thread failed");
    }
    // The new process: its PID from the admin API, stopped by it.
    let mut c = common::Client::connect(admin);
    c.send(format!("GET /stats HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes());
    let stats = c.response().json();
    let new_pid = stats["pid"].as_i64().expect("pid") as i32;
    assert_ne!(new_pid as u32, old_pid, "a new process serves: {out}");
    stop_pid(new_pid);
    let failed = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the package upgrade: {:?}",
        failed.len(),
        served.load(Ordering::SeqCst) + failed.len() as u64,
        &failed[..failed.len().min(5)]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// One GET on a new connection: the status, or why there was none.
fn one_get(addr: std::net::SocketAddr) -> Result<u16, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
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
