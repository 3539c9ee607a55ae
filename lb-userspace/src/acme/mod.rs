//! Certificates that manage themselves: `[[listeners]] tls = { acme = { ... } }` obtains a
//! certificate for the configured hosts from an ACME server (RFC 8555) with the HTTP-01
//! challenge, answered by lb's own listeners, and renews it before it expires.
//!
//! The account key and the issued certificate and key live under a state directory, so a
//! restart serves the stored certificate instead of ordering a new one. Issuance runs on a
//! control thread (`control::acme`); a new certificate is written to disk, then a reload
//! puts it in service. A failed order keeps the old certificate.

pub mod client;
mod jws;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

/// Renew this long before the certificate expires, by default.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// Where the account key and certificates are kept, by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lb/acme";
/// The path prefix of HTTP-01 challenge requests.
pub const CHALLENGE_PREFIX: &[u8] = b"/.well-known/acme-challenge/";

pub use crate::tls::AcmeConfig;

/// The account key for `a`'s directory (one account per ACME server).
fn account_key_path(a: &AcmeConfig) -> PathBuf {
    a.state_dir.join(format!(
        "account-{:016x}.key.der",
        crate::hash::fnv1a_of(a.directory.as_bytes())
    ))
}

/// HTTP-01 key authorizations being published, by token.
static CHALLENGES: RwLock<Option<HashMap<String, String>>> = RwLock::new(None);

/// The key authorization to answer `GET /.well-known/acme-challenge/<token>` with, if an
/// order in progress published one.
pub fn challenge_answer(token: &[u8]) -> Option<String> {
    let map = CHALLENGES.read().unwrap_or_else(|p| p.into_inner());
    let token = std::str::from_utf8(token).ok()?;
    map.as_ref()?.get(token).cloned()
}

/// Publishes challenge answers through the process-wide map the listeners read.
struct Published;

impl client::Challenges for Published {
    fn publish(&self, token: &str, key_authorization: &str) {
        let mut map = CHALLENGES.write().unwrap_or_else(|p| p.into_inner());
        map.get_or_insert_with(HashMap::new)
            .insert(token.to_string(), key_authorization.to_string());
    }

    fn withdraw(&self, token: &str) {
        let mut map = CHALLENGES.write().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.as_mut() {
            m.remove(token);
        }
    }
}

/// Why the certificate for `a` needs ordering now, or `None` if the stored one covers every
/// host, fits its stored key, and is good for longer than `renew_before`.
pub fn due(a: &AcmeConfig) -> Option<String> {
    let Ok(pem) = std::fs::read(a.cert_path()) else {
        return Some("no certificate yet".into());
    };
    let Some(leaf) = parse_leaf(&pem) else {
        return Some(format!(
            "{} is not a readable certificate",
            a.cert_path().display()
        ));
    };
    if let Some(missing) = a.hosts.iter().find(|h| !leaf.names.contains(h)) {
        return Some(format!("the certificate does not name {missing}"));
    }
    if !pair_fits(a) {
        return Some("the stored key does not fit the stored certificate".into());
    }
    let left = leaf.not_after - unix_now();
    (left < a.renew_before.as_secs() as i64).then(|| {
        format!(
            "the certificate expires in {} days, within renew_before",
            left.max(0) / 86_400
        )
    })
}

/// Seconds the stored certificate has left, if there is one.
pub fn time_left(a: &AcmeConfig) -> Option<i64> {
    let pem = std::fs::read(a.cert_path()).ok()?;
    Some(parse_leaf(&pem)?.not_after - unix_now())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What `due` needs of a leaf certificate.
struct Leaf {
    not_after: i64,
    /// Its DNS names, lowercase.
    names: Vec<String>,
}

fn parse_leaf(pem: &[u8]) -> Option<Leaf> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .next()?
        .ok()?;
    let info = crate::tls::describe(&der, String::new()).ok()?;
    Some(Leaf {
        not_after: info.not_after_unix,
        names: if info.names_from_san {
            info.names.iter().map(|n| n.to_ascii_lowercase()).collect()
        } else {
            Vec::new()
        },
    })
}

/// Whether the stored key belongs to the stored certificate (a crash between writing the
/// two leaves a mismatch, which makes the certificate due rather than unusable).
fn pair_fits(a: &AcmeConfig) -> bool {
    use rustls_pki_types::pem::PemObject;
    let Ok(chain) = rustls_pki_types::CertificateDer::pem_file_iter(a.cert_path())
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
    else {
        return false;
    };
    let Ok(key) = rustls_pki_types::PrivateKeyDer::from_pem_file(a.key_path()) else {
        return false;
    };
    rustls::sign::CertifiedKey::from_der(chain, key, &crate::tls::provider()).is_ok()
}

