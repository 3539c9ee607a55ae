//! An ACME client (RFC 8555) for one certificate at a time, run on a control thread: account,
//! order, HTTP-01 challenges answered by lb's own listeners, finalisation with a CSR, and the
//! issued chain. Blocking HTTPS over rustls; every call is bounded by a timeout.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::jws::{b64, AccountKey};

/// One HTTP exchange's bound.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an order may take from creation to the issued certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest ACME response read.
const MAX_RESPONSE: usize = 1 << 20;
/// Tries of one signed request that the server refuses with `badNonce`.
const NONCE_TRIES: usize = 5;

/// An HTTP response.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("invalid JSON from the CA: {e}"))
    }

    /// The ACME problem document's type and detail, for errors.
    fn problem(&self) -> String {
        let v = self.json().unwrap_or_default();
        format!(
            "HTTP {}: {} {}",
            self.status,
            v["type"].as_str().unwrap_or(""),
            v["detail"].as_str().unwrap_or("")
        )
    }

    fn is_bad_nonce(&self) -> bool {
        self.status == 400
            && self
                .json()
                .is_ok_and(|v| v["type"].as_str() == Some("urn:ietf:params:acme:error:badNonce"))
    }
}

/// `https://host[:port]/path` split up.
fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url}: ACME URLs must be https://"))?;
    split_rest(url, rest, 443)
}

/// The host, port and path after the scheme.
fn split_rest(url: &str, rest: &str, default_port: u16) -> Result<(String, u16, String), String> {
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse() {
            Ok(port) => (h, port),
            Err(_) => (authority, default_port),
        },
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok((host.to_string(), port, path.to_string()))
}

/// Where one exchange goes.
struct Target<'a> {
    url: &'a str,
    host: &'a str,
    port: u16,
    path: &'a str,
    tls: bool,
}

/// A byte stream, plain or TLS.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A blocking HTTPS client, one connection per request.
pub struct Http {
    tls: Arc<rustls::ClientConfig>,
}

impl Http {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Http {
        Http { tls }
    }

    /// A GET of an `http://` or `https://` URL (a JWKS): the status and the body.
    pub fn get(&self, url: &str) -> Result<(u16, Vec<u8>), String> {
        let reply = match url.strip_prefix("http://") {
            Some(rest) => {
                let (host, port, path) = split_rest(url, rest, 80)?;
                let t = Target {
                    url,
                    host: &host,
                    port,
                    path: &path,
                    tls: false,
                };
                self.exchange(&t, "GET", None)?
            }
            None => self.request("GET", url, None)?,
        };
        Ok((reply.status, reply.body))
    }

    fn request(&self, method: &str, url: &str, body: Option<&str>) -> Result<Reply, String> {
        let (host, port, path) = split_url(url)?;
        let t = Target {
            url,
            host: &host,
            port,
            path: &path,
            tls: true,
        };
        self.exchange(&t, method, body)
    }

