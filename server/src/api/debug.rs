//! `spire.api.server.debug.v1.Debug`: uptime and counts.

use proto::spire::api::server::debug::v1 as pb;
use proto::spire::api::server::debug::v1::debug_server::Debug;
use raft_store::BundleScope;
use tonic::{Request, Response, Status};

use super::{read_failed, ApiContext};

pub struct DebugService {
    pub context: ApiContext,
}

/// Counting pages through a table; the page size bounds each read.
const PAGE: usize = 1000;

#[tonic::async_trait]
impl Debug for DebugService {
    async fn get_info(&self, _: Request<pb::GetInfoRequest>) -> Result<Response<pb::GetInfoResponse>, Status> {
        let replica = self.context.replica()?;
        let reader = replica.local_reader();
        let (mut entries, mut after) = (0usize, None);
        loop {
            let page = reader.list_entries(after, PAGE).await.map_err(read_failed)?;
            entries += page.items.len();
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let (mut agents, mut after) = (0usize, None);
        loop {
            let page = reader.list_agents(after, PAGE).await.map_err(read_failed)?;
            agents += page.items.len();
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let federated = reader.list_bundles(BundleScope::Federated).await.map_err(read_failed)?.len();
        let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        Ok(Response::new(pb::GetInfoResponse {
            svid_chain: vec![],
            uptime: i32::try_from(self.context.started.elapsed().as_secs()).unwrap_or(i32::MAX),
            agents_count: count(agents),
            federated_bundles_count: count(federated),
            entries_count: count(entries),
        }))
    }
}
