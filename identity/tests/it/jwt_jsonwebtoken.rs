//! JWT-SVIDs against the `jsonwebtoken` crate, in both directions.

use std::time::Duration;

use identity::bundle::{Bundle, JwtAuthority};
use identity::crypto::{KeyType, LocalKey, SignatureAlgorithm, Signer};
use identity::jwt::{sign_jwt_svid, validate_jwt_svid, JwtError, JwtSvidParams};
use identity::SpiffeId;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::support::td;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    aud: Vec<String>,
    exp: i64,
    iat: i64,
}

fn decoding_key(key: &LocalKey) -> DecodingKey {
    let pem = key.public_key().to_pem();
    if key.key_type().is_rsa() {
        DecodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
    } else {
        DecodingKey::from_ec_pem(pem.as_bytes()).unwrap()
    }
}

fn bundle_with(key: &LocalKey, kid: &str) -> Bundle {
    let mut bundle = Bundle::new(td());
    let authority =
        JwtAuthority { key_id: kid.into(), public_key: key.public_key().clone(), expires_at: None, tainted: false };
    bundle.add_jwt_authority(authority).unwrap();
    bundle
}

#[test]
fn jsonwebtoken_validates_our_tokens() {
    let cases = [
        (KeyType::EcP256, None, Algorithm::ES256),
        (KeyType::EcP384, None, Algorithm::ES384),
        (KeyType::Rsa2048, None, Algorithm::RS256),
        (KeyType::Rsa4096, Some(SignatureAlgorithm::RsaPssSha256), Algorithm::PS256),
    ];
    let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let audience = vec!["db".to_owned()];
    for (key_type, alg, theirs) in cases {
        let key = LocalKey::generate(key_type).unwrap();
        let params = JwtSvidParams {
            spiffe_id: &id,
            audience: &audience,
            ttl: Duration::from_secs(300),
            key_id: "k1",
            algorithm: alg,
            not_after: None,
        };
        let token = sign_jwt_svid(&params, &key, OffsetDateTime::now_utc()).unwrap();
        let mut validation = Validation::new(theirs);
        validation.set_audience(&["db"]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        let data = decode::<Claims>(&token, &decoding_key(&key), &validation)
            .unwrap_or_else(|e| panic!("{key_type}: jsonwebtoken refused our token: {e}"));
        assert_eq!(data.claims.sub, "spiffe://example.org/web");
        assert_eq!(data.header.kid.as_deref(), Some("k1"));
        assert_eq!(data.header.typ.as_deref(), Some("JWT"));
        // And a wrong audience is refused by them too, so the check above means something.
        validation.set_audience(&["other"]);
        assert!(decode::<Claims>(&token, &decoding_key(&key), &validation).is_err());
    }
}

#[test]
fn we_validate_their_tokens_and_refuse_the_bad_ones() {
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let pkcs8 = key.to_pkcs8_der().unwrap();
    let encoding = EncodingKey::from_ec_der(&pkcs8);
    let bundle = bundle_with(&key, "k1");
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let claims =
        |aud: &str, exp: i64| Claims { sub: "spiffe://example.org/web".into(), aud: vec![aud.into()], exp, iat: now };
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());

    let good = encode(&header, &claims("db", now + 60), &encoding).unwrap();
    let v = validate_jwt_svid(&good, &bundle, "db", OffsetDateTime::now_utc()).unwrap();
    assert_eq!(v.spiffe_id.to_string(), "spiffe://example.org/web");

    let wrong_aud = encode(&header, &claims("web", now + 60), &encoding).unwrap();
    assert!(matches!(
        validate_jwt_svid(&wrong_aud, &bundle, "db", OffsetDateTime::now_utc()),
        Err(JwtError::AudienceMismatch { .. })
    ));

    let expired = encode(&header, &claims("db", now - 3600), &encoding).unwrap();
    assert_eq!(
        validate_jwt_svid(&expired, &bundle, "db", OffsetDateTime::now_utc()),
        Err(JwtError::Expired(now - 3600))
    );

    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("k1".into());
    let hs = encode(&hs_header, &claims("db", now + 60), &EncodingKey::from_secret(b"guessable")).unwrap();
    assert_eq!(
        validate_jwt_svid(&hs, &bundle, "db", OffsetDateTime::now_utc()),
        Err(JwtError::AlgHmac("HS256".into()))
    );

    let no_kid = encode(&Header::new(Algorithm::ES256), &claims("db", now + 60), &encoding).unwrap();
    assert_eq!(validate_jwt_svid(&no_kid, &bundle, "db", OffsetDateTime::now_utc()), Err(JwtError::MissingKid));

    // alg "none": jsonwebtoken will not make one, so build it by hand from their good token.
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let payload = good.split('.').nth(1).unwrap();
    let none = format!("{}.{payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1","typ":"JWT"}"#));
    assert_eq!(validate_jwt_svid(&none, &bundle, "db", OffsetDateTime::now_utc()), Err(JwtError::AlgNone));
}
