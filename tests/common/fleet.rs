//! Real servers the fleet tests share: etcd (Debian `etcd-server`, driven with `etcdctl`)
//! started on loopback in a scratch directory and stopped by PID, and a TCP relay whose
//! connections a test can cut, to stand for a network partition.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{dead_addr, scratch_dir, skip, BOUND};

/// An etcd server on loopback; stopped (by PID) and its directory removed on drop.
pub struct Etcd {
    child: Option<Child>,
    pub client: SocketAddr,
    peer: SocketAddr,
    pub dir: PathBuf,
    /// Serve clients over TLS with `dir/tls/{ca,cert,key}.pem`.
    tls: bool,
    /// etcdctl's credentials once auth is on.
    user: Option<String>,
}

fn have(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

impl Etcd {
    /// Starts a one-member etcd; `None` (reported as skipped) without the etcd binaries.
    pub fn start(test: &str) -> Option<Etcd> {
        Etcd::launch(test, false)
    }

    /// Like [`Etcd::start`], serving clients over TLS with a certificate for 127.0.0.1
    /// signed by `tls_dir()/ca.pem`, and asking clients for one signed by the same CA (the
    /// same certificate serves as the clients').
    pub fn start_tls(test: &str) -> Option<Etcd> {
        Etcd::launch(test, true)
    }

    fn launch(test: &str, tls: bool) -> Option<Etcd> {
        if !have("etcd") || !have("etcdctl") {
            skip(
                test,
                "etcd and etcdctl are not installed (Debian etcd-server, etcd-client)",
            );
            return None;
        }
        let mut e = Etcd {
            child: None,
            client: dead_addr(),
            peer: dead_addr(),
            dir: scratch_dir("etcd"),
            tls,
            user: None,
        };
        if tls {
            std::fs::create_dir_all(e.tls_dir()).expect("tls dir");
            super::write_ca_and_cert(&e.tls_dir(), "etcd test CA", &["127.0.0.1", "localhost"]);
        }
        e.run();
        Some(e)
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// Turns auth on with a root user (`root`/`rootpw`) and a user `name` with `password`
    /// that may read and write keys under `prefix`.
    pub fn enable_auth(&mut self, name: &str, password: &str, prefix: &str) {
        self.ctl(&["user", "add", "root", "--new-user-password=rootpw"]);
        self.ctl(&[
            "user",
            "add",
            name,
            &format!("--new-user-password={password}"),
        ]);
        self.ctl(&["role", "add", "lb"]);
        self.ctl(&[
            "role",
            "grant-permission",
            "lb",
            "--prefix=true",
            "readwrite",
            prefix,
        ]);
        self.ctl(&["user", "grant-role", name, "lb"]);
        self.ctl(&["auth", "enable"]);
        self.user = Some("root:rootpw".into());
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }

    /// Starts the server on its data directory and waits until it answers.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "etcd already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("etcd log");
        let peer = format!("http://{}", self.peer);
        let mut cmd = Command::new("etcd");
        if self.tls {
            let t = self.tls_dir();
            cmd.arg(format!("--cert-file={}", t.join("cert.pem").display()))
                .arg(format!("--key-file={}", t.join("key.pem").display()))
                .arg(format!("--trusted-ca-file={}", t.join("ca.pem").display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name=t")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let until = Instant::now() + BOUND;
        loop {
            let out = self.try_ctl(&["endpoint", "health"]);
            if out.as_ref().is_ok_and(|o| o.contains("is healthy")) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("etcd exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < until,
                "etcd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (the data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    fn try_ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new("etcdctl");
        if self.tls {
            let t = self.tls_dir();
            cmd.arg(format!("--cacert={}", t.join("ca.pem").display()))
                .arg(format!("--cert={}", t.join("cert.pem").display()))
                .arg(format!("--key={}", t.join("key.pem").display()));
        }
        if let Some(u) = &self.user {
            cmd.arg(format!("--user={u}"));
        }
        let out = cmd
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=1s")
            .arg("--command-timeout=3s")
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// `etcdctl ARGS`, which must succeed; its output.
    pub fn ctl(&self, args: &[&str]) -> String {
        self.try_ctl(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?} failed: {e}"))
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .expect("a revision")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("etcd log:\n{}", self.log());
        }
    }
}

/// A TCP relay to `target` on loopback. `cut` closes every relayed connection and refuses
/// new ones until `restore`: to the client, the server is unreachable.
pub struct Relay {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let open = Arc::new(AtomicBool::new(true));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (o, s, st) = (open.clone(), streams.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                if !o.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut list = s.lock().expect("relay lock");
                for c in [&client, &server] {
                    if let Ok(c) = c.try_clone() {
                        list.push(c);
                    }
                }
                drop(list);
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| a.ok().zip(b.ok()))
                {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay {
            addr,
            open,
            streams,
            stop,
        }
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.streams.lock().expect("relay lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// A Redis server on loopback, without persistence; stopped (by PID) on drop.
pub struct Redis {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Redis {
    /// Starts `redis-server`; `None` (reported as skipped) without it.
    pub fn start(test: &str) -> Option<Redis> {
        if !have("redis-server") {
            skip(test, "redis-server is not installed (Debian redis-server)");
            return None;
        }
        let mut r = Redis {
            child: None,
            addr: dead_addr(),
            dir: scratch_dir("redis"),
        };
        r.run();
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Starts the server and waits until it answers PING.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "redis already runs");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.addr.port().to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let until = Instant::now() + BOUND;
        loop {
            if self.ping() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("redis-server exited with {status}");
            }
            assert!(Instant::now() < until, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Sentinel watching `redis` as master `name`; stopped (by PID) on drop.
pub struct Sentinel {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Sentinel {
    pub fn start(redis: &Redis, name: &str) -> Sentinel {
        let dir = scratch_dir("sentinel");
        let addr = dead_addr();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {} 1\nsentinel down-after-milliseconds {name} 1000\n",
                addr.port(),
                dir.display(),
                redis.addr.port()
            ),
        )
        .expect("sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server --sentinel");
        let mut s = Sentinel { child, addr, dir };
        // Ready once it names the master.
        let until = Instant::now() + BOUND;
        loop {
            let ok = TcpStream::connect_timeout(&s.addr, Duration::from_millis(200))
                .ok()
                .and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
                    c.write_all(format!("SENTINEL get-master-addr-by-name {name}\r\n").as_bytes())
                        .ok()?;
                    let mut buf = [0u8; 256];
                    let n = c.read(&mut buf).ok()?;
                    Some(
                        String::from_utf8_lossy(&buf[..n]).contains(&redis.addr.port().to_string()),
                    )
                })
                .unwrap_or(false);
            if ok {
                return s;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!("redis sentinel exited with {status}");
            }
            assert!(Instant::now() < until, "the sentinel did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
