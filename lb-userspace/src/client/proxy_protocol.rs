//! The PROXY protocol header (versions 1 and 2), which L4 balancers (HAProxy, AWS NLB, most
//! cloud load balancers) put in front of a TCP connection to say whose it is.
//!
//! A listener with `proxy_protocol = true` reads it before anything else, TLS included, under
//! the head timeout; a connection without a valid one is closed. Only the source address is
//! used; TLVs are skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included.
const V1_MAX: usize = 107;
/// The longest version 2 header lb accepts, TLVs included. AWS NLB's and HAProxy's are a
/// few hundred bytes at most; anything near 64 KiB is an attack on the buffer.
pub const V2_MAX: usize = 4096;

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header took, to drop from the front of the stream.
    pub len: usize,
    /// The client's address, or `None` where the header says to use the connection's own
    /// (v1 `UNKNOWN`, v2 `LOCAL`: the balancer's health checks).
    pub source: Option<SocketAddr>,
    pub version: u8,
}

/// What a header fails on.
pub type Invalid = &'static str;

/// Parses the header at the front of `data`. `Ok(None)`: not all of it has arrived yet (and
/// what has arrived can still become a valid one).
pub fn parse(data: &[u8]) -> Result<Option<Header>, Invalid> {
    let n = data.len().min(V2_SIG.len());
    if data[..n] == V2_SIG[..n] {
        return if n < V2_SIG.len() {
            Ok(None)
        } else {
            parse_v2(data)
        };
    }
    let n = data.len().min(6);
    if data[..n] == b"PROXY "[..n] {
        return if n < 6 { Ok(None) } else { parse_v1(data) };
    }
    Err("the connection did not start with a PROXY protocol header")
}

fn parse_v1(data: &[u8]) -> Result<Option<Header>, Invalid> {
    let window = &data[..data.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        if window.len() >= V1_MAX || window.contains(&b'\n') {
            return Err("the PROXY v1 header has no CRLF within 107 bytes");
        }
        return Ok(None);
    };
    let line =
        std::str::from_utf8(&data[6..end]).map_err(|_| "the PROXY v1 header is not ASCII")?;
    let mut parts = line.split(' ');
    let family = parts.next().unwrap_or("");
    let source = match family {
        "UNKNOWN" => None,
        "TCP4" | "TCP6" => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err("the PROXY v1 header needs four fields after TCP4/TCP6");
            };
            let (src, dst): (IpAddr, IpAddr) = match (src.parse(), dst.parse()) {
                (Ok(s), Ok(d)) => (s, d),
                _ => return Err("the PROXY v1 header has a malformed address"),
            };
            if (family == "TCP4") != src.is_ipv4() || src.is_ipv4() != dst.is_ipv4() {
                return Err("the PROXY v1 header's addresses do not match its family");
            }
            let port = |p: &str| {
                if p.is_empty() || p.len() > 5 || (p.len() > 1 && p.starts_with('0')) {
                    return None;
                }
                p.parse::<u16>().ok()
            };
            let (Some(sport), Some(_)) = (port(sport), port(dport)) else {
                return Err("the PROXY v1 header has a malformed port");
            };
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err("the PROXY v1 header's family is not TCP4, TCP6 or UNKNOWN"),
    };
    Ok(Some(Header {
        len: end + 2,
        source,
        version: 1,
    }))
}

