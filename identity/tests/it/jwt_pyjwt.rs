//! JWT-SVIDs against PyJWT (in the venv `deploy/bootstrap.sh` makes), in both directions.

use std::process::Command;
use std::time::Duration;

use identity::bundle::{Bundle, JwtAuthority};
use identity::crypto::{KeyType, LocalKey, SignatureAlgorithm, Signer};
use identity::jwt::{sign_jwt_svid, validate_jwt_svid, JwtError, JwtSvidParams};
use identity::SpiffeId;
use time::OffsetDateTime;

use crate::support::{python, run, td, write};

const VALIDATE: &str = r#"
import sys, jwt
token, key_path, alg, aud = sys.argv[1:5]
key = open(key_path).read()
claims = jwt.decode(token, key, algorithms=[alg], audience=aud, options={"require": ["exp", "aud", "sub"]})
print(jwt.get_unverified_header(token)["kid"], claims["sub"])
"#;

const MAKE: &str = r#"
import sys, time, jwt
key_path, kind = sys.argv[1:3]
now = int(time.time())
claims = {"sub": "spiffe://example.org/web", "aud": ["db"], "exp": now + 60, "iat": now}
key = open(key_path).read()
if kind == "good":
    print(jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k1"}))
elif kind == "wrong-aud":
    print(jwt.encode(dict(claims, aud=["web"]), key, algorithm="ES256", headers={"kid": "k1"}))
elif kind == "expired":
    print(jwt.encode(dict(claims, exp=now - 600), key, algorithm="ES256", headers={"kid": "k1"}))
elif kind == "none":
    print(jwt.encode(claims, None, algorithm="none", headers={"kid": "k1"}))
elif kind == "hs256":
    print(jwt.encode(claims, "a-shared-secret-long-enough-for-pyjwt", algorithm="HS256", headers={"kid": "k1"}))
"#;

#[test]
fn pyjwt_validates_our_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let script = write(dir.path(), "validate.py", VALIDATE);
    let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let audience = vec!["db".to_owned(), "cache".to_owned()];
    let cases = [
        (KeyType::EcP256, None, "ES256"),
        (KeyType::EcP384, None, "ES384"),
        (KeyType::Rsa2048, None, "RS256"),
        (KeyType::Rsa2048, Some(SignatureAlgorithm::RsaPssSha256), "PS256"),
    ];
    for (key_type, alg, name) in cases {
        let key = LocalKey::generate(key_type).unwrap();
        let key_path = write(dir.path(), "key.pem", key.public_key().to_pem());
        let params = JwtSvidParams {
            spiffe_id: &id,
            audience: &audience,
            ttl: Duration::from_secs(300),
            key_id: "kid-1",
            algorithm: alg,
            not_after: None,
        };
        let token = sign_jwt_svid(&params, &key, OffsetDateTime::now_utc()).unwrap();
        let (ok, out) = run(Command::new(python()).arg(&script).arg(&token).arg(&key_path).args([name, "cache"]));
        assert!(ok, "{name}: PyJWT refused our token: {out}");
        assert_eq!(out.trim(), "kid-1 spiffe://example.org/web");
        let (ok, _) = run(Command::new(python()).arg(&script).arg(&token).arg(&key_path).args([name, "other"]));
        assert!(!ok, "{name}: PyJWT must refuse a wrong audience");
    }
}

#[test]
fn we_refuse_pyjwt_tokens_the_spec_forbids() {
    let dir = tempfile::tempdir().unwrap();
    let script = write(dir.path(), "make.py", MAKE);
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let key_path =
        write(dir.path(), "key.pem", pem::encode(&pem::Pem::new("PRIVATE KEY", key.to_pkcs8_der().unwrap().to_vec())));
    let mut bundle = Bundle::new(td());
    bundle
        .add_jwt_authority(JwtAuthority {
            key_id: "k1".into(),
            public_key: key.public_key().clone(),
            expires_at: None,
            tainted: false,
        })
        .unwrap();
    let make = |kind: &str| {
        let (ok, out) = run(Command::new(python()).arg(&script).arg(&key_path).arg(kind));
        assert!(ok, "{kind}: {out}");
        out.trim().to_owned()
    };
    let now = OffsetDateTime::now_utc();
    assert!(validate_jwt_svid(&make("good"), &bundle, "db", now).is_ok());
    assert!(matches!(
        validate_jwt_svid(&make("wrong-aud"), &bundle, "db", now),
        Err(JwtError::AudienceMismatch { .. })
    ));
    assert!(matches!(validate_jwt_svid(&make("expired"), &bundle, "db", now), Err(JwtError::Expired(_))));
    assert_eq!(validate_jwt_svid(&make("none"), &bundle, "db", now), Err(JwtError::AlgNone));
    assert_eq!(validate_jwt_svid(&make("hs256"), &bundle, "db", now), Err(JwtError::AlgHmac("HS256".into())));
}
