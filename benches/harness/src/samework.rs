//! Checks on the wire that the proxies do the same work before any of them is measured.
//!
//! A proxy that forwards fewer headers sends the backend a shorter head and skips work the
//! others do, and its numbers look better for it. So before the load runs, a capturing
//! backend takes the port the hello server will use, each proxy forwards one request to it,
//! and the heads are compared: every proxy must send the backend the same header names with
//! the same values (Via's value names the proxy, so only its presence counts), and must add
//! at least the response headers `lb` adds.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::procs::Proc;

/// What the backend answers; the proxies' additions are what they add to these headers.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n";
const BACKEND_HEADERS: [&str; 2] = ["content-type", "content-length"];
/// Header whose value names the proxy, so only its presence is compared.
const NAMES_THE_PROXY: &str = "via";
/// Bound on every wait of the check.
const WAIT: Duration = Duration::from_secs(5);

/// What one proxy did with the probe request.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Request headers the backend received: lowercase name to value.
    pub request: BTreeMap<String, String>,
    /// Bytes of the request head the backend received.
    pub request_head_bytes: usize,
    /// Response headers the proxy added to the backend's.
    pub response_added: BTreeSet<String>,
}

/// A backend on `addr` that sends each request head it reads down a channel.
struct Capture {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    heads: mpsc::Receiver<Vec<u8>>,
}

impl Capture {
    fn bind(addr: SocketAddr) -> Result<Capture> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("binding the capture backend {addr}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, heads) = mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(conn) = conn {
                    let tx = tx.clone();
                    // Ends when the proxy closes the connection or stays quiet past WAIT.
                    std::thread::spawn(move || serve(conn, tx));
                }
            }
        });
        Ok(Capture {
            addr,
            stop,
            thread: Some(thread),
            heads,
        })
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag; the listener closes with the thread.
        let _ = TcpStream::connect_timeout(&self.addr, WAIT);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads request heads off one connection, reporting each and answering it.
