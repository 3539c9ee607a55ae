//! TLS termination: the certificates of a listener, chosen per handshake by SNI, and the
//! rustls server configuration built from them. The session itself is driven over lb's own
//! owned buffers in `net.rs`.
//!
//! Certificates are read when a config is loaded (start, reload), so a reload picks up
//! renewed files; a file that cannot be used fails the load, naming it, and the running
//! certificates stay.

pub mod tickets;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// One certificate file and its key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: String,
    pub key: String,
    /// The names SNI selects it for, if configured (otherwise its SANs).
    pub names: Option<Vec<String>>,
}

/// The validated `tls` table of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub certificates: Vec<CertFiles>,
    /// Refuse clients that send no SNI (otherwise they get the first certificate).
    pub require_sni: bool,
    /// The lowest version accepted: `true` for TLS 1.3 only.
    pub tls13_only: bool,
    /// Client certificates (mTLS): the CA file that issues them, and whether one is required.
    pub client_auth: Option<ClientAuth>,
    /// Resumption by session tickets (keys shared by every worker).
    pub tickets: bool,
    /// How often the ticket key changes; a ticket opens for up to twice this.
    pub ticket_rotation: std::time::Duration,
    /// Sessions kept for resumption by ID; 0 turns the cache off.
    pub session_cache: usize,
    /// A certificate obtained and renewed from an ACME server, served beside the files.
    pub acme: Option<AcmeConfig>,
}

/// The validated `acme` table of a TLS listener (ordering lives in the `acme` module).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcmeConfig {
    /// The directory URL of the ACME server.
    pub directory: String,
    pub email: Option<String>,
    /// The names on the certificate (the first one names its files).
    pub hosts: Vec<String>,
    /// A PEM file of CAs to trust for the ACME server's own HTTPS (default: the system's);
    /// an absolute path.
    pub ca: Option<String>,
    pub state_dir: PathBuf,
    pub renew_before: std::time::Duration,
}

impl AcmeConfig {
    /// The issued chain (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.state_dir.join(format!("{}.crt.pem", self.hosts[0]))
    }

    /// The certificate's private key (PEM).
    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join(format!("{}.key.pem", self.hosts[0]))
    }

    /// Where this certificate came from, for `GET /certificates`.
    pub fn source(&self) -> String {
        format!("acme:{}", self.directory)
    }
}

/// `client_auth = { ca = "...", mode = "required" | "optional" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub ca: String,
    pub required: bool,
}

/// A verified client certificate, as routes and backends see it.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// The subject's distinguished name (`CN=client,O=Example`).
    pub subject: String,
    /// The `X-Forwarded-Client-Cert` value lb sends (Envoy's XFCC syntax:
    /// `Hash=...;Subject="...";DNS=...`).
    pub xfcc: String,
}

/// Describes the verified leaf certificate a client presented.
pub fn client_cert(der: &CertificateDer<'_>) -> Option<ClientCert> {
    let info = describe(der, String::new()).ok()?;
    let mut xfcc = format!("Hash={};Subject={}", info.sha256, xfcc_quote(&info.subject));
    for n in &info.names {
        xfcc.push_str(";DNS=");
        xfcc.push_str(&xfcc_quote(n));
    }
    Some(ClientCert {
        subject: info.subject,
        xfcc,
    })
}

/// An XFCC value in double quotes: `"` and `\` escaped, control characters dropped, so a
/// certificate's names cannot break the header or add fields to it.
fn xfcc_quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A loaded certificate: its chain and key, and whether the key is ECDSA.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    ecdsa: bool,
    /// The names SNI selects it for, lowercase (worked out once, at load).
    names: Vec<String>,
}

/// What an operator wants to know about a certificate in service (admin API, metrics,
/// `lb check`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertInfo {
    /// DNS names from the subject alternative names (the subject's CN if there are none).
    pub names: Vec<String>,
    /// The names come from the subject alternative names: SNI can select the certificate
    /// for them (a CN alone never matches: webpki, like browsers, ignores it).
    pub names_from_san: bool,
    pub subject: String,
    pub issuer: String,
    /// Seconds since the Unix epoch.
    pub not_after_unix: i64,
    /// `"ECDSA"`, `"RSA"`, `"Ed25519"`, ...
    pub key_type: String,
    /// SHA-256 of the leaf certificate (DER), hex.
    pub sha256: String,
    /// Where it came from: `file:PATH`.
    pub source: String,
    /// The issuer of the last certificate in the file, when it is neither in the file, nor
    /// self-signed, nor one of the system's roots: clients likely miss an intermediate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_incomplete: Option<String>,
}

