//! Who and where the client is: its real address (the socket's peer, the PROXY protocol's
//! source, or the forwarding headers of a trusted proxy), and the prefix sets matched on it.
//!
//! Every feature that uses the client's address (`client_ip` sticky keys and matchers, rate
//! limits, the access log, `X-Forwarded-For`) uses the one this module resolves, once per
//! request. Per-IP connection limits count the connection's address (the PROXY protocol's
//! source where the listener reads it): forwarding headers arrive only with a request.

pub mod geo;
pub mod ipset;
pub mod jwt;
pub mod proxy_protocol;

use std::net::{IpAddr, SocketAddr};

pub use ipset::IpSet;

/// Where lb took a client's address from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddrSource {
    /// The TCP connection's peer.
    #[default]
    Peer,
    /// The PROXY protocol header of the connection.
    ProxyProtocol,
    /// `X-Forwarded-For`, sent by a trusted proxy.
    XForwardedFor,
    /// `Forwarded` (RFC 7239), sent by a trusted proxy.
    Forwarded,
}

impl AddrSource {
    pub fn label(self) -> &'static str {
        match self {
            AddrSource::Peer => "peer",
            AddrSource::ProxyProtocol => "proxy_protocol",
            AddrSource::XForwardedFor => "x-forwarded-for",
            AddrSource::Forwarded => "forwarded",
        }
    }
}

/// The client of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The address every feature uses.
    pub ip: IpAddr,
    pub source: AddrSource,
    /// The connection's address (after the PROXY protocol): the hop lb itself saw.
    pub hop: IpAddr,
    /// The connection's port (kept apart from `hop`: a `SocketAddr` is 32 bytes, and this
    /// rides in every request's future).
    pub port: u16,
}

impl ClientAddr {
    /// The connection's own address, from `source` (the peer or the PROXY protocol).
    pub fn of_connection(hop: SocketAddr, source: AddrSource) -> ClientAddr {
        let ip = hop.ip().to_canonical();
        ClientAddr {
            ip,
            source,
            hop: ip,
            port: hop.port(),
        }
    }

    /// The request's client: the connection's, unless that is a trusted proxy, in which
    /// case the rightmost untrusted hop of `X-Forwarded-For` (or, without it, of
    /// `Forwarded`). Walking right to left stops at the first address that is not a trusted
    /// proxy: everything left of it was written by someone lb does not trust. A hop that is
    /// not an address (`unknown`, an obfuscated name, garbage) stops the walk too, and the
    /// last address walked through stands. If every hop is trusted, the leftmost is the
    /// client.
    pub fn resolve(self, trusted: &IpSet, headers: &[httparse::Header<'_>]) -> ClientAddr {
        if trusted.is_empty() || !trusted.contains(self.ip) {
            return self;
        }
        let (name, source) = if headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        {
            ("x-forwarded-for", AddrSource::XForwardedFor)
        } else {
            ("forwarded", AddrSource::Forwarded)
        };
        let mut found = None;
        // Field lines of one name form one list, in order: walk them last to first.
        for h in headers.iter().rev() {
            if !h.name.eq_ignore_ascii_case(name) {
                continue;
            }
            let Ok(value) = std::str::from_utf8(h.value) else {
                return found.map_or(self, |ip| self.with(ip, source));
            };
            for hop in value.rsplit(',') {
                let hop = if source == AddrSource::Forwarded {
                    forwarded_for(hop)
                } else {
                    Some(hop.trim())
                };
                let Some(ip) = hop.and_then(parse_hop) else {
                    return found.map_or(self, |ip| self.with(ip, source));
                };
                found = Some(ip);
                if !trusted.contains(ip) {
                    return self.with(ip, source);
                }
            }
        }
        found.map_or(self, |ip| self.with(ip, source))
    }

    fn with(self, ip: IpAddr, source: AddrSource) -> ClientAddr {
        ClientAddr {
            ip: ip.to_canonical(),
            source,
            ..self
        }
    }

    /// The connection's address and port.
    pub fn socket(&self) -> SocketAddr {
        SocketAddr::new(self.hop, self.port)
    }
}

/// The `for=` value of one `Forwarded` element, unquoted.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// An address as a hop writes it: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`, or either
/// with a port.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    fn client(
        peer: &str,
        trusted: &[&str],
        headers: &[httparse::Header<'_>],
    ) -> (String, &'static str) {
        let peer: SocketAddr = peer.parse().expect("peer");
        let set = IpSet::parse(trusted).expect("set");
        let c = ClientAddr::of_connection(peer, AddrSource::Peer).resolve(&set, headers);
        (c.ip.to_string(), c.source.label())
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let xff = [h("X-Forwarded-For", "1.1.1.1")];
        assert_eq!(
            client("192.0.2.9:5", &["10.0.0.0/8"], &xff),
            ("192.0.2.9".into(), "peer")
        );
        assert_eq!(client("10.0.0.1:5", &[], &xff), ("10.0.0.1".into(), "peer"));
    }

    #[test]
    fn a_trusted_peer_gives_the_rightmost_untrusted_hop() {
        let t = &["10.0.0.0/8", "2001:db8::/32"];
        let xff = [h("X-Forwarded-For", "6.6.6.6, 203.0.113.7, 10.1.1.1")];
        assert_eq!(
            client("10.0.0.1:5", t, &xff),
            ("203.0.113.7".into(), "x-forwarded-for")
        );
        // Several field lines are one list.
        let lines = [
            h("X-Forwarded-For", "6.6.6.6"),
            h("x-forwarded-for", "203.0.113.8,10.2.2.2"),
        ];
        assert_eq!(client("10.0.0.1:5", t, &lines).0, "203.0.113.8");
        // All trusted: the leftmost.
        let inner = [h("X-Forwarded-For", "10.9.9.9, 2001:db8::5")];
        assert_eq!(client("10.0.0.1:5", t, &inner).0, "10.9.9.9");
        // Garbage stops the walk at the last address walked through.
        let junk = [h("X-Forwarded-For", "203.0.113.1, nonsense, 10.3.3.3")];
        assert_eq!(client("10.0.0.1:5", t, &junk).0, "10.3.3.3");
        // Ports and brackets.
        let ported = [h("X-Forwarded-For", "[2001:db9::1]:443")];
        assert_eq!(client("10.0.0.1:5", t, &ported).0, "2001:db9::1");
        // No header: the peer.
        assert_eq!(client("10.0.0.1:5", t, &[]), ("10.0.0.1".into(), "peer"));
    }

    #[test]
    fn forwarded_is_read_when_x_forwarded_for_is_absent() {
        let t = &["10.0.0.0/8"];
        let fwd = [h(
            "Forwarded",
            "for=6.6.6.6, for=\"[2001:db9::2]:80\";proto=https, for=10.4.4.4;by=10.0.0.1",
        )];
        assert_eq!(
            client("10.0.0.1:5", t, &fwd),
            ("2001:db9::2".into(), "forwarded")
        );
        let hidden = [h("Forwarded", "for=_hidden, for=10.4.4.4")];
        assert_eq!(client("10.0.0.1:5", t, &hidden).0, "10.4.4.4");
    }

    #[test]
    fn mapped_addresses_are_written_as_ipv4() {
        let c = ClientAddr::of_connection(
            "[::ffff:192.0.2.1]:80".parse().expect("sa"),
            AddrSource::Peer,
        );
        assert_eq!(c.ip.to_string(), "192.0.2.1");
    }
}
