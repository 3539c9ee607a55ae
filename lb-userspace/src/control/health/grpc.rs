//! gRPC health checks (`grpc.health.v1.Health/Check`): one HTTP/2 call per check, over the
//! same TLS (or plain text) and HTTP/2 code as requests, on a small runtime of the health
//! thread's own (health checks never run on a worker).

use std::cell::RefCell;
use std::time::Duration;

use bytes::Bytes;

use super::Target;
use crate::net::BufConn;

thread_local! {
    /// The check thread's runtime, made at its first gRPC check.
    static RUNTIME: RefCell<Option<monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>>> = const { RefCell::new(None) };
}

/// 200 if the service is SERVING, or why not.
pub fn check(target: &Target, service: &str, timeout: Duration) -> Result<u16, String> {
    RUNTIME.with(|rt| {
        let mut rt = rt.borrow_mut();
        if rt.is_none() {
            let built = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .map_err(|e| format!("health check runtime: {e}"))?;
            *rt = Some(built);
        }
        let Some(rt) = rt.as_mut() else {
            return Err("no runtime".to_string());
        };
        rt.block_on(async {
            match crate::timer::timeout(timeout, call(target, service, timeout)).await {
                Ok(r) => r,
                Err(_) => Err("timed out".to_string()),
            }
        })
    })
}

/// The call itself.
async fn call(target: &Target, service: &str, timeout: Duration) -> Result<u16, String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: std::fmt::Arguments<'_>| format!("{what}: {err}")
    };
    let stream = monoio::net::TcpStream::connect_addr(target.addr)
        .await
        .map_err(|x| e("connect")(format_args!("{x}")))?;
    let conn = match &target.tls {
        None => BufConn::new(stream, Vec::new()),
        Some(t) => {
            let session = rustls::ClientConnection::new(t.config.clone(), t.name.clone())
                .map_err(|x| e("tls")(format_args!("{x}")))?;
            let mut c = BufConn::new_tls_client(stream, Vec::with_capacity(4096), session);
            c.handshake(timeout)
                .await
                .map_err(|x| e("tls")(format_args!("{x:?}")))?;
            c
        }
    };
    let scheme = if target.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let parts = conn.hand_over();
    let io = crate::h2io::H2Io::new(parts.stream, parts.tls, parts.pending, None);
    let (send, connection) = h2::client::handshake(io)
        .await
        .map_err(|x| e("http2")(format_args!("{x}")))?;
    monoio::spawn(async move {
        let _ = connection.await;
    });
    let mut send = send
        .ready()
        .await
        .map_err(|x| e("http2")(format_args!("{x}")))?;
    let request = http::Request::post(format!(
        "{scheme}://{}/grpc.health.v1.Health/Check",
        target.addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .map_err(|x| e("request")(format_args!("{x}")))?;
    let (response, mut body) = send
        .send_request(request, false)
        .map_err(|x| e("request")(format_args!("{x}")))?;
    body.send_data(Bytes::from(request_message(service)), true)
        .map_err(|x| e("request")(format_args!("{x}")))?;
    let response = response
        .await
        .map_err(|x| e("response")(format_args!("{x}")))?;
    if response.status() != 200 {
        return Err(format!("HTTP {}", response.status()));
    }
    let status_in = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| crate::http::h2::parse_grpc_status(v.as_bytes()))
    };
    if let Some(code) = status_in(response.headers()).filter(|c| *c != 0) {
        return Err(format!("grpc-status {code}"));
    }
    let mut data = response.into_body();
    let mut message = Vec::new();
    while let Some(chunk) = data.data().await {
        let chunk = chunk.map_err(|x| e("response")(format_args!("{x}")))?;
        let _ = data.flow_control().release_capacity(chunk.len());
        message.extend_from_slice(&chunk);
        if message.len() > 64 * 1024 {
            return Err("response too large".into());
        }
    }
    let trailers = data
        .trailers()
        .await
        .map_err(|x| e("trailers")(format_args!("{x}")))?;
    match trailers.as_ref().and_then(status_in) {
        Some(0) => {}
        Some(code) => return Err(format!("grpc-status {code}")),
        None => return Err("no grpc-status".into()),
    }
    match serving_status(&message) {
        Some(1) => Ok(200),
        Some(s) => Err(format!("serving status {s}")),
        None => Err("unreadable HealthCheckResponse".into()),
    }
}

/// A gRPC message (`0`, 4-byte length, bytes) carrying `HealthCheckRequest { service }`.
fn request_message(service: &str) -> Vec<u8> {
    let mut msg = Vec::new();
    if !service.is_empty() {
        // Field 1, length-delimited; the config keeps names under 128 bytes.
        msg.push(0x0a);
        msg.push(service.len() as u8);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = vec![0u8];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out
}

/// `HealthCheckResponse.status` (field 1, a varint) from one gRPC message; 0 (UNKNOWN)
/// when the field is absent, as protobuf leaves defaults out.
fn serving_status(frame: &[u8]) -> Option<u64> {
    let len = u32::from_be_bytes(frame.get(1..5)?.try_into().ok()?) as usize;
    let body = frame.get(5..)?.get(..len)?;
    let Some((&tag, rest)) = body.split_first() else {
        return Some(0);
    };
    // HealthCheckResponse has only `status`: anything else is not one.
    if tag != 0x08 {
        return None;
    }
    let mut v = 0u64;
    for (i, b) in rest.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn health_messages_encode_and_decode() {
        assert_eq!(super::request_message(""), vec![0, 0, 0, 0, 0]);
        assert_eq!(
            super::request_message("svc"),
            vec![0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']
        );
        assert_eq!(super::serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(super::serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(super::serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(super::serving_status(&[0, 0, 0]), None);
    }
}
