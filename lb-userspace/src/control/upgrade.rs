//! Binary upgrades with no dropped connection: the running process starts the new binary
//! and hands it every listening socket over a Unix socket (SCM_RIGHTS, in batches, with
//! their names), and the release state operators set (split weights, rollbacks, promotion
//! steps, pauses). The new process loads and checks its config, serves on the same sockets,
//! and says it is ready; only then does the old one stop accepting and drain. If the new one
//! fails, the old one never stopped, and the failure goes back to whoever asked.
//!
//! Closing a SO_REUSEPORT socket resets the connections queued on it, which is why the
//! sockets themselves move rather than new ones joining the group: the same sockets,
//! accepted from by the old process until it drains and by the new one from then on.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The environment variable that gives the new process its end of the Unix socket.
pub const ENV_FD: &str = "LB_UPGRADE_FD";
/// How long the new process has to load its config and start serving.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Descriptors per message (the kernel takes at most 253).
const BATCH: usize = 200;

/// A listening socket the old process hands over.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketInfo {
    /// The listener's name (`""` for the admin API).
    pub listener: String,
    pub worker: usize,
    /// The address as configured (port 0 stays 0) and as bound.
    pub configured: String,
    pub bound: String,
}

/// A split's runtime state as operators and the analysis left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitSaved {
    pub name: String,
    pub fingerprint: u64,
    pub weights: Vec<u32>,
    pub runtime_weights: bool,
    pub paused: bool,
    pub rolled_back: bool,
    pub step: u32,
    pub rollbacks: u64,
    pub decision: (u64, String, String),
}

/// The runtime state operators and lb's own judgement set, which a new process takes over:
/// release state, what health checks and outlier detection know of endpoints, and what
/// rate-limited keys owe.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    pub splits: Vec<SplitSaved>,
    #[serde(default)]
    pub endpoints: Vec<crate::upstream::state::Carried>,
    /// Rate-limit keys and the time each owes, in microseconds.
    #[serde(default)]
    pub rates: Vec<(u64, u64)>,
    /// The XDP deny list as it is, the admin API's additions and removals included (`None`:
    /// steering was off; an empty list is a list too).
    #[serde(default)]
    pub deny: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Handover {
    sockets: Vec<SocketInfo>,
    /// The interfaces whose XDP links follow the sockets' descriptors, in this order.
    #[serde(default)]
    xdp_links: Vec<String>,
    /// The SK_REUSEPORT socket array's descriptor comes last.
    #[serde(default)]
    socket_map: bool,
    #[serde(flatten)]
    state: State,
}

/// The kernel half an old process hands over: copies of its XDP links' descriptors by
/// interface, and of its SK_REUSEPORT socket array's.
#[derive(Default)]
pub struct Kernel {
    pub xdp_links: Vec<(String, OwnedFd)>,
    pub socket_map: Option<OwnedFd>,
}

/// The old process's copies of its listening sockets, kept to hand over.
#[derive(Debug, Default)]
pub struct Sockets {
    pub list: Vec<(SocketInfo, OwnedFd)>,
}

impl Sockets {
    /// The workers' sockets as the steering map keys them: `(listener index, worker, fd)`,
    /// listeners in config order (the admin API's socket is not steered).
    pub fn steered(&self) -> Vec<(u32, u32, std::os::fd::BorrowedFd<'_>)> {
        let mut names: Vec<&str> = Vec::new();
        let mut out = Vec::new();
        for (info, fd) in &self.list {
            if info.listener.is_empty() {
                continue;
            }
            let l = match names.iter().position(|n| *n == info.listener) {
                Some(l) => l,
                None => {
                    names.push(&info.listener);
                    names.len() - 1
                }
            };
            out.push((l as u32, info.worker as u32, std::os::fd::AsFd::as_fd(fd)));
        }
        out
    }
}

/// The buffers of one message that carries descriptors: a byte of data, and room for a
/// control message of `fds` descriptors.
struct FdMessage {
    control: Vec<u8>,
    byte: [u8; 1],
    iov: libc::iovec,
}

