//! Key objects on the token: a key pair per key id, both halves labelled
//! `<key_label_prefix><id>`; the private half generated on the token as sensitive and
//! non-extractable, so it can sign and never leave. Signing hashes here and hands the token
//! the digest: CKM_ECDSA (r || s back, converted to DER), CKM_RSA_PKCS over a DigestInfo,
//! CKM_RSA_PKCS_PSS with SHA-256 and a 32-byte salt.

use cryptoki::context::Function;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};
use identity::crypto::{fixed_to_der, KeyType, PublicKey, PublicKeyKind, SignatureAlgorithm};

use super::NAME;
use crate::{KeyInfo, KeyManagerError, KeyOwner, OwnedKey};

/// DER of the curve OIDs, as CKA_EC_PARAMS holds them.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// DigestInfo prefix for SHA-256 (RFC 8017, section 9.2, note 1).
const SHA256_DIGEST_INFO: &[u8] =
    &[0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20];

/// What went wrong on a session: the module (maybe the connection) or the key itself.
pub(super) enum Failure {
    Module(Error),
    Key(KeyManagerError),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Self::Module(e)
    }
}

fn crypto(reason: impl Into<String>) -> Failure {
    Failure::Key(KeyManagerError::Crypto { backend: NAME, reason: reason.into() })
}

