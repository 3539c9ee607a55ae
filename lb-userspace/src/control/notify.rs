//! systemd's service notification protocol (`sd_notify(3)`), for a unit with `Type=notify`
//! or `Type=notify-reload`: lb says `READY=1` once it serves, `RELOADING=1` (with
//! `MONOTONIC_USEC`) and `READY=1` again around a reload, `STOPPING=1` when it drains, and
//! `WATCHDOG=1` at half the unit's `WatchdogSec` while the process lives. Each is one
//! datagram to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace); without it, nothing is sent.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set once this process named another the service's main process: from then on it tells
/// systemd nothing (its watchdog pings and `STOPPING=1` would be a stranger's).
static HANDED_OVER: AtomicBool = AtomicBool::new(false);

/// Held while a notification goes out, so that none leaves after the handover's.
static SENDING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Sends `state` (newline-separated `KEY=value` lines) to systemd, if it listens.
pub fn notify(state: &str) {
    let _one = SENDING.lock().unwrap_or_else(|p| p.into_inner());
    if HANDED_OVER.load(Ordering::SeqCst) {
        return;
    }
    send_now(state);
}

fn send_now(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&target, state) {
        tracing::warn!(error = %e, "telling systemd {state:?} failed");
    }
}

fn send(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = target.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(target))?;
    }
    Ok(())
}

/// Names the process `pid` (a binary upgrade's new process, which serves now) the service's
/// main process, ready, and pets the watchdog for it once; this one falls silent.
pub fn hand_over(pid: u32) {
    let _one = SENDING.lock().unwrap_or_else(|p| p.into_inner());
    if HANDED_OVER.swap(true, Ordering::SeqCst) {
        return;
    }
    send_now(&format!(
        "MAINPID={pid}\nREADY=1\nWATCHDOG=1\nSTATUS=upgraded to pid {pid}"
    ));
}

/// `RELOADING=1` with the `CLOCK_MONOTONIC` time systemd asks for, in microseconds.
pub fn reloading() {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the current time into the timespec on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// When the unit sets a watchdog (`$WATCHDOG_USEC`, for this process when `$WATCHDOG_PID`
/// says so), a thread pets it at half the interval for as long as lb runs. A process that
/// took over in an upgrade waits a moment first: systemd takes its pings only once the old
/// process has named it the main one (which pets the watchdog for it as it does).
pub fn spawn_watchdog(upgraded: bool) -> std::io::Result<()> {
    let Some(usec) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&u| u > 0)
    else {
        return Ok(());
    };
    // A process that took over in an upgrade pets the watchdog whatever WATCHDOG_PID says:
    // an older lb that started it passed on its own.
    if let (false, Ok(pid)) = (upgraded, std::env::var("WATCHDOG_PID")) {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(());
        }
    }
    let every = Duration::from_micros(usec / 2);
    std::thread::Builder::new()
        .name("lb-watchdog".into())
        .spawn(move || {
            if upgraded {
                std::thread::sleep(every.min(Duration::from_millis(500)));
            }
            while !HANDED_OVER.load(Ordering::SeqCst) {
                notify("WATCHDOG=1");
                std::thread::sleep(every);
            }
        })?;
    Ok(())
}