impl FdMessage {
    fn new(fds: usize) -> FdMessage {
        let bytes = fds * std::mem::size_of::<RawFd>();
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
        FdMessage {
            control: vec![0u8; space],
            byte: [b'F'],
            iov: libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            },
        }
    }

    /// A message header over these buffers, valid while `self` is neither moved nor dropped.
    fn header(&mut self) -> libc::msghdr {
        self.iov = libc::iovec {
            iov_base: self.byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: an all-zero msghdr is valid; the fields set next point into `self`.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut self.iov;
        msg.msg_iovlen = 1;
        msg.msg_control = self.control.as_mut_ptr().cast();
        msg.msg_controllen = self.control.len() as _;
        msg
    }
}

/// Sends `fds` with one byte each batch.
fn send_fds(sock: &UnixStream, fds: &[RawFd]) -> std::io::Result<()> {
    for chunk in fds.chunks(BATCH) {
        let bytes = std::mem::size_of_val(chunk);
        let mut buffers = FdMessage::new(chunk.len());
        let msg = buffers.header();
        // SAFETY: `control` holds CMSG_SPACE(bytes) bytes, room for one header and `bytes`
        // of data; CMSG_FIRSTHDR and CMSG_DATA point into it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                chunk.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                bytes,
            );
        }
        // SAFETY: `msg` describes valid buffers for the whole call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives `count` descriptors sent by [`send_fds`].
fn recv_fds(sock: &UnixStream, count: usize) -> std::io::Result<Vec<OwnedFd>> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let want = (count - out.len()).min(BATCH);
        let mut buffers = FdMessage::new(want);
        let mut msg = buffers.header();
        // SAFETY: `msg` describes valid buffers; MSG_CMSG_CLOEXEC keeps the descriptors
        // from leaking into processes this one starts.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n != 1 {
            return Err(if n == 0 {
                std::io::ErrorKind::UnexpectedEof.into()
            } else {
                std::io::Error::last_os_error()
            });
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(std::io::Error::other("descriptors were cut off"));
        }
        // SAFETY: the kernel filled `control` with `msg_controllen` bytes of well-formed
        // control messages; each SCM_RIGHTS one carries descriptors now owned by us.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let n = len / std::mem::size_of::<RawFd>();
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..n {
                        out.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
    }
    Ok(out)
}

/// What the old process needs to start the new one: the binary's path as it was started
/// (a package upgrade puts the new binary there) and the arguments.
#[derive(Debug, Clone)]
pub struct Launch {
    pub exe: std::path::PathBuf,
    pub args: Vec<std::ffi::OsString>,
}

impl Launch {
    /// This process's binary and arguments, read at start (before a package replaces the
    /// file: `/proc/self/exe` would then name the old, deleted one).
    pub fn current() -> Launch {
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_default();
        let exe = std::env::current_exe()
            .ok()
            .filter(|p| !p.to_string_lossy().ends_with(" (deleted)"))
            .unwrap_or_else(|| argv0.into());
        Launch {
            exe,
            args: args.collect(),
        }
    }
}

