//! Signing and validation together, and every refusal the standard requires.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use time::OffsetDateTime;

use super::*;
use crate::bundle::{Bundle, JwtAuthority};
use crate::crypto::{KeyType, LocalKey, SignatureAlgorithm, Signer};
use crate::{SpiffeId, TrustDomain};

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

fn setup(key_type: KeyType) -> (LocalKey, Bundle) {
    let key = LocalKey::generate(key_type).unwrap();
    let mut bundle = Bundle::new(TrustDomain::parse("example.org").unwrap());
    bundle
        .add_jwt_authority(JwtAuthority {
            key_id: "k1".into(),
            public_key: key.public_key().clone(),
            expires_at: None,
            tainted: false,
        })
        .unwrap();
    (key, bundle)
}

fn token(key: &LocalKey, alg: Option<SignatureAlgorithm>, ttl: Duration) -> String {
    let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let audience = vec!["db".to_owned(), "cache".to_owned()];
    let params =
        JwtSvidParams { spiffe_id: &id, audience: &audience, ttl, key_id: "k1", algorithm: alg, not_after: None };
    sign_jwt_svid(&params, key, now()).unwrap()
}

/// Re-encodes a token's header and claims, keeping its signature.
fn forge(token: &str, header: serde_json::Value, claims: Option<serde_json::Value>) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let claims = claims.map_or(parts[1].to_owned(), |c| URL_SAFE_NO_PAD.encode(c.to_string()));
    format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), claims, parts[2])
}

const FIVE_MIN: Duration = Duration::from_secs(300);

#[test]
fn round_trip_for_every_algorithm() {
    let cases = [
        (KeyType::EcP256, None, "ES256"),
        (KeyType::EcP384, None, "ES384"),
        (KeyType::Rsa2048, None, "RS256"),
        (KeyType::Rsa2048, Some(SignatureAlgorithm::RsaPssSha256), "PS256"),
    ];
    for (key_type, alg, name) in cases {
        let (key, bundle) = setup(key_type);
        let t = token(&key, alg, FIVE_MIN);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(t.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["alg"], name);
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], "k1");
        let v = validate_jwt_svid(&t, &bundle, "cache", now()).unwrap();
        assert_eq!(v.spiffe_id.to_string(), "spiffe://example.org/web");
        assert_eq!(v.audience, vec!["db", "cache"]);
        assert_eq!(v.expiry, now().unix_timestamp() + 300);
        assert_eq!(v.claims["iat"], now().unix_timestamp());
    }
}

#[test]
fn refuses_wrong_audience_expired_and_unknown_keys() {
    let (key, bundle) = setup(KeyType::EcP256);
    let t = token(&key, None, FIVE_MIN);
    assert!(matches!(validate_jwt_svid(&t, &bundle, "other", now()), Err(JwtError::AudienceMismatch { .. })));
    let within_leeway = now() + time::Duration::seconds(300 + LEEWAY);
    assert!(validate_jwt_svid(&t, &bundle, "db", within_leeway).is_ok());
    let late = within_leeway + time::Duration::seconds(1);
    assert_eq!(validate_jwt_svid(&t, &bundle, "db", late), Err(JwtError::Expired(now().unix_timestamp() + 300)));

    let (_, other_bundle) = setup(KeyType::EcP256);
    assert_eq!(validate_jwt_svid(&t, &other_bundle, "db", now()), Err(JwtError::BadSignature));
    let empty = Bundle::new(TrustDomain::parse("example.org").unwrap());
    assert!(matches!(validate_jwt_svid(&t, &empty, "db", now()), Err(JwtError::UnknownKey { .. })));
    let foreign = Bundle::new(TrustDomain::parse("other.org").unwrap());
    assert!(matches!(validate_jwt_svid(&t, &foreign, "db", now()), Err(JwtError::NoBundle(_))));
}

#[test]
fn refuses_forbidden_headers() {
    let (key, bundle) = setup(KeyType::EcP256);
    let t = token(&key, None, FIVE_MIN);
    let cases = [
        (serde_json::json!({"alg": "none", "kid": "k1"}), JwtError::AlgNone),
        (serde_json::json!({"alg": "HS256", "kid": "k1"}), JwtError::AlgHmac("HS256".into())),
        (serde_json::json!({"alg": "EdDSA", "kid": "k1"}), JwtError::UnsupportedAlg("EdDSA".into())),
        (serde_json::json!({"kid": "k1"}), JwtError::MissingAlg),
        (serde_json::json!({"alg": "ES256"}), JwtError::MissingKid),
        (serde_json::json!({"alg": "ES256", "kid": ""}), JwtError::MissingKid),
        (serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWS"}), JwtError::BadTyp("\"JWS\"".into())),
        (
            serde_json::json!({"alg": "ES256", "kid": "k1", "crit": ["exp"]}),
            JwtError::CriticalHeader("[\"exp\"]".into()),
        ),
        (serde_json::json!({"alg": "RS256", "kid": "k1"}), JwtError::AlgKeyMismatch("RS256".into())),
    ];
    for (header, want) in cases {
        assert_eq!(validate_jwt_svid(&forge(&t, header.clone(), None), &bundle, "db", now()), Err(want), "{header}");
    }
    // typ JOSE is allowed, but changing the header breaks the signature.
    let jose = forge(&t, serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JOSE"}), None);
    assert_eq!(validate_jwt_svid(&jose, &bundle, "db", now()), Err(JwtError::BadSignature));
}

