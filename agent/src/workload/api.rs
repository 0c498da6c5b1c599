//! The SPIFFE Workload API on the agent's Unix socket. Every call must carry the metadata
//! `workload.spiffe.io: true`; the caller is identified by the socket's peer credentials
//! and attested on every call, never by anything it sends. A caller that no entry matches
//! gets PermissionDenied. Streams send the caller's full current state, and again whenever
//! it changes (rotation, bundle change, entry change).

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use identity::bundle::{Bundle, BundleSet};
use identity::{SelectorSet, SpiffeId};
use proto::workload as pb;
use proto::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use time::OffsetDateTime;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::attestor::WorkloadAttestors;
use crate::cache::{Cache, Entry, Snapshot};
use server_pool::{Hedge, ServerPool};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A JWT-SVID kept until half its life.
#[derive(Clone)]
struct CachedJwt {
    token: String,
    renew_at: OffsetDateTime,
}

/// JWT-SVIDs by (SPIFFE ID, sorted audience).
type JwtCache = HashMap<(SpiffeId, Vec<String>), CachedJwt>;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct WorkloadApi {
    cache: Cache,
    attestors: WorkloadAttestors,
    pool: Arc<ServerPool>,
    jwts: Arc<Mutex<JwtCache>>,
}

fn check_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get("workload.spiffe.io").map(|v| v.to_str()) {
        Some(Ok("true")) => Ok(()),
        _ => Err(Status::invalid_argument("security header missing from request")),
    }
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued")
}

/// Concatenated DER of a bundle's X.509 authorities, the Workload API's bundle format.
fn x509_bytes(bundle: &Bundle) -> Vec<u8> {
    bundle.x509_authorities().iter().flat_map(|a| a.der.iter().copied()).collect()
}

/// A JWKS document of a bundle's JWT authorities.
fn jwks_bytes(bundle: &Bundle) -> Vec<u8> {
    let mut jwt_only = Bundle::new(bundle.trust_domain().clone());
    for authority in bundle.jwt_authorities() {
        let _ = jwt_only.add_jwt_authority(authority.clone());
    }
    jwt_only.to_spiffe_json().into_bytes()
}

impl WorkloadApi {
    pub fn new(cache: Cache, attestors: WorkloadAttestors, pool: Arc<ServerPool>) -> Self {
        Self { cache, attestors, pool, jwts: Arc::default() }
    }

    /// How many JWT-SVIDs are cached and not yet due for renewal.
    pub fn cached_jwt_count(&self) -> usize {
        let now = OffsetDateTime::now_utc();
        self.jwts.lock().unwrap_or_else(|p| p.into_inner()).values().filter(|c| c.renew_at > now).count()
    }

    /// The caller's selectors, after checking the security header.
    async fn attest<T>(&self, request: &Request<T>) -> Result<SelectorSet, Status> {
        check_header(request)?;
        super::caller::attest(&self.attestors, request.extensions()).await
    }

    /// The X.509 response for a caller, or `None` while its SVIDs are not minted yet.
    fn x509_response(snapshot: &Snapshot, selectors: &SelectorSet) -> Option<pb::X509svidResponse> {
        let bundle = snapshot.bundle.as_ref()?;
        let mut svids = Vec::new();
        let mut federated = BTreeMap::new();
        for entry in snapshot.entries_for(selectors) {
            let Some(svid) = snapshot.svids.get(&entry.id) else { continue };
            svids.push(pb::X509svid {
                spiffe_id: entry.spiffe_id.to_string(),
                x509_svid: svid.chain.concat(),
                x509_svid_key: svid.key_pkcs8.to_vec(),
                bundle: x509_bytes(bundle),
                hint: entry.hint.clone(),
            });
            for td in &entry.federates_with {
                if let Some(b) = snapshot.federated.get(td) {
                    federated.insert(td.id().to_string(), x509_bytes(b));
                }
            }
        }
        (!svids.is_empty()).then(|| pb::X509svidResponse {
            svids,
            crl: vec![],
            federated_bundles: federated.into_iter().collect(),
        })
    }

