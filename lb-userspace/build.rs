//! Embeds the eBPF object built by `cargo xtask build-ebpf`, if there is one. Without it the
//! binary still builds and runs on plain SO_REUSEPORT, and says so when asked to load eBPF.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let object = std::env::var_os("LB_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/ebpf/lb-xdp.o"));
    println!("cargo:rerun-if-env-changed=LB_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let bytes = std::fs::read(&object).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=no eBPF object at {}: run `cargo xtask build-ebpf` to embed the XDP program",
            object.display()
        );
    }
    std::fs::write(out.join("lb-xdp.o"), bytes).expect("write embedded eBPF object");
}
