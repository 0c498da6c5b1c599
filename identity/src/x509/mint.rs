//! Minting X.509-SVIDs and CA certificates with rcgen, signed through any [`Signer`].

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SerialNumber,
};
use time::OffsetDateTime;

use super::parsed::{facts_of, parse};
use crate::crypto::{PublicKey, RcgenPublicKey, RcgenSigner, SignError, Signer};
use crate::{SpiffeId, TrustDomain};

/// How far NotBefore is backdated, so that peers with slightly slow clocks accept a fresh
/// certificate.
pub const BACKDATE: Duration = Duration::from_secs(10);

/// Why a certificate could not be minted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("invalid certificate template: {0}")]
    Template(String),
    #[error("issuer cannot sign: {0}")]
    Issuer(String),
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("certificate encoding failed: {0}")]
    Encode(String),
}

/// Subject name attributes. SVIDs default to `C=US, O=SPIRE` and CAs to `C=US, O=SPIFFE`,
/// as SPIRE does, so tooling that reads subjects sees what it expects.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Subject {
    pub country: Option<String>,
    pub organization: Option<String>,
    pub common_name: Option<String>,
}

impl Subject {
    pub fn svid_default() -> Self {
        Self { country: Some("US".into()), organization: Some("SPIRE".into()), common_name: None }
    }

    pub fn ca_default() -> Self {
        Self { country: Some("US".into()), organization: Some("SPIFFE".into()), common_name: None }
    }

    fn to_rcgen(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        if let Some(c) = &self.country {
            dn.push(DnType::CountryName, c.as_str());
        }
        if let Some(o) = &self.organization {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        if let Some(cn) = &self.common_name {
            dn.push(DnType::CommonName, cn.as_str());
        }
        dn
    }
}

/// What an X.509-SVID should say. The server fills it from a registration entry; nothing
/// here comes from the requester's CSR except `public_key`.
#[derive(Clone, Debug)]
pub struct SvidTemplate {
    pub spiffe_id: SpiffeId,
    pub public_key: PublicKey,
    pub ttl: Duration,
    pub dns_names: Vec<String>,
    /// Subject; when it has no common name and DNS names are given, the first DNS name is used.
    pub subject: Subject,
    /// Serial number (positive, big-endian); a random 128-bit one when `None`.
    pub serial: Option<Vec<u8>>,
}

/// What a CA certificate should say.
#[derive(Clone, Debug)]
pub struct CaTemplate {
    pub trust_domain: TrustDomain,
    pub public_key: PublicKey,
    pub ttl: Duration,
    pub subject: Subject,
    pub serial: Option<Vec<u8>>,
}

/// A CA certificate and the signer holding its private key.
pub struct Issuer<'a> {
    certificate: &'a [u8],
    signer: &'a dyn Signer,
    not_after: OffsetDateTime,
    /// Trust domains named by the issuer's SPIFFE URI SANs; an SVID must be in one of them.
    trust_domains: Vec<TrustDomain>,
}

impl<'a> Issuer<'a> {
    /// Checks that `certificate` is a CA certificate whose key is `signer`'s.
    pub fn new(certificate: &'a [u8], signer: &'a dyn Signer) -> Result<Self, MintError> {
        let cert = parse(certificate).map_err(|e| MintError::Issuer(e.to_string()))?;
        let facts = facts_of(&cert).map_err(|e| MintError::Issuer(e.to_string()))?;
        if !facts.is_ca {
            return Err(MintError::Issuer("certificate is not a CA (basicConstraints CA is not true)".into()));
        }
        if let Ok(Some(ku)) = cert.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(MintError::Issuer("certificate key usage lacks keyCertSign".into()));
            }
        }
        if &facts.public_key != signer.public_key() {
            return Err(MintError::Issuer("signer's key does not match the certificate's public key".into()));
        }
        let trust_domains = facts.spiffe_ids.iter().map(|id| id.trust_domain().clone()).collect();
        Ok(Self { certificate, signer, not_after: facts.not_after, trust_domains })
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// A freshly minted certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MintedCertificate {
    pub der: Vec<u8>,
    pub serial: Vec<u8>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl MintedCertificate {
    pub fn pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.der.clone()))
    }
}

/// A random, positive 128-bit serial number.
pub fn random_serial() -> Result<Vec<u8>, MintError> {
    let mut serial = vec![0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| MintError::Encode("random number generator failed".into()))?;
    // Clear the sign bit and keep the first byte non-zero so the encoding is always 16 bytes.
    serial[0] = (serial[0] & 0x7f) | 0x01;
    Ok(serial)
}

/// Mints an X.509-SVID: one URI SAN, CA=false, digitalSignature|keyEncipherment|keyAgreement,
/// EKU serverAuth+clientAuth, NotBefore backdated by [`BACKDATE`], NotAfter capped at the
/// issuer's.
pub fn mint_x509_svid(
    template: &SvidTemplate,
    issuer: &Issuer<'_>,
    now: OffsetDateTime,
) -> Result<MintedCertificate, MintError> {
    if template.spiffe_id.path().is_empty() {
        return Err(MintError::Template("an X.509-SVID's SPIFFE ID must have a path".into()));
    }
    let td = template.spiffe_id.trust_domain();
    if !issuer.trust_domains.is_empty() && !issuer.trust_domains.contains(td) {
        return Err(MintError::Template(format!("{} is not in the issuer's trust domain", template.spiffe_id)));
    }
    for name in &template.dns_names {
        validate_dns_name(name).map_err(|reason| MintError::Template(format!("DNS name {name:?}: {reason}")))?;
    }
    let mut params = CertificateParams::default();
    let mut subject = template.subject.clone();
    if subject.common_name.is_none() {
        subject.common_name = template.dns_names.first().cloned();
    }
    params.distinguished_name = subject.to_rcgen();
    params.subject_alt_names.push(uri_san(&template.spiffe_id)?);
    for name in &template.dns_names {
        let dns = rcgen::string::Ia5String::try_from(name.as_str()).map_err(|e| MintError::Template(e.to_string()))?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages =
        vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment, KeyUsagePurpose::KeyAgreement];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    sign(params, &template.public_key, template.ttl, template.serial.clone(), Some(issuer), None, now)
}

