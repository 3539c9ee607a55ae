//! Black-box tests of the HTTP/1.1 proxy: the real `lb` binary, real backends on loopback.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lb::hash::fnv1a;

fn one_cluster(endpoints: &[std::net::SocketAddr], extra: &str) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    config(&format!(
        "[[clusters]]\nname = \"app\"\nendpoints = [{}]\n{extra}\n\n[[routes]]\npath_prefix = \"/\"\ncluster = \"app\"\n",
        eps.join(", ")
    ))
}

#[test]
fn get_and_post_with_content_length() {
    let backend = Backend::start(echo("b1")).unwrap();
    let lb = Lb::start(&one_cluster(&[backend.addr], ""));

    let r = get(lb.addr, "/hello?x=1");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["backend"], "b1");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/hello?x=1");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(v["headers"]["x-forwarded-proto"], "http");
    assert_eq!(v["headers"]["x-forwarded-host"], "test");
    assert_eq!(v["headers"]["via"], "1.1 lb");
    assert_eq!(r.header("via"), Some("1.1 lb"));

    let mut c = Client::connect(lb.addr);
    c.send(b"POST /orders HTTP/1.1\r\nHost: test\r\nContent-Length: 11\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n\r\nhello world");
    let v = c.response().json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body_length"], 11);
    assert_eq!(v["headers"]["content-length"], "11");
    assert!(
        v["headers"].get("x-hop").is_none(),
        "headers named in Connection are hop-by-hop"
    );
    assert!(v["headers"].get("connection").is_none());
}

/// A handler that answers with the body's length and hash, and the framing it arrived in.
fn body_summary() -> Handler {
    Arc::new(|req, res| {
        let text = format!(
            "{{\"len\":{},\"hash\":{},\"chunked\":{}}}",
            req.body_len, req.body_hash, req.chunked
        );
        res.send(
            200,
            &[("Content-Type", "application/json")],
            text.as_bytes(),
        );
    })
}

