//! Node attestation and renewal of the agent's own SVID. Attestation proves the node to
//! any server replica (AttestAgent); renewal swaps the SVID for a fresh one with a new key
//! (RenewAgent), which the server promotes on its first use.

use std::path::Path;

use identity::crypto::{KeyType, LocalKey};
use identity::x509::create_csr;
use identity::x509pop::{respond, AttestationData, Base64, NONCE_LEN};
use proto::spire::api::server::agent::v1 as agent_pb;
use proto::spire::api::types::AttestationData as AttestationDataPb;
use tonic::Status;
use zeroize::Zeroizing;

use crate::identity_store::StoredIdentity;
use server_pool::{Hedge, ServerPool};

/// A fresh key and a CSR for it.
fn key_and_csr() -> Result<(LocalKey, Vec<u8>), Status> {
    let key = LocalKey::generate(KeyType::EcP256)
        .map_err(|e| Status::internal(format!("cannot generate the agent key: {e}")))?;
    let csr = create_csr(&key, None).map_err(|e| Status::internal(format!("cannot build the agent CSR: {e}")))?;
    Ok((key, csr))
}

fn identity_of(key: &LocalKey, svid: Option<proto::spire::api::types::X509svid>) -> Result<StoredIdentity, Status> {
    let svid = svid.ok_or_else(|| Status::internal("the server answered without an SVID"))?;
    if svid.cert_chain.is_empty() {
        return Err(Status::internal("the server answered with an empty certificate chain"));
    }
    let key_pkcs8 = key.to_pkcs8_der().map_err(|e| Status::internal(format!("cannot encode the agent key: {e}")))?;
    Ok(StoredIdentity { chain: svid.cert_chain, key_pkcs8: Zeroizing::new(key_pkcs8.to_vec()) })
}