    /// One exchange over a new connection.
    fn exchange(&self, t: &Target<'_>, method: &str, body: Option<&str>) -> Result<Reply, String> {
        let Target {
            url,
            host,
            port,
            path,
            ..
        } = *t;
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{url}: {e}"))?
            .next()
            .ok_or_else(|| format!("{url}: {host} does not resolve"))?;
        let tcp = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
            .map_err(|e| format!("{url}: connect: {e}"))?;
        tcp.set_read_timeout(Some(REQUEST_TIMEOUT))
            .and_then(|()| tcp.set_write_timeout(Some(REQUEST_TIMEOUT)))
            .map_err(|e| format!("{url}: {e}"))?;
        let mut s: Box<dyn ReadWrite> = if t.tls {
            let name = rustls_pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| format!("{url}: {e}"))?;
            let session = rustls::ClientConnection::new(self.tls.clone(), name)
                .map_err(|e| format!("{url}: {e}"))?;
            Box::new(rustls::StreamOwned::new(session, tcp))
        } else {
            Box::new(tcp)
        };
        let host_header = if port == 443 || (!t.tls && port == 80) {
            host.to_string()
        } else {
            format!("{host}:{port}")
        };
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: lb\r\nAccept: */*\r\nConnection: close\r\n"
        );
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/jose+json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        s.write_all(req.as_bytes())
            .map_err(|e| format!("{url}: send: {e}"))?;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let until = Instant::now() + REQUEST_TIMEOUT;
        loop {
            if Instant::now() > until {
                return Err(format!(
                    "{url}: no complete answer within {REQUEST_TIMEOUT:?}"
                ));
            }
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                // Servers that close without close_notify: what arrived is the answer.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(format!("{url}: read: {e}")),
            }
            if raw.len() > MAX_RESPONSE {
                return Err(format!("{url}: response larger than {MAX_RESPONSE} bytes"));
            }
        }
        parse_reply(&raw, method == "HEAD").map_err(|e| format!("{url}: {e}"))
    }
}

fn parse_reply(raw: &[u8], head_only: bool) -> Result<Reply, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("incomplete response".into()),
        Err(e) => return Err(format!("invalid response: {e}")),
    };
    let status = res.code.unwrap_or(0);
    let headers: Vec<(String, String)> = res
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let rest = &raw[head_len..];
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else if let Some((_, len)) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        let len: usize = len.parse().map_err(|_| "bad Content-Length")?;
        rest.get(..len).ok_or("response body cut short")?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut input: &[u8]) -> Result<Vec<u8>, String> {
    use crate::http::chunked::{ChunkedDecoder, Step};
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    loop {
        match d
            .step(input)
            .map_err(|e| format!("invalid chunked body: {e:?}"))?
        {
            Step::Data(n) => {
                out.extend_from_slice(&input[..n]);
                input = &input[n..];
            }
            Step::Skip(n) | Step::LastChunk(n) | Step::Trailer(n) => input = &input[n..],
            Step::End(_) => return Ok(out),
            Step::NeedMore => return Err("chunked body cut short".into()),
        }
    }
}

/// A session with one ACME server and one account.
pub struct Acme<'a> {
    http: Http,
    key: &'a AccountKey,
    new_nonce: String,
    new_account: String,
    new_order: String,
    nonce: Option<String>,
    kid: Option<String>,
}

/// What an order needs from the caller: publishing and withdrawing HTTP-01 answers.
pub trait Challenges {
    fn publish(&self, token: &str, key_authorization: &str);
    fn withdraw(&self, token: &str);
}

impl<'a> Acme<'a> {
    /// Reads the directory at `url`.
    pub fn connect(http: Http, url: &str, key: &'a AccountKey) -> Result<Acme<'a>, String> {
        let dir = http.request("GET", url, None)?;
        if dir.status != 200 {
            return Err(format!("directory {url}: {}", dir.problem()));
        }
        let v = dir.json()?;
        let field = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("directory {url} has no {k}"))
        };
        Ok(Acme {
            new_nonce: field("newNonce")?,
            new_account: field("newAccount")?,
            new_order: field("newOrder")?,
            http,
            key,
            nonce: None,
            kid: None,
        })
    }

    fn fresh_nonce(&mut self) -> Result<String, String> {
        if let Some(n) = self.nonce.take() {
            return Ok(n);
        }
        let r = self.http.request("HEAD", &self.new_nonce.clone(), None)?;
        r.header("Replay-Nonce")
            .map(str::to_string)
            .ok_or_else(|| "the CA sent no Replay-Nonce".to_string())
    }

    /// A signed POST (`payload` `None`: POST-as-GET), retried on `badNonce`.
    fn post(&mut self, url: &str, payload: Option<&str>) -> Result<Reply, String> {
        for _ in 0..NONCE_TRIES {
            let nonce = self.fresh_nonce()?;
            let body = self.key.sign(url, &nonce, self.kid.as_deref(), payload)?;
            let r = self.http.request("POST", url, Some(&body))?;
            self.nonce = r.header("Replay-Nonce").map(str::to_string);
            if r.is_bad_nonce() {
                continue;
            }
            return Ok(r);
        }
        Err(format!("{url}: the CA kept refusing nonces"))
    }

    /// Registers the account (or finds the one this key already has).
    pub fn account(&mut self, email: Option<&str>) -> Result<(), String> {
        let contact = email.map_or_else(String::new, |e| {
            format!(
                r#","contact":[{}]"#,
                serde_json::Value::String(format!("mailto:{e}"))
            )
        });
        let payload = format!(r#"{{"termsOfServiceAgreed":true{contact}}}"#);
        let url = self.new_account.clone();
        let r = self.post(&url, Some(&payload))?;
        if r.status != 200 && r.status != 201 {
            return Err(format!("new account: {}", r.problem()));
        }
        self.kid = Some(
            r.header("Location")
                .ok_or("the CA sent no account URL")?
                .to_string(),
        );
        Ok(())
    }

    /// Orders a certificate for `hosts` with the key behind `csr_der`, answering HTTP-01
    /// challenges through `challenges`. Returns the PEM chain.
    pub fn order(
        &mut self,
        hosts: &[String],
        csr_der: &[u8],
        challenges: &dyn Challenges,
    ) -> Result<String, String> {
        let started = Instant::now();
        let ids: Vec<String> = hosts
            .iter()
            .map(|h| {
                format!(
                    r#"{{"type":"dns","value":{}}}"#,
                    serde_json::Value::String(h.clone())
                )
            })
            .collect();
        let url = self.new_order.clone();
        let r = self.post(
            &url,
            Some(&format!(r#"{{"identifiers":[{}]}}"#, ids.join(","))),
        )?;
        if r.status != 201 {
            return Err(format!("new order: {}", r.problem()));
        }
        let order_url = r
            .header("Location")
            .ok_or("the CA sent no order URL")?
            .to_string();
        let order = r.json()?;
        let authzs: Vec<String> = order["authorizations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let finalize = order["finalize"]
            .as_str()
            .ok_or("the order has no finalize URL")?
            .to_string();
        let mut published = Vec::new();
        let result = self.authorize(&authzs, challenges, &mut published, started);
        for token in &published {
            challenges.withdraw(token);
        }
        result?;
        let r = self.post(&finalize, Some(&format!(r#"{{"csr":"{}"}}"#, b64(csr_der))))?;
        if r.status != 200 {
            return Err(format!("finalize: {}", r.problem()));
        }
        let done = self.poll(&order_url, "order", started)?;
        let cert_url = done["certificate"]
            .as_str()
            .ok_or("the valid order has no certificate URL")?
            .to_string();
        let r = self.post(&cert_url, None)?;
        if r.status != 200 {
            return Err(format!("certificate: {}", r.problem()));
        }
        String::from_utf8(r.body).map_err(|_| "the certificate chain is not text".to_string())
    }

    /// Answers the HTTP-01 challenge of every pending authorization and waits for each to
    /// turn valid.
    fn authorize(
        &mut self,
        authzs: &[String],
        challenges: &dyn Challenges,
        published: &mut Vec<String>,
        started: Instant,
    ) -> Result<(), String> {
        for authz in authzs {
            let r = self.post(authz, None)?;
            if r.status != 200 {
                return Err(format!("authorization: {}", r.problem()));
            }
            let a = r.json()?;
            if a["status"] == "valid" {
                continue;
            }
            let ch = a["challenges"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "http-01"))
                .ok_or("the CA offers no http-01 challenge")?;
            let token = ch["token"].as_str().ok_or("challenge without a token")?;
            if token.is_empty()
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err("the CA sent a malformed challenge token".into());
            }
            let ch_url = ch["url"]
                .as_str()
                .ok_or("challenge without a URL")?
                .to_string();
            challenges.publish(token, &format!("{token}.{}", self.key.thumbprint()));
            published.push(token.to_string());
            let r = self.post(&ch_url, Some("{}"))?;
            if r.status != 200 {
                return Err(format!("challenge: {}", r.problem()));
            }
            self.poll(authz, "authorization", started)?;
        }
        Ok(())
    }

    /// Polls `url` until its status is `valid`; `invalid` (or the time running out) fails.
    fn poll(
        &mut self,
        url: &str,
        what: &str,
        started: Instant,
    ) -> Result<serde_json::Value, String> {
        let mut wait = Duration::from_millis(100);
        loop {
            let r = self.post(url, None)?;
            if r.status != 200 {
                return Err(format!("{what}: {}", r.problem()));
            }
            let v = r.json()?;
            match v["status"].as_str() {
                Some("valid") => return Ok(v),
                Some("invalid") => {
                    let why = v["challenges"]
                        .as_array()
                        .and_then(|cs| cs.iter().find_map(|c| c["error"]["detail"].as_str()))
                        .or_else(|| v["error"]["detail"].as_str())
                        .unwrap_or("no reason given");
                    return Err(format!("{what} is invalid: {why}"));
                }
                _ => {}
            }
            if started.elapsed() > ORDER_TIMEOUT {
                return Err(format!("{what} still not valid after {ORDER_TIMEOUT:?}"));
            }
            let asked = r
                .header("Retry-After")
                .and_then(|s| s.parse::<u64>().ok())
                .map(Duration::from_secs);
            std::thread::sleep(asked.unwrap_or(wait).min(Duration::from_secs(5)));
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            split_url("https://ca.example/dir").expect("url"),
            ("ca.example".into(), 443, "/dir".into())
        );
        assert_eq!(
            split_url("https://127.0.0.1:14000/dir").expect("url"),
            ("127.0.0.1".into(), 14000, "/dir".into())
        );
        assert_eq!(
            split_url("https://[::1]:8443").expect("url"),
            ("::1".into(), 8443, "/".into())
        );
        assert!(split_url("http://ca.example/dir").is_err());
    }

    #[test]
    fn replies_are_read_with_either_framing() {
        let r = parse_reply(
            b"HTTP/1.1 201 Created\r\nLocation: /o/1\r\nContent-Length: 2\r\n\r\n{}",
            false,
        )
        .expect("reply");
        assert_eq!(
            (r.status, r.header("location"), &r.body[..]),
            (201, Some("/o/1"), &b"{}"[..])
        );
        let r = parse_reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
        .expect("reply");
        assert_eq!(r.body, b"abcde");
        let bad = parse_reply(
            b"HTTP/1.1 400 Bad\r\nContent-Length: 48\r\n\r\n{\"type\":\"urn:ietf:params:acme:error:badNonce\"}  ",
            false,
        )
        .expect("reply");
        assert!(bad.is_bad_nonce());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", false).is_err());
    }
}
