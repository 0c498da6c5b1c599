//! Certificate signing requests: agents make them, servers take only the public key.

use x509_parser::prelude::FromDer;
use x509_parser::certification_request::X509CertificationRequest;

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

/// Builds a DER CSR for `signer`'s key, naming `spiffe_id` as its URI SAN.
pub fn create_csr(signer: &dyn Signer, spiffe_id: Option<&SpiffeId>) -> Result<Vec<u8>, CsrError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(id) = spiffe_id {
        let uri = rcgen::string::Ia5String::try_from(id.to_string()).map_err(|e| CsrError::Build(e.to_string()))?;
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
    }
    let key = RcgenSigner::new(signer).map_err(|e| CsrError::Build(e.to_string()))?;
    let csr = params.serialize_request(&key).map_err(|e| CsrError::Build(key.take_error().map_or(e.to_string(), |s| s.to_string())))?;
    Ok(csr.der().to_vec())
}
