//! Running lb as an appliance: what ships in `conf/` for the host does what it says.

mod common;

use std::process::Command;

use common::*;

/// Queues 20 connections on a SO_REUSEPORT group of two listeners, closes one, and prints
/// how many the other accepts (each accept waits at most 5 s).
const MIGRATE: &str = r#"
import socket
def listener(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s
a = listener(0)
port = a.getsockname()[1]
b = listener(port)
clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
a.close()
b.settimeout(5)
accepted = 0
try:
    while accepted < 20:
        b.accept()
        accepted += 1
except socket.timeout:
    pass
print(accepted)
"#;

/// In a network namespace of its own (so the host's settings are untouched): the count of
/// connections the surviving listener gets, with `sysctl_file` applied first if given.
fn survivors(sysctl_file: Option<&str>) -> u32 {
    let apply = sysctl_file
        .map(|f| format!("sysctl -q -p {f} && "))
        .unwrap_or_default();
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c"])
        .arg(format!("ip link set lo up && {apply}python3 -c \"$0\""))
        .arg(MIGRATE)
        .output()
        .expect("unshare");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().unwrap_or_else(|_| {
        panic!(
            "the script said: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The sysctl drop-in (`conf/sysctl/60-lb.conf`) makes a closing listener's queued
/// connections move to the rest of its SO_REUSEPORT group (another process's listener, as
/// when an old lb stops after a new one started). Without it, those queued on the closed
/// listener are lost.
#[test]
fn the_sysctl_drop_in_moves_queued_connections_to_the_survivors() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["unshare", "ip", "sysctl", "python3"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !root || !tools {
        skip(
            "appliance",
            "needs root and unshare, ip, sysctl and python3 for a network namespace",
        );
        return;
    }
    let drop_in = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/sysctl/60-lb.conf");
    assert_eq!(survivors(Some(drop_in)), 20);
    // The same without the drop-in loses some (each connection had a 1 in 2 chance of
    // queueing on the closed listener).
    assert!(survivors(None) < 20);
}

/// The unit file (`conf/systemd/lb.service`) passes `systemd-analyze verify` with the
/// binary it names (the one built here, put in its place), and its exposure score under
/// `systemd-analyze security` stays what `docs/architecture.md` records or better.
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        skip("appliance", "systemd-analyze is not installed");
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../conf/systemd/lb.service"
    ))
    .expect("the unit");
    assert!(unit.contains("ExecStartPre=/usr/bin/lb check --config /etc/lb/lb.toml"));
    assert!(unit.contains("Type=notify"));
    let dir = scratch_dir("unit");
    let path = dir.join("lb.service");
    std::fs::write(&path, unit.replace("/usr/bin/lb", lb_bin())).expect("write the unit");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&security.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for lb.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {text}"));
    assert!(score <= 1.9, "exposure {score}:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs lb as `nobody` in a network namespace of its own, with `caps` as its only (ambient)
/// capabilities, on `port` of 127.0.0.1 with XDP steering on `lo`; a request goes to it
/// once it is ready. (lb's answer's status, whether XDP was on `lo` while it ran, its log.)
fn run_as_nobody(caps: &str, port: u16) -> (String, bool, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir("caps");
    // lb, as nobody, writes its ready file here.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let config = dir.join("lb.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nworkers = 1\n\n[[listeners]]\naddr = \"127.0.0.1:{port}\"\n\n\
             [steering]\nmode = \"xdp\"\npolicy = \"least_loaded\"\ninterfaces = [\"lo\"]\nxdp_mode = \"generic\"\n\n\
             [[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"127.0.0.1:9\" }}]\n\
             [[routes]]\ncluster = \"app\"\n"
        ),
    )
    .expect("config");
    let ready = dir.join("ready.json");
    let log = dir.join("lb.log");
    // Everything inside the namespace: lb in the background, a bounded wait for its ready
    // file, one request, XDP's state on lo, then lb stopped by its PID.
    let script = format!(
        "ip link set lo up || exit 1\n\
         setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all{caps} {caps_ambient} \
         {lb} run --config {config} --ready-file {ready} > {log} 2>&1 &\n\
         pid=$!\n\
         for i in $(seq 1 400); do [ -f {ready} ] && break; sleep 0.05; done\n\
         curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 5 http://127.0.0.1:{port}/\n\
         ip link show lo | head -1\n\
         kill $pid; wait $pid\n",
        caps = if caps.is_empty() {
            String::new()
        } else {
            format!(",{caps}")
        },
        caps_ambient = if caps.is_empty() {
            String::new()
        } else {
            format!("--ambient-caps={caps}")
        },
        lb = lb_bin(),
        config = config.display(),
        ready = ready.display(),
        log = log.display(),
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .output()
        .expect("unshare");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let status = lines.next().unwrap_or("").trim().to_string();
    let xdp = lines.next().is_some_and(|l| l.contains("xdpgeneric"));
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    (status, xdp, log)
}

/// Without root but with the unit's four capabilities, lb binds port 80, loads its eBPF
/// programs, attaches XDP and steers; with none, it still serves (on a high port), on plain
/// SO_REUSEPORT, and says why.
#[test]
fn runs_without_root_on_the_units_capabilities() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["unshare", "setpriv", "ip", "curl"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !root || !tools || lb::steering::XDP_OBJECT.is_empty() {
        skip(
            "appliance",
            "needs root (to drop it), unshare, setpriv, ip, curl and lb's eBPF object",
        );
        return;
    }
    let (status, xdp, log) = run_as_nobody("+net_bind_service,+net_admin,+bpf,+perfmon", 80);
    // 502: lb answered (its backend is not there).
    assert_eq!(status, "502", "{log}");
    assert!(xdp, "XDP not attached to lo:\n{log}");
    assert!(log.contains("eBPF steering on"), "{log}");

    let (status, xdp, log) = run_as_nobody("", 8080);
    assert_eq!(status, "502", "{log}");
    assert!(!xdp, "{log}");
    assert!(log.contains("eBPF steering unavailable"), "{log}");
}
