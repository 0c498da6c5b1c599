//! CA settings, with SPIRE's defaults, and the checks made on them at start-up.

use std::time::Duration;

use identity::crypto::KeyType;
use identity::x509::Subject;
use identity::TrustDomain;

/// SPIRE's default X.509-SVID lifetime.
pub const DEFAULT_X509_SVID_TTL: Duration = Duration::from_secs(3600);
/// SPIRE's default JWT-SVID lifetime.
pub const DEFAULT_JWT_SVID_TTL: Duration = Duration::from_secs(300);
/// SPIRE's default CA (and JWT key) lifetime.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(24 * 3600);
const SEVEN_DAYS: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a reserved key id may go unrecorded before its creation counts as abandoned:
/// far longer than one creation takes (a key, perhaps an upstream call, a Raft write).
pub const DEFAULT_KEY_SWEEP_GRACE: Duration = Duration::from_secs(600);

/// A CA setting that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaConfigError {
    #[error("{0} must be positive")]
    ZeroTtl(&'static str),
    #[error("ca_ttl must be at least one minute")]
    CaTtlTooShort,
    #[error("ca_key_sweep_grace must be at least one second")]
    SweepGraceTooShort,
}

/// Everything the CA needs to know about how to mint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaConfig {
    pub trust_domain: TrustDomain,
    pub ca_ttl: Duration,
    pub x509_svid_ttl: Duration,
    pub jwt_svid_ttl: Duration,
    pub ca_key_type: KeyType,
    pub jwt_key_type: KeyType,
    pub ca_subject: Subject,
    /// See [`DEFAULT_KEY_SWEEP_GRACE`].
    pub key_sweep_grace: Duration,
}

impl CaConfig {
    /// SPIRE's defaults: 24h CA, 1h X.509-SVIDs, 5m JWT-SVIDs, EC P-256 keys.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            ca_ttl: DEFAULT_CA_TTL,
            x509_svid_ttl: DEFAULT_X509_SVID_TTL,
            jwt_svid_ttl: DEFAULT_JWT_SVID_TTL,
            ca_key_type: KeyType::EcP256,
            jwt_key_type: KeyType::EcP256,
            ca_subject: Subject::ca_default(),
            key_sweep_grace: DEFAULT_KEY_SWEEP_GRACE,
        }
    }

    /// Refuses settings that cannot work and returns warnings for ones that work badly.
    pub fn validate(&self) -> Result<Vec<String>, CaConfigError> {
        for (name, ttl) in [
            ("ca_ttl", self.ca_ttl),
            ("default_x509_svid_ttl", self.x509_svid_ttl),
            ("default_jwt_svid_ttl", self.jwt_svid_ttl),
        ] {
            if ttl.is_zero() {
                return Err(CaConfigError::ZeroTtl(name));
            }
        }
        if self.ca_ttl < Duration::from_secs(60) {
            return Err(CaConfigError::CaTtlTooShort);
        }
        if self.key_sweep_grace < Duration::from_secs(1) {
            return Err(CaConfigError::SweepGraceTooShort);
        }
        Ok(self.svid_ttl_warnings())
    }

    /// SVIDs are cut short when they outlive the CA that signs them: with rotation at
    /// `min(ca_ttl/6, 7d)` before expiry, a longer SVID TTL cannot be honoured in full.
    pub fn svid_ttl_warnings(&self) -> Vec<String> {
        let limit = (self.ca_ttl / 6).min(SEVEN_DAYS);
        [("default_x509_svid_ttl", self.x509_svid_ttl), ("default_jwt_svid_ttl", self.jwt_svid_ttl)]
            .into_iter()
            .filter(|(_, ttl)| *ttl > limit)
            .map(|(name, ttl)| {
                format!(
                    "{name} ({}s) exceeds min(ca_ttl/6, 7d) ({}s): SVIDs signed late in a CA's life will be cut short \
                        at the CA's expiry; lower {name} or raise ca_ttl",
                    ttl.as_secs(),
                    limit.as_secs()
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CaConfig {
        CaConfig::new(TrustDomain::parse("example.org").unwrap())
    }

    #[test]
    fn defaults_are_spires() {
        let c = config();
        assert_eq!(c.ca_ttl, Duration::from_secs(86400));
        assert_eq!(c.x509_svid_ttl, Duration::from_secs(3600));
        assert_eq!(c.jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(c.ca_key_type, KeyType::EcP256);
        assert_eq!(c.validate(), Ok(vec![]));
    }

    #[test]
    fn warns_when_svids_outlive_the_rotation_window() {
        let mut c = config();
        c.x509_svid_ttl = Duration::from_secs(4 * 3600 + 1); // > 24h/6
        let warnings = c.validate().unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("default_x509_svid_ttl"), "{warnings:?}");
        c.x509_svid_ttl = Duration::from_secs(4 * 3600);
        assert!(c.validate().unwrap().is_empty());
        // With a long CA the 7-day cap applies.
        c.ca_ttl = Duration::from_secs(365 * 86400);
        c.x509_svid_ttl = Duration::from_secs(8 * 86400);
        assert_eq!(c.validate().unwrap().len(), 1);
    }

    #[test]
    fn refuses_zero_ttls() {
        let mut c = config();
        c.jwt_svid_ttl = Duration::ZERO;
        assert_eq!(c.validate(), Err(CaConfigError::ZeroTtl("default_jwt_svid_ttl")));
        let mut c = config();
        c.ca_ttl = Duration::from_secs(30);
        assert_eq!(c.validate(), Err(CaConfigError::CaTtlTooShort));
    }
}
