//! The `memory` key manager: keys live and die with the process. For tests, development
//! and agents whose SVIDs are re-minted on restart.

use async_trait::async_trait;
use identity::crypto::{KeyType, SignatureAlgorithm};

use crate::keyring::Keyring;
use crate::{KeyInfo, KeyManager, KeyManagerError, KeyOwner};

/// The config name.
pub const NAME: &str = "memory";

/// Keys in process memory only.
pub struct MemoryKeyManager {
    keys: Keyring,
}

impl MemoryKeyManager {
    pub fn new() -> Self {
        Self { keys: Keyring::new(NAME, Default::default()) }
    }
}

impl Default for MemoryKeyManager {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl KeyManager for MemoryKeyManager {
    fn backend(&self) -> &'static str {
        NAME
    }

    async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
        _owner: Option<&KeyOwner>,
    ) -> Result<KeyInfo, KeyManagerError> {
        let key = Keyring::generate(NAME, id, key_type).await?;
        let info = Keyring::info(id, &key);
        self.keys.insert(id, key)?;
        Ok(info)
    }

    async fn get_public_key(&self, id: &str) -> Result<KeyInfo, KeyManagerError> {
        Ok(Keyring::info(id, &*self.keys.get(id)?))
    }

    async fn list_keys(&self) -> Result<Vec<KeyInfo>, KeyManagerError> {
        self.keys.list()
    }

    async fn sign(&self, id: &str, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, KeyManagerError> {
        self.keys.sign(id, algorithm, message)
    }

    async fn delete_key(&self, id: &str) -> Result<(), KeyManagerError> {
        self.keys.remove(id)?;
        Ok(())
    }
}
