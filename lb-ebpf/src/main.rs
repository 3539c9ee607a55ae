//! `lb_xdp`: the XDP program in front of lb's listeners.
//!
//! It parses Ethernet (with up to two VLAN tags), IPv4, IPv6 and TCP with bounds checks the
//! verifier accepts; drops sources in the deny lists (LPM tries, v4 and v6); drops SYNs over
//! a per-source token bucket; counts packets and bytes by verdict in per-CPU maps; and passes
//! everything else untouched. Anything it cannot parse passes.
#![no_std]
#![no_main]
// Atomic add on a map value: the bpfel target's `core` has no atomic types, only the intrinsic.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::bindings::{sk_action, xdp_action};
use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns};
use aya_ebpf::macros::{map, sk_reuseport, xdp};
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::maps::{Array, CpuMap, LpmTrie, LruHashMap, PerCpuArray, ReusePortSockArray};
use aya_ebpf::programs::{SkReuseportContext, XdpContext};
use lb_common::{
    Counter, PacketCount, SourceKey, SteerConfig, SynBucket, SynConfig, WorkerLoad, COUNTERS,
    MAX_LISTENERS, MAX_WORKERS, POLICY_CPU, POLICY_HASH, POLICY_LEAST_LOADED, TOKEN_SCALE,
};

/// No preallocation: LPM tries require it.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map]
static LB_DENY_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(65_536, BPF_F_NO_PREALLOC);

#[map]
static LB_DENY_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(65_536, BPF_F_NO_PREALLOC);

#[map]
static LB_SYN_BUCKETS: LruHashMap<SourceKey, SynBucket> = LruHashMap::with_max_entries(262_144, 0);

#[map]
static LB_SYN_CONFIG: Array<SynConfig> = Array::with_max_entries(1, 0);

#[map]
static LB_COUNTERS: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(COUNTERS, 0);

#[map]
static LB_SOCKETS: ReusePortSockArray =
    ReusePortSockArray::with_max_entries(MAX_WORKERS * MAX_LISTENERS, 0);

#[map]
static LB_STEER: Array<SteerConfig> = Array::with_max_entries(1, 0);

/// CPU map for handing flows to their worker's CPU, by CPU number.
#[map]
static LB_CPUS: CpuMap = CpuMap::with_max_entries(MAX_WORKERS, 0);

/// Open connections per worker. Memory-mapped by user space: this program adds one when it
/// picks a worker (so a burst of SYNs sees its own choices), workers subtract one when a
/// connection closes.
#[map]
static LB_WORKER_LOAD: Array<WorkerLoad> = Array::with_max_entries(MAX_WORKERS, BPF_F_MMAPABLE);

const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Chooses the worker socket for a new connection, by the configured policy. If nothing
/// can be chosen the kernel's own hash decides.
#[sk_reuseport]
pub fn lb_reuseport(ctx: SkReuseportContext) -> u32 {
    let Some(cfg) = LB_STEER.get(0) else {
        return sk_action::SK_PASS;
    };
    let workers = cfg.workers;
    if workers == 0 || workers > MAX_WORKERS {
        return sk_action::SK_PASS;
    }
    let worker = match cfg.policy {
        // SAFETY: a BPF helper with no arguments.
        POLICY_CPU => (unsafe { bpf_get_smp_processor_id() })
            .checked_rem(workers)
            .unwrap_or(0),
        POLICY_HASH => ctx.hash().checked_rem(workers).unwrap_or(0),
        POLICY_LEAST_LOADED => {
            let w = least_loaded(workers, ctx.hash());
            if let Some(load) = LB_WORKER_LOAD.get_ptr_mut(w) {
                // SAFETY: a valid pointer to the map value; the field is 4-byte aligned, and
                // the add is atomic against other CPUs and user space.
                unsafe {
                    core::intrinsics::atomic_xadd::<
                        u32,
                        u32,
                        { core::intrinsics::AtomicOrdering::Relaxed },
                    >(core::ptr::addr_of_mut!((*load).active_connections), 1);
                }
            }
            w
        }
        _ => return sk_action::SK_PASS,
    };
    // The packet belongs to one listener's group; the socket of another group is refused by
    // the kernel, so try each listener's slot for this worker until one is accepted.
    let mut l = 0;
    while l < MAX_LISTENERS {
        if l >= cfg.listeners {
            break;
        }
        if LB_SOCKETS
            .select_reuseport(&ctx, l * MAX_WORKERS + worker)
            .is_ok()
        {
            return sk_action::SK_PASS;
        }
        l += 1;
    }
    sk_action::SK_PASS
}

