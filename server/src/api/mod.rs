//! SPIRE's server APIs (`spire.api.server.*.v1`), one module per service. Today they are
//! served to admin callers on the admin socket; the agent-facing calls and the network
//! listener with mTLS authorization come next.

pub mod agent;
pub mod agent_auth;
pub mod bundle;
pub mod caller;
pub mod convert;
pub mod debug;
pub mod entry;
pub mod health;
pub mod listener;
pub mod local_authority;
pub mod svid;

use std::sync::Arc;
use std::time::Instant;

use raft_store::node::Replica;
use tonic::Status;

use crate::ca::replicated::ClusterCa;
use crate::cluster::runtime::ClusterRuntime;

/// What every service needs: the replica (once there is one), the CA, and the start time.
#[derive(Clone)]
pub struct ApiContext {
    pub runtime: Arc<ClusterRuntime>,
    pub ca: ClusterCa,
    pub started: Instant,
    /// SPIFFE IDs whose SVIDs may call admin APIs over the network (`server.admin_ids`).
    pub admin_ids: Vec<identity::SpiffeId>,
    /// Which node attestors agents may use.
    pub node_attestors: crate::config::plugins::NodeAttestorConfig,
    /// The x509pop attestor with its CA bundles, when enabled.
    pub x509pop: Option<Arc<crate::node_attestor::x509pop::X509Pop>>,
    /// Lifetime of agent SVIDs; `None`: the X.509-SVID default.
    pub agent_ttl: Option<std::time::Duration>,
}

impl ApiContext {
    /// Admin calls: from the admin socket, or from an SVID whose ID is listed in
    /// `admin_ids` or is the SPIFFE ID of a registration entry marked `admin`.
    pub async fn require_admin<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        match caller::caller_of(request) {
            caller::Caller::Local => Ok(()),
            caller::Caller::Peer { id, .. } if self.admin_ids.contains(&id) => Ok(()),
            caller::Caller::Peer { id, .. } => {
                let replica = self.replica().await?;
                let entries = replica.local_reader().entries_by_spiffe_id(&id.to_string()).await.map_err(read_failed)?;
                if entries.iter().any(|e| e.admin) {
                    Ok(())
                } else {
                    Err(Status::permission_denied(format!("{id} may not call admin APIs")))
                }
            }
            caller::Caller::Anonymous => Err(Status::permission_denied("admin APIs need the admin socket or an admin SVID")),
        }
    }

    /// The running replica, or Unavailable while this server belongs to no cluster.
    pub async fn replica(&self) -> Result<Arc<Replica>, Status> {
        self.runtime.replica().await.ok_or_else(|| Status::unavailable("this server belongs to no cluster yet"))
    }
}

/// A read that failed inside the store.
pub fn read_failed(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("cannot read the replicated state: {e}"))
}
