//! The XDP program on packet fixtures through BPF_PROG_TEST_RUN: deny lists (v4, v6, VLAN),
//! truncated packets, the SYN limit, and counters. Needs root and the embedded eBPF object;
//! reported as skipped where either is missing (a failure under `LB_REQUIRE_TOOLS`).

mod common;

use std::net::IpAddr;

use lb::steering::{testrun, XdpFilter, XDP_OBJECT};
use lb_common::Counter;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn filter() -> Option<XdpFilter> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip("ebpf", "eBPF tests need root");
        return None;
    }
    if XDP_OBJECT.is_empty() {
        common::skip(
            "ebpf",
            "lb was built without its eBPF object (`cargo xtask build-ebpf`)",
        );
        return None;
    }
    Some(XdpFilter::load().expect("the XDP program loads and passes the verifier"))
}

fn eth(ethertype: u16, vlans: &[u16]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for &vid in vlans {
        p.extend_from_slice(&0x8100u16.to_be_bytes());
        p.extend_from_slice(&vid.to_be_bytes());
    }
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

fn tcp(flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&80u16.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t
}

fn ipv4(src: [u8; 4], vlans: &[u16], flags: u8) -> Vec<u8> {
    let mut p = eth(0x0800, vlans);
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&[10, 9, 9, 9]);
    p.extend_from_slice(&ip);
    p.extend_from_slice(&tcp(flags));
    p
}

fn ipv6(src: [u8; 16], flags: u8) -> Vec<u8> {
    let mut p = eth(0x86DD, &[]);
    let mut ip = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p.extend_from_slice(&ip);
    p.extend_from_slice(&tcp(flags));
    p
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn verdict(f: &XdpFilter, packet: &[u8]) -> u32 {
    testrun::run(f.program_fd().expect("fd"), packet, 1)
        .expect("BPF_PROG_TEST_RUN")
        .0
}

#[test]
fn deny_lists_drop_denied_sources_only() {
    let Some(mut f) = filter() else { return };
    f.deny("10.0.0.0".parse::<IpAddr>().unwrap(), 8).unwrap();
    f.deny("2001:db8::".parse::<IpAddr>().unwrap(), 32).unwrap();
    assert_eq!(verdict(&f, &ipv4([10, 1, 2, 3], &[], ACK)), XDP_DROP);
    assert_eq!(verdict(&f, &ipv4([192, 168, 1, 1], &[], ACK)), XDP_PASS);
    let denied6: [u8; 16] = "2001:db8::7"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    let allowed6: [u8; 16] = "2001:db9::7"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets();
    assert_eq!(verdict(&f, &ipv6(denied6, ACK)), XDP_DROP);
    assert_eq!(verdict(&f, &ipv6(allowed6, ACK)), XDP_PASS);
    // VLAN-tagged, once and twice (QinQ).
    assert_eq!(verdict(&f, &ipv4([10, 1, 2, 3], &[100], ACK)), XDP_DROP);
    assert_eq!(
        verdict(&f, &ipv4([10, 1, 2, 3], &[100, 200], ACK)),
        XDP_DROP
    );
    assert_eq!(verdict(&f, &ipv4([172, 16, 0, 1], &[100], ACK)), XDP_PASS);
    // Removing the entry lets the source in.
    f.allow("10.0.0.0".parse::<IpAddr>().unwrap(), 8).unwrap();
    assert_eq!(verdict(&f, &ipv4([10, 1, 2, 3], &[], ACK)), XDP_PASS);
    assert!(f.counter(Counter::DropDenied).unwrap().packets >= 4);
}

#[test]
fn truncated_and_unknown_packets_pass() {
    let Some(mut f) = filter() else { return };
    f.deny("10.0.0.0".parse::<IpAddr>().unwrap(), 8).unwrap();
    // Cut before the source address: nothing to judge, so it passes.
    let denied = ipv4([10, 1, 2, 3], &[], SYN);
    for cut in [14, 20, 25, 29] {
        assert_eq!(verdict(&f, &denied[..cut]), XDP_PASS, "cut at {cut} bytes");
    }
    // A SYN cut before its TCP flags passes even when the SYN guard would refuse it.
    f.set_syn_limit(1, 1).unwrap();
    let syn = ipv4([198, 51, 100, 1], &[], SYN);
    assert_eq!(verdict(&f, &syn), XDP_PASS, "first SYN");
    for cut in [34, 40, 46] {
        assert_eq!(verdict(&f, &syn[..cut]), XDP_PASS, "SYN cut at {cut} bytes");
    }
    assert_eq!(
        verdict(&f, &syn),
        XDP_DROP,
        "the whole second SYN is refused"
    );
    let mut arp = eth(0x0806, &[]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(verdict(&f, &arp), XDP_PASS);
    let mut bad_ihl = denied.clone();
    bad_ihl[14] = 0x41;
    assert_eq!(
        verdict(&f, &bad_ihl),
        XDP_PASS,
        "an IPv4 header length under 20 passes unparsed"
    );
    assert!(f.counter(Counter::PassUnparsed).unwrap().packets >= 8);
}

#[test]
fn syn_limit_drops_the_extra_syn_from_one_source_only() {
    let Some(mut f) = filter() else { return };
    // A burst of 3 new connections per source, then one per second.
    f.set_syn_limit(1, 3).unwrap();
    let a = [203, 0, 113, 7];
    let b = [203, 0, 113, 8];
    for i in 0..3 {
        assert_eq!(
            verdict(&f, &ipv4(a, &[], SYN)),
            XDP_PASS,
            "SYN {i} within the burst"
        );
    }
    assert_eq!(verdict(&f, &ipv4(a, &[], SYN)), XDP_DROP, "the (N+1)th SYN");
    assert_eq!(
        verdict(&f, &ipv4(a, &[], SYN | ACK)),
        XDP_PASS,
        "SYN-ACKs are not new connections"
    );
    assert_eq!(
        verdict(&f, &ipv4(a, &[], ACK)),
        XDP_PASS,
        "established traffic passes"
    );
    assert_eq!(
        verdict(&f, &ipv4(b, &[], SYN)),
        XDP_PASS,
        "another source has its own bucket"
    );
    assert!(f.counter(Counter::DropSynFlood).unwrap().packets >= 1);
}
