//! Verification keys: JWKS documents (RFC 7517) parsed into keys lb can verify with, and the
//! algorithms each key serves. The algorithm a token is checked with comes from the key and
//! the provider's list, never from the token: the token's `alg` must only agree.

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The algorithms lb verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Alg {
    pub const ALL: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
        }
    }

    pub fn parse(s: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == s)
    }

    pub fn is_hmac(self) -> bool {
        matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }
}

/// The key material of one key.
#[derive(Clone)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (`04 || x || y`) and its curve's algorithm.
    Ec {
        point: Vec<u8>,
        alg: Alg,
    },
    Ed25519(Vec<u8>),
    Secret(Vec<u8>),
}

/// One verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    /// The algorithms this key may verify (its JWK `alg`, or what its type allows).
    pub algs: Vec<Alg>,
    material: Material,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish()
    }
}

impl Key {
    /// A shared secret for HMAC (`HS*`): never from a JWKS, only from the provider's config.
    pub fn secret(secret: Vec<u8>, algs: &[Alg]) -> Key {
        Key {
            kid: None,
            algs: algs.iter().copied().filter(|a| a.is_hmac()).collect(),
            material: Material::Secret(secret),
        }
    }

    /// Whether `sig` signs `message` under `alg` with this key.
    pub fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        if !self.algs.contains(&alg) {
            return false;
        }
        match (&self.material, alg) {
            (Material::Rsa { n, e }, Alg::RS256 | Alg::RS384 | Alg::RS512) => {
                let params = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    _ => &signature::RSA_PKCS1_2048_8192_SHA512,
                };
                signature::RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
            (Material::Ec { point, alg: curve }, _) if *curve == alg => {
                let params = if alg == Alg::ES256 {
                    &signature::ECDSA_P256_SHA256_FIXED
                } else {
                    &signature::ECDSA_P384_SHA384_FIXED
                };
                UnparsedPublicKey::new(params, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (Material::Ed25519(x), Alg::EdDSA) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
            (Material::Secret(s), Alg::HS256 | Alg::HS384 | Alg::HS512) => {
                let a = match alg {
                    Alg::HS256 => aws_lc_rs::hmac::HMAC_SHA256,
                    Alg::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
                    _ => aws_lc_rs::hmac::HMAC_SHA512,
                };
                aws_lc_rs::hmac::verify(&aws_lc_rs::hmac::Key::new(a, s), message, sig).is_ok()
            }
            _ => false,
        }
    }
}

/// A parsed key set: the keys lb can use, and how many it skipped (unsupported types, or
/// keys for encryption).
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    pub skipped: usize,
    /// Why malformed keys were skipped.
    pub problems: Vec<String>,
}

fn b64_field(jwk: &serde_json::Value, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk[name]
        .as_str()
        .ok_or_else(|| format!("a key lacks its {name:?}"))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| format!("a key's {name:?} is not base64url"))
}

/// A supported key's material and the algorithms its type serves; `Ok(None)` for a type
/// lb does not verify with.
fn material(
    jwk: &serde_json::Value,
    kid: &Option<String>,
) -> Result<Option<(Material, Vec<Alg>)>, String> {
    Ok(Some(match (jwk["kty"].as_str(), jwk["crv"].as_str()) {
        (Some("RSA"), _) => {
            let n = b64_field(jwk, "n")?;
            if n.len() < 256 {
                return Err(format!(
                    "key {kid:?}: RSA keys shorter than 2048 bits are refused"
                ));
            }
            let e = b64_field(jwk, "e")?;
            (
                Material::Rsa { n, e },
                vec![Alg::RS256, Alg::RS384, Alg::RS512],
            )
        }
        (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
            let (alg, len) = if crv == "P-256" {
                (Alg::ES256, 32)
            } else {
                (Alg::ES384, 48)
            };
            let (x, y) = (b64_field(jwk, "x")?, b64_field(jwk, "y")?);
            if x.len() != len || y.len() != len {
                return Err(format!("key {kid:?}: x and y must be {len} bytes on {crv}"));
            }
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (Material::Ec { point, alg }, vec![alg])
        }
        (Some("OKP"), Some("Ed25519")) => {
            let x = b64_field(jwk, "x")?;
            if x.len() != 32 {
                return Err(format!("key {kid:?}: an Ed25519 key is 32 bytes"));
            }
            (Material::Ed25519(x), vec![Alg::EdDSA])
        }
        _ => return Ok(None),
    }))
}

/// Parses a JWKS document, keeping the keys whose algorithms `allowed` lists. Fails only on
/// a document that is not a JWKS. A malformed key is skipped and said why in `problems`
/// (an issuer that publishes one odd key must not stop the rotation to its good ones);
/// keys of other types, for encryption (`use: enc`), or for algorithms not allowed are
/// skipped.
pub fn parse_jwks(text: &[u8], allowed: &[Alg]) -> Result<KeySet, String> {
    let doc: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc["keys"]
        .as_array()
        .ok_or("not a JWKS: no \"keys\" array")?;
    let mut set = KeySet::default();
    for jwk in list {
        if jwk["use"].as_str().is_some_and(|u| u != "sig") {
            set.skipped += 1;
            continue;
        }
        let kid = jwk["kid"].as_str().map(str::to_string);
        let (material, by_type) = match material(jwk, &kid) {
            Ok(Some(m)) => m,
            Ok(None) => {
                set.skipped += 1;
                continue;
            }
            Err(e) => {
                set.skipped += 1;
                set.problems.push(e);
                continue;
            }
        };
        // A key's own `alg` narrows it to that one algorithm.
        let algs: Vec<Alg> = match jwk["alg"].as_str() {
            Some(a) => match Alg::parse(a) {
                Some(a) if by_type.contains(&a) => vec![a],
                _ => {
                    set.skipped += 1;
                    continue;
                }
            },
            None => by_type,
        };
        let algs: Vec<Alg> = algs.into_iter().filter(|a| allowed.contains(a)).collect();
        if algs.is_empty() {
            set.skipped += 1;
            continue;
        }
        set.keys.push(Key {
            kid,
            algs,
            material,
        });
    }
    Ok(set)
}
