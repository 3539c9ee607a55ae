//! Client connections waiting for their next request, and the deadlines of those waits.
//!
//! A waiting connection holds no timer of its own: a per-connection timer future costs more
//! memory than the rest of an idle connection together (monoio's `Sleep` is 640 bytes,
//! aligned to 128). The worker keeps one ordered set of deadlines instead, and a sweep every
//! [`SWEEP_EVERY`] shuts the read side of each socket whose wait is over. That makes the
//! socket readable (end of stream), which ends the wait; [`IdleSet::leave`] then reports
//! whether the wait expired. A drain ends every wait the same way.

use std::collections::BTreeSet;
use std::os::fd::RawFd;

/// How often expired waits are ended; a wait lasts at most this much longer than asked.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

struct Entry {
    fd: RawFd,
    /// `clock::now_ms` milliseconds.
    deadline: u64,
    expired: bool,
}

/// The waiting connections of one worker.
#[derive(Default)]
pub struct IdleSet {
    entries: slab::Slab<Entry>,
    /// (deadline, key), earliest first.
    order: BTreeSet<(u64, usize)>,
}

impl IdleSet {
    /// Registers a wait on `fd` that should end at `deadline` (milliseconds of
    /// `clock::now_ms`). Pass the key to [`IdleSet::leave`] before the socket can close.
    pub fn enter(&mut self, fd: RawFd, deadline: u64) -> usize {
        let key = self.entries.insert(Entry {
            fd,
            deadline,
            expired: false,
        });
        self.order.insert((deadline, key));
        key
    }

    /// Ends a wait; true if it expired (its socket's read side has been shut).
    pub fn leave(&mut self, key: usize) -> bool {
        match self.entries.try_remove(key) {
            Some(e) => {
                if !e.expired {
                    self.order.remove(&(e.deadline, key));
                }
                e.expired
            }
            None => false,
        }
    }

    /// Marks every wait whose deadline is at or before `now` as expired and returns their
    /// sockets, to be shut by the caller.
    pub fn expire(&mut self, now: u64) -> Vec<RawFd> {
        let mut due = Vec::new();
        while let Some(&(deadline, key)) = self.order.first() {
            if deadline > now {
                break;
            }
            self.order.pop_first();
            if let Some(e) = self.entries.get_mut(key) {
                e.expired = true;
                due.push(e.fd);
            }
        }
        due
    }

    /// Every socket still waiting (for a drain).
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.entries.iter().map(|(_, e)| e.fd)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Shuts the read side of a waiting connection's socket, which ends its wait.
pub fn wake(fd: RawFd) {
    // SAFETY: `fd` belongs to a connection task that registered it and is still waiting (it
    // leaves the set before its socket can close); shutdown neither closes nor invalidates
    // the descriptor.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_expire_in_deadline_order_and_only_once() {
        let mut s = IdleSet::default();
        let a = s.enter(10, 300);
        let b = s.enter(11, 100);
        let c = s.enter(12, 200);
        assert!(s.expire(99).is_empty());
        assert_eq!(s.expire(200), vec![11, 12]);
        assert!(s.expire(250).is_empty(), "an expired wait is reported once");
        assert!(s.leave(b));
        assert!(s.leave(c));
        assert!(!s.leave(a), "a wait that ended in time did not expire");
        assert!(s.expire(1000).is_empty(), "a wait that left is forgotten");
        assert!(s.is_empty());
    }

    #[test]
    fn reused_keys_keep_their_own_deadline() {
        let mut s = IdleSet::default();
        let a = s.enter(10, 100);
        assert!(!s.leave(a));
        let b = s.enter(11, 500);
        assert_eq!(a, b, "the slab reuses the key");
        assert!(
            s.expire(100).is_empty(),
            "the old deadline left with the old wait"
        );
        assert_eq!(s.expire(500), vec![11]);
        assert_eq!(s.fds().count(), 1);
        assert!(s.leave(b));
        assert_eq!(s.len(), 0);
    }
}
