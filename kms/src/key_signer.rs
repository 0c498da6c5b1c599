//! Adapts a key manager's key to `identity::crypto::Signer`, for rcgen and JWT signing.

use std::sync::Arc;

use identity::crypto::{PublicKey, SignError, SignatureAlgorithm, Signer};
use tokio::runtime::Handle;

use crate::{KeyInfo, KeyManager, KeyManagerError};

/// One key of a [`KeyManager`] as a synchronous [`Signer`].
///
/// `Signer::sign` blocks on the key manager, so call it from a blocking thread
/// (`tokio::task::spawn_blocking`), never from async code on the reactor: that is where
/// certificate minting runs anyway, since it is CPU work.
pub struct KeySigner {
    manager: Arc<dyn KeyManager>,
    info: KeyInfo,
    runtime: Handle,
}

impl KeySigner {
    /// Looks the key up once; its public half is then cached.
    pub async fn new(manager: Arc<dyn KeyManager>, id: &str) -> Result<Self, KeyManagerError> {
        let info = manager.get_public_key(id).await?;
        Self::for_known_key(manager, info)
    }

    /// A signer for a key whose type and public half the caller already holds (the CA
    /// journal records them), so signing costs no extra key-manager round trip.
    pub fn for_known_key(manager: Arc<dyn KeyManager>, info: KeyInfo) -> Result<Self, KeyManagerError> {
        let runtime = Handle::try_current().map_err(|e| KeyManagerError::Unavailable {
            backend: manager.backend(),
            reason: format!("a signer needs a tokio runtime: {e}"),
        })?;
        Ok(Self { manager, info, runtime })
    }

    pub fn key(&self) -> &KeyInfo {
        &self.info
    }
}

impl Signer for KeySigner {
    fn public_key(&self) -> &PublicKey {
        &self.info.public_key
    }

    fn sign(&self, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let signature = self.runtime.block_on(self.manager.sign(&self.info.id, algorithm, message))?;
        Ok(signature)
    }
}