/// Orders a certificate for `a` and stores it with its key.
pub fn issue(a: &AcmeConfig) -> Result<(), String> {
    create_state_dir(&a.state_dir)?;
    let tls = crate::upstream::tls::client_config(
        &crate::upstream::tls::UpstreamTls {
            ca: a.ca.clone(),
            server_name: None,
            client_cert: None,
            verify: true,
        },
        Path::new("/"),
        b"http/1.1",
    )?;
    let key = account_key(a)?;
    let mut session = client::Acme::connect(client::Http::new(tls.config), &a.directory, &key)?;
    session.account(a.email.as_deref())?;
    let cert_key = rcgen::KeyPair::generate().map_err(|e| format!("certificate key: {e}"))?;
    let csr = rcgen::CertificateParams::new(a.hosts.clone())
        .and_then(|p| p.serialize_request(&cert_key))
        .map_err(|e| format!("certificate request: {e}"))?;
    let chain = session.order(&a.hosts, csr.der(), &Published)?;
    if parse_leaf(chain.as_bytes()).is_none() {
        return Err("the CA returned no readable certificate".into());
    }
    // The key first: a reader that sees the new chain finds its key in place.
    write_private(&a.key_path(), cert_key.serialize_pem().as_bytes())?;
    write_atomic(&a.cert_path(), chain.as_bytes(), 0o644)
}

/// The stored account key for the directory, or a new one (stored).
fn account_key(a: &AcmeConfig) -> Result<jws::AccountKey, String> {
    let path = account_key_path(a);
    match std::fs::read(&path) {
        Ok(der) => {
            jws::AccountKey::from_pkcs8(&der).map_err(|e| format!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (key, der) = jws::AccountKey::generate()?;
            write_private(&path, &der)?;
            Ok(key)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    write_atomic(path, data, 0o600)
}

/// Writes `data` to a new temporary file beside `path` (created with `mode`), syncs it,
/// renames it over `path` and syncs the directory, so a reader sees the old file or the
/// new one, never half of one, and the rename survives a crash.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        // A leftover from a crash would keep its old mode: start from nothing.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

/// Creates the state directory, readable by lb alone (it holds private keys).
fn create_state_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_expiring_certificate_is_due() {
        let dir = std::env::temp_dir().join(format!("lb-acme-due-{}", std::process::id()));
        let mut a = AcmeConfig {
            directory: "https://ca/dir".into(),
            email: None,
            hosts: vec!["site.test".into()],
            ca: None,
            state_dir: dir.clone(),
            renew_before: DEFAULT_RENEW_BEFORE,
        };
        assert_eq!(due(&a).as_deref(), Some("no certificate yet"));
        std::fs::create_dir_all(&dir).expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["site.test".to_string()]).expect("p");
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.self_signed(&key).expect("cert");
        write_atomic(&a.cert_path(), cert.pem().as_bytes(), 0o644).expect("write");
        assert!(
            due(&a).is_some_and(|r| r.contains("does not fit")),
            "no key beside it"
        );
        write_private(&a.key_path(), key.serialize_pem().as_bytes()).expect("write");
        assert_eq!(due(&a), None, "good for decades");
        let other = rcgen::KeyPair::generate().expect("key");
        write_private(&a.key_path(), other.serialize_pem().as_bytes()).expect("write");
        assert!(due(&a).is_some_and(|r| r.contains("does not fit")));
        write_private(&a.key_path(), key.serialize_pem().as_bytes()).expect("write");
        a.hosts.push("www.site.test".into());
        assert!(due(&a).is_some_and(|r| r.contains("does not name www.site.test")));
        a.hosts.pop();
        a.renew_before = Duration::from_secs(200 * 365 * 86_400);
        assert!(due(&a).is_some_and(|r| r.contains("within renew_before")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn published_answers_are_served_until_withdrawn() {
        use client::Challenges;
        Published.publish("tok-1", "tok-1.thumb");
        assert_eq!(challenge_answer(b"tok-1").as_deref(), Some("tok-1.thumb"));
        assert_eq!(challenge_answer(b"tok-2"), None);
        Published.withdraw("tok-1");
        assert_eq!(challenge_answer(b"tok-1"), None);
    }
}
