//! `spire.api.server.bundle.v1.Bundle`: the reads of the local and federated bundles.

use proto::spire::api::server::bundle::v1 as pb;
use proto::spire::api::server::bundle::v1::bundle_server::Bundle;
use proto::spire::api::types;
use raft_store::BundleScope;
use tonic::{Request, Response, Status};

use super::convert::bundle_to_pb;
use super::{read_failed, ApiContext};

pub struct BundleService {
    pub context: ApiContext,
}

fn not_yet(call: &str) -> Status {
    Status::unimplemented(format!("{call} is not implemented by this server yet"))
}

#[tonic::async_trait]
impl Bundle for BundleService {
    async fn count_bundles(&self, request: Request<pb::CountBundlesRequest>) -> Result<Response<pb::CountBundlesResponse>, Status> {
        self.context.require_admin(&request)?;
        let replica = self.context.replica().await?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let federated = reader.list_bundles(BundleScope::Federated).await.map_err(read_failed)?.len();
        let local = reader.bundle(BundleScope::Local, self.context.ca.config.trust_domain.name()).await.map_err(read_failed)?.is_some();
        let count = i32::try_from(federated + usize::from(local)).unwrap_or(i32::MAX);
        Ok(Response::new(pb::CountBundlesResponse { count }))
    }

    async fn get_bundle(&self, request: Request<pb::GetBundleRequest>) -> Result<Response<types::Bundle>, Status> {
        let replica = self.context.replica().await?;
        let td = &self.context.ca.config.trust_domain;
        let bundle = replica.local_reader().bundle(BundleScope::Local, td.name()).await.map_err(read_failed)?;
        let bundle = bundle.ok_or_else(|| Status::not_found(format!("no bundle for {} yet: the CA has not published one", td.name())))?;
        Ok(Response::new(bundle_to_pb(&bundle, request.get_ref().output_mask.as_ref())))
    }

    async fn append_bundle(&self, request: Request<pb::AppendBundleRequest>) -> Result<Response<types::Bundle>, Status> {
        self.context.require_admin(&request)?;
        Err(not_yet("AppendBundle"))
    }

    async fn publish_jwt_authority(&self, request: Request<pb::PublishJwtAuthorityRequest>) -> Result<Response<pb::PublishJwtAuthorityResponse>, Status> {
        self.context.require_admin(&request)?;
        Err(not_yet("PublishJWTAuthority"))
    }

    async fn list_federated_bundles(&self, request: Request<pb::ListFederatedBundlesRequest>) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        self.context.require_admin(&request)?;
        let replica = self.context.replica().await?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let bundles = reader.list_bundles(BundleScope::Federated).await.map_err(read_failed)?;
        let mask = request.get_ref().output_mask.as_ref();
        Ok(Response::new(pb::ListFederatedBundlesResponse { bundles: bundles.iter().map(|b| bundle_to_pb(b, mask)).collect(), next_page_token: String::new() }))
    }

    async fn get_federated_bundle(&self, request: Request<pb::GetFederatedBundleRequest>) -> Result<Response<types::Bundle>, Status> {
        self.context.require_admin(&request)?;
        let request = request.into_inner();
        let td = identity::TrustDomain::parse(&request.trust_domain).map_err(|e| Status::invalid_argument(format!("trust_domain: {e}")))?;
        if td == self.context.ca.config.trust_domain {
            return Err(Status::invalid_argument("trust_domain: this is the local trust domain; use GetBundle"));
        }
        let replica = self.context.replica().await?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let bundle = reader.bundle(BundleScope::Federated, td.name()).await.map_err(read_failed)?;
        let bundle = bundle.ok_or_else(|| Status::not_found(format!("no federated bundle for {}", td.name())))?;
        Ok(Response::new(bundle_to_pb(&bundle, request.output_mask.as_ref())))
    }

    async fn batch_create_federated_bundle(&self, request: Request<pb::BatchCreateFederatedBundleRequest>) -> Result<Response<pb::BatchCreateFederatedBundleResponse>, Status> {
        self.context.require_admin(&request)?;
        Err(not_yet("BatchCreateFederatedBundle"))
    }

    async fn batch_update_federated_bundle(&self, request: Request<pb::BatchUpdateFederatedBundleRequest>) -> Result<Response<pb::BatchUpdateFederatedBundleResponse>, Status> {
        self.context.require_admin(&request)?;
        Err(not_yet("BatchUpdateFederatedBundle"))
    }

    async fn batch_set_federated_bundle(&self, request: Request<pb::BatchSetFederatedBundleRequest>) -> Result<Response<pb::BatchSetFederatedBundleResponse>, Status> {
        self.context.require_admin(&request)?;
        Err(not_yet("BatchSetFederatedBundle"))
    }

    async fn batch_delete_federated_bundle(&self, request: Request<pb::BatchDeleteFederatedBundleRequest>) -> Result<Response<pb::BatchDeleteFederatedBundleResponse>, Status> {
        self.context.require_admin(&request)?;
        Err(not_yet("BatchDeleteFederatedBundle"))
    }
}
