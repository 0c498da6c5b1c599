//! Public keys as DER SubjectPublicKeyInfo, with the facts the rest of the code asks of them.

use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_PKCS1_RSAENCRYPTION,
};
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
    #[error("EC public key is not a point on its curve")]
    NotOnCurve,
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
    /// RSA modulus and exponent, big-endian without leading zeros; empty for EC keys.
    rsa_n: Vec<u8>,
    rsa_e: Vec<u8>,
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
        let (mut rsa_n, mut rsa_e) = (Vec::new(), Vec::new());
        let kind = if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve =
                spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).ok_or(PublicKeyError::Unsupported)?;
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
                    rsa_n = strip_zeros(rsa.modulus).to_vec();
                    rsa_e = strip_zeros(rsa.exponent).to_vec();
                    let bits = rsa_n.len() * 8 - rsa_n.first().map_or(8, |b| b.leading_zeros() as usize);
                    if rsa_e.is_empty() {
                        return Err(PublicKeyError::Malformed);
                    }
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
            let alg: &'static dyn aws_lc_rs::signature::VerificationAlgorithm = match kind {
                PublicKeyKind::EcP256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                PublicKeyKind::EcP384 => &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED,
                _ => &aws_lc_rs::signature::ECDSA_P521_SHA512_FIXED,
            };
            // Parsing checks that the point lies on the curve.
            aws_lc_rs::signature::ParsedPublicKey::new(alg, &key_bytes).map_err(|_| PublicKeyError::NotOnCurve)?;
        }
        Ok(Self { spki: der, key_bytes, kind, rsa_n, rsa_e })
    }

    /// Builds an EC key from its curve and uncompressed point (`04 || x || y`).
    pub fn from_ec_point(kind: PublicKeyKind, point: &[u8]) -> Result<Self, PublicKeyError> {
        let curve: &[u64] = match kind {
            PublicKeyKind::EcP256 => &[1, 2, 840, 10045, 3, 1, 7],
            PublicKeyKind::EcP384 => &[1, 3, 132, 0, 34],
            PublicKeyKind::EcP521 => &[1, 3, 132, 0, 35],
            PublicKeyKind::Rsa { .. } => return Err(PublicKeyError::Unsupported),
        };
        let der = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(&[1, 2, 840, 10045, 2, 1]));
                    w.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(curve));
                });
                w.next().write_bitvec_bytes(point, point.len() * 8);
            })
        });
        Self::from_spki_der(&der)
    }

    /// Builds an RSA key from its modulus and public exponent (big-endian, unsigned).
    pub fn from_rsa_components(n: &[u8], e: &[u8]) -> Result<Self, PublicKeyError> {
        let n = strip_zeros(n);
        let e = strip_zeros(e);
        if n.is_empty() || e.is_empty() {
            return Err(PublicKeyError::Malformed);
        }
        let rsa_key = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_bigint_bytes(n, true);
                w.next().write_bigint_bytes(e, true);
            })
        });
        let der = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_oid(&yasna::models::ObjectIdentifier::from_slice(&[1, 2, 840, 113549, 1, 1, 1]));
                    w.next().write_null();
                });
                w.next().write_bitvec_bytes(&rsa_key, rsa_key.len() * 8);
            })
        });
        Self::from_spki_der(&der)
    }

    /// For RSA keys, the modulus and exponent (big-endian, no leading zeros).
    pub fn rsa_components(&self) -> Option<(&[u8], &[u8])> {
        match self.kind {
            PublicKeyKind::Rsa { .. } => Some((&self.rsa_n, &self.rsa_e)),
            _ => None,
        }
    }

    /// For EC keys, the x and y coordinates.
    pub fn ec_coordinates(&self) -> Option<(&[u8], &[u8])> {
        let len = self.kind.ec_scalar_len()?;
        Some((&self.key_bytes[1..1 + len], &self.key_bytes[1 + len..]))
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

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
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