fn parse_v2(data: &[u8]) -> Result<Option<Header>, Invalid> {
    if data.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, fam) = (data[12], data[13]);
    if ver_cmd >> 4 != 2 {
        return Err("the PROXY v2 header has an unknown version");
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err("the PROXY v2 header has an unknown command"),
    };
    let len = 16 + usize::from(u16::from_be_bytes([data[14], data[15]]));
    if len > V2_MAX {
        return Err("the PROXY v2 header is longer than 4096 bytes");
    }
    if data.len() < len {
        return Ok(None);
    }
    let body = &data[16..len];
    let header = |source| {
        Ok(Some(Header {
            len,
            source,
            version: 2,
        }))
    };
    if local {
        return header(None);
    }
    match fam {
        // TCP over IPv4.
        0x11 => {
            let Some(a) = body.get(..12) else {
                return Err("the PROXY v2 header is too short for IPv4 addresses");
            };
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let port = u16::from_be_bytes([a[8], a[9]]);
            header(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // TCP over IPv6.
        0x21 => {
            let Some(a) = body.get(..36) else {
                return Err("the PROXY v2 header is too short for IPv6 addresses");
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            header(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        // UNSPEC, UDP, Unix sockets: nothing lb can use as the client's address; the
        // connection's own stands, as the spec asks of receivers.
        _ => header(None),
    }
}

/// A version 1 header for `source` (tests and tools).
pub fn v1(source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        dest.ip(),
        source.port(),
        dest.port()
    )
    .into_bytes()
}

/// A version 2 `PROXY` header for `source` with `tlv_bytes` bytes of padding TLV (tests and
/// tools).
pub fn v2(source: SocketAddr, dest: SocketAddr, tlv_bytes: usize) -> Vec<u8> {
    let mut addrs = Vec::new();
    let fam = match (source.ip(), dest.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addrs.extend_from_slice(&s.octets());
            addrs.extend_from_slice(&d.octets());
            0x11
        }
        (s, d) => {
            let six = |ip: IpAddr| match ip {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
            addrs.extend_from_slice(&six(s));
            addrs.extend_from_slice(&six(d));
            0x21
        }
    };
    addrs.extend_from_slice(&source.port().to_be_bytes());
    addrs.extend_from_slice(&dest.port().to_be_bytes());
    if tlv_bytes >= 3 {
        // PP2_TYPE_NOOP, then its length and zeros.
        addrs.push(0x04);
        addrs.extend_from_slice(&((tlv_bytes - 3) as u16).to_be_bytes());
        addrs.resize(addrs.len() + tlv_bytes - 3, 0);
    }
    let mut out = V2_SIG.to_vec();
    out.push(0x21);
    out.push(fam);
    out.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&addrs);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn v1_headers_of_both_families() {
        let h = parse(b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\r\nGET /").expect("ok");
        assert_eq!(
            h,
            Some(Header {
                len: 45,
                source: Some(sa("192.0.2.1:51000")),
                version: 1
            })
        );
        let h = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 80\r\n")
            .expect("ok")
            .expect("whole");
        assert_eq!(h.source, Some(sa("[2001:db8::1]:1")));
        let h = parse(b"PROXY UNKNOWN whatever\r\n")
            .expect("ok")
            .expect("whole");
        assert_eq!(h.source, None);
    }

    #[test]
    fn v2_headers_of_both_families_with_tlvs() {
        for (src, dst) in [
            ("203.0.113.9:4000", "10.0.0.1:80"),
            ("[2001:db8::9]:4000", "[2001:db8::1]:80"),
        ] {
            let mut bytes = v2(sa(src), sa(dst), 40);
            let len = bytes.len();
            bytes.extend_from_slice(b"\x16\x03\x01");
            let h = parse(&bytes).expect("ok").expect("whole");
            assert_eq!((h.len, h.source, h.version), (len, Some(sa(src)), 2));
        }
        // LOCAL: the balancer's own connection.
        let mut local = V2_SIG.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local).expect("ok").expect("whole").source,
            None,
            "LOCAL"
        );
    }

    #[test]
    fn every_prefix_of_a_header_waits_for_more() {
        let one = v1(sa("192.0.2.1:5"), sa("192.0.2.2:6"));
        let two = v2(sa("[2001:db8::9]:4000"), sa("[2001:db8::1]:80"), 10);
        for bytes in [one, two] {
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut]), Ok(None), "cut at {cut}");
            }
            assert!(parse(&bytes).expect("whole").is_some());
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120]].concat();
        assert!(parse(&long).is_err(), "no CRLF within 107 bytes");
        let mut v = V2_SIG.to_vec();
        v.extend_from_slice(&[0x31, 0x11, 0, 12]);
        assert!(parse(&v).is_err(), "version 3");
        let mut v = V2_SIG.to_vec();
        v.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&v).is_err(), "64 KiB of TLVs");
        let mut v = V2_SIG.to_vec();
        v.extend_from_slice(&[0x21, 0x21, 0, 12]);
        v.resize(28, 0);
        assert!(parse(&v).is_err(), "IPv6 family with IPv4-sized addresses");
    }
}
