//! The backend every proxy in the benchmark talks to: a single-threaded monoio HTTP/1.1
//! server. `/` answers 12 bytes, `/16k` 16 KiB, `/upload` reads the request body and answers
//! `ok`. Keep-alive throughout.
//!
//! With a second address, it also serves gRPC over h2c there, for the gRPC scenario: every
//! call (any method) reads the request message and answers one small message with
//! `grpc-status: 0` in the trailers.
//!
//! Usage: lb-hello ADDR [GRPC_ADDR]

use std::net::SocketAddr;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

const SMALL: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n";
const UPLOADED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".into())
        .parse()?;
    let grpc: Option<SocketAddr> = std::env::args().nth(2).map(|a| a.parse()).transpose()?;
    let mut big = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        16 * 1024
    )
    .into_bytes();
    big.extend(std::iter::repeat_n(b'x', 16 * 1024));
    let big: &'static [u8] = Box::leak(big.into_boxed_slice());
    // The ring flags lb's workers use: completions are run in a batch when the server enters
    // the kernel, not by an interrupt each. The backend shares the load core with wrk, and
    // whatever it spends there is taken from the load side of every proxy's run alike.
    let mut urb = io_uring::IoUring::builder();
    urb.setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .uring_builder(urb)
        .enable_timer()
        .build()
    {
        Ok(mut rt) => rt.block_on(serve_both(addr, grpc, big)),
        Err(_) => monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()?
            .block_on(serve_both(addr, grpc, big)),
    }
}

async fn serve_both(
    addr: SocketAddr,
    grpc: Option<SocketAddr>,
    big: &'static [u8],
) -> anyhow::Result<()> {
    if let Some(grpc) = grpc {
        let listener = TcpListener::from_std(std::net::TcpListener::bind(grpc)?)?;
        monoio::spawn(grpc_accept_loop(listener));
    }
    accept_loop(addr, big).await
}

/// The reply to every call: a length-prefixed message (uncompressed, 7 bytes: field 1, the
/// string "hello").
const GRPC_REPLY: &[u8] = b"\x00\x00\x00\x00\x07\x0a\x05hello";

async fn grpc_accept_loop(listener: TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        monoio::spawn(async move {
            let io = lb::h2io::H2Io::new(stream, None, Vec::new(), None);
            let Ok(mut conn) = h2::server::handshake(io).await else {
                return;
            };
            while let Some(Ok((request, respond))) = conn.accept().await {
                monoio::spawn(grpc_call(request, respond));
            }
        });
    }
}

async fn grpc_call(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
) {
    let mut body = request.into_body();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let response = http::Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(());
    let Ok(response) = response else { return };
    let Ok(mut send) = respond.send_response(response, false) else {
        return;
    };
    if send
        .send_data(bytes::Bytes::from_static(GRPC_REPLY), false)
        .is_err()
    {
        return;
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}

async fn accept_loop(addr: SocketAddr, big: &'static [u8]) -> anyhow::Result<()> {
    // std sets SO_REUSEADDR, so a port with connections in TIME_WAIT can be reused.
    let listener = TcpListener::from_std(std::net::TcpListener::bind(addr)?)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        monoio::spawn(serve(stream, big));
    }
}

async fn serve(mut stream: TcpStream, big: &'static [u8]) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut pos = 0;
    loop {
        // Parse what we have; read more when incomplete.
        let (head_len, body_len, kind) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf[pos..]) {
                Ok(httparse::Status::Complete(n)) => {
                    let len = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| {
                            std::str::from_utf8(h.value)
                                .ok()?
                                .trim()
                                .parse::<usize>()
                                .ok()
                        })
                        .unwrap_or(0);
                    let kind = match req.path {
                        Some(p) if p.starts_with("/16k") => 1,
                        Some(p) if p.starts_with("/upload") => 2,
                        _ => 0,
                    };
                    break (n, len, kind);
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Ok(()),
            }
            if pos > 0 {
                buf.drain(..pos);
                pos = 0;
            }
            if buf.len() == buf.capacity() {
                buf.reserve(buf.capacity());
            }
            let start = buf.len();
            let (r, b) = stream.read(buf.slice_mut(start..)).await;
            buf = b.into_inner();
            if r? == 0 {
                return Ok(());
            }
        };
        pos += head_len;
        // Skip the body, reading as needed.
        let mut left = body_len;
        loop {
            let have = (buf.len() - pos).min(left);
            pos += have;
            left -= have;
            if left == 0 {
                break;
            }
            buf.clear();
            pos = 0;
            let (r, b) = stream.read(buf.slice_mut(0..)).await;
            buf = b.into_inner();
            if r? == 0 {
                return Ok(());
            }
        }
        let answer: &'static [u8] = match kind {
            1 => big,
            2 => UPLOADED,
            _ => SMALL,
        };
        let (r, _) = stream.write_all(answer).await;
        r?;
        if pos == buf.len() {
            buf.clear();
            pos = 0;
        }
    }
}
