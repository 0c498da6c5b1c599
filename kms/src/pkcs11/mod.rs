//! The `pkcs11` key manager: keys generated on a PKCS#11 token (an HSM, or SoftHSM in
//! tests) and used there; their private halves never leave it. Every server replica
//! configured with the same token reaches the same keys by label, which is how a cluster
//! shares one CA without key material in its replicated state.
//!
//! Calls block on the module, so each runs on a blocking thread.

mod objects;
mod session_pool;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use identity::crypto::{KeyType, SignatureAlgorithm};
use zeroize::Zeroizing;

use crate::{validate_key_id, KeyInfo, KeyManager, KeyManagerError, KeyOwner, OwnedKey};
use session_pool::SessionPool;

/// The config name.
pub const NAME: &str = "pkcs11";

/// Which token to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    Label(String),
    Slot(u64),
}

/// Settings of the `pkcs11` key manager. The PIN is read by the config layer from a file
/// or an environment variable, never from the config text.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    pub module_path: PathBuf,
    pub token: TokenSelector,
    pub user_pin: Zeroizing<String>,
    /// Put before every key id to make an object label, so several clusters (or trust
    /// domains) can share a token.
    pub key_label_prefix: String,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module_path", &self.module_path)
            .field("token", &self.token)
            .field("user_pin", &"(hidden)")
            .field("key_label_prefix", &self.key_label_prefix)
            .finish()
    }
}

/// Keys on a PKCS#11 token.
pub struct Pkcs11KeyManager {
    pool: Arc<SessionPool>,
    prefix: String,
}

impl Pkcs11KeyManager {
    /// Connects to the token. A token that cannot be reached now is not an error (calls
    /// answer Unavailable until it can be); a PIN it refuses is.
    pub async fn open(config: Pkcs11Config) -> Result<Self, KeyManagerError> {
        let prefix = config.key_label_prefix.clone();
        let manager = Self { pool: Arc::new(SessionPool::new(config)), prefix };
        match manager.blocking("connecting", |_| Ok(())).await {
            Ok(()) => {}
            Err(KeyManagerError::Unavailable { reason, .. }) => {
                tracing::warn!(%reason, "the PKCS#11 token is not reachable yet; signing waits for it")
            }
            Err(e) => return Err(e),
        }
        Ok(manager)
    }

    fn label(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        describe: &'static str,
        operation: impl Fn(&cryptoki::session::Session) -> Result<T, objects::Failure> + Send + 'static,
    ) -> Result<T, KeyManagerError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || pool.run(describe, operation))
            .await
            .map_err(|e| KeyManagerError::Crypto { backend: NAME, reason: format!("{describe}: {e}") })?
    }
}

#[async_trait]
impl KeyManager for Pkcs11KeyManager {
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
        let (label, id, owner) = (self.label(id), id.to_owned(), owner.cloned());
        self.blocking("generating a key", move |session| {
            objects::generate(session, &label, &id, key_type, owner.as_ref())
        })
        .await
    }

    async fn get_public_key(&self, id: &str) -> Result<KeyInfo, KeyManagerError> {
        validate_key_id(id)?;
        let (label, id) = (self.label(id), id.to_owned());
        self.blocking("reading a public key", move |session| objects::public_key(session, &label, &id)).await
    }

    async fn list_keys(&self) -> Result<Vec<KeyInfo>, KeyManagerError> {
        let prefix = self.prefix.clone();
        self.blocking("listing keys", move |session| objects::list(session, &prefix)).await
    }

    async fn sign(&self, id: &str, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        validate_key_id(id)?;
        let (label, id, message) = (self.label(id), id.to_owned(), message.to_vec());
        let started = std::time::Instant::now();
        let signed =
            self.blocking("signing", move |session| objects::sign(session, &label, &id, algorithm, &message)).await;
        metrics::histogram!("testudo_key_manager_sign_seconds", "backend" => NAME)
            .record(started.elapsed().as_secs_f64());
        signed
    }

    async fn delete_key(&self, id: &str) -> Result<(), KeyManagerError> {
        validate_key_id(id)?;
        let label = self.label(id);
        self.blocking("deleting a key", move |session| objects::destroy(session, &label)).await
    }

    async fn list_owned(&self, cluster: &str) -> Result<Vec<OwnedKey>, KeyManagerError> {
        let (prefix, cluster) = (self.prefix.clone(), cluster.to_owned());
        self.blocking("listing keys", move |session| objects::list_owned(session, &prefix, &cluster)).await
    }

    async fn delete_owned(&self, key: &OwnedKey) -> Result<(), KeyManagerError> {
        // A label outside this manager's prefix is not ours to delete.
        if !key.object.starts_with(&self.prefix) {
            return Err(KeyManagerError::InvalidKeyId { id: key.object.clone(), reason: "not under the label prefix" });
        }
        let label = key.object.clone();
        self.blocking("deleting a key", move |session| objects::destroy(session, &label)).await
    }
}

#[cfg(test)]
mod tests;
