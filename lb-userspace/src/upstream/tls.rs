//! TLS to backends (`[[clusters]] tls = { ... }`): the rustls client configuration a cluster
//! connects with, the name each endpoint is verified against, and what a failed handshake
//! means. The handshake runs as part of connecting, so a failure is a connect failure: it is
//! retried on another endpoint and named in the answer and the access log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The validated `tls` table of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// A PEM file of the CAs that issue the backends' certificates; `None`: the system's.
    pub ca: Option<String>,
    /// The name sent as SNI and verified; `None`: each endpoint's host name (or its IP).
    pub server_name: Option<String>,
    /// A client certificate and key to present (mTLS to the backend).
    pub client_cert: Option<crate::tls::CertFiles>,
    /// `false` only with `insecure_skip_verify = true`: any certificate is accepted.
    pub verify: bool,
}

/// A cluster's TLS, ready to connect with.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    pub settings: UpstreamTls,
    pub config: Arc<ClientConfig>,
    /// The files it was built from, for the file watch.
    pub files: Vec<PathBuf>,
    /// Identifies the settings and the files' contents: an idle pooled connection is reused
    /// only by a request that would have made the same connection.
    pub key: u64,
}

impl ClusterTls {
    /// The name to verify endpoint `target` (`host:port` or `IP:port`) against.
    pub fn server_name(&self, target: &str) -> Option<ServerName<'static>> {
        let name = match &self.settings.server_name {
            Some(n) => n.as_str(),
            None => match target.parse::<std::net::SocketAddr>() {
                Ok(a) => return Some(ServerName::IpAddress(a.ip().into())),
                Err(_) => target.rsplit_once(':').map_or(target, |(h, _)| h),
            },
        };
        ServerName::try_from(name.to_string()).ok()
    }
}

/// Why a handshake with a backend failed, as the answer and the access log name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate chains to no CA the cluster trusts.
    UnknownCa,
    /// The certificate does not name the server name.
    NameMismatch,
    /// The certificate expired (or is not valid yet).
    Expired,
    /// The certificate is unusable otherwise (revoked, bad signature, bad encoding).
    BadCertificate,
    /// The backend refused the handshake with an alert.
    Refused,
    /// The backend spoke something that is not TLS, or broke the protocol.
    Protocol,
}

impl TlsFailure {
    /// Classifies a rustls error.
    pub fn of(e: &rustls::Error) -> TlsFailure {
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer => TlsFailure::UnknownCa,
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => TlsFailure::NameMismatch,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
                _ => TlsFailure::BadCertificate,
            },
            rustls::Error::AlertReceived(_) => TlsFailure::Refused,
            _ => TlsFailure::Protocol,
        }
    }

    /// Classifies the error an IO call on a TLS session returned, if it came from rustls.
    pub fn of_io(e: &std::io::Error) -> Option<TlsFailure> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(TlsFailure::of)
    }

    /// The error code in answers, the access log and metrics.
    pub fn code(self) -> &'static str {
        match self {
            TlsFailure::UnknownCa => "upstream_tls_unknown_ca",
            TlsFailure::NameMismatch => "upstream_tls_name_mismatch",
            TlsFailure::Expired => "upstream_tls_expired",
            TlsFailure::BadCertificate => "upstream_tls_bad_certificate",
            TlsFailure::Refused => "upstream_tls_refused",
            TlsFailure::Protocol => "upstream_tls_failed",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            TlsFailure::UnknownCa => "the backend's certificate is not issued by a trusted CA",
            TlsFailure::NameMismatch => "the backend's certificate does not name the server",
            TlsFailure::Expired => "the backend's certificate has expired or is not valid yet",
            TlsFailure::BadCertificate => "the backend's certificate is invalid",
            TlsFailure::Refused => "the backend refused the TLS handshake",
            TlsFailure::Protocol => "the TLS handshake with the backend failed",
        }
    }
}

