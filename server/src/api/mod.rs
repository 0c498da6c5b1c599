//! SPIRE's server APIs (`spire.api.server.*.v1`), one module per service, served on the
//! admin socket and on the network listener; who may call what is in docs/api.md.

pub mod agent;
pub mod agent_auth;
pub mod authorize;
pub mod bundle;
pub mod caller;
pub mod convert;
pub mod debug;
pub mod entry;
pub mod entry_notifications;
pub mod federation_status;
pub mod health;
pub mod listener;
pub mod local_authority;
pub mod policy;
pub mod rate_limits;
pub mod request_id;
pub mod svid;
pub mod trust_domain;
pub mod upstream_status;

use std::sync::Arc;
use std::time::Instant;

use identity::SpiffeId;
use proto::reason::Reason;
use proto::spire::api::types;
use raft_store::node::ClusterError;
use raft_store::node::Replica;
use raft_store::{ApplyError, Write};
use tonic::{Code, Status};

use crate::ca::replicated::ClusterCa;
use crate::cluster::runtime::{ClusterRuntime, Member, NotServing};

/// What every service needs: the replica (once there is one), the CA, and the start time.
#[derive(Clone)]
pub struct ApiContext {
    pub runtime: Arc<ClusterRuntime>,
    pub ca: ClusterCa,
    pub started: Instant,
    /// SPIFFE IDs whose SVIDs may call admin APIs over the network (`server.admin_ids`).
    pub admin_ids: Vec<identity::SpiffeId>,
    /// The node attestors agents may use, by name.
    pub node_attestors: Arc<crate::node_attestor::NodeAttestors>,
    /// Lifetime of agent SVIDs; `None`: the X.509-SVID default.
    pub agent_ttl: Option<std::time::Duration>,
    /// Per-caller rate limits (`server.ratelimit`).
    pub limits: Arc<rate_limits::RateLimits>,
    /// Relationships the config declares (`server.federation.federates_with`); the API
    /// does not change them.
    pub federates_with: Arc<Vec<raft_store::model::FederationRelationship>>,
}

impl ApiContext {
    /// Whether SVID `id` may call admin APIs: it is listed in `admin_ids`, or is the SPIFFE
    /// ID of a registration entry marked `admin`.
    pub async fn is_admin(&self, id: &identity::SpiffeId) -> Result<bool, Status> {
        if self.admin_ids.contains(id) {
            return Ok(true);
        }
        let entries =
            self.replica()?.local_reader().entries_by_spiffe_id(&id.to_string()).await.map_err(read_failed)?;
        Ok(entries.iter().any(|e| e.admin))
    }

    /// The registration entry marked `downstream` of SVID `id` (a nested cluster), if any.
    pub async fn downstream_entry(
        &self,
        id: &identity::SpiffeId,
    ) -> Result<Option<raft_store::model::RegistrationEntry>, Status> {
        let entries =
            self.replica()?.local_reader().entries_by_spiffe_id(&id.to_string()).await.map_err(read_failed)?;
        Ok(entries.into_iter().find(|e| e.downstream))
    }

    /// The running member, or Unavailable at once (with the reason) while this server
    /// belongs to no cluster, forms or joins one, or shuts down.
    pub fn member(&self) -> Result<Arc<Member>, Status> {
        self.runtime.member().map_err(not_serving)
    }

    /// The running replica, or Unavailable as for [`Self::member`].
    pub fn replica(&self) -> Result<Arc<Replica>, Status> {
        Ok(self.member()?.replica.clone())
    }

    /// The member, with its in-memory views brought up to everything this replica had
    /// applied when the call began (so a caller sees its own earlier writes).
    pub async fn current(&self) -> Result<Arc<Member>, Status> {
        let member = self.member()?;
        let applied = member.replica.applied().current_revision();
        member
            .views
            .reach(applied)
            .await
            .map_err(|behind| Reason::ClusterUnavailable.status(Code::Unavailable, format!("try again: {behind}")))?;
        Ok(member)
    }

