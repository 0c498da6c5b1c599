//! Software keys held in process memory (aws-lc-rs), for the memory and disk key managers
//! and for the keys agents generate for workloads.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, RSA_PKCS1_SHA256,
    RSA_PSS_SHA256,
};

use super::{KeyType, PublicKey, SignError, SignatureAlgorithm, Signer};

/// Why a software key could not be made or loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LocalKeyError {
    #[error("key generation failed for {0}")]
    Generation(KeyType),
    #[error("private key is unreadable: {0}")]
    Unreadable(String),
    #[error("stored {key_type} key is invalid: {reason}")]
    Invalid { key_type: KeyType, reason: String },
}

enum Pair {
    Ec(EcdsaKeyPair),
    Rsa(rsa::KeyPair),
}

/// A private key in process memory. The PKCS#8 form leaves it only through
/// [`LocalKey::to_pkcs8_der`], for key managers that persist it.
pub struct LocalKey {
    key_type: KeyType,
    pair: Pair,
    public: PublicKey,
}

impl std::fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKey").field("key_type", &self.key_type).finish_non_exhaustive()
    }
}

impl LocalKey {
    pub fn generate(key_type: KeyType) -> Result<Self, LocalKeyError> {
        let failed = |_| LocalKeyError::Generation(key_type);
        let pair = match key_type {
            KeyType::EcP256 => Pair::Ec(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).map_err(failed)?),
            KeyType::EcP384 => Pair::Ec(EcdsaKeyPair::generate(&ECDSA_P384_SHA384_ASN1_SIGNING).map_err(failed)?),
            KeyType::Rsa2048 => Pair::Rsa(rsa::KeyPair::generate(rsa::KeySize::Rsa2048).map_err(failed)?),
            KeyType::Rsa4096 => Pair::Rsa(rsa::KeyPair::generate(rsa::KeySize::Rsa4096).map_err(failed)?),
        };
        Self::from_pair(key_type, pair)
    }

    /// Loads a PKCS#8 private key and checks it is of `key_type`.
    pub fn from_pkcs8_der(key_type: KeyType, der: &[u8]) -> Result<Self, LocalKeyError> {
        let invalid = |reason: String| LocalKeyError::Invalid { key_type, reason };
        let pair = match key_type {
            KeyType::EcP256 => Pair::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der).map_err(|e| invalid(e.to_string()))?,
            ),
            KeyType::EcP384 => Pair::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, der).map_err(|e| invalid(e.to_string()))?,
            ),
            KeyType::Rsa2048 | KeyType::Rsa4096 => {
                Pair::Rsa(rsa::KeyPair::from_pkcs8(der).map_err(|e| invalid(e.to_string()))?)
            }
        };
        let key = Self::from_pair(key_type, pair)?;
        if key.public.key_type() != Some(key_type) {
            return Err(invalid(format!("key is {:?}", key.public.kind())));
        }
        Ok(key)
    }

    /// Loads a PEM private key: PKCS#8 (`PRIVATE KEY`, EC or RSA), SEC1 (`EC PRIVATE KEY`)
    /// or PKCS#1 (`RSA PRIVATE KEY`), as openssl writes them. The key type is detected.
    pub fn from_pem(text: &str) -> Result<Self, LocalKeyError> {
        let invalid = |reason: String| LocalKeyError::Unreadable(reason);
        let block = pem::parse(text).map_err(|e| invalid(format!("not PEM: {e}")))?;
        let der = zeroize::Zeroizing::new(block.contents().to_vec());
        let ec_curves =
            [(KeyType::EcP256, &ECDSA_P256_SHA256_ASN1_SIGNING), (KeyType::EcP384, &ECDSA_P384_SHA384_ASN1_SIGNING)];
        let pair = match block.tag() {
            "PRIVATE KEY" => ec_curves
                .iter()
                .find_map(|(t, alg)| EcdsaKeyPair::from_pkcs8(alg, &der).ok().map(|p| (*t, Pair::Ec(p))))
                .or_else(|| rsa::KeyPair::from_pkcs8(&der).ok().map(|p| (KeyType::Rsa2048, Pair::Rsa(p)))),
            "EC PRIVATE KEY" => ec_curves
                .iter()
                .find_map(|(t, alg)| EcdsaKeyPair::from_private_key_der(alg, &der).ok().map(|p| (*t, Pair::Ec(p)))),
            "RSA PRIVATE KEY" => rsa::KeyPair::from_der(&der).ok().map(|p| (KeyType::Rsa2048, Pair::Rsa(p))),
            other => return Err(invalid(format!("unsupported PEM block {other:?}"))),
        };
        let (guess, pair) = pair.ok_or_else(|| invalid("not an EC P-256/P-384 or RSA private key".into()))?;
        let key = Self::from_pair(guess, pair)?;
        let key_type =
            key.public.key_type().ok_or_else(|| invalid(format!("unsupported key size {:?}", key.public.kind())))?;
        Ok(Self { key_type, ..key })
    }

    fn from_pair(key_type: KeyType, pair: Pair) -> Result<Self, LocalKeyError> {
        let invalid = |reason: String| LocalKeyError::Invalid { key_type, reason };
        let spki = match &pair {
            Pair::Ec(p) => p.public_key().as_der().map(|d| d.as_ref().to_vec()),
            Pair::Rsa(p) => p.public_key().as_der().map(|d| d.as_ref().to_vec()),
        }
        .map_err(|_| invalid("public key cannot be encoded".into()))?;
        let public = PublicKey::from_spki_der(&spki).map_err(|e| invalid(e.to_string()))?;
        Ok(Self { key_type, pair, public })
    }

    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The private key as PKCS#8 DER, for a key manager that must persist it.
    pub fn to_pkcs8_der(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, LocalKeyError> {
        let invalid = |_| LocalKeyError::Invalid { key_type: self.key_type, reason: "cannot encode".into() };
        let der = match &self.pair {
            Pair::Ec(p) => p.to_pkcs8v1().map_err(invalid)?.as_ref().to_vec(),
            Pair::Rsa(p) => p.as_der().map_err(invalid)?.as_ref().to_vec(),
        };
        Ok(zeroize::Zeroizing::new(der))
    }
}

