//! Software keys in process memory, shared by the `memory` and `disk` backends.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use identity::crypto::{KeyType, LocalKey, SignatureAlgorithm, Signer};

use crate::{validate_key_id, KeyInfo, KeyManagerError};

/// Keys by id. Generation (slow for RSA) runs on a blocking thread.
pub(crate) struct Keyring {
    backend: &'static str,
    keys: RwLock<BTreeMap<String, Arc<LocalKey>>>,
}

impl Keyring {
    pub(crate) fn new(backend: &'static str, keys: BTreeMap<String, Arc<LocalKey>>) -> Self {
        Self { backend, keys: RwLock::new(keys) }
    }

    fn poisoned(&self) -> KeyManagerError {
        KeyManagerError::Storage { backend: self.backend, reason: "key table lock poisoned".into() }
    }

    pub(crate) async fn generate(
        backend: &'static str,
        id: &str,
        key_type: KeyType,
    ) -> Result<Arc<LocalKey>, KeyManagerError> {
        validate_key_id(id)?;
        let key = tokio::task::spawn_blocking(move || LocalKey::generate(key_type))
            .await
            .map_err(|e| KeyManagerError::Crypto { backend, reason: e.to_string() })?
            .map_err(|e| KeyManagerError::Crypto { backend, reason: e.to_string() })?;
        Ok(Arc::new(key))
    }

    /// Puts `key` under `id` and returns the key it replaced.
    pub(crate) fn insert(&self, id: &str, key: Arc<LocalKey>) -> Result<Option<Arc<LocalKey>>, KeyManagerError> {
        Ok(self.keys.write().map_err(|_| self.poisoned())?.insert(id.to_owned(), key))
    }

    /// Restores the state before an `insert` whose persistence failed.
    pub(crate) fn restore(&self, id: &str, previous: Option<Arc<LocalKey>>) -> Result<(), KeyManagerError> {
        let mut keys = self.keys.write().map_err(|_| self.poisoned())?;
        match previous {
            Some(key) => keys.insert(id.to_owned(), key),
            None => keys.remove(id),
        };
        Ok(())
    }

    pub(crate) fn remove(&self, id: &str) -> Result<Option<Arc<LocalKey>>, KeyManagerError> {
        Ok(self.keys.write().map_err(|_| self.poisoned())?.remove(id))
    }

    pub(crate) fn get(&self, id: &str) -> Result<Arc<LocalKey>, KeyManagerError> {
        self.keys
            .read()
            .map_err(|_| self.poisoned())?
            .get(id)
            .cloned()
            .ok_or_else(|| KeyManagerError::NotFound(id.to_owned()))
    }

    pub(crate) fn snapshot(&self) -> Result<BTreeMap<String, Arc<LocalKey>>, KeyManagerError> {
        Ok(self.keys.read().map_err(|_| self.poisoned())?.clone())
    }

    pub(crate) fn info(id: &str, key: &LocalKey) -> KeyInfo {
        KeyInfo { id: id.to_owned(), key_type: key.key_type(), public_key: key.public_key().clone() }
    }

    pub(crate) fn list(&self) -> Result<Vec<KeyInfo>, KeyManagerError> {
        Ok(self.snapshot()?.iter().map(|(id, key)| Self::info(id, key)).collect())
    }

    pub(crate) fn sign(
        &self,
        id: &str,
        algorithm: SignatureAlgorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, KeyManagerError> {
        let key = self.get(id)?;
        if !algorithm.fits(key.key_type()) {
            return Err(KeyManagerError::AlgorithmMismatch { id: id.to_owned(), key_type: key.key_type(), algorithm });
        }
        key.sign(algorithm, message)
            .map_err(|e| KeyManagerError::Crypto { backend: self.backend, reason: e.to_string() })
    }
}