    /// The active authorities, from this replica's views.
    pub async fn signing(&self) -> Result<Arc<crate::ca::Signing>, Status> {
        self.current()
            .await?
            .views
            .signing()
            .ok_or_else(|| Reason::SigningUnavailable.status(Code::Unavailable, "this cluster has no active CA yet"))
    }

    /// The calling downstream cluster's registration entry (the authorization table let
    /// only such callers in).
    pub async fn require_downstream<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<raft_store::model::RegistrationEntry, Status> {
        let caller::Caller::Peer { id, .. } = caller::caller_of(request) else {
            return Err(Status::permission_denied("this call needs the SVID of a downstream workload"));
        };
        self.downstream_entry(&id)
            .await?
            .ok_or_else(|| Status::permission_denied(format!("{id} has no registration entry marked downstream")))
    }

    /// The entries `agent` may mint for, by id, from this replica's entry cache.
    pub async fn authorized_entries(
        &self,
        agent: &raft_store::model::AttestedAgent,
    ) -> Result<std::collections::BTreeMap<String, Arc<raft_store::model::RegistrationEntry>>, Status> {
        let member = self.current().await?;
        member
            .views
            .entries()
            .authorized(agent, &self.server_id()?, time::OffsetDateTime::now_utc().unix_timestamp())
            .map_err(|e| Status::resource_exhausted(e.to_string()))
    }

    /// Commits a command through the cluster and returns what apply answered it with.
    /// Under the call's request id when the caller sent one ([`request_id`]).
    pub async fn write<W: Write>(&self, command: W) -> Result<W::Output, Status> {
        let replica = self.replica()?;
        match request_id::next() {
            Some(id) => replica.write_as(command, id).await,
            None => replica.write(command).await,
        }
        .map_err(write_failed)
    }

    /// This trust domain's server ID, `spiffe://<td>/spire/server`.
    pub fn server_id(&self) -> Result<SpiffeId, Status> {
        server_id(&self.ca.config.trust_domain).map_err(|e| Status::internal(e.to_string()))
    }
}

/// The SPIFFE ID servers present, and node aliases are parented to.
pub fn server_id(trust_domain: &identity::TrustDomain) -> Result<SpiffeId, identity::IdError> {
    SpiffeId::parse(&format!("spiffe://{}/spire/server", trust_domain.name()))
}

/// The gRPC code for a refusal from apply.
pub fn apply_code(e: &ApplyError) -> Code {
    match e {
        ApplyError::AlreadyExists(_) => Code::AlreadyExists,
        ApplyError::NotFound(_) => Code::NotFound,
        ApplyError::FailedPrecondition(_) => Code::FailedPrecondition,
        ApplyError::InvalidArgument(_) => Code::InvalidArgument,
    }
}

/// A refusal from apply as the answer to a whole call.
pub fn apply_status(e: &ApplyError) -> Status {
    Status::new(apply_code(e), e.to_string())
}

/// The status of one item of a batch call.
pub fn item_status(code: Code, message: impl Into<String>) -> Option<types::Status> {
    Some(types::Status { code: code as i32, message: message.into() })
}

/// A read that failed inside the store.
pub fn read_failed(e: impl std::fmt::Display) -> Status {
    Reason::ClusterUnavailable.status(Code::Unavailable, format!("cannot read the replicated state: {e}"))
}

/// A write the cluster did not commit (or whose fate is unknown).
pub fn write_failed(e: ClusterError) -> Status {
    match e {
        ClusterError::RequestIdReused(_) => Status::failed_precondition(e.to_string()),
        ClusterError::Uncertain(_) => Reason::OutcomeUnknown.status(Code::Unavailable, e.to_string()),
        ClusterError::MismatchedOutcome(_) => Status::internal(e.to_string()),
        e => {
            Reason::ClusterUnavailable.status(Code::Unavailable, format!("the cluster did not commit the change: {e}"))
        }
    }
}

/// The answer while this server has no cluster to serve from.
pub fn not_serving(why: NotServing) -> Status {
    Reason::NoCluster.status(Code::Unavailable, why.to_string())
}
