//! `spire.api.server.trustdomain.v1.TrustDomain`: the federation relationships, replicated.
//! Relationships declared in the config (`federates_with`) are listed like the others but
//! changed only in the config: the leader writes them back from it.

use std::time::Duration;

use identity::{SpiffeId, TrustDomain as Domain};
use proto::spire::api::server::trustdomain::v1 as pb;
use proto::spire::api::server::trustdomain::v1::trust_domain_server::TrustDomain;
use proto::spire::api::types;
use raft_store::command::{
    CreateFederationRelationship, DeleteFederationRelationship, RecordFederationRefresh, SetBundle,
    UpdateFederationRelationship,
};
use raft_store::model::{BundleEndpointProfile, FederationRelationship, StoredBundle};
use raft_store::{ApplyError, BundleScope};
use tonic::{Code, Request, Response, Status};

use super::convert::{bundle_from_pb, bundle_to_pb};
use super::{item_status, read_failed, ApiContext};

pub struct TrustDomainService {
    pub context: ApiContext,
}

/// Most relationships one batch call may carry, and one page may hold.
const MAX_BATCH: usize = 100;
const MAX_PAGE: usize = 500;
/// How long RefreshBundle waits for the leader to record the refresh it asked for.
const REFRESH_WAIT: Duration = Duration::from_secs(40);

const ALL: types::FederationRelationshipMask = types::FederationRelationshipMask {
    bundle_endpoint_url: true,
    bundle_endpoint_profile: true,
    trust_domain_bundle: true,
};

/// A trust domain name from the API (with or without `spiffe://`).
fn trust_domain(name: &str, field: &str) -> Result<Domain, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: missing trust domain")));
    }
    Domain::parse(name.trim_start_matches("spiffe://"))
        .map_err(|e| Status::invalid_argument(format!("{field}: failed to parse trust domain: {e}")))
}

/// A relationship from the API, checked; and the bundle it carries, if any.
fn relationship_from_pb(
    r: &types::FederationRelationship,
    own: &Domain,
    field: &str,
) -> Result<(FederationRelationship, Option<StoredBundle>), Status> {
    let td = trust_domain(&r.trust_domain, &format!("{field}.trust_domain"))?;
    if &td == own {
        return Err(Status::invalid_argument(format!(
            "{field}.trust_domain: unable to create federation relationship for server trust domain"
        )));
    }
    crate::federation::fetch::check_url(&r.bundle_endpoint_url)
        .map_err(|e| Status::invalid_argument(format!("{field}.bundle_endpoint_url: {e}")))?;
    use types::federation_relationship::BundleEndpointProfile as Profile;
    let profile = match &r.bundle_endpoint_profile {
        Some(Profile::HttpsWeb(_)) => BundleEndpointProfile::HttpsWeb,
        Some(Profile::HttpsSpiffe(p)) => BundleEndpointProfile::HttpsSpiffe {
            endpoint_spiffe_id: SpiffeId::parse(&p.endpoint_spiffe_id)
                .map_err(|e| Status::invalid_argument(format!("{field}.https_spiffe.endpoint_spiffe_id: {e}")))?,
        },
        None => return Err(Status::invalid_argument(format!("{field}: bundle_endpoint_profile is required"))),
    };
    let bundle = match &r.trust_domain_bundle {
        None => None,
        Some(b) => {
            let stored = bundle_from_pb(b, &format!("{field}.trust_domain_bundle"))?;
            // The partner's bundle, or (an endpoint serving for another trust domain, as
            // SPIRE allows) the bundle of the endpoint SVID's trust domain; never ours.
            let endpoint_domain = match &profile {
                BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => Some(endpoint_spiffe_id.trust_domain()),
                BundleEndpointProfile::HttpsWeb => None,
            };
            if &stored.trust_domain == own
                || (stored.trust_domain != td && Some(&stored.trust_domain) != endpoint_domain)
            {
                return Err(Status::invalid_argument(format!(
                    "{field}.trust_domain_bundle: a bundle of {}, not of {} or of the endpoint's trust domain",
                    stored.trust_domain.name(),
                    td.name()
                )));
            }
            Some(stored)
        }
    };
    Ok((
        FederationRelationship { trust_domain: td, bundle_endpoint_url: r.bundle_endpoint_url.clone(), profile },
        bundle,
    ))
}

