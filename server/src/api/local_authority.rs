//! `spire.api.server.localauthority.v1.LocalAuthority`: admin control of the CA's X.509
//! and JWT authorities, from any replica; every change is a Raft command.

use proto::spire::api::server::localauthority::v1 as pb;
use proto::spire::api::server::localauthority::v1::local_authority_server::LocalAuthority;
use tonic::{Request, Response, Status};

use super::{apply_status, ApiContext};
use crate::ca::local_authority::{AuthorityKind, AuthorityState, AuthorityStates, Transition};
use crate::ca::CaError;
use raft_store::command::{RevokeLocalX509Authority, TaintLocalX509Authority};

pub struct LocalAuthorityService {
    pub context: ApiContext,
}

fn state_pb(state: AuthorityState) -> pb::AuthorityState {
    pb::AuthorityState {
        authority_id: state.authority_id,
        expires_at: state.expires_at,
        upstream_authority_subject_key_id: state.upstream_authority_id,
    }
}

fn ca_status(e: CaError) -> Status {
    match e {
        CaError::UnknownAuthority(id) => Status::not_found(format!("authority_id: no authority {id:?}")),
        CaError::Journal(e) => Status::failed_precondition(e.to_string()),
        other => Status::unavailable(other.to_string()),
    }
}

fn authority_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("authority_id: required"));
    }
    Ok(id)
}

impl LocalAuthorityService {
    async fn states(&self, kind: AuthorityKind) -> Result<AuthorityStates, Status> {
        let replica = self.context.replica()?;
        Ok(self.context.ca.linearizable(&replica).await.map_err(ca_status)?.authority_states(kind))
    }

    async fn prepare(&self, kind: AuthorityKind) -> Result<pb::AuthorityState, Status> {
        let replica = self.context.replica()?;
        Ok(state_pb(self.context.ca.prepare_now(&replica, kind).await.map_err(ca_status)?))
    }

    async fn change(
        &self,
        kind: AuthorityKind,
        id: &str,
        transition: Transition,
    ) -> Result<pb::AuthorityState, Status> {
        let replica = self.context.replica()?;
        let state =
            self.context.ca.transition(&replica, kind, authority_id(id)?, transition).await.map_err(ca_status)?;
        tracing::info!(?kind, ?transition, authority_id = %id, "local authority changed by an admin");
        Ok(state_pb(state))
    }
}

#[derive(Clone, Copy, Debug)]
enum UpstreamChange {
    Taint,
    Revoke,
}

impl LocalAuthorityService {
    /// Taints or revokes, in the local bundle, the upstream authority with subject key id
    /// `key_id` (hex, any case), with SPIRE's rules: only with an upstream authority
    /// configured, and only the one that signed the old local authority, never the one that
    /// signed the active one. Returns the normalised key id.
    async fn change_upstream(&self, key_id: &str, change: UpstreamChange) -> Result<String, Status> {
        if self.context.ca.upstream.is_none() {
            return Err(Status::failed_precondition("upstream authority is not configured"));
        }
        let key_id = key_id.to_lowercase();
        if key_id.is_empty() {
            return Err(Status::invalid_argument("subject_key_id: required"));
        }
        let replica = self.context.replica()?;
        let ca = self.context.ca.linearizable(&replica).await.map_err(ca_status)?;
        let states = ca.authority_states(AuthorityKind::X509);
        if states.active.as_ref().is_some_and(|a| a.upstream_authority_id == key_id) {
            return Err(Status::invalid_argument(
                "subject_key_id: this upstream authority signed the active local authority",
            ));
        }
        if states.old.as_ref().is_none_or(|o| o.upstream_authority_id != key_id) {
            return Err(Status::invalid_argument(
                "subject_key_id: only the upstream authority that signed the old \
                local authority can be tainted or revoked",
            ));
        }
        let bundle = ca.stored_bundle();
        let der = bundle
            .x509_authorities
            .iter()
            .find(|a| {
                identity::x509::certificate_facts(&a.der)
                    .ok()
                    .and_then(|f| f.subject_key_id)
                    .is_some_and(|id| hex::encode(id) == key_id)
            })
            .map(|a| a.der.clone())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "subject_key_id: no X.509 authority of the local bundle has subject key id {key_id}"
                ))
            })?;
        let trust_domain = bundle.trust_domain.name().to_owned();
        let written = match change {
            UpstreamChange::Taint => self.context.write(TaintLocalX509Authority { trust_domain, der }).await?,
            UpstreamChange::Revoke => self.context.write(RevokeLocalX509Authority { trust_domain, der }).await?,
        };
        written.map_err(|refused| apply_status(&refused))?;
        tracing::info!(?change, subject_key_id = %key_id, "upstream authority changed by an admin");
        Ok(key_id)
    }
}

#[tonic::async_trait]
impl LocalAuthority for LocalAuthorityService {
    async fn get_jwt_authority_state(
        &self,
        _: Request<pb::GetJwtAuthorityStateRequest>,
    ) -> Result<Response<pb::GetJwtAuthorityStateResponse>, Status> {
        let s = self.states(AuthorityKind::Jwt).await?;
        Ok(Response::new(pb::GetJwtAuthorityStateResponse {
            active: s.active.map(state_pb),
            prepared: s.prepared.map(state_pb),
            old: s.old.map(state_pb),
        }))
    }

