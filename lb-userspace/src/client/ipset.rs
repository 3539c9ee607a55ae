//! Sets of IP prefixes (`10.0.0.0/8`, `2001:db8::/32`, single addresses), for trusted proxies
//! and `client_ip` matchers.
//!
//! Every prefix becomes a range of 128-bit addresses (IPv4 as IPv4-mapped IPv6), and the
//! ranges are sorted and merged once, when the config is loaded. A lookup is one binary
//! search over disjoint ranges: about 12 comparisons for 4,000 prefixes, with no allocation
//! and no pointer chasing, which is what a trie would buy and cheaper to walk.

use std::fmt;
use std::net::IpAddr;

/// A set of IP prefixes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    /// Disjoint, sorted, non-adjacent inclusive ranges.
    ranges: Vec<(u128, u128)>,
    /// The prefixes as written, for `lb explain` and the admin API.
    written: Vec<String>,
}

impl fmt::Debug for IpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.written).finish()
    }
}

impl fmt::Display for IpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.written.len() <= 4 {
            write!(f, "{}", self.written.join(", "))
        } else {
            write!(
                f,
                "{}, ... ({} prefixes)",
                self.written[..3].join(", "),
                self.written.len()
            )
        }
    }
}

/// An address as 128 bits, IPv4 mapped into `::ffff:0:0/96` (and a mapped IPv6 address
/// read as the IPv4 one it carries, so both spellings of a client fall in the same ranges).
fn bits(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Parses `ADDR` or `ADDR/LEN` into an inclusive range.
pub fn parse_prefix(s: &str) -> Result<(u128, u128), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or prefix (e.g. \"10.0.0.0/8\")"))?;
    let (base, max) = match ip {
        IpAddr::V4(a) => (u128::from(a.to_ipv6_mapped()), 32u32),
        IpAddr::V6(a) => (u128::from(a), 128),
    };
    let len = match len {
        None => max,
        Some(l) => match l.trim().parse::<u32>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
        },
    };
    let host_bits = max - len;
    let mask: u128 = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
    if base & mask != 0 {
        return Err(format!(
            "{s:?} has bits set past its /{len}: write the network address"
        ));
    }
    Ok((base, base | mask))
}

impl IpSet {
    /// Builds a set from prefixes; the error names the first one that does not parse.
    pub fn parse<S: AsRef<str>>(prefixes: &[S]) -> Result<IpSet, (usize, String)> {
        let mut ranges = Vec::with_capacity(prefixes.len());
        for (i, p) in prefixes.iter().enumerate() {
            ranges.push(parse_prefix(p.as_ref()).map_err(|e| (i, e))?);
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged.shrink_to_fit();
        Ok(IpSet {
            ranges: merged,
            written: prefixes.iter().map(|p| p.as_ref().to_string()).collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The prefixes as written.
    pub fn prefixes(&self) -> &[String] {
        &self.written
    }

    /// Whether `ip` falls in one of the prefixes.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let x = bits(ip);
        // The last range starting at or below x is the only one that can hold it.
        let i = self.ranges.partition_point(|r| r.0 <= x);
        i > 0 && self.ranges[i - 1].1 >= x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn v6_loopback() -> IpAddr {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn prefixes_of_both_families_match() {
        let set = IpSet::parse(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]).expect("parse");
        assert!(set.contains(ip("10.1.2.3")));
        assert!(set.contains(ip("10.255.255.255")));
        assert!(!set.contains(ip("11.0.0.0")));
        assert!(!set.contains(ip("9.255.255.255")));
        assert!(set.contains(ip("192.0.2.7")));
        assert!(!set.contains(ip("192.0.2.8")));
        assert!(set.contains(ip("2001:db8:1::5")));
        assert!(!set.contains(ip("2001:db9::")));
        // A mapped IPv6 spelling of an IPv4 client is the same client.
        assert!(set.contains(ip("::ffff:10.9.9.9")));
        // An IPv6 prefix never takes in IPv4 addresses by accident.
        assert!(!set.contains(ip("::a01:203")));
    }

    #[test]
    fn overlapping_and_adjacent_prefixes_merge() {
        let set = IpSet::parse(&["10.0.0.0/9", "10.128.0.0/9", "10.0.0.0/24", "10.0.0.1"])
            .expect("parse");
        assert_eq!(set.ranges.len(), 1);
        assert!(set.contains(ip("10.200.0.1")));
        let all = IpSet::parse(&["0.0.0.0/0", "::/0"]).expect("parse");
        assert!(all.contains(ip("1.2.3.4")) && all.contains(ip("2001::1")));
        assert!(!IpSet::default().contains(ip("1.2.3.4")));
    }

    #[test]
    fn bad_prefixes_say_what_is_wrong() {
        let bad = |s: &str| IpSet::parse(&[s]).expect_err(s).1;
        assert!(bad("10.0.0.0/33").contains("0 to 32"));
        assert!(bad("2001:db8::/129").contains("0 to 128"));
        assert!(bad("10.0.0.1/8").contains("network address"));
        assert!(bad("example.com").contains("not an IP"));
        assert!(bad("10.0.0.0/x").contains("prefix length"));
        assert_eq!(
            IpSet::parse(&["10.0.0.0/8", "nope"]).expect_err("second").0,
            1
        );
    }

    #[test]
    fn thousands_of_prefixes_answer_exactly() {
        // Every other /24 of 10.0.0.0/12: 2,048 prefixes that never merge.
        let list: Vec<String> = (0..4096u32)
            .step_by(2)
            .map(|i| format!("10.{}.{}.0/24", i >> 8, i & 255))
            .collect();
        let set = IpSet::parse(&list).expect("parse");
        assert_eq!(set.ranges.len(), 2048);
        for i in 0..4096u32 {
            let a = v4(10, (i >> 8) as u8, (i & 255) as u8, 77);
            assert_eq!(set.contains(a), i % 2 == 0, "{a}");
        }
        assert!(!set.contains(v6_loopback()));
    }
}