fn find(session: &Session, class: ObjectClass, label: &str) -> Result<Vec<ObjectHandle>, Error> {
    session.find_objects(&[
        Attribute::Class(class),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
}

/// The private key objects labelled `label`. Private objects are invisible without a login,
/// so finding none on a session that lost it (token reset, re-inserted) is a connection
/// failure to recover from, not a missing key.
fn find_private(session: &Session, label: &str) -> Result<Vec<ObjectHandle>, Failure> {
    let found = find(session, ObjectClass::PRIVATE_KEY, label)?;
    if found.is_empty()
        && !matches!(session.get_session_info()?.session_state(), SessionState::RoUser | SessionState::RwUser)
    {
        return Err(Failure::Module(Error::Pkcs11(RvError::UserNotLoggedIn, Function::FindObjects)));
    }
    Ok(found)
}

fn private_key(session: &Session, label: &str, id: &str) -> Result<ObjectHandle, Failure> {
    find_private(session, label)?
        .into_iter()
        .next()
        .ok_or_else(|| Failure::Key(KeyManagerError::NotFound(id.to_owned())))
}

/// Removes both halves of the key labelled `label`, if any.
pub(super) fn destroy(session: &Session, label: &str) -> Result<(), Failure> {
    for handle in find_private(session, label)?.into_iter().chain(find(session, ObjectClass::PUBLIC_KEY, label)?) {
        session.destroy_object(handle)?;
    }
    Ok(())
}

/// The `CKA_ID` of a key made for `owner`: `<cluster>/<slot>/<key id>`, so a sweep tells
/// one cluster's keys from another's on a shared token. Without an owner, the key id.
fn object_id(id: &str, owner: Option<&KeyOwner>) -> Vec<u8> {
    match owner {
        Some(owner) => format!("{}/{}/{id}", owner.cluster, owner.slot).into_bytes(),
        None => id.as_bytes().to_vec(),
    }
}

/// Generates a key pair on the token under `label`, replacing any it had.
pub(super) fn generate(
    session: &Session,
    label: &str,
    id: &str,
    key_type: KeyType,
    owner: Option<&KeyOwner>,
) -> Result<KeyInfo, Failure> {
    destroy(session, label)?;
    let common = |extra: Vec<Attribute>| {
        let mut attributes = vec![
            Attribute::Token(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(object_id(id, owner)),
        ];
        attributes.extend(extra);
        attributes
    };
    let (mechanism, public_template) = match key_type {
        KeyType::EcP256 => {
            (Mechanism::EccKeyPairGen, common(vec![Attribute::Verify(true), Attribute::EcParams(P256_PARAMS.to_vec())]))
        }
        KeyType::EcP384 => {
            (Mechanism::EccKeyPairGen, common(vec![Attribute::Verify(true), Attribute::EcParams(P384_PARAMS.to_vec())]))
        }
        KeyType::Rsa2048 | KeyType::Rsa4096 => {
            let bits: u64 = if key_type == KeyType::Rsa2048 { 2048 } else { 4096 };
            (
                Mechanism::RsaPkcsKeyPairGen,
                common(vec![
                    Attribute::Verify(true),
                    Attribute::ModulusBits(bits.into()),
                    Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                ]),
            )
        }
    };
    // The private half signs and can never be read or wrapped out of the token.
    let private_template = common(vec![
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]);
    let (public, _private) = session.generate_key_pair(&mechanism, &public_template, &private_template)?;
    let public_key = read_public_key(session, public, key_type)?;
    Ok(KeyInfo { id: id.to_owned(), key_type, public_key })
}

/// The key type of a key object, from its attributes.
fn key_type_of(session: &Session, handle: ObjectHandle) -> Result<KeyType, Failure> {
    let attributes =
        session.get_attributes(handle, &[AttributeType::KeyType, AttributeType::EcParams, AttributeType::Modulus])?;
    let mut kind = None;
    let mut params = None;
    let mut modulus_bits = None;
    for attribute in attributes {
        match attribute {
            Attribute::KeyType(k) => kind = Some(k),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::Modulus(n) => modulus_bits = Some(n.iter().skip_while(|b| **b == 0).count() * 8),
            _ => {}
        }
    }
    match (kind, params.as_deref(), modulus_bits) {
        (Some(CkKeyType::EC), Some(P256_PARAMS), _) => Ok(KeyType::EcP256),
        (Some(CkKeyType::EC), Some(P384_PARAMS), _) => Ok(KeyType::EcP384),
        (Some(CkKeyType::RSA), _, Some(2048)) => Ok(KeyType::Rsa2048),
        (Some(CkKeyType::RSA), _, Some(4096)) => Ok(KeyType::Rsa4096),
        _ => Err(crypto("the token holds a key of a type this key manager does not use")),
    }
}

/// CKA_EC_POINT is a DER OCTET STRING around the point; some modules return the bare point.
fn unwrap_ec_point(value: &[u8], key_type: KeyType) -> &[u8] {
    let point_len = if key_type == KeyType::EcP256 { 65 } else { 97 };
    match value {
        [0x04, len, inner @ ..] if usize::from(*len) == point_len && inner.len() == point_len => inner,
        _ => value,
    }
}

fn read_public_key(session: &Session, handle: ObjectHandle, key_type: KeyType) -> Result<PublicKey, Failure> {
    let invalid = |e: identity::crypto::PublicKeyError| crypto(format!("the token's public key is not usable: {e}"));
    if key_type.is_rsa() {
        let attributes = session.get_attributes(handle, &[AttributeType::Modulus, AttributeType::PublicExponent])?;
        let (mut n, mut e) = (None, None);
        for attribute in attributes {
            match attribute {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        let (Some(n), Some(e)) = (n, e) else { return Err(crypto("the token gave no RSA modulus or exponent")) };
        PublicKey::from_rsa_components(&n, &e).map_err(invalid)
    } else {
        let point = session.get_attributes(handle, &[AttributeType::EcPoint])?.into_iter().find_map(|a| match a {
            Attribute::EcPoint(p) => Some(p),
            _ => None,
        });
        let point = point.ok_or_else(|| crypto("the token gave no EC point"))?;
        let kind = if key_type == KeyType::EcP256 { PublicKeyKind::EcP256 } else { PublicKeyKind::EcP384 };
        PublicKey::from_ec_point(kind, unwrap_ec_point(&point, key_type)).map_err(invalid)
    }
}

/// The public half of the key labelled `label`.
pub(super) fn public_key(session: &Session, label: &str, id: &str) -> Result<KeyInfo, Failure> {
    let handle = find(session, ObjectClass::PUBLIC_KEY, label)?
        .into_iter()
        .next()
        .ok_or_else(|| Failure::Key(KeyManagerError::NotFound(id.to_owned())))?;
    let key_type = key_type_of(session, handle)?;
    Ok(KeyInfo { id: id.to_owned(), key_type, public_key: read_public_key(session, handle, key_type)? })
}

/// Every key pair whose label starts with `prefix`, as (id, info), ordered by id.
pub(super) fn list(session: &Session, prefix: &str) -> Result<Vec<KeyInfo>, Failure> {
    let handles = session.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Token(true)])?;
    let mut keys = Vec::new();
    for handle in handles {
        let label = session.get_attributes(handle, &[AttributeType::Label])?.into_iter().find_map(|a| match a {
            Attribute::Label(l) => Some(l),
            _ => None,
        });
        let Some(id) =
            label.and_then(|l| String::from_utf8(l).ok()).and_then(|l| l.strip_prefix(prefix).map(str::to_owned))
        else {
            continue;
        };
        let key_type = key_type_of(session, handle)?;
        keys.push(KeyInfo { public_key: read_public_key(session, handle, key_type)?, id, key_type });
    }
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(keys)
}

/// The key pairs made for `cluster` whose label starts with `prefix`, as found by either
/// half (a sweep must see a half left alone as well).
pub(super) fn list_owned(session: &Session, prefix: &str, cluster: &str) -> Result<Vec<OwnedKey>, Failure> {
    let owner_prefix = format!("{cluster}/");
    let mut labels = std::collections::BTreeSet::new();
    for class in [ObjectClass::PUBLIC_KEY, ObjectClass::PRIVATE_KEY] {
        for handle in session.find_objects(&[Attribute::Class(class), Attribute::Token(true)])? {
            let (mut label, mut object_id) = (None, None);
            for attribute in session.get_attributes(handle, &[AttributeType::Label, AttributeType::Id])? {
                match attribute {
                    Attribute::Label(l) => label = String::from_utf8(l).ok(),
                    Attribute::Id(i) => object_id = String::from_utf8(i).ok(),
                    _ => {}
                }
            }
            let ours = object_id.is_some_and(|i| i.starts_with(&owner_prefix));
            if let Some(label) = label.filter(|l| ours && l.starts_with(prefix)) {
                labels.insert(label);
            }
        }
    }
    Ok(labels
        .into_iter()
        .map(|label| OwnedKey { id: label[prefix.len()..].to_owned(), object: label, current: true })
        .collect())
}

/// Signs `message` with the private key labelled `label`. ECDSA signatures come back DER.
pub(super) fn sign(
    session: &Session,
    label: &str,
    id: &str,
    algorithm: SignatureAlgorithm,
    message: &[u8],
) -> Result<Vec<u8>, Failure> {
    use aws_lc_rs::digest;
    let handle = private_key(session, label, id)?;
    let key_type = key_type_of(session, handle)?;
    if !algorithm.fits(key_type) {
        return Err(Failure::Key(KeyManagerError::AlgorithmMismatch { id: id.to_owned(), key_type, algorithm }));
    }
    match algorithm {
        SignatureAlgorithm::EcdsaP256Sha256 | SignatureAlgorithm::EcdsaP384Sha384 => {
            let hash = if algorithm == SignatureAlgorithm::EcdsaP256Sha256 { &digest::SHA256 } else { &digest::SHA384 };
            let fixed = session.sign(&Mechanism::Ecdsa, handle, digest::digest(hash, message).as_ref())?;
            fixed_to_der(&fixed).map_err(|_| crypto("the token returned a malformed ECDSA signature"))
        }
        SignatureAlgorithm::RsaPkcs1Sha256 => {
            let mut digest_info = SHA256_DIGEST_INFO.to_vec();
            digest_info.extend_from_slice(digest::digest(&digest::SHA256, message).as_ref());
            Ok(session.sign(&Mechanism::RsaPkcs, handle, &digest_info)?)
        }
        SignatureAlgorithm::RsaPssSha256 => {
            let params =
                PkcsPssParams { hash_alg: MechanismType::SHA256, mgf: PkcsMgfType::MGF1_SHA256, s_len: 32u64.into() };
            Ok(session.sign(
                &Mechanism::RsaPkcsPss(params),
                handle,
                digest::digest(&digest::SHA256, message).as_ref(),
            )?)
        }
    }
}