fn relationship_to_pb(
    r: &FederationRelationship,
    bundle: Option<&StoredBundle>,
    mask: Option<&types::FederationRelationshipMask>,
) -> types::FederationRelationship {
    use types::federation_relationship::BundleEndpointProfile as Profile;
    let mask = mask.unwrap_or(&ALL);
    types::FederationRelationship {
        trust_domain: r.trust_domain.name().to_owned(),
        bundle_endpoint_url: if mask.bundle_endpoint_url { r.bundle_endpoint_url.clone() } else { String::new() },
        bundle_endpoint_profile: mask.bundle_endpoint_profile.then(|| match &r.profile {
            BundleEndpointProfile::HttpsWeb => Profile::HttpsWeb(types::HttpsWebProfile {}),
            BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id } => {
                Profile::HttpsSpiffe(types::HttpsspiffeProfile { endpoint_spiffe_id: endpoint_spiffe_id.to_string() })
            }
        }),
        trust_domain_bundle: if mask.trust_domain_bundle { bundle.map(|b| bundle_to_pb(b, None)) } else { None },
    }
}

fn failed(code: Code, message: impl Into<String>) -> Option<types::Status> {
    item_status(code, message)
}

impl TrustDomainService {
    fn own(&self) -> &Domain {
        &self.context.ca.config.trust_domain
    }

    fn configured(&self, td: &Domain) -> bool {
        self.context.federates_with.iter().any(|r| &r.trust_domain == td)
    }

    /// The relationship as answered: with the bundle held now when the mask asks for it.
    async fn answer(
        &self,
        r: &FederationRelationship,
        mask: Option<&types::FederationRelationshipMask>,
    ) -> Result<types::FederationRelationship, Status> {
        let with_bundle = mask.unwrap_or(&ALL).trust_domain_bundle;
        let bundle = if with_bundle {
            let replica = self.context.replica()?;
            replica.local_reader().bundle(BundleScope::Federated, r.trust_domain.name()).await.map_err(read_failed)?
        } else {
            None
        };
        Ok(relationship_to_pb(r, bundle.as_ref(), mask))
    }

    /// Stores a relationship's bootstrap bundle.
    async fn set_bundle(&self, bundle: Option<StoredBundle>) -> Result<Option<types::Status>, Status> {
        let Some(bundle) = bundle else { return Ok(None) };
        Ok(match self.context.write(SetBundle { scope: BundleScope::Federated, bundle }).await? {
            Ok(_) => None,
            Err(e) => failed(Code::InvalidArgument, format!("trust_domain_bundle: {e}")),
        })
    }
}

fn batch_too_big(what: &str, n: usize) -> Result<(), Status> {
    if n > MAX_BATCH {
        return Err(Status::invalid_argument(format!("{what}: {n} items; at most {MAX_BATCH} per call")));
    }
    Ok(())
}

#[tonic::async_trait]
impl TrustDomain for TrustDomainService {
    async fn list_federation_relationships(
        &self,
        request: Request<pb::ListFederationRelationshipsRequest>,
    ) -> Result<Response<pb::ListFederationRelationshipsResponse>, Status> {
        let request = request.into_inner();
        let size = match usize::try_from(request.page_size) {
            Ok(0) => MAX_PAGE,
            Ok(n) => n.min(MAX_PAGE),
            Err(_) => return Err(Status::invalid_argument("page_size: cannot be negative")),
        };
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let all = reader.list_relationships().await.map_err(read_failed)?;
        let after = request.page_token;
        let page: Vec<_> = all.iter().filter(|r| after.is_empty() || r.trust_domain.name() > after.as_str()).collect();
        let more = page.len() > size;
        let mut relationships = Vec::with_capacity(size.min(page.len()));
        for r in page.iter().take(size) {
            relationships.push(self.answer(r, request.output_mask.as_ref()).await?);
        }
        let next_page_token =
            if more { relationships.last().map(|r| r.trust_domain.clone()).unwrap_or_default() } else { String::new() };
        Ok(Response::new(pb::ListFederationRelationshipsResponse {
            federation_relationships: relationships,
            next_page_token,
        }))
    }

