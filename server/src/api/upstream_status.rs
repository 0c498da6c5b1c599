//! `testudo.admin.v1.UpstreamStatus`: how a nested cluster's calls to its upstream are
//! going, from the replicated state, so any replica answers what the leader recorded.

use proto::admin::upstream_status_server::UpstreamStatus;
use proto::admin::{GetUpstreamStatusRequest, UpstreamStatusResponse};
use tonic::{Request, Response, Status};

use super::{read_failed, ApiContext};

pub struct UpstreamStatusService {
    pub context: ApiContext,
}

#[tonic::async_trait]
impl UpstreamStatus for UpstreamStatusService {
    async fn get_upstream_status(
        &self,
        _: Request<GetUpstreamStatusRequest>,
    ) -> Result<Response<UpstreamStatusResponse>, Status> {
        let replica = self.context.replica()?;
        let status = replica.local_reader().upstream_status().await.map_err(read_failed)?;
        Ok(Response::new(UpstreamStatusResponse {
            last_success: status.last_success,
            last_error_at: status.last_error_at,
            last_error: status.last_error,
        }))
    }
}