/// Reads every certificate in a PEM file.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The trusted roots: the configured CA file, or the system's bundle.
fn roots(t: &UpstreamTls, base: &Path) -> Result<(rustls::RootCertStore, PathBuf), String> {
    let path = match &t.ca {
        Some(ca) => base.join(ca),
        None => crate::tls::system_roots_file().ok_or(
            "no system CA bundle found (SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt, ...); install ca-certificates or set `ca`",
        )?,
    };
    let mut store = rustls::RootCertStore::empty();
    let certs = read_certs(&path)?;
    if t.ca.is_some() {
        for c in certs {
            store
                .add(c)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    } else {
        // A system bundle may hold a certificate webpki cannot parse; the rest still count.
        store.add_parsable_certificates(certs);
    }
    if store.is_empty() {
        return Err(format!("{}: no CA certificate in the file", path.display()));
    }
    Ok((store, path))
}

/// Builds a cluster's client configuration: TLS 1.2 and 1.3, ALPN `http/1.1`, SNI, resumption
/// (rustls' in-memory session store), the configured roots or the system's, and an optional
/// client certificate. Relative paths are from `base`.
pub fn client_config(t: &UpstreamTls, base: &Path, alpn: &[u8]) -> Result<ClusterTls, String> {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let mut files = Vec::new();
    let builder = if t.verify {
        let (store, path) = roots(t, base)?;
        if t.ca.is_some() {
            files.push(path);
        }
        builder.with_root_certificates(store)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())))
    };
    let mut config = match &t.client_cert {
        None => builder.with_no_client_auth(),
        Some(f) => {
            let (cert, key) = (base.join(&f.cert), base.join(&f.key));
            let chain = read_certs(&cert)?;
            if chain.is_empty() {
                return Err(format!("{}: no certificate in the file", cert.display()));
            }
            let pk = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| format!("{}: {e}", key.display()))?;
            let built = builder.with_client_auth_cert(chain, pk).map_err(|e| {
                format!(
                    "{} and {}: the key does not fit the certificate ({e})",
                    cert.display(),
                    key.display()
                )
            })?;
            files.push(cert);
            files.push(key);
            built
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let contents = crate::tls::files_fingerprint(files.iter());
    let key = crate::hash::fnv1a(
        crate::hash::fnv1a(contents, format!("{t:?}").as_bytes()),
        alpn,
    ) | 1;
    Ok(ClusterTls {
        settings: t.clone(),
        config: Arc::new(config),
        files,
        key,
    })
}

/// `insecure_skip_verify = true`: any certificate is accepted, though the handshake's
/// signatures are still checked against it (the session is encrypted, but to anyone).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_named_by_cause() {
        use rustls::Error;
        let cases = [
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                TlsFailure::UnknownCa,
            ),
            (
                Error::InvalidCertificate(CertificateError::NotValidForName),
                TlsFailure::NameMismatch,
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                TlsFailure::Expired,
            ),
            (
                Error::InvalidCertificate(CertificateError::Revoked),
                TlsFailure::BadCertificate,
            ),
            (
                Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
                TlsFailure::Refused,
            ),
            (Error::DecryptError, TlsFailure::Protocol),
        ];
        for (e, want) in cases {
            assert_eq!(TlsFailure::of(&e), want, "{e:?}");
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
            assert_eq!(TlsFailure::of_io(&io), Some(want));
        }
        assert_eq!(TlsFailure::of_io(&std::io::Error::other("x")), None);
    }

    #[test]
    fn endpoints_are_verified_by_host_name_or_ip_unless_a_name_is_set() {
        let mut settings = UpstreamTls {
            ca: None,
            server_name: None,
            client_cert: None,
            verify: false,
        };
        let t = client_config(&settings, Path::new("/"), b"http/1.1").expect("config");
        assert_eq!(
            t.server_name("api.internal:443"),
            Some(ServerName::try_from("api.internal").expect("name"))
        );
        assert!(matches!(
            t.server_name("10.0.0.1:443"),
            Some(ServerName::IpAddress(_))
        ));
        settings.server_name = Some("backend.example".into());
        let t = client_config(&settings, Path::new("/"), b"http/1.1").expect("config");
        assert_eq!(
            t.server_name("10.0.0.1:443"),
            Some(ServerName::try_from("backend.example").expect("name"))
        );
    }
}
