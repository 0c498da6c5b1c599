//! Signature verification for the algorithms SVIDs and JWT-SVIDs may use.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};

use super::{PublicKey, PublicKeyKind, SignatureAlgorithm};

/// A signature that does not verify, or an algorithm that does not fit the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature algorithm does not fit the key")]
    AlgorithmMismatch,
    #[error("signature does not verify")]
    BadSignature,
}

/// Verifies a signature as [`super::Signer::sign`] makes it (DER for ECDSA).
pub fn verify_x509_signature(
    key: &PublicKey,
    algorithm: SignatureAlgorithm,
    message: &[u8],
    sig: &[u8],
) -> Result<(), VerifyError> {
    let alg: &'static dyn VerificationAlgorithm = match (algorithm, key.kind()) {
        (SignatureAlgorithm::EcdsaP256Sha256, PublicKeyKind::EcP256) => &signature::ECDSA_P256_SHA256_ASN1,
        (SignatureAlgorithm::EcdsaP384Sha384, PublicKeyKind::EcP384) => &signature::ECDSA_P384_SHA384_ASN1,
        (SignatureAlgorithm::RsaPkcs1Sha256, PublicKeyKind::Rsa { .. }) => &signature::RSA_PKCS1_2048_8192_SHA256,
        (SignatureAlgorithm::RsaPssSha256, PublicKeyKind::Rsa { .. }) => &signature::RSA_PSS_2048_8192_SHA256,
        _ => return Err(VerifyError::AlgorithmMismatch),
    };
    UnparsedPublicKey::new(alg, key.key_bytes()).verify(message, sig).map_err(|_| VerifyError::BadSignature)
}

/// Verifies a JWS signature (`r || s` for ECDSA) for a JWS `alg` name.
pub(crate) fn verify_jws_signature(key: &PublicKey, alg: &str, message: &[u8], sig: &[u8]) -> Result<(), VerifyError> {
    let rsa = matches!(key.kind(), PublicKeyKind::Rsa { .. });
    let algorithm: &'static dyn VerificationAlgorithm = match (alg, key.kind()) {
        ("ES256", PublicKeyKind::EcP256) => &signature::ECDSA_P256_SHA256_FIXED,
        ("ES384", PublicKeyKind::EcP384) => &signature::ECDSA_P384_SHA384_FIXED,
        ("ES512", PublicKeyKind::EcP521) => &signature::ECDSA_P521_SHA512_FIXED,
        ("RS256", _) if rsa => &signature::RSA_PKCS1_2048_8192_SHA256,
        ("RS384", _) if rsa => &signature::RSA_PKCS1_2048_8192_SHA384,
        ("RS512", _) if rsa => &signature::RSA_PKCS1_2048_8192_SHA512,
        ("PS256", _) if rsa => &signature::RSA_PSS_2048_8192_SHA256,
        ("PS384", _) if rsa => &signature::RSA_PSS_2048_8192_SHA384,
        ("PS512", _) if rsa => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return Err(VerifyError::AlgorithmMismatch),
    };
    UnparsedPublicKey::new(algorithm, key.key_bytes()).verify(message, sig).map_err(|_| VerifyError::BadSignature)
}
