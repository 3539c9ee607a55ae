//! `BPF_PROG_TEST_RUN`: runs a loaded program on a packet in the kernel, for fixtures and
//! for measuring its cost per packet.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `BPF_PROG_TEST_RUN` from `linux/bpf.h`.
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`, zero-padded to the union's size.
#[repr(C, align(8))]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: [u8; 52],
}

/// The program's verdict for `packet`, and the average run time in nanoseconds over
/// `repeat` runs.
pub fn run(prog: BorrowedFd<'_>, packet: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        retval: 0,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        duration: 0,
        ctx_size_in: 0,
        ctx_size_out: 0,
        ctx_in: 0,
        ctx_out: 0,
        flags: 0,
        cpu: 0,
        batch_size: 0,
        _pad: [0; 52],
    };
    // SAFETY: `attr` is a valid, fully initialised bpf_attr for this command; the data
    // pointers point at live buffers of the sizes given, which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((attr.retval, attr.duration))
}
