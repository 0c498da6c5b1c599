//! `testudo.admin.v1.ClusterAdmin`: the cluster commands of the CLI.

use std::sync::Arc;
use std::time::Duration;

use proto::admin::cluster_admin_server::ClusterAdmin;
use proto::admin::{
    ClusterStatus, CreateInviteRequest, InitRequest, Invite, JoinRequest, Member, RemoveMemberRequest, RotateCaRequest,
    RotateCaResponse, SaveBackupRequest, SaveBackupResponse, StatusRequest, TransferLeadershipRequest,
};
use tonic::{Request, Response, Status};

use crate::cluster::runtime::{ClusterRuntime, DEFAULT_INVITE_TTL};
use crate::cluster::ClusterSetupError;

pub struct ClusterAdminService {
    pub runtime: Arc<ClusterRuntime>,
}

/// Longest invite lifetime an admin may ask for.
const MAX_INVITE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long `rotate-ca` waits for the members at each phase, by default and at most.
const DEFAULT_ROTATION_WAIT: Duration = Duration::from_secs(60);
const MAX_ROTATION_WAIT: Duration = Duration::from_secs(3600);

fn status_of(e: ClusterSetupError) -> Status {
    match e {
        ClusterSetupError::AlreadyMember | ClusterSetupError::NotMember | ClusterSetupError::Declared => {
            Status::failed_precondition(e.to_string())
        }
        ClusterSetupError::Invite(_) => Status::invalid_argument(e.to_string()),
        ClusterSetupError::Join(_) => Status::permission_denied(e.to_string()),
        ClusterSetupError::Rotation(_) => Status::failed_precondition(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

impl ClusterAdminService {
    async fn current(&self) -> ClusterStatus {
        let cluster_id = self.runtime.cluster_id().unwrap_or_default();
        let ca = self.runtime.member().ok().map(|m| m.trust.cas());
        match self.runtime.status() {
            None => ClusterStatus { initialized: false, ..Default::default() },
            Some(s) => ClusterStatus {
                ca_generation: ca.as_ref().map_or(0, |c| c.generation),
                ca_sha256: ca
                    .map(|c| hex::encode(crate::cluster::invite::sha256(&c.issuing.cert_der)))
                    .unwrap_or_default(),
                initialized: true,
                node_id: s.node_id,
                cluster_id,
                state: s.state,
                leader: s.leader,
                term: s.term,
                last_log_index: s.last_log_index,
                last_applied: s.last_applied,
                members: s
                    .members
                    .into_iter()
                    .map(|m| Member {
                        node_id: m.node_id,
                        raft_address: m.node.raft_address,
                        api_address: m.node.api_address,
                        voter: m.voter,
                        matched_index: m.matched_index,
                        lag: m.lag,
                    })
                    .collect(),
            },
        }
    }
}

#[tonic::async_trait]
impl ClusterAdmin for ClusterAdminService {
    async fn init(&self, _request: Request<InitRequest>) -> Result<Response<ClusterStatus>, Status> {
        self.runtime.init().await.map_err(status_of)?;
        Ok(Response::new(self.current().await))
    }

    async fn create_invite(&self, request: Request<CreateInviteRequest>) -> Result<Response<Invite>, Status> {
        let ttl = match request.get_ref().ttl_seconds {
            0 => DEFAULT_INVITE_TTL,
            secs => Duration::from_secs(u64::from(secs)),
        };
        if ttl > MAX_INVITE_TTL {
            return Err(Status::invalid_argument(format!("ttl_seconds must be at most {}", MAX_INVITE_TTL.as_secs())));
        }
        let (token, expires_at) = self.runtime.create_invite(ttl).await.map_err(status_of)?;
        Ok(Response::new(Invite { token, expires_at }))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<ClusterStatus>, Status> {
        self.runtime.join(&request.get_ref().token).await.map_err(status_of)?;
        Ok(Response::new(self.current().await))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<ClusterStatus>, Status> {
        Ok(Response::new(self.current().await))
    }

    async fn remove_member(&self, request: Request<RemoveMemberRequest>) -> Result<Response<ClusterStatus>, Status> {
        let replica = self.runtime.replica().ok_or_else(|| status_of(ClusterSetupError::NotMember))?;
        replica
            .remove_member(request.get_ref().node_id)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(self.current().await))
    }

    async fn save_backup(&self, request: Request<SaveBackupRequest>) -> Result<Response<SaveBackupResponse>, Status> {
        let path = request.into_inner().path;
        if path.is_empty() {
            return Err(Status::invalid_argument("path is required"));
        }
        let bytes = self.runtime.save_backup(std::path::Path::new(&path)).await.map_err(|e| match e {
            ClusterSetupError::Files(m) => Status::invalid_argument(m),
            other => status_of(other),
        })?;
        Ok(Response::new(SaveBackupResponse { path, bytes }))
    }

    async fn rotate_ca(&self, request: Request<RotateCaRequest>) -> Result<Response<RotateCaResponse>, Status> {
        let wait = match request.get_ref().wait_seconds {
            0 => DEFAULT_ROTATION_WAIT,
            secs => Duration::from_secs(u64::from(secs)),
        };
        if wait > MAX_ROTATION_WAIT {
            return Err(Status::invalid_argument(format!(
                "wait_seconds must be at most {}",
                MAX_ROTATION_WAIT.as_secs()
            )));
        }
        let rotated = self.runtime.rotate_ca(wait).await.map_err(status_of)?;
        Ok(Response::new(RotateCaResponse { generation: rotated.generation, ca_sha256: rotated.ca_sha256 }))
    }

    async fn transfer_leadership(
        &self,
        request: Request<TransferLeadershipRequest>,
    ) -> Result<Response<ClusterStatus>, Status> {
        let replica = self.runtime.replica().ok_or_else(|| status_of(ClusterSetupError::NotMember))?;
        replica
            .transfer_leadership(request.get_ref().node_id)
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(self.current().await))
    }
}
