//! Key types and the signature algorithms each can produce.

use std::fmt;
use std::str::FromStr;

/// The kinds of signing key Testudo generates, named as SPIRE names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum KeyType {
    #[serde(rename = "ec-p256")]
    EcP256,
    #[serde(rename = "ec-p384")]
    EcP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

/// A key type name that Testudo does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown key type {0:?}: expected one of ec-p256, ec-p384, rsa-2048, rsa-4096")]
pub struct UnknownKeyType(pub String);

impl KeyType {
    pub const ALL: [KeyType; 4] = [Self::EcP256, Self::EcP384, Self::Rsa2048, Self::Rsa4096];

    pub fn name(self) -> &'static str {
        match self {
            Self::EcP256 => "ec-p256",
            Self::EcP384 => "ec-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa4096)
    }

    /// The algorithm used for X.509 signatures and, by default, JWTs.
    pub fn default_algorithm(self) -> SignatureAlgorithm {
        match self {
            Self::EcP256 => SignatureAlgorithm::EcdsaP256Sha256,
            Self::EcP384 => SignatureAlgorithm::EcdsaP384Sha384,
            Self::Rsa2048 | Self::Rsa4096 => SignatureAlgorithm::RsaPkcs1Sha256,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyType {
    type Err = UnknownKeyType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| UnknownKeyType(s.to_owned()))
    }
}

/// How a message is signed. ECDSA signatures are DER-encoded (as in X.509); RSA ones are
/// the raw signature bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SignatureAlgorithm {
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    RsaPkcs1Sha256,
    RsaPssSha256,
}

impl SignatureAlgorithm {
    /// Whether a key of `key_type` can make this signature.
    pub fn fits(self, key_type: KeyType) -> bool {
        match self {
            Self::EcdsaP256Sha256 => key_type == KeyType::EcP256,
            Self::EcdsaP384Sha384 => key_type == KeyType::EcP384,
            Self::RsaPkcs1Sha256 | Self::RsaPssSha256 => key_type.is_rsa(),
        }
    }

    /// The JWS `alg` name.
    pub fn jws_name(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ES256",
            Self::EcdsaP384Sha384 => "ES384",
            Self::RsaPkcs1Sha256 => "RS256",
            Self::RsaPssSha256 => "PS256",
        }
    }

    /// rcgen's name for the algorithm, for the ones X.509 certificates are signed with.
    pub(crate) fn rcgen(self) -> Option<&'static rcgen::SignatureAlgorithm> {
        match self {
            Self::EcdsaP256Sha256 => Some(&rcgen::PKCS_ECDSA_P256_SHA256),
            Self::EcdsaP384Sha384 => Some(&rcgen::PKCS_ECDSA_P384_SHA384),
            Self::RsaPkcs1Sha256 => Some(&rcgen::PKCS_RSA_SHA256),
            Self::RsaPssSha256 => None,
        }
    }
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jws_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in KeyType::ALL {
            assert_eq!(k.name().parse::<KeyType>().unwrap(), k);
            assert!(k.default_algorithm().fits(k));
        }
        assert!("ec-p521".parse::<KeyType>().is_err());
    }

    #[test]
    fn algorithms_fit_only_their_keys() {
        assert!(!SignatureAlgorithm::EcdsaP256Sha256.fits(KeyType::EcP384));
        assert!(!SignatureAlgorithm::RsaPssSha256.fits(KeyType::EcP256));
        assert!(SignatureAlgorithm::RsaPssSha256.fits(KeyType::Rsa4096));
    }
}
