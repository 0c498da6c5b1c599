//! X.509-SVID verification against trust bundles, as the X509-SVID standard describes:
//! the leaf is an SVID with one SPIFFE ID, and a chain of valid signing certificates leads
//! from it to an X.509 authority in the bundle of the leaf's trust domain.

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    Oid, OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
};

use super::parsed::parse;
use crate::bundle::{Bundle, BundleSource};
use crate::{IdError, SpiffeId};

/// Longest chain (leaf and intermediates) a peer may present.
pub const MAX_CHAIN_LENGTH: usize = 16;

/// Why an X.509-SVID was refused. `index` is the certificate's position in the presented
/// chain (0 is the leaf).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyX509Error {
    #[error("no certificates were presented")]
    EmptyChain,
    #[error("chain has more than {MAX_CHAIN_LENGTH} certificates")]
    ChainTooLong,
    #[error("certificate {index} is malformed: {reason}")]
    Malformed { index: usize, reason: String },
    #[error("leaf certificate must have exactly one URI SAN, found {0}")]
    LeafUriSanCount(usize),
    #[error("leaf certificate URI SAN is not a valid SPIFFE ID: {0}")]
    LeafBadSpiffeId(IdError),
    #[error("leaf certificate must not be a CA")]
    LeafIsCa,
    #[error("leaf certificate must have the digitalSignature key usage")]
    LeafMissingDigitalSignature,
    #[error("leaf certificate must not have the keyCertSign key usage")]
    LeafHasKeyCertSign,
    #[error("leaf certificate must not have the cRLSign key usage")]
    LeafHasCrlSign,
    #[error("no bundle for trust domain {0:?}")]
    NoBundle(String),
    #[error("certificate {index} is not valid before {not_before}")]
    NotYetValid { index: usize, not_before: OffsetDateTime },
    #[error("certificate {index} expired at {not_after}")]
    Expired { index: usize, not_after: OffsetDateTime },
    #[error("certificate {index} has an unsupported or weak signature algorithm {oid}")]
    WeakSignatureAlgorithm { index: usize, oid: String },
    #[error("certificate {index} has an unrecognised critical extension {oid}")]
    UnknownCriticalExtension { index: usize, oid: String },
    #[error("the bundle authority the chain leads to is not valid at this time")]
    AuthorityNotValid,
    #[error("signing certificate {index} is not a CA")]
    SignerNotCa { index: usize },
    #[error("signing certificate {index} lacks the keyCertSign key usage")]
    SignerMissingKeyCertSign { index: usize },
    #[error("a signing certificate's path length constraint is exceeded")]
    PathLenExceeded,
    #[error("no chain of valid signatures leads to an authority of trust domain {0:?}")]
    NoPathToAuthority(String),
}

/// The result of a successful verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedX509Svid {
    pub spiffe_id: SpiffeId,
    pub not_after: OffsetDateTime,
    /// DER of the bundle authority the chain leads to.
    pub authority: Vec<u8>,
}

const SIGNATURE_ALGORITHMS: [Oid<'static>; 6] = [
    OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384,
    OID_PKCS1_SHA256WITHRSA,
    OID_PKCS1_SHA384WITHRSA,
    OID_PKCS1_SHA512WITHRSA,
    OID_PKCS1_RSASSAPSS,
];

/// Verifies `chain` (leaf first, then any intermediates) against `bundles` at time `now`
/// and returns the leaf's SPIFFE ID.
pub fn verify_x509_svid<C: AsRef<[u8]>>(
    chain: &[C],
    bundles: &impl BundleSource,
    now: OffsetDateTime,
) -> Result<VerifiedX509Svid, VerifyX509Error> {
    if chain.is_empty() {
        return Err(VerifyX509Error::EmptyChain);
    }
    if chain.len() > MAX_CHAIN_LENGTH {
        return Err(VerifyX509Error::ChainTooLong);
    }
    let certs = parse_all(chain)?;
    let leaf = &certs[0];
    let spiffe_id = check_leaf(leaf)?;
    let td = spiffe_id.trust_domain();
    let bundle = bundles.bundle_for(td).ok_or_else(|| VerifyX509Error::NoBundle(td.to_string()))?;
    let authority = build_path(&certs, bundle, now)?;
    Ok(VerifiedX509Svid { spiffe_id, not_after: leaf.validity().not_after.to_datetime(), authority })
}

