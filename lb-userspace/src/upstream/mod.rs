//! Upstream connections: connecting with a deadline and a worker-local pool of idle
//! keep-alive connections per endpoint.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::net::{peer_closed, BufConn, BufPool};

/// One upstream connection and whether it came from the pool.
pub struct Upstream {
    pub conn: BufConn,
    pub addr: SocketAddr,
    /// It served an earlier request; a failure before any response byte may mean the backend
    /// closed it while idle, and the request can go again on a fresh connection.
    pub reused: bool,
}

/// Why connecting failed.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Io(std::io::Error),
}

/// Opens a connection to `addr` within `timeout`.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    bufs: &BufPool,
) -> Result<Upstream, ConnectError> {
    let stream = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ConnectError::Io(e)),
        Err(_) => return Err(ConnectError::Timeout),
    };
    let _ = stream.set_nodelay(true);
    Ok(Upstream {
        conn: BufConn::new(stream, bufs.take()),
        addr,
        reused: false,
    })
}

struct Idle {
    conn: BufConn,
    since: Instant,
    idle_timeout: Duration,
}

/// Idle connections of one worker, by endpoint address. `!Sync` by design: never shared.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
}

impl Pool {
    /// The most recently used live idle connection to `addr`, if any. With `check_peer`, each
    /// candidate is first asked (one non-blocking syscall) whether the backend closed it.
    pub fn checkout(&self, addr: SocketAddr, check_peer: bool, bufs: &BufPool) -> Option<Upstream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(c) = list.pop() {
            if now.duration_since(c.since) >= c.idle_timeout
                || (check_peer && peer_closed(&c.conn.stream))
            {
                let (_, buf) = c.conn.into_parts();
                bufs.give(buf);
                continue;
            }
            return Some(Upstream {
                conn: c.conn,
                addr,
                reused: true,
            });
        }
        None
    }

    /// Keeps a connection for reuse, up to `max_idle` per endpoint; beyond that it is closed.
    pub fn checkin(&self, up: Upstream, idle_timeout: Duration, max_idle: usize, bufs: &BufPool) {
        if !up.conn.data().is_empty() {
            // Bytes after the response: the backend is confused; never reuse.
            bufs.give(up.conn.into_parts().1);
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(up.addr).or_default();
        if list.len() >= max_idle {
            bufs.give(up.conn.into_parts().1);
            return;
        }
        list.push(Idle {
            conn: up.conn,
            since: Instant::now(),
            idle_timeout,
        });
    }

    /// Closes connections idle past their timeout. Returns how many are left.
    pub fn sweep(&self, bufs: &BufPool) -> usize {
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        let mut left = 0;
        for list in idle.values_mut() {
            let mut i = 0;
            while i < list.len() {
                if now.duration_since(list[i].since) >= list[i].idle_timeout {
                    let c = list.swap_remove(i);
                    bufs.give(c.conn.into_parts().1);
                } else {
                    i += 1;
                }
            }
            left += list.len();
        }
        idle.retain(|_, l| !l.is_empty());
        left
    }

    /// Closes every idle connection (drain and shutdown).
    pub fn clear(&self) {
        self.idle.borrow_mut().clear();
    }

    /// Idle connections held for `addr`.
    pub fn idle_count(&self, addr: SocketAddr) -> usize {
        self.idle.borrow().get(&addr).map_or(0, Vec::len)
    }
}
