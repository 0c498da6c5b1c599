//! Against moto's KMS server on loopback (started per test): create, read back, sign with
//! every algorithm (verified here), replace, list, delete; errors when KMS is unreachable.

use identity::crypto::verify_x509_signature;
use testkit::moto::{self, MotoServer};

use super::*;

fn sdk_config() -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(moto::REGION))
        .credentials_provider(aws_sdk_kms::config::SharedCredentialsProvider::new(
            aws_sdk_kms::config::Credentials::new(moto::ACCESS_KEY_ID, moto::SECRET_ACCESS_KEY, None, None, "test"),
        ))
        .build()
}

fn manager_at(endpoint: String) -> AwsKmsKeyManager {
    let config = AwsKmsConfig {
        region: None,
        endpoint: Some(endpoint),
        key_tags: BTreeMap::from([("team".to_owned(), "identity".to_owned())]),
        alias_prefix: format!("alias/testudo/{}/", alias_safe("example.org")),
        trust_domain: "example.org".into(),
    };
    AwsKmsKeyManager::with_sdk_config(&sdk_config(), config).unwrap()
}

#[tokio::test]
async fn keys_live_in_kms_and_sign_every_algorithm() {
    let moto = MotoServer::start();
    let manager = manager_at(moto.endpoint());
    let message = b"to be signed by KMS";
    for (id, key_type, algorithms) in [
        ("x509-CA-A-1", KeyType::EcP256, &[SignatureAlgorithm::EcdsaP256Sha256][..]),
        ("x509-CA-B-2", KeyType::EcP384, &[SignatureAlgorithm::EcdsaP384Sha384][..]),
        // RSA-PSS is left out: moto signs it with the longest salt, while JWS PS256 (RFC 7518,
        // 3.5) and our verifier want a salt as long as the hash.
        ("JWT-Signer-A-1", KeyType::Rsa2048, &[SignatureAlgorithm::RsaPkcs1Sha256][..]),
    ] {
        let info = manager.generate_key(id, key_type, None).await.unwrap();
        assert_eq!((info.id.as_str(), info.key_type), (id, key_type));
        assert_eq!(manager.get_public_key(id).await.unwrap(), info);
        for &algorithm in algorithms {
            let signature = manager.sign(id, algorithm, message).await.unwrap();
            verify_x509_signature(&info.public_key, algorithm, message, &signature)
                .unwrap_or_else(|e| panic!("{id} {algorithm}: {e}"));
        }
    }
    let listed: Vec<String> = manager.list_keys().await.unwrap().into_iter().map(|k| k.id).collect();
    assert_eq!(listed, ["JWT-Signer-A-1", "x509-CA-A-1", "x509-CA-B-2"]);

    // The keys carry the trust domain, the key id and the configured tags.
    let alias = manager.alias("x509-CA-A-1");
    assert_eq!(alias, "alias/testudo/example_org/x509-CA-A-1");
    let key_id = manager.target_of(&alias, "x509-CA-A-1").await.unwrap().unwrap();
    let tags = manager.client.list_resource_tags().key_id(&key_id).send().await.unwrap();
    let tags: BTreeMap<&str, &str> = tags.tags().iter().map(|t| (t.tag_key(), t.tag_value())).collect();
    assert_eq!(
        tags,
        BTreeMap::from([
            ("team", "identity"),
            ("testudo-key-id", "x509-CA-A-1"),
            ("testudo-trust-domain", "example.org")
        ])
    );
}

#[tokio::test]
async fn replacing_and_deleting_schedule_the_old_key_for_deletion() {
    let moto = MotoServer::start();
    let manager = manager_at(moto.endpoint());
    let first = manager.generate_key("slot", KeyType::EcP256, None).await.unwrap();
    let alias = manager.alias("slot");
    let first_key = manager.target_of(&alias, "slot").await.unwrap().unwrap();
    let second = manager.generate_key("slot", KeyType::EcP256, None).await.unwrap();
    assert_ne!(first.public_key, second.public_key);
    let second_key = manager.target_of(&alias, "slot").await.unwrap().unwrap();
    assert_ne!(first_key, second_key, "the alias points at the new key");
    let state = |key: String| {
        let client = manager.client.clone();
        async move {
            client.describe_key().key_id(key).send().await.unwrap().key_metadata().unwrap().key_state().unwrap().clone()
        }
    };
    assert_eq!(state(first_key.clone()).await, aws_sdk_kms::types::KeyState::PendingDeletion);
    assert_eq!(state(second_key.clone()).await, aws_sdk_kms::types::KeyState::Enabled);

    manager.delete_key("slot").await.unwrap();
    manager.delete_key("slot").await.unwrap();
    assert_eq!(state(second_key).await, aws_sdk_kms::types::KeyState::PendingDeletion);
    assert!(matches!(manager.get_public_key("slot").await, Err(KeyManagerError::NotFound(_))));
    assert!(matches!(
        manager.sign("slot", SignatureAlgorithm::EcdsaP256Sha256, b"m").await,
        Err(KeyManagerError::NotFound(_))
    ));
}