/// [`verify_x509_svid`] for a verifier whose clock may be up to `slow_by` behind the
/// issuer's: a chain that is not yet valid at `now` (a certificate in it, or the bundle's
/// authority it chains to) passes if it is valid at `now + slow_by`, which also asks that
/// it stay valid that much longer. What a slow clock mistakes for not yet valid is only a
/// fresh certificate or a new CA; an expired one stays refused.
pub fn verify_x509_svid_allowing_slow_clock<C: AsRef<[u8]>>(
    chain: &[C],
    bundles: &impl BundleSource,
    now: OffsetDateTime,
    slow_by: std::time::Duration,
) -> Result<VerifiedX509Svid, VerifyX509Error> {
    match verify_x509_svid(chain, bundles, now) {
        // An authority's error does not say which end of its validity failed; one that has
        // expired at `now` has at `now + slow_by` too.
        Err(VerifyX509Error::NotYetValid { .. } | VerifyX509Error::AuthorityNotValid) if !slow_by.is_zero() => {
            let later = time::Duration::try_from(slow_by).unwrap_or(time::Duration::ZERO);
            verify_x509_svid(chain, bundles, now + later)
        }
        other => other,
    }
}

/// Verifies that a CA certificate (first) and the intermediates after it chain to one of
/// `bundle`'s X.509 authorities at `now`; returns that authority. For checking an upstream-
/// signed CA before publishing it.
pub fn verify_ca_chain<C: AsRef<[u8]>>(
    chain: &[C],
    bundle: &Bundle,
    now: OffsetDateTime,
) -> Result<Vec<u8>, VerifyX509Error> {
    if chain.is_empty() {
        return Err(VerifyX509Error::EmptyChain);
    }
    if chain.len() > MAX_CHAIN_LENGTH {
        return Err(VerifyX509Error::ChainTooLong);
    }
    let certs = parse_all(chain)?;
    if !certs[0].basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca) {
        return Err(VerifyX509Error::SignerNotCa { index: 0 });
    }
    build_path(&certs, bundle, now)
}

fn parse_all<C: AsRef<[u8]>>(chain: &[C]) -> Result<Vec<X509Certificate<'_>>, VerifyX509Error> {
    chain
        .iter()
        .enumerate()
        .map(|(index, der)| {
            parse(der.as_ref()).map_err(|e| VerifyX509Error::Malformed { index, reason: e.to_string() })
        })
        .collect()
}

/// Walks up from `certs[0]`: at each step prefer a bundle authority that signed the
/// current certificate, else a presented intermediate that did.
fn build_path(certs: &[X509Certificate<'_>], bundle: &Bundle, now: OffsetDateTime) -> Result<Vec<u8>, VerifyX509Error> {
    let td = bundle.trust_domain();
    let authorities = bundle
        .x509_authorities()
        .iter()
        .filter_map(|a| parse(&a.der).ok().map(|c| (c, a.der.as_slice())))
        .collect::<Vec<_>>();
    for (index, cert) in certs.iter().enumerate() {
        check_common(cert, index, now)?;
    }
    let mut current = 0usize;
    let mut used = vec![false; certs.len()];
    used[0] = true;
    // cas_below counts the CA certificates between the leaf and the one being checked.
    for cas_below in 0..MAX_CHAIN_LENGTH {
        let child = &certs[current];
        for (authority, der) in &authorities {
            if issued_by(child, authority) {
                check_time(authority, 0, now).map_err(|_| VerifyX509Error::AuthorityNotValid)?;
                check_path_len(authority, cas_below)?;
                return Ok(der.to_vec());
            }
        }
        let next = (1..certs.len()).find(|&i| !used[i] && issued_by(child, &certs[i]));
        let Some(next) = next else { break };
        let signer = &certs[next];
        if !signer.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca) {
            return Err(VerifyX509Error::SignerNotCa { index: next });
        }
        if !signer.key_usage().ok().flatten().is_some_and(|ku| ku.value.key_cert_sign()) {
            return Err(VerifyX509Error::SignerMissingKeyCertSign { index: next });
        }
        check_path_len(signer, cas_below)?;
        used[next] = true;
        current = next;
    }
    Err(VerifyX509Error::NoPathToAuthority(td.to_string()))
}

