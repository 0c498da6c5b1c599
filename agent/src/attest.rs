//! Node attestation and renewal of the agent's own SVID. Attestation proves the node to
//! any server replica (AttestAgent); renewal swaps the SVID for a fresh one with a new key
//! (RenewAgent), which the server promotes on its first use.

use identity::crypto::{KeyType, LocalKey};
use identity::x509::create_csr;
use proto::spire::api::server::agent::v1 as agent_pb;
use proto::spire::api::types::AttestationData;
use tonic::Status;
use zeroize::Zeroizing;

use crate::identity_store::StoredIdentity;
use crate::server_pool::ServerPool;

/// A fresh key and a CSR for it.
fn key_and_csr() -> Result<(LocalKey, Vec<u8>), Status> {
    let key = LocalKey::generate(KeyType::EcP256).map_err(|e| Status::internal(format!("cannot generate the agent key: {e}")))?;
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
            data: Some(AttestationData { r#type: "join_token".into(), payload: token.as_bytes().to_vec() }),
            params: Some(agent_pb::AgentX509svidParams { csr }),
        })),
    };
    let svid = pool
        .call(3, |channel| {
            let request = request.clone();
            async move {
                let mut client = agent_pb::agent_client::AgentClient::new(channel);
                let mut answers = client.attest_agent(tokio_stream::once(request)).await?.into_inner();
                match answers.message().await?.and_then(|a| a.step) {
                    Some(agent_pb::attest_agent_response::Step::Result(result)) => Ok(result.svid),
                    Some(agent_pb::attest_agent_response::Step::Challenge(_)) => Err(Status::failed_precondition("join_token attestation got a challenge")),
                    None => Err(Status::unavailable("the server closed the attestation stream")),
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
        .call(3, |channel| {
            let csr = csr.clone();
            async move {
                let mut client = agent_pb::agent_client::AgentClient::new(channel);
                let answer = client.renew_agent(agent_pb::RenewAgentRequest { params: Some(agent_pb::AgentX509svidParams { csr }) }).await?;
                Ok(answer.into_inner().svid)
            }
        })
        .await?;
    identity_of(&key, svid)
}
