//! Certificate signing requests: agents make them, servers take only the public key.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::crypto::{PublicKey, RcgenSigner, Signer};
use crate::SpiffeId;

/// Why a CSR was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("CSR is not a DER PKCS#10 request")]
    Malformed,
    #[error("CSR has trailing bytes")]
    TrailingBytes,
    #[error("CSR signature does not verify: the requester does not hold the private key")]
    BadSignature,
    #[error("CSR public key: {0}")]
    PublicKey(String),
    #[error("could not build CSR: {0}")]
    Build(String),
}

/// Verifies a CSR's self-signature and returns its public key. The server decides the
/// SPIFFE ID and every other field, so nothing else in the request is used.
pub fn public_key_from_csr(der: &[u8]) -> Result<PublicKey, CsrError> {
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingBytes);
    }
    let spki = &csr.certification_request_info.subject_pki;
    let key = PublicKey::from_parsed(spki, spki.raw.to_vec()).map_err(|e| CsrError::PublicKey(e.to_string()))?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    Ok(key)
}

/// What a CSR asks for, after its self-signature verified: the key, and the URI and DNS
/// names of its subjectAltName (for admin minting, where the caller names the identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CsrRequest {
    pub public_key: PublicKey,
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
}

/// Verifies a CSR and returns its key and requested names.
pub fn parse_csr(der: &[u8]) -> Result<CsrRequest, CsrError> {
    let public_key = public_key_from_csr(der)?;
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(|_| CsrError::Malformed)?;
    let (mut uris, mut dns_names) = (Vec::new(), Vec::new());
    for extension in csr.requested_extensions().into_iter().flatten() {
        if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                match name {
                    x509_parser::extensions::GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    x509_parser::extensions::GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
    }
    Ok(CsrRequest { public_key, uris, dns_names })
}

/// Builds a DER CSR for `signer`'s key, naming `spiffe_id` as its URI SAN.
pub fn create_csr(signer: &dyn Signer, spiffe_id: Option<&SpiffeId>) -> Result<Vec<u8>, CsrError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(id) = spiffe_id {
        let uri = rcgen::string::Ia5String::try_from(id.to_string()).map_err(|e| CsrError::Build(e.to_string()))?;
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
    }
    let key = RcgenSigner::new(signer).map_err(|e| CsrError::Build(e.to_string()))?;
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CsrError::Build(key.take_error().map_or(e.to_string(), |s| s.to_string())))?;
    Ok(csr.der().to_vec())
}

#[cfg(test)]
mod csr_request_tests {
    use super::*;
    use crate::crypto::{KeyType, LocalKey};

    #[test]
    fn parse_csr_returns_key_and_names() {
        let key = LocalKey::generate(KeyType::EcP256).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/web").unwrap();
        let request = parse_csr(&create_csr(&key, Some(&id)).unwrap()).unwrap();
        assert_eq!(request.public_key, *key.public_key());
        assert_eq!(request.uris, vec!["spiffe://example.org/web".to_string()]);
        assert!(request.dns_names.is_empty());
        let bare = parse_csr(&create_csr(&key, None).unwrap()).unwrap();
        assert!(bare.uris.is_empty());
        assert_eq!(parse_csr(b"junk"), Err(CsrError::Malformed));
    }
}