fn serve(mut conn: TcpStream, tx: mpsc::Sender<Vec<u8>>) {
    let _ = conn.set_read_timeout(Some(WAIT));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = head_end(&buf) {
            let head: Vec<u8> = buf.drain(..end).collect();
            if tx.send(head).is_err() || conn.write_all(RESPONSE).is_err() {
                return;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Header names (lowercase) and values of a request or response head.
fn headers(head: &[u8], request: bool) -> Result<BTreeMap<String, String>> {
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let parsed = if request {
        let mut r = httparse::Request::new(&mut storage);
        r.parse(head)
            .map(|s| s.is_complete())
            .map(|c| (c, r.headers))
    } else {
        let mut r = httparse::Response::new(&mut storage);
        r.parse(head)
            .map(|s| s.is_complete())
            .map(|c| (c, r.headers))
    };
    let (complete, hs) = parsed.context("parsing a head")?;
    if !complete {
        bail!("incomplete head: {:?}", String::from_utf8_lossy(head));
    }
    Ok(hs
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect())
}

/// Sends the probe through the proxy and returns the response head.
fn probe(proxy: SocketAddr) -> Result<Vec<u8>> {
    let mut c = TcpStream::connect_timeout(&proxy, WAIT)?;
    c.set_read_timeout(Some(WAIT))?;
    c.write_all(
        b"GET /same-work?probe=1 HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: lb-bench\r\nAccept: */*\r\n\r\n",
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        let n = c.read(&mut chunk).context("reading the proxy's response")?;
        if n == 0 {
            bail!("the proxy closed before a full response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Runs the probe through each proxy (`start` starts one and gives its address) with a
/// capturing backend on `backend`, and fails unless they all do the same work as `lb`.
pub fn check(
    proxies: &[String],
    backend: SocketAddr,
    mut start: impl FnMut(&str) -> Result<(Proc, SocketAddr)>,
) -> Result<Vec<(String, Seen)>> {
    let capture = Capture::bind(backend)?;
    let mut seen = Vec::new();
    for name in proxies {
        let (proc, addr) = start(name)?;
        while capture.heads.try_recv().is_ok() {}
        let response = probe(addr).with_context(|| format!("probing {name}"))?;
        let head = capture
            .heads
            .recv_timeout(WAIT)
            .with_context(|| format!("{name} answered without asking the backend"))?;
        drop(proc);
        let resp = headers(&response, false)?;
        let status = response.get(9..12).unwrap_or_default();
        if status != b"200" {
            bail!(
                "{name} answered the probe with {:?}",
                String::from_utf8_lossy(&response)
            );
        }
        seen.push((
            name.clone(),
            Seen {
                request: headers(&head, true)?,
                request_head_bytes: head.len(),
                response_added: resp
                    .into_keys()
                    .filter(|k| !BACKEND_HEADERS.contains(&k.as_str()))
                    .collect(),
            },
        ));
    }
    drop(capture);
    compare(&seen)?;
    Ok(seen)
}

/// Fails with what differs when a proxy does not do `lb`'s work.
pub fn compare(seen: &[(String, Seen)]) -> Result<()> {
    let Some((_, lb)) = seen.iter().find(|(n, _)| n == "lb") else {
        return Ok(());
    };
    let comparable = |s: &Seen| -> BTreeMap<String, String> {
        s.request
            .iter()
            .map(|(k, v)| {
                let v = if k == NAMES_THE_PROXY { "" } else { v.as_str() };
                (k.clone(), v.to_string())
            })
            .collect()
    };
    let want = comparable(lb);
    let mut problems = Vec::new();
    for (name, s) in seen.iter().filter(|(n, _)| n != "lb") {
        let got = comparable(s);
        if got != want {
            let extra: Vec<_> = got
                .iter()
                .filter(|(k, v)| want.get(*k) != Some(v))
                .collect();
            let missing: Vec<_> = want
                .iter()
                .filter(|(k, v)| got.get(*k) != Some(v))
                .collect();
            problems.push(format!(
                "{name} sends the backend {extra:?} where lb sends {missing:?}"
            ));
        }
        let lacking: Vec<_> = lb.response_added.difference(&s.response_added).collect();
        if !lacking.is_empty() {
            problems.push(format!(
                "{name} does not add the response headers {lacking:?} that lb adds"
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the proxies would not do the same work, so their numbers would not compare: {}. \
             Fix the configs in benches/harness/src/scenarios.rs",
            problems.join("; ")
        );
    }
    Ok(())
}

/// The check's findings for the JSON report.
pub fn to_json(seen: &[(String, Seen)]) -> Value {
    let per: serde_json::Map<String, Value> = seen
        .iter()
        .map(|(name, s)| {
            (
                name.clone(),
                json!({
                    "request_headers": s.request.keys().collect::<Vec<_>>(),
                    "request_head_bytes": s.request_head_bytes,
                    "response_added": s.response_added,
                }),
            )
        })
        .collect();
    Value::Object(per)
}

/// One Markdown paragraph saying what was checked.
pub fn markdown(v: &Value) -> String {
    let Some(per) = v.as_object() else {
        return String::new();
    };
    let mut s = String::from(
        "\n## Same work\n\nChecked on the wire before the load: every proxy sent the backend the same \
         request headers with the same values (Via by presence) and added at least lb's response headers.\n\n\
         | proxy | request headers to the backend | head bytes | response headers added |\n|---|---|---|---|\n",
    );
    let list = |x: &Value| -> String {
        x.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, p) in per {
        s.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            list(&p["request_headers"]),
            p["request_head_bytes"],
            list(&p["response_added"]),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(req: &[(&str, &str)], added: &[&str]) -> Seen {
        Seen {
            request: req
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            request_head_bytes: 0,
            response_added: added.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn same_headers_with_a_different_via_compare_equal() {
        let all = vec![
            (
                "lb".to_string(),
                seen(&[("host", "a"), ("via", "1.1 lb")], &["via"]),
            ),
            (
                "nginx".to_string(),
                seen(&[("host", "a"), ("via", "1.1 nginx")], &["via", "server"]),
            ),
        ];
        compare(&all).unwrap();
    }

    #[test]
    fn a_missing_or_different_header_fails_and_says_which() {
        let lb = (
            "lb".to_string(),
            seen(&[("host", "a"), ("x-forwarded-for", "127.0.0.1")], &[]),
        );
        let short = ("haproxy".to_string(), seen(&[("host", "a")], &[]));
        let e = compare(&[lb.clone(), short]).unwrap_err().to_string();
        assert!(
            e.contains("haproxy") && e.contains("x-forwarded-for"),
            "{e}"
        );
        let other_host = (
            "nginx".to_string(),
            seen(&[("host", "hello"), ("x-forwarded-for", "127.0.0.1")], &[]),
        );
        let e = compare(&[lb, other_host]).unwrap_err().to_string();
        assert!(e.contains("\"hello\""), "{e}");
    }

    #[test]
    fn a_response_header_lb_adds_must_be_added_by_all() {
        let lb = ("lb".to_string(), seen(&[], &["via"]));
        let bare = ("nginx".to_string(), seen(&[], &["server"]));
        let e = compare(&[lb, bare]).unwrap_err().to_string();
        assert!(e.contains("response headers") && e.contains("via"), "{e}");
    }

    #[test]
    fn heads_parse_to_lowercase_names() {
        let h = headers(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
            true,
        )
        .unwrap();
        assert_eq!(
            h.get("x-forwarded-for").map(String::as_str),
            Some("1.2.3.4")
        );
        assert!(headers(b"GET / HTTP/1.1\r\nHost: x\r\n", true).is_err());
    }
}
