//! `spire.api.server.bundle.v1.Bundle`: the reads of the local and federated bundles.

use proto::spire::api::server::bundle::v1 as pb;
use proto::spire::api::server::bundle::v1::bundle_server::Bundle;
use proto::spire::api::types;
use raft_store::BundleScope;
use tonic::{Request, Response, Status};

use raft_store::command::{AppendBundle, DeleteBundle, SetBundle};

use super::convert::{bundle_from_pb, bundle_to_pb, jwt_key_checked, jwt_key_to_stored};
use super::{item_status, read_failed, ApiContext};

pub struct BundleService {
    pub context: ApiContext,
}

/// Most bundles one batch call may carry.
const MAX_BATCH: usize = 100;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Update,
    Set,
}

impl BundleService {
    async fn append_local(&self, command: AppendBundle) -> Result<raft_store::model::StoredBundle, Status> {
        self.context.write(command).await?.map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// Creates, replaces or upserts federated bundles, each item answered on its own. An
    /// update with `input_mask` changes only the masked fields of the stored bundle (the
    /// sequence number is the server's: every change bumps it).
    async fn set_federated(
        &self,
        bundles: &[types::Bundle],
        input_mask: Option<&types::BundleMask>,
        mask: Option<&types::BundleMask>,
        mode: Mode,
    ) -> Result<Vec<(Option<types::Status>, Option<types::Bundle>)>, Status> {
        if bundles.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "bundle: {} items; at most {MAX_BATCH} per call",
                bundles.len()
            )));
        }
        let replica = self.context.replica()?;
        let mut results = Vec::with_capacity(bundles.len());
        for (i, bundle) in bundles.iter().enumerate() {
            let merged;
            let bundle = match (mode, input_mask) {
                (Mode::Update, Some(input)) => {
                    let td = bundle.trust_domain.trim_start_matches("spiffe://");
                    let reader = replica.linearizable_reader().await.map_err(read_failed)?;
                    let Some(stored) = reader.bundle(BundleScope::Federated, td).await.map_err(read_failed)? else {
                        results.push((item_status(tonic::Code::NotFound, format!("no bundle for {td}")), None));
                        continue;
                    };
                    let mut base = bundle_to_pb(&stored, None);
                    if input.x509_authorities {
                        base.x509_authorities = bundle.x509_authorities.clone();
                    }
                    if input.jwt_authorities {
                        base.jwt_authorities = bundle.jwt_authorities.clone();
                    }
                    if input.refresh_hint {
                        base.refresh_hint = bundle.refresh_hint;
                    }
                    merged = base;
                    &merged
                }
                _ => bundle,
            };
            let checked = match bundle_from_pb(bundle, &format!("bundle[{i}]")) {
                Ok(b) if b.trust_domain == self.context.ca.config.trust_domain => Err(Status::invalid_argument(
                    format!("bundle[{i}].trust_domain: the local trust domain is not federated"),
                )),
                other => other,
            };
            let stored = match checked {
                Err(status) => {
                    results.push((item_status(status.code(), status.message().to_owned()), None));
                    continue;
                }
                Ok(stored) => stored,
            };
            let reader = replica.linearizable_reader().await.map_err(read_failed)?;
            let exists =
                reader.bundle(BundleScope::Federated, stored.trust_domain.name()).await.map_err(read_failed)?.is_some();
            match (mode, exists) {
                (Mode::Create, true) => {
                    results.push((
                        item_status(
                            tonic::Code::AlreadyExists,
                            format!("bundle for {} already exists", stored.trust_domain.name()),
                        ),
                        None,
                    ));
                    continue;
                }
                (Mode::Update, false) => {
                    results.push((
                        item_status(tonic::Code::NotFound, format!("no bundle for {}", stored.trust_domain.name())),
                        None,
                    ));
                    continue;
                }
                _ => {}
            }
            match self.context.write(SetBundle { scope: BundleScope::Federated, bundle: stored }).await? {
                Ok(saved) => results.push((item_status(tonic::Code::Ok, "OK"), Some(bundle_to_pb(&saved, mask)))),
                Err(e) => results.push((item_status(tonic::Code::InvalidArgument, e.to_string()), None)),
            }
        }
        Ok(results)
    }
}

