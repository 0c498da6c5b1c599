//! Against a real SoftHSM2 token initialised for this test process (SOFTHSM2_CONF points at
//! a token directory in a temp dir; the module reads it once, at C_Initialize, so every
//! test here shares the one token and uses its own label prefix).

use std::path::PathBuf;
use std::sync::OnceLock;

use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use identity::crypto::verify_x509_signature;
use testkit::softhsm::{self, MODULE};

use super::*;

const LABEL: &str = "testudo-unit";
const PIN: &str = "4321";
const PIN_LABEL: &str = "testudo-pin";
const RESET_LABEL: &str = "testudo-reset";

/// The token, initialised once per process.
fn token() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // The token outlives every test of the process (statics are never dropped), so it
        // lives in a directory named after the process, and those of finished processes
        // are removed here.
        let tmp = std::env::temp_dir();
        for stale in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = stale.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("testudo-softhsm-") {
                if !std::path::Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(stale.path());
                }
            }
        }
        let dir = tmp.join(format!("testudo-softhsm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Login state is per token and process, so the wrong-PIN test and the test that
        // logs out each get a token of their own.
        let mut conf = PathBuf::new();
        for label in [LABEL, PIN_LABEL, RESET_LABEL] {
            conf = softhsm::init_token(&dir, label, PIN);
        }
        std::env::set_var("SOFTHSM2_CONF", &conf);
        dir
    })
}

fn config(prefix: &str) -> Pkcs11Config {
    token();
    Pkcs11Config {
        module_path: MODULE.into(),
        token: TokenSelector::Label(LABEL.into()),
        user_pin: Zeroizing::new(PIN.into()),
        key_label_prefix: prefix.into(),
    }
}

#[tokio::test]
async fn keys_are_made_on_the_token_and_sign_every_algorithm() {
    let manager = Pkcs11KeyManager::open(config("sign/")).await.unwrap();
    let message = b"to be signed by the token";
    for (id, key_type, algorithms) in [
        ("ec256", KeyType::EcP256, &[SignatureAlgorithm::EcdsaP256Sha256][..]),
        ("ec384", KeyType::EcP384, &[SignatureAlgorithm::EcdsaP384Sha384][..]),
        ("rsa2048", KeyType::Rsa2048, &[SignatureAlgorithm::RsaPkcs1Sha256, SignatureAlgorithm::RsaPssSha256][..]),
    ] {
        let info = manager.generate_key(id, key_type, None).await.unwrap();
        assert_eq!((info.id.as_str(), info.key_type), (id, key_type));
        assert_eq!(manager.get_public_key(id).await.unwrap(), info, "the token's public half reads back");
        for &algorithm in algorithms {
            let signature = manager.sign(id, algorithm, message).await.unwrap();
            verify_x509_signature(&info.public_key, algorithm, message, &signature)
                .unwrap_or_else(|e| panic!("{id} {algorithm}: {e}"));
            assert!(verify_x509_signature(&info.public_key, algorithm, b"another message", &signature).is_err());
        }
        let wrong =
            if key_type.is_rsa() { SignatureAlgorithm::EcdsaP256Sha256 } else { SignatureAlgorithm::RsaPkcs1Sha256 };
        assert!(matches!(manager.sign(id, wrong, message).await, Err(KeyManagerError::AlgorithmMismatch { .. })));
    }
    let listed: Vec<String> = manager.list_keys().await.unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(listed, ["ec256", "ec384", "rsa2048"]);
}

#[tokio::test]
async fn generating_replaces_and_deleting_removes() {
    let manager = Pkcs11KeyManager::open(config("replace/")).await.unwrap();
    let first = manager.generate_key("slot-A", KeyType::EcP256, None).await.unwrap();
    let second = manager.generate_key("slot-A", KeyType::EcP256, None).await.unwrap();
    assert_ne!(first.public_key, second.public_key);
    assert_eq!(manager.list_keys().await.unwrap(), vec![second.clone()], "one key per id");
    // A second manager on the same token and prefix (another replica) sees and uses it.
    let other = Pkcs11KeyManager::open(config("replace/")).await.unwrap();
    let signature = other.sign("slot-A", SignatureAlgorithm::EcdsaP256Sha256, b"m").await.unwrap();
    verify_x509_signature(&second.public_key, SignatureAlgorithm::EcdsaP256Sha256, b"m", &signature).unwrap();
    manager.delete_key("slot-A").await.unwrap();
    manager.delete_key("slot-A").await.unwrap();
    assert!(matches!(other.get_public_key("slot-A").await, Err(KeyManagerError::NotFound(_))));
    assert!(matches!(
        other.sign("slot-A", SignatureAlgorithm::EcdsaP256Sha256, b"m").await,
        Err(KeyManagerError::NotFound(_))
    ));
    assert!(matches!(
        manager.generate_key("has space", KeyType::EcP256, None).await,
        Err(KeyManagerError::InvalidKeyId { .. })
    ));
}

