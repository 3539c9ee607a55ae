//! Open-loop load at a fixed rate, for latency at an offered rate every proxy sustains.
//!
//! One thread drives every connection from an epoll loop, woken by a timerfd at the next
//! request's due time (nanosecond resolution) or by a response. Latency counts from when a
//! request was due, not from when it was sent, so a stall anywhere (proxy, backend or this
//! loop) shows instead of delaying the schedule. A thread per connection, as before, put
//! eight more runnable threads on the load core next to the backend, and the scheduler's
//! choices among them were most of the p99.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
/// The hello backend's `/` body length.
const BODY: usize = 12;
/// epoll data of the timer (connections use their index).
const TIMER: u64 = u64::MAX;

struct Conn {
    stream: TcpStream,
    /// Requests completed.
    done: usize,
    /// When the request in flight was due; `None` while waiting for the next due time.
    in_flight: Option<Instant>,
    got: usize,
    buf: [u8; 4096],
}

/// Sends `rate` requests/s for `seconds` over `conns` keep-alive connections to `addr`;
/// returns every request's latency in milliseconds, counted from its due time.
pub fn run(addr: SocketAddr, rate: f64, seconds: u64, conns: usize) -> Result<Vec<f64>> {
    let conns = conns.max(1);
    let per_conn = rate / conns as f64;
    let interval = Duration::from_secs_f64(1.0 / per_conn);
    let count = (per_conn * seconds as f64) as usize;
    let epoll = epoll_create()?;
    let timer = timerfd()?;
    add(&epoll, timer.as_raw_fd(), TIMER)?;
    let mut all: Vec<Conn> = Vec::with_capacity(conns);
    for i in 0..conns {
        let stream = TcpStream::connect(addr).with_context(|| format!("connection {i}"))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        add(&epoll, stream.as_raw_fd(), i as u64)?;
        all.push(Conn {
            stream,
            done: 0,
            in_flight: None,
            got: 0,
            buf: [0; 4096],
        });
    }
    let start = Instant::now();
    // Connection i's k-th request is due at start + (k + i/conns) intervals: spread evenly.
    let due = |i: usize, k: usize| start + interval.mul_f64(k as f64 + i as f64 / conns as f64);
    let give_up = start + Duration::from_secs(seconds + 10);
    let mut lat = Vec::with_capacity(count * conns);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; conns + 1];
    loop {
        let now = Instant::now();
        if now > give_up {
            bail!("open-loop run did not finish in {seconds} s + 10 s");
        }
        // Send every request that is due; find when the next one is.
        let mut next: Option<Instant> = None;
        for (i, c) in all.iter_mut().enumerate() {
            if c.in_flight.is_some() || c.done == count {
                continue;
            }
            let at = due(i, c.done);
            if at <= now {
                // 31 bytes into an idle keep-alive socket: the send buffer always has room.
                c.stream
                    .write_all(REQUEST)
                    .with_context(|| format!("send on connection {i}, request {}", c.done))?;
                c.in_flight = Some(at);
                c.got = 0;
            } else {
                next = Some(next.map_or(at, |n: Instant| n.min(at)));
            }
        }
        if all.iter().all(|c| c.done == count) {
            break;
        }
        if let Some(at) = next {
            arm(&timer, at.saturating_duration_since(Instant::now()))?;
        }
        let n = wait(&epoll, &mut events, 1000)?;
        for ev in &events[..n] {
            if ev.u64 == TIMER {
                let mut expirations = [0u8; 8];
                // SAFETY: reading 8 bytes into an 8-byte buffer from our own timerfd.
                unsafe { libc::read(timer.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
                continue;
            }
            let i = ev.u64 as usize;
            let Some(c) = all.get_mut(i) else { continue };
            let Some(was_due) = c.in_flight else {
                bail!("connection {i}: bytes arrived with no request in flight");
            };
            loop {
                match c.stream.read(&mut c.buf[c.got..]) {
                    Ok(0) => bail!("connection {i} closed at request {}", c.done),
                    Ok(n) => c.got += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("connection {i}, request {}", c.done))
                    }
                }
                if c.got == c.buf.len() {
                    bail!("connection {i}: response larger than {} bytes", c.buf.len());
                }
            }
            let complete = c.buf[..c.got]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .is_some_and(|h| c.got >= h + 4 + BODY);
            if complete {
                if !c.buf.starts_with(b"HTTP/1.1 200 ") {
                    let line = c.buf[..c.got].split(|b| *b == b'\r').next().unwrap_or(&[]);
                    bail!(
                        "connection {i}, request {}: answered {:?}, not 200",
                        c.done,
                        String::from_utf8_lossy(line)
                    );
                }
                lat.push(was_due.elapsed().as_secs_f64() * 1000.0);
                c.in_flight = None;
                c.done += 1;
            }
        }
    }
    Ok(lat)
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn epoll_create() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; the new descriptor is owned by the returned OwnedFd.
    let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn timerfd() -> io::Result<OwnedFd> {
    // SAFETY: no pointers; the new descriptor is owned by the returned OwnedFd.
    let fd = cvt(unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn add(epoll: &OwnedFd, fd: RawFd, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: data,
    };
    // SAFETY: both descriptors are open; `ev` is a valid event for the call's duration.
    cvt(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
    Ok(())
}

/// Arms the one-shot timer `after` from now (at least a nanosecond: zero would disarm it).
fn arm(timer: &OwnedFd, after: Duration) -> io::Result<()> {
    let after = after.max(Duration::from_nanos(1));
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs() as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: the timerfd is open; `spec` is valid and the old value is not asked for.
    cvt(unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) })?;
    Ok(())
}

fn wait(epoll: &OwnedFd, events: &mut [libc::epoll_event], ms: i32) -> io::Result<usize> {
    loop {
        // SAFETY: `events` is a valid buffer of `events.len()` entries for the call.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                ms,
            )
        };
        match cvt(n) {
            Ok(n) => return Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