#[tonic::async_trait]
impl Bundle for BundleService {
    async fn count_bundles(
        &self,
        _: Request<pb::CountBundlesRequest>,
    ) -> Result<Response<pb::CountBundlesResponse>, Status> {
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let federated = reader.list_bundles(BundleScope::Federated).await.map_err(read_failed)?.len();
        let local = reader
            .bundle(BundleScope::Local, self.context.ca.config.trust_domain.name())
            .await
            .map_err(read_failed)?
            .is_some();
        let count = i32::try_from(federated + usize::from(local)).unwrap_or(i32::MAX);
        Ok(Response::new(pb::CountBundlesResponse { count }))
    }

    async fn get_bundle(&self, request: Request<pb::GetBundleRequest>) -> Result<Response<types::Bundle>, Status> {
        let replica = self.context.replica()?;
        let td = &self.context.ca.config.trust_domain;
        let bundle = replica.local_reader().bundle(BundleScope::Local, td.name()).await.map_err(read_failed)?;
        let bundle = bundle.ok_or_else(|| {
            Status::not_found(format!("no bundle for {} yet: the CA has not published one", td.name()))
        })?;
        Ok(Response::new(bundle_to_pb(&bundle, request.get_ref().output_mask.as_ref())))
    }

    async fn append_bundle(
        &self,
        request: Request<pb::AppendBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        let request = request.into_inner();
        let td = self.context.ca.config.trust_domain.clone();
        let mut checked = identity::bundle::Bundle::new(td.clone());
        for (i, authority) in request.x509_authorities.iter().enumerate() {
            checked
                .add_x509_authority(&authority.asn1)
                .map_err(|e| Status::invalid_argument(format!("x509_authorities[{i}]: {e}")))?;
        }
        for (i, key) in request.jwt_authorities.iter().enumerate() {
            jwt_key_checked(key, &format!("jwt_authorities[{i}]"))?;
        }
        let x509 = raft_store::model::StoredBundle::from_bundle(&checked).x509_authorities;
        let jwt = request.jwt_authorities.iter().map(jwt_key_to_stored).collect();
        let command = AppendBundle { scope: BundleScope::Local, trust_domain: td.name().to_owned(), x509, jwt };
        let bundle = self.append_local(command).await?;
        Ok(Response::new(bundle_to_pb(&bundle, request.output_mask.as_ref())))
    }

    /// A downstream server (nested cluster) publishes its JWT key into this trust domain's
    /// bundle, so JWT-SVIDs it signs validate everywhere in the trust domain.
    async fn publish_jwt_authority(
        &self,
        request: Request<pb::PublishJwtAuthorityRequest>,
    ) -> Result<Response<pb::PublishJwtAuthorityResponse>, Status> {
        self.context.require_downstream(&request).await?;
        self.context.limits.push_key(&request).await?;
        let key =
            request.into_inner().jwt_authority.ok_or_else(|| Status::invalid_argument("jwt_authority: required"))?;
        jwt_key_checked(&key, "jwt_authority")?;
        let td = self.context.ca.config.trust_domain.clone();
        let command = AppendBundle {
            scope: BundleScope::Local,
            trust_domain: td.name().to_owned(),
            x509: vec![],
            jwt: vec![jwt_key_to_stored(&key)],
        };
        let bundle = self.append_local(command).await?;
        Ok(Response::new(pb::PublishJwtAuthorityResponse {
            jwt_authorities: bundle_to_pb(&bundle, None).jwt_authorities,
        }))
    }

    async fn list_federated_bundles(
        &self,
        request: Request<pb::ListFederatedBundlesRequest>,
    ) -> Result<Response<pb::ListFederatedBundlesResponse>, Status> {
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let bundles = reader.list_bundles(BundleScope::Federated).await.map_err(read_failed)?;
        let mask = request.get_ref().output_mask.as_ref();
        Ok(Response::new(pb::ListFederatedBundlesResponse {
            bundles: bundles.iter().map(|b| bundle_to_pb(b, mask)).collect(),
            next_page_token: String::new(),
        }))
    }

