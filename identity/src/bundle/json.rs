//! The SPIFFE bundle format: a JWK Set with `use` = `x509-svid` or `jwt-svid` keys, plus
//! `spiffe_sequence` and `spiffe_refresh_hint`.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::{Bundle, BundleError, JwtAuthority};
use crate::crypto::{PublicKey, PublicKeyKind};
use crate::TrustDomain;

/// Largest bundle document accepted, so a hostile endpoint cannot exhaust memory.
pub const MAX_BUNDLE_JSON_BYTES: usize = 4 * 1024 * 1024;

const USE_X509: &str = "x509-svid";
const USE_JWT: &str = "jwt-svid";

/// Why a document is not a valid SPIFFE bundle.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleJsonError {
    #[error("bundle document is larger than {MAX_BUNDLE_JSON_BYTES} bytes")]
    TooLarge,
    #[error("bundle is not valid JSON: {0}")]
    Json(String),
    #[error("bundle has no \"keys\" array")]
    MissingKeys,
    #[error("bundle key {index}: {reason}")]
    Key { index: usize, reason: String },
}

#[derive(Serialize, Deserialize)]
struct Document {
    keys: Option<Vec<serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<i64>,
}

#[derive(Default, Serialize, Deserialize)]
struct Jwk {
    kty: Option<String>,
    #[serde(rename = "use")]
    key_use: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

impl Bundle {
    /// Parses a SPIFFE bundle document for `trust_domain`. Keys with an unknown `use` are
    /// ignored, as the standard requires; every other problem is an error naming the key.
    pub fn from_spiffe_json(trust_domain: TrustDomain, json: &[u8]) -> Result<Self, BundleJsonError> {
        if json.len() > MAX_BUNDLE_JSON_BYTES {
            return Err(BundleJsonError::TooLarge);
        }
        let doc: Document = serde_json::from_slice(json).map_err(|e| BundleJsonError::Json(e.to_string()))?;
        let keys = doc.keys.ok_or(BundleJsonError::MissingKeys)?;
        let mut bundle = Bundle::new(trust_domain);
        bundle.sequence_number = doc.spiffe_sequence.unwrap_or(0);
        bundle.refresh_hint = match doc.spiffe_refresh_hint {
            None => None,
            Some(hint) if hint >= 0 => Some(hint as u64),
            Some(_) => return Err(BundleJsonError::Json("spiffe_refresh_hint cannot be negative".into())),
        };
        for (index, value) in keys.into_iter().enumerate() {
            let key_error = |reason: String| BundleJsonError::Key { index, reason };
            let jwk: Jwk = serde_json::from_value(value).map_err(|e| key_error(e.to_string()))?;
            match jwk.key_use.as_deref() {
                None => return Err(key_error("\"use\" must be set".into())),
                Some(USE_X509) => add_x509(&mut bundle, &jwk).map_err(key_error)?,
                Some(USE_JWT) => add_jwt(&mut bundle, &jwk).map_err(key_error)?,
                Some(_) => continue,
            }
        }
        Ok(bundle)
    }

