//! SPIRE's `x509pop` node attestation wire format, shared by the server (which checks) and
//! the agent (which proves): the agent sends its certificate chain, the server a nonce, and
//! the agent signs `server nonce || agent nonce` with the leaf's key (ECDSA P-256 SHA-256,
//! or RSA-PSS SHA-256), so the server checks a signature over SHA-256 of the two nonces.
//! JSON as Go's encoding/json writes it: `[]byte` fields are standard base64.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::crypto::{der_to_fixed, PublicKeyKind, SignatureAlgorithm, Signer};

/// Length of each side's nonce.
pub const NONCE_LEN: usize = 32;

/// Bytes written as standard base64.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Base64(pub Vec<u8>);

impl Serialize for Base64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map(Base64).map_err(serde::de::Error::custom)
    }
}

/// The attestation payload: the agent's chain, leaf first (DER).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttestationData {
    pub certificates: Vec<Base64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Nonce {
    pub nonce: Base64,
}

/// The server's challenge: one nonce, under the key's kind.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Challenge {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsa_signature: Option<Nonce>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecdsa_signature: Option<Nonce>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EcdsaResponse {
    pub nonce: Base64,
    pub r: Base64,
    pub s: Base64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RsaResponse {
    pub nonce: Base64,
    pub signature: Base64,
}

/// The agent's answer: its own nonce and the signature, under the key's kind.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsa_signature: Option<RsaResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecdsa_signature: Option<EcdsaResponse>,
}

/// What is signed: the server's nonce, then the agent's.
pub fn signed_message(server_nonce: &[u8], agent_nonce: &[u8]) -> Vec<u8> {
    [server_nonce, agent_nonce].concat()
}

/// Why the agent could not answer a challenge.
#[derive(Debug, thiserror::Error)]
pub enum RespondError {
    #[error("x509pop challenge: {0}")]
    BadChallenge(String),
    #[error("x509pop: {0}")]
    Sign(String),
}

/// The agent's answer to `challenge` (JSON), signed with the leaf's key.
pub fn respond(challenge: &[u8], signer: &dyn Signer, agent_nonce: [u8; NONCE_LEN]) -> Result<Vec<u8>, RespondError> {
    let challenge: Challenge =
        serde_json::from_slice(challenge).map_err(|e| RespondError::BadChallenge(e.to_string()))?;
    let sign = |algorithm, server: &Nonce| {
        if server.nonce.0.len() != NONCE_LEN {
            return Err(RespondError::BadChallenge(format!(
                "the server nonce is {} bytes, not {NONCE_LEN}",
                server.nonce.0.len()
            )));
        }
        signer
            .sign(algorithm, &signed_message(&server.nonce.0, &agent_nonce))
            .map_err(|e| RespondError::Sign(e.to_string()))
    };
    let response = match (signer.public_key().kind(), &challenge.ecdsa_signature, &challenge.rsa_signature) {
        (PublicKeyKind::EcP256, Some(server), _) => {
            let fixed = der_to_fixed(&sign(SignatureAlgorithm::EcdsaP256Sha256, server)?, 32)
                .map_err(|e| RespondError::Sign(e.to_string()))?;
            let (r, s) = fixed.split_at(32);
            Response {
                ecdsa_signature: Some(EcdsaResponse {
                    nonce: Base64(agent_nonce.to_vec()),
                    r: Base64(r.to_vec()),
                    s: Base64(s.to_vec()),
                }),
                ..Default::default()
            }
        }
        (PublicKeyKind::Rsa { .. }, _, Some(server)) => {
            let signature = sign(SignatureAlgorithm::RsaPssSha256, server)?;
            Response {
                rsa_signature: Some(RsaResponse { nonce: Base64(agent_nonce.to_vec()), signature: Base64(signature) }),
                ..Default::default()
            }
        }
        (kind, _, _) => return Err(RespondError::BadChallenge(format!("no challenge for a {kind:?} key"))),
    };
    serde_json::to_vec(&response).map_err(|e| RespondError::Sign(e.to_string()))
}
