//! `testudo.admin.v1.FederationStatus`: how the refresh of each federated bundle is going
//! (last attempt, last success, next due time, last error), from the replicated schedule,
//! so any replica answers what the leader recorded.

use proto::admin::federation_status_server::FederationStatus;
use proto::admin::{BundleRefresh, ListRefreshesRequest, ListRefreshesResponse};
use tonic::{Request, Response, Status};

use super::{read_failed, ApiContext};

pub struct FederationStatusService {
    pub context: ApiContext,
}

#[tonic::async_trait]
impl FederationStatus for FederationStatusService {
    async fn list_refreshes(
        &self,
        request: Request<ListRefreshesRequest>,
    ) -> Result<Response<ListRefreshesResponse>, Status> {
        let wanted = request.into_inner().trust_domain;
        let wanted = wanted.trim_start_matches("spiffe://");
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let relationships = reader.list_relationships().await.map_err(read_failed)?;
        let schedule = reader.federation_refreshes().await.map_err(read_failed)?;
        let refreshes: Vec<BundleRefresh> = relationships
            .iter()
            .map(|r| r.trust_domain.name())
            .filter(|td| wanted.is_empty() || *td == wanted)
            .map(|td| {
                let state = schedule.get(td).cloned().unwrap_or_default();
                BundleRefresh {
                    trust_domain: td.to_owned(),
                    last_attempt: state.last_attempt,
                    last_success: state.last_success,
                    next_due: state.next_due,
                    last_error: state.last_error,
                    failures: state.failures,
                    bundle_sequence: state.last_sequence,
                }
            })
            .collect();
        if !wanted.is_empty() && refreshes.is_empty() {
            return Err(Status::not_found(format!("no federation relationship with {wanted}")));
        }
        Ok(Response::new(ListRefreshesResponse { refreshes }))
    }
}