/// Attests with a join token on whichever replica answers. A token works once: a replayed
/// or expired one is refused (PermissionDenied) and not retried elsewhere.
pub async fn with_join_token(pool: &ServerPool, token: &str) -> Result<StoredIdentity, Status> {
    let (key, csr) = key_and_csr()?;
    let request = agent_pb::AttestAgentRequest {
        step: Some(agent_pb::attest_agent_request::Step::Params(agent_pb::attest_agent_request::Params {
            data: Some(AttestationDataPb { r#type: "join_token".into(), payload: token.as_bytes().to_vec() }),
            params: Some(agent_pb::AgentX509svidParams { csr }),
        })),
    };
    let svid = pool
        .call(3, Hedge::Never, |channel| {
            let request = request.clone();
            async move {
                let mut client = agent_pb::agent_client::AgentClient::new(channel);
                let mut answers = client.attest_agent(tokio_stream::once(request)).await?.into_inner();
                match answers.message().await?.and_then(|a| a.step) {
                    Some(agent_pb::attest_agent_response::Step::Result(result)) => Ok(result.svid),
                    Some(agent_pb::attest_agent_response::Step::Challenge(_)) => {
                        Err(Status::failed_precondition("join_token attestation got a challenge"))
                    }
                    None => Err(Status::unavailable("the server closed the attestation stream")),
                }
            }
        })
        .await?;
    identity_of(&key, svid)
}

/// Reads the x509pop files: the node's key and its chain (leaf first, then intermediates).
fn x509pop_material(
    key_path: &Path,
    certificate_path: &Path,
    intermediates_path: Option<&Path>,
) -> Result<(LocalKey, Vec<Vec<u8>>), Status> {
    let read = |path: &Path| {
        std::fs::read_to_string(path)
            .map_err(|e| Status::failed_precondition(format!("x509pop: {}: {e}", path.display())))
    };
    let key = LocalKey::from_pem(&read(key_path)?)
        .map_err(|e| Status::failed_precondition(format!("x509pop: {}: {e}", key_path.display())))?;
    let certs = |path: &Path| {
        identity::bundle::parse_pem_certificates(&read(path)?)
            .map_err(|e| Status::failed_precondition(format!("x509pop: {}: {e}", path.display())))
    };
    let mut chain = certs(certificate_path)?;
    if let Some(path) = intermediates_path {
        chain.extend(certs(path)?);
    }
    if chain.is_empty() {
        return Err(Status::failed_precondition(format!(
            "x509pop: {} holds no certificate",
            certificate_path.display()
        )));
    }
    Ok((key, chain))
}

/// Attests with SPIRE's x509pop: proves possession of the key of a certificate that chains
/// to a CA the servers trust, answering the server's challenge on the same stream.
pub async fn with_x509pop(
    pool: &ServerPool,
    key_path: &Path,
    certificate_path: &Path,
    intermediates_path: Option<&Path>,
) -> Result<StoredIdentity, Status> {
    let (node_key, chain) = x509pop_material(key_path, certificate_path, intermediates_path)?;
    let node_key = std::sync::Arc::new(node_key);
    let payload = serde_json::to_vec(&AttestationData { certificates: chain.into_iter().map(Base64).collect() })
        .map_err(|e| Status::internal(e.to_string()))?;
    let (key, csr) = key_and_csr()?;
    let svid = pool
        .call(3, Hedge::Never, |channel| {
            let (payload, csr, node_key) = (payload.clone(), csr.clone(), node_key.clone());
            async move {
                let mut client = agent_pb::agent_client::AgentClient::new(channel);
                let (requests, stream) = tokio::sync::mpsc::channel(2);
                let params = agent_pb::AttestAgentRequest {
                    step: Some(agent_pb::attest_agent_request::Step::Params(agent_pb::attest_agent_request::Params {
                        data: Some(AttestationDataPb { r#type: "x509pop".into(), payload }),
                        params: Some(agent_pb::AgentX509svidParams { csr }),
                    })),
                };
                requests.send(params).await.map_err(|_| Status::internal("attestation stream closed"))?;
                let mut answers =
                    client.attest_agent(tokio_stream::wrappers::ReceiverStream::new(stream)).await?.into_inner();
                loop {
                    match answers.message().await?.and_then(|a| a.step) {
                        Some(agent_pb::attest_agent_response::Step::Challenge(challenge)) => {
                            let mut nonce = [0u8; NONCE_LEN];
                            aws_lc_rs::rand::fill(&mut nonce)
                                .map_err(|_| Status::internal("no randomness for the x509pop nonce"))?;
                            let node_key = node_key.clone();
                            let response =
                                tokio::task::spawn_blocking(move || respond(&challenge, node_key.as_ref(), nonce))
                                    .await
                                    .map_err(|e| Status::internal(e.to_string()))?
                                    .map_err(|e| Status::internal(e.to_string()))?;
                            let step = agent_pb::AttestAgentRequest {
                                step: Some(agent_pb::attest_agent_request::Step::ChallengeResponse(response)),
                            };
                            requests
                                .send(step)
                                .await
                                .map_err(|_| Status::unavailable("the server closed the attestation stream"))?;
                        }
                        Some(agent_pb::attest_agent_response::Step::Result(result)) => return Ok(result.svid),
                        None => return Err(Status::unavailable("the server closed the attestation stream")),
                    }
                }
            }
        })
        .await?;
    identity_of(&key, svid)
}

/// Trades the current SVID for a new one with a new key.
pub async fn renew(pool: &ServerPool) -> Result<StoredIdentity, Status> {
    let (key, csr) = key_and_csr()?;
    let svid = pool
        .call(3, Hedge::Never, |channel| {
            let csr = csr.clone();
            async move {
                let mut client = agent_pb::agent_client::AgentClient::new(channel);
                let answer = client
                    .renew_agent(agent_pb::RenewAgentRequest { params: Some(agent_pb::AgentX509svidParams { csr }) })
                    .await?;
                Ok(answer.into_inner().svid)
            }
        })
        .await?;
    identity_of(&key, svid)
}
