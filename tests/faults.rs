//! The fault matrix: broken backends and vanishing clients, real sockets on loopback. After
//! every case the proxy's descriptor count must come back to where it was.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use common::*;

/// What the client must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A complete response with this status.
    Status(u16),
    /// A response cut short: the connection closes before the body is complete.
    Truncated,
}

/// Backend behaviours, by request path.
fn faulty_backend() -> Backend {
    Backend::start(Arc::new(|req, res| {
        let mut hold = [0u8; 1024];
        match req.path.as_str() {
            "/ok" => res.send(200, &[], b"fine"),
            "/truncated-length" => {
                let _ = res.raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part");
                let _ = res.stream().shutdown(std::net::Shutdown::Both);
                res.close_after();
            }
            "/truncated-chunked" => {
                let _ = res.raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
                let _ = res.stream().shutdown(std::net::Shutdown::Both);
                res.close_after();
            }
            "/reset" => {
                // Linger 0: closing sends RST instead of FIN.
                let _ = socket2::SockRef::from(&*res.stream()).set_linger(Some(Duration::ZERO));
                res.close_after();
            }
            "/garbage" => {
                let _ = res.raw(b"SSH-2.0-OpenSSH_9.6\r\n\r\n");
                res.close_after();
            }
            "/ambiguous" => {
                let _ = res.raw(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                );
                res.close_after();
            }
            "/gzip-chunked" => {
                // A coding lb does not implement: never passed on as plain chunked data.
                let _ = res.raw(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n\x1f\x8b\r\n0\r\n\r\n",
                );
                res.close_after();
            }
            "/trailer-smuggle" => {
                // Framing fields in a trailer: dropped, the response itself is fine.
                let _ = res.raw(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nContent-Length: 50\r\n\r\n",
                );
            }
            "/half-close" => {
                // No answer, only our FIN; then wait for the proxy to close its side.
                let _ = res.stream().shutdown(std::net::Shutdown::Write);
                let _ = res.stream().read(&mut hold);
                res.close_after();
            }
            "/stall" => {
                // Never answer; return once the proxy gives up and closes.
                let _ = res.stream().read(&mut hold);
                res.close_after();
            }
            "/big" => {
                let body = vec![b'z'; 8 << 20];
                res.send(200, &[], &body);
            }
            _ => res.send(404, &[], b"no such fault"),
        }
    }))
    .expect("backend")
}

fn fault_config(backend: std::net::SocketAddr) -> String {
    config(&format!(
        "[http]\nclient_body_timeout = \"500ms\"\n\n[[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{backend}\" }}]\nresponse_timeout = \"300ms\"\npool_max_idle_per_endpoint = 0\n\n[[routes]]\npath_prefix = \"/\"\ncluster = \"app\"\n"
    ))
}

/// Sends `GET path` on a fresh connection and says what came back.
fn outcome(lb: &Lb, path: &str) -> Outcome {
    let mut c = Client::connect(lb.addr);
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    read_outcome(&mut c)
}

fn read_outcome(c: &mut Client) -> Outcome {
    match c.try_response(false) {
        Ok(r) => Outcome::Status(r.status),
        Err(_) => Outcome::Truncated,
    }
}

/// Waits until the proxy holds no more descriptors than `baseline`.
fn no_leak(lb: &Lb, baseline: usize, case: &str) {
    wait_until(
        &format!("descriptors back to {baseline} after {case}"),
        || fd_count(lb.pid()) <= baseline,
    );
}

const MATRIX: [(&str, Outcome); 9] = [
    ("/gzip-chunked", Outcome::Status(502)),
    ("/trailer-smuggle", Outcome::Status(200)),
    ("/truncated-length", Outcome::Truncated),
    ("/truncated-chunked", Outcome::Truncated),
    ("/reset", Outcome::Status(502)),
    ("/garbage", Outcome::Status(502)),
    ("/ambiguous", Outcome::Status(502)),
    ("/half-close", Outcome::Status(502)),
    ("/stall", Outcome::Status(504)),
];

