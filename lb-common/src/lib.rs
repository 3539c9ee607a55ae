//! Types shared by the kernel-side programs (`lb-ebpf`) and user space (`lb-userspace`).
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`, so that the layout the
//! verifier sees and the layout user space writes into maps are the same bytes.
#![no_std]

/// What the XDP program counts, as indexes into its per-CPU counter array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets passed to the stack.
    Pass = 0,
    /// Packets dropped because the source is in a deny list.
    DropDenied = 1,
    /// SYNs dropped by the per-source SYN token bucket.
    DropSynFlood = 2,
    /// Packets passed because they could not be parsed (truncated, unknown protocol).
    PassUnparsed = 3,
    /// TCP packets handed to the CPU of their worker through the CPU map.
    Redirect = 4,
}

/// Number of [`Counter`] slots.
pub const COUNTERS: u32 = 5;

/// One per-CPU counter slot: packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}

/// Per-source SYN token bucket state (LRU hash map value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynBucket {
    /// Tokens, scaled by [`TOKEN_SCALE`].
    pub tokens: u64,
    /// Last refill, in nanoseconds of `bpf_ktime_get_ns`.
    pub last_ns: u64,
}

/// Tokens are kept in thousandths so refills of less than one token add up.
pub const TOKEN_SCALE: u64 = 1000;

/// SYN guard settings (array map, index 0). `rate_per_sec` of 0 turns the guard off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynConfig {
    pub rate_per_sec: u64,
    pub burst: u64,
}

/// Source address key of the SYN buckets: IPv4 addresses are mapped into IPv6 form.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
}

/// Most workers SK_REUSEPORT steering can choose between, per listener.
pub const MAX_WORKERS: u32 = 64;
/// Most listeners (SO_REUSEPORT groups) steered at once.
pub const MAX_LISTENERS: u32 = 8;

/// SK_REUSEPORT policies.
pub const POLICY_CPU: u32 = 0;
pub const POLICY_HASH: u32 = 1;
pub const POLICY_LEAST_LOADED: u32 = 2;

/// SK_REUSEPORT settings (array map, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerConfig {
    /// Workers, each with one socket per listener at index `listener * MAX_WORKERS + worker`.
    pub workers: u32,
    pub policy: u32,
    pub listeners: u32,
    /// Non-zero: XDP hands each TCP flow to CPU `flow hash % workers` (the CPU of that
    /// worker) through the CPU map.
    pub cpu_redirect: u32,
}

/// Per-worker load as the workers publish it for the `least_loaded` SK_REUSEPORT policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerLoad {
    /// Connections the worker currently holds open.
    pub active_connections: u32,
    /// Explicit padding so the value is 8 bytes on every target.
    pub _pad: u32,
}

// SAFETY: plain `#[repr(C)]` integers with explicit padding: any bit pattern is valid and
// there are no implicit padding bytes.
#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::PacketCount {}
    unsafe impl aya::Pod for super::SynBucket {}
    unsafe impl aya::Pod for super::SynConfig {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::WorkerLoad {}
    unsafe impl aya::Pod for super::SteerConfig {}
}