/// Mints a CA certificate for a trust domain: URI SAN `spiffe://<td>`, CA=true,
/// keyCertSign|cRLSign. Self-signed when `issuer` is `None` (then `self_signer` must hold
/// the template's key); otherwise an intermediate whose NotAfter is capped at the issuer's.
pub fn mint_ca(
    template: &CaTemplate,
    issuer: Option<&Issuer<'_>>,
    self_signer: Option<&dyn Signer>,
    now: OffsetDateTime,
) -> Result<MintedCertificate, MintError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = template.subject.to_rcgen();
    params.subject_alt_names.push(uri_san(&template.trust_domain.id())?);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    match (issuer, self_signer) {
        (Some(issuer), None) => {
            sign(params, &template.public_key, template.ttl, template.serial.clone(), Some(issuer), None, now)
        }
        (None, Some(signer)) => {
            if signer.public_key() != &template.public_key {
                return Err(MintError::Template("self-signed CA: the signer's key is not the template's key".into()));
            }
            sign(params, &template.public_key, template.ttl, template.serial.clone(), None, Some(signer), now)
        }
        _ => Err(MintError::Template("a CA needs exactly one of an issuer or a self-signer".into())),
    }
}

fn uri_san(id: &SpiffeId) -> Result<SanType, MintError> {
    let uri = rcgen::string::Ia5String::try_from(id.to_string()).map_err(|e| MintError::Template(e.to_string()))?;
    Ok(SanType::URI(uri))
}

fn sign(
    mut params: CertificateParams,
    public_key: &PublicKey,
    ttl: Duration,
    serial: Option<Vec<u8>>,
    issuer: Option<&Issuer<'_>>,
    self_signer: Option<&dyn Signer>,
    now: OffsetDateTime,
) -> Result<MintedCertificate, MintError> {
    if ttl.is_zero() {
        return Err(MintError::Template("TTL must be positive".into()));
    }
    let ttl = time::Duration::try_from(ttl).map_err(|_| MintError::Template("TTL is too long".into()))?;
    let now = now.replace_nanosecond(0).map_err(|e| MintError::Template(e.to_string()))?;
    let not_before = now - time::Duration::try_from(BACKDATE).unwrap_or(time::Duration::ZERO);
    let mut not_after = now.checked_add(ttl).ok_or_else(|| MintError::Template("TTL is too long".into()))?;
    if let Some(issuer) = issuer {
        not_after = not_after.min(issuer.not_after);
    }
    if not_after <= now {
        return Err(MintError::Issuer(format!("issuer expired at {}", not_after)));
    }
    let serial = match serial {
        Some(s) if s.is_empty() || s.len() > 20 || s.iter().all(|&b| b == 0) => {
            return Err(MintError::Template("serial must be 1 to 20 bytes and non-zero".into()));
        }
        Some(s) => s,
        None => random_serial()?,
    };
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = not_before;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = issuer.is_some();

    let certificate = match (issuer, self_signer) {
        (Some(issuer), _) => {
            let subject_key = RcgenPublicKey::new(public_key);
            let key = RcgenSigner::new(issuer.signer)?;
            let ca_der = rustls_pki_types::CertificateDer::from(issuer.certificate);
            let rcgen_issuer =
                rcgen::Issuer::from_ca_cert_der(&ca_der, &key).map_err(|e| MintError::Issuer(e.to_string()))?;
            params
                .signed_by(&subject_key, &rcgen_issuer)
                .map_err(|e| key.take_error().map_or_else(|| MintError::Encode(e.to_string()), MintError::Sign))?
        }
        (None, Some(signer)) => {
            let key = RcgenSigner::new(signer)?;
            params
                .self_signed(&key)
                .map_err(|e| key.take_error().map_or_else(|| MintError::Encode(e.to_string()), MintError::Sign))?
        }
        (None, None) => return Err(MintError::Template("no signer".into())),
    };
    let der = certificate.der().to_vec();
    // Read back what was written, so callers record exactly what the certificate says.
    let facts = super::certificate_facts(&der).map_err(|e| MintError::Encode(e.to_string()))?;
    Ok(MintedCertificate { der, serial: facts.serial, not_before: facts.not_before, not_after: facts.not_after })
}

/// A DNS name as certificates may carry it: LDH labels of 1–63 bytes, at most 253 bytes in
/// all, optionally with a leading `*.` wildcard label.
fn validate_dns_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("cannot be empty");
    }
    if name.len() > 253 {
        return Err("longer than 253 bytes");
    }
    let rest = name.strip_prefix("*.").unwrap_or(name);
    for label in rest.split('.') {
        if label.is_empty() {
            return Err("has an empty label");
        }
        if label.len() > 63 {
            return Err("has a label longer than 63 bytes");
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("labels may contain only letters, digits and hyphens");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("labels cannot start or end with a hyphen");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_dns_name;

    #[test]
    fn dns_names() {
        for ok in ["example.org", "*.example.org", "a-b.c1", "localhost"] {
            assert!(validate_dns_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", "-a.b", "a_b.c", "a.*.b", "exa mple.org", "a.b-", &"a".repeat(64)] {
            assert!(validate_dns_name(bad).is_err(), "{bad}");
        }
    }
}