    /// Admins and agents (which serve federated bundles to their workloads), as in SPIRE.
    async fn get_federated_bundle(
        &self,
        request: Request<pb::GetFederatedBundleRequest>,
    ) -> Result<Response<types::Bundle>, Status> {
        let request = request.into_inner();
        let td = identity::TrustDomain::parse(&request.trust_domain)
            .map_err(|e| Status::invalid_argument(format!("trust_domain: {e}")))?;
        if td == self.context.ca.config.trust_domain {
            return Err(Status::invalid_argument("trust_domain: this is the local trust domain; use GetBundle"));
        }
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let bundle = reader.bundle(BundleScope::Federated, td.name()).await.map_err(read_failed)?;
        let bundle = bundle.ok_or_else(|| Status::not_found(format!("no federated bundle for {}", td.name())))?;
        Ok(Response::new(bundle_to_pb(&bundle, request.output_mask.as_ref())))
    }

    async fn batch_create_federated_bundle(
        &self,
        request: Request<pb::BatchCreateFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchCreateFederatedBundleResponse>, Status> {
        let request = request.into_inner();
        let results = self.set_federated(&request.bundle, None, request.output_mask.as_ref(), Mode::Create).await?;
        let results = results
            .into_iter()
            .map(|(status, bundle)| pb::batch_create_federated_bundle_response::Result { status, bundle })
            .collect();
        Ok(Response::new(pb::BatchCreateFederatedBundleResponse { results }))
    }

    async fn batch_update_federated_bundle(
        &self,
        request: Request<pb::BatchUpdateFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchUpdateFederatedBundleResponse>, Status> {
        let request = request.into_inner();
        let results = self
            .set_federated(&request.bundle, request.input_mask.as_ref(), request.output_mask.as_ref(), Mode::Update)
            .await?;
        let results = results
            .into_iter()
            .map(|(status, bundle)| pb::batch_update_federated_bundle_response::Result { status, bundle })
            .collect();
        Ok(Response::new(pb::BatchUpdateFederatedBundleResponse { results }))
    }

    async fn batch_set_federated_bundle(
        &self,
        request: Request<pb::BatchSetFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchSetFederatedBundleResponse>, Status> {
        let request = request.into_inner();
        let results = self.set_federated(&request.bundle, None, request.output_mask.as_ref(), Mode::Set).await?;
        let results = results
            .into_iter()
            .map(|(status, bundle)| pb::batch_set_federated_bundle_response::Result { status, bundle })
            .collect();
        Ok(Response::new(pb::BatchSetFederatedBundleResponse { results }))
    }

    async fn batch_delete_federated_bundle(
        &self,
        request: Request<pb::BatchDeleteFederatedBundleRequest>,
    ) -> Result<Response<pb::BatchDeleteFederatedBundleResponse>, Status> {
        let request = request.into_inner();
        if request.trust_domains.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!("trust_domains: at most {MAX_BATCH} per call")));
        }
        if request.mode != pb::batch_delete_federated_bundle_request::Mode::Restrict as i32 {
            return Err(Status::invalid_argument("mode: only RESTRICT is supported"));
        }
        let mut results = Vec::with_capacity(request.trust_domains.len());
        for name in request.trust_domains {
            let status = match identity::TrustDomain::parse(name.trim_start_matches("spiffe://")) {
                Err(e) => item_status(tonic::Code::InvalidArgument, format!("trust_domains: {e}")),
                Ok(td) if td == self.context.ca.config.trust_domain => {
                    item_status(tonic::Code::InvalidArgument, "trust_domains: the local bundle cannot be deleted")
                }
                Ok(td) => {
                    let command = DeleteBundle { scope: BundleScope::Federated, trust_domain: td.name().to_owned() };
                    match self.context.write(command).await? {
                        Ok(()) => item_status(tonic::Code::Ok, "OK"),
                        Err(e) => item_status(tonic::Code::NotFound, e.to_string()),
                    }
                }
            };
            results.push(pb::batch_delete_federated_bundle_response::Result { status, trust_domain: name });
        }
        Ok(Response::new(pb::BatchDeleteFederatedBundleResponse { results }))
    }
}
