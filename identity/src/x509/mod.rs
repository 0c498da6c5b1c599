//! X.509-SVIDs and CA certificates: minting, CSRs and verification against bundles.

mod csr;
mod mint;
mod parsed;
mod verify;

pub use csr::{create_csr, parse_csr, public_key_from_csr, CsrError, CsrRequest};
pub use mint::{
    mint_ca, mint_x509_svid, random_serial, CaTemplate, Issuer, MintError, MintedCertificate, Subject, SvidTemplate,
    BACKDATE,
};
pub use parsed::{certificate_facts, split_der_certificates, CertificateFacts, ParseError};
pub use verify::{
    verify_ca_chain, verify_x509_svid, verify_x509_svid_allowing_slow_clock, VerifiedX509Svid, VerifyX509Error,
    MAX_CHAIN_LENGTH,
};
#[cfg(test)]
pub(crate) mod tests;
