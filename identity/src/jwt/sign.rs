//! Signing JWT-SVIDs through any [`Signer`].

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use time::OffsetDateTime;

use super::JwtError;
use crate::crypto::{der_to_fixed, SignatureAlgorithm, Signer};
use crate::SpiffeId;

/// What a JWT-SVID says.
#[derive(Clone, Debug)]
pub struct JwtSvidParams<'a> {
    pub spiffe_id: &'a SpiffeId,
    pub audience: &'a [String],
    pub ttl: Duration,
    /// The `kid` of the signing key in the trust domain's bundle.
    pub key_id: &'a str,
    /// Defaults to the key type's algorithm (ES256, ES384, RS256); RSA keys may use PS256.
    pub algorithm: Option<SignatureAlgorithm>,
    /// Token expiry is capped here (the JWT authority's own expiry), if set.
    pub not_after: Option<OffsetDateTime>,
}

/// Signs a JWT-SVID: header `{alg, kid, typ: "JWT"}`, claims `sub`, `aud`, `exp`, `iat`.
pub fn sign_jwt_svid(params: &JwtSvidParams<'_>, signer: &dyn Signer, now: OffsetDateTime) -> Result<String, JwtError> {
    if params.spiffe_id.path().is_empty() {
        return Err(JwtError::Sign("a JWT-SVID's SPIFFE ID must have a path".into()));
    }
    if params.audience.is_empty() || params.audience.iter().any(String::is_empty) {
        return Err(JwtError::Sign("at least one non-empty audience is required".into()));
    }
    if params.key_id.is_empty() {
        return Err(JwtError::Sign("key id cannot be empty".into()));
    }
    if params.ttl.is_zero() {
        return Err(JwtError::Sign("TTL must be positive".into()));
    }
    let key = signer.public_key();
    let key_type = key.key_type().ok_or_else(|| JwtError::Sign("unsupported signing key".into()))?;
    let algorithm = params.algorithm.unwrap_or_else(|| key_type.default_algorithm());
    if !algorithm.fits(key_type) {
        return Err(JwtError::Sign(format!("{algorithm} does not fit a {key_type} key")));
    }
    let iat = now.unix_timestamp();
    let ttl = i64::try_from(params.ttl.as_secs()).map_err(|_| JwtError::Sign("TTL is too long".into()))?;
    let mut exp = iat.checked_add(ttl).ok_or_else(|| JwtError::Sign("TTL is too long".into()))?;
    if let Some(not_after) = params.not_after {
        exp = exp.min(not_after.unix_timestamp());
    }
    if exp <= iat {
        return Err(JwtError::Sign("the signing key has expired".into()));
    }
    let header = serde_json::json!({ "alg": algorithm.jws_name(), "kid": params.key_id, "typ": "JWT" });
    let claims = serde_json::json!({
        "sub": params.spiffe_id.to_string(),
        "aud": params.audience,
        "exp": exp,
        "iat": iat,
    });
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = signer.sign(algorithm, signing_input.as_bytes())?;
    let signature = match key.kind().ec_scalar_len() {
        Some(len) => der_to_fixed(&signature, len).map_err(|e| JwtError::Sign(e.to_string()))?,
        None => signature,
    };
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}
