//! Admitting a new replica: the Join call on the cluster RPC, served to callers without a
//! certificate. The invite secret is consumed through Raft (once, cluster-wide) before
//! anything is issued; the reply carries the cluster's id, its CA (certificate and key, so
//! the new replica can admit others in turn) and a replica certificate for the joiner's key.

use std::sync::{Arc, OnceLock, Weak};

use identity::crypto::PublicKey;
use identity::TrustDomain;
use raft_store::command::ConsumeReplicaInvite;
use raft_store::network::JoinHandler;
use raft_store::node::Replica;
use raft_store::ApplyError;
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::invite::Invite;
use super::trust::ClusterTrust;

/// What a joiner sends.
#[derive(Serialize, Deserialize)]
pub struct JoinRequest {
    pub secret: Vec<u8>,
    pub node_id: u64,
    pub raft_address: String,
    pub api_address: String,
    /// The joiner's public key (SPKI DER); its private half never leaves the joiner.
    pub public_key: Vec<u8>,
}

/// What an admitted joiner gets back.
#[derive(Serialize, Deserialize)]
pub struct JoinReply {
    pub cluster_id: String,
    /// Generation of the cluster CA below (0 until the cluster's first rotation).
    #[serde(default)]
    pub ca_generation: u64,
    pub ca_cert_der: Vec<u8>,
    pub ca_key_pkcs8: Vec<u8>,
    /// During a rotation of the cluster CA, the other CA (generation, certificate) the
    /// members still trust.
    #[serde(default)]
    pub also_trusted: Option<(u64, Vec<u8>)>,
    pub replica_cert_der: Vec<u8>,
}

/// Join requests are small; anything bigger is not one.
const MAX_JOIN_REQUEST: usize = 16 * 1024;

pub struct Admission {
    pub trust_domain: TrustDomain,
    pub cluster_id: String,
    pub trust: Arc<ClusterTrust>,
    /// Set once the replica has started (it needs this handler to start).
    pub replica: Arc<OnceLock<Weak<Replica>>>,
}

#[tonic::async_trait]
impl JoinHandler for Admission {
    async fn join(&self, request: Vec<u8>) -> Result<Vec<u8>, Status> {
        if request.len() > MAX_JOIN_REQUEST {
            return Err(Status::invalid_argument(format!(
                "join request is {} bytes; at most {MAX_JOIN_REQUEST}",
                request.len()
            )));
        }
        let request: JoinRequest = serde_json::from_slice(&request)
            .map_err(|e| Status::invalid_argument(format!("malformed join request: {e}")))?;
        if request.node_id == 0 {
            return Err(Status::invalid_argument("node_id must be positive"));
        }
        if request.secret.len() != 32 {
            return Err(Status::invalid_argument("secret must be 32 bytes"));
        }
        let public_key = PublicKey::from_spki_der(&request.public_key)
            .map_err(|e| Status::invalid_argument(format!("public_key: {e}")))?;
        let replica = self
            .replica
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| Status::unavailable("this replica is starting or stopping"))?;
        let removed = replica
            .local_reader()
            .removed_replicas()
            .await
            .map_err(|e| Status::unavailable(format!("cannot read the removed replicas: {e}")))?;
        if removed.contains(&request.node_id) {
            return Err(Status::failed_precondition(format!(
                "node_id {} was removed from this cluster; join with a new node_id and an empty data dir",
                request.node_id
            )));
        }
        let taken = replica.status().members.iter().any(|m| m.node_id == request.node_id);
        if taken {
            return Err(Status::already_exists(format!(
                "node_id {} is already a member of this cluster",
                request.node_id
            )));
        }

        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let secret_sha256 = Invite::secret_sha256(&request.secret);
        // Anyone who reaches the cluster port may send a secret: turn away unknown and
        // expired ones with a read, so only a real invite costs a replicated write.
        let key = secret_sha256.clone();
        let stored = replica
            .read_or_confirm_absent(move |reader| {
                let key = key.clone();
                async move { reader.replica_invite(&key).await }
            })
            .await
            .map_err(|e| Status::unavailable(format!("cannot read the invites: {e}")))?;
        match stored {
            None => return Err(Status::permission_denied("invite is unknown or already used")),
            Some(invite) if invite.expires_at < now => return Err(Status::permission_denied("invite has expired")),
            Some(_) => {}
        }
        let consume = ConsumeReplicaInvite { secret_sha256, now };
        let consumed =
            replica.write(consume).await.map_err(|e| Status::unavailable(format!("cannot consume the invite: {e}")))?;
        match consumed {
            Ok(_) => {}
            Err(ApplyError::FailedPrecondition(_)) => return Err(Status::permission_denied("invite has expired")),
            Err(e) => {
                tracing::warn!(node_id = request.node_id, error = %e, "join refused: unknown or already used invite");
                return Err(Status::permission_denied("invite is unknown or already used"));
            }
        }
        let cas = self.trust.cas();
        let replica_cert_der = cas
            .issuing
            .issue_replica(&self.trust_domain, request.node_id, public_key)
            .map_err(|e| Status::internal(e.to_string()))?;
        let ca_key_pkcs8 = cas.issuing.key_pkcs8().map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(node_id = request.node_id, raft_address = %request.raft_address, "admitted a new replica");
        let reply = JoinReply {
            cluster_id: self.cluster_id.clone(),
            ca_generation: cas.generation,
            ca_cert_der: cas.issuing.cert_der.clone(),
            ca_key_pkcs8: ca_key_pkcs8.to_vec(),
            also_trusted: cas.also_trusted.clone(),
            replica_cert_der,
        };
        serde_json::to_vec(&reply).map_err(|e| Status::internal(e.to_string()))
    }
}
