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
