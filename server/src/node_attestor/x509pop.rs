//! SPIRE's `x509pop` node attestor, server side: the agent sends a certificate chain that
//! must lead to a configured CA; the server answers with a nonce; the agent proves it holds
//! the leaf's private key by signing SHA-256(server nonce || agent nonce). The agent is
//! named `spiffe://<td>/spire/agent/x509pop/<SHA-1 of the leaf, hex>`, as in SPIRE.
//! The wire format lives in `identity::x509pop`, shared with the agent.

use std::path::PathBuf;

use identity::crypto::{PublicKey, PublicKeyKind};
use identity::x509pop::{AttestationData, Base64, Challenge, Nonce, Response, NONCE_LEN};
use identity::{Selector, SpiffeId, TrustDomain};
use rustls::pki_types::{CertificateDer, UnixTime};

/// The attestor's name in config and on the wire.
pub const NAME: &str = "x509pop";
/// An attestation payload bigger than this is not a certificate chain.
const MAX_PAYLOAD: usize = 64 * 1024;

/// Why an agent was refused; the message goes back to the agent.
#[derive(Debug, thiserror::Error)]
pub enum X509PopError {
    #[error("x509pop: {0}")]
    BadInput(String),
    #[error("x509pop: certificate chain does not verify against the configured CA bundle: {0}")]
    Untrusted(String),
    #[error("x509pop: the challenge response does not verify")]
    BadSignature,
    #[error("x509pop: cannot read CA bundle {path}: {reason}")]
    Config { path: PathBuf, reason: String },
}

/// The configured trust: the CA certificates agents' chains must lead to.
pub struct X509Pop {
    roots: Vec<CertificateDer<'static>>,
}

/// An attestation waiting for the agent's response.
pub struct Pending {
    leaf_key: PublicKey,
    nonce: [u8; NONCE_LEN],
    pub agent_id: SpiffeId,
    pub selectors: Vec<Selector>,
    /// What to send the agent.
    pub challenge: Vec<u8>,
}

fn sha1_hex(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der))
}

impl X509Pop {
    pub fn load(paths: &[PathBuf]) -> Result<Self, X509PopError> {
        let mut roots = Vec::new();
        for path in paths {
            let text =
                std::fs::read(path).map_err(|e| X509PopError::Config { path: path.clone(), reason: e.to_string() })?;
            let certs = pem::parse_many(&text)
                .map_err(|e| X509PopError::Config { path: path.clone(), reason: e.to_string() })?;
            let before = roots.len();
            roots.extend(
                certs.into_iter().filter(|p| p.tag() == "CERTIFICATE").map(|p| CertificateDer::from(p.into_contents())),
            );
            if roots.len() == before {
                return Err(X509PopError::Config { path: path.clone(), reason: "no CERTIFICATE in the file".into() });
            }
        }
        Ok(Self { roots })
    }

