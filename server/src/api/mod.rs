//! SPIRE's server APIs (`spire.api.server.*.v1`), one module per service. Today they are
//! served to admin callers on the admin socket; the agent-facing calls and the network
//! listener with mTLS authorization come next.

pub mod agent;
pub mod bundle;
pub mod convert;
pub mod debug;
pub mod entry;
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
}

impl ApiContext {
    /// The running replica, or Unavailable while this server belongs to no cluster.
    pub async fn replica(&self) -> Result<Arc<Replica>, Status> {
        self.runtime.replica().await.ok_or_else(|| Status::unavailable("this server belongs to no cluster yet"))
    }
}

/// A read that failed inside the store.
pub fn read_failed(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("cannot read the replicated state: {e}"))
}
