//! The kernel half in user space: loading the XDP and SK_REUSEPORT programs, attaching
//! them, their maps (deny lists, SYN guard, worker sockets and loads, counters), and running
//! the XDP program on test packets through `BPF_PROG_TEST_RUN`.

pub mod link;
pub mod load;
pub mod testrun;

use std::net::IpAddr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, PerCpuArray};
use aya::programs::Xdp;
use aya::Ebpf;
use std::os::fd::AsFd;

use lb_common::{Counter, PacketCount, SynConfig};
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteeringMode {
    Off,
    /// SK_REUSEPORT steering only.
    Reuseport,
    /// XDP filtering and SK_REUSEPORT steering.
    Xdp,
}

/// The SK_REUSEPORT policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteeringPolicy {
    Cpu,
    Hash,
    LeastLoaded,
}

/// How the XDP program attaches: native driver mode, generic (skb) mode, or native when the
/// driver supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Auto,
    Native,
    Generic,
}

/// The XDP program, as built by `cargo xtask build-ebpf` (empty if it was not built).
pub const XDP_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/lb-xdp.o"));

/// Why the kernel half is not available.
#[derive(Debug, Error)]
pub enum SteeringError {
    #[error("this lb was built without its eBPF object (run `cargo xtask build-ebpf`)")]
    NotBuilt,
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, String),
}

/// The loaded XDP program and its maps, and the interfaces it is attached to.
pub struct XdpFilter {
    ebpf: Ebpf,
    /// Each interface's XDP link: the program stays attached while it is open.
    links: Vec<(String, std::os::fd::OwnedFd)>,
}

