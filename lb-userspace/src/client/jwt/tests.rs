use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::sign::{jwks, SigningKey};
use super::*;

const NOW: u64 = 1_800_000_000;

fn provider(algs: &[Alg], keys: KeySet) -> Provider {
    Provider::new(
        ProviderConfig {
            name: "test".into(),
            issuer: Some("https://issuer.test".into()),
            audiences: vec!["shop".into()],
            algorithms: algs.to_vec(),
            leeway: Duration::from_secs(30),
            token: TokenSource::Bearer,
            keys: KeySource::Secret,
            forward_claims: Vec::new(),
            strip_token: false,
            consumer_claim: "sub".into(),
        },
        Arc::new(KeyHolder::new(keys)),
    )
}

fn claims() -> serde_json::Value {
    json!({ "sub": "u1", "iss": "https://issuer.test", "aud": ["other", "shop"], "exp": NOW + 60,
            "role": "beta-tester", "realm_access": { "roles": ["admin", "dev"] }, "scope": "read write",
            "level": 3, "https://example.com/tenant": "acme" })
}

#[test]
fn each_algorithm_verifies_its_own_tokens_only() {
    for alg in [Alg::RS256, Alg::ES256, Alg::ES384, Alg::EdDSA] {
        let key = SigningKey::generate(alg).expect("key");
        let set = keys::parse_jwks(jwks(&[("k1", &key)]).as_bytes(), &Alg::ALL).expect("jwks");
        let p = provider(&[alg], set.clone());
        let token = key
            .sign(&json!({ "alg": alg.name(), "kid": "k1" }), &claims())
            .expect("sign");
        let c = p
            .verify(token.as_bytes(), &set, NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(c.value["sub"], "u1");
        assert_eq!(c.until, NOW + 90);
        // One flipped signature byte.
        let mut bad = token.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            p.verify(&bad, &set, NOW).err(),
            Some(Failure::Signature),
            "{alg:?}"
        );
    }
}

#[test]
fn every_bad_token_is_refused_for_its_reason() {
    let key = SigningKey::generate(Alg::ES256).expect("key");
    let other = SigningKey::generate(Alg::ES256).expect("key");
    let set = keys::parse_jwks(jwks(&[("k1", &key)]).as_bytes(), &[Alg::ES256]).expect("jwks");
    let p = provider(&[Alg::ES256], set.clone());
    let h = json!({ "alg": "ES256", "kid": "k1" });
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims();
        f(&mut c);
        key.sign(&h, &c).expect("sign")
    };
    let check = |t: &str| p.verify(t.as_bytes(), &set, NOW).err();
    assert_eq!(check(&with(&|_| {})), None);
    assert_eq!(
        check(&with(&|c| c["exp"] = json!(NOW - 31))),
        Some(Failure::Expired)
    );
    assert_eq!(
        check(&with(&|c| c["exp"] = json!(NOW - 29))),
        None,
        "within the leeway"
    );
    assert_eq!(
        check(&with(&|c| {
            c.as_object_mut().map(|o| o.remove("exp"));
        })),
        Some(Failure::Expired),
        "no exp"
    );
    assert_eq!(
        check(&with(&|c| c["nbf"] = json!(NOW + 31))),
        Some(Failure::NotYetValid)
    );
    assert_eq!(
        check(&with(&|c| c["iss"] = json!("https://evil.test"))),
        Some(Failure::Issuer)
    );
    assert_eq!(
        check(&with(&|c| c["aud"] = json!("billing"))),
        Some(Failure::Audience)
    );
    assert_eq!(check(&with(&|c| c["aud"] = json!("shop"))), None);
    // Another key under the same kid: the signature fails.
    assert_eq!(
        check(&other.sign(&h, &claims()).expect("sign")),
        Some(Failure::Signature)
    );
    assert_eq!(
        check(
            &key.sign(&json!({ "alg": "ES256", "kid": "k9" }), &claims())
                .expect("sign")
        ),
        Some(Failure::UnknownKey)
    );
    // `alg: none`, with or without a signature.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string())
    );
    assert_eq!(check(&none), Some(Failure::Algorithm));
    // An algorithm the provider does not allow, even with a key that could do it.
    let hs = SigningKey::generate(Alg::HS256).expect("secret");
    assert_eq!(
        check(
            &hs.sign(&json!({ "alg": "HS256", "kid": "k1" }), &claims())
                .expect("sign")
        ),
        Some(Failure::Algorithm)
    );
    for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.e30"] {
        assert!(
            matches!(check(junk), Some(Failure::Malformed | Failure::Algorithm)),
            "{junk:?}"
        );
    }
    let crit = key
        .sign(
            &json!({ "alg": "ES256", "kid": "k1", "crit": ["exp"] }),
            &claims(),
        )
        .expect("sign");
    assert_eq!(check(&crit), Some(Failure::Malformed));
}

/// The key confusion attack: a token signed with HMAC using the RSA public key as the secret
/// must not pass, because the RSA key never serves an HMAC algorithm.
#[test]
fn a_public_key_is_never_an_hmac_secret() {
    let rsa = SigningKey::generate(Alg::RS256).expect("key");
    let jwk = rsa.jwk("k1").expect("jwk");
    let set = keys::parse_jwks(jwks(&[("k1", &rsa)]).as_bytes(), &Alg::ALL).expect("jwks");
    let p = provider(&Alg::ALL, set.clone());
    let forged = SigningKey::Secret(jwk["n"].as_str().expect("n").as_bytes().to_vec())
        .sign(&json!({ "alg": "HS256", "kid": "k1" }), &claims())
        .expect("sign");
    assert_eq!(
        p.verify(forged.as_bytes(), &set, NOW).err(),
        Some(Failure::UnknownKey)
    );
}

