//! The SPIFFE bundle format's rules, and PEM.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

use super::*;
use crate::crypto::{KeyType, LocalKey, Signer};
use crate::x509::tests::{root, td};

fn jwt_authority(kid: &str, key_type: KeyType) -> JwtAuthority {
    let key = LocalKey::generate(key_type).unwrap();
    JwtAuthority { key_id: kid.into(), public_key: key.public_key().clone(), expires_at: None, tainted: false }
}

fn sample() -> Bundle {
    let mut bundle = Bundle::new(td());
    for key_type in [KeyType::EcP256, KeyType::Rsa2048] {
        let ca = root(key_type, Duration::from_secs(86400));
        bundle.add_x509_authority(&ca.cert.der).unwrap();
    }
    bundle.add_jwt_authority(jwt_authority("ec", KeyType::EcP384)).unwrap();
    bundle.add_jwt_authority(jwt_authority("rsa", KeyType::Rsa2048)).unwrap();
    bundle.sequence_number = 7;
    bundle.refresh_hint = Some(300);
    bundle
}

fn parse(doc: &Value) -> Result<Bundle, BundleJsonError> {
    Bundle::from_spiffe_json(td(), doc.to_string().as_bytes())
}

#[test]
fn json_round_trip() {
    let bundle = sample();
    let json = bundle.to_spiffe_json();
    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["spiffe_sequence"], 7);
    assert_eq!(doc["spiffe_refresh_hint"], 300);
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[0]["use"], "x509-svid");
    assert_eq!(keys[0]["kty"], "EC");
    assert!(keys[0].get("kid").is_none());
    assert_eq!(keys[0]["x5c"].as_array().unwrap().len(), 1);
    assert_eq!(keys[1]["kty"], "RSA");
    assert_eq!(keys[2]["use"], "jwt-svid");
    assert_eq!(keys[2]["crv"], "P-384");
    assert_eq!(keys[3]["e"], "AQAB");
    assert_eq!(Bundle::from_spiffe_json(td(), json.as_bytes()).unwrap(), bundle);
}

#[test]
fn unknown_use_is_ignored_and_missing_use_is_an_error() {
    let doc = json!({"keys": [{"use": "wit-svid", "kty": "EC"}]});
    let bundle = parse(&doc).unwrap();
    assert!(bundle.x509_authorities().is_empty() && bundle.jwt_authorities().is_empty());
    let doc = json!({"keys": [{"kty": "EC"}]});
    assert!(matches!(parse(&doc), Err(BundleJsonError::Key { index: 0, .. })));
}

#[test]
fn enforces_key_rules() {
    let bundle = sample();
    let doc: Value = serde_json::from_str(&bundle.to_spiffe_json()).unwrap();
    let x509 = doc["keys"][0].clone();
    let rsa_x509 = doc["keys"][1].clone();
    let jwt = doc["keys"][2].clone();
    let with = |base: &Value, field: &str, value: Value| {
        let mut k = base.clone();
        k[field] = value;
        json!({"keys": [k]})
    };
    let without = |base: &Value, field: &str| {
        let mut k = base.clone();
        k.as_object_mut().unwrap().remove(field);
        json!({"keys": [k]})
    };
    let cert_b64 = x509["x5c"][0].clone();
    let bad_docs = [
        ("x509 with kid", with(&x509, "kid", json!("k"))),
        ("x509 without x5c", without(&x509, "x5c")),
        ("x509 with two certs", with(&x509, "x5c", json!([cert_b64, cert_b64]))),
        ("x509 with no certs", with(&x509, "x5c", json!([]))),
        ("x5c not base64", with(&x509, "x5c", json!(["@@@"]))),
        ("x5c not a cert", with(&x509, "x5c", json!([STANDARD.encode(b"nope")]))),
        ("key does not match cert", with(&x509, "x5c", rsa_x509["x5c"].clone())),
        ("jwt without kid", without(&jwt, "kid")),
        ("jwt with empty kid", with(&jwt, "kid", json!(""))),
        ("jwt bad curve", with(&jwt, "crv", json!("P-192"))),
        ("jwt short x", with(&jwt, "x", json!(URL_SAFE_NO_PAD.encode([1u8; 10])))),
        ("jwt point off curve", with(&jwt, "x", json!(URL_SAFE_NO_PAD.encode([1u8; 48])))),
        ("jwt unknown kty", with(&jwt, "kty", json!("OKP"))),
        ("jwt missing kty", without(&jwt, "kty")),
        ("use not a string", with(&jwt, "use", json!(1))),
    ];
    for (what, doc) in bad_docs {
        assert!(matches!(parse(&doc), Err(BundleJsonError::Key { .. })), "{what}: {:?}", parse(&doc));
    }
    let mut other = jwt.clone();
    other["x"] = doc["keys"][0]["x"].clone();
    let dup = json!({"keys": [jwt.clone(), jwt.clone()]});
    assert_eq!(parse(&dup).unwrap().jwt_authorities().len(), 1, "an identical duplicate is harmless");
}

