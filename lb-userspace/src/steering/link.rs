//! XDP attachments as bpf links that this process holds by descriptor (`BPF_LINK_CREATE`
//! for XDP needs Linux 5.9 or later). A binary upgrade
//! hands the descriptor to the new process, which swaps its own program in with one
//! `BPF_LINK_UPDATE`: the interface is never without a program, and the old process's exit
//! (closing its copy) detaches nothing. The SK_REUSEPORT socket array goes the same way: a
//! socket can be in one such array at a time, so the new process takes the sockets out of the
//! old process's array before it puts them in its own.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::{SteeringError, XdpMode};

/// `bpf(2)` commands and the XDP attach type, from the kernel's UAPI.
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_SKB_MODE` and `XDP_FLAGS_DRV_MODE`.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The head of `union bpf_attr` as `link_create` and `link_update` lay it out (four 32-bit
/// fields), and zeroes for the rest, which the kernel requires of fields it does not use.
#[repr(C)]
#[derive(Default)]
struct Attr {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    rest: [u64; 12],
}

fn bpf(cmd: libc::c_long, attr: &Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised buffer of the size passed, laid out as the
    // command expects; the kernel only reads it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Attaches `prog` to `iface` as a new link; the link lasts while its descriptor is open.
pub fn create(prog: BorrowedFd<'_>, iface: &str, mode: XdpMode) -> Result<OwnedFd, SteeringError> {
    let name = std::ffi::CString::new(iface)
        .map_err(|_| SteeringError::Load(format!("bad interface name {iface:?}")))?;
    // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(SteeringError::Load(format!("no interface named {iface}")));
    }
    let flags = match mode {
        XdpMode::Auto => 0,
        XdpMode::Native => XDP_FLAGS_DRV_MODE,
        XdpMode::Generic => XDP_FLAGS_SKB_MODE,
    };
    let attr = Attr {
        a: prog.as_raw_fd() as u32,
        b: index,
        c: BPF_XDP,
        d: flags,
        ..Attr::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &attr)
        .map_err(|e| SteeringError::Load(format!("attaching XDP to {iface}: {e}")))?;
    // SAFETY: BPF_LINK_CREATE returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Replaces the program of `link` with `prog`, atomically.
pub fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> Result<(), SteeringError> {
    let attr = Attr {
        a: link.as_raw_fd() as u32,
        b: prog.as_raw_fd() as u32,
        ..Attr::default()
    };
    bpf(BPF_LINK_UPDATE, &attr)
        .map(|_| ())
        .map_err(|e| SteeringError::Load(format!("replacing the XDP program: {e}")))
}

/// `union bpf_attr` as the map element commands lay it out, and zeroes after.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
    rest: [u64; 10],
}

/// Removes `keys` from the map `map` (absent keys are fine).
pub fn delete_keys(map: BorrowedFd<'_>, keys: impl Iterator<Item = u32>) {
    for key in keys {
        let attr = MapElemAttr {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            ..MapElemAttr::default()
        };
        // SAFETY: `attr` is laid out as BPF_MAP_DELETE_ELEM expects and points at `key`,
        // which lives through the call; the kernel only reads both.
        let _ = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_DELETE_ELEM,
                &attr as *const MapElemAttr,
                std::mem::size_of::<MapElemAttr>(),
            )
        };
    }
}