/// The worker with the fewest open connections; ties start from the flow hash so that
/// equally loaded workers share new connections.
#[inline(always)]
fn least_loaded(workers: u32, hash: u32) -> u32 {
    // No `%`: a division the verifier cannot prove non-zero pulls in a panic path.
    let start = hash.checked_rem(workers).unwrap_or(0);
    let mut best = start;
    let mut best_load = u32::MAX;
    let mut i = 0;
    while i < MAX_WORKERS {
        if i >= workers {
            break;
        }
        let mut w = start + i;
        if w >= workers {
            w -= workers;
        }
        if let Some(load) = LB_WORKER_LOAD.get(w) {
            if load.active_connections < best_load {
                best_load = load.active_connections;
                best = w;
            }
        }
        i += 1;
    }
    best
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (action, counter) = match try_lb_xdp(&ctx) {
        Ok(verdict) => verdict,
        Err(()) => (xdp_action::XDP_PASS, Counter::PassUnparsed),
    };
    count(counter, len);
    action
}

/// The one bounds-checked way to read packet bytes.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn read_u16_be(ctx: &XdpContext, offset: usize) -> Result<u16, ()> {
    let p: *const [u8; 2] = ptr_at(ctx, offset)?;
    // SAFETY: `ptr_at` checked that both bytes are inside the packet.
    let b = unsafe { *p };
    Ok(u16::from_be_bytes(b))
}

#[inline(always)]
fn read_u8(ctx: &XdpContext, offset: usize) -> Result<u8, ()> {
    let p: *const u8 = ptr_at(ctx, offset)?;
    // SAFETY: `ptr_at` checked the byte is inside the packet.
    Ok(unsafe { *p })
}

#[inline(always)]
fn try_lb_xdp(ctx: &XdpContext) -> Result<(u32, Counter), ()> {
    let mut proto = read_u16_be(ctx, 12)?;
    let mut off = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, 802.1ad QinQ).
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = read_u16_be(ctx, off + 2)?;
        off += 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = read_u16_be(ctx, off + 2)?;
            off += 4;
        }
    }
    let pass = Ok((xdp_action::XDP_PASS, Counter::Pass));
    let drop_denied = Ok((xdp_action::XDP_DROP, Counter::DropDenied));
    match proto {
        ETH_P_IP => {
            let vihl = read_u8(ctx, off)?;
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(());
            }
            let src_ptr: *const [u8; 4] = ptr_at(ctx, off + 12)?;
            // SAFETY: bounds checked by `ptr_at`.
            let src = unsafe { *src_ptr };
            if LB_DENY_V4.get(&Key::new(32, src)).is_some() {
                return drop_denied;
            }
            if read_u8(ctx, off + 9)? == IPPROTO_TCP {
                let verdict = {
                    let mut mapped = [0u8; 16];
                    mapped[10] = 0xff;
                    mapped[11] = 0xff;
                    mapped[12] = src[0];
                    mapped[13] = src[1];
                    mapped[14] = src[2];
                    mapped[15] = src[3];
                    syn_guard(ctx, off + ihl, mapped)?
                };
                return Ok(steer(ctx, off + ihl, verdict, u32::from_ne_bytes(src)));
            }
            pass
        }
        ETH_P_IPV6 => {
            let src_ptr: *const [u8; 16] = ptr_at(ctx, off + 8)?;
            // SAFETY: bounds checked by `ptr_at`.
            let src = unsafe { *src_ptr };
            if LB_DENY_V6.get(&Key::new(128, src)).is_some() {
                return drop_denied;
            }
            // Extension headers are not walked: TCP right after the fixed header only.
            if read_u8(ctx, off + 6)? == IPPROTO_TCP {
                let verdict = syn_guard(ctx, off + 40, src)?;
                let folded = u32::from_ne_bytes([src[12], src[13], src[14], src[15]])
                    ^ u32::from_ne_bytes([src[8], src[9], src[10], src[11]]);
                return Ok(steer(ctx, off + 40, verdict, folded));
            }
            pass
        }
        _ => pass,
    }
}