    /// A stream that sends `render(snapshot)` now and whenever it changes.
    fn follow<T, F>(&self, selectors: SelectorSet, render: F) -> ResponseStream<T>
    where
        T: PartialEq + Clone + Send + 'static,
        F: Fn(&Snapshot, &SelectorSet) -> Option<Result<T, Status>> + Send + 'static,
    {
        let mut updates = self.cache.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last: Option<T> = None;
            loop {
                let snapshot = updates.borrow_and_update().clone();
                match render(&snapshot, &selectors) {
                    Some(Ok(message)) if last.as_ref() != Some(&message) => {
                        if tx.send(Ok(message.clone())).await.is_err() {
                            return;
                        }
                        last = Some(message);
                    }
                    Some(Err(status)) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    _ => {}
                }
                tokio::select! {
                    changed = updates.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    async fn jwt_for(&self, entry: &Entry, audience: &[String]) -> Result<String, Status> {
        let key = (entry.spiffe_id.clone(), audience.to_vec());
        let now = OffsetDateTime::now_utc();
        if let Some(cached) = self.jwts.lock().unwrap_or_else(|p| p.into_inner()).get(&key).filter(|c| c.renew_at > now)
        {
            return Ok(cached.token.clone());
        }
        let (entry_id, audience_list) = (entry.id.clone(), audience.to_vec());
        let svid = self
            .pool
            .call(2, Hedge::Allowed, |channel| {
                let request = proto::spire::api::server::svid::v1::NewJwtsvidRequest {
                    entry_id: entry_id.clone(),
                    audience: audience_list.clone(),
                };
                async move {
                    let mut client = proto::spire::api::server::svid::v1::svid_client::SvidClient::new(channel);
                    Ok(client.new_jwtsvid(request).await?.into_inner().svid)
                }
            })
            .await?
            .ok_or_else(|| Status::internal("the server answered without a JWT-SVID"))?;
        let issued = OffsetDateTime::from_unix_timestamp(svid.issued_at).unwrap_or(now);
        let expires = OffsetDateTime::from_unix_timestamp(svid.expires_at).unwrap_or(now);
        let renew_at = crate::sync::renewal_time(OffsetDateTime::now_utc(), time::Duration::ZERO, expires - issued);
        let cached = CachedJwt { token: svid.token.clone(), renew_at };
        let mut jwts = self.jwts.lock().unwrap_or_else(|p| p.into_inner());
        jwts.retain(|_, c| c.renew_at > now);
        jwts.insert(key, cached);
        Ok(svid.token)
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApi {
    type FetchX509SVIDStream = ResponseStream<pb::X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<pb::X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<pb::JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<pb::X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let selectors = self.attest(&request).await?;
        if self.cache.current().entries_for(&selectors).next().is_none() {
            return Err(no_identity());
        }
        Ok(Response::new(self.follow(selectors, |snapshot, selectors| {
            if snapshot.entries_for(selectors).next().is_none() {
                return Some(Err(no_identity()));
            }
            Self::x509_response(snapshot, selectors).map(Ok)
        })))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<pb::X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let selectors = self.attest(&request).await?;
        if self.cache.current().entries_for(&selectors).next().is_none() {
            return Err(no_identity());
        }
        Ok(Response::new(self.follow(selectors, |snapshot, selectors| {
            let bundles = snapshot.bundles_for(selectors);
            (!bundles.is_empty()).then(|| {
                Ok(pb::X509BundlesResponse {
                    crl: vec![],
                    bundles: bundles.iter().map(|b| (b.trust_domain().id().to_string(), x509_bytes(b))).collect(),
                })
            })
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<pb::JwtsvidRequest>,
    ) -> Result<Response<pb::JwtsvidResponse>, Status> {
        let selectors = self.attest(&request).await?;
        let request = request.into_inner();
        if request.audience.is_empty() || request.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let wanted = match request.spiffe_id.as_str() {
            "" => None,
            text => Some(SpiffeId::parse(text).map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?),
        };
        let snapshot = self.cache.current();
        let entries: Vec<Entry> = snapshot
            .entries_for(&selectors)
            .filter(|e| wanted.as_ref().is_none_or(|w| *w == e.spiffe_id))
            .cloned()
            .collect();
        if entries.is_empty() {
            return Err(no_identity());
        }
        let mut audience = request.audience;
        audience.sort();
        audience.dedup();
        let mut svids = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for entry in entries {
            if !seen.insert(entry.spiffe_id.clone()) {
                continue;
            }
            let token = self.jwt_for(&entry, &audience).await?;
            svids.push(pb::Jwtsvid { spiffe_id: entry.spiffe_id.to_string(), svid: token, hint: entry.hint.clone() });
        }
        Ok(Response::new(pb::JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<pb::JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let selectors = self.attest(&request).await?;
        if self.cache.current().entries_for(&selectors).next().is_none() {
            return Err(no_identity());
        }
        Ok(Response::new(self.follow(selectors, |snapshot, selectors| {
            let bundles = snapshot.bundles_for(selectors);
            (!bundles.is_empty()).then(|| {
                Ok(pb::JwtBundlesResponse {
                    bundles: bundles.iter().map(|b| (b.trust_domain().id().to_string(), jwks_bytes(b))).collect(),
                })
            })
        })))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<pb::ValidateJwtsvidRequest>,
    ) -> Result<Response<pb::ValidateJwtsvidResponse>, Status> {
        let selectors = self.attest(&request).await?;
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if request.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let snapshot = self.cache.current();
        let mut set = BundleSet::new();
        for bundle in snapshot.bundles_for(&selectors) {
            set.insert(bundle);
        }
        if set.iter().next().is_none() {
            return Err(no_identity());
        }
        let validated =
            identity::jwt::validate_jwt_svid(&request.svid, &set, &request.audience, OffsetDateTime::now_utc())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let claims =
            prost_types::Struct { fields: validated.claims.into_iter().map(|(k, v)| (k, json_to_prost(v))).collect() };
        Ok(Response::new(pb::ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id.to_string(),
            claims: Some(claims),
        }))
    }
}

fn json_to_prost(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.into_iter().map(json_to_prost).collect() })
        }
        serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map.into_iter().map(|(k, v)| (k, json_to_prost(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}
