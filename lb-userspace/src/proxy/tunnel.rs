//! The WebSocket tunnel: after a `101 Switching Protocols`, bytes flow both ways untouched
//! until either side closes or the tunnel idles past its timeout.

use std::cell::Cell;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRent, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::net::{write_buf, BufConn};

/// A second handle on `stream`'s socket, for writing while the first one reads.
fn dup_stream(stream: &TcpStream) -> std::io::Result<TcpStream> {
    // SAFETY: `dup` on a live socket descriptor owned by `stream`; the new descriptor is owned
    // by the std stream built from it right away.
    let fd = unsafe { libc::dup(stream.as_raw_fd()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    std.set_nonblocking(true)?;
    TcpStream::from_std(std)
}

/// Reads into `buf` for at most `wait`. A read that times out is cancelled and awaited to its
/// end, so bytes the kernel handed over in the meantime are returned, never dropped. The
/// canceller is kept across reads (a new one costs two allocations) and replaced only after
/// it was used.
async fn read_within(
    from: &mut TcpStream,
    buf: Vec<u8>,
    wait: Duration,
    canceller: &mut Option<Canceller>,
) -> monoio::BufResult<usize, Vec<u8>> {
    let handle = canceller.get_or_insert_with(Canceller::new).handle();
    let read = from.cancelable_read(buf, handle);
    let mut read = std::pin::pin!(read);
    monoio::select! {
        done = &mut read => done,
        _ = crate::timer::sleep(wait) => {
            if let Some(c) = canceller.take() {
                let _ = c.cancel();
            }
            let (res, buf) = read.await;
            match res {
                Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
                    (Err(std::io::ErrorKind::TimedOut.into()), buf)
                }
                other => (other, buf),
            }
        }
    }
}

/// Copies `from` to `to` until end of stream, an error, or `idle` without data in either
/// direction (`active` is the tunnel's last activity); then half-closes `to`.
async fn pump(
    from: &mut TcpStream,
    to: &mut TcpStream,
    mut buf: Vec<u8>,
    idle: Duration,
    active: &Cell<Instant>,
) -> u64 {
    let mut total = 0;
    let mut canceller = None;
    loop {
        buf.clear();
        // A direction may be quiet while the other is busy (a server pushing events); the
        // tunnel is idle only when neither has moved a byte for `idle`.
        let wait = idle
            .saturating_sub(active.get().elapsed())
            .max(Duration::from_millis(1));
        let (res, b) = read_within(from, buf, wait, &mut canceller).await;
        if matches!(&res, Err(e) if e.kind() == std::io::ErrorKind::TimedOut) {
            buf = b;
            if active.get().elapsed() < idle {
                continue;
            }
            break;
        }
        buf = b;
        match res {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                active.set(Instant::now());
                total += n as u64;
                if write_buf(to, &mut buf, idle).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
    total
}

/// The tunnel for connections that run TLS: one task waits for either side to be readable
/// (cancel-safe), then reads what is there and writes it, encrypted as each side needs.
/// Returns the bytes moved toward the client.
async fn run_buffered(client: &mut BufConn, upstream: &mut BufConn, idle: Duration) -> u64 {
    let mut down = 0u64;
    let mut last = Instant::now();
    loop {
        // Bytes already buffered on either side go first.
        if !upstream.data().is_empty() {
            let n = upstream.data().len();
            down += n as u64;
            if upstream.forward_to(client, n, idle).await.is_err() {
                break;
            }
            last = Instant::now();
        }
        if !client.data().is_empty() {
            let n = client.data().len();
            if client.forward_to(upstream, n, idle).await.is_err() {
                break;
            }
            last = Instant::now();
        }
        let wait = idle
            .saturating_sub(last.elapsed())
            .max(Duration::from_millis(1));
        let ready = monoio::select! {
            r = client.readable() => Some((true, r.is_ok())),
            r = upstream.readable() => Some((false, r.is_ok())),
            _ = crate::timer::sleep(wait) => None,
        };
        let Some((from_client, ok)) = ready else {
            if last.elapsed() >= idle {
                break;
            }
            continue;
        };
        let side = if from_client {
            &mut *client
        } else {
            &mut *upstream
        };
        // Readable: this read returns at once (bytes, or the end of the stream).
        if !ok || side.fill(idle).await.is_err() {
            break;
        }
    }
    client.shutdown_write().await;
    upstream.shutdown_write().await;
    down
}

/// Runs the tunnel between `client` and `upstream`, first delivering bytes each side sent
/// early (already in the read buffers). Returns the bytes moved toward the client.
pub async fn run(client: &mut BufConn, upstream: &mut BufConn, idle: Duration) -> u64 {
    if client.is_tls() || upstream.is_tls() {
        return run_buffered(client, upstream, idle).await;
    }
    if !upstream.data().is_empty() {
        let n = upstream.data().len();
        if upstream.forward_to(client, n, idle).await.is_err() {
            return 0;
        }
    }
    if !client.data().is_empty() {
        let n = client.data().len();
        if client.forward_to(upstream, n, idle).await.is_err() {
            return 0;
        }
    }
    let (Ok(mut to_client), Ok(mut to_upstream)) =
        (dup_stream(&client.stream), dup_stream(&upstream.stream))
    else {
        return 0;
    };
    let active = Cell::new(Instant::now());
    let (_, down) = monoio::join!(
        pump(
            &mut client.stream,
            &mut to_upstream,
            Vec::with_capacity(16 * 1024),
            idle,
            &active
        ),
        pump(
            &mut upstream.stream,
            &mut to_client,
            Vec::with_capacity(16 * 1024),
            idle,
            &active
        ),
    );
    down
}

#[cfg(test)]
mod tests {
    use super::super::testio::{buf_pair, rt};
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn bytes_flow_both_ways_and_a_close_ends_the_tunnel() {
        rt().block_on(async {
            let (mut client, mut client_peer) = buf_pair();
            let (mut upstream, mut upstream_peer) = buf_pair();
            // Bytes each side sent before the tunnel started go first.
            client_peer.write_all(b"early-up").expect("write");
            upstream_peer.write_all(b"early-down").expect("write");
            client
                .fill(Duration::from_secs(5))
                .await
                .expect("client bytes");
            upstream
                .fill(Duration::from_secs(5))
                .await
                .expect("upstream bytes");
            let script = std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let mut got_down = Vec::new();
                while got_down.len() < b"early-down".len() {
                    let n = client_peer.read(&mut buf).expect("read");
                    got_down.extend_from_slice(&buf[..n]);
                }
                let mut got_up = Vec::new();
                while got_up.len() < b"early-up".len() {
                    let n = upstream_peer.read(&mut buf).expect("read");
                    got_up.extend_from_slice(&buf[..n]);
                }
                upstream_peer.write_all(b"pong").expect("write");
                let n = client_peer.read(&mut buf).expect("read");
                let pong = buf[..n].to_vec();
                // The client leaves: the upstream sees its half-close, then leaves too.
                client_peer
                    .shutdown(std::net::Shutdown::Write)
                    .expect("shutdown");
                let n = upstream_peer.read(&mut buf).expect("read");
                drop(upstream_peer);
                let mut rest = Vec::new();
                let _ = client_peer.read_to_end(&mut rest);
                (got_down, got_up, pong, n, rest)
            });
            let down = run(&mut client, &mut upstream, Duration::from_secs(10)).await;
            let (got_down, got_up, pong, eof, rest) = script.join().expect("script");
            assert_eq!(got_down, b"early-down");
            assert_eq!(got_up, b"early-up");
            assert_eq!(pong, b"pong");
            assert_eq!(eof, 0, "the client's half-close reached the upstream");
            assert!(rest.is_empty());
            assert_eq!(down, 4, "bytes moved toward the client inside the tunnel");
        });
    }

    /// A reset on either side ends the tunnel: the other side is shut down (it reads the
    /// end) while the tunnel runs, long before its idle timeout, and the tunnel returns.
    #[test]
    fn a_reset_on_either_side_closes_the_other() {
        for client_resets in [false, true] {
            rt().block_on(async {
                let (mut client, client_peer) = buf_pair();
                let (mut upstream, upstream_peer) = buf_pair();
                let (resetter, mut other) = if client_resets {
                    (client_peer, upstream_peer)
                } else {
                    (upstream_peer, client_peer)
                };
                let script = std::thread::spawn(move || {
                    let _ = socket2::SockRef::from(&resetter).set_linger(Some(Duration::ZERO));
                    drop(resetter);
                    // The peers read with a 20 s timeout; the tunnel idles out after 60 s.
                    let mut rest = Vec::new();
                    other.read_to_end(&mut rest).map_err(|e| e.kind())
                });
                let _ = run(&mut client, &mut upstream, Duration::from_secs(60)).await;
                let end = script.join().expect("script");
                assert!(
                    !matches!(
                        end,
                        Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                    ),
                    "client resets: {client_resets}: the other side never saw the end ({end:?})"
                );
            });
        }
    }

    #[test]
    fn an_idle_tunnel_closes() {
        rt().block_on(async {
            let (mut client, client_peer) = buf_pair();
            let (mut upstream, upstream_peer) = buf_pair();
            let started = Instant::now();
            let down = run(&mut client, &mut upstream, Duration::from_millis(150)).await;
            assert_eq!(down, 0);
            assert!(started.elapsed() >= Duration::from_millis(150));
            drop((client_peer, upstream_peer));
        });
    }
}