/// Starts the new binary, hands it `sockets` and `splits`, and waits until it is ready.
/// `Ok`: its PID; the caller then drains. `Err`: why not; this process serves on as if
/// nothing happened.
pub fn start_new(
    launch: &Launch,
    sockets: &Sockets,
    kernel: &Kernel,
    state: State,
) -> Result<u32, Failed> {
    let xdp_links = &kernel.xdp_links;
    use std::os::unix::process::CommandExt;
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("socket pair: {e}"))?;
    let fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new(&launch.exe);
    // WATCHDOG_PID names this process: the new one, soon the main one, pets the watchdog
    // too (systemd takes its pings once this process has named it with MAINPID=).
    cmd.args(&launch.args)
        .env(ENV_FD, fd.to_string())
        .env_remove("WATCHDOG_PID");
    // SAFETY: between fork and exec only close_range and fcntl run, both plain system
    // calls (async-signal-safe). Every descriptor but the standard ones and the child's end
    // of the socket closes at exec: io_uring accepts sockets without CLOEXEC, and a client
    // connection the new process inherited would stay open after this process answered and
    // closed it (the client would never see the end of its answer).
    unsafe {
        cmd.pre_exec(move || {
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            let all = libc::c_uint::MAX;
            for (lo, hi) in [(3, fd as libc::c_uint - 1), (fd as libc::c_uint + 1, all)] {
                if lo <= hi && libc::syscall(libc::SYS_close_range, lo, hi, CLOSE_RANGE_CLOEXEC) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", launch.exe.display()))?;
    drop(theirs);
    let fail = |child: &mut std::process::Child, why: String| -> String {
        // Our child, by its PID: it must not linger half-started.
        let _ = child.kill();
        let _ = child.wait();
        why
    };
    let header = Handover {
        sockets: sockets.list.iter().map(|(i, _)| i.clone()).collect(),
        xdp_links: xdp_links.iter().map(|(i, _)| i.clone()).collect(),
        socket_map: kernel.socket_map.is_some(),
        state,
    };
    let text = match serde_json::to_vec(&header) {
        Ok(t) => t,
        Err(e) => return Err(fail(&mut child, format!("handover: {e}")).into()),
    };
    let fds: Vec<RawFd> = sockets
        .list
        .iter()
        .map(|(_, fd)| fd.as_raw_fd())
        .chain(xdp_links.iter().map(|(_, fd)| fd.as_raw_fd()))
        .chain(kernel.socket_map.as_ref().map(|fd| fd.as_raw_fd()))
        .collect();
    let sent = (&ours)
        .write_all(&(text.len() as u32).to_be_bytes())
        .and_then(|()| (&ours).write_all(&text))
        .and_then(|()| send_fds(&ours, &fds));
    if let Err(e) = sent {
        return Err(fail(&mut child, format!("handing the sockets over failed: {e}")).into());
    }
    let _ = ours.set_read_timeout(Some(READY_TIMEOUT));
    let mut line = String::new();
    let read = BufReader::new(&ours).read_line(&mut line);
    // From here a failure may come after the new process took the kernel half over: the
    // caller takes it back, unless the new process said it never touched it.
    match (read, line.trim_end().split_once(' ')) {
        (Ok(_), Some(("ready", pid))) => pid.parse().map_err(|_| {
            Failed::took_kernel(fail(&mut child, format!("the new process said {line:?}")))
        }),
        (Ok(_), Some(("error", why))) => Err(Failed::before_kernel(fail(
            &mut child,
            format!("the new binary refused to start: {why}"),
        ))),
        (Ok(_), Some(("error-kernel", why))) => Err(Failed::took_kernel(fail(
            &mut child,
            format!("the new binary refused to start: {why}"),
        ))),
        (Err(e), _) if e.kind() == std::io::ErrorKind::WouldBlock => {
            Err(Failed::took_kernel(fail(
                &mut child,
                format!("the new process was not ready within {READY_TIMEOUT:?}"),
            )))
        }
        _ => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            Err(Failed::took_kernel(format!(
                "the new process exited ({status}) before it was ready; its log says why"
            )))
        }
    }
}

/// Why an upgrade failed, and whether the new process may have taken the kernel half (XDP
/// links, the socket array) before it did.
#[derive(Debug)]
pub struct Failed {
    pub reason: String,
    pub took_kernel: bool,
}

impl Failed {
    fn before_kernel(reason: String) -> Failed {
        Failed {
            reason,
            took_kernel: false,
        }
    }

    fn took_kernel(reason: String) -> Failed {
        Failed {
            reason,
            took_kernel: true,
        }
    }
}

impl From<String> for Failed {
    fn from(reason: String) -> Failed {
        Failed::before_kernel(reason)
    }
}

/// The new process's side: what the old one handed over.
pub struct Inherited {
    stream: UnixStream,
    sockets: Vec<(SocketInfo, Option<OwnedFd>)>,
    xdp_links: Vec<(String, Option<OwnedFd>)>,
    /// The old process's SK_REUSEPORT socket array.
    pub socket_map: Option<OwnedFd>,
    pub state: State,
    /// This process changed the kernel half it was handed (an XDP link, the socket array):
    /// if it fails now, the old process must take it back.
    pub took_kernel: bool,
}

impl Inherited {
    /// What an old process hands over, if this process was started by one.
    pub fn from_env() -> Option<Result<Inherited, String>> {
        let fd: RawFd = std::env::var(ENV_FD).ok()?.parse().ok()?;
        // SAFETY: the old process passed this descriptor for exactly this; nothing else in
        // this process owns it.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        // The descriptor must not reach processes this one starts (its own upgrade sets it
        // again for its child).
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        Some(Inherited::receive(stream))
    }

    fn receive(stream: UnixStream) -> Result<Inherited, String> {
        let _ = stream.set_read_timeout(Some(READY_TIMEOUT));
        let mut len = [0u8; 4];
        (&stream)
            .read_exact(&mut len)
            .map_err(|e| format!("upgrade handover: {e}"))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > 64 << 20 {
            return Err("upgrade handover: header too large".into());
        }
        let mut text = vec![0u8; len];
        (&stream)
            .read_exact(&mut text)
            .map_err(|e| format!("upgrade handover: {e}"))?;
        let header: Handover =
            serde_json::from_slice(&text).map_err(|e| format!("upgrade handover: {e}"))?;
        let expected =
            header.sockets.len() + header.xdp_links.len() + usize::from(header.socket_map);
        let mut fds = recv_fds(&stream, expected).map_err(|e| format!("upgrade handover: {e}"))?;
        if fds.len() != expected {
            return Err("upgrade handover: descriptors missing".into());
        }
        let socket_map = if header.socket_map { fds.pop() } else { None };
        let links = fds.split_off(header.sockets.len());
        Ok(Inherited {
            stream,
            sockets: header
                .sockets
                .into_iter()
                .zip(fds.into_iter().map(Some))
                .collect(),
            xdp_links: header
                .xdp_links
                .into_iter()
                .zip(links.into_iter().map(Some))
                .collect(),
            socket_map,
            state: header.state,
            took_kernel: false,
        })
    }

    /// The socket listener `name` of worker `worker` listened on, if it was configured with
    /// the same address.
    pub fn take(
        &mut self,
        name: &str,
        worker: usize,
        configured: SocketAddr,
    ) -> Option<std::net::TcpListener> {
        let (_, fd) = self.sockets.iter_mut().find(|(i, fd)| {
            fd.is_some()
                && i.listener == name
                && i.worker == worker
                && i.configured == configured.to_string()
        })?;
        fd.take().map(std::net::TcpListener::from)
    }

    /// Whether the old process had XDP attached: this one must take it over or fail.
    pub fn has_xdp_links(&self) -> bool {
        !self.xdp_links.is_empty()
    }

    /// The old process's XDP link on `iface`, if it had one.
    pub fn take_xdp_link(&mut self, iface: &str) -> Option<OwnedFd> {
        let link = self
            .xdp_links
            .iter_mut()
            .find(|(i, fd)| i == iface && fd.is_some())
            .and_then(|(_, fd)| fd.take());
        self.took_kernel |= link.is_some();
        link
    }

    /// The address a listener's worker-0 socket is bound to, to bind more workers' sockets
    /// (a config with more workers) on the same port.
    pub fn bound(&self, name: &str, configured: SocketAddr) -> Option<SocketAddr> {
        self.sockets
            .iter()
            .find(|(i, _)| i.listener == name && i.configured == configured.to_string())
            .and_then(|(i, _)| i.bound.parse().ok())
    }

    /// Tells the old process this one serves; it drains from now.
    pub fn ready(self) {
        let line = format!("ready {}\n", std::process::id());
        if let Err(e) = (&self.stream).write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "could not tell the old process we are ready");
        }
        let unused = self.sockets.iter().filter(|(_, fd)| fd.is_some()).count();
        if unused > 0 {
            tracing::info!(
                unused,
                "inherited sockets this config does not use are closed"
            );
        }
    }

    /// Tells the old process this one could not start, and why.
    pub fn failed(&self, why: &str) {
        let kind = if self.took_kernel {
            "error-kernel"
        } else {
            "error"
        };
        let line = format!("{kind} {}\n", why.replace('\n', " "));
        let _ = (&self.stream).write_all(line.as_bytes());
    }
}