/// Hands a passed TCP packet to its flow's worker CPU when CPU steering is on.
#[inline(always)]
fn steer(ctx: &XdpContext, tcp: usize, verdict: (u32, Counter), src: u32) -> (u32, Counter) {
    if verdict.0 != xdp_action::XDP_PASS {
        return verdict;
    }
    let Some(cfg) = LB_STEER.get(0) else {
        return verdict;
    };
    if cfg.cpu_redirect == 0 || cfg.workers == 0 {
        return verdict;
    }
    let Ok(ports) = ptr_at::<[u8; 4]>(ctx, tcp) else {
        return verdict;
    };
    // SAFETY: bounds checked by `ptr_at`.
    let ports = u32::from_ne_bytes(unsafe { *ports });
    // A flow's packets always go to the same CPU (both ports and the source address).
    let mut h = src ^ ports.rotate_left(16);
    h ^= h >> 16;
    h = h.wrapping_mul(0x45d9_f3b);
    h ^= h >> 16;
    let cpu = h.checked_rem(cfg.workers).unwrap_or(0);
    match LB_CPUS.redirect(cpu, 0) {
        Ok(action) => (action, Counter::Redirect),
        Err(_) => verdict,
    }
}

/// Drops a new connection (SYN without ACK) when its source is out of tokens.
#[inline(always)]
fn syn_guard(ctx: &XdpContext, tcp: usize, src: [u8; 16]) -> Result<(u32, Counter), ()> {
    let flags = read_u8(ctx, tcp + 13)?;
    if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
        return Ok((xdp_action::XDP_PASS, Counter::Pass));
    }
    let Some(cfg) = LB_SYN_CONFIG.get(0) else {
        return Ok((xdp_action::XDP_PASS, Counter::Pass));
    };
    if cfg.rate_per_sec == 0 {
        return Ok((xdp_action::XDP_PASS, Counter::Pass));
    }
    let burst = cfg.burst.max(1) * TOKEN_SCALE;
    // SAFETY: a BPF helper with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = SourceKey { addr: src };
    match LB_SYN_BUCKETS.get_ptr_mut(&key) {
        None => {
            let fresh = SynBucket {
                tokens: burst - TOKEN_SCALE,
                last_ns: now,
            };
            let _ = LB_SYN_BUCKETS.insert(&key, &fresh, 0);
            Ok((xdp_action::XDP_PASS, Counter::Pass))
        }
        Some(b) => {
            // SAFETY: the map returned a valid pointer to this entry's value.
            let b = unsafe { &mut *b };
            // At most 10 s of refill, so the multiplication cannot overflow.
            let elapsed = (now.saturating_sub(b.last_ns)).min(10_000_000_000);
            let refill = elapsed / 1_000_000 * cfg.rate_per_sec * TOKEN_SCALE / 1_000;
            let tokens = (b.tokens + refill).min(burst);
            b.last_ns = now;
            if tokens >= TOKEN_SCALE {
                b.tokens = tokens - TOKEN_SCALE;
                Ok((xdp_action::XDP_PASS, Counter::Pass))
            } else {
                b.tokens = tokens;
                Ok((xdp_action::XDP_DROP, Counter::DropSynFlood))
            }
        }
    }
}

#[inline(always)]
fn count(c: Counter, bytes: u64) {
    if let Some(slot) = LB_COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: per-CPU slot of this CPU; nothing else writes it concurrently.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += bytes;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 4] = *b"GPL\0";
