//! JWT-SVIDs: JWS compact tokens signed with a trust domain's JWT authority.

mod sign;
mod validate;

pub use sign::{sign_jwt_svid, JwtSvidParams};
pub use validate::{validate_jwt_svid, ValidatedJwtSvid, LEEWAY, MAX_TOKEN_BYTES};

/// Why a JWT-SVID could not be made or was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("token is not in JWS compact serialization (three base64url parts separated by dots)")]
    NotCompact,
    #[error("token {0} is not unpadded base64url")]
    BadEncoding(&'static str),
    #[error("token {0} is not a JSON object")]
    BadJson(&'static str),
    #[error("token header has no \"alg\"")]
    MissingAlg,
    #[error("\"alg\": \"none\" is never accepted")]
    AlgNone,
    #[error("HMAC algorithm {0} is never accepted for JWT-SVIDs")]
    AlgHmac(String),
    #[error("unsupported signature algorithm {0:?}")]
    UnsupportedAlg(String),
    #[error("token header \"typ\" must be \"JWT\" or \"JOSE\", found {0:?}")]
    BadTyp(String),
    #[error("token header has no \"kid\"")]
    MissingKid,
    #[error("token header has critical extensions {0:?}, which are not supported")]
    CriticalHeader(String),
    #[error("token has no \"sub\" claim")]
    MissingSub,
    #[error("token \"sub\" is not a valid SPIFFE ID: {0}")]
    BadSub(crate::IdError),
    #[error("no bundle for trust domain {0:?}")]
    NoBundle(String),
    #[error("no JWT authority with key id {kid:?} in the bundle of {trust_domain:?}")]
    UnknownKey { kid: String, trust_domain: String },
    #[error("signature algorithm {0} does not fit the authority's key")]
    AlgKeyMismatch(String),
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token has no \"exp\" claim")]
    MissingExp,
    #[error("token \"{0}\" claim is not a number")]
    BadTimeClaim(&'static str),
    #[error("token expired at {0}")]
    Expired(i64),
    #[error("token is not valid before {0}")]
    NotYetValid(i64),
    #[error("token has no \"aud\" claim")]
    MissingAud,
    #[error("token \"aud\" claim must be a string or an array of strings")]
    BadAud,
    #[error("token audience {actual:?} does not contain {expected:?}")]
    AudienceMismatch { expected: String, actual: Vec<String> },
    #[error("cannot sign: {0}")]
    Sign(String),
    /// The signer failed (its backend may be unavailable).
    #[error(transparent)]
    Signer(#[from] crate::crypto::SignError),
}

#[cfg(test)]
mod tests;