/// Everything [`State`] carries, as `snap` and this process have it now.
pub fn save_state(snap: &crate::snapshot::Snapshot) -> State {
    let now = crate::clock::now_ms();
    let mut endpoints: Vec<crate::upstream::state::Carried> = Vec::new();
    for e in snap.clusters.iter().flat_map(|c| &c.endpoints) {
        if let Some(c) = e.state.carried(now) {
            if !endpoints.iter().any(|x| x.addr == c.addr) {
                endpoints.push(c);
            }
        }
    }
    State {
        splits: save_splits(snap),
        endpoints,
        rates: crate::ratelimit::table().export(crate::ratelimit::now_us()),
        deny: None,
    }
}

/// What a new process took over: splits, endpoints and rate-limit keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub splits: usize,
    pub endpoints: usize,
    pub rates: usize,
}

/// Puts carried-over state into `snap` and this process.
pub fn restore_state(snap: &crate::snapshot::Snapshot, state: &State) -> Restored {
    let now = crate::clock::now_ms();
    let mut endpoints = 0;
    for c in &state.endpoints {
        let Ok(addr) = c.addr.parse::<SocketAddr>() else {
            continue;
        };
        let mut found = false;
        for e in snap.clusters.iter().flat_map(|c| &c.endpoints) {
            if e.addr == addr {
                // Endpoints share state by address: restoring one restores them all.
                e.state.restore(c, now);
                found = true;
            }
        }
        endpoints += usize::from(found);
    }
    Restored {
        splits: restore_splits(snap, &state.splits),
        endpoints,
        rates: crate::ratelimit::table().import(&state.rates, crate::ratelimit::now_us()),
    }
}

