//! One suite, run against every backend.

use std::sync::Arc;

use identity::crypto::verify_x509_signature;
use kms::{KeyManager, KeyManagerConfig, KeyManagerError, KeyType, SignatureAlgorithm};

async fn suite(manager: Arc<dyn KeyManager>) {
    let backend = manager.backend();
    assert!(manager.list_keys().await.unwrap().is_empty(), "{backend}: starts empty");

    for (i, key_type) in KeyType::ALL.into_iter().enumerate() {
        let id = format!("key-{i}");
        let info = manager.generate_key(&id, key_type, None).await.unwrap();
        assert_eq!(info.key_type, key_type);
        assert_eq!(info.public_key.key_type(), Some(key_type));
        assert_eq!(manager.get_public_key(&id).await.unwrap(), info);
        let algorithms: &[SignatureAlgorithm] = if key_type.is_rsa() {
            &[SignatureAlgorithm::RsaPkcs1Sha256, SignatureAlgorithm::RsaPssSha256]
        } else {
            &[key_type.default_algorithm()]
        };
        for &alg in algorithms {
            let sig = manager.sign(&id, alg, b"message").await.unwrap();
            verify_x509_signature(&info.public_key, alg, b"message", &sig).unwrap();
            assert!(verify_x509_signature(&info.public_key, alg, b"other", &sig).is_err());
        }
    }
    let listed: Vec<String> = manager.list_keys().await.unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(listed, ["key-0", "key-1", "key-2", "key-3"]);

    // Generating under an existing id replaces the key.
    let before = manager.get_public_key("key-0").await.unwrap();
    let after = manager.generate_key("key-0", KeyType::EcP256, None).await.unwrap();
    assert_ne!(before.public_key, after.public_key, "{backend}: a new key replaces the old");
    assert_eq!(manager.list_keys().await.unwrap().len(), 4);

    // Errors say what went wrong.
    assert_eq!(
        manager.sign("missing", SignatureAlgorithm::EcdsaP256Sha256, b"m").await,
        Err(KeyManagerError::NotFound("missing".into()))
    );
    assert!(matches!(
        manager.sign("key-0", SignatureAlgorithm::RsaPkcs1Sha256, b"m").await,
        Err(KeyManagerError::AlgorithmMismatch { .. })
    ));
    assert!(matches!(
        manager.generate_key("bad id", KeyType::EcP256, None).await,
        Err(KeyManagerError::InvalidKeyId { .. })
    ));
    assert!(matches!(manager.get_public_key("missing").await, Err(KeyManagerError::NotFound(_))));

    manager.delete_key("key-1").await.unwrap();
    manager.delete_key("key-1").await.unwrap();
    assert!(matches!(manager.get_public_key("key-1").await, Err(KeyManagerError::NotFound(_))));
    assert_eq!(manager.list_keys().await.unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend() {
    suite(KeyManagerConfig::Memory.build().await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_backend() {
    let dir = tempfile::tempdir().unwrap();
    let config = KeyManagerConfig::Disk { keys_path: dir.path().join("keys.json") };
    suite(config.build().await.unwrap()).await;
}