/// Checks that the certificates in a file form a chain, leaf first, each issued by the
/// next. Returns the issuer the chain still needs, if the last one is not self-signed.
fn check_chain(chain: &[CertificateDer<'_>]) -> Result<Option<String>, String> {
    let mut parsed = Vec::with_capacity(chain.len());
    for (i, der) in chain.iter().enumerate() {
        let (_, c) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("certificate {} is not readable X.509 ({e})", i + 1))?;
        parsed.push(c);
    }
    for (i, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer().as_raw() != pair[1].subject().as_raw() {
            return Err(format!(
                "the certificates are not a chain: certificate {} is issued by {}, but the next one is {} (put the leaf first, then each issuer)",
                i + 1,
                pair[0].issuer(),
                pair[1].subject()
            ));
        }
    }
    Ok(parsed
        .last()
        .filter(|last| last.issuer().as_raw() != last.subject().as_raw())
        .map(|last| last.issuer().to_string()))
}

/// The subjects of the system's trusted roots (read once), to tell a leaf issued straight
/// by a root from one whose intermediates are missing.
fn system_root_subjects() -> &'static [String] {
    static ROOTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let Some(path) = crate::tls::system_roots_file() else {
            return Vec::new();
        };
        CertificateDer::pem_file_iter(&path)
            .map(|certs| {
                certs
                    .flatten()
                    .filter_map(|der| {
                        x509_parser::parse_x509_certificate(&der)
                            .ok()
                            .map(|(_, c)| c.subject().to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Where the system's trusted CAs are, when it has a bundle: `SSL_CERT_FILE`, then the
/// usual places.
pub fn system_roots_file() -> Option<PathBuf> {
    const PLACES: [&str; 4] = [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ];
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(PLACES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// A TLS listener's server configuration and the certificates it serves.
#[derive(Debug)]
pub struct ListenerRuntime {
    pub config: Arc<ServerConfig>,
    pub certs: Vec<CertInfo>,
    /// Every file read for it (certificates and keys), to notice when they change on disk.
    pub files: Vec<std::path::PathBuf>,
}

/// A fingerprint of the contents of `files` (unreadable files count as empty).
pub fn files_fingerprint<'a>(files: impl Iterator<Item = &'a std::path::PathBuf>) -> u64 {
    let mut h = crate::hash::FNV_OFFSET;
    for f in files {
        h = crate::hash::fnv1a(h, f.as_os_str().as_encoded_bytes());
        // A large file (a geo database) by its metadata: reading megabytes every few
        // seconds to notice a change costs more than it tells.
        match std::fs::metadata(f) {
            Ok(m) if m.len() > 1 << 20 => {
                use std::os::unix::fs::MetadataExt;
                for n in [m.len(), m.ino(), m.mtime() as u64, m.mtime_nsec() as u64] {
                    h = crate::hash::fnv1a(h, &n.to_le_bytes());
                }
            }
            _ => h = crate::hash::fnv1a(h, &std::fs::read(f).unwrap_or_default()),
        }
    }
    h
}

/// Reads the facts of a leaf certificate.
pub fn describe(der: &CertificateDer<'_>, source: String) -> Result<CertInfo, String> {
    use sha2::Digest;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("{source}: not a readable X.509 certificate ({e})"))?;
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip)
                            .ok()
                            .map(|a| std::net::Ipv4Addr::from(a).to_string()),
                        16 => <[u8; 16]>::try_from(*ip)
                            .ok()
                            .map(|a| std::net::Ipv6Addr::from(a).to_string()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let names_from_san = !names.is_empty();
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(str::to_string)),
        );
    }
    let key_type = match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::RSA(_)) => "RSA",
        Ok(x509_parser::public_key::PublicKey::EC(_)) => "ECDSA",
        _ => "other",
    };
    let digest = sha2::Sha256::digest(der.as_ref());
    Ok(CertInfo {
        chain_incomplete: None,
        names,
        names_from_san,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_after_unix: cert.validity().not_after.timestamp(),
        key_type: key_type.to_string(),
        sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        source,
    })
}

/// Picks the certificate for a handshake: among those valid for the SNI name (exact or
/// wildcard, per the certificates' own names), an ECDSA one if the client can verify it,
/// else another; without SNI, the first certificate (unless SNI is required).
#[derive(Debug)]
pub struct SniResolver {
    certs: Vec<Loaded>,
    require_sni: bool,
}