fn check_leaf(leaf: &X509Certificate<'_>) -> Result<SpiffeId, VerifyX509Error> {
    let malformed = |reason: String| VerifyX509Error::Malformed { index: 0, reason };
    let uris: Vec<&str> = match leaf.subject_alternative_name().map_err(|e| malformed(e.to_string()))? {
        Some(san) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    let [uri] = uris.as_slice() else {
        return Err(VerifyX509Error::LeafUriSanCount(uris.len()));
    };
    let id = SpiffeId::parse(uri).map_err(VerifyX509Error::LeafBadSpiffeId)?;
    if leaf.basic_constraints().map_err(|e| malformed(e.to_string()))?.is_some_and(|bc| bc.value.ca) {
        return Err(VerifyX509Error::LeafIsCa);
    }
    let ku = leaf.key_usage().map_err(|e| malformed(e.to_string()))?;
    let ku = ku.map(|k| k.value);
    if !ku.is_some_and(|k| k.digital_signature()) {
        return Err(VerifyX509Error::LeafMissingDigitalSignature);
    }
    if ku.is_some_and(|k| k.key_cert_sign()) {
        return Err(VerifyX509Error::LeafHasKeyCertSign);
    }
    if ku.is_some_and(|k| k.crl_sign()) {
        return Err(VerifyX509Error::LeafHasCrlSign);
    }
    Ok(id)
}

fn check_common(cert: &X509Certificate<'_>, index: usize, now: OffsetDateTime) -> Result<(), VerifyX509Error> {
    check_time(cert, index, now)?;
    // A signature is whole bytes: any other unused-bit count is a re-encoding the signature
    // does not cover, which would let one certificate take many byte forms.
    if cert.signature_value.unused_bits != 0 {
        return Err(VerifyX509Error::Malformed { index, reason: "signature BIT STRING has unused bits".into() });
    }
    if !outer_algorithm_matches_signed(cert) {
        return Err(VerifyX509Error::Malformed {
            index,
            reason: "signatureAlgorithm differs from the signed one in tbsCertificate".into(),
        });
    }
    let oid = &cert.signature_algorithm.algorithm;
    if !SIGNATURE_ALGORITHMS.contains(oid) {
        return Err(VerifyX509Error::WeakSignatureAlgorithm { index, oid: oid.to_id_string() });
    }
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::UnsupportedExtension { .. } if ext.critical => {
                return Err(VerifyX509Error::UnknownCriticalExtension { index, oid: ext.oid.to_id_string() });
            }
            ParsedExtension::ParseError { error } => {
                return Err(VerifyX509Error::Malformed { index, reason: format!("extension {}: {error}", ext.oid) });
            }
            _ => {}
        }
    }
    Ok(())
}

/// RFC 5280: the outer signatureAlgorithm must be the algorithm identifier inside the
/// signed tbsCertificate. Compared as encoded bytes, since the outer one is not signed and a
/// lenient parser would otherwise accept re-encodings of it.
fn outer_algorithm_matches_signed(cert: &X509Certificate<'_>) -> bool {
    let tbs = cert.tbs_certificate.as_ref();
    let Some((_, tbs_body)) = der_tlv(tbs) else { return false };
    // TBSCertificate: [0] version (optional), serialNumber, signature, …
    let mut rest = tbs_body;
    if rest.first() == Some(&0xa0) {
        let Some((_, _)) = der_tlv(rest) else { return false };
        rest = &rest[der_len(rest).unwrap_or(rest.len())..];
    }
    let Some(serial_len) = der_len(rest) else { return false };
    rest = &rest[serial_len..];
    let Some(inner_len) = der_len(rest) else { return false };
    let inner = &rest[..inner_len];
    // The whole certificate: SEQUENCE { tbs, signatureAlgorithm, signatureValue }.
    let whole = cert.as_raw();
    let Some((header_len, _)) = der_header(whole) else { return false };
    let after_tbs = &whole[(header_len + tbs.len()).min(whole.len())..];
    let Some(outer_len) = der_len(after_tbs) else { return false };
    &after_tbs[..outer_len] == inner
}

/// (header length, content length) of the DER TLV at the start of `bytes`.
fn der_header(bytes: &[u8]) -> Option<(usize, usize)> {
    let len_byte = *bytes.get(1)?;
    if len_byte < 0x80 {
        return Some((2, usize::from(len_byte)));
    }
    let n = usize::from(len_byte & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let len = bytes.get(2..2 + n)?.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some((2 + n, len))
}

/// Total length (header and content) of the DER TLV at the start of `bytes`.
fn der_len(bytes: &[u8]) -> Option<usize> {
    let (header, content) = der_header(bytes)?;
    let total = header.checked_add(content)?;
    (total <= bytes.len()).then_some(total)
}

/// The content of the DER TLV at the start of `bytes`.
fn der_tlv(bytes: &[u8]) -> Option<(u8, &[u8])> {
    let (header, content) = der_header(bytes)?;
    Some((*bytes.first()?, bytes.get(header..header.checked_add(content)?)?))
}

fn check_time(cert: &X509Certificate<'_>, index: usize, now: OffsetDateTime) -> Result<(), VerifyX509Error> {
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now < not_before {
        return Err(VerifyX509Error::NotYetValid { index, not_before });
    }
    if now > not_after {
        return Err(VerifyX509Error::Expired { index, not_after });
    }
    Ok(())
}

fn check_path_len(signer: &X509Certificate<'_>, cas_below: usize) -> Result<(), VerifyX509Error> {
    let limit = signer.basic_constraints().ok().flatten().and_then(|bc| bc.value.path_len_constraint);
    match limit {
        Some(limit) if cas_below > limit as usize => Err(VerifyX509Error::PathLenExceeded),
        _ => Ok(()),
    }
}

fn issued_by(child: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    child.issuer().as_raw() == issuer.subject().as_raw()
        && SIGNATURE_ALGORITHMS.contains(&child.signature_algorithm.algorithm)
        && child.verify_signature(Some(issuer.public_key())).is_ok()
}
