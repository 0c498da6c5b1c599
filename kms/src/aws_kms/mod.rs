//! The `aws_kms` key manager: keys created in AWS KMS (KeyUsage SIGN_VERIFY) and used there;
//! their private halves never leave it. A key id maps to the alias
//! `<alias_prefix><key id>` (default prefix `alias/testudo/<trust domain>/`, characters KMS
//! does not allow in alias names turned into `_`), so every replica with the same settings
//! finds the same key; each key is also tagged with the exact trust domain and key id, so
//! keys can be told apart and cleaned up from the tags alone. Regenerating an id points its
//! alias at a new key and schedules the old one for deletion; deleting an id removes the
//! alias and schedules its key for deletion.
//!
//! Signing sends the message (MessageType RAW) when it is at most 4096 bytes, which AWS
//! accepts for every algorithm, and a digest computed here (MessageType DIGEST) otherwise.
//! Transient errors are retried by the SDK (standard mode, with backoff); every attempt is
//! counted in `testudo_key_manager_attempts_total{backend="aws_kms", outcome}`, throttled
//! ones as `outcome="throttled"`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType, MessageType, SigningAlgorithmSpec, Tag};
use identity::crypto::{KeyType, PublicKey, SignatureAlgorithm};

use crate::{validate_key_id, KeyInfo, KeyManager, KeyManagerError, KeyOwner, OwnedKey};

/// The config name.
pub const NAME: &str = "aws_kms";
/// Largest message KMS signs as RAW.
const MAX_RAW_MESSAGE: usize = 4096;
/// Days before a scheduled key is deleted (KMS allows 7 to 30).
const DELETION_WINDOW_DAYS: i32 = 7;
/// Tags every key carries: the trust domain and key id, and when made for a cluster
/// ([`KeyOwner`]) the cluster and slot.
const TAG_TRUST_DOMAIN: &str = "testudo-trust-domain";
const TAG_KEY_ID: &str = "testudo-key-id";
const TAG_CLUSTER: &str = "testudo-cluster";
const TAG_SLOT: &str = "testudo-slot";

/// Settings of the `aws_kms` key manager. Credentials come the AWS way (environment,
/// shared profile, instance or task role, web identity), never from this config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsKmsConfig {
    /// Required unless the environment or profile names one.
    pub region: Option<String>,
    /// A private endpoint (or a local KMS in tests) instead of the public one.
    pub endpoint: Option<String>,
    /// Added to every key this manager creates.
    pub key_tags: BTreeMap<String, String>,
    /// `alias/…/`, ending in `/`.
    pub alias_prefix: String,
    /// Recorded in a tag on every key.
    pub trust_domain: String,
}

/// Keys in AWS KMS.
pub struct AwsKmsKeyManager {
    client: aws_sdk_kms::Client,
    config: AwsKmsConfig,
}

/// KMS alias names allow letters, digits, `/`, `_` and `-`.
pub fn alias_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '-' { c } else { '_' }).collect()
}

fn unavailable(reason: impl std::fmt::Display) -> KeyManagerError {
    KeyManagerError::Unavailable { backend: NAME, reason: reason.to_string() }
}

/// Maps an SDK error: the service's refusal of a missing key is NotFound; network trouble,
/// timeouts, throttling that outlived the retries and server faults are Unavailable.
fn sdk_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    id: &str,
    what: &str,
    error: SdkError<E>,
) -> KeyManagerError {
    match &error {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let code = err.code().unwrap_or("unknown");
            let message = err.message().unwrap_or_default();
            match code {
                "NotFoundException" => KeyManagerError::NotFound(id.to_owned()),
                "ThrottlingException"
                | "KMSInternalException"
                | "DependencyTimeoutException"
                | "KeyUnavailableException"
                | "LimitExceededException" => unavailable(format!("{what}: {code}: {message}")),
                _ if service.raw().status().is_server_error() => unavailable(format!("{what}: {code}: {message}")),
                _ => KeyManagerError::Crypto { backend: NAME, reason: format!("{what}: {code}: {message}") },
            }
        }
        _ => unavailable(format!("{what}: {}", aws_sdk_kms::error::DisplayErrorContext(&error))),
    }
}

fn key_spec(key_type: KeyType) -> KeySpec {
    match key_type {
        KeyType::EcP256 => KeySpec::EccNistP256,
        KeyType::EcP384 => KeySpec::EccNistP384,
        KeyType::Rsa2048 => KeySpec::Rsa2048,
        KeyType::Rsa4096 => KeySpec::Rsa4096,
    }
}

