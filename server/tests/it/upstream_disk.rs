//! A CA whose certificate a disk upstream authority signs: the bundle publishes the
//! upstream root, SVIDs present the intermediate, and openssl agrees.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use identity::crypto::{KeyType, LocalKey, Signer};
use identity::x509::{mint_ca, verify_x509_svid, CaTemplate, Issuer, Subject};
use identity::{SpiffeId, TrustDomain};
use kms::KeyManagerConfig;
use server::ca::local_authority::AuthorityKind;
use server::ca::{CaConfig, CaKeys, CaManager};
use server::clock::{Clock, ManualClock};
use server::upstream::disk::{DiskUpstreamAuthority, DiskUpstreamConfig};
use server::upstream::{UpstreamAuthority, UpstreamError};
use time::OffsetDateTime;

struct Files {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    root_pem: String,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// An upstream root made by openssl, so the upstream is nothing we minted.
fn openssl_root() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("upstream.key");
    let cert = dir.path().join("upstream.crt");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/O=Upstream/CN=root",
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let root_pem = std::fs::read_to_string(&cert).unwrap();
    Files { _dir: dir, cert, key, root_pem }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_signed_ca_chains_to_the_upstream_root() {
    let files = openssl_root();
    let upstream = DiskUpstreamAuthority::new(DiskUpstreamConfig {
        cert_file_path: files.cert.clone(),
        key_file_path: files.key.clone(),
        bundle_file_path: None,
    })
    .await
    .unwrap();
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let keys = KeyManagerConfig::Memory.build().await.unwrap();
    let config = CaConfig::new(TrustDomain::parse("example.org").unwrap());
    let mut ca = CaManager::new(config, CaKeys::Managed(keys), Some(Arc::new(upstream)), clock.clone()).unwrap();
    ca.rotate().await.unwrap();

    let bundle = ca.bundle().unwrap();
    let root_der = identity::bundle::parse_pem_certificates(&files.root_pem).unwrap().remove(0);
    assert_eq!(bundle.x509_authorities().len(), 1);
    assert_eq!(bundle.x509_authorities()[0].der, root_der, "the bundle publishes the upstream root");
    // LocalAuthority reports which upstream key signed the CA (SPIRE's
    // upstream_authority_subject_key_id): the root's subject key id, as lowercase hex.
    let root_skid = identity::x509::certificate_facts(&root_der)
        .unwrap()
        .subject_key_id
        .expect("openssl gives the root a subject key id");
    let active = ca.authority_states(AuthorityKind::X509).active.expect("an active X.509 authority");
    assert_eq!(active.upstream_authority_id, hex::encode(root_skid));

    let workload = LocalKey::generate(KeyType::EcP256).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
    let chain =
        ca.signing().unwrap().mint_x509_svid(id.clone(), workload.public_key().clone(), None, vec![]).await.unwrap();
    assert_eq!(chain.len(), 2, "SVID then the intermediate");
    assert_eq!(verify_x509_svid(&chain, &ca.bundle().unwrap(), clock.now()).unwrap().spiffe_id, id);

    let dir = tempfile::tempdir().unwrap();
    let bundle_pem = dir.path().join("bundle.pem");
    let untrusted = dir.path().join("chain.pem");
    let leaf = dir.path().join("svid.pem");
    write(&bundle_pem, &ca.bundle().unwrap().x509_authorities_pem());
    write(&untrusted, &identity::bundle::to_pem_certificates([chain[1].as_slice()]));
    write(&leaf, &identity::bundle::to_pem_certificates([chain[0].as_slice()]));
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&bundle_pem)
        .arg("-untrusted")
        .arg(&untrusted)
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_intermediate_with_a_bundle_file() {
    // Root → upstream intermediate (cert_file_path, with its key) → our CA.
    let now = OffsetDateTime::now_utc();
    let td = TrustDomain::parse("upstream.org").unwrap();
    let root_key = LocalKey::generate(KeyType::EcP256).unwrap();
    let root = mint_ca(
        &CaTemplate {
            trust_domain: td.clone(),
            public_key: root_key.public_key().clone(),
            ttl: Duration::from_secs(30 * 86400),
            subject: Subject::ca_default(),
            serial: None,
        },
        None,
        Some(&root_key),
        now,
    )
    .unwrap();
    let mid_key = LocalKey::generate(KeyType::EcP256).unwrap();
    let root_issuer = Issuer::new(&root.der, &root_key).unwrap();
    let mid = mint_ca(
        &CaTemplate {
            trust_domain: td,
            public_key: mid_key.public_key().clone(),
            ttl: Duration::from_secs(10 * 86400),
            subject: Subject::ca_default(),
            serial: None,
        },
        Some(&root_issuer),
        None,
        now,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, bundle) = (dir.path().join("mid.crt"), dir.path().join("mid.key"), dir.path().join("roots.pem"));
    write(&cert, &mid.pem());
    write(&key, &pem::encode(&pem::Pem::new("PRIVATE KEY", mid_key.to_pkcs8_der().unwrap().to_vec())));
    write(&bundle, &root.pem());
    let upstream = DiskUpstreamAuthority::new(DiskUpstreamConfig {
        cert_file_path: cert,
        key_file_path: key.clone(),
        bundle_file_path: Some(bundle.clone()),
    })
    .await
    .unwrap();
    let ours: std::sync::Arc<dyn identity::crypto::Signer> =
        std::sync::Arc::new(LocalKey::generate(KeyType::EcP256).unwrap());
    let signed = upstream
        .mint_x509_ca(
            &TrustDomain::parse("example.org").unwrap(),
            ours.clone(),
            &Subject::ca_default(),
            Duration::from_secs(20 * 86400),
            now,
        )
        .await
        .unwrap();
    assert_eq!(signed.roots, vec![root.der.clone()]);
    assert_eq!(signed.chain, vec![mid.der.clone()]);
    let facts = identity::x509::certificate_facts(&signed.certificate).unwrap();
    assert_eq!(facts.not_after, mid.not_after, "our CA cannot outlive the upstream's");

    // A bundle file with the wrong root is caught before anything is published.
    let stranger_key = LocalKey::generate(KeyType::EcP256).unwrap();
    let stranger = mint_ca(
        &CaTemplate {
            trust_domain: TrustDomain::parse("x.org").unwrap(),
            public_key: stranger_key.public_key().clone(),
            ttl: Duration::from_secs(86400),
            subject: Subject::ca_default(),
            serial: None,
        },
        None,
        Some(&stranger_key),
        now,
    )
    .unwrap();
    write(&bundle, &stranger.pem());
    let err = upstream
        .mint_x509_ca(
            &TrustDomain::parse("example.org").unwrap(),
            ours.clone(),
            &Subject::ca_default(),
            Duration::from_secs(86400),
            now,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not chain to the bundle roots"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfiguration_is_reported_with_the_file() {
    let files = openssl_root();
    let other = openssl_root();
    let cases = [
        (
            DiskUpstreamConfig {
                cert_file_path: files.cert.clone(),
                key_file_path: other.key.clone(),
                bundle_file_path: None,
            },
            "does not match",
        ),
        (
            DiskUpstreamConfig {
                cert_file_path: files.cert.with_extension("missing"),
                key_file_path: files.key.clone(),
                bundle_file_path: None,
            },
            "cannot read cert_file_path",
        ),
        (
            DiskUpstreamConfig {
                cert_file_path: files.key.clone(),
                key_file_path: files.key.clone(),
                bundle_file_path: None,
            },
            "cert_file_path",
        ),
        (
            DiskUpstreamConfig {
                cert_file_path: files.cert.clone(),
                key_file_path: files.cert.clone(),
                bundle_file_path: None,
            },
            "key_file_path",
        ),
    ];
    for (config, needle) in cases {
        let err = DiskUpstreamAuthority::new(config).await.err().unwrap();
        assert!(matches!(err, UpstreamError::Config { .. }), "{err}");
        assert!(err.to_string().contains(needle), "{err} should mention {needle}");
    }
}