    /// Checks the chain and makes the challenge.
    pub fn begin(&self, payload: &[u8], trust_domain: &TrustDomain, now: UnixTime) -> Result<Pending, X509PopError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(X509PopError::BadInput(format!(
                "attestation payload is {} bytes; at most {MAX_PAYLOAD}",
                payload.len()
            )));
        }
        let data: AttestationData =
            serde_json::from_slice(payload).map_err(|e| X509PopError::BadInput(format!("attestation payload: {e}")))?;
        let mut chain = data.certificates.into_iter().map(|c| CertificateDer::from(c.0));
        let leaf =
            chain.next().ok_or_else(|| X509PopError::BadInput("attestation payload has no certificate".into()))?;
        let intermediates: Vec<CertificateDer<'static>> = chain.collect();

        let anchors = self
            .roots
            .iter()
            .map(|r| {
                webpki::anchor_from_trusted_cert(r)
                    .map_err(|e| X509PopError::Untrusted(format!("configured CA: {e:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let end_entity = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| X509PopError::BadInput(format!("leaf certificate: {e:?}")))?;
        let algorithms = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        let path = end_entity
            .verify_for_usage(
                algorithms.all,
                &anchors,
                &intermediates,
                now,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|e| X509PopError::Untrusted(format!("{e:?}")))?;

        let facts = identity::x509::certificate_facts(leaf.as_ref())
            .map_err(|e| X509PopError::BadInput(format!("leaf certificate: {e}")))?;
        if !has_digital_signature(leaf.as_ref()) {
            return Err(X509PopError::BadInput(
                "leaf certificate is not meant for digital signatures (key usage)".into(),
            ));
        }
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| X509PopError::BadInput("no randomness available".into()))?;
        let challenge = match facts.public_key.kind() {
            PublicKeyKind::EcP256 => {
                Challenge { ecdsa_signature: Some(Nonce { nonce: Base64(nonce.to_vec()) }), ..Default::default() }
            }
            PublicKeyKind::Rsa { .. } => {
                Challenge { rsa_signature: Some(Nonce { nonce: Base64(nonce.to_vec()) }), ..Default::default() }
            }
            other => {
                return Err(X509PopError::BadInput(format!(
                    "leaf key type {other:?} is not supported (EC P-256 or RSA)"
                )))
            }
        };
        let challenge = serde_json::to_vec(&challenge).map_err(|e| X509PopError::BadInput(e.to_string()))?;

        let fingerprint = sha1_hex(leaf.as_ref());
        let agent_id = SpiffeId::parse(&format!("spiffe://{}/spire/agent/x509pop/{fingerprint}", trust_domain.name()))
            .map_err(|e| X509PopError::BadInput(e.to_string()))?;
        let mut selectors = Vec::new();
        if let Some(cn) = common_name(leaf.as_ref()) {
            selectors.extend(Selector::new(NAME, &format!("subject:cn:{cn}")));
        }
        let anchor_der = self
            .roots
            .iter()
            .find(|r| webpki::anchor_from_trusted_cert(r).is_ok_and(|a| a.subject == path.anchor().subject));
        for ca in path.intermediate_certificates().map(|c| c.der()).chain(anchor_der.cloned()) {
            selectors.extend(Selector::new(NAME, &format!("ca:fingerprint:{}", sha1_hex(ca.as_ref()))));
        }
        Ok(Pending { leaf_key: facts.public_key, nonce, agent_id, selectors, challenge })
    }

    /// Checks the agent's answer to the challenge.
    pub fn finish(pending: &Pending, response: &[u8]) -> Result<(), X509PopError> {
        let response: Response =
            serde_json::from_slice(response).map_err(|e| X509PopError::BadInput(format!("challenge response: {e}")))?;
        let combined = |theirs: &[u8]| -> Result<aws_lc_rs::digest::Digest, X509PopError> {
            if theirs.len() != NONCE_LEN {
                return Err(X509PopError::BadInput("response nonce must be 32 bytes".into()));
            }
            Ok(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                &identity::x509pop::signed_message(&pending.nonce, theirs),
            ))
        };
        use aws_lc_rs::signature::UnparsedPublicKey;
        match (pending.leaf_key.kind(), response.ecdsa_signature, response.rsa_signature) {
            (PublicKeyKind::EcP256, Some(ecdsa), _) => {
                let digest = combined(&ecdsa.nonce.0)?;
                let (r, s) = (ecdsa.r.0, ecdsa.s.0);
                if r.len() > 32 || s.len() > 32 {
                    return Err(X509PopError::BadSignature);
                }
                let mut signature = [0u8; 64];
                signature[32 - r.len()..32].copy_from_slice(&r);
                signature[64 - s.len()..].copy_from_slice(&s);
                UnparsedPublicKey::new(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED, pending.leaf_key.key_bytes())
                    .verify_digest(&digest, &signature)
                    .map_err(|_| X509PopError::BadSignature)
            }
            (PublicKeyKind::Rsa { .. }, _, Some(rsa)) => {
                let digest = combined(&rsa.nonce.0)?;
                UnparsedPublicKey::new(&aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256, pending.leaf_key.key_bytes())
                    .verify_digest(&digest, &rsa.signature.0)
                    .map_err(|_| X509PopError::BadSignature)
            }
            _ => Err(X509PopError::BadInput("challenge response is not for this key type".into())),
        }
    }
}

fn has_digital_signature(der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(der)
        .ok()
        .and_then(|(_, cert)| cert.key_usage().ok().flatten().map(|ku| ku.value.digital_signature()))
        .unwrap_or(false)
}

fn common_name(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// Builds the attestor when the config enables it, loading its CA bundles.
pub fn build(
    config: &crate::config::plugins::NodeAttestorConfig,
) -> Result<Option<std::sync::Arc<dyn super::NodeAttestor>>, super::BuildError> {
    let Some(paths) = &config.x509pop_ca_bundle_paths else { return Ok(None) };
    let attestor = X509Pop::load(paths).map_err(|e| super::BuildError { name: NAME, reason: e.to_string() })?;
    Ok(Some(std::sync::Arc::new(attestor)))
}

fn status_of(e: X509PopError) -> tonic::Status {
    match e {
        X509PopError::BadInput(_) => tonic::Status::invalid_argument(e.to_string()),
        X509PopError::Untrusted(_) | X509PopError::BadSignature => tonic::Status::permission_denied(e.to_string()),
        X509PopError::Config { .. } => tonic::Status::internal(e.to_string()),
    }
}

#[async_trait::async_trait]
impl super::NodeAttestor for X509Pop {
    fn name(&self) -> &'static str {
        NAME
    }

    /// The chain must lead to a configured CA; the agent then signs our nonce with the
    /// leaf's key. An agent attested this way may attest again.
    async fn attest(
        &self,
        payload: &[u8],
        agent: &mut dyn super::Challenger,
        context: &crate::api::ApiContext,
    ) -> Result<super::Attested, tonic::Status> {
        let pending = self.begin(payload, &context.ca.config.trust_domain, UnixTime::now()).map_err(status_of)?;
        let response = agent.challenge(pending.challenge.clone()).await?;
        Self::finish(&pending, &response).map_err(status_of)?;
        Ok(super::Attested { agent_id: pending.agent_id, selectors: pending.selectors, can_reattest: true })
    }
}