#[test]
fn chunked_bodies_both_ways() {
    // Requests: chunked in, chunked out, bytes intact.
    let backend = Backend::start(body_summary()).unwrap();
    let lb = Lb::start(&one_cluster(&[backend.addr], ""));
    let mut c = Client::connect(lb.addr);
    c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n");
    let v = c.response().json();
    assert_eq!(v["len"], 11);
    assert_eq!(v["chunked"], true);
    assert_eq!(v["hash"], lb::hash::fnv1a_of(b"hello world"));

    // Responses: chunked with a trailer, to an HTTP/1.1 client.
    let chunky = Backend::start(Arc::new(|_req, res| {
        let _ = res.raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\nX-Sum: 7\r\n\r\n");
    }))
    .unwrap();
    let lb2 = Lb::start(&one_cluster(&[chunky.addr], ""));
    let mut c = Client::connect(lb2.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response();
    assert!(r.chunked);
    assert_eq!(r.body, b"abcdefg");
    assert_eq!(r.trailers, b"X-Sum: 7\r\n");
    // Same connection still works: the framing was exact.
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().body, b"abcdefg");

    // To an HTTP/1.0 client the same body runs to close instead.
    let mut c = Client::connect(lb2.addr);
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert!(!r.chunked);
    assert_eq!(r.body, b"abcdefg");
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn close_delimited_response_is_rechunked_for_keep_alive() {
    let backend = Backend::start(Arc::new(|_req, res| {
        let _ = res.raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end");
        res.close_after();
    }))
    .unwrap();
    let lb = Lb::start(&one_cluster(&[backend.addr], ""));
    let mut c = Client::connect(lb.addr);
    for _ in 0..3 {
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c.response();
        assert!(r.chunked, "re-framed as chunked");
        assert_eq!(r.body, b"until the end");
    }
}

const BIG: u64 = 64 << 20;

#[test]
fn large_upload_and_download_stream_with_bounded_memory() {
    let download = Arc::new(|_req: &Request, res: &mut Responder<'_>| {
        let _ = res.raw(format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").as_bytes());
        let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut left = BIG;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            if res.raw(&block[..n]).is_err() {
                return;
            }
            left -= n as u64;
        }
    });
    let up = Backend::start(body_summary()).unwrap();
    let down = Backend::start(download).unwrap();
    let cfg = config(&format!(
        "[[clusters]]\nname = \"up\"\nendpoints = [{{ addr = \"{}\" }}]\n[[clusters]]\nname = \"down\"\nendpoints = [{{ addr = \"{}\" }}]\n\
         [[routes]]\npath_prefix = \"/up\"\ncluster = \"up\"\n[[routes]]\npath_prefix = \"/down\"\ncluster = \"down\"\n",
        up.addr, down.addr
    ));
    let lb = Lb::start(&cfg);
    let baseline = lb.peak_rss_kib();

    // Upload: stream 64 MiB with Content-Length from a writer thread.
    let mut c = Client::connect(lb.addr);
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(
            format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {BIG}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let block: Vec<u8> = (0..65536u32).map(|i| (i % 253) as u8).collect();
        let mut hash = lb::hash::FNV_OFFSET;
        let mut left = BIG;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            w.write_all(&block[..n]).unwrap();
            hash = fnv1a(hash, &block[..n]);
            left -= n as u64;
        }
        hash
    });
    let sent_hash = writer.join().unwrap();
    let v = c.response().json();
    assert_eq!(v["len"], BIG);
    assert_eq!(v["hash"], sent_hash);

    // Download: 64 MiB back, hashed as it arrives rather than kept.
    let mut c = Client::connect(lb.addr);
    c.send(b"GET /down HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let mut expected = 0u64;
    while got < BIG {
        let n = c.stream.read(&mut buf).unwrap();
        assert!(n > 0, "download cut at {got}");
        for (i, &b) in buf[..n].iter().enumerate() {
            let pos = got + i as u64;
            if b != ((pos % 65536) % 251) as u8 {
                expected += 1;
            }
        }
        got += n as u64;
    }
    assert_eq!(expected, 0, "download bytes differ");

    let peak = lb.peak_rss_kib();
    println!("lb peak RSS: {baseline} KiB at start, {peak} KiB after moving 2 x 64 MiB");
    assert!(
        peak < baseline + 32 * 1024,
        "lb's peak RSS grew from {baseline} KiB to {peak} KiB: bodies are being buffered"
    );
}

#[test]
fn keep_alive_reuses_upstream_connections() {
    let backend = Backend::start(echo("b")).unwrap();
    let lb = Lb::start(&one_cluster(&[backend.addr], ""));
    let mut served = 0;
    for _ in 0..4 {
        let mut c = Client::connect(lb.addr);
        for _ in 0..50 {
            c.send(b"GET /k HTTP/1.1\r\nHost: t\r\n\r\n");
            assert_eq!(c.response().status, 200);
            served += 1;
        }
    }
    wait_until("the backend to count every request", || {
        backend.requests() == served
    });
    println!(
        "{served} requests over {} backend connections",
        backend.connections()
    );
    assert!(
        backend.connections() <= 4,
        "expected pooled reuse, saw {} backend connections for {served} requests",
        backend.connections()
    );
}