impl Signer for LocalKey {
    fn public_key(&self) -> &PublicKey {
        &self.public
    }

    fn sign(&self, algorithm: SignatureAlgorithm, message: &[u8]) -> Result<Vec<u8>, SignError> {
        if !algorithm.fits(self.key_type) {
            return Err(SignError::AlgorithmMismatch { algorithm, key: self.key_type.to_string() });
        }
        let rng = SystemRandom::new();
        match &self.pair {
            Pair::Ec(p) => p
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| SignError::Failed("ECDSA signing failed".into())),
            Pair::Rsa(p) => {
                let padding: &'static dyn aws_lc_rs::signature::RsaEncoding = match algorithm {
                    SignatureAlgorithm::RsaPssSha256 => &RSA_PSS_SHA256,
                    _ => &RSA_PKCS1_SHA256,
                };
                let mut signature = vec![0u8; p.public_modulus_len()];
                p.sign(padding, &rng, message, &mut signature)
                    .map_err(|_| SignError::Failed("RSA signing failed".into()))?;
                Ok(signature)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::verify_x509_signature;

    #[test]
    fn sign_then_verify_every_key_type() {
        for key_type in KeyType::ALL {
            let key = LocalKey::generate(key_type).unwrap();
            let alg = key_type.default_algorithm();
            let sig = key.sign(alg, b"hello").unwrap();
            verify_x509_signature(key.public_key(), alg, b"hello", &sig).unwrap();
            assert!(verify_x509_signature(key.public_key(), alg, b"hellO", &sig).is_err());
        }
    }

    #[test]
    fn pkcs8_round_trip_keeps_the_key() {
        let key = LocalKey::generate(KeyType::EcP384).unwrap();
        let der = key.to_pkcs8_der().unwrap();
        let loaded = LocalKey::from_pkcs8_der(KeyType::EcP384, &der).unwrap();
        assert_eq!(loaded.public_key(), key.public_key());
        assert!(LocalKey::from_pkcs8_der(KeyType::EcP256, &der).is_err());
        assert!(LocalKey::from_pkcs8_der(KeyType::Rsa2048, b"junk").is_err());
    }

    #[test]
    fn loads_pem_in_every_common_encoding() {
        let key = LocalKey::generate(KeyType::EcP384).unwrap();
        let pkcs8 = pem::encode(&pem::Pem::new("PRIVATE KEY", key.to_pkcs8_der().unwrap().to_vec()));
        let loaded = LocalKey::from_pem(&pkcs8).unwrap();
        assert_eq!(loaded.key_type(), KeyType::EcP384);
        assert_eq!(loaded.public_key(), key.public_key());
        let rsa = LocalKey::generate(KeyType::Rsa4096).unwrap();
        let pkcs8 = pem::encode(&pem::Pem::new("PRIVATE KEY", rsa.to_pkcs8_der().unwrap().to_vec()));
        assert_eq!(LocalKey::from_pem(&pkcs8).unwrap().key_type(), KeyType::Rsa4096);
        assert!(LocalKey::from_pem("junk").is_err());
        assert!(LocalKey::from_pem(&pem::encode(&pem::Pem::new("CERTIFICATE", vec![1, 2]))).is_err());
        assert!(LocalKey::from_pem(&pem::encode(&pem::Pem::new("PRIVATE KEY", vec![1, 2]))).is_err());
    }

    #[test]
    fn refuses_algorithm_of_another_key_type() {
        let key = LocalKey::generate(KeyType::EcP256).unwrap();
        assert!(matches!(key.sign(SignatureAlgorithm::RsaPkcs1Sha256, b"m"), Err(SignError::AlgorithmMismatch { .. })));
    }
}
