//! The disk backend's promises: durable, atomic, private.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use kms::disk::DiskKeyManager;
use kms::{KeyManager, KeyManagerError, KeyType, SignatureAlgorithm};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/keys.json");
    let manager = DiskKeyManager::open(path.clone()).await.unwrap();
    let ec = manager.generate_key("x509-CA-A", KeyType::EcP256, None).await.unwrap();
    let rsa = manager.generate_key("jwt-A", KeyType::Rsa2048, None).await.unwrap();
    manager.generate_key("gone", KeyType::EcP384, None).await.unwrap();
    manager.delete_key("gone").await.unwrap();
    drop(manager);

    let reopened = DiskKeyManager::open(path.clone()).await.unwrap();
    assert_eq!(reopened.list_keys().await.unwrap(), vec![rsa.clone(), ec.clone()]);
    let sig = reopened.sign("x509-CA-A", SignatureAlgorithm::EcdsaP256Sha256, b"m").await.unwrap();
    identity::crypto::verify_x509_signature(&ec.public_key, SignatureAlgorithm::EcdsaP256Sha256, b"m", &sig).unwrap();

    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let leftovers: Vec<_> =
        std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("keys.json")], "no temporary files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_file_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let manager = DiskKeyManager::open(path.clone()).await.unwrap();
    manager.generate_key("k", KeyType::EcP256, None).await.unwrap();
    drop(manager);
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = DiskKeyManager::open(path.clone()).await.err().unwrap();
        let text = err.to_string();
        assert!(text.contains(&format!("{mode:04o}")) && text.contains("chmod 600"), "{text}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(DiskKeyManager::open(path).await.is_ok(), "read-only for the owner is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_foreign_files_are_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let cases = [
        ("junk.json", "not json", "is corrupt"),
        ("version.json", r#"{"version": 9, "keys": []}"#, "format version 9"),
        ("b64.json", r#"{"version": 1, "keys": [{"id": "k", "key_type": "ec-p256", "pkcs8": "@@"}]}"#, "not base64"),
        ("key.json", r#"{"version": 1, "keys": [{"id": "k", "key_type": "ec-p256", "pkcs8": "AAAA"}]}"#, "key \"k\""),
        ("type.json", r#"{"version": 1, "keys": [{"id": "k", "key_type": "ed25519", "pkcs8": "AAAA"}]}"#, "is corrupt"),
    ];
    let err = DiskKeyManager::open(dir.path().to_path_buf()).await.err().unwrap().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    for (name, text, needle) in cases {
        let path = write(name, text);
        let err = DiskKeyManager::open(path.clone()).await.err().unwrap().to_string();
        assert!(err.contains(needle) && err.contains(&path.display().to_string()), "{name}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_generations_are_all_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let manager = Arc::new(DiskKeyManager::open(path.clone()).await.unwrap());
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let m = manager.clone();
            tokio::spawn(async move { m.generate_key(&format!("k{i:02}"), KeyType::EcP256, None).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let reopened = DiskKeyManager::open(path).await.unwrap();
    assert_eq!(reopened.list_keys().await.unwrap().len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let manager = DiskKeyManager::open(path.clone()).await.unwrap();
    let kept = manager.generate_key("kept", KeyType::EcP256, None).await.unwrap();
    // A directory where the temporary file must go makes every write fail, even for root.
    let blocker = dir.path().join(".keys.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let err = manager.generate_key("kept", KeyType::EcP256, None).await.unwrap_err();
    assert!(matches!(err, KeyManagerError::Storage { .. }), "{err}");
    assert_eq!(manager.get_public_key("kept").await.unwrap(), kept, "the old key is still the key");
    assert!(manager.generate_key("new", KeyType::EcP256, None).await.is_err());
    assert!(matches!(manager.get_public_key("new").await, Err(KeyManagerError::NotFound(_))));
    assert!(manager.delete_key("kept").await.is_err());
    assert_eq!(manager.get_public_key("kept").await.unwrap(), kept);

    std::fs::remove_dir(&blocker).unwrap();
    manager.generate_key("new", KeyType::EcP256, None).await.unwrap();
    let reopened = DiskKeyManager::open(path).await.unwrap();
    assert_eq!(reopened.get_public_key("kept").await.unwrap(), kept);
    assert!(reopened.get_public_key("new").await.is_ok());
}
