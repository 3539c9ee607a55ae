//! The differential check between a request head a client sent and the head lb forwards:
//! shared by the `forwarded` property test and the `forward` fuzz target.

use lb::http::path::{normalize, PathOptions};
use lb::http::request::{self, RequestHead};
use lb::http::{is_hop_by_hop, Framing};

/// Headers that never cross a hop.
const HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
];

/// Checks that `forwarded` (lb's upstream head for the client head `raw`) parses back to the
/// same method, the normalised target, the same framing and body length, and carries no
/// hop-by-hop header and no header the client named in `Connection`.
pub fn check(raw: &[u8], forwarded: &[u8]) -> Result<(), String> {
    let mut s1 = lb::http::header_slots::<128>();
    let mut s2 = lb::http::header_slots::<160>();
    let Ok(Some(sent)) = request::parse(raw, &mut s1) else {
        return Err("the client head was not accepted, yet it was forwarded".into());
    };
    let fwd = match request::parse(forwarded, &mut s2) {
        Ok(Some(h)) => h,
        other => return Err(format!("the forwarded head does not parse: {other:?}")),
    };
    if fwd.head_len != forwarded.len() {
        return Err("bytes after the forwarded head".into());
    }
    if fwd.method_bytes != sent.method_bytes {
        return Err("method changed".into());
    }
    let want = normal_target(&sent);
    if fwd.path != want.as_slice() {
        return Err(format!(
            "target {:?} forwarded as {:?}",
            String::from_utf8_lossy(&want),
            String::from_utf8_lossy(fwd.path)
        ));
    }
    if fwd.framing != sent.framing {
        return Err(format!(
            "framing {:?} became {:?}",
            sent.framing, fwd.framing
        ));
    }
    if fwd.minor != 1 {
        return Err("upstream is always HTTP/1.1".into());
    }
    for h in fwd.headers {
        let name = h.name.to_ascii_lowercase();
        if HOP.contains(&name.as_str()) {
            return Err(format!("hop-by-hop header {name} forwarded"));
        }
        let framing_header = name == "content-length" || name == "transfer-encoding";
        if is_hop_by_hop(name.as_bytes()) && !framing_header {
            return Err(format!("hop-by-hop header {name} forwarded"));
        }
        // lb writes these itself for its own hop (the client's copies are removed).
        let lbs_own = matches!(
            name.as_str(),
            "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "via"
        );
        let essential = framing_header || name == "host" || lbs_own;
        if sent.conn.names(name.as_bytes()) && !essential {
            return Err(format!(
                "{name} was named in Connection and still forwarded"
            ));
        }
    }
    let lengths = fwd
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .count();
    let codings = fwd
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .count();
    let want_counts = match sent.framing {
        Framing::Length(_) => (1, 0),
        Framing::Chunked => (0, 1),
        _ => (0, 0),
    };
    if (lengths, codings) != want_counts {
        return Err(format!(
            "framing headers {lengths} Content-Length, {codings} Transfer-Encoding for {:?}",
            sent.framing
        ));
    }
    Ok(())
}

/// The origin-form target lb must forward: the normalised path and the query as sent.
fn normal_target(sent: &RequestHead<'_, '_>) -> Vec<u8> {
    let target = sent.path;
    if target == b"*" {
        return target.to_vec();
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(0) => (&b"/"[..], Some(&target[1..])),
        Some(q) => (&target[..q], Some(&target[q + 1..])),
        None => (target, None),
    };
    let mut scratch = Vec::new();
    let mut out = normalize(path, PathOptions::default(), &mut scratch)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q);
    }
    out
}
