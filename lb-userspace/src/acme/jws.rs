//! The signed requests of ACME (RFC 8555 section 6.2): JSON Web Signatures with an ECDSA
//! P-256 account key (ES256), in the flattened JSON serialisation, and the account key's JWK
//! thumbprint (RFC 7638) that key authorizations are built from.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::Digest;

/// Base64url without padding, as JOSE writes it.
pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// An account key.
pub struct AccountKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl AccountKey {
    /// A new random P-256 key; `pkcs8` is what to store.
    pub fn generate() -> Result<(AccountKey, Vec<u8>), String> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|e| format!("generating the account key: {e}"))?;
        let pkcs8 = pair
            .to_pkcs8v1()
            .map_err(|e| format!("encoding the account key: {e}"))?;
        let der = pkcs8.as_ref().to_vec();
        Ok((
            AccountKey {
                pair,
                rng: SystemRandom::new(),
            },
            der,
        ))
    }

    /// A stored key (PKCS#8 DER).
    pub fn from_pkcs8(der: &[u8]) -> Result<AccountKey, String> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|e| format!("not a P-256 account key: {e}"))?;
        Ok(AccountKey {
            pair,
            rng: SystemRandom::new(),
        })
    }

    /// The public key as a JWK, members in the lexical order RFC 7638 hashes them in.
    pub fn jwk(&self) -> String {
        // An uncompressed point: 0x04, then X and Y, 32 bytes each.
        let point = self.pair.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64(x),
            b64(y)
        )
    }

    /// The JWK thumbprint: base64url of SHA-256 over the canonical JWK.
    pub fn thumbprint(&self) -> String {
        b64(&sha2::Sha256::digest(self.jwk().as_bytes()))
    }

    /// A JWS over `payload` (`None`: POST-as-GET, an empty payload) for `url`, identified by
    /// the account URL `kid` or, before there is one, by the JWK itself.
    pub fn sign(
        &self,
        url: &str,
        nonce: &str,
        kid: Option<&str>,
        payload: Option<&str>,
    ) -> Result<String, String> {
        let key = match kid {
            Some(k) => format!(r#""kid":{}"#, json_string(k)),
            None => format!(r#""jwk":{}"#, self.jwk()),
        };
        let protected = b64(format!(
            r#"{{"alg":"ES256",{key},"nonce":{},"url":{}}}"#,
            json_string(nonce),
            json_string(url)
        )
        .as_bytes());
        let payload = payload.map_or_else(String::new, |p| b64(p.as_bytes()));
        let signing_input = format!("{protected}.{payload}");
        let sig = self
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|e| format!("signing: {e}"))?;
        Ok(format!(
            r#"{{"protected":"{protected}","payload":"{payload}","signature":"{}"}}"#,
            b64(sig.as_ref())
        ))
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
    use base64::Engine;

    #[test]
    fn a_signature_verifies_over_its_protected_header_and_payload() {
        let (key, der) = AccountKey::generate().expect("key");
        let again = AccountKey::from_pkcs8(&der).expect("stored key loads");
        assert_eq!(key.jwk(), again.jwk());
        let jws = key
            .sign(
                "https://ca/new-order",
                "n0nce",
                Some("https://ca/acct/1"),
                Some("{}"),
            )
            .expect("sign");
        let v: serde_json::Value = serde_json::from_str(&jws).expect("JSON");
        let field = |k: &str| v[k].as_str().expect(k).to_string();
        let header = URL_SAFE_NO_PAD.decode(field("protected")).expect("b64");
        let header: serde_json::Value = serde_json::from_slice(&header).expect("header JSON");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "https://ca/acct/1");
        assert_eq!(header["nonce"], "n0nce");
        assert_eq!(header["url"], "https://ca/new-order");
        let sig = URL_SAFE_NO_PAD.decode(field("signature")).expect("b64");
        assert_eq!(sig.len(), 64, "ES256 signatures are r || s");
        let public = UnparsedPublicKey::new(
            &ECDSA_P256_SHA256_FIXED,
            key.pair.public_key().as_ref().to_vec(),
        );
        let input = format!("{}.{}", field("protected"), field("payload"));
        public
            .verify(input.as_bytes(), &sig)
            .expect("the signature verifies");
        // POST-as-GET: an empty payload; a new account: the JWK instead of a kid.
        let get = key.sign("https://ca/x", "n", None, None).expect("sign");
        let v: serde_json::Value = serde_json::from_str(&get).expect("JSON");
        assert_eq!(v["payload"], "");
        let header = URL_SAFE_NO_PAD
            .decode(v["protected"].as_str().expect("protected"))
            .expect("b64");
        let header: serde_json::Value = serde_json::from_slice(&header).expect("JSON");
        assert_eq!(header["jwk"]["kty"], "EC");
        assert!(header.get("kid").is_none());
    }

    #[test]
    fn the_thumbprint_follows_rfc_7638() {
        let (key, _) = AccountKey::generate().expect("key");
        let jwk: serde_json::Value = serde_json::from_str(&key.jwk()).expect("JSON");
        // Lexical member order, no whitespace, exactly the four members.
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":{},"y":{}}}"#,
            jwk["x"], jwk["y"]
        );
        assert_eq!(
            key.thumbprint(),
            b64(&sha2::Sha256::digest(canonical.as_bytes()))
        );
        assert_eq!(key.thumbprint().len(), 43);
    }
}
