//! Invite tokens: what an admin hands to a new replica. A token carries a 256-bit secret
//! (the cluster stores only its SHA-256, consumed once), the SHA-256 of the cluster CA
//! certificate (so the joiner recognises the real cluster before sending the secret), and
//! the cluster RPC addresses to reach it at.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::ClusterSetupError;

const PREFIX: &str = "testudo-invite-v1.";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    pub secret: [u8; 32],
    pub ca_sha256: [u8; 32],
    pub addresses: Vec<String>,
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

impl Invite {
    /// A new invite with a fresh random secret.
    pub fn generate(ca_cert_der: &[u8], addresses: Vec<String>) -> Result<Self, ClusterSetupError> {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| ClusterSetupError::Invite("no randomness available".into()))?;
        Ok(Self { secret, ca_sha256: sha256(ca_cert_der), addresses })
    }

    /// What the cluster stores: the secret's SHA-256, in hex.
    pub fn secret_sha256(secret: &[u8]) -> String {
        hex::encode(sha256(secret))
    }

    pub fn encode(&self) -> Result<String, ClusterSetupError> {
        let json = serde_json::to_vec(self).map_err(|e| ClusterSetupError::Invite(e.to_string()))?;
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json)))
    }

    pub fn decode(token: &str) -> Result<Self, ClusterSetupError> {
        let body = token
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| ClusterSetupError::Invite(format!("not an invite token (it must start with {PREFIX:?})")))?;
        if body.len() > 4096 {
            return Err(ClusterSetupError::Invite("invite token is too long".into()));
        }
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| ClusterSetupError::Invite(format!("invite token is not base64url: {e}")))?;
        let invite: Self = serde_json::from_slice(&json)
            .map_err(|e| ClusterSetupError::Invite(format!("invite token is malformed: {e}")))?;
        if invite.addresses.is_empty() {
            return Err(ClusterSetupError::Invite("invite token names no address".into()));
        }
        Ok(invite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let invite = Invite::generate(b"ca", vec!["127.0.0.1:1".into()]).unwrap();
        let token = invite.encode().unwrap();
        assert_eq!(Invite::decode(&token).unwrap(), invite);
        assert_ne!(Invite::generate(b"ca", vec![]).unwrap().secret, invite.secret);
        for bad in ["", "hello", "testudo-invite-v1.!!!", "testudo-invite-v1.e30"] {
            assert!(matches!(Invite::decode(bad), Err(ClusterSetupError::Invite(_))), "{bad}");
        }
        assert_eq!(Invite::secret_sha256(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
