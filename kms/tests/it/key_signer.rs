//! Certificates and JWTs signed through a key manager, checked by identity and openssl.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use identity::bundle::{Bundle, JwtAuthority};
use identity::crypto::{KeyType, LocalKey, SignError, SignatureAlgorithm, Signer};
use identity::jwt::{sign_jwt_svid, validate_jwt_svid, JwtSvidParams};
use identity::x509::{mint_ca, mint_x509_svid, verify_x509_svid, CaTemplate, Issuer, MintError, Subject, SvidTemplate};
use identity::{SpiffeId, TrustDomain};
use kms::disk::DiskKeyManager;
use kms::{KeyManager, KeySigner};
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_jwts_signed_through_a_key_manager_verify() {
    let dir = tempfile::tempdir().unwrap();
    let manager: Arc<dyn KeyManager> = Arc::new(DiskKeyManager::open(dir.path().join("keys.json")).await.unwrap());
    for (i, key_type) in KeyType::ALL.into_iter().enumerate() {
        let ca_id = format!("x509-CA-{i}");
        let jwt_id = format!("jwt-{i}");
        manager.generate_key(&ca_id, key_type, None).await.unwrap();
        manager.generate_key(&jwt_id, key_type, None).await.unwrap();
        let ca_signer = KeySigner::new(manager.clone(), &ca_id).await.unwrap();
        let jwt_signer = KeySigner::new(manager.clone(), &jwt_id).await.unwrap();

        // Minting is CPU work and the signer blocks: both belong on a blocking thread.
        let (ca, svid, token) = tokio::task::spawn_blocking(move || {
            let now = OffsetDateTime::now_utc();
            let td = TrustDomain::parse("example.org").unwrap();
            let template = CaTemplate {
                trust_domain: td,
                public_key: ca_signer.public_key().clone(),
                ttl: Duration::from_secs(86400),
                subject: Subject::ca_default(),
                serial: None,
            };
            let ca = mint_ca(&template, None, Some(&ca_signer), now).unwrap();
            let workload = LocalKey::generate(KeyType::EcP256).unwrap();
            let issuer = Issuer::new(&ca.der, &ca_signer).unwrap();
            let svid_template = SvidTemplate {
                spiffe_id: SpiffeId::parse("spiffe://example.org/web").unwrap(),
                public_key: workload.public_key().clone(),
                ttl: Duration::from_secs(3600),
                dns_names: vec![],
                subject: Subject::svid_default(),
                serial: None,
            };
            let svid = mint_x509_svid(&svid_template, &issuer, now).unwrap();
            let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
            let audience = vec!["db".to_owned()];
            let params = JwtSvidParams {
                spiffe_id: &id,
                audience: &audience,
                ttl: Duration::from_secs(300),
                key_id: "kid",
                algorithm: None,
                not_after: None,
            };
            let token = sign_jwt_svid(&params, &jwt_signer, now).unwrap();
            (ca, svid, token)
        })
        .await
        .unwrap();

        let mut bundle = Bundle::new(TrustDomain::parse("example.org").unwrap());
        bundle.add_x509_authority(&ca.der).unwrap();
        let jwt_key = manager.get_public_key(&jwt_id).await.unwrap().public_key;
        bundle
            .add_jwt_authority(JwtAuthority {
                key_id: "kid".into(),
                public_key: jwt_key,
                expires_at: None,
                tainted: false,
            })
            .unwrap();
        let now = OffsetDateTime::now_utc();
        assert_eq!(verify_x509_svid(&[&svid.der], &bundle, now).unwrap().spiffe_id.path(), "/web");
        assert_eq!(validate_jwt_svid(&token, &bundle, "db", now).unwrap().spiffe_id.path(), "/web");

        let bundle_pem = dir.path().join("bundle.pem");
        let svid_pem = dir.path().join("svid.pem");
        std::fs::write(&bundle_pem, bundle.x509_authorities_pem()).unwrap();
        std::fs::write(&svid_pem, svid.pem()).unwrap();
        let out = Command::new("openssl").args(["verify", "-CAfile"]).arg(&bundle_pem).arg(&svid_pem).output().unwrap();
        assert!(out.status.success(), "{key_type}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_deleted_under_the_signer_is_a_clear_error() {
    let manager: Arc<dyn KeyManager> = kms::KeyManagerConfig::Memory.build().await.unwrap();
    manager.generate_key("ca", KeyType::EcP256, None).await.unwrap();
    let signer = KeySigner::new(manager.clone(), "ca").await.unwrap();
    manager.delete_key("ca").await.unwrap();
    let result =
        tokio::task::spawn_blocking(move || signer.sign(SignatureAlgorithm::EcdsaP256Sha256, b"m")).await.unwrap();
    assert!(matches!(result, Err(SignError::Failed(ref m)) if m.contains("not found")), "{result:?}");
    assert!(matches!(KeySigner::new(manager.clone(), "ca").await, Err(kms::KeyManagerError::NotFound(_))));

    // Minting with a vanished key surfaces the key manager's error, not rcgen's.
    manager.generate_key("ca2", KeyType::EcP256, None).await.unwrap();
    let signer = KeySigner::new(manager.clone(), "ca2").await.unwrap();
    manager.delete_key("ca2").await.unwrap();
    let err = tokio::task::spawn_blocking(move || {
        let template = CaTemplate {
            trust_domain: TrustDomain::parse("example.org").unwrap(),
            public_key: signer.public_key().clone(),
            ttl: Duration::from_secs(60),
            subject: Subject::ca_default(),
            serial: None,
        };
        mint_ca(&template, None, Some(&signer), OffsetDateTime::now_utc()).unwrap_err()
    })
    .await
    .unwrap();
    assert!(matches!(err, MintError::Sign(SignError::Failed(ref m)) if m.contains("not found")), "{err}");
}
