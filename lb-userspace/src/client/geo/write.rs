//! A small MaxMind DB writer: country records (`country.iso_code`, `continent.code`, the
//! GeoIP2/GeoLite2 Country layout) for a list of networks. lb uses it for the demo's
//! database and the tests make theirs with it; production databases come from a provider.
//!
//! The format (MaxMind DB 2.0): a binary search tree over the address bits (24-bit records,
//! IPv4 under `::/96`), 16 zero bytes, a data section of typed values, then a metadata map
//! after the `\xAB\xCD\xEFMaxMind.com` marker.

use std::net::IpAddr;

/// A record in the tree: another node, no data, or data at an offset in the data section.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Child {
    Empty,
    Node(usize),
    Data(usize),
}

/// A value of the data section.
enum Value<'a> {
    Str(&'a str),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'a str, Value<'a>)>),
    Array(Vec<Value<'a>>),
}

/// Writes a control byte (and its extensions) for `kind` and `size`.
fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (first, ext): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, vec![]),
        29..=284 => (29, vec![(size - 29) as u8]),
        285..=65_820 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        _ => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
    };
    if kind <= 7 {
        out.push(kind << 5 | first);
    } else {
        out.push(first);
        out.push(kind - 7);
    }
    out.extend_from_slice(&ext);
}

fn encode(out: &mut Vec<u8>, v: &Value<'_>) {
    let uint = |out: &mut Vec<u8>, kind: u8, n: u64| {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        control(out, kind, 8 - skip);
        out.extend_from_slice(&bytes[skip..]);
    };
    match v {
        Value::Str(s) => {
            control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::U16(n) => uint(out, 5, u64::from(*n)),
        Value::U32(n) => uint(out, 6, u64::from(*n)),
        Value::U64(n) => uint(out, 9, *n),
        Value::Map(entries) => {
            control(out, 7, entries.len());
            for (k, v) in entries {
                encode(out, &Value::Str(k));
                encode(out, v);
            }
        }
        Value::Array(items) => {
            control(out, 11, items.len());
            for v in items {
                encode(out, v);
            }
        }
    }
}

/// The 128 bits of `ip` (IPv4 under `::/96`) and its prefix length in them.
fn bits(ip: IpAddr, len: u8) -> (u128, u32) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 96 + u32::from(len.min(32))),
        IpAddr::V6(a) => (u128::from(a), u32::from(len.min(128))),
    }
}

/// A country database of `(network, prefix length, country, continent)` entries. Later
/// entries win where networks overlap.
pub fn country_db(entries: &[(IpAddr, u8, &str, &str)]) -> Vec<u8> {
    // The data section: one record per distinct (country, continent).
    let mut data = Vec::new();
    let mut offsets: Vec<((&str, &str), usize)> = Vec::new();
    for &(_, _, country, continent) in entries {
        if offsets.iter().any(|(k, _)| *k == (country, continent)) {
            continue;
        }
        offsets.push(((country, continent), data.len()));
        encode(
            &mut data,
            &Value::Map(vec![
                (
                    "continent",
                    Value::Map(vec![("code", Value::Str(continent))]),
                ),
                (
                    "country",
                    Value::Map(vec![("iso_code", Value::Str(country))]),
                ),
            ]),
        );
    }
    // The tree, node 0 the root.
    let mut nodes: Vec<[Child; 2]> = vec![[Child::Empty; 2]];
    for &(ip, len, country, continent) in entries {
        let offset = offsets
            .iter()
            .find(|(k, _)| *k == (country, continent))
            .map_or(0, |(_, o)| *o);
        let (addr, depth) = bits(ip, len);
        if depth == 0 {
            continue;
        }
        let mut node = 0;
        for i in 0..depth {
            let bit = ((addr >> (127 - i)) & 1) as usize;
            if i + 1 == depth {
                nodes[node][bit] = Child::Data(offset);
                break;
            }
            node = match nodes[node][bit] {
                Child::Node(n) => n,
                // A wider network already holds this one: split it, keeping its data on
                // both sides below.
                other => {
                    let fill = if let Child::Data(_) = other {
                        other
                    } else {
                        Child::Empty
                    };
                    nodes.push([fill; 2]);
                    let n = nodes.len() - 1;
                    nodes[node][bit] = Child::Node(n);
                    n
                }
            };
        }
    }
    let count = nodes.len();
    let mut out = Vec::with_capacity(count * 6 + 16 + data.len() + 256);
    for pair in &nodes {
        for child in pair {
            let v = match *child {
                Child::Empty => count,
                Child::Node(n) => n,
                Child::Data(o) => count + 16 + o,
            };
            out.extend_from_slice(&(v as u32).to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    encode(
        &mut out,
        &Value::Map(vec![
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(1_800_000_000)),
            ("database_type", Value::Str("lb-Country")),
            (
                "description",
                Value::Map(vec![("en", Value::Str("made by lb"))]),
            ),
            ("ip_version", Value::U16(6)),
            ("languages", Value::Array(vec![Value::Str("en")])),
            ("node_count", Value::U32(count as u32)),
            ("record_size", Value::U16(24)),
        ]),
    );
    out
}