    /// Renders the bundle as a SPIFFE bundle document.
    pub fn to_spiffe_json(&self) -> String {
        let mut keys = Vec::new();
        for authority in &self.x509_authorities {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(&authority.der) else { continue };
            let Ok(key) = PublicKey::from_parsed(cert.public_key(), cert.public_key().raw.to_vec()) else { continue };
            let mut jwk = key_params(&key);
            jwk.key_use = Some(USE_X509.into());
            jwk.x5c = Some(vec![STANDARD.encode(&authority.der)]);
            keys.push(jwk);
        }
        for authority in &self.jwt_authorities {
            let mut jwk = key_params(&authority.public_key);
            jwk.key_use = Some(USE_JWT.into());
            jwk.kid = Some(authority.key_id.clone());
            keys.push(jwk);
        }
        let doc = Document {
            keys: Some(keys.into_iter().filter_map(|k| serde_json::to_value(k).ok()).collect()),
            spiffe_sequence: Some(self.sequence_number),
            spiffe_refresh_hint: self.refresh_hint.map(|h| i64::try_from(h).unwrap_or(i64::MAX)),
        };
        serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{\"keys\":[]}".into())
    }
}

fn add_x509(bundle: &mut Bundle, jwk: &Jwk) -> Result<(), String> {
    if jwk.kid.is_some() {
        return Err("x509-svid keys must not have a \"kid\"".into());
    }
    let x5c = jwk.x5c.as_deref().ok_or("x509-svid keys must have \"x5c\"")?;
    let [cert_b64] = x5c else {
        return Err(format!("x509-svid keys must have exactly one \"x5c\" certificate, found {}", x5c.len()));
    };
    let der = STANDARD.decode(cert_b64).map_err(|_| "\"x5c\" is not standard base64".to_string())?;
    let (rest, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|_| "\"x5c\" is not an X.509 certificate".to_string())?;
    if !rest.is_empty() {
        return Err("\"x5c\" certificate has trailing bytes".into());
    }
    let cert_key =
        PublicKey::from_parsed(cert.public_key(), cert.public_key().raw.to_vec()).map_err(|e| e.to_string())?;
    let jwk_key = jwk_public_key(jwk)?;
    if jwk_key != cert_key {
        return Err("key parameters do not match the \"x5c\" certificate's key".into());
    }
    bundle.add_x509_authority(&der).map_err(|e| e.to_string())?;
    Ok(())
}

fn add_jwt(bundle: &mut Bundle, jwk: &Jwk) -> Result<(), String> {
    let kid = jwk.kid.as_deref().unwrap_or_default();
    if kid.is_empty() {
        return Err("jwt-svid keys must have a non-empty \"kid\"".into());
    }
    let public_key = jwk_public_key(jwk)?;
    let authority = JwtAuthority { key_id: kid.to_owned(), public_key, expires_at: None, tainted: false };
    match bundle.add_jwt_authority(authority) {
        Ok(_) => Ok(()),
        Err(BundleError::KeyIdConflict(kid)) => Err(format!("\"kid\" {kid:?} appears twice with different keys")),
        Err(e) => Err(e.to_string()),
    }
}

fn b64url(field: &str, value: Option<&String>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("\"{field}\" is missing"))?;
    URL_SAFE_NO_PAD.decode(value).map_err(|_| format!("\"{field}\" is not unpadded base64url"))
}

fn jwk_public_key(jwk: &Jwk) -> Result<PublicKey, String> {
    match jwk.kty.as_deref() {
        Some("EC") => {
            let kind = match jwk.crv.as_deref() {
                Some("P-256") => PublicKeyKind::EcP256,
                Some("P-384") => PublicKeyKind::EcP384,
                Some("P-521") => PublicKeyKind::EcP521,
                other => return Err(format!("unsupported EC curve {other:?}")),
            };
            let len = kind.ec_scalar_len().unwrap_or(0);
            let x = b64url("x", jwk.x.as_ref())?;
            let y = b64url("y", jwk.y.as_ref())?;
            if x.len() != len || y.len() != len {
                return Err(format!("EC coordinates must be {len} bytes each"));
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            PublicKey::from_ec_point(kind, &point).map_err(|e| e.to_string())
        }
        Some("RSA") => {
            let n = b64url("n", jwk.n.as_ref())?;
            let e = b64url("e", jwk.e.as_ref())?;
            PublicKey::from_rsa_components(&n, &e).map_err(|e| e.to_string())
        }
        Some(other) => Err(format!("unsupported key type {other:?}")),
        None => Err("\"kty\" is missing".into()),
    }
}

fn key_params(key: &PublicKey) -> Jwk {
    let mut jwk = Jwk::default();
    if let Some((n, e)) = key.rsa_components() {
        jwk.kty = Some("RSA".into());
        jwk.n = Some(URL_SAFE_NO_PAD.encode(n));
        jwk.e = Some(URL_SAFE_NO_PAD.encode(e));
    } else if let Some((x, y)) = key.ec_coordinates() {
        jwk.kty = Some("EC".into());
        jwk.crv = Some(
            match key.kind() {
                PublicKeyKind::EcP256 => "P-256",
                PublicKeyKind::EcP384 => "P-384",
                _ => "P-521",
            }
            .into(),
        );
        jwk.x = Some(URL_SAFE_NO_PAD.encode(x));
        jwk.y = Some(URL_SAFE_NO_PAD.encode(y));
    }
    jwk
}
