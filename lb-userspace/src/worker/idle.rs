//! Client connections waiting for their next request, parked without a task.
//!
//! A keep-alive connection spends most of its life between requests. Parked, it is a record
//! in this worker's slab (its socket, peer, accounting and deadline: about a hundred bytes)
//! and an entry in the worker's epoll set, which lives in the kernel. No task, future, buffer
//! or timer is kept for it. One parker task per worker waits for the epoll descriptor to turn
//! readable, collects the ready sockets and starts a connection task for each. A sweep every
//! [`SWEEP_EVERY`] closes the sockets whose wait ran out (the idle timeout between requests,
//! the header timeout before the first), and a drain closes them all.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;

use super::{ConnGuard, Worker};

/// How often expired waits are ended; a wait lasts at most this much longer than asked.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Ready sockets collected per `epoll_wait`.
const EVENTS: usize = 64;

/// One parked connection; `G` is its worker accounting ([`ConnGuard`]).
pub struct Parked<G = ConnGuard> {
    pub fd: OwnedFd,
    pub peer: SocketAddr,
    pub guard: G,
    /// `clock::now_ms` milliseconds.
    deadline: u64,
    /// No request has been served on it yet (the header timeout applies).
    pub first: bool,
}

/// The parked connections of one worker.
pub struct IdleSet<G = ConnGuard> {
    epoll: OwnedFd,
    entries: slab::Slab<Parked<G>>,
    /// (deadline, key), earliest first.
    order: BTreeSet<(u64, usize)>,
}

impl<G> IdleSet<G> {
    pub fn new() -> std::io::Result<IdleSet<G>> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(IdleSet {
            // SAFETY: `fd` is a new descriptor owned by nothing else.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            entries: slab::Slab::new(),
            order: BTreeSet::new(),
        })
    }

    /// The epoll descriptor, readable when a parked socket is.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Parks a connection until its socket is readable or `deadline` passes. On failure the
    /// record comes back; the caller closes the connection.
    pub fn park(
        &mut self,
        fd: OwnedFd,
        peer: SocketAddr,
        guard: G,
        first: bool,
        deadline: u64,
    ) -> Result<(), Box<Parked<G>>> {
        let entry = self.entries.vacant_entry();
        let key = entry.key();
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: key as u64,
        };
        // SAFETY: both descriptors are open; `ev` outlives the call.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        let parked = Parked {
            fd,
            peer,
            guard,
            deadline,
            first,
        };
        if rc != 0 {
            return Err(Box::new(parked));
        }
        entry.insert(parked);
        self.order.insert((deadline, key));
        Ok(())
    }

    /// Takes back a parked connection whose socket turned readable.
    fn unpark(&mut self, key: usize) -> Option<Parked<G>> {
        let p = self.entries.try_remove(key)?;
        self.order.remove(&(p.deadline, key));
        // SAFETY: both descriptors are open; a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                p.fd.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
        Some(p)
    }

    /// Removes every connection whose deadline is at or before `now`, for the caller to
    /// close (closing a socket also takes it out of the epoll set).
    pub fn expire(&mut self, now: u64) -> Vec<Parked<G>> {
        let mut due = Vec::new();
        while let Some(&(deadline, key)) = self.order.first() {
            if deadline > now {
                break;
            }
            self.order.pop_first();
            if let Some(p) = self.entries.try_remove(key) {
                due.push(p);
            }
        }
        due
    }

    /// Removes every parked connection (a drain), for the caller to close.
    pub fn take_all(&mut self) -> Vec<Parked<G>> {
        self.order.clear();
        self.entries.drain().collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The parked connections whose sockets are readable now, without waiting.
    fn ready(&mut self) -> Vec<Parked<G>> {
        let mut out = Vec::new();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        loop {
            // SAFETY: `events` has room for EVENTS entries; timeout 0 never blocks.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    EVENTS as i32,
                    0,
                )
            };
            if n <= 0 {
                break;
            }
            for ev in &events[..n as usize] {
                if let Some(p) = self.unpark(ev.u64 as usize) {
                    out.push(p);
                }
            }
            // An edge-triggered waiter (the epoll driver) sees no new edge for events left
            // behind: take them all.
            if (n as usize) < EVENTS {
                break;
            }
        }
        out
    }
}

