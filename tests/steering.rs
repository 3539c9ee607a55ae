//! The kernel half end to end: SK_REUSEPORT policies shown by per-worker accounting, and XDP
//! deny lists against a client in a network namespace. Needs root and the eBPF object; skips
//! with a message where either is missing. Every namespace and link is removed afterwards.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::*;

fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("steering", "steering tests need root");
        return false;
    }
    if lb::steering::XDP_OBJECT.is_empty() {
        skip("steering", "lb was built without its eBPF object");
        return false;
    }
    true
}

fn steering_config(backend: SocketAddr, steering: &str, listen: &str) -> String {
    config(&format!(
        "[steering]\n{steering}\n\n[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{backend}\" }}]\n[[routes]]\ncluster = \"app\"\n"
    ))
    .replace("addr = \"127.0.0.1:0\"\n\n[admin]", &format!("addr = \"{listen}\"\n\n[admin]"))
    .replace("workers = 2\n", "workers = 2\npin_workers = true\n")
}

fn accepted(lb: &Lb) -> Vec<u64> {
    let (_, v) = lb.admin("GET", "/steering");
    assert_eq!(v["status"], "on", "{v}");
    v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["accepted"].as_u64().unwrap())
        .collect()
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid, CPU_SET writes inside it, 0 means this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Opens `n` connections from a thread pinned to `cpu`, each completing one request, and
/// returns them open.
fn connect_from(cpu: usize, addr: SocketAddr, n: usize) -> Vec<Client> {
    std::thread::spawn(move || {
        pin_to(cpu);
        (0..n)
            .map(|_| {
                let mut c = Client::connect(addr);
                c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
                assert_eq!(c.response().status, 200);
                c
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap()
}

#[test]
fn cpu_policy_sends_connections_to_the_worker_of_the_cpu() {
    if !privileged() || !two_cpus("cpu_policy_sends_connections_to_the_worker_of_the_cpu") {
        return;
    }
    let backend = Backend::start(echo("b")).unwrap();
    let lb = Lb::start(&steering_config(
        backend.addr,
        "mode = \"reuseport\"\npolicy = \"cpu\"",
        "127.0.0.1:0",
    ));
    let before = accepted(&lb);
    let _held0 = connect_from(0, lb.addr, 20);
    let mid = accepted(&lb);
    let _held1 = connect_from(1, lb.addr, 20);
    let after = accepted(&lb);
    println!(
        "cpu policy: from CPU 0 {:?}, then from CPU 1 {:?}",
        [mid[0] - before[0], mid[1] - before[1]],
        [after[0] - mid[0], after[1] - mid[1]]
    );
    assert_eq!(
        (mid[0] - before[0], mid[1] - before[1]),
        (20, 0),
        "connections from CPU 0 land on worker 0"
    );
    assert_eq!(
        (after[0] - mid[0], after[1] - mid[1]),
        (0, 20),
        "connections from CPU 1 land on worker 1"
    );
}

/// Opens 400 long-lived connections in 8 bursts of 50 and returns the per-worker split.
fn bursts(lb: &Lb) -> (Vec<u64>, Vec<Client>) {
    let before = accepted(lb);
    let mut held = Vec::new();
    for _ in 0..8 {
        // A burst: 50 connects back to back, then one request on each.
        let mut burst: Vec<Client> = (0..50).map(|_| Client::connect(lb.addr)).collect();
        for c in &mut burst {
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        }
        for c in &mut burst {
            assert_eq!(c.response().status, 200);
        }
        held.extend(burst);
    }
    let after = accepted(lb);
    (
        after.iter().zip(&before).map(|(a, b)| a - b).collect(),
        held,
    )
}

#[test]
fn least_loaded_spreads_long_lived_connections_evenly() {
    if !privileged() {
        return;
    }
    let backend = Backend::start(echo("b")).unwrap();
    let lb = Lb::start(&steering_config(
        backend.addr,
        "mode = \"reuseport\"\npolicy = \"least_loaded\"",
        "127.0.0.1:0",
    ));
    let (spread, held) = bursts(&lb);
    // For comparison, the kernel's own SO_REUSEPORT hash.
    let plain = Lb::start(&steering_config(
        backend.addr,
        "mode = \"off\"",
        "127.0.0.1:0",
    ));
    let before: Vec<u64> = plain.admin("GET", "/steering").1["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["accepted"].as_u64().unwrap())
        .collect();
    let mut kernel_held = Vec::new();
    for _ in 0..8 {
        let mut burst: Vec<Client> = (0..50).map(|_| Client::connect(plain.addr)).collect();
        for c in &mut burst {
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
            assert_eq!(c.response().status, 200);
        }
        kernel_held.extend(burst);
    }
    let after: Vec<u64> = plain.admin("GET", "/steering").1["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["accepted"].as_u64().unwrap())
        .collect();
    let kernel: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    println!("400 long-lived connections in bursts of 50: least_loaded {spread:?}, kernel hash {kernel:?}");
    assert_eq!(spread.iter().sum::<u64>(), 400);
    let (hi, lo) = (*spread.iter().max().unwrap(), *spread.iter().min().unwrap());
    assert!(
        hi - lo <= 8,
        "least_loaded keeps workers within 8 connections of each other: {spread:?}"
    );
    drop((held, kernel_held));
}

/// A network namespace with a veth pair to the host, removed on drop.
struct Netns {
    name: String,
    host_if: String,
    ns_if: String,
    host_ip: String,
    ns_ip: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Netns {
    fn create() -> Option<Netns> {
        let id = std::process::id() % 200 + 20;
        let n = Netns {
            name: format!("lbtest{}", std::process::id()),
            host_if: format!("lbh{}", std::process::id() % 100_000),
            ns_if: format!("lbn{}", std::process::id() % 100_000),
            host_ip: format!("10.213.{id}.1"),
            ns_ip: format!("10.213.{id}.2"),
        };
        let ns_if = n.ns_if.clone();
        let ok = ip(&["netns", "add", &n.name])
            && ip(&[
                "link", "add", &n.host_if, "type", "veth", "peer", "name", &ns_if,
            ])
            && ip(&["link", "set", &ns_if, "netns", &n.name])
            && ip(&[
                "addr",
                "add",
                &format!("{}/24", n.host_ip),
                "dev",
                &n.host_if,
            ])
            && ip(&["link", "set", &n.host_if, "up"])
            && ip(&[
                "netns",
                "exec",
                &n.name,
                "ip",
                "addr",
                "add",
                &format!("{}/24", n.ns_ip),
                "dev",
                &ns_if,
            ])
            && ip(&["netns", "exec", &n.name, "ip", "link", "set", &ns_if, "up"])
            && ip(&["netns", "exec", &n.name, "ip", "link", "set", "lo", "up"]);
        if !ok {
            skip("steering", "cannot create a network namespace here");
            return None;
        }
        Some(n)
    }

    /// `curl` from inside the namespace: the HTTP status, or None if it could not connect.
    fn curl(&self, url: &str) -> Option<u16> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                url,
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|c| *c != 0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the host end.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn xdp_drops_a_denied_client_until_the_admin_allows_it() {
    if !privileged() {
        return;
    }
    let _one = NETNS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ns) = Netns::create() else { return };
    let backend = Backend::start(echo("b")).unwrap();
    let listen = format!("{}:0", ns.host_ip);
    let steering = format!(
        "mode = \"xdp\"\npolicy = \"hash\"\ninterfaces = [\"{}\"]\nxdp_mode = \"generic\"\ndeny = [\"{}/32\"]",
        ns.host_if, ns.ns_ip
    );
    let lb = Lb::start(&steering_config(backend.addr, &steering, &listen));
    let url = format!("http://{}/", lb.addr);
    assert_eq!(ns.curl(&url), None, "the denied client cannot connect");
    let (_, st) = lb.admin("GET", "/steering");
    assert_eq!(st["deny"][0], format!("{}/32", ns.ns_ip));
    assert!(
        st["xdp"]["drop_denied"]["packets"].as_u64().unwrap() >= 1,
        "{st}"
    );
    // The console's Kernel page shows the same: the deny list and the drop counter.
    match common::browser::unavailable() {
        Some(why) => skip(
            "xdp_drops_a_denied_client_until_the_admin_allows_it (console)",
            &why,
        ),
        None => {
            let b = common::browser::Browser::start();
            b.goto(&format!("http://{}/ui#kernel", lb.admin.expect("admin")));
            b.wait_text("#deny", "the deny list", |t| {
                t.contains(&format!("{}/32", ns.ns_ip))
            });
            let dropped = b.wait_text("#xdp", "the XDP verdicts", |t| t.contains("drop_denied"));
            let row = b
                .eval("const r = Array.from(document.querySelectorAll('#xdp tbody tr')).find((r) => r.cells[0].textContent === 'drop_denied'); return r ? Number(r.cells[1].textContent) : -1;");
            assert!(row.as_f64().is_some_and(|n| n >= 1.0), "{dropped}");
            b.wait_text("#k-status", "steering on", |t| t == "on");
        }
    }
    // A client on the host side is not denied, and is served.
    assert_eq!(get(lb.addr, "/").status, 200);
    let (status, body) = lb.admin_json(
        "POST",
        "/steering/allow",
        &serde_json::json!({ "prefix": format!("{}/32", ns.ns_ip) }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(ns.curl(&url), Some(200), "allowed now");
    let m = lb.scrape();
    assert!(
        metric(
            &m,
            "lb_xdp_packets_total",
            &[("action", "drop"), ("reason", "denied")]
        ) >= 1.0
    );
    assert!(
        metric(
            &m,
            "lb_xdp_packets_total",
            &[("action", "pass"), ("reason", "none")]
        ) >= 1.0
    );
    // Bad input is a JSON error.
    let (status, body) = lb.admin_json(
        "POST",
        "/steering/deny",
        &serde_json::json!({ "prefix": "not-an-ip" }),
    );
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
}

/// The XDP program an interface runs, by id (`None` without one).
fn xdp_prog_id(iface: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", iface])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["xdp"]["prog"]["id"].as_u64()
}

/// A binary upgrade keeps the kernel half: the new process swaps its XDP program into the
/// old one's link (the interface is never without one), takes over the deny list as the
/// admin API left it, and its maps are the ones in force.
#[test]
fn an_upgrade_takes_over_xdp_and_the_deny_list() {
    if !privileged() {
        return;
    }
    let _one = NETNS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ns) = Netns::create() else { return };
    let backend = Backend::start(echo("b")).unwrap();
    let listen = format!("{}:0", ns.host_ip);
    let steering = format!(
        "mode = \"xdp\"\npolicy = \"hash\"\ninterfaces = [\"{}\"]\nxdp_mode = \"generic\"\ndeny = [\"{}/32\"]",
        ns.host_if, ns.ns_ip
    );
    let lb = Lb::start(&steering_config(backend.addr, &steering, &listen));
    let url = format!("http://{}/", lb.addr);
    assert_eq!(ns.curl(&url), None, "denied by the config");
    let before = xdp_prog_id(&ns.host_if).expect("an XDP program on the interface");
    // The admin API changes the deny list: the namespace is allowed, a documentation
    // prefix denied.
    let (status, body) = lb.admin_json(
        "POST",
        "/steering/allow",
        &serde_json::json!({ "prefix": format!("{}/32", ns.ns_ip) }),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = lb.admin_json(
        "POST",
        "/steering/deny",
        &serde_json::json!({ "prefix": "192.0.2.0/24" }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(ns.curl(&url), Some(200));

    // Watch the interface while the upgrade runs: it never goes without a program.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (watching, iface) = (watching.clone(), ns.host_if.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while watching.load(std::sync::atomic::Ordering::SeqCst)
                && std::time::Instant::now() < until
            {
                seen.push(xdp_prog_id(&iface));
            }
            seen
        })
    };
    let (status, v) = lb.admin("POST", "/upgrade");
    assert_eq!(status, 200, "{v}\n{}", lb.log());
    let pid = v["pid"].as_i64().expect("pid") as i32;
    struct Owned(i32);
    impl Drop for Owned {
        fn drop(&mut self) {
            // SAFETY: kill with the PID of the lb this test's upgrade started.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
            }
        }
    }
    let _owned = Owned(pid);
    let old = lb.pid();
    wait_until("the old process to exit", || {
        std::fs::read_to_string(format!("/proc/{old}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    });

    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    let seen = watcher.join().expect("watcher");
    assert!(
        seen.len() > 1,
        "the interface was looked at during the upgrade"
    );
    assert!(
        seen.iter().all(Option::is_some),
        "the interface was without an XDP program at some point: {seen:?}"
    );
    let after = xdp_prog_id(&ns.host_if).expect("still an XDP program on the interface");
    assert_ne!(after, before, "the new process's program runs now");
    let (_, st) = lb.admin("GET", "/steering");
    assert_eq!(st["status"], "on", "{st}");
    assert_eq!(
        st["deny"],
        serde_json::json!(["192.0.2.0/24"]),
        "the deny list as the admin API left it: {st}"
    );
    assert_eq!(ns.curl(&url), Some(200), "still allowed");
    // The new process's maps are the ones the interface's program reads.
    let (status, body) = lb.admin_json(
        "POST",
        "/steering/deny",
        &serde_json::json!({ "prefix": format!("{}/32", ns.ns_ip) }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(ns.curl(&url), None, "denied through the new process's map");
}

/// Whether this machine has the two CPUs a CPU-steering test needs; if not, the test is
/// reported skipped (failed where tools are required), not passed.
fn two_cpus(test: &str) -> bool {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n < 2 {
        skip(test, "CPU steering needs at least two CPUs");
        return false;
    }
    true
}

/// An upgrade whose new process takes the kernel half and then fails (here: its config's
/// admin address is taken, which it finds only after it swapped its XDP program in and put
/// its sockets in the steering array) leaves the old process in charge of it again: its
/// own program on the interface, its sockets in the array (every new connection is
/// answered), its maps the ones in force.
#[test]
fn a_failed_upgrade_after_the_kernel_takeover_gives_the_kernel_back() {
    if !privileged() {
        return;
    }
    let _one = NETNS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ns) = Netns::create() else { return };
    let backend = Backend::start(echo("b")).unwrap();
    let listen = format!("{}:0", ns.host_ip);
    let steering = format!(
        "mode = \"xdp\"\npolicy = \"hash\"\ninterfaces = [\"{}\"]\nxdp_mode = \"generic\"",
        ns.host_if
    );
    let lb = Lb::start(&steering_config(backend.addr, &steering, &listen));
    let url = format!("http://{}/", lb.addr);
    assert_eq!(ns.curl(&url), Some(200));
    let before = xdp_prog_id(&ns.host_if).expect("an XDP program on the interface");

    // The config on disk now names an admin address something else holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let text = std::fs::read_to_string(&lb.config_path).expect("config");
    let text = text.replacen(
        "[admin]\naddr = \"127.0.0.1:0\"",
        &format!("[admin]\naddr = \"{taken_addr}\""),
        1,
    );
    assert!(text.contains(&taken_addr.to_string()), "{text}");
    std::fs::write(&lb.config_path, text).expect("config");
    let (status, v) = lb.admin("POST", "/upgrade");
    assert_ne!(status, 200, "{v}");
    assert!(
        v["reason"].as_str().is_some_and(|r| r.contains("admin")),
        "{v}"
    );
    let log = lb.log();
    assert!(
        !log.contains("putting this process's"),
        "taking the kernel back failed:\n{log}"
    );

    // The old process's program is back on the interface, and every new connection, on
    // whichever socket the hash picks, is answered by a socket of the old process.
    assert_eq!(
        xdp_prog_id(&ns.host_if),
        Some(before),
        "the old process's XDP program"
    );
    for _ in 0..20 {
        assert_eq!(ns.curl(&url), Some(200), "{}", lb.log());
    }
    let (_, st) = lb.admin("GET", "/steering");
    assert_eq!(st["status"], "on", "{st}");
    // Its maps are the ones the program reads: a deny through its admin API holds.
    let (status, body) = lb.admin_json(
        "POST",
        "/steering/deny",
        &serde_json::json!({ "prefix": format!("{}/32", ns.ns_ip) }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(ns.curl(&url), None, "denied through the old process's map");
    drop(taken);
}

/// `steering.deny` applies at reload: a prefix the new config denies is dropped by the
/// program in force, and one it no longer denies gets through again.
#[test]
fn a_reload_applies_the_deny_list() {
    if !privileged() {
        return;
    }
    let _one = NETNS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ns) = Netns::create() else { return };
    let backend = Backend::start(echo("b")).unwrap();
    let listen = format!("{}:0", ns.host_ip);
    let steering = |deny: &str| {
        format!(
            "mode = \"xdp\"\npolicy = \"hash\"\ninterfaces = [\"{}\"]\nxdp_mode = \"generic\"\ndeny = [{deny}]",
            ns.host_if
        )
    };
    let lb = Lb::start(&steering_config(backend.addr, &steering(""), &listen));
    let url = format!("http://{}/", lb.addr);
    assert_eq!(ns.curl(&url), Some(200));
    let reload = |deny: &str| {
        let text = steering_config(backend.addr, &steering(deny), &listen);
        let tmp = lb.config_path.with_extension("new");
        std::fs::write(&tmp, text).expect("config");
        std::fs::rename(&tmp, &lb.config_path).expect("config");
        let (status, v) = lb.admin("POST", "/reload");
        assert_eq!(status, 200, "{v}");
    };
    reload(&format!("\"{}/32\"", ns.ns_ip));
    assert_eq!(ns.curl(&url), None, "denied by the reloaded config");
    let (_, st) = lb.admin("GET", "/steering");
    assert_eq!(
        st["deny"],
        serde_json::json!([format!("{}/32", ns.ns_ip)]),
        "{st}"
    );
    reload("\"192.0.2.0/24\"");
    assert_eq!(ns.curl(&url), Some(200), "allowed again");
    let (_, st) = lb.admin("GET", "/steering");
    assert_eq!(st["deny"], serde_json::json!(["192.0.2.0/24"]), "{st}");
}

/// Two tests each make a namespace named after the process: one at a time.
static NETNS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn cpu_steering_hands_flows_to_worker_cpus_and_tcp_still_works() {
    if !privileged() || !two_cpus("cpu_steering_hands_flows_to_worker_cpus_and_tcp_still_works") {
        return;
    }
    let _one = NETNS.lock().unwrap_or_else(|p| p.into_inner());
    let Some(ns) = Netns::create() else { return };
    // Native XDP with a CPU map redirect on veth needs TX checksum offload off on the
    // sending side, or TCP breaks (measured on this machine).
    let tx_off = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "ethtool", "-K", &ns.ns_if, "tx", "off",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !tx_off {
        skip(
            "steering",
            "ethtool is needed to turn TX offload off (`cargo xtask test` installs it)",
        );
        return;
    }
    let backend = Backend::start(echo("b")).unwrap();
    let steering = format!(
        "mode = \"xdp\"\npolicy = \"cpu\"\ninterfaces = [\"{}\"]\nxdp_mode = \"native\"\ncpu_steering = true",
        ns.host_if
    );
    let lb = Lb::start(&steering_config(
        backend.addr,
        &steering,
        &format!("{}:0", ns.host_ip),
    ));
    let url = format!("http://{}/", lb.addr);
    for i in 0..20 {
        assert_eq!(ns.curl(&url), Some(200), "request {i} through the CPU map");
    }
    let (_, st) = lb.admin("GET", "/steering");
    assert_eq!(st["status"], "on", "{st}");
    let redirected = st["xdp"]["redirect_cpu"]["packets"].as_u64().unwrap_or(0);
    println!(
        "CPU steering: {redirected} packets redirected, per worker {}",
        st["workers"]
    );
    assert!(redirected >= 20, "{st}");
    let accepted: u64 = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["accepted"].as_u64().unwrap())
        .sum();
    assert_eq!(accepted, 20);
}

#[test]
fn without_its_programs_lb_says_so_once_and_serves_on_plain_reuseport() {
    if !privileged() {
        return;
    }
    // An interface that does not exist: attaching fails, so steering is unavailable.
    let backend = Backend::start(echo("b")).unwrap();
    let lb = Lb::start(&steering_config(
        backend.addr,
        "mode = \"xdp\"\ninterfaces = [\"lbnope0\"]",
        "127.0.0.1:0",
    ));
    for _ in 0..10 {
        assert_eq!(get(lb.addr, "/").status, 200);
    }
    let (_, st) = lb.admin("GET", "/steering");
    assert!(
        st["status"].as_str().unwrap().starts_with("unavailable:"),
        "{st}"
    );
    let log = lb.log();
    assert_eq!(
        log.matches("eBPF steering unavailable, running on plain SO_REUSEPORT")
            .count(),
        1,
        "{log}"
    );
    let served: u64 = st["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["accepted"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 10);
}
