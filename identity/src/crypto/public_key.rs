//! Public keys as DER SubjectPublicKeyInfo, with the facts the rest of the code asks of them.

use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as ParsedKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::KeyType;

/// Why bytes are not a public key Testudo can use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublicKeyError {
    #[error("public key is not a DER SubjectPublicKeyInfo")]
    Malformed,
    #[error("public key has trailing bytes after the SubjectPublicKeyInfo")]
    TrailingBytes,
    #[error("unsupported public key algorithm: only EC P-256, P-384, P-521 and RSA keys are accepted")]
    Unsupported,
    #[error("RSA key of {0} bits is too small: at least 2048 bits are required")]
    RsaTooSmall(usize),
}

/// The algorithm family and size of a public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PublicKeyKind {
    EcP256,
    EcP384,
    EcP521,
    Rsa { bits: usize },
}

/// A validated public key: its DER SubjectPublicKeyInfo and what kind of key it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PublicKey {
    spki: Vec<u8>,
    /// The contents of the SPKI's BIT STRING: an EC point or a DER RSAPublicKey.
    key_bytes: Vec<u8>,
    kind: PublicKeyKind,
}

impl PublicKey {
    /// Parses a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, PublicKeyError> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|_| PublicKeyError::Malformed)?;
        if !rest.is_empty() {
            return Err(PublicKeyError::TrailingBytes);
        }
        Self::from_parsed(&spki, der.to_vec())
    }

    pub(crate) fn from_parsed(spki: &SubjectPublicKeyInfo<'_>, der: Vec<u8>) -> Result<Self, PublicKeyError> {
        let algorithm = &spki.algorithm.algorithm;
        let kind = if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or(PublicKeyError::Unsupported)?;
            if curve == OID_EC_P256 {
                PublicKeyKind::EcP256
            } else if curve == OID_NIST_EC_P384 {
                PublicKeyKind::EcP384
            } else if curve == OID_NIST_EC_P521 {
                PublicKeyKind::EcP521
            } else {
                return Err(PublicKeyError::Unsupported);
            }
        } else if *algorithm == OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(ParsedKey::RSA(rsa)) => {
                    let bits = rsa.key_size();
                    if bits < 2048 {
                        return Err(PublicKeyError::RsaTooSmall(bits));
                    }
                    PublicKeyKind::Rsa { bits }
                }
                _ => return Err(PublicKeyError::Malformed),
            }
        } else {
            return Err(PublicKeyError::Unsupported);
        };
        let key_bytes = spki.subject_public_key.data.to_vec();
        if let PublicKeyKind::EcP256 | PublicKeyKind::EcP384 | PublicKeyKind::EcP521 = kind {
            let coordinate = kind.ec_scalar_len().unwrap_or(0);
            // Only uncompressed points: 0x04 || x || y.
            if key_bytes.len() != 1 + 2 * coordinate || key_bytes[0] != 0x04 {
                return Err(PublicKeyError::Malformed);
            }
        }
        Ok(Self { spki: der, key_bytes, kind })
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The BIT STRING contents: the uncompressed EC point, or the DER RSAPublicKey.
    pub fn key_bytes(&self) -> &[u8] {
        &self.key_bytes
    }

    pub fn kind(&self) -> PublicKeyKind {
        self.kind
    }

    /// The key type, for keys Testudo itself could have generated.
    pub fn key_type(&self) -> Option<KeyType> {
        match self.kind {
            PublicKeyKind::EcP256 => Some(KeyType::EcP256),
            PublicKeyKind::EcP384 => Some(KeyType::EcP384),
            PublicKeyKind::Rsa { bits: 2048 } => Some(KeyType::Rsa2048),
            PublicKeyKind::Rsa { bits: 4096 } => Some(KeyType::Rsa4096),
            _ => None,
        }
    }

    /// PEM "PUBLIC KEY".
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki.clone()))
    }
}

impl PublicKeyKind {
    /// Bytes in one EC coordinate (and in each of r and s of a signature).
    pub fn ec_scalar_len(self) -> Option<usize> {
        match self {
            Self::EcP256 => Some(32),
            Self::EcP384 => Some(48),
            Self::EcP521 => Some(66),
            Self::Rsa { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{LocalKey, Signer};

    #[test]
    fn recognises_generated_keys() {
        for key_type in KeyType::ALL {
            let key = LocalKey::generate(key_type).unwrap();
            let parsed = PublicKey::from_spki_der(key.public_key().spki_der()).unwrap();
            assert_eq!(parsed.key_type(), Some(key_type));
        }
    }

    #[test]
    fn rejects_garbage_and_trailing_bytes() {
        assert_eq!(PublicKey::from_spki_der(b"nope"), Err(PublicKeyError::Malformed));
        let key = LocalKey::generate(KeyType::EcP256).unwrap();
        let mut der = key.public_key().spki_der().to_vec();
        der.push(0);
        assert_eq!(PublicKey::from_spki_der(&der), Err(PublicKeyError::TrailingBytes));
    }
}