#[test]
fn refuses_bad_claims_before_trusting_them() {
    let (key, bundle) = setup(KeyType::EcP256);
    let t = token(&key, None, FIVE_MIN);
    let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
    let cases = [
        (serde_json::json!({"aud": "db", "exp": 1}), JwtError::MissingSub),
        (
            serde_json::json!({"sub": "spiffe://example.org/web/", "aud": "db"}),
            JwtError::BadSub(crate::IdError::TrailingSlash),
        ),
        (serde_json::json!({"sub": "spiffe://example.org/web", "aud": "db"}), JwtError::BadSignature),
    ];
    for (claims, want) in cases {
        assert_eq!(validate_jwt_svid(&forge(&t, header.clone(), Some(claims)), &bundle, "db", now()), Err(want));
    }
}

#[test]
fn claim_rules_apply_to_correctly_signed_tokens() {
    let (key, bundle) = setup(KeyType::EcP256);
    let sign = |claims: serde_json::Value| {
        let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let der = key.sign(SignatureAlgorithm::EcdsaP256Sha256, input.as_bytes()).unwrap();
        let sig = crate::crypto::der_to_fixed(&der, 32).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    };
    let exp = now().unix_timestamp() + 60;
    let sub = "spiffe://example.org/web";
    let cases = [
        (serde_json::json!({"sub": sub, "aud": "db"}), Err(JwtError::MissingExp)),
        (serde_json::json!({"sub": sub, "exp": exp}), Err(JwtError::MissingAud)),
        (serde_json::json!({"sub": sub, "exp": "soon", "aud": "db"}), Err(JwtError::BadTimeClaim("exp"))),
        (serde_json::json!({"sub": sub, "exp": exp, "aud": 7}), Err(JwtError::BadAud)),
        (serde_json::json!({"sub": sub, "exp": exp, "aud": ["db", 7]}), Err(JwtError::BadAud)),
        (serde_json::json!({"sub": sub, "exp": exp, "aud": "db", "nbf": exp}), Err(JwtError::NotYetValid(exp))),
        (serde_json::json!({"sub": sub, "exp": exp, "aud": "db"}), Ok(())),
        (serde_json::json!({"sub": sub, "exp": exp as f64 + 0.5, "aud": ["x", "db"]}), Ok(())),
    ];
    for (claims, want) in cases {
        let got = validate_jwt_svid(&sign(claims.clone()), &bundle, "db", now()).map(|_| ());
        assert_eq!(got, want, "{claims}");
    }
}

#[test]
fn refuses_malformed_tokens() {
    let (_, bundle) = setup(KeyType::EcP256);
    for bad in ["", "a", "a.b", "a.b.c.d", "a.b.c.d.e", "{\"payload\":\"x\"}", "!!.!!.!!", "e30.e30.!!", "W10.e30.AA"] {
        assert!(validate_jwt_svid(bad, &bundle, "db", now()).is_err(), "{bad}");
    }
    let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(validate_jwt_svid(&huge, &bundle, "db", now()), Err(JwtError::TooLarge));
}

#[test]
fn signing_refuses_bad_parameters() {
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let aud = vec!["db".to_owned()];
    let base =
        JwtSvidParams { spiffe_id: &id, audience: &aud, ttl: FIVE_MIN, key_id: "k1", algorithm: None, not_after: None };
    let none: Vec<String> = vec![];
    assert!(sign_jwt_svid(&JwtSvidParams { audience: &none, ..base.clone() }, &key, now()).is_err());
    assert!(sign_jwt_svid(&JwtSvidParams { key_id: "", ..base.clone() }, &key, now()).is_err());
    assert!(sign_jwt_svid(
        &JwtSvidParams { algorithm: Some(SignatureAlgorithm::RsaPssSha256), ..base.clone() },
        &key,
        now()
    )
    .is_err());
    let td_id = id.trust_domain().id();
    assert!(sign_jwt_svid(&JwtSvidParams { spiffe_id: &td_id, ..base.clone() }, &key, now()).is_err());
    // Expiry is capped at the key's own.
    let cap = now() + time::Duration::seconds(10);
    let t = sign_jwt_svid(&JwtSvidParams { not_after: Some(cap), ..base }, &key, now()).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(t.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims["exp"], cap.unix_timestamp());
}

mod never_panics {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn on_arbitrary_tokens(token in "[A-Za-z0-9_.=-]{0,300}") {
            let (_, bundle) = setup(KeyType::EcP256);
            prop_assert!(validate_jwt_svid(&token, &bundle, "db", now()).is_err());
        }

        #[test]
        fn on_arbitrary_json_parts(header in any::<String>(), claims in any::<String>(), sig in proptest::collection::vec(any::<u8>(), 0..80)) {
            let (_, bundle) = setup(KeyType::EcP256);
            let token = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims), URL_SAFE_NO_PAD.encode(sig));
            prop_assert!(validate_jwt_svid(&token, &bundle, "db", now()).is_err());
        }
    }
}