impl SniResolver {
    fn usable(l: &Loaded, schemes: &[SignatureScheme]) -> bool {
        l.key.key.choose_scheme(schemes).is_some()
    }

    fn valid_for(l: &Loaded, name: &str) -> bool {
        l.names.iter().any(|n| name_matches(n, name))
    }
}

/// Whether certificate name `pattern` (exact, or `*.example.com` for one more label) covers
/// `host`, ignoring ASCII case.
pub fn name_matches(pattern: &str, host: &str) -> bool {
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix("*.") else {
        return false;
    };
    let (h, s) = (host.as_bytes(), suffix.as_bytes());
    h.len() > s.len() + 1
        && h[h.len() - s.len()..].eq_ignore_ascii_case(s)
        && h[h.len() - s.len() - 1] == b'.'
        && !h[..h.len() - s.len() - 1].contains(&b'.')
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        let candidates: Vec<&Loaded> = match hello.server_name() {
            Some(name) => self
                .certs
                .iter()
                .filter(|l| Self::valid_for(l, name))
                .collect(),
            None if self.require_sni => return None,
            None => self.certs.iter().take(1).collect(),
        };
        // A name no certificate covers still gets the first one: the client sees the
        // mismatch itself, as with nginx's default server.
        let candidates = if candidates.is_empty() {
            self.certs.iter().take(1).collect()
        } else {
            candidates
        };
        candidates
            .iter()
            .find(|l| l.ecdsa && Self::usable(l, schemes))
            .or_else(|| candidates.iter().find(|l| Self::usable(l, schemes)))
            .map(|l| l.key.clone())
    }
}

/// The process's crypto provider (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads one certificate chain and its key, and checks that they belong together.
fn load(
    files: &CertFiles,
    base: &Path,
    provider: &CryptoProvider,
    source: Option<String>,
) -> Result<(Loaded, CertInfo), String> {
    let cert_path = base.join(&files.cert);
    let key_path = base.join(&files.key);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in the file",
            cert_path.display()
        ));
    }
    let chain_issuer = check_chain(&chain).map_err(|e| format!("{}: {e}", cert_path.display()))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let ecdsa = matches!(&key, PrivateKeyDer::Sec1(_))
        || provider
            .key_provider
            .load_private_key(key.clone_key())
            .is_ok_and(|k| k.algorithm() == rustls::SignatureAlgorithm::ECDSA);
    let source = source.unwrap_or_else(|| format!("file:{}", cert_path.display()));
    let mut info = describe(&chain[0], source)?;
    info.chain_incomplete = chain_issuer.filter(|issuer| !system_root_subjects().contains(issuer));
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "{} and {}: the key does not fit the certificate ({e})",
            cert_path.display(),
            key_path.display()
        )
    })?;
    Ok((
        Loaded {
            key: Arc::new(key),
            ecdsa,
            names: match &files.names {
                Some(n) => n.clone(),
                // A CN alone never matches: webpki, like browsers, ignores it.
                None if info.names_from_san => {
                    info.names.iter().map(|n| n.to_ascii_lowercase()).collect()
                }
                None => Vec::new(),
            },
        },
        info,
    ))
}

