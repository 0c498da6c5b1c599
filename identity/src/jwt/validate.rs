//! Validating JWT-SVIDs as the JWT-SVID standard requires.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::JwtError;
use crate::bundle::BundleSource;
use crate::crypto::{verify_jws_signature, VerifyError};
use crate::SpiffeId;

/// Largest token accepted.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY: i64 = 30;

const ALLOWED_ALGS: [&str; 9] = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"];

/// A JWT-SVID that passed validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedJwtSvid {
    pub spiffe_id: SpiffeId,
    pub audience: Vec<String>,
    pub expiry: i64,
    pub key_id: String,
    /// Every claim, for callers (ValidateJWTSVID) that return them.
    pub claims: Map<String, Value>,
}

/// Validates a JWS-compact JWT-SVID for `audience` against `bundles` at time `now`.
pub fn validate_jwt_svid(
    token: &str,
    bundles: &impl BundleSource,
    audience: &str,
    now: OffsetDateTime,
) -> Result<ValidatedJwtSvid, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts.as_slice() else {
        return Err(JwtError::NotCompact);
    };
    let header = decode_object(header_b64, "header")?;
    let claims = decode_object(claims_b64, "claims")?;
    let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| JwtError::BadEncoding("signature"))?;

    let alg = header.get("alg").and_then(Value::as_str).ok_or(JwtError::MissingAlg)?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    if alg.starts_with("HS") {
        return Err(JwtError::AlgHmac(alg.to_owned()));
    }
    if !ALLOWED_ALGS.contains(&alg) {
        return Err(JwtError::UnsupportedAlg(alg.to_owned()));
    }
    if let Some(typ) = header.get("typ") {
        match typ.as_str() {
            Some("JWT" | "JOSE") => {}
            _ => return Err(JwtError::BadTyp(typ.to_string())),
        }
    }
    if let Some(crit) = header.get("crit") {
        return Err(JwtError::CriticalHeader(crit.to_string()));
    }
    let kid = match header.get("kid").and_then(Value::as_str) {
        Some(kid) if !kid.is_empty() => kid,
        _ => return Err(JwtError::MissingKid),
    };

    let sub = claims.get("sub").and_then(Value::as_str).ok_or(JwtError::MissingSub)?;
    let spiffe_id = SpiffeId::parse(sub).map_err(JwtError::BadSub)?;
    let td = spiffe_id.trust_domain();
    let bundle = bundles.bundle_for(td).ok_or_else(|| JwtError::NoBundle(td.to_string()))?;
    let authority = bundle
        .jwt_authority(kid)
        .ok_or_else(|| JwtError::UnknownKey { kid: kid.to_owned(), trust_domain: td.to_string() })?;
    let signing_input = &token[..header_b64.len() + 1 + claims_b64.len()];
    verify_jws_signature(&authority.public_key, alg, signing_input.as_bytes(), &signature).map_err(|e| match e {
        VerifyError::AlgorithmMismatch => JwtError::AlgKeyMismatch(alg.to_owned()),
        VerifyError::BadSignature => JwtError::BadSignature,
    })?;

    let now = now.unix_timestamp();
    let exp = time_claim(&claims, "exp")?.ok_or(JwtError::MissingExp)?;
    if now > exp.saturating_add(LEEWAY) {
        return Err(JwtError::Expired(exp));
    }
    if let Some(nbf) = time_claim(&claims, "nbf")? {
        if now.saturating_add(LEEWAY) < nbf {
            return Err(JwtError::NotYetValid(nbf));
        }
    }
    let aud = match claims.get("aud") {
        None => return Err(JwtError::MissingAud),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(JwtError::BadAud))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(JwtError::BadAud),
    };
    if !aud.iter().any(|a| a == audience) {
        return Err(JwtError::AudienceMismatch { expected: audience.to_owned(), actual: aud });
    }
    Ok(ValidatedJwtSvid { spiffe_id, audience: aud, expiry: exp, key_id: kid.to_owned(), claims })
}

fn decode_object(part: &str, what: &'static str) -> Result<Map<String, Value>, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::BadEncoding(what))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::BadJson(what)),
    }
}

/// A NumericDate claim: an integer or a number with a fraction (truncated).
fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(JwtError::BadTimeClaim(name)),
        Some(_) => Err(JwtError::BadTimeClaim(name)),
    }
}
