//! Consumers: API keys stored as SHA-256 hashes, each with metadata (environment, plan,
//! tenant…) that routes, splits and rate limits can match on.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// Where keys are read from.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Lower-case header name.
    pub header: String,
    pub query: Option<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            header: "x-api-key".into(),
            query: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Consumer {
    pub name: String,
    pub key_sha256: [u8; 32],
    /// Sorted by key.
    pub metadata: Vec<(String, String)>,
}

/// Consumers by key hash.
#[derive(Debug, Clone, Default)]
pub struct Consumers {
    pub config: IdentityConfig,
    pub list: Vec<Consumer>,
    by_hash: HashMap<[u8; 32], usize>,
}

/// The outcome of looking a request's key up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// No key presented.
    Anonymous,
    /// A key nobody owns.
    Unknown,
    /// Index into the consumer list.
    Known(usize),
}

/// Parses 64 hex digits.
pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Consumers {
    pub fn new(config: IdentityConfig, list: Vec<Consumer>) -> Consumers {
        let by_hash = list
            .iter()
            .enumerate()
            .map(|(i, c)| (c.key_sha256, i))
            .collect();
        Consumers {
            config,
            list,
            by_hash,
        }
    }

    /// Who presented this request's key. Hashing happens only when a key is present.
    pub fn identify(&self, headers: &[httparse::Header<'_>], query: Option<&[u8]>) -> Identity {
        let key = headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(&self.config.header))
            .map(|h| h.value)
            .or_else(|| {
                let q = self.config.query.as_ref()?;
                crate::http::query_param(query?, q.as_bytes())
            });
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            return Identity::Anonymous;
        };
        let digest: [u8; 32] = Sha256::digest(key).into();
        match self.by_hash.get(&digest) {
            Some(&i) => Identity::Known(i),
            None => Identity::Unknown,
        }
    }

    pub fn metadata(&self, id: Identity) -> Option<&[(String, String)]> {
        match id {
            Identity::Known(i) => self.list.get(i).map(|c| c.metadata.as_slice()),
            _ => None,
        }
    }
}

/// True if every `(field, value)` of `want` is in `metadata`.
pub fn metadata_matches(metadata: Option<&[(String, String)]>, want: &[(String, String)]) -> bool {
    want.iter()
        .all(|(k, v)| metadata.is_some_and(|m| m.iter().any(|(mk, mv)| mk == k && mv == v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_matched_by_hash() {
        let hash: [u8; 32] = Sha256::digest(b"test-key-123").into();
        let consumers = Consumers::new(
            IdentityConfig::default(),
            vec![Consumer {
                name: "acme".into(),
                key_sha256: hash,
                metadata: vec![("environment".into(), "test".into())],
            }],
        );
        let h = |v: &'static [u8]| {
            [httparse::Header {
                name: "X-API-Key",
                value: v,
            }]
        };
        assert_eq!(
            consumers.identify(&h(b"test-key-123"), None),
            Identity::Known(0)
        );
        assert_eq!(consumers.identify(&h(b"nope"), None), Identity::Unknown);
        assert_eq!(consumers.identify(&[], None), Identity::Anonymous);
        let md = consumers.metadata(Identity::Known(0));
        assert!(metadata_matches(
            md,
            &[("environment".into(), "test".into())]
        ));
        assert!(!metadata_matches(
            md,
            &[("environment".into(), "live".into())]
        ));
        assert!(!metadata_matches(
            None,
            &[("environment".into(), "test".into())]
        ));
    }

    #[test]
    fn hex() {
        let text = "00ff".repeat(16);
        assert_eq!(parse_sha256_hex(&text).unwrap()[1], 0xff);
        assert!(parse_sha256_hex("abc").is_none());
        assert!(parse_sha256_hex(&"zz".repeat(32)).is_none());
    }
}
