//! The workers' load table, shared with the SK_REUSEPORT program through a memory-mapped
//! array map: the program adds one when it sends a connection to a worker, the worker
//! subtracts one when the connection closes. No syscall on either side.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};

/// Each entry is a `lb_common::WorkerLoad`: the count, then padding.
const ENTRY: usize = 8;

/// The mapped table.
pub struct WorkerLoads {
    ptr: *mut u8,
    len: usize,
    entries: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is shared memory accessed only through atomics, and it lives as long
// as this value (unmapped in Drop).
unsafe impl Send for WorkerLoads {}
unsafe impl Sync for WorkerLoads {}

impl WorkerLoads {
    /// Maps the array map behind `fd` (created with BPF_F_MMAPABLE) of `entries` entries.
    pub fn map(fd: OwnedFd, entries: usize) -> io::Result<WorkerLoads> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (entries * ENTRY).div_ceil(page) * page;
        // SAFETY: mapping a BPF map fd shared and read-write at offset 0 with its own size;
        // the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(WorkerLoads {
            ptr: ptr.cast(),
            len,
            entries,
            _fd: fd,
        })
    }

    fn slot(&self, worker: usize) -> Option<&AtomicU32> {
        if worker >= self.entries {
            return None;
        }
        // SAFETY: in bounds of the mapping, 4-byte aligned (entries are 8 bytes from a page
        // boundary), and only ever accessed atomically.
        Some(unsafe { AtomicU32::from_ptr(self.ptr.add(worker * ENTRY).cast()) })
    }

    /// One of `worker`'s connections closed (never below zero).
    pub fn closed(&self, worker: usize) {
        if let Some(s) = self.slot(worker) {
            let _ = s.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }

    /// Open connections the kernel has sent to `worker` and that have not closed.
    pub fn get(&self, worker: usize) -> u32 {
        self.slot(worker).map_or(0, |s| s.load(Ordering::Relaxed))
    }
}

impl Drop for WorkerLoads {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mapped in `map`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}