#[test]
fn secrets_verify_hmac_tokens() {
    let key = SigningKey::generate(Alg::HS256).expect("secret");
    let SigningKey::Secret(s) = &key else {
        unreachable!("a secret")
    };
    let set = KeySet {
        keys: vec![Key::secret(s.clone(), &[Alg::HS256])],
        skipped: 0,
        problems: Vec::new(),
    };
    let p = provider(&[Alg::HS256], set.clone());
    let t = key
        .sign(&json!({ "alg": "HS256" }), &claims())
        .expect("sign");
    assert!(p.verify(t.as_bytes(), &set, NOW).is_ok());
    let t = key
        .sign(&json!({ "alg": "HS512" }), &claims())
        .expect("sign");
    assert_eq!(
        p.verify(t.as_bytes(), &set, NOW).err(),
        Some(Failure::Algorithm)
    );
}

#[test]
fn jwks_documents_keep_what_they_can_use() {
    let rsa = SigningKey::generate(Alg::RS256).expect("key");
    let ed = SigningKey::generate(Alg::EdDSA).expect("key");
    let mut doc: serde_json::Value =
        serde_json::from_str(&jwks(&[("r", &rsa), ("e", &ed)])).expect("json");
    let keys_list = doc["keys"].as_array_mut().expect("keys");
    keys_list.push(json!({ "kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB" }));
    keys_list.push(json!({ "kty": "oct", "k": "c2VjcmV0" }));
    let set = keys::parse_jwks(doc.to_string().as_bytes(), &[Alg::RS256]).expect("jwks");
    assert_eq!((set.keys.len(), set.skipped), (1, 3));
    assert_eq!(set.keys[0].kid.as_deref(), Some("r"));
    assert!(keys::parse_jwks(b"{}", &Alg::ALL).is_err());
    assert!(keys::parse_jwks(b"not json", &Alg::ALL).is_err());
    // A malformed key is skipped with the reason; the good ones next to it stay.
    let mut doc: serde_json::Value = serde_json::from_str(&jwks(&[("r", &rsa)])).expect("json");
    if let Some(list) = doc["keys"].as_array_mut() {
        list.push(json!({ "kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB" }));
    }
    let set = keys::parse_jwks(doc.to_string().as_bytes(), &Alg::ALL).expect("jwks");
    assert_eq!(set.keys.len(), 1);
    assert!(
        set.problems.iter().any(|p| p.contains("2048")),
        "{:?}",
        set.problems
    );
}

#[test]
fn claims_are_found_by_name_path_and_namespace() {
    let c = Claims {
        value: claims(),
        until: NOW,
    };
    let cond = |name: &str, test: ClaimTest| {
        ClaimCond {
            name: name.into(),
            test,
        }
        .matches(Some(&c))
    };
    assert!(cond("role", ClaimTest::Equals("beta-tester".into())));
    assert!(!cond("role", ClaimTest::Equals("beta".into())));
    assert!(cond("level", ClaimTest::Equals("3".into())));
    assert!(cond(
        "realm_access.roles",
        ClaimTest::Contains("admin".into())
    ));
    assert!(!cond(
        "realm_access.roles",
        ClaimTest::Contains("root".into())
    ));
    assert!(cond("scope", ClaimTest::Contains("write".into())));
    assert!(cond(
        "https://example.com/tenant",
        ClaimTest::Equals("acme".into())
    ));
    assert!(cond("email", ClaimTest::Present(false)));
    assert!(!cond("email", ClaimTest::Present(true)));
    let absent = ClaimCond {
        name: "role".into(),
        test: ClaimTest::Present(false),
    };
    assert!(absent.matches(None), "no token: every claim is absent");
}

#[test]
fn the_cache_answers_repeats_until_the_keys_change() {
    let key = SigningKey::generate(Alg::ES256).expect("key");
    let set = keys::parse_jwks(jwks(&[("k1", &key)]).as_bytes(), &[Alg::ES256]).expect("jwks");
    let p = provider(&[Alg::ES256], set);
    let mut c = claims();
    c["exp"] = json!(unix_now() + 600);
    let t = key
        .sign(&json!({ "alg": "ES256", "kid": "k1" }), &c)
        .expect("sign");
    let first = p.check(Some(t.as_bytes())).expect("first");
    let again = p.check(Some(t.as_bytes())).expect("again");
    assert!(Rc::ptr_eq(&first, &again), "a repeat is a cache hit");
    // New keys (a rotation that dropped k1): the cached verification no longer counts.
    let rotated = SigningKey::generate(Alg::ES256).expect("key");
    p.keys.current.store(Arc::new(Keys {
        set: keys::parse_jwks(jwks(&[("k2", &rotated)]).as_bytes(), &[Alg::ES256]).expect("jwks"),
        generation: next_generation(),
        fetched: None,
        error: None,
    }));
    assert_eq!(p.check(Some(t.as_bytes())).err(), Some(Failure::UnknownKey));
    assert_eq!(p.check(None).err(), Some(Failure::Missing));
}
