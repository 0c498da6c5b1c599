//! PEM in and out for X.509 authorities.

/// Why PEM text is not a list of certificates.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("malformed PEM: {0}")]
    Malformed(String),
    #[error("PEM block {index} is a {label:?}, expected \"CERTIFICATE\"")]
    WrongLabel { index: usize, label: String },
    #[error("PEM block {index} is not a valid X.509 certificate")]
    BadCertificate { index: usize },
    #[error("no certificates found in PEM")]
    Empty,
}

/// Parses one or more PEM `CERTIFICATE` blocks into DER, checking each is a certificate.
pub fn parse_pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, PemError> {
    let blocks = pem::parse_many(text).map_err(|e| PemError::Malformed(e.to_string()))?;
    if blocks.is_empty() {
        return Err(PemError::Empty);
    }
    blocks
        .into_iter()
        .enumerate()
        .map(|(index, block)| {
            if block.tag() != "CERTIFICATE" {
                return Err(PemError::WrongLabel { index, label: block.tag().to_owned() });
            }
            match x509_parser::parse_x509_certificate(block.contents()) {
                Ok(([], _)) => Ok(block.into_contents()),
                _ => Err(PemError::BadCertificate { index }),
            }
        })
        .collect()
}

/// Encodes DER certificates as concatenated PEM blocks.
pub fn to_pem_certificates<'a>(ders: impl IntoIterator<Item = &'a [u8]>) -> String {
    let blocks: Vec<pem::Pem> = ders.into_iter().map(|d| pem::Pem::new("CERTIFICATE", d.to_vec())).collect();
    pem::encode_many(&blocks)
}