#[tokio::test]
async fn large_messages_are_signed_as_digests_and_an_unreachable_kms_is_unavailable() {
    let moto = MotoServer::start();
    let manager = manager_at(moto.endpoint());
    manager.generate_key("big", KeyType::EcP256, None).await.unwrap();
    // Moto hashes DIGEST messages again (see NOTES), so only the request path is checked
    // here: a message over 4096 bytes is accepted and answered.
    assert!(manager.sign("big", SignatureAlgorithm::EcdsaP256Sha256, &vec![7u8; 5000]).await.is_ok());

    let port = moto.port;
    drop(moto);
    let gone = manager_at(format!("http://127.0.0.1:{port}"));
    match gone.sign("big", SignatureAlgorithm::EcdsaP256Sha256, b"m").await {
        Err(KeyManagerError::Unavailable { backend, .. }) => assert_eq!(backend, "aws_kms"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// A sweep finds the keys made for one cluster by their tags, whatever names them: the key
/// an alias names, and a key made for an id but never named (its maker stopped between
/// CreateKey and CreateAlias). Another cluster's keys and untagged keys are not listed.
#[tokio::test]
async fn keys_made_for_a_cluster_are_found_by_their_tags_even_without_an_alias() {
    let moto = MotoServer::start();
    let manager = manager_at(moto.endpoint());
    let ours = KeyOwner { cluster: "c1".into(), slot: "x509/A".into() };
    let theirs = KeyOwner { cluster: "c2".into(), slot: "x509/A".into() };
    manager.generate_key("x509-CA-A-1", KeyType::EcP256, Some(&ours)).await.unwrap();
    manager.generate_key("x509-CA-A-2", KeyType::EcP256, Some(&theirs)).await.unwrap();
    manager.generate_key("untagged", KeyType::EcP256, None).await.unwrap();
    // A key left as a crash after CreateKey leaves it: tagged, no alias.
    let tag = |k: &str, v: &str| Tag::builder().tag_key(k).tag_value(v).build().unwrap();
    let leftover = manager
        .client
        .create_key()
        .key_spec(KeySpec::EccNistP256)
        .key_usage(KeyUsageType::SignVerify)
        .description("Testudo example.org key x509-CA-B-3")
        .tags(tag(TAG_TRUST_DOMAIN, "example.org"))
        .tags(tag(TAG_KEY_ID, "x509-CA-B-3"))
        .tags(tag(TAG_CLUSTER, "c1"))
        .tags(tag(TAG_SLOT, "x509/B"))
        .send()
        .await
        .unwrap();
    let leftover = leftover.key_metadata().unwrap().key_id().to_owned();

    let owned = manager.list_owned("c1").await.unwrap();
    let summary: Vec<(&str, bool)> = owned.iter().map(|k| (k.id.as_str(), k.current)).collect();
    assert_eq!(summary, [("x509-CA-A-1", true), ("x509-CA-B-3", false)]);
    assert_eq!(owned[1].object, leftover);

    // Deleting the leftover schedules it; deleting a current key removes its alias too.
    for key in &owned {
        manager.delete_owned(key).await.unwrap();
    }
    assert!(manager.list_owned("c1").await.unwrap().is_empty(), "keys pending deletion are not listed");
    assert!(matches!(manager.get_public_key("x509-CA-A-1").await, Err(KeyManagerError::NotFound(_))));
    assert_eq!(manager.list_owned("c2").await.unwrap().len(), 1, "another cluster's key stays");
    assert!(manager.get_public_key("untagged").await.is_ok());
}