/// Waits for parked sockets to turn readable and starts a connection task for each.
pub async fn run_parker(w: Rc<Worker>) {
    // The epoll descriptor waits in the runtime like a socket: readiness is all it is asked.
    let epfd = {
        let fd = w.idle.borrow().epoll_fd();
        // SAFETY: dup gives this wrapper its own descriptor to close.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            tracing::error!(error = %std::io::Error::last_os_error(), "cannot wait on the idle set; idle connections will only close");
            return;
        }
        // SAFETY: `dup` is a new descriptor owned by nothing else. It is not a TCP socket,
        // but only readiness waits are made on it.
        let std = unsafe { std::net::TcpStream::from_raw_fd(dup) };
        match monoio::net::TcpStream::from_std(std) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot wait on the idle set; idle connections will only close");
                return;
            }
        }
    };
    while !w.draining() {
        // A drain ends the wait: no operation may stay pending when the ring is torn down (a
        // pending one keeps the worker's sockets alive in the kernel for a while after exit).
        let readable = monoio::select! {
            r = epfd.readable(false) => r.is_ok(),
            _ = w.drain_signal() => false,
        };
        if !readable || w.draining() {
            break;
        }
        let ready = w.idle.borrow_mut().ready();
        for p in ready {
            resume(p, &w);
        }
    }
}

/// Gives a parked connection whose socket turned readable its task back.
pub(super) fn resume(p: Parked, w: &Rc<Worker>) {
    let Parked {
        fd,
        peer,
        guard,
        first,
        deadline,
    } = p;
    // SAFETY: `fd` is the connection's socket, owned by the record until now.
    let std = unsafe { std::net::TcpStream::from_raw_fd(fd.into_raw_fd()) };
    match monoio::net::TcpStream::from_std(std) {
        Ok(stream) => {
            w.resume(stream, peer, guard, first.then_some(deadline));
        }
        Err(e) => {
            tracing::debug!(worker = w.id, error = %e, "could not resume an idle connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for a connection's accounting: counts how many were given back.
    struct Token(std::rc::Rc<std::cell::Cell<u32>>);

    impl Drop for Token {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    fn socket_pair() -> (OwnedFd, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        (a.into(), b)
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[test]
    fn only_sockets_with_bytes_come_back_and_deadlines_close_in_order() {
        use std::io::Write;
        let mut s = IdleSet::<Token>::new().expect("epoll");
        let dropped = std::rc::Rc::new(std::cell::Cell::new(0));
        let guard = || Token(dropped.clone());
        let (fa, mut a) = socket_pair();
        let (fb, _b) = socket_pair();
        let (fc, _c) = socket_pair();
        assert!(s.park(fa, peer(), guard(), false, 300).is_ok());
        assert!(s.park(fb, peer(), guard(), true, 100).is_ok());
        assert!(s.park(fc, peer(), guard(), false, 200).is_ok());
        assert!(s.ready().is_empty(), "nothing was sent yet");
        a.write_all(b"GET").expect("write");
        let ready = s.ready();
        assert_eq!(ready.len(), 1);
        assert!(!ready[0].first);
        assert_eq!(s.len(), 2);
        assert!(s.expire(99).is_empty());
        let due = s.expire(200);
        assert_eq!(due.len(), 2);
        assert!(due[0].first, "the earliest deadline goes first");
        assert!(
            s.expire(1000).is_empty(),
            "the resumed one left its deadline behind"
        );
        assert!(s.is_empty());
    }

    #[test]
    fn a_drain_takes_everything_and_keys_are_reused_safely() {
        use std::io::Write;
        let mut s = IdleSet::<Token>::new().expect("epoll");
        let dropped = std::rc::Rc::new(std::cell::Cell::new(0));
        let guard = || Token(dropped.clone());
        let (fa, mut peer_a) = socket_pair();
        assert!(s.park(fa, peer(), guard(), false, 100).is_ok());
        assert_eq!(s.take_all().len(), 1);
        assert_eq!(dropped.get(), 1);
        // The drained socket is closed: its peer reads end of stream.
        let mut byte = [0u8; 1];
        assert_eq!(
            std::io::Read::read(&mut peer_a, &mut byte).expect("read"),
            0
        );
        let (fb, mut b) = socket_pair();
        assert!(s.park(fb, peer(), guard(), false, 500).is_ok());
        assert!(
            s.expire(100).is_empty(),
            "the old deadline left with the old record"
        );
        b.write_all(b"x").expect("write");
        assert_eq!(s.ready().len(), 1);
        assert!(s.is_empty());
    }
}
