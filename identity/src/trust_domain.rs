//! Trust domain names, as the SPIFFE-ID standard defines them.

use std::fmt;
use std::str::FromStr;

use crate::spiffe_id::{IdError, SpiffeId, MAX_TRUST_DOMAIN_BYTES, SCHEME_PREFIX};

/// The name of a SPIFFE trust domain, such as `example.org`.
///
/// Only lowercase letters, digits, `.`, `-` and `_` are allowed, at most 255 bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a SPIFFE ID that names
    /// only a trust domain (`spiffe://example.org`).
    pub fn parse(input: &str) -> Result<Self, IdError> {
        if input.contains("://") {
            let id = SpiffeId::parse(input)?;
            if !id.path().is_empty() {
                return Err(IdError::TrustDomainHasPath);
            }
            return Ok(id.trust_domain().clone());
        }
        Self::from_name(input)
    }

    /// Validates a bare trust domain name.
    pub(crate) fn from_name(name: &str) -> Result<Self, IdError> {
        validate_name(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The trust domain's name, e.g. `example.org`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself, `spiffe://<name>`, used as the URI SAN
    /// of CA certificates.
    pub fn id(&self) -> SpiffeId {
        SpiffeId::from_parts(self.clone(), String::new())
    }

    /// `spiffe://<name>`.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), IdError> {
    if name.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(IdError::TrustDomainTooLong);
    }
    if name.contains('@') {
        return Err(IdError::TrustDomainHasUserInfo);
    }
    for c in name.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(IdError::TrustDomainHasPort),
            '@' => return Err(IdError::TrustDomainHasUserInfo),
            '%' => return Err(IdError::PercentEncoded),
            '?' => return Err(IdError::HasQuery),
            '#' => return Err(IdError::HasFragment),
            _ => return Err(IdError::BadTrustDomainChar),
        }
    }
    Ok(())
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_names_and_ids() {
        assert_eq!(TrustDomain::parse("example.org").unwrap().name(), "example.org");
        assert_eq!(TrustDomain::parse("spiffe://example.org").unwrap().name(), "example.org");
        assert_eq!(TrustDomain::parse("a_b-c.1").unwrap().name(), "a_b-c.1");
    }

    #[test]
    fn rejects_bad_names() {
        let cases = [
            ("", IdError::MissingTrustDomain),
            ("Example.org", IdError::BadTrustDomainChar),
            ("example.org:8080", IdError::TrustDomainHasPort),
            ("user@example.org", IdError::TrustDomainHasUserInfo),
            ("spiffe://example.org/path", IdError::TrustDomainHasPath),
            ("exa mple", IdError::BadTrustDomainChar),
        ];
        for (input, want) in cases {
            assert_eq!(TrustDomain::parse(input), Err(want), "input {input:?}");
        }
        let long = "a".repeat(256);
        assert_eq!(TrustDomain::parse(&long), Err(IdError::TrustDomainTooLong));
        assert!(TrustDomain::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn id_of_trust_domain_has_no_path() {
        let td = TrustDomain::parse("example.org").unwrap();
        assert_eq!(td.id().to_string(), "spiffe://example.org");
    }
}
