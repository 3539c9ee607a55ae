//! The access log: one JSON line per request. Workers format lines into a buffer of their own
//! and hand full buffers to one writer thread, so a slow disk never stalls a request.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::SystemTime;

use serde::Serialize;

/// A worker sends its buffer once it holds this much.
pub const FLUSH_AT: usize = 32 * 1024;
/// Buffers queued for the writer beyond this are dropped (and counted in the log).
const QUEUE: usize = 256;

/// One access log line.
#[derive(Serialize)]
pub struct Line<'a> {
    /// Written as RFC 3339 with milliseconds, straight into the line (no string per line).
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: SystemTime,
    /// The client: `ip:port` of the connection, or only `ip` where a trusted proxy's
    /// forwarding header named it (port 0 here).
    #[serde(serialize_with = "client_addr")]
    pub client: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    pub status: u16,
    pub route: Option<&'a str>,
    pub cluster: Option<&'a str>,
    pub endpoint: Option<SocketAddr>,
    pub variant: Option<&'a str>,
    pub bytes: u64,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    /// The error code when the request failed past planning (as in the error body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// For a gRPC call: the method called (`package.Service/Method`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_method: Option<&'a str>,
    /// For a gRPC call: the status the client got (`OK`, `UNAVAILABLE`, ...), if it got one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<&'static str>,
    /// The client's country, with `[geoip]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<&'a str>,
    /// On a versioned route: the API version, and its lifecycle phase when it is past its
    /// deprecation (`deprecated`, `warning`, `sunset`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version_phase: Option<&'static str>,
    /// On a route validated against an API spec: `valid`, `invalid` (refused, or passed in
    /// report mode: the status says which) or `too_large`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<&'static str>,
}

impl Line<'_> {
    /// Appends the line and a newline to `buf`.
    pub fn write(&self, buf: &mut Vec<u8>) {
        if serde_json::to_writer(&mut *buf, self).is_ok() {
            buf.push(b'\n');
        }
    }
}

fn client_addr<S: serde::Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    if a.port() == 0 {
        s.collect_str(&a.ip())
    } else {
        s.collect_str(a)
    }
}

fn rfc3339_millis<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

fn open(path: &str) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(if path == "stdout" {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )
    })
}

/// Starts the writer thread for `path` (`"stdout"` or a file, appended to). An empty buffer
/// sent to it ([`reopen`]) makes it open the file again, after logrotate moved it: lines
/// written before go to the old file, lines after to the new one. If the file cannot be
/// opened, the writer keeps the old one and says so.
pub fn start(path: &str) -> std::io::Result<mpsc::SyncSender<Vec<u8>>> {
    let mut out = open(path)?;
    let path = path.to_string();
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
    std::thread::Builder::new()
        .name("lb-access-log".into())
        .spawn(move || {
            for buf in rx {
                if buf.is_empty() {
                    match open(&path) {
                        Ok(new) => {
                            out = new;
                            tracing::info!(file = %path, "access log reopened");
                        }
                        Err(e) => tracing::error!(file = %path, error = %e,
                            "reopening the access log failed; writing on to the old file"),
                    }
                    continue;
                }
                if let Err(e) = out.write_all(&buf).and_then(|_| out.flush()) {
                    tracing::warn!(error = %e, "access log write failed");
                }
            }
        })?;
    Ok(tx)
}

/// Asks the writer to open its file again (SIGUSR1, after a log rotation).
pub fn reopen(tx: &mpsc::SyncSender<Vec<u8>>) {
    let _ = tx.send(Vec::new());
}