fn key_type_of(spec: &KeySpec) -> Option<KeyType> {
    match spec {
        KeySpec::EccNistP256 => Some(KeyType::EcP256),
        KeySpec::EccNistP384 => Some(KeyType::EcP384),
        KeySpec::Rsa2048 => Some(KeyType::Rsa2048),
        KeySpec::Rsa4096 => Some(KeyType::Rsa4096),
        _ => None,
    }
}

fn signing_algorithm(algorithm: SignatureAlgorithm) -> SigningAlgorithmSpec {
    match algorithm {
        SignatureAlgorithm::EcdsaP256Sha256 => SigningAlgorithmSpec::EcdsaSha256,
        SignatureAlgorithm::EcdsaP384Sha384 => SigningAlgorithmSpec::EcdsaSha384,
        SignatureAlgorithm::RsaPkcs1Sha256 => SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
        SignatureAlgorithm::RsaPssSha256 => SigningAlgorithmSpec::RsassaPssSha256,
    }
}

/// Counts every HTTP attempt by outcome, so throttling shows in metrics even when a retry
/// then succeeds.
#[derive(Debug)]
struct AttemptMetrics;

impl aws_sdk_kms::config::Intercept for AttemptMetrics {
    fn name(&self) -> &'static str {
        "testudo-attempt-metrics"
    }

    fn read_after_attempt(
        &self,
        context: &aws_sdk_kms::config::interceptors::FinalizerInterceptorContextRef<'_>,
        _runtime_components: &aws_sdk_kms::config::RuntimeComponents,
        _cfg: &mut aws_sdk_kms::config::ConfigBag,
    ) -> Result<(), aws_sdk_kms::error::BoxError> {
        let outcome = match context.response() {
            None => "no_response",
            Some(response) => {
                let status = response.status().as_u16();
                let error_type = response.headers().get("x-amzn-errortype").unwrap_or_default();
                if status == 429 || error_type.contains("Throttling") {
                    "throttled"
                } else if status < 300 {
                    "ok"
                } else if status >= 500 {
                    "server_error"
                } else {
                    "refused"
                }
            }
        };
        metrics::counter!("testudo_key_manager_attempts_total", "backend" => NAME, "outcome" => outcome).increment(1);
        Ok(())
    }
}

