//! The kernel half in user space: loading the XDP program, its maps, and running it on test
//! packets through `BPF_PROG_TEST_RUN`.

pub mod testrun;

use std::net::IpAddr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, PerCpuArray};
use aya::programs::Xdp;
use aya::Ebpf;
use lb_common::{Counter, PacketCount, SynConfig};
use thiserror::Error;

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

/// The loaded XDP program and its maps.
pub struct XdpFilter {
    ebpf: Ebpf,
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
        Ok(XdpFilter { ebpf })
    }

    /// The program's file descriptor, for test runs.
    pub fn program_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, SteeringError> {
        let prog: &Xdp = self
            .ebpf
            .program("lb_xdp")
            .ok_or_else(|| SteeringError::Load("no program lb_xdp".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| SteeringError::Load(e.to_string()))?;
        use std::os::fd::AsFd;
        prog.fd()
            .map(|fd| fd.as_fd())
            .map_err(|e| SteeringError::Load(e.to_string()))
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
