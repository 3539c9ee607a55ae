//! Writing heads into a reused output buffer without allocating.

/// Appends `n` in decimal.
pub fn push_dec(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `n` in lower-case hexadecimal (a chunk size).
pub fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends one header line.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The reason phrase `lb` uses for the statuses it produces itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Appends `HTTP/1.1 <status> <reason>\r\n` for a status `lb` produces itself.
pub fn push_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_dec(out, status as u64);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes a complete short JSON error response: `{"status":502,"error":"bad_gateway","message":"…"}`.
/// `close` adds `Connection: close`.
pub fn error_response(out: &mut Vec<u8>, status: u16, code: &str, message: &str, close: bool) {
    out.clear();
    push_status_line(out, status);
    out.extend_from_slice(b"Content-Type: application/json\r\nCache-Control: no-store\r\n");
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    // The body is built from fixed strings of ours; only quotes and backslashes need escaping.
    let body_len = 39 + code.len() + message.len() + escapes(message);
    out.extend_from_slice(b"Content-Length: ");
    push_dec(out, body_len as u64);
    out.extend_from_slice(b"\r\n\r\n{\"status\":");
    push_dec(out, status as u64);
    out.extend_from_slice(b",\"error\":\"");
    out.extend_from_slice(code.as_bytes());
    out.extend_from_slice(b"\",\"message\":\"");
    for &b in message.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.extend_from_slice(b"\"}\n");
}

fn escapes(s: &str) -> usize {
    s.bytes().filter(|&b| b == b'"' || b == b'\\').count()
}

/// An RFC 9457 problem: `application/problem+json`.
pub fn problem(status: u16, title: &str, detail: &str, extra: serde_json::Value) -> Vec<u8> {
    let mut v = serde_json::json!({
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    });
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    let mut body = v.to_string().into_bytes();
    body.push(b'\n');
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        let mut v = Vec::new();
        push_dec(&mut v, 0);
        v.push(b' ');
        push_dec(&mut v, u64::MAX);
        v.push(b' ');
        push_hex(&mut v, 0);
        v.push(b' ');
        push_hex(&mut v, 0x1a2b);
        assert_eq!(v, b"0 18446744073709551615 0 1a2b");
    }

    #[test]
    fn error_response_is_well_framed_json() {
        let mut out = Vec::new();
        error_response(&mut out, 502, "bad_gateway", "backend \"x\" refused", true);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(head.contains("Connection: close"));
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, body.len());
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 502);
        assert_eq!(v["error"], "bad_gateway");
        assert_eq!(v["message"], "backend \"x\" refused");
    }
}