#[test]
fn pooled_connection_closed_by_backend_is_retried_fresh() {
    // The backend closes after every response without saying so: each pooled connection is
    // dead by the time it is reused.
    let backend = Backend::start(Arc::new(|_req, res| {
        res.send(200, &[], b"ok");
        res.close_after();
    }))
    .unwrap();
    let lb = Lb::start(&one_cluster(&[backend.addr], ""));
    let mut c = Client::connect(lb.addr);
    for i in 0..30 {
        // POST with a body too: it is replayable because it arrived whole.
        if i % 2 == 0 {
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        } else {
            c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
        }
        let r = c.response();
        assert_eq!(
            r.status,
            200,
            "request {i}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // The backend counts a request after its answer is out: wait for the count to settle.
    wait_until("the backend to count 30 requests", || {
        backend.requests() == 30
    });
}

#[test]
fn slow_backend_gives_504() {
    let backend = Backend::start(Arc::new(|_req, res| {
        std::thread::sleep(Duration::from_secs(2));
        res.send(200, &[], b"late");
    }))
    .unwrap();
    let lb = Lb::start(&one_cluster(
        &[backend.addr],
        "response_timeout = \"200ms\"",
    ));
    let r = get(lb.addr, "/");
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
}

#[test]
fn dead_backend_gives_502_and_a_dead_endpoint_is_skipped() {
    let dead = dead_addr();
    let lb = Lb::start(&one_cluster(&[dead], ""));
    let r = get(lb.addr, "/");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "connect_failed");
    // The metric's label comes from the same typed error (counted when the request is
    // logged, just after its answer).
    wait_until("the failure counted", || {
        metric(
            &lb.scrape(),
            "lb_proxy_errors_total",
            &[("cluster", "app"), ("error", "connect_failed")],
        ) == 1.0
    });
    drop(lb);

    let live = Backend::start(echo("live")).unwrap();
    let lb = Lb::start(&one_cluster(&[dead, live.addr], ""));
    for _ in 0..20 {
        let r = get(lb.addr, "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["backend"], "live");
    }
}

#[test]
fn reset_before_response_is_retried_on_another_endpoint() {
    let resetter = Backend::start(Arc::new(|_req, res| {
        // Accept the request, then vanish without a byte.
        let _ = res.stream().shutdown(std::net::Shutdown::Both);
        res.close_after();
    }))
    .unwrap();
    let live = Backend::start(echo("live")).unwrap();
    let lb = Lb::start(&one_cluster(&[resetter.addr, live.addr], ""));
    for _ in 0..10 {
        let r = get(lb.addr, "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["backend"], "live");
    }
    // A POST is not idempotent: it is not sent twice, the client gets the 502.
    let mut saw_502 = false;
    for _ in 0..4 {
        let mut c = Client::connect(lb.addr);
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx");
        let r = c.response();
        saw_502 |= r.status == 502;
        assert!(r.status == 200 || r.status == 502);
    }
    assert!(
        saw_502,
        "a POST that hit the resetting endpoint must not be retried"
    );
}

#[test]
fn no_route_gives_404_as_json() {
    let backend = Backend::start(echo("b")).unwrap();
    let cfg =
        one_cluster(&[backend.addr], "").replace("path_prefix = \"/\"", "path_prefix = \"/only\"");
    let lb = Lb::start(&cfg);
    let mut c = Client::connect(lb.addr);
    c.send(b"GET /elsewhere HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no_route");
    assert_eq!(r.header("content-type"), Some("application/json"));
    // A refused request without a body leaves the connection usable.
    c.send(b"GET /only/x HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().status, 200);
}

#[test]
fn malformed_gives_400_and_oversized_head_gives_431() {
    let backend = Backend::start(echo("b")).unwrap();
    let lb = Lb::start(&one_cluster(&[backend.addr], ""));
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
    ] {
        let mut c = Client::connect(lb.addr);
        c.send(bad);
        let r = c.response();
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(bad));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed_by_peer());
    }
    let mut c = Client::connect(lb.addr);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    c.send(big.as_bytes());
    assert_eq!(c.response().status, 431);
    assert_eq!(
        backend.requests(),
        0,
        "nothing malformed reached the backend"
    );
}

#[test]
fn body_over_the_cap_gives_413() {
    let backend = Backend::start(echo("b")).unwrap();
    let cfg = one_cluster(&[backend.addr], "")
        .replace("[admin]", "[http]\nmax_request_body = \"1KiB\"\n\n[admin]");
    let lb = Lb::start(&cfg);
    let mut c = Client::connect(lb.addr);
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n");
    assert_eq!(c.response().status, 413);
    // Chunked: discovered mid-stream.
    let mut c = Client::connect(lb.addr);
    let chunk = "a".repeat(800);
    c.send(format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n").as_bytes());
    assert_eq!(c.response().status, 413);
}

#[test]
fn http10_client() {
    let backend = Backend::start(echo("b")).unwrap();
    let lb = Lb::start(&one_cluster(&[backend.addr], ""));
    let mut c = Client::connect(lb.addr);
    c.send(b"GET /old HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/old");
    assert_eq!(r.json()["headers"]["via"], "1.0 lb");
    assert!(c.closed_by_peer(), "HTTP/1.0 without keep-alive closes");

    let mut c = Client::connect(lb.addr);
    for _ in 0..3 {
        c.send(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.response();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
}

#[test]
fn head_204_and_304_have_no_body() {
    let backend = Backend::start(Arc::new(|req, res| match req.path.as_str() {
        "/204" => {
            let _ = res.raw(b"HTTP/1.1 204 No Content\r\nX-Kind: empty\r\n\r\n");
        }
        "/304" => {
            let _ = res
                .raw(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n");
        }
        _ => res.send(200, &[], b"twelve bytes"),
    }))
    .unwrap();
    let lb = Lb::start(&one_cluster(&[backend.addr], ""));
    let mut c = Client::connect(lb.addr);
    c.send(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.try_response(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("12"));
    c.send(b"GET /204 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 204);
    assert_eq!(r.header("x-kind"), Some("empty"));
    c.send(b"GET /304 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 304);
    assert_eq!(r.header("content-length"), Some("1234"));
    // Had any body bytes leaked, this response would be misread.
    c.send(b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().body, b"twelve bytes");
}

#[test]
fn expect_100_continue() {
    let backend = Backend::start(body_summary()).unwrap();
    let lb = Lb::start(&one_cluster(&[backend.addr], ""));
    let mut c = Client::connect(lb.addr);
    c.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.response();
    assert_eq!(interim.status, 100);
    c.send(b"hello");
    let v = c.response().json();
    assert_eq!(v["len"], 5);
}

#[test]
fn sigterm_drains_an_in_flight_request() {
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    let backend = Backend::start(Arc::new(move |_req, res| {
        flag.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(700));
        res.send(200, &[], b"finished");
    }))
    .unwrap();
    let mut lb = Lb::start(&one_cluster(&[backend.addr], ""));
    let addr = lb.addr;
    let client = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
        c.response()
    });
    wait_until("the backend to receive the request", || {
        started.load(Ordering::SeqCst)
    });
    lb.signal(libc::SIGTERM);
    let r = client.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"finished");
    let status = lb.wait_exit();
    assert!(status.success(), "exit status {status}");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "nothing listens after exit"
    );
}

#[test]
fn idle_keep_alive_connections_do_not_hold_up_shutdown() {
    let backend = Backend::start(echo("b")).unwrap();
    let mut lb = Lb::start(&one_cluster(&[backend.addr], ""));
    let mut c = Client::connect(lb.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().status, 200);
    lb.signal(libc::SIGTERM);
    // drain_timeout is 10 s in these configs; an idle client must be closed at once.
    let t = std::time::Instant::now();
    assert!(lb.wait_exit().success());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "idle connection held the drain for {:?}",
        t.elapsed()
    );
    assert!(c.closed_by_peer());
}

/// Waits that hold no timer of their own (the worker's idle sweep ends them) still end on
/// time: a connection silent from the start at the header timeout, a keep-alive connection
/// between requests at the idle timeout, and one that keeps sending never.
#[test]
fn idle_and_silent_connections_close_at_their_timeouts() {
    let backend = Backend::start(echo("b")).unwrap();
    let lb = Lb::start(&config(&format!(
        "[http]\nclient_header_timeout = \"2s\"\nclient_idle_timeout = \"300ms\"\n\n\
         [[clusters]]\nname = \"app\"\nendpoints = [{{ addr = \"{}\" }}]\n\n\
         [[routes]]\npath_prefix = \"/\"\ncluster = \"app\"\n",
        backend.addr
    )));
    let closes_after = |c: &mut Client| {
        let t = std::time::Instant::now();
        assert!(c.closed_by_peer(), "lb did not close the connection");
        t.elapsed()
    };

    let mut silent = Client::connect(lb.addr);
    let mut idle = Client::connect(lb.addr);
    idle.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.response().status, 200);
    let took = closes_after(&mut idle);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "a keep-alive connection closed {took:?} after its request (idle timeout 300 ms)"
    );
    let took = closes_after(&mut silent);
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "a silent connection closed after {took:?} (header timeout 2 s)"
    );

    // Requests 100 ms apart, well past one idle timeout in all: the wait starts afresh.
    let mut busy = Client::connect(lb.addr);
    for _ in 0..10 {
        busy.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(busy.response().status, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    busy.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(busy.response().status, 200);
}

/// A keep-alive connection that goes quiet parks without a task (its socket in the worker's
/// epoll set) and comes back when its next request arrives, under both IO drivers.
#[test]
fn quiet_connections_park_and_resume_under_both_drivers() {
    let backend = Backend::start(echo("b")).unwrap();
    for driver in ["io_uring", "epoll"] {
        let cfg = one_cluster(&[backend.addr], "").replacen(
            "[server]\n",
            &format!("[server]\nio = \"{driver}\"\n"),
            1,
        );
        let lb = Lb::start(&cfg);
        wait_until("the workers to log their driver", || {
            // The log may colour the field name; the quoted value is what matters.
            let log = lb.log();
            log.contains("worker started") && log.contains(&format!("\"{driver}\""))
        });
        let mut clients: Vec<Client> = (0..40).map(|_| Client::connect(lb.addr)).collect();
        for round in 0..3 {
            for (i, c) in clients.iter_mut().enumerate() {
                c.send(format!("GET /r{round}/c{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
                let r = c.response();
                assert_eq!(r.status, 200, "{driver}: round {round}, client {i}");
                assert_eq!(r.json()["path"], format!("/r{round}/c{i}"));
            }
            // The behaviour under test: clients that stay quiet well past the 10-20 ms
            // grace, so that every connection parks before its next request.
            std::thread::sleep(Duration::from_millis(150));
        }
        // One that closes while parked is closed on lb's side too: its descriptor goes.
        let before = fd_count(lb.pid());
        drop(clients.pop());
        wait_until("lb to close the connection its client closed", || {
            fd_count(lb.pid()) < before
        });
    }
}

#[test]
fn backend_dying_mid_response_closes_the_client() {
    let backend = Backend::start(Arc::new(|_req, res| {
        let _ = res.raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part");
        let _ = res.stream().shutdown(std::net::Shutdown::Both);
        res.close_after();
    }))
    .unwrap();
    let lb = Lb::start(&one_cluster(&[backend.addr], ""));
    let mut c = Client::connect(lb.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    // What lb sent before closing: the head and the part of the body it had, then EOF
    // (or a reset), not a connection left open (the read would time out).
    let mut got = Vec::new();
    let end = c.stream.read_to_end(&mut got);
    assert!(
        end.as_ref().map_or_else(
            |e| !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            |_| true
        ),
        "lb closed the connection: {end:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains("Content-Length: 100\r\n"),
        "the head went out as the backend sent it: {text:?}"
    );
    let body = &got[got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |p| p + 4)..];
    assert_eq!(body, b"only part", "the partial body, then the close");
    assert!(body.len() < 100, "a truncated body must not look complete");
}

#[test]
fn requests_spread_and_no_descriptor_leaks() {
    let b1 = Backend::start(echo("one")).unwrap();
    let b2 = Backend::start(echo("two")).unwrap();
    let lb = Lb::start(&one_cluster(&[b1.addr, b2.addr], ""));
    let before = fd_count(lb.pid());
    let counts = [AtomicUsize::new(0), AtomicUsize::new(0)];
    for _ in 0..40 {
        let v = get(lb.addr, "/").json();
        let i = if v["backend"] == "one" { 0 } else { 1 };
        counts[i].fetch_add(1, Ordering::SeqCst);
    }
    let (a, b) = (
        counts[0].load(Ordering::SeqCst),
        counts[1].load(Ordering::SeqCst),
    );
    assert!(a >= 10 && b >= 10, "round robin spread {a}/{b}");
    // Client connections are closed; pooled upstream connections may remain (at most one per
    // endpoint per worker here).
    wait_until("client sockets to close", || {
        fd_count(lb.pid()) <= before + 4
    });
}

#[test]
fn websocket_upgrade_becomes_a_tunnel() {
    use std::io::{Read, Write};
    // A backend that accepts the upgrade, greets, then echoes bytes until the client closes.
    let backend = Backend::start(ws_echo(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\nhello"))
    .unwrap();
    let lb = Lb::start(&one_cluster(&[backend.addr], ""));
    let mut c = Client::connect(lb.addr);
    c.send(b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    let r = c.try_response(true).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert_eq!(r.header("sec-websocket-accept"), Some("x"));
    let mut got = c.take_buffered();
    let mut buf = [0u8; 64];
    while got.len() < 5 {
        let n = c.stream.read(&mut buf).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"hello", "bytes the backend sent right after the 101");
    for msg in [&b"frame-1"[..], b"frame-2 longer", b"x"] {
        c.stream.write_all(msg).unwrap();
        let mut echoed = vec![0u8; msg.len()];
        c.stream.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, msg);
    }
    // Closing our side ends the tunnel: the backend sees the close and closes too.
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(c.closed_by_peer());

    // Other upgrades are not performed: the request is plain HTTP to the backend.
    let mut c = Client::connect(lb.addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
    assert_eq!(
        c.response().status,
        426,
        "the backend saw no upgrade request"
    );
}

#[test]
fn websocket_tunnel_closes_only_when_idle_both_ways() {
    // The backend pushes six events 150 ms apart while the client never speaks, then goes
    // quiet but keeps its socket open.
    let backend = Backend::start(Arc::new(|_req, res| {
        let _ = res.raw(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
        let s = res.stream();
        for i in 0..6u8 {
            std::thread::sleep(Duration::from_millis(150));
            if std::io::Write::write_all(s, &[b'0' + i]).is_err() {
                return;
            }
        }
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
        res.close_after();
    }))
    .unwrap();
    let cfg = one_cluster(&[backend.addr], "").replace(
        "[admin]",
        "[http]\nwebsocket_idle_timeout = \"400ms\"\n\n[admin]",
    );
    let lb = Lb::start(&cfg);
    let mut c = Client::connect(lb.addr);
    c.send(b"GET /events HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert_eq!(c.try_response(true).unwrap().status, 101);
    let mut got = c.take_buffered();
    let mut buf = [0u8; 16];
    while got.len() < 6 {
        let n = c.stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "the tunnel closed after {:?} though the backend was still pushing",
            got
        );
        got.extend_from_slice(&buf[..n]);
    }
    // 900 ms of one-way traffic outlived the 400 ms idle timeout.
    assert_eq!(got, b"012345");
    // Now neither side speaks: the tunnel ends within the client's read bound.
    let started = std::time::Instant::now();
    assert!(c.closed_by_peer());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the idle timeout"
    );
}

/// Opens a keep-alive connection and proves it is being served.
fn served_connection(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response().status, 200);
    c
}

/// A fresh connection's answer, and whether the proxy then closed it (not checked after a
/// 200, which keeps the connection open).
fn answer_to_new_connection(addr: std::net::SocketAddr) -> (u16, bool) {
    let mut c = Client::connect(addr);
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let status = c.response().status;
    (status, status != 200 && c.closed_by_peer())
}

#[test]
fn connection_limits_refuse_count_and_free_up() {
    let backend = Backend::start(echo("b")).unwrap();
    let base = one_cluster(&[backend.addr], "");
    let lb = Lb::start(&base.replace("[admin]", "[http]\nmax_connections_per_ip = 2\n\n[admin]"));
    let refused = |reason: &str| {
        metric(
            &lb.scrape(),
            "lb_connections_refused_total",
            &[("reason", reason)],
        )
    };

    let a = served_connection(lb.addr);
    let mut b = served_connection(lb.addr);
    assert_eq!(
        answer_to_new_connection(lb.addr),
        (429, true),
        "a third connection from one IP"
    );
    assert_eq!(refused("per_ip"), 1.0);
    // Closing one gives its place back.
    drop(a);
    wait_until("a freed place", || {
        answer_to_new_connection(lb.addr).0 == 200
    });

    // A reload sets a total limit below what is open: new connections get 503, the open ones
    // keep being served.
    let cfg = base.replace("[admin]", "[http]\nmax_connections = 1\n\n[admin]");
    std::fs::write(&lb.config_path, cfg).unwrap();
    assert_eq!(lb.admin("POST", "/reload").0, 200);
    assert_eq!(answer_to_new_connection(lb.addr), (503, true));
    assert!(refused("total") >= 1.0);
    b.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(
        b.response().status,
        200,
        "an admitted connection is not cut"
    );
    // A limit of zero is a mistake, not "unlimited".
    let bad = base.replace("[admin]", "[http]\nmax_connections_per_ip = 0\n\n[admin]");
    std::fs::write(&lb.config_path, bad).unwrap();
    let (status, body) = lb.admin("POST", "/reload");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("http.max_connections_per_ip"),
        "{body}"
    );

    // One connection per worker, two workers, and `b` holds one place: of six more
    // connections, at most one is served and every other is refused by its worker's limit.
    let cfg = base.replace(
        "[admin]",
        "[http]\nmax_connections_per_worker = 1\n\n[admin]",
    );
    std::fs::write(&lb.config_path, cfg).unwrap();
    assert_eq!(lb.admin("POST", "/reload").0, 200);
    let mut held = Vec::new();
    let mut served = 0;
    for _ in 0..6 {
        let mut c = Client::connect(lb.addr);
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        match c.response().status {
            200 => served += 1,
            503 => {}
            other => panic!("unexpected status {other}"),
        }
        held.push(c);
    }
    assert!(served <= 1, "{served} served past the per-worker limit");
    assert_eq!(refused("worker"), (6 - served) as f64);
    b.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(b.response().status, 200);
}

#[test]
fn slow_request_bodies_are_cut_below_the_minimum_rate() {
    let backend = Backend::start(echo("b")).unwrap();
    let cfg = one_cluster(&[backend.addr], "").replace(
        "[admin]",
        "[http]\nclient_body_timeout = \"300ms\"\nmin_body_rate = \"4KiB\"\n\n[admin]",
    );
    let lb = Lb::start(&cfg);

    // A trickle: 16 bytes every 50 ms, each read well inside the 300 ms idle timeout, but
    // 320 B/s on average.
    let mut c = Client::connect(lb.addr);
    c.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
    let started = std::time::Instant::now();
    let mut sent = 0;
    let answered = loop {
        c.stream.set_nonblocking(true).unwrap();
        let peeked = c.stream.peek(&mut [0u8; 1]);
        c.stream.set_nonblocking(false).unwrap();
        if matches!(peeked, Ok(n) if n > 0) {
            break true;
        }
        if sent >= 200 || c.stream.write_all(&[b'x'; 16]).is_err() {
            break false;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(answered, "the trickle was never cut ({sent} writes)");
    let r = c.response();
    assert_eq!(r.status, 408);
    assert!(String::from_utf8_lossy(&r.body).contains("minimum rate"));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "cut inside the grace period"
    );

    // A body in bursts with pauses, fast on average, is served.
    let mut c = Client::connect(lb.addr);
    let part = vec![b'y'; 16 * 1024];
    c.send(
        format!(
            "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            4 * part.len()
        )
        .as_bytes(),
    );
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(100));
        c.send(&part);
    }
    assert_eq!(c.response().status, 200);
}
