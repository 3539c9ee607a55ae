//! Starting and measuring processes: pinning, readiness, CPU time and memory from /proc.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Raises this process's open-file limit (inherited by the proxies it starts) to `want`, or
/// to the hard limit when `want` is above it and the hard limit can't be raised (raising it
/// takes root). Returns the limit in force.
pub fn raise_fd_limit(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct on the stack.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_max < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want;
            }
        }
        r.rlim_cur = r.rlim_max.min(want.max(r.rlim_cur));
        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0 {
            r.rlim_cur
        } else {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
            r.rlim_cur
        }
    }
}

/// Pins the calling thread to `core` (no-op if it fails).
pub fn pin_current_thread(core: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; pid 0 is this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A command pinned to `core` with taskset when the machine has more than one core.
pub fn pinned(core: usize, program: &Path) -> Command {
    if cores() > 1 && which("taskset") {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(core.to_string()).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr, child: &mut Child) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("process exited with {status} before listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on {addr} after 15 s")
}

/// Waits until nothing accepts on `addr` any more. A killed io_uring process releases its
/// sockets only when the kernel finishes tearing its ring down, a moment after it exits;
/// until then its listening socket still takes connections of the SO_REUSEPORT group and
/// resets them.
pub fn wait_port_free(addr: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until
        && TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A started process, killed on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let log = std::fs::File::create(log)?;
        cmd.stdout(Stdio::null()).stderr(log);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU time of a process, in microseconds.
pub fn cpu_us(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok((utime + stime) * 1_000_000 / hz)
}

/// Busy and total clock ticks of one core so far, from `/proc/stat` (busy: user, nice,
/// system, irq, softirq and steal; total adds idle and iowait).
pub fn core_ticks(core: usize) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .with_context(|| format!("no {name} in /proc/stat"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
    Ok((busy, busy + at(3) + at(4)))
}

/// The share of the time `core` was busy between two [`core_ticks`] readings.
pub fn busy_share(before: (u64, u64), after: (u64, u64)) -> Option<f64> {
    let total = after.1.checked_sub(before.1)?;
    (total > 0).then(|| after.0.saturating_sub(before.0) as f64 / total as f64)
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|v| v.trim_start_matches(':').trim().strip_suffix("kB"))
        })
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{field} of {pid}"))
}

/// The first line of a command's output (stdout or stderr), for version strings.
pub fn version_of(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "not installed".into())
}