    async fn prepare_jwt_authority(
        &self,
        _: Request<pb::PrepareJwtAuthorityRequest>,
    ) -> Result<Response<pb::PrepareJwtAuthorityResponse>, Status> {
        Ok(Response::new(pb::PrepareJwtAuthorityResponse {
            prepared_authority: Some(self.prepare(AuthorityKind::Jwt).await?),
        }))
    }

    async fn activate_jwt_authority(
        &self,
        request: Request<pb::ActivateJwtAuthorityRequest>,
    ) -> Result<Response<pb::ActivateJwtAuthorityResponse>, Status> {
        let state = self.change(AuthorityKind::Jwt, &request.get_ref().authority_id, Transition::Activate).await?;
        Ok(Response::new(pb::ActivateJwtAuthorityResponse { activated_authority: Some(state) }))
    }

    async fn taint_jwt_authority(
        &self,
        request: Request<pb::TaintJwtAuthorityRequest>,
    ) -> Result<Response<pb::TaintJwtAuthorityResponse>, Status> {
        let state = self.change(AuthorityKind::Jwt, &request.get_ref().authority_id, Transition::Taint).await?;
        Ok(Response::new(pb::TaintJwtAuthorityResponse { tainted_authority: Some(state) }))
    }

    async fn revoke_jwt_authority(
        &self,
        request: Request<pb::RevokeJwtAuthorityRequest>,
    ) -> Result<Response<pb::RevokeJwtAuthorityResponse>, Status> {
        let state = self.change(AuthorityKind::Jwt, &request.get_ref().authority_id, Transition::Revoke).await?;
        Ok(Response::new(pb::RevokeJwtAuthorityResponse { revoked_authority: Some(state) }))
    }

    async fn get_x509_authority_state(
        &self,
        _: Request<pb::GetX509AuthorityStateRequest>,
    ) -> Result<Response<pb::GetX509AuthorityStateResponse>, Status> {
        let s = self.states(AuthorityKind::X509).await?;
        Ok(Response::new(pb::GetX509AuthorityStateResponse {
            active: s.active.map(state_pb),
            prepared: s.prepared.map(state_pb),
            old: s.old.map(state_pb),
        }))
    }

    async fn prepare_x509_authority(
        &self,
        _: Request<pb::PrepareX509AuthorityRequest>,
    ) -> Result<Response<pb::PrepareX509AuthorityResponse>, Status> {
        Ok(Response::new(pb::PrepareX509AuthorityResponse {
            prepared_authority: Some(self.prepare(AuthorityKind::X509).await?),
        }))
    }

    async fn activate_x509_authority(
        &self,
        request: Request<pb::ActivateX509AuthorityRequest>,
    ) -> Result<Response<pb::ActivateX509AuthorityResponse>, Status> {
        let state = self.change(AuthorityKind::X509, &request.get_ref().authority_id, Transition::Activate).await?;
        Ok(Response::new(pb::ActivateX509AuthorityResponse { activated_authority: Some(state) }))
    }

    async fn taint_x509_authority(
        &self,
        request: Request<pb::TaintX509AuthorityRequest>,
    ) -> Result<Response<pb::TaintX509AuthorityResponse>, Status> {
        let state = self.change(AuthorityKind::X509, &request.get_ref().authority_id, Transition::Taint).await?;
        Ok(Response::new(pb::TaintX509AuthorityResponse { tainted_authority: Some(state) }))
    }

    async fn taint_x509_upstream_authority(
        &self,
        request: Request<pb::TaintX509UpstreamAuthorityRequest>,
    ) -> Result<Response<pb::TaintX509UpstreamAuthorityResponse>, Status> {
        let key_id = self.change_upstream(&request.get_ref().subject_key_id, UpstreamChange::Taint).await?;
        Ok(Response::new(pb::TaintX509UpstreamAuthorityResponse { upstream_authority_subject_key_id: key_id }))
    }

    async fn revoke_x509_authority(
        &self,
        request: Request<pb::RevokeX509AuthorityRequest>,
    ) -> Result<Response<pb::RevokeX509AuthorityResponse>, Status> {
        let state = self.change(AuthorityKind::X509, &request.get_ref().authority_id, Transition::Revoke).await?;
        Ok(Response::new(pb::RevokeX509AuthorityResponse { revoked_authority: Some(state) }))
    }

    async fn revoke_x509_upstream_authority(
        &self,
        request: Request<pb::RevokeX509UpstreamAuthorityRequest>,
    ) -> Result<Response<pb::RevokeX509UpstreamAuthorityResponse>, Status> {
        let key_id = self.change_upstream(&request.get_ref().subject_key_id, UpstreamChange::Revoke).await?;
        Ok(Response::new(pb::RevokeX509UpstreamAuthorityResponse { upstream_authority_subject_key_id: key_id }))
    }
}
