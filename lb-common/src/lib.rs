//! Types shared by the kernel-side programs (`lb-ebpf`) and user space (`lb-userspace`).
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`, so that the layout the
//! verifier sees and the layout user space writes into maps are the same bytes.
#![no_std]

/// Why the XDP program dropped a packet; the index into the per-CPU drop counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The source address is in a deny list.
    Denied = 0,
    /// The source sent more new connections than its SYN token bucket allows.
    SynFlood = 1,
}

/// Number of [`DropReason`] variants: the size of the drop counter array.
pub const DROP_REASONS: u32 = 2;

/// Per-worker load as the workers publish it for the `least_loaded` SK_REUSEPORT policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerLoad {
    /// Connections the worker currently holds open.
    pub active_connections: u32,
    /// Explicit padding so the value is 8 bytes on every target.
    pub _pad: u32,
}