#[tokio::test]
async fn the_private_key_cannot_leave_the_token() {
    let manager = Pkcs11KeyManager::open(config("export/")).await.unwrap();
    manager.generate_key("secret", KeyType::EcP256, None).await.unwrap();
    // Look at the object directly, as anyone with the PIN could.
    let pkcs11 = session_pool::loaded_module(MODULE.as_ref()).unwrap();
    let slot = pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label().trim_end() == LABEL)
        .unwrap();
    let session = pkcs11.open_ro_session(slot).unwrap();
    let _ = session.login(UserType::User, Some(&AuthPin::new(PIN.into())));
    let handle = session
        .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), Attribute::Label(b"export/secret".to_vec())])
        .unwrap()
        .into_iter()
        .next()
        .expect("the private key object");
    let flags = session
        .get_attributes(
            handle,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::AlwaysSensitive,
            ],
        )
        .unwrap();
    assert_eq!(
        flags,
        vec![
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::NeverExtractable(true),
            Attribute::AlwaysSensitive(true)
        ]
    );
    // CKA_VALUE (the private scalar) is not given out.
    let value = session.get_attributes(handle, &[AttributeType::Value]).unwrap_or_default();
    assert!(
        !value.iter().any(|a| matches!(a, Attribute::Value(v) if !v.is_empty())),
        "the private key was readable: {value:?}"
    );
}

#[tokio::test]
async fn a_wrong_pin_is_refused_and_a_missing_token_is_unavailable() {
    let mut wrong = config("pin/");
    wrong.token = TokenSelector::Label(PIN_LABEL.into());
    wrong.user_pin = Zeroizing::new("0000".into());
    match Pkcs11KeyManager::open(wrong).await {
        Err(KeyManagerError::Crypto { reason, .. }) => assert!(reason.contains("PIN"), "{reason}"),
        other => panic!("a wrong PIN must stop start-up: {:?}", other.err()),
    }
    let mut missing = config("missing/");
    missing.token = TokenSelector::Label("no-such-token".into());
    let manager = Pkcs11KeyManager::open(missing).await.expect("an unreachable token is not a start-up error");
    match manager.sign("k", SignatureAlgorithm::EcdsaP256Sha256, b"m").await {
        Err(KeyManagerError::Unavailable { backend, reason }) => {
            assert_eq!(backend, "pkcs11");
            assert!(reason.contains("no-such-token"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn lost_sessions_are_replaced_without_the_caller_noticing() {
    let mut reset = config("reconnect/");
    reset.token = TokenSelector::Label(RESET_LABEL.into());
    let manager = Pkcs11KeyManager::open(reset).await.unwrap();
    let info = manager.generate_key("k", KeyType::EcP256, None).await.unwrap();
    // Log the application out behind the manager's back (as a token reset does): its
    // pooled sessions no longer see private keys.
    let pkcs11 = session_pool::loaded_module(MODULE.as_ref()).unwrap();
    let slot = pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label().trim_end() == RESET_LABEL)
        .unwrap();
    pkcs11.open_ro_session(slot).unwrap().logout().unwrap();
    let signature = manager
        .sign("k", SignatureAlgorithm::EcdsaP256Sha256, b"after the reset")
        .await
        .expect("the manager reconnects and logs in again");
    verify_x509_signature(&info.public_key, SignatureAlgorithm::EcdsaP256Sha256, b"after the reset", &signature)
        .unwrap();
    // Deleting after another logout removes the private half too, not just the public one.
    pkcs11.open_ro_session(slot).unwrap().logout().unwrap();
    manager.delete_key("k").await.unwrap();
    assert!(matches!(
        manager.sign("k", SignatureAlgorithm::EcdsaP256Sha256, b"m").await,
        Err(KeyManagerError::NotFound(_))
    ));
}

/// Keys made for a cluster carry it in CKA_ID, so a sweep lists them (and only them) on a
/// token other clusters share, and deletes both halves.
#[tokio::test]
async fn keys_made_for_a_cluster_are_listed_by_owner_and_deleted() {
    let manager = Pkcs11KeyManager::open(config("owned/")).await.unwrap();
    let ours = KeyOwner { cluster: "c1".into(), slot: "x509/A".into() };
    let theirs = KeyOwner { cluster: "c2".into(), slot: "jwt/A".into() };
    manager.generate_key("x509-CA-A-1", KeyType::EcP256, Some(&ours)).await.unwrap();
    manager.generate_key("JWT-Signer-A-2", KeyType::EcP256, Some(&theirs)).await.unwrap();
    manager.generate_key("plain", KeyType::EcP256, None).await.unwrap();
    let owned = manager.list_owned("c1").await.unwrap();
    assert_eq!(owned, [OwnedKey { id: "x509-CA-A-1".into(), object: "owned/x509-CA-A-1".into(), current: true }]);
    assert!(manager.list_owned("c").await.unwrap().is_empty(), "a cluster id is matched whole");
    manager.delete_owned(&owned[0]).await.unwrap();
    assert!(manager.list_owned("c1").await.unwrap().is_empty());
    assert!(matches!(manager.get_public_key("x509-CA-A-1").await, Err(KeyManagerError::NotFound(_))));
    assert!(manager.get_public_key("JWT-Signer-A-2").await.is_ok(), "another cluster's key stays");
    let foreign = OwnedKey { id: "x".into(), object: "elsewhere/x".into(), current: true };
    assert!(manager.delete_owned(&foreign).await.is_err(), "nothing outside the label prefix is deleted");
}