/// Builds the server configuration of a TLS listener: its certificates read from disk
/// (relative paths from `base`), ALPN `http/1.1`, TLS 1.2 and 1.3 (or 1.3 only), tickets
/// from one ticketer shared by every worker, a bounded session cache, no 0-RTT.
pub fn server_config(
    t: &ListenerTls,
    base: &Path,
    alpn: Vec<Vec<u8>>,
) -> Result<ListenerRuntime, String> {
    let provider = provider();
    let mut loaded = t
        .certificates
        .iter()
        .map(|f| load(f, base, &provider, None))
        .collect::<Result<Vec<_>, _>>()?;
    // The ACME certificate once there is one (until then, the files serve, or nothing).
    let acme_files = t.acme.as_ref().and_then(|a| {
        a.cert_path().is_file().then(|| CertFiles {
            cert: a.cert_path().to_string_lossy().into_owned(),
            key: a.key_path().to_string_lossy().into_owned(),
            names: None,
        })
    });
    let mut acme_files = acme_files;
    if let (Some(a), Some(f)) = (&t.acme, &acme_files) {
        // A stored pair that cannot be used (a crash between writing the key and the chain)
        // is not a config error: it is due, and ordering a new one replaces it.
        match load(f, base, &provider, Some(a.source())) {
            Ok(l) => loaded.push(l),
            Err(e) => {
                tracing::warn!(
                    error = e,
                    "the stored ACME certificate cannot be used; a new one will be ordered"
                );
                acme_files = None;
            }
        }
    }
    let (certs, infos): (Vec<Loaded>, Vec<CertInfo>) = loaded.into_iter().unzip();
    let versions: &[&rustls::SupportedProtocolVersion] = if t.tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &t.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let ca_path = base.join(&auth.ca);
            let mut roots = rustls::RootCertStore::empty();
            for ca in CertificateDer::pem_file_iter(&ca_path)
                .map_err(|e| format!("{}: {e}", ca_path.display()))?
            {
                let ca = ca.map_err(|e| format!("{}: {e}", ca_path.display()))?;
                roots
                    .add(ca)
                    .map_err(|e| format!("{}: {e}", ca_path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "{}: no CA certificate in the file",
                    ca_path.display()
                ));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("{}: {e}", ca_path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver {
        certs,
        require_sni: t.require_sni,
    }));
    config.alpn_protocols = alpn;
    if t.tickets {
        config.ticketer = ticketer(&t.client_auth, t.ticket_rotation, base)?;
    }
    config.session_storage = if t.session_cache == 0 {
        Arc::new(rustls::server::NoServerSessionStorage {})
    } else {
        rustls::server::ServerSessionMemoryCache::new(t.session_cache)
    };
    let files = t
        .certificates
        .iter()
        .chain(acme_files.iter())
        .flat_map(|f| [base.join(&f.cert), base.join(&f.key)])
        .chain(t.client_auth.iter().map(|a| base.join(&a.ca)))
        .collect();
    Ok(ListenerRuntime {
        config: Arc::new(config),
        certs: infos,
        files,
    })
}

/// The ticketer for listeners with client-authentication settings `auth`: made once per
/// distinct setting and kept for the process, so a reload (or a renewed certificate) does
/// not invalidate the tickets clients hold, while a ticket issued under one client-auth
/// policy never resumes under another (a session begun without a client certificate must
/// not skip a policy that now requires one). The keys rotate every `rotation`
/// ([`tickets::RotatingTickets`]); a changed period makes a new ticketer.
fn ticketer(
    auth: &Option<ClientAuth>,
    rotation: std::time::Duration,
    base: &Path,
) -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
    type Ticketers = std::collections::HashMap<u64, Arc<dyn rustls::server::ProducesTickets>>;
    static TICKETERS: std::sync::Mutex<Option<Ticketers>> = std::sync::Mutex::new(None);
    let key = match auth {
        None => 0,
        Some(a) => {
            let ca = std::fs::read(base.join(&a.ca)).unwrap_or_default();
            let h = crate::hash::fnv1a(crate::hash::FNV_OFFSET, &ca);
            crate::hash::fnv1a(h, &[u8::from(a.required) + 1])
        }
    };
    let key = crate::hash::fnv1a(key, &rotation.as_secs().to_le_bytes());
    let mut all = TICKETERS.lock().unwrap_or_else(|p| p.into_inner());
    let all = all.get_or_insert_with(Default::default);
    if let Some(t) = all.get(&key) {
        return Ok(t.clone());
    }
    // Bounded: settings that keep changing drop the oldest ticketers' tickets (clients
    // then make full handshakes), never memory without end.
    if all.len() >= MAX_TICKETERS {
        all.clear();
    }
    let t: Arc<dyn rustls::server::ProducesTickets> =
        Arc::new(tickets::RotatingTickets::new(rotation)?);
    all.insert(key, t.clone());
    Ok(t)
}

/// Distinct ticketers kept for the process (one per client-auth policy and rotation period).
const MAX_TICKETERS: usize = 64;

/// How often ticket keys rotate, by default.
pub const DEFAULT_TICKET_ROTATION: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Sessions kept for resumption by ID (clients that do not use tickets), by default.
pub const DEFAULT_SESSION_CACHE: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn names_match_exactly_or_by_one_wildcard_label() {
        assert!(name_matches("a.test", "A.Test"));
        assert!(name_matches("*.wild.test", "x.wild.test"));
        assert!(
            !name_matches("*.wild.test", "wild.test"),
            "the wildcard needs a label"
        );
        assert!(
            !name_matches("*.wild.test", "y.x.wild.test"),
            "one label only"
        );
        assert!(!name_matches("*.wild.test", "xwild.test"));
        assert!(!name_matches("a.test", "b.test"));
        assert!(
            !name_matches("*.é.test", "x.é.test.x"),
            "no panic on multibyte names"
        );
    }
}