/// The release state of every split, to carry over.
fn save_splits(snap: &crate::snapshot::Snapshot) -> Vec<SplitSaved> {
    snap.splits
        .iter()
        .map(|s| SplitSaved::of(&s.config.name, &s.state))
        .collect()
}

impl SplitSaved {
    /// The release state of split `name`.
    pub fn of(name: &str, st: &crate::release::state::SplitState) -> SplitSaved {
        use std::sync::atomic::Ordering::Relaxed;
        let d = st.decision.lock().unwrap_or_else(|p| p.into_inner());
        SplitSaved {
            name: name.to_string(),
            fingerprint: st.fingerprint.load(Relaxed),
            weights: st.weights().to_vec(),
            runtime_weights: st.runtime_weights.load(Relaxed),
            paused: st.paused.load(Relaxed),
            rolled_back: st.rolled_back.load(Relaxed),
            step: st.step.load(Relaxed),
            rollbacks: st.rollbacks.load(Relaxed),
            decision: (d.at_unix, d.action.clone(), d.reason.clone()),
        }
    }

    /// Puts this state into `st`, if it is for the same config of the split; whether it did.
    pub fn apply_to(&self, st: &crate::release::state::SplitState, targets: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.fingerprint != st.fingerprint.load(Relaxed) || self.weights.len() != targets {
            return false;
        }
        st.set_weights(self.weights.clone());
        st.runtime_weights.store(self.runtime_weights, Relaxed);
        st.paused.store(self.paused, Relaxed);
        st.rolled_back.store(self.rolled_back, Relaxed);
        if st.step.swap(self.step, Relaxed) != self.step {
            st.step_started_ms.store(crate::clock::now_ms(), Relaxed);
        }
        st.rollbacks.store(self.rollbacks, Relaxed);
        let mut d = st.decision.lock().unwrap_or_else(|p| p.into_inner());
        d.at_unix = self.decision.0;
        d.action = self.decision.1.clone();
        d.reason = self.decision.2.clone();
        true
    }
}

/// Puts carried-over state into the splits of `snap` that have the same name and config.
/// A split whose config changed starts afresh, as a reload would.
fn restore_splits(snap: &crate::snapshot::Snapshot, saved: &[SplitSaved]) -> usize {
    let mut restored = 0;
    for s in &snap.splits {
        if let Some(v) = saved.iter().find(|v| v.name == s.config.name) {
            restored += usize::from(v.apply_to(&s.state, s.config.targets.len()));
        }
    }
    restored
}
