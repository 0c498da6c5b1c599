//! The admin socket (`agent.admin_socket_path`): SPIRE's agent debug API (`GetInfo`), for
//! operators on the node. The socket is created owner-only (0600): what it tells is for
//! the agent's operator, not for workloads.

use std::sync::Arc;

use proto::spire::agent::debug::v1 as pb;
use proto::spire::agent::debug::v1::debug_server::Debug;
use proto::spire::api::types::Spiffeid;
use tonic::{Request, Response, Status};

use crate::cache::Cache;
use crate::status::AgentStatus;
use crate::workload::api::WorkloadApi;

/// The debug service.
pub struct DebugApi {
    pub status: Arc<AgentStatus>,
    pub cache: Cache,
    pub workload: WorkloadApi,
}

fn cert(der: &[u8]) -> pb::get_info_response::Cert {
    use x509_parser::prelude::FromDer;
    let Ok((_, parsed)) = x509_parser::certificate::X509Certificate::from_der(der) else {
        return pb::get_info_response::Cert { id: None, expires_at: 0, subject: "(unparsable certificate)".into() };
    };
    let id = identity::x509::certificate_facts(der)
        .ok()
        .and_then(|facts| facts.spiffe_ids.into_iter().next())
        .map(|id| Spiffeid { trust_domain: id.trust_domain().to_string(), path: id.path().to_string() });
    pb::get_info_response::Cert {
        id,
        expires_at: parsed.validity().not_after.timestamp(),
        subject: parsed.subject().to_string(),
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[tonic::async_trait]
impl Debug for DebugApi {
    async fn get_info(&self, _request: Request<pb::GetInfoRequest>) -> Result<Response<pb::GetInfoResponse>, Status> {
        let x509 = count(self.cache.current().svids.len());
        Ok(Response::new(pb::GetInfoResponse {
            svid_chain: self.status.svid_chain().iter().map(|der| cert(der)).collect(),
            uptime: i32::try_from(self.status.uptime().as_secs()).unwrap_or(i32::MAX),
            svids_count: x509,
            last_sync_success: self.status.last_sync_success().map_or(0, |t| t.unix_timestamp()),
            cached_x509_svids_count: x509,
            cached_jwt_svids_count: count(self.workload.cached_jwt_count()),
            cached_svidstore_x509_svids_count: 0,
        }))
    }
}
