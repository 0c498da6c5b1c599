//! Where CA keys live. `Shared`: generated here and carried, private half included, in the
//! replicated CA journal, so every replica signs with them — how the development key
//! managers (`memory`, `disk`) give a cluster one CA. `Managed`: generated in a key manager
//! and named by id in the journal; every replica reaches the same key through it (the KMS
//! and HSM managers).

use std::sync::Arc;

use identity::crypto::{KeyType, LocalKey, PublicKey, SignError, SignatureAlgorithm, Signer};
use kms::{KeyInfo, KeyManager, KeyOwner, KeySigner};
use raft_store::model::KeyMaterial;

use super::CaError;

#[derive(Clone)]
pub enum CaKeys {
    Shared,
    Managed(Arc<dyn KeyManager>),
}

/// A CA key ready to sign, wherever it lives.
pub enum CaSigner {
    Local(LocalKey),
    Managed(KeySigner),
}

impl Signer for CaSigner {
    fn public_key(&self) -> &PublicKey {
        match self {
            Self::Local(k) => k.public_key(),
            Self::Managed(k) => k.public_key(),
        }
    }

    fn sign(&self, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, SignError> {
        match self {
            Self::Local(k) => k.sign(algorithm, message),
            Self::Managed(k) => k.sign(algorithm, message),
        }
    }
}

impl CaKeys {
    /// Whether keys live in a key manager (and are named, not carried, by the journal).
    pub fn is_managed(&self) -> bool {
        matches!(self, Self::Managed(_))
    }

    /// A new key: its public half, and the private half when the journal must carry it.
    /// `owner` is recorded on a managed key.
    pub async fn generate(
        &self,
        key_id: &str,
        key_type: KeyType,
        owner: Option<&KeyOwner>,
    ) -> Result<(PublicKey, Option<KeyMaterial>), CaError> {
        match self {
            Self::Shared => {
                let key = tokio::task::spawn_blocking(move || LocalKey::generate(key_type))
                    .await
                    .map_err(|e| CaError::Task(e.to_string()))?
                    .map_err(|e| CaError::Task(format!("key generation failed: {e}")))?;
                let der = key.to_pkcs8_der().map_err(|e| CaError::Task(e.to_string()))?;
                Ok((key.public_key().clone(), Some(KeyMaterial::new(der))))
            }
            Self::Managed(manager) => Ok((manager.generate_key(key_id, key_type, owner).await?.public_key, None)),
        }
    }

    /// A signer for the key a journal authority names (and, for shared keys, carries).
    pub fn signer(
        &self,
        key_id: &str,
        public_key: PublicKey,
        material: Option<&KeyMaterial>,
    ) -> Result<CaSigner, CaError> {
        let key_type =
            public_key.key_type().ok_or_else(|| CaError::Task(format!("key {key_id} has an unsupported type")))?;
        match (self, material) {
            // A key the journal carries is used from there whatever the key manager is now:
            // that is how a cluster moves from `memory`/`disk` to an HSM or KMS by rotating.
            (_, Some(material)) => {
                let key = LocalKey::from_pkcs8_der(key_type, material.pkcs8_der())
                    .map_err(|e| CaError::Task(format!("key {key_id} in the journal: {e}")))?;
                if key.public_key() != &public_key {
                    return Err(CaError::Task(format!("key {key_id} in the journal does not match its certificate")));
                }
                Ok(CaSigner::Local(key))
            }
            (Self::Shared, None) => Err(CaError::Task(format!(
                "key {key_id} is not in the journal: it was made by a key manager this replica is not configured with"
            ))),
            (Self::Managed(manager), None) => {
                let info = KeyInfo { id: key_id.to_owned(), key_type, public_key };
                Ok(CaSigner::Managed(KeySigner::for_known_key(manager.clone(), info)?))
            }
        }
    }

    /// Lets go of a key whose authority has left signing for good.
    pub async fn retire(&self, key_id: &str) {
        if let Self::Managed(manager) = self {
            if let Err(e) = manager.delete_key(key_id).await {
                tracing::warn!(%key_id, error = %e, "could not delete a retired CA key");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_managed_cluster_still_signs_with_keys_the_journal_carries() {
        // An authority made before the switch to a managed key manager.
        let (public_key, material) = CaKeys::Shared.generate("x509-CA-A-1", KeyType::EcP256, None).await.unwrap();
        let material = material.expect("shared keys travel in the journal");
        let managed = CaKeys::Managed(Arc::new(kms::memory::MemoryKeyManager::new()));
        let signer = managed.signer("x509-CA-A-1", public_key.clone(), Some(&material)).unwrap();
        assert!(matches!(signer, CaSigner::Local(_)), "the journal's key, not the (empty) key manager");
        let signature = signer.sign(SignatureAlgorithm::EcdsaP256Sha256, b"m").unwrap();
        identity::crypto::verify_x509_signature(&public_key, SignatureAlgorithm::EcdsaP256Sha256, b"m", &signature)
            .unwrap();
        // A new authority of the managed cluster carries no key and is reached by id.
        let (new_public, new_material) = managed.generate("x509-CA-B-2", KeyType::EcP256, None).await.unwrap();
        assert!(new_material.is_none());
        assert!(matches!(managed.signer("x509-CA-B-2", new_public, None).unwrap(), CaSigner::Managed(_)));
    }
}
