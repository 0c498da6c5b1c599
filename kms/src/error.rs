//! Errors every key manager reports.

use identity::crypto::{KeyType, SignatureAlgorithm};

/// Why a key manager call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyManagerError {
    #[error("key {0:?} not found")]
    NotFound(String),
    #[error("invalid key id {id:?}: {reason}")]
    InvalidKeyId { id: String, reason: &'static str },
    #[error("{algorithm} signatures cannot be made with key {id:?} of type {key_type}")]
    AlgorithmMismatch { id: String, key_type: KeyType, algorithm: SignatureAlgorithm },
    #[error("key manager {backend} is unavailable: {reason}")]
    Unavailable { backend: &'static str, reason: String },
    #[error("key manager {backend} storage error: {reason}")]
    Storage { backend: &'static str, reason: String },
    #[error("key manager {backend}: {reason}")]
    Crypto { backend: &'static str, reason: String },
}

impl From<KeyManagerError> for identity::crypto::SignError {
    fn from(e: KeyManagerError) -> Self {
        match e {
            KeyManagerError::Unavailable { backend, reason } => {
                Self::Unavailable { backend: backend.to_owned(), reason }
            }
            KeyManagerError::AlgorithmMismatch { key_type, algorithm, .. } => {
                Self::AlgorithmMismatch { algorithm, key: key_type.to_string() }
            }
            other => Self::Failed(other.to_string()),
        }
    }
}