impl AwsKmsKeyManager {
    /// A manager whose credentials and region come from the environment, profile or role.
    pub async fn open(config: AwsKmsConfig) -> Result<Self, KeyManagerError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        Self::with_sdk_config(&loader.load().await, config)
    }

    /// A manager over an SDK config the caller built (tests give static credentials).
    pub fn with_sdk_config(sdk: &aws_config::SdkConfig, config: AwsKmsConfig) -> Result<Self, KeyManagerError> {
        let mut builder = aws_sdk_kms::config::Builder::from(sdk)
            .retry_config(aws_sdk_kms::config::retry::RetryConfig::standard().with_max_attempts(4))
            .timeout_config(
                aws_sdk_kms::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(20))
                    .build(),
            )
            .interceptor(AttemptMetrics);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        let built = builder.build();
        if built.region().is_none() {
            return Err(KeyManagerError::Crypto {
                backend: NAME,
                reason: "no region: set region in the config, or AWS_REGION".into(),
            });
        }
        Ok(Self { client: aws_sdk_kms::Client::from_conf(built), config })
    }

    fn alias(&self, id: &str) -> String {
        format!("{}{}", self.config.alias_prefix, alias_safe(id))
    }

    /// The KMS key an alias points at, if the alias exists.
    async fn target_of(&self, alias: &str, id: &str) -> Result<Option<String>, KeyManagerError> {
        match self.client.describe_key().key_id(alias).send().await {
            Ok(out) => Ok(out.key_metadata().map(|m| m.key_id().to_owned())),
            Err(e) => match sdk_error(id, "describing a key", e) {
                KeyManagerError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn schedule_deletion(&self, key_id: &str, id: &str) {
        match self
            .client
            .schedule_key_deletion()
            .key_id(key_id)
            .pending_window_in_days(DELETION_WINDOW_DAYS)
            .send()
            .await
        {
            Ok(_) => tracing::info!(kms_key = key_id, id, "KMS key scheduled for deletion"),
            Err(e) => {
                tracing::warn!(kms_key = key_id, id, error = %sdk_error(id, "scheduling deletion", e), "could not schedule a KMS key for deletion")
            }
        }
    }

    /// Every alias under this manager's prefix, with the key it names.
    async fn alias_targets(&self) -> Result<BTreeMap<String, String>, KeyManagerError> {
        let mut targets = BTreeMap::new();
        let mut marker = None;
        loop {
            let page = self
                .client
                .list_aliases()
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| sdk_error("", "listing aliases", e))?;
            for alias in page.aliases() {
                if let (Some(name), Some(target)) = (alias.alias_name(), alias.target_key_id()) {
                    if name.starts_with(&self.config.alias_prefix) {
                        targets.insert(name.to_owned(), target.to_owned());
                    }
                }
            }
            marker = page.next_marker().map(str::to_owned);
            if !page.truncated() || marker.is_none() {
                break;
            }
        }
        Ok(targets)
    }

    async fn info(&self, key: &str, id: &str) -> Result<KeyInfo, KeyManagerError> {
        let out = self
            .client
            .get_public_key()
            .key_id(key)
            .send()
            .await
            .map_err(|e| sdk_error(id, "reading a public key", e))?;
        let der = out.public_key().ok_or_else(|| KeyManagerError::Crypto {
            backend: NAME,
            reason: format!("key {id}: KMS returned no public key"),
        })?;
        let public_key = PublicKey::from_spki_der(der.as_ref())
            .map_err(|e| KeyManagerError::Crypto { backend: NAME, reason: format!("key {id}: {e}") })?;
        // The public key says what the key is (some KMS implementations leave KeySpec out).
        let key_type = out.key_spec().and_then(key_type_of).or_else(|| public_key.key_type()).ok_or_else(|| {
            KeyManagerError::Crypto {
                backend: NAME,
                reason: format!("key {id}: a key type this key manager does not use"),
            }
        })?;
        Ok(KeyInfo { id: id.to_owned(), key_type, public_key })
    }
}

#[async_trait]
impl KeyManager for AwsKmsKeyManager {
    fn backend(&self) -> &'static str {
        NAME
    }

    async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
        owner: Option<&KeyOwner>,
    ) -> Result<KeyInfo, KeyManagerError> {
        validate_key_id(id)?;
        let alias = self.alias(id);
        let mut tags: Vec<Tag> = Vec::new();
        let mut fixed = vec![(TAG_TRUST_DOMAIN, self.config.trust_domain.as_str()), (TAG_KEY_ID, id)];
        if let Some(owner) = owner {
            fixed.extend([(TAG_CLUSTER, owner.cluster.as_str()), (TAG_SLOT, owner.slot.as_str())]);
        }
        for (k, v) in self.config.key_tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(fixed) {
            tags.push(
                Tag::builder()
                    .tag_key(k)
                    .tag_value(v)
                    .build()
                    .map_err(|e| KeyManagerError::Crypto { backend: NAME, reason: e.to_string() })?,
            );
        }
        let created = self
            .client
            .create_key()
            .key_spec(key_spec(key_type))
            .key_usage(KeyUsageType::SignVerify)
            .description(format!("Testudo {} key {id}", self.config.trust_domain))
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| sdk_error(id, "creating a key", e))?;
        let key_id = created
            .key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| unavailable("KMS created a key but returned no key id"))?;
        let previous = self.target_of(&alias, id).await?;
        // The alias moves by DeleteAlias and CreateAlias rather than UpdateAlias, which the
        // local KMS the tests use (moto) gets wrong. Between the two calls the id names no
        // key; only an id being generated again is affected, and nothing signs with it.
        if previous.is_some() {
            self.client
                .delete_alias()
                .alias_name(&alias)
                .send()
                .await
                .map_err(|e| sdk_error(id, "moving an alias", e))?;
        }
        let pointed = self
            .client
            .create_alias()
            .alias_name(&alias)
            .target_key_id(&key_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| sdk_error(id, "creating an alias", e));
        if let Err(e) = pointed {
            // Nothing names the new key: do not leave it behind.
            self.schedule_deletion(&key_id, id).await;
            return Err(e);
        }
        if let Some(old) = previous.filter(|old| *old != key_id) {
            self.schedule_deletion(&old, id).await;
        }
        tracing::info!(id, kms_key = %key_id, alias, "KMS key created");
        self.info(&key_id, id).await
    }

    async fn get_public_key(&self, id: &str) -> Result<KeyInfo, KeyManagerError> {
        validate_key_id(id)?;
        self.info(&self.alias(id), id).await
    }

    async fn list_keys(&self) -> Result<Vec<KeyInfo>, KeyManagerError> {
        let mut keys = Vec::new();
        for (name, target) in self.alias_targets().await? {
            if let Some(id) = name.strip_prefix(&self.config.alias_prefix) {
                keys.push(self.info(&target, id).await?);
            }
        }
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }

    async fn sign(&self, id: &str, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        use aws_lc_rs::digest;
        validate_key_id(id)?;
        let request = self.client.sign().key_id(self.alias(id)).signing_algorithm(signing_algorithm(algorithm));
        let request = if message.len() <= MAX_RAW_MESSAGE {
            request.message(Blob::new(message)).message_type(MessageType::Raw)
        } else {
            let hash = if algorithm == SignatureAlgorithm::EcdsaP384Sha384 { &digest::SHA384 } else { &digest::SHA256 };
            request.message(Blob::new(digest::digest(hash, message).as_ref())).message_type(MessageType::Digest)
        };
        let started = std::time::Instant::now();
        let signed = request.send().await;
        metrics::histogram!("testudo_key_manager_sign_seconds", "backend" => NAME)
            .record(started.elapsed().as_secs_f64());
        let signed = signed.map_err(|e| sdk_error(id, "signing", e))?;
        signed.signature().map(|s| s.as_ref().to_vec()).ok_or_else(|| unavailable("KMS returned no signature"))
    }

    async fn delete_key(&self, id: &str) -> Result<(), KeyManagerError> {
        validate_key_id(id)?;
        let alias = self.alias(id);
        let Some(key_id) = self.target_of(&alias, id).await? else { return Ok(()) };
        self.client
            .delete_alias()
            .alias_name(&alias)
            .send()
            .await
            .map_err(|e| sdk_error(id, "deleting an alias", e))?;
        self.schedule_deletion(&key_id, id).await;
        Ok(())
    }

    /// Walks every key of the account and region: KMS lists keys by no tag. Keys pending
    /// deletion and keys whose description is not ours are passed over before their tags
    /// are read, so a sweep costs two calls per key of the account and one more per ours.
    async fn list_owned(&self, cluster: &str) -> Result<Vec<OwnedKey>, KeyManagerError> {
        let current = self.alias_targets().await?;
        let description = format!("Testudo {} key ", self.config.trust_domain);
        let mut owned = Vec::new();
        let mut marker = None;
        loop {
            let page = self
                .client
                .list_keys()
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| sdk_error("", "listing keys", e))?;
            for key in page.keys() {
                let Some(key_id) = key.key_id() else { continue };
                let described = match self.client.describe_key().key_id(key_id).send().await {
                    Ok(out) => out,
                    Err(e) => match sdk_error(key_id, "describing a key", e) {
                        // Deleted since the listing.
                        KeyManagerError::NotFound(_) => continue,
                        other => return Err(other),
                    },
                };
                let Some(metadata) = described.key_metadata() else { continue };
                let live = matches!(metadata.key_state(), Some(KeyState::Enabled | KeyState::Disabled));
                if !live || !metadata.description().is_some_and(|d| d.starts_with(&description)) {
                    continue;
                }
                let tags = self
                    .client
                    .list_resource_tags()
                    .key_id(key_id)
                    .send()
                    .await
                    .map_err(|e| sdk_error(key_id, "reading a key's tags", e))?;
                let tag = |name: &str| tags.tags().iter().find(|t| t.tag_key() == name).map(|t| t.tag_value());
                if tag(TAG_CLUSTER) != Some(cluster) || tag(TAG_TRUST_DOMAIN) != Some(&self.config.trust_domain) {
                    continue;
                }
                let Some(id) = tag(TAG_KEY_ID) else { continue };
                let is_current = current.get(&self.alias(id)).is_some_and(|target| target == key_id);
                owned.push(OwnedKey { id: id.to_owned(), object: key_id.to_owned(), current: is_current });
            }
            marker = page.next_marker().map(str::to_owned);
            if !page.truncated() || marker.is_none() {
                break;
            }
        }
        owned.sort_by(|a, b| (&a.id, &a.object).cmp(&(&b.id, &b.object)));
        Ok(owned)
    }

    async fn delete_owned(&self, key: &OwnedKey) -> Result<(), KeyManagerError> {
        if key.current {
            // The alias goes first: an alias naming a key pending deletion signs nothing.
            match self.client.delete_alias().alias_name(self.alias(&key.id)).send().await {
                Ok(_) => {}
                Err(e) => match sdk_error(&key.id, "deleting an alias", e) {
                    KeyManagerError::NotFound(_) => {}
                    other => return Err(other),
                },
            }
        }
        self.client
            .schedule_key_deletion()
            .key_id(&key.object)
            .pending_window_in_days(DELETION_WINDOW_DAYS)
            .send()
            .await
            .map_err(|e| sdk_error(&key.id, "scheduling deletion", e))?;
        tracing::info!(kms_key = %key.object, id = %key.id, "KMS key scheduled for deletion");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