#[test]
fn refuses_bad_documents() {
    assert!(matches!(Bundle::from_spiffe_json(td(), b"not json"), Err(BundleJsonError::Json(_))));
    assert_eq!(parse(&json!({})), Err(BundleJsonError::MissingKeys));
    assert!(matches!(parse(&json!({"keys": {}})), Err(BundleJsonError::Json(_))));
    assert!(matches!(parse(&json!({"keys": [], "spiffe_refresh_hint": -1})), Err(BundleJsonError::Json(_))));
    assert!(matches!(parse(&json!({"keys": [], "spiffe_sequence": "1"})), Err(BundleJsonError::Json(_))));
    let huge = vec![b' '; MAX_BUNDLE_JSON_BYTES + 1];
    assert_eq!(Bundle::from_spiffe_json(td(), &huge), Err(BundleJsonError::TooLarge));
    let empty = parse(&json!({"keys": []})).unwrap();
    assert_eq!(empty.sequence_number, 0);
    assert_eq!(empty.refresh_hint, None);
}

#[test]
fn jwt_key_id_conflicts_are_refused() {
    let mut bundle = Bundle::new(td());
    let a = jwt_authority("k", KeyType::EcP256);
    assert!(bundle.add_jwt_authority(a.clone()).unwrap());
    assert!(!bundle.add_jwt_authority(a).unwrap());
    assert_eq!(
        bundle.add_jwt_authority(jwt_authority("k", KeyType::EcP256)),
        Err(BundleError::KeyIdConflict("k".into()))
    );
    assert_eq!(bundle.add_jwt_authority(jwt_authority("", KeyType::EcP256)), Err(BundleError::EmptyKeyId));
    assert!(bundle.remove_jwt_authority("k"));
    assert!(!bundle.remove_jwt_authority("k"));
}

#[test]
fn pem_round_trip_and_errors() {
    let bundle = sample();
    let pem = bundle.x509_authorities_pem();
    let ders = parse_pem_certificates(&pem).unwrap();
    let expected: Vec<Vec<u8>> = bundle.x509_authorities().iter().map(|a| a.der.clone()).collect();
    assert_eq!(ders, expected);
    assert_eq!(parse_pem_certificates(""), Err(PemError::Empty));
    let key_pem = LocalKey::generate(KeyType::EcP256).unwrap().public_key().to_pem();
    assert!(matches!(parse_pem_certificates(&key_pem), Err(PemError::WrongLabel { index: 0, .. })));
    let junk = ::pem::encode(&::pem::Pem::new("CERTIFICATE", b"junk".to_vec()));
    assert_eq!(parse_pem_certificates(&junk), Err(PemError::BadCertificate { index: 0 }));
    let mut b = Bundle::new(td());
    assert_eq!(b.add_x509_authority(b"junk"), Err(BundleError::BadCertificate));
    assert!(b.add_x509_authority(&ders[0]).unwrap());
    assert!(!b.add_x509_authority(&ders[0]).unwrap());
    assert!(b.taint_x509_authority(&ders[0]));
    assert!(b.x509_authorities()[0].tainted);
    assert!(b.remove_x509_authority(&ders[0]));
}

mod never_panics {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Bundle::from_spiffe_json(td(), &bytes);
            let _ = parse_pem_certificates(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn on_json_shaped_keys(kty in "(EC|RSA|oct|)", crv in "(P-256|P-384|P-521|X)", x in "[A-Za-z0-9_-]{0,90}", y in "[A-Za-z0-9_-]{0,90}", key_use in "(x509-svid|jwt-svid|other)", kid in proptest::option::of("[a-z]{0,4}"), x5c in proptest::collection::vec("[A-Za-z0-9+/=]{0,40}", 0..3)) {
            let mut key = serde_json::json!({"kty": kty, "crv": crv, "x": x, "y": y, "n": x, "e": y, "use": key_use, "x5c": x5c});
            if let Some(kid) = kid {
                key["kid"] = serde_json::json!(kid);
            }
            let doc = serde_json::json!({"keys": [key], "spiffe_sequence": 1});
            let _ = Bundle::from_spiffe_json(td(), doc.to_string().as_bytes());
        }
    }
}