    async fn get_federation_relationship(
        &self,
        request: Request<pb::GetFederationRelationshipRequest>,
    ) -> Result<Response<types::FederationRelationship>, Status> {
        let request = request.into_inner();
        let td = trust_domain(&request.trust_domain, "trust_domain")?;
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        let found = reader.relationship(td.name()).await.map_err(read_failed)?;
        let found = found.ok_or_else(|| Status::not_found("federation relationship does not exist"))?;
        Ok(Response::new(self.answer(&found, request.output_mask.as_ref()).await?))
    }

    async fn batch_create_federation_relationship(
        &self,
        request: Request<pb::BatchCreateFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchCreateFederationRelationshipResponse>, Status> {
        let request = request.into_inner();
        batch_too_big("federation_relationships", request.federation_relationships.len())?;
        let mut results = Vec::new();
        for (i, item) in request.federation_relationships.iter().enumerate() {
            let field = format!("federation_relationships[{i}]");
            let (relationship, bundle) = match relationship_from_pb(item, self.own(), &field) {
                Ok(checked) => checked,
                Err(status) => {
                    results.push(pb::batch_create_federation_relationship_response::Result {
                        status: failed(status.code(), status.message()),
                        federation_relationship: None,
                    });
                    continue;
                }
            };
            let (status, created) = match self.context.write(CreateFederationRelationship(relationship)).await? {
                Ok(created) => match self.set_bundle(bundle).await? {
                    Some(status) => (Some(status), None),
                    None => (failed(Code::Ok, "OK"), Some(self.answer(&created, request.output_mask.as_ref()).await?)),
                },
                Err(ApplyError::AlreadyExists(m)) => (failed(Code::AlreadyExists, m), None),
                Err(e) => (failed(Code::InvalidArgument, e.to_string()), None),
            };
            results.push(pb::batch_create_federation_relationship_response::Result {
                status,
                federation_relationship: created,
            });
        }
        Ok(Response::new(pb::BatchCreateFederationRelationshipResponse { results }))
    }

    async fn batch_update_federation_relationship(
        &self,
        request: Request<pb::BatchUpdateFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchUpdateFederationRelationshipResponse>, Status> {
        let request = request.into_inner();
        batch_too_big("federation_relationships", request.federation_relationships.len())?;
        let input = request.input_mask.unwrap_or(ALL);
        let replica = self.context.replica()?;
        let mut results = Vec::new();
        for (i, item) in request.federation_relationships.iter().enumerate() {
            let field = format!("federation_relationships[{i}]");
            let result = async {
                let td = trust_domain(&item.trust_domain, &format!("{field}.trust_domain"))?;
                if self.configured(&td) {
                    return Err(Status::failed_precondition(format!(
                        "{field}: the relationship with {} is declared in the server config (federates_with); \
                         change it there",
                        td.name()
                    )));
                }
                let reader = replica.linearizable_reader().await.map_err(read_failed)?;
                let stored = reader
                    .relationship(td.name())
                    .await
                    .map_err(read_failed)?
                    .ok_or_else(|| Status::not_found("federation relationship does not exist"))?;
                // Unmasked fields keep their stored values; the result is checked whole.
                let mut merged = relationship_to_pb(&stored, None, None);
                if input.bundle_endpoint_url {
                    merged.bundle_endpoint_url = item.bundle_endpoint_url.clone();
                }
                if input.bundle_endpoint_profile {
                    merged.bundle_endpoint_profile = item.bundle_endpoint_profile.clone();
                }
                if input.trust_domain_bundle {
                    merged.trust_domain_bundle = item.trust_domain_bundle.clone();
                }
                let (relationship, bundle) = relationship_from_pb(&merged, self.own(), &field)?;
                match self.context.write(UpdateFederationRelationship(relationship)).await? {
                    Ok(updated) => Ok((updated, bundle)),
                    Err(ApplyError::NotFound(_)) => Err(Status::not_found("federation relationship does not exist")),
                    Err(e) => Err(Status::invalid_argument(e.to_string())),
                }
            }
            .await;
            let (status, updated) = match result {
                Ok((updated, bundle)) => match self.set_bundle(bundle).await? {
                    Some(status) => (Some(status), None),
                    None => (failed(Code::Ok, "OK"), Some(self.answer(&updated, request.output_mask.as_ref()).await?)),
                },
                Err(status) if status.code() == Code::Unavailable => return Err(status),
                Err(status) => (failed(status.code(), status.message()), None),
            };
            results.push(pb::batch_update_federation_relationship_response::Result {
                status,
                federation_relationship: updated,
            });
        }
        Ok(Response::new(pb::BatchUpdateFederationRelationshipResponse { results }))
    }

    async fn batch_delete_federation_relationship(
        &self,
        request: Request<pb::BatchDeleteFederationRelationshipRequest>,
    ) -> Result<Response<pb::BatchDeleteFederationRelationshipResponse>, Status> {
        let request = request.into_inner();
        batch_too_big("trust_domains", request.trust_domains.len())?;
        let mut results = Vec::new();
        for name in request.trust_domains {
            let status = match trust_domain(&name, "trust_domains") {
                Err(status) => failed(status.code(), status.message()),
                Ok(td) if self.configured(&td) => failed(
                    Code::FailedPrecondition,
                    format!("the relationship with {} is declared in the server config (federates_with)", td.name()),
                ),
                Ok(td) => {
                    match self
                        .context
                        .write(DeleteFederationRelationship { trust_domain: td.name().to_owned() })
                        .await?
                    {
                        Ok(()) => failed(Code::Ok, "OK"),
                        Err(ApplyError::NotFound(_)) => failed(Code::NotFound, "federation relationship not found"),
                        Err(e) => failed(Code::Internal, e.to_string()),
                    }
                }
            };
            results.push(pb::batch_delete_federation_relationship_response::Result { status, trust_domain: name });
        }
        Ok(Response::new(pb::BatchDeleteFederationRelationshipResponse { results }))
    }

    /// Makes the partner due now and waits until the leader has recorded the refresh:
    /// answers OK if it fetched the bundle, Unavailable with the endpoint's error if not.
    async fn refresh_bundle(&self, request: Request<pb::RefreshBundleRequest>) -> Result<Response<()>, Status> {
        let td = trust_domain(&request.get_ref().trust_domain, "trust_domain")?;
        let replica = self.context.replica()?;
        let reader = replica.linearizable_reader().await.map_err(read_failed)?;
        if reader.relationship(td.name()).await.map_err(read_failed)?.is_none() {
            return Err(Status::not_found(format!("no relationship with trust domain {:?}", td.name())));
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let deadline = tokio::time::Instant::now() + REFRESH_WAIT;
        // Make it due now (unless it is already), remembering the due time written: the
        // leader's record of the refresh replaces it.
        let marked = loop {
            let schedule = replica.local_reader().federation_refreshes().await.map_err(read_failed)?;
            let current = schedule.get(td.name()).cloned().unwrap_or_default();
            if current.next_due <= now {
                break current.next_due;
            }
            let due_now = RecordFederationRefresh {
                trust_domain: td.name().to_owned(),
                expected_next_due: current.next_due,
                refresh: raft_store::model::FederationRefresh { next_due: now, ..current },
                bundle: None,
            };
            let before_deadline = tokio::time::Instant::now() < deadline;
            match self.context.write(due_now).await {
                Ok(Ok(_)) => break now,
                // The leader recorded a refresh meanwhile: look again.
                Ok(Err(ApplyError::FailedPrecondition(_))) if before_deadline => continue,
                Ok(Err(e)) => return Err(Status::failed_precondition(e.to_string())),
                // A leader change: the mark is a compare-and-set, so asking again is safe.
                Err(status) if status.code() == Code::Unavailable && before_deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => return Err(status),
            }
        };
        loop {
            let schedule = replica.local_reader().federation_refreshes().await.map_err(read_failed)?;
            match schedule.get(td.name()) {
                Some(r) if r.next_due != marked && r.last_error.is_empty() => return Ok(Response::new(())),
                Some(r) if r.next_due != marked => {
                    return Err(Status::unavailable(format!("failed to refresh bundle: {}", r.last_error)))
                }
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(Status::deadline_exceeded("the leader did not refresh the bundle in time"))
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}
