//! `spire.api.server.svid.v1.SVID`: admin minting of X.509- and JWT-SVIDs with the cluster's
//! active CA, on whichever replica is called.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use identity::SpiffeId;
use proto::spire::api::server::svid::v1 as pb;
use proto::spire::api::server::svid::v1::svid_server::Svid;
use proto::spire::api::types;
use tonic::{Request, Response, Status};

use super::convert::{spiffe_id_from_pb, spiffe_id_to_pb};
use super::entry::check_workload_id;
use super::{item_status, ApiContext};
use crate::ca::{CaError, MintRefusal};

pub struct SvidService {
    pub context: ApiContext,
}

/// The TTL a caller asked for: 0 means the server's default.
fn ttl(seconds: i32) -> Result<Option<Duration>, Status> {
    match seconds {
        0 => Ok(None),
        s if s < 0 => Err(Status::invalid_argument("ttl: must not be negative")),
        s => Ok(Some(Duration::from_secs(s.unsigned_abs().into()))),
    }
}

fn ca_error(e: CaError) -> Status {
    match e {
        CaError::NoActiveAuthority(_) => Status::unavailable(format!("{e}: the CA is still starting")),
        other if other.signing_unavailable() => Status::unavailable(other.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl Svid for SvidService {
    async fn mint_x509svid(
        &self,
        request: Request<pb::MintX509svidRequest>,
    ) -> Result<Response<pb::MintX509svidResponse>, Status> {
        let request = request.into_inner();
        if request.csr.is_empty() {
            return Err(Status::invalid_argument("csr: required"));
        }
        let csr = identity::x509::parse_csr(&request.csr).map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
        let [uri] = csr.uris.as_slice() else {
            return Err(Status::invalid_argument(format!(
                "csr: must have exactly one URI SAN, has {}",
                csr.uris.len()
            )));
        };
        let id = SpiffeId::parse(uri).map_err(|e| Status::invalid_argument(format!("csr: URI SAN {uri:?}: {e}")))?;
        check_workload_id(&id, &self.context.ca.config.trust_domain, "csr")?;
        let ttl = ttl(request.ttl)?;
        let ca = self.context.signing().await?;
        let started = std::time::Instant::now();
        let chain = ca.mint_x509_svid(id.clone(), csr.public_key, ttl, csr.dns_names).await.map_err(ca_error)?;
        metrics::histogram!("testudo_ca_sign_seconds", "kind" => "x509").record(started.elapsed().as_secs_f64());
        let leaf = chain.first().ok_or_else(|| Status::internal("the CA returned no certificate"))?;
        let expires_at = identity::x509::certificate_facts(leaf)
            .map_err(|e| Status::internal(e.to_string()))?
            .not_after
            .unix_timestamp();
        let svid =
            types::X509svid { cert_chain: chain, id: Some(spiffe_id_to_pb(&id)), expires_at, hint: String::new() };
        Ok(Response::new(pb::MintX509svidResponse { svid: Some(svid) }))
    }

    async fn mint_jwtsvid(
        &self,
        request: Request<pb::MintJwtsvidRequest>,
    ) -> Result<Response<pb::MintJwtsvidResponse>, Status> {
        let request = request.into_inner();
        let id = spiffe_id_from_pb(request.id.as_ref(), "id")?;
        check_workload_id(&id, &self.context.ca.config.trust_domain, "id")?;
        if request.audience.is_empty() || request.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience: at least one non-empty audience is required"));
        }
        let ttl = ttl(request.ttl)?;
        let ca = self.context.signing().await?;
        let started = std::time::Instant::now();
        let token = ca.mint_jwt_svid(id.clone(), request.audience, ttl).await.map_err(ca_error)?;
        metrics::histogram!("testudo_ca_sign_seconds", "kind" => "jwt").record(started.elapsed().as_secs_f64());
        let (issued_at, expires_at) = times_of(&token)?;
        let svid = types::Jwtsvid { token, id: Some(spiffe_id_to_pb(&id)), expires_at, issued_at, hint: String::new() };
        Ok(Response::new(pb::MintJwtsvidResponse { svid: Some(svid) }))
    }

    async fn batch_new_x509svid(
        &self,
        request: Request<pb::BatchNewX509svidRequest>,
    ) -> Result<Response<pb::BatchNewX509svidResponse>, Status> {
        let agent = super::agent_auth::require_agent(&request, &self.context).await?;
        let count = request.get_ref().params.len();
        if count > super::entry::MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "params: {count} items; at most {} per call",
                super::entry::MAX_BATCH
            )));
        }
        self.context.limits.x509_signing(&request, count).await?;
        self.context.limits.managed_signing(&agent.spiffe_id, count).await?;
        let params = request.into_inner().params;
        let authorized = self.context.authorized_entries(&agent).await?;
        let ca = self.context.signing().await?;
        // Authorization per item first; the authorized ones are minted in one batch.
        let mut results: Vec<Option<pb::batch_new_x509svid_response::Result>> = Vec::with_capacity(params.len());
        let mut requests = Vec::new();
        let mut hints = Vec::new();
        for param in params {
            match authorized.get(&param.entry_id) {
                None => results.push(Some(pb::batch_new_x509svid_response::Result {
                    status: item_status(
                        tonic::Code::NotFound,
                        format!("entry_id: {:?} is not an entry this agent is authorized for", param.entry_id),
                    ),
                    svid: None,
                })),
                Some(entry) => {
                    let ttl = (entry.x509_svid_ttl > 0)
                        .then(|| Duration::from_secs(entry.x509_svid_ttl.unsigned_abs().into()));
                    requests.push(crate::ca::SvidRequest {
                        spiffe_id: entry.spiffe_id.clone(),
                        csr: param.csr,
                        ttl,
                        dns_names: entry.dns_names.clone(),
                    });
                    hints.push((entry.spiffe_id.clone(), entry.hint.clone()));
                    results.push(None);
                }
            }
        }
        let started = std::time::Instant::now();
        let count = requests.len();
        let mut minted = ca.mint_x509_svids(requests).await.map_err(ca_error)?.into_iter().zip(hints);
        if count > 0 {
            metrics::histogram!("testudo_ca_sign_seconds", "kind" => "x509")
                .record(started.elapsed().as_secs_f64() / count as f64);
        }
        let results = results
            .into_iter()
            .map(|slot| match slot {
                Some(refused) => refused,
                None => match minted.next() {
                    Some((Ok(svid), (id, hint))) => pb::batch_new_x509svid_response::Result {
                        status: item_status(tonic::Code::Ok, "OK"),
                        svid: Some(types::X509svid {
                            cert_chain: svid.chain,
                            id: Some(spiffe_id_to_pb(&id)),
                            expires_at: svid.expires_at,
                            hint,
                        }),
                    },
                    Some((Err(refusal), _)) => {
                        let code = match refusal {
                            MintRefusal::Csr(_) => tonic::Code::InvalidArgument,
                            MintRefusal::Signing(_) => tonic::Code::Unavailable,
                        };
                        let status = item_status(code, refusal.to_string());
                        pb::batch_new_x509svid_response::Result { status, svid: None }
                    }
                    None => pb::batch_new_x509svid_response::Result {
                        status: item_status(tonic::Code::Internal, "no outcome for this item"),
                        svid: None,
                    },
                },
            })
            .collect();
        Ok(Response::new(pb::BatchNewX509svidResponse { results }))
    }

    async fn new_jwtsvid(
        &self,
        request: Request<pb::NewJwtsvidRequest>,
    ) -> Result<Response<pb::NewJwtsvidResponse>, Status> {
        let agent = super::agent_auth::require_agent(&request, &self.context).await?;
        self.context.limits.jwt_signing(&request).await?;
        self.context.limits.managed_signing(&agent.spiffe_id, 1).await?;
        let request = request.into_inner();
        if request.audience.is_empty() || request.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience: at least one non-empty audience is required"));
        }
        let authorized = self.context.authorized_entries(&agent).await?;
        let entry = authorized.get(&request.entry_id).ok_or_else(|| {
            Status::not_found(format!("entry_id: {:?} is not an entry this agent is authorized for", request.entry_id))
        })?;
        let ttl = (entry.jwt_svid_ttl > 0).then(|| Duration::from_secs(entry.jwt_svid_ttl.unsigned_abs().into()));
        let ca = self.context.signing().await?;
        let token = ca.mint_jwt_svid(entry.spiffe_id.clone(), request.audience, ttl).await.map_err(ca_error)?;
        let (issued_at, expires_at) = times_of(&token)?;
        let svid = types::Jwtsvid {
            token,
            id: Some(spiffe_id_to_pb(&entry.spiffe_id)),
            expires_at,
            issued_at,
            hint: entry.hint.clone(),
        };
        Ok(Response::new(pb::NewJwtsvidResponse { svid: Some(svid) }))
    }

    /// A downstream server (nested cluster) asks for an intermediate CA. The caller is a
    /// workload of this trust domain whose SPIFFE ID has a registration entry marked
    /// `downstream`; that entry's X.509 TTL, if set, is the CA's TTL (`preferred_ttl` is
    /// not honoured, as in SPIRE).
    async fn new_downstream_x509ca(
        &self,
        request: Request<pb::NewDownstreamX509caRequest>,
    ) -> Result<Response<pb::NewDownstreamX509caResponse>, Status> {
        let entry = self.context.require_downstream(&request).await?;
        self.context.limits.x509_signing(&request, 1).await?;
        let public_key = identity::x509::public_key_from_csr(&request.get_ref().csr)
            .map_err(|e| Status::invalid_argument(format!("csr: {e}")))?;
        let ttl = (entry.x509_svid_ttl > 0).then(|| Duration::from_secs(entry.x509_svid_ttl.unsigned_abs().into()));
        let ca = self.context.signing().await?;
        let ca_cert_chain = ca.mint_downstream_ca(public_key, ttl).await.map_err(ca_error)?;
        let x509_authorities = ca.stored_bundle().x509_authorities.iter().map(|a| a.der.clone()).collect();
        tracing::info!(caller = %entry.spiffe_id, entry = %entry.id, "signed a downstream X.509 CA");
        Ok(Response::new(pb::NewDownstreamX509caResponse { ca_cert_chain, x509_authorities }))
    }
}

/// `iat` and `exp` of a token this server just signed.
fn times_of(token: &str) -> Result<(i64, i64), Status> {
    let claims = token.split('.').nth(1).ok_or_else(|| Status::internal("signed token is not a JWS"))?;
    let claims = URL_SAFE_NO_PAD.decode(claims).map_err(|e| Status::internal(e.to_string()))?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).map_err(|e| Status::internal(e.to_string()))?;
    let field = |name: &str| {
        claims
            .get(name)
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| Status::internal(format!("signed token has no {name}")))
    };
    Ok((field("iat")?, field("exp")?))
}
