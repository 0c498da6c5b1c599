//! Reading the facts Testudo needs out of a DER certificate.

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::crypto::PublicKey;
use crate::SpiffeId;

/// Why bytes are not a certificate Testudo can read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a DER X.509 certificate")]
    Malformed,
    #[error("certificate has trailing bytes")]
    TrailingBytes,
    #[error("certificate public key: {0}")]
    PublicKey(String),
    #[error("certificate has a malformed extension: {0}")]
    Extension(String),
}

/// What a certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    pub serial: Vec<u8>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    pub public_key: PublicKey,
    /// URI SANs that parse as SPIFFE IDs.
    pub spiffe_ids: Vec<SpiffeId>,
    /// All URI SANs, valid SPIFFE IDs or not.
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    /// The subjectKeyIdentifier extension's value, if present (how SPIRE names authorities).
    pub subject_key_id: Option<Vec<u8>>,
    /// The issuer's key identifier (authority key identifier extension), if present.
    pub authority_key_id: Option<Vec<u8>>,
}

pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, ParseError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| ParseError::Malformed)?;
    if !rest.is_empty() {
        return Err(ParseError::TrailingBytes);
    }
    check_outer_structure(der)?;
    Ok(cert)
}

/// x509-parser reads the signature BIT STRING without checking its tag's class, so a
/// certificate whose unsigned outer bytes were altered could still parse. Insist on the
/// DER shape RFC 5280 gives: SEQUENCE { SEQUENCE tbs, SEQUENCE algorithm, BIT STRING }.
fn check_outer_structure(der: &[u8]) -> Result<(), ParseError> {
    use x509_parser::asn1_rs::{Any, Class, FromDer, Tag};
    let (_, outer) = Any::from_der(der).map_err(|_| ParseError::Malformed)?;
    let universal = |any: &Any<'_>, tag: Tag, constructed: bool| {
        any.header.class() == Class::Universal && any.header.tag() == tag && any.header.is_constructed() == constructed
    };
    if !universal(&outer, Tag::Sequence, true) {
        return Err(ParseError::Malformed);
    }
    let mut content = outer.data;
    let mut parts = Vec::with_capacity(3);
    while !content.is_empty() {
        let (rest, part) = Any::from_der(content).map_err(|_| ParseError::Malformed)?;
        parts.push(part);
        content = rest;
    }
    match parts.as_slice() {
        [tbs, algorithm, signature]
            if universal(tbs, Tag::Sequence, true)
                && universal(algorithm, Tag::Sequence, true)
                && universal(signature, Tag::BitString, false) =>
        {
            Ok(())
        }
        _ => Err(ParseError::Malformed),
    }
}

/// Reads serial, validity, CA flag, public key and SANs from a DER certificate.
pub fn certificate_facts(der: &[u8]) -> Result<CertificateFacts, ParseError> {
    let cert = parse(der)?;
    facts_of(&cert)
}

pub(crate) fn facts_of(cert: &X509Certificate<'_>) -> Result<CertificateFacts, ParseError> {
    let public_key = PublicKey::from_parsed(cert.public_key(), cert.public_key().raw.to_vec())
        .map_err(|e| ParseError::PublicKey(e.to_string()))?;
    let is_ca =
        cert.basic_constraints().map_err(|e| ParseError::Extension(e.to_string()))?.is_some_and(|bc| bc.value.ca);
    let mut uri_sans = Vec::new();
    let mut dns_sans = Vec::new();
    if let Some(san) = cert.subject_alternative_name().map_err(|e| ParseError::Extension(e.to_string()))? {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => uri_sans.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => dns_sans.push((*dns).to_owned()),
                _ => {}
            }
        }
    }
    let spiffe_ids = uri_sans.iter().filter_map(|u| SpiffeId::parse(u).ok()).collect();
    let subject_key_id = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
        _ => None,
    });
    let authority_key_id = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
            aki.key_identifier.as_ref().map(|id| id.0.to_vec())
        }
        _ => None,
    });
    Ok(CertificateFacts {
        serial: cert.raw_serial().to_vec(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        is_ca,
        public_key,
        spiffe_ids,
        uri_sans,
        dns_sans,
        subject_key_id,
        authority_key_id,
    })
}

/// Splits concatenated DER certificates (the Workload API's format for chains and bundles).
pub fn split_der_certificates(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut certs = Vec::new();
    while !bytes.is_empty() {
        let (rest, _) =
            x509_parser::parse_x509_certificate(bytes).map_err(|e| format!("certificate {}: {e}", certs.len()))?;
        let length = bytes.len() - rest.len();
        certs.push(bytes[..length].to_vec());
        bytes = rest;
    }
    if certs.is_empty() {
        return Err("no certificate".into());
    }
    Ok(certs)
}