impl XdpFilter {
    /// Loads (but does not attach) the XDP program into the kernel.
    pub fn load() -> Result<XdpFilter, SteeringError> {
        if XDP_OBJECT.is_empty() {
            return Err(SteeringError::NotBuilt);
        }
        let mut ebpf = Ebpf::load(XDP_OBJECT).map_err(|e| SteeringError::Load(e.to_string()))?;
        let prog: &mut Xdp = ebpf
            .program_mut("lb_xdp")
            .ok_or_else(|| SteeringError::Load("no program lb_xdp in the object".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| SteeringError::Load(e.to_string()))?;
        prog.load()
            .map_err(|e| SteeringError::Load(e.to_string()))?;
        Ok(XdpFilter {
            ebpf,
            links: Vec::new(),
        })
    }

    /// The program's file descriptor, for test runs.
    pub fn program_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, SteeringError> {
        let prog: &Xdp = self
            .ebpf
            .program("lb_xdp")
            .ok_or_else(|| SteeringError::Load("no program lb_xdp".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| SteeringError::Load(e.to_string()))?;
        prog.fd()
            .map(|fd| fd.as_fd())
            .map_err(|e| SteeringError::Load(e.to_string()))
    }

    /// Sets up SK_REUSEPORT steering: `sockets[worker][listener]` are the workers' listening
    /// sockets. Returns the mapped worker-load table for `least_loaded`.
    pub fn steer(
        &mut self,
        sockets: &[Vec<&std::net::TcpListener>],
        policy: SteeringPolicy,
        cpu_redirect: bool,
    ) -> Result<load::WorkerLoads, SteeringError> {
        use aya::maps::ReusePortSockArray;
        use aya::programs::SkReuseport;
        use lb_common::{SteerConfig, MAX_LISTENERS, MAX_WORKERS};
        let workers = sockets.len() as u32;
        let listeners = sockets.first().map_or(0, Vec::len) as u32;
        if workers == 0 || workers > MAX_WORKERS || listeners > MAX_LISTENERS {
            return Err(SteeringError::Load(format!(
                "steering supports up to {MAX_WORKERS} workers and {MAX_LISTENERS} listeners"
            )));
        }
        {
            let mut arr: ReusePortSockArray<_> =
                ReusePortSockArray::try_from(self.map("LB_SOCKETS")?)
                    .map_err(|e| SteeringError::Map("LB_SOCKETS", e.to_string()))?;
            for (w, per_listener) in sockets.iter().enumerate() {
                for (l, sock) in per_listener.iter().enumerate() {
                    arr.set(l as u32 * MAX_WORKERS + w as u32, *sock, 0)
                        .map_err(|e| SteeringError::Map("LB_SOCKETS", e.to_string()))?;
                }
            }
        }
        let policy = match policy {
            SteeringPolicy::Cpu => lb_common::POLICY_CPU,
            SteeringPolicy::Hash => lb_common::POLICY_HASH,
            SteeringPolicy::LeastLoaded => lb_common::POLICY_LEAST_LOADED,
        };
        {
            let mut cfg: Array<_, SteerConfig> = Array::try_from(self.map("LB_STEER")?)
                .map_err(|e| SteeringError::Map("LB_STEER", e.to_string()))?;
            cfg.set(
                0,
                SteerConfig {
                    workers,
                    policy,
                    listeners,
                    cpu_redirect: u32::from(cpu_redirect),
                },
                0,
            )
            .map_err(|e| SteeringError::Map("LB_STEER", e.to_string()))?;
        }
        if cpu_redirect {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
            if workers > cores {
                return Err(SteeringError::Load(format!(
                    "CPU steering needs a worker per core at most ({workers} workers, {cores} cores)"
                )));
            }
            // Worker i is pinned to CPU i: flows hashed to i are queued to that CPU.
            let mut cpus: aya::maps::CpuMap<_> = aya::maps::CpuMap::try_from(self.map("LB_CPUS")?)
                .map_err(|e| SteeringError::Map("LB_CPUS", e.to_string()))?;
            for cpu in 0..workers {
                cpus.set(cpu, 2048, None, 0)
                    .map_err(|e| SteeringError::Map("LB_CPUS", e.to_string()))?;
            }
        }
        let loads = {
            let map = self.map("LB_WORKER_LOAD")?;
            let fd = match map {
                aya::maps::Map::Array(data) => data.fd().as_fd().try_clone_to_owned(),
                _ => return Err(SteeringError::Map("LB_WORKER_LOAD", "not an array".into())),
            }
            .map_err(|e| SteeringError::Map("LB_WORKER_LOAD", e.to_string()))?;
            load::WorkerLoads::map(fd, MAX_WORKERS as usize)
                .map_err(|e| SteeringError::Map("LB_WORKER_LOAD", e.to_string()))?
        };
        let prog: &mut SkReuseport = self
            .ebpf
            .program_mut("lb_reuseport")
            .ok_or_else(|| SteeringError::Load("no program lb_reuseport".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| SteeringError::Load(e.to_string()))?;
        prog.load()
            .map_err(|e| SteeringError::Load(e.to_string()))?;
        if let Some(first) = sockets.first() {
            // One socket of each group carries the program for the whole group.
            for sock in first {
                prog.attach(*sock)
                    .map_err(|e| SteeringError::Load(e.to_string()))?;
            }
        }
        Ok(loads)
    }

    /// Attaches the XDP program to `iface`.
    pub fn attach_xdp(&mut self, iface: &str, mode: XdpMode) -> Result<(), SteeringError> {
        let fd = link::create(self.program_fd()?, iface, mode)?;
        self.links.push((iface.to_string(), fd));
        Ok(())
    }

    /// Takes over `iface`'s XDP link from an old process (a binary upgrade): this program
    /// replaces the old one in one step, and the link is this process's from now on.
    pub fn take_over_xdp(
        &mut self,
        iface: &str,
        fd: std::os::fd::OwnedFd,
    ) -> Result<(), SteeringError> {
        link::update(fd.as_fd(), self.program_fd()?)?;
        self.links.push((iface.to_string(), fd));
        Ok(())
    }

    /// The SK_REUSEPORT socket array, to hand to a new process.
    pub fn socket_map(&self) -> Result<std::os::fd::BorrowedFd<'_>, SteeringError> {
        match self.ebpf.map("LB_SOCKETS") {
            Some(aya::maps::Map::ReusePortSockArray(data)) => Ok(data.fd().as_fd()),
            _ => Err(SteeringError::Map(
                "LB_SOCKETS",
                "not a socket array".into(),
            )),
        }
    }

    /// Takes every socket out of an old process's socket array (a binary upgrade): a socket
    /// is in one array at a time, and this process puts them in its own. Until its program
    /// replaces the old one, the kernel's own SO_REUSEPORT hashing picks for the keys taken.
    pub fn release_sockets_of(old: std::os::fd::BorrowedFd<'_>) {
        use lb_common::{MAX_LISTENERS, MAX_WORKERS};
        link::delete_keys(old, 0..MAX_LISTENERS * MAX_WORKERS);
    }

    /// Puts this process's steering back after a new process that took it over failed to
    /// start: this process's program on each group first, then `sockets` (`(listener,
    /// worker, socket)`) into this process's array. The failed process's program, attached
    /// to the groups, holds its array, and a socket is in one array at a time: only once
    /// this program replaced that one can the kernel free that array (shortly after), so
    /// each socket is tried again for up to two seconds. Meanwhile the kernel's own
    /// SO_REUSEPORT hashing picks among this process's sockets for the keys not yet back.
    pub fn reclaim_steering(
        &mut self,
        sockets: &[(u32, u32, std::os::fd::BorrowedFd<'_>)],
    ) -> Result<(), SteeringError> {
        use aya::maps::ReusePortSockArray;
        use aya::programs::SkReuseport;
        {
            let prog: &mut SkReuseport = self
                .ebpf
                .program_mut("lb_reuseport")
                .ok_or_else(|| SteeringError::Load("no program lb_reuseport".into()))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| SteeringError::Load(e.to_string()))?;
            for (_, w, sock) in sockets {
                if *w == 0 {
                    prog.attach(sock)
                        .map_err(|e| SteeringError::Load(e.to_string()))?;
                }
            }
        }
        let mut arr: ReusePortSockArray<_> = ReusePortSockArray::try_from(self.map("LB_SOCKETS")?)
            .map_err(|e| SteeringError::Map("LB_SOCKETS", e.to_string()))?;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        for (l, w, sock) in sockets {
            let key = l * lb_common::MAX_WORKERS + w;
            loop {
                match arr.set(key, sock, 0) {
                    Ok(()) => break,
                    Err(e) if std::time::Instant::now() > until => {
                        return Err(SteeringError::Map("LB_SOCKETS", e.to_string()))
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        }
        Ok(())
    }

    /// Each interface and its XDP link, to hand to a new process.
    pub fn xdp_links(&self) -> Vec<(String, std::os::fd::BorrowedFd<'_>)> {
        self.links
            .iter()
            .map(|(i, fd)| (i.clone(), fd.as_fd()))
            .collect()
    }

    /// Puts this process's program back on its links, after a new process that took them
    /// over failed to start.
    pub fn reclaim_xdp(&self) -> Result<(), SteeringError> {
        for (_, fd) in &self.links {
            link::update(fd.as_fd(), self.program_fd()?)?;
        }
        Ok(())
    }

    /// Replaces the deny list with `entries`.
    pub fn set_deny(&mut self, entries: &[(IpAddr, u32)]) -> Result<(), SteeringError> {
        for (addr, len) in self.deny_entries()? {
            self.allow(addr, len)?;
        }
        for (addr, len) in entries {
            self.deny(*addr, *len)?;
        }
        Ok(())
    }

    /// Every deny list entry.
    pub fn deny_entries(&self) -> Result<Vec<(IpAddr, u32)>, SteeringError> {
        let mut out = Vec::new();
        if let Some(m) = self.ebpf.map("LB_DENY_V4") {
            let trie: LpmTrie<_, [u8; 4], u8> = LpmTrie::try_from(m)
                .map_err(|e| SteeringError::Map("LB_DENY_V4", e.to_string()))?;
            for k in trie.keys().flatten() {
                out.push((IpAddr::from(k.data()), k.prefix_len()));
            }
        }
        if let Some(m) = self.ebpf.map("LB_DENY_V6") {
            let trie: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(m)
                .map_err(|e| SteeringError::Map("LB_DENY_V6", e.to_string()))?;
            for k in trie.keys().flatten() {
                out.push((IpAddr::from(k.data()), k.prefix_len()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Adds a source prefix to the deny list.
    pub fn deny(&mut self, addr: IpAddr, prefix_len: u32) -> Result<(), SteeringError> {
        match addr {
            IpAddr::V4(a) => {
                let mut trie: LpmTrie<_, [u8; 4], u8> = LpmTrie::try_from(self.map("LB_DENY_V4")?)
                    .map_err(|e| SteeringError::Map("LB_DENY_V4", e.to_string()))?;
                trie.insert(&Key::new(prefix_len.min(32), a.octets()), 1, 0)
                    .map_err(|e| SteeringError::Map("LB_DENY_V4", e.to_string()))
            }
            IpAddr::V6(a) => {
                let mut trie: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(self.map("LB_DENY_V6")?)
                    .map_err(|e| SteeringError::Map("LB_DENY_V6", e.to_string()))?;
                trie.insert(&Key::new(prefix_len.min(128), a.octets()), 1, 0)
                    .map_err(|e| SteeringError::Map("LB_DENY_V6", e.to_string()))
            }
        }
    }

    /// Removes a prefix from the deny list.
    pub fn allow(&mut self, addr: IpAddr, prefix_len: u32) -> Result<(), SteeringError> {
        let result = match addr {
            IpAddr::V4(a) => {
                let mut trie: LpmTrie<_, [u8; 4], u8> = LpmTrie::try_from(self.map("LB_DENY_V4")?)
                    .map_err(|e| SteeringError::Map("LB_DENY_V4", e.to_string()))?;
                trie.remove(&Key::new(prefix_len.min(32), a.octets()))
            }
            IpAddr::V6(a) => {
                let mut trie: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(self.map("LB_DENY_V6")?)
                    .map_err(|e| SteeringError::Map("LB_DENY_V6", e.to_string()))?;
                trie.remove(&Key::new(prefix_len.min(128), a.octets()))
            }
        };
        result.map_err(|e| SteeringError::Map("LB_DENY", e.to_string()))
    }

    /// Sets the SYN guard: new connections per second per source, and burst. 0 turns it off.
    pub fn set_syn_limit(&mut self, rate_per_sec: u64, burst: u64) -> Result<(), SteeringError> {
        let mut arr: Array<_, SynConfig> = Array::try_from(self.map("LB_SYN_CONFIG")?)
            .map_err(|e| SteeringError::Map("LB_SYN_CONFIG", e.to_string()))?;
        arr.set(
            0,
            SynConfig {
                rate_per_sec,
                burst,
            },
            0,
        )
        .map_err(|e| SteeringError::Map("LB_SYN_CONFIG", e.to_string()))
    }

    /// A counter summed over CPUs.
    pub fn counter(&self, c: Counter) -> Result<PacketCount, SteeringError> {
        let map = self
            .ebpf
            .map("LB_COUNTERS")
            .ok_or(SteeringError::Map("LB_COUNTERS", "missing".into()))?;
        let arr: PerCpuArray<_, PacketCount> = PerCpuArray::try_from(map)
            .map_err(|e| SteeringError::Map("LB_COUNTERS", e.to_string()))?;
        let values = arr
            .get(&(c as u32), 0)
            .map_err(|e| SteeringError::Map("LB_COUNTERS", e.to_string()))?;
        Ok(values
            .iter()
            .fold(PacketCount::default(), |acc, v| PacketCount {
                packets: acc.packets + v.packets,
                bytes: acc.bytes + v.bytes,
            }))
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, SteeringError> {
        self.ebpf
            .map_mut(name)
            .ok_or(SteeringError::Map(name, "missing from the object".into()))
    }
}
