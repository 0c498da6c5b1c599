//! The `Signer` trait: anything that signs with a private key it never reveals.

use super::{PublicKey, SignatureAlgorithm};

/// Why a signature could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("{algorithm} signatures cannot be made with a {key} key")]
    AlgorithmMismatch { algorithm: SignatureAlgorithm, key: String },
    #[error("signing backend {backend} is unavailable: {reason}")]
    Unavailable { backend: String, reason: String },
    #[error("signing failed: {0}")]
    Failed(String),
}

/// A private key reachable only through `sign`: a key in memory, in a key file, in a KMS
/// or in an HSM.
///
/// `sign` is synchronous and may block (a KMS round trip); async callers run it on a
/// blocking thread.
pub trait Signer: Send + Sync {
    fn public_key(&self) -> &PublicKey;

    /// Signs `message` (not a digest). ECDSA signatures come back DER-encoded.
    fn sign(&self, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, SignError>;
}

/// Lets rcgen sign certificates through any [`Signer`].
pub(crate) struct RcgenSigner<'a> {
    signer: &'a dyn Signer,
    algorithm: SignatureAlgorithm,
    rcgen_algorithm: &'static rcgen::SignatureAlgorithm,
    /// The last error the signer reported; rcgen's own error type cannot carry it.
    last_error: std::sync::Mutex<Option<SignError>>,
}

impl<'a> RcgenSigner<'a> {
    /// Uses the key type's X.509 algorithm.
    pub(crate) fn new(signer: &'a dyn Signer) -> Result<Self, SignError> {
        let key = signer.public_key();
        let key_type = key
            .key_type()
            .ok_or_else(|| SignError::Failed(format!("cannot issue certificates with a {:?} key", key.kind())))?;
        let algorithm = key_type.default_algorithm();
        let rcgen_algorithm =
            algorithm.rcgen().ok_or_else(|| SignError::AlgorithmMismatch { algorithm, key: key_type.to_string() })?;
        Ok(Self { signer, algorithm, rcgen_algorithm, last_error: std::sync::Mutex::new(None) })
    }

    /// The signer's error behind an rcgen `RemoteKeyError`, if any.
    pub(crate) fn take_error(&self) -> Option<SignError> {
        self.last_error.lock().ok().and_then(|mut e| e.take())
    }
}

impl rcgen::PublicKeyData for RcgenSigner<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.signer.public_key().key_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.rcgen_algorithm
    }
}

impl rcgen::SigningKey for RcgenSigner<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.signer.sign(self.algorithm, msg).map_err(|e| {
            if let Ok(mut slot) = self.last_error.lock() {
                *slot = Some(e);
            }
            rcgen::Error::RemoteKeyError
        })
    }
}

/// A subject public key for rcgen, from our validated key.
pub(crate) struct RcgenPublicKey<'a> {
    key: &'a PublicKey,
    rcgen_algorithm: &'static rcgen::SignatureAlgorithm,
}

impl<'a> RcgenPublicKey<'a> {
    pub(crate) fn new(key: &'a PublicKey) -> Self {
        use super::PublicKeyKind;
        // The algorithm only decides the SPKI's algorithm identifier here.
        let rcgen_algorithm = match key.kind() {
            PublicKeyKind::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            PublicKeyKind::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            PublicKeyKind::EcP521 => &rcgen::PKCS_ECDSA_P521_SHA512,
            PublicKeyKind::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
        };
        Self { key, rcgen_algorithm }
    }
}

impl rcgen::PublicKeyData for RcgenPublicKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.key.key_bytes()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.rcgen_algorithm
    }
}
