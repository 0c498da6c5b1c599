//! The `KeyManager` trait.

use async_trait::async_trait;
use identity::crypto::{KeyType, PublicKey, SignatureAlgorithm};

use crate::KeyManagerError;

/// A key a manager holds: its id, type and public half.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub key_type: KeyType,
    pub public_key: PublicKey,
}

/// Generates, lists and signs with keys named by id. Async because real backends (KMS,
/// HSM) do I/O; implementations keep blocking work off the reactor.
#[async_trait]
pub trait KeyManager: Send + Sync + 'static {
    /// The backend's config name (`memory`, `disk`, …), for logs and errors.
    fn backend(&self) -> &'static str;

    /// Generates a new key under `id`, replacing any key that had that id (as SPIRE's key
    /// managers do: a CA slot reuses its id for each new key).
    async fn generate_key(&self, id: &str, key_type: KeyType) -> Result<KeyInfo, KeyManagerError>;

    async fn get_public_key(&self, id: &str) -> Result<KeyInfo, KeyManagerError>;

    /// Every key, ordered by id.
    async fn list_keys(&self) -> Result<Vec<KeyInfo>, KeyManagerError>;

    /// Signs `message` (not a digest). ECDSA signatures are DER-encoded.
    async fn sign(&self, id: &str, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, KeyManagerError>;

    /// Deletes a key. Deleting a key that does not exist is not an error.
    async fn delete_key(&self, id: &str) -> Result<(), KeyManagerError>;
}
