//! Signing keys and tokens, for tests, benchmarks and the demo: lb itself only verifies.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

use super::keys::Alg;

/// A private key that signs tokens.
pub enum SigningKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Secret(Vec<u8>),
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

impl SigningKey {
    /// A fresh key for `alg` (`HS*` takes a random 32-byte secret).
    pub fn generate(alg: Alg) -> Result<SigningKey, String> {
        let rng = SystemRandom::new();
        let err = |e: aws_lc_rs::error::Unspecified| format!("key generation: {e}");
        Ok(match alg {
            Alg::RS256 | Alg::RS384 | Alg::RS512 => SigningKey::Rsa(
                RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(err)?,
            ),
            Alg::ES256 | Alg::ES384 => {
                let a = if alg == Alg::ES256 {
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let doc = EcdsaKeyPair::generate_pkcs8(a, &rng).map_err(err)?;
                SigningKey::Ec(
                    EcdsaKeyPair::from_pkcs8(a, doc.as_ref()).map_err(|e| e.to_string())?,
                )
            }
            Alg::EdDSA => {
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(err)?;
                SigningKey::Ed(Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| e.to_string())?)
            }
            Alg::HS256 | Alg::HS384 | Alg::HS512 => {
                let mut s = vec![0u8; 32];
                aws_lc_rs::rand::SecureRandom::fill(&rng, &mut s).map_err(err)?;
                SigningKey::Secret(s)
            }
        })
    }

    /// The public key as a JWK with `kid` (`None` for a secret).
    pub fn jwk(&self, kid: &str) -> Option<serde_json::Value> {
        Some(match self {
            SigningKey::Rsa(k) => {
                let (n, e) = rsa_components(k.public_key().as_ref())?;
                json!({ "kty": "RSA", "kid": kid, "use": "sig", "n": b64(n), "e": b64(e) })
            }
            SigningKey::Ec(k) => {
                let point = k.public_key().as_ref();
                let n = (point.len() - 1) / 2;
                let crv = if n == 32 { "P-256" } else { "P-384" };
                json!({ "kty": "EC", "kid": kid, "crv": crv,
                    "x": b64(&point[1..1 + n]), "y": b64(&point[1 + n..]) })
            }
            SigningKey::Ed(k) => {
                json!({ "kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(k.public_key().as_ref()) })
            }
            SigningKey::Secret(_) => return None,
        })
    }

    /// A compact JWS of `claims` with `header` (which should name `alg`, and `kid`).
    pub fn sign(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, String> {
        let alg = header["alg"]
            .as_str()
            .and_then(Alg::parse)
            .ok_or("the header needs an alg")?;
        let mut token = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig: Vec<u8> = match self {
            SigningKey::Rsa(k) => {
                let enc = match alg {
                    Alg::RS384 => &signature::RSA_PKCS1_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(enc, &rng, token.as_bytes(), &mut sig)
                    .map_err(|e| e.to_string())?;
                sig
            }
            SigningKey::Ec(k) => k
                .sign(&rng, token.as_bytes())
                .map_err(|e| e.to_string())?
                .as_ref()
                .to_vec(),
            SigningKey::Ed(k) => k.sign(token.as_bytes()).as_ref().to_vec(),
            SigningKey::Secret(s) => {
                let a = match alg {
                    Alg::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
                    Alg::HS512 => aws_lc_rs::hmac::HMAC_SHA512,
                    _ => aws_lc_rs::hmac::HMAC_SHA256,
                };
                aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(a, s), token.as_bytes())
                    .as_ref()
                    .to_vec()
            }
        };
        token.push('.');
        token.push_str(&b64(&sig));
        Ok(token)
    }
}

/// `n` and `e` of a DER `RSAPublicKey` (`SEQUENCE { INTEGER, INTEGER }`), without their
/// sign bytes.
fn rsa_components(der: &[u8]) -> Option<(&[u8], &[u8])> {
    /// One DER element of `tag` at the front of `d`: its content and what follows.
    fn element(d: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&t, rest) = d.split_first()?;
        let (&first, rest) = rest.split_first()?;
        if t != tag {
            return None;
        }
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            let bytes = rest.get(..n)?;
            (
                bytes.iter().fold(0usize, |a, &b| a << 8 | usize::from(b)),
                &rest[n..],
            )
        };
        Some((rest.get(..len)?, &rest[len..]))
    }
    let (seq, _) = element(der, 0x30)?;
    let (n, rest) = element(seq, 0x02)?;
    let (e, _) = element(rest, 0x02)?;
    fn strip(x: &[u8]) -> &[u8] {
        match x.split_first() {
            Some((0, r)) if !r.is_empty() => r,
            _ => x,
        }
    }
    Some((strip(n), strip(e)))
}

/// A JWKS document of `keys` by kid.
pub fn jwks(keys: &[(&str, &SigningKey)]) -> String {
    let list: Vec<serde_json::Value> = keys.iter().filter_map(|(kid, k)| k.jwk(kid)).collect();
    json!({ "keys": list }).to_string()
}
