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

/// Whose a key is: recorded on the key by the backends that keep attributes (KMS tags, the
/// PKCS#11 `CKA_ID`), so a sweep can find a key nothing else records (its creator crashed
/// before writing its id down) and delete it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyOwner {
    /// The cluster that made the key.
    pub cluster: String,
    /// What the key is for, e.g. `x509/A`.
    pub slot: String,
}

/// A key object a backend made for an owner, as a sweep finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedKey {
    /// The key id it was made under.
    pub id: String,
    /// The backend's name for the object: a KMS key id, a PKCS#11 label.
    pub object: String,
    /// Whether `id` names this object now; false for the leftover of a generation that
    /// stopped half-way.
    pub current: bool,
}

/// Generates, lists and signs with keys named by id. Async because real backends (KMS,
/// HSM) do I/O; implementations keep blocking work off the reactor.
#[async_trait]
pub trait KeyManager: Send + Sync + 'static {
    /// The backend's config name (`memory`, `disk`, …), for logs and errors.
    fn backend(&self) -> &'static str;

    /// Generates a new key under `id`, replacing any key that had that id (as SPIRE's key
    /// managers do: a CA slot reuses its id for each new key).
    /// `owner` is recorded on the key where the backend can.
    async fn generate_key(
        &self,
        id: &str,
        key_type: KeyType,
        owner: Option<&KeyOwner>,
    ) -> Result<KeyInfo, KeyManagerError>;

    async fn get_public_key(&self, id: &str) -> Result<KeyInfo, KeyManagerError>;

    /// Every key, ordered by id.
    async fn list_keys(&self) -> Result<Vec<KeyInfo>, KeyManagerError>;

    /// Signs `message` (not a digest). ECDSA signatures are DER-encoded.
    async fn sign(&self, id: &str, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, KeyManagerError>;

    /// Deletes a key. Deleting a key that does not exist is not an error.
    async fn delete_key(&self, id: &str) -> Result<(), KeyManagerError>;

    /// Every key object made for `cluster`, current or not. Backends that keep no owner
    /// (`memory`, `disk`: their keys die with the process or live in one file) list none.
    async fn list_owned(&self, _cluster: &str) -> Result<Vec<OwnedKey>, KeyManagerError> {
        Ok(Vec::new())
    }

    /// Deletes a key object [`list_owned`](Self::list_owned) found (on KMS: schedules it
    /// for deletion), and the id's name for it when `key.current`.
    async fn delete_owned(&self, key: &OwnedKey) -> Result<(), KeyManagerError> {
        self.delete_key(&key.id).await
    }
}
