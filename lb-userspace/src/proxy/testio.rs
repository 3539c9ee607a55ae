//! Loopback socket pairs for unit tests of the IO machinery: one end in the monoio runtime,
//! the other a std socket that a plain thread scripts.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream as StdStream};
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::net::TcpStream;

use crate::net::BufConn;

pub fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime")
}

/// A connected pair: the end for the runtime (call inside it) and the std end.
pub fn pair() -> (TcpStream, StdStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer = StdStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (ours, _) = l.accept().expect("accept");
    ours.set_nonblocking(true).expect("nonblocking");
    peer.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    (TcpStream::from_std(ours).expect("monoio stream"), peer)
}

/// A pair whose runtime end is a [`BufConn`] with a 16 KiB buffer.
pub fn buf_pair() -> (BufConn, StdStream) {
    let (s, p) = pair();
    (BufConn::new(s, Vec::with_capacity(16 * 1024)), p)
}

/// Writes `bytes` in pieces of `piece` from a thread, then closes (or resets, with `reset`).
pub fn send(mut peer: StdStream, bytes: Vec<u8>, piece: usize, reset: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = peer.set_nodelay(true);
        for chunk in bytes.chunks(piece.max(1)) {
            if peer.write_all(chunk).is_err() {
                return;
            }
        }
        if reset {
            let _ = socket2::SockRef::from(&peer).set_linger(Some(Duration::ZERO));
        }
    })
}

/// Reads everything from `peer` until EOF (or an error) in a thread.
pub fn collect(mut peer: StdStream) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = peer.read_to_end(&mut all);
        all
    })
}