#[test]
fn broken_backends_get_the_right_answer_and_leak_nothing() {
    let backend = faulty_backend();
    let lb = Lb::start(&fault_config(backend.addr));
    assert_eq!(outcome(&lb, "/ok"), Outcome::Status(200));
    let baseline = fd_count(lb.pid());
    // Twice: the second round reloads the config while each request is in flight.
    for round in 0..2 {
        for (path, want) in MATRIX {
            let mut c = Client::connect(lb.addr);
            c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            if round == 1 {
                assert_eq!(lb.admin("POST", "/reload").0, 200);
            }
            let got = read_outcome(&mut c);
            assert_eq!(got, want, "{path} (round {round})");
            // The proxy still serves afterwards.
            assert_eq!(outcome(&lb, "/ok"), Outcome::Status(200), "after {path}");
            drop(c);
            no_leak(&lb, baseline, path);
        }
    }
}

#[test]
fn vanishing_clients_abort_upstream_and_leak_nothing() {
    let backend = faulty_backend();
    let lb = Lb::start(&fault_config(backend.addr));
    assert_eq!(outcome(&lb, "/ok"), Outcome::Status(200));
    let baseline = fd_count(lb.pid());

    for round in 0..2 {
        // Mid-upload: 64 KiB of a 1 MB body, then gone. The backend never sees a whole request.
        // No pooling in this config: an upload in flight holds a backend connection of its own.
        wait_until("no backend connections", || backend.open_connections() == 0);
        let requests = backend.requests();
        let mut c = Client::connect(lb.addr);
        c.send(b"POST /ok HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n");
        c.send(&[b'u'; 64 * 1024]);
        wait_until("the upload to reach the backend", || {
            backend.open_connections() == 1
        });
        if round == 1 {
            assert_eq!(lb.admin("POST", "/reload").0, 200);
        }
        drop(c);
        wait_until("the upstream upload to be aborted", || {
            backend.open_connections() == 0
        });
        assert_eq!(
            backend.requests(),
            requests,
            "a partial upload reached the handler"
        );
        no_leak(&lb, baseline, "a client gone mid-upload");

        // Mid-download: 64 KiB of an 8 MiB response, then gone.
        let mut c = Client::connect(lb.addr);
        c.send(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut got = vec![0u8; 64 * 1024];
        c.stream
            .read_exact(&mut got)
            .expect("the start of the response");
        if round == 1 {
            assert_eq!(lb.admin("POST", "/reload").0, 200);
        }
        drop(c);
        no_leak(&lb, baseline, "a client gone mid-download");
        assert_eq!(outcome(&lb, "/ok"), Outcome::Status(200));
    }
}

#[test]
fn sigterm_with_faults_in_flight_exits_cleanly() {
    let backend = faulty_backend();
    let mut lb = Lb::start(&fault_config(backend.addr));
    // A stalled backend, a half-sent upload and an idle keep-alive client, all at once.
    let mut stalled = Client::connect(lb.addr);
    stalled.send(b"GET /stall HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut upload = Client::connect(lb.addr);
    upload.send(b"POST /ok HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\npartial");
    let mut idle = Client::connect(lb.addr);
    idle.send(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.response().status, 200);
    wait_until("the stalled request to reach the backend", || {
        backend.requests() >= 2
    });

    lb.signal(libc::SIGTERM);
    assert_eq!(
        stalled.response().status,
        504,
        "the stalled request is answered, not dropped"
    );
    let up = upload.try_response(false);
    assert!(
        matches!(&up, Ok(r) if r.status == 408) || up.is_err(),
        "the stalled upload gets 408 or a close: {up:?}"
    );
    assert!(
        idle.closed_by_peer(),
        "idle keep-alive connections are closed"
    );
    let status = lb.wait_exit();
    assert!(status.success(), "lb exited with {status}:\n{}", lb.log());
    // Nothing the backend was sent is left open.
    wait_until("backend connections to close", || {
        backend.open_connections() == 0
    });
}
