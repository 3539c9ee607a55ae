//! The XDP program's cost per packet, for a pass and for a drop, measured in the kernel with
//! BPF_PROG_TEST_RUN and a repeat count. Needs root and the embedded eBPF object.

use std::net::IpAddr;

use lb::steering::{testrun, XdpFilter, XDP_OBJECT};

fn packet(src: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    p.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&[10, 9, 9, 9]);
    let mut tcp = vec![0u8; 20];
    tcp[12] = 5 << 4;
    tcp[13] = 0x10;
    p.extend_from_slice(&tcp);
    p
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || XDP_OBJECT.is_empty() {
        println!("xdp bench skipped: needs root and the eBPF object (`cargo xtask build-ebpf`)");
        return;
    }
    let mut f = match XdpFilter::load() {
        Ok(f) => f,
        Err(e) => {
            println!("xdp bench skipped: {e}");
            return;
        }
    };
    if let Err(e) = f.deny("10.0.0.0".parse::<IpAddr>().expect("ip"), 8) {
        println!("xdp bench skipped: {e}");
        return;
    }
    let fd = match f.program_fd() {
        Ok(fd) => fd,
        Err(e) => {
            println!("xdp bench skipped: {e}");
            return;
        }
    };
    const REPEAT: u32 = 2_000_000;
    for (name, src) in [
        ("pass", [192, 168, 1, 1]),
        ("drop (denied source)", [10, 1, 2, 3]),
    ] {
        let p = packet(src);
        let mut best = u32::MAX;
        for _ in 0..5 {
            match testrun::run(fd, &p, REPEAT) {
                Ok((_, ns)) => best = best.min(ns),
                Err(e) => {
                    println!("xdp bench: test run failed: {e}");
                    return;
                }
            }
        }
        let mpps = 1e3 / best.max(1) as f64;
        println!(
            "xdp {name:<22} {best:>4} ns/packet  {mpps:>6.1} Mpps per core (best of 5 x {REPEAT})"
        );
    }
}
