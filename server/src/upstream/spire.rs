//! The `spire` upstream authority, as SPIRE's: this cluster is a downstream (nested) cluster
//! of an upstream cluster of the same trust domain, Testudo or SPIRE. Its CA is an
//! intermediate the upstream signs (`SVID.NewDownstreamX509CA`). To call the upstream, the
//! server takes an X509-SVID from an agent of the upstream cluster through that agent's
//! Workload API (the SVID of a registration entry marked `downstream`), and trusts the
//! upstream servers through the bundle the same agent delivers. Calls go to the upstream
//! replicas through one failover pool, as an agent's calls to its servers do.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use identity::bundle::Bundle;
use identity::crypto::Signer;
use identity::x509::{certificate_facts, create_csr, split_der_certificates, Subject};
use identity::{SpiffeId, TrustDomain};
use proto::spire::api::server::bundle::v1 as bundle_pb;
use proto::spire::api::server::svid::v1 as svid_pb;
use proto::spire::api::types;
use proto::workload as workload_pb;
use raft_store::model::{StoredJwtKey, StoredX509Authority};
use server_pool::{Hedge, ServerPool};
use time::OffsetDateTime;
use tonic::{Code, Status};

use super::{check_chains_to_roots, UpstreamAuthority, UpstreamBundle, UpstreamError, UpstreamSigned};

/// The config name.
pub const NAME: &str = "spire";

/// The counter of upstream calls a replica of the upstream failed (it was skipped).
const FAILURES_METRIC: &str = "testudo_upstream_server_failures_total";
/// How long the upstream agent may take to answer with this server's SVID.
const WORKLOAD_API_TIMEOUT: Duration = Duration::from_secs(10);
/// Times every upstream replica is tried before a call fails.
const ROUNDS: usize = 2;

/// Where the upstream cluster is and how to get an SVID for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpireUpstreamConfig {
    /// Every upstream replica, `host:port` (a name stands for every address it resolves to).
    pub servers: Vec<String>,
    /// The Workload API socket of an agent of the upstream cluster.
    pub workload_api_socket: PathBuf,
}

/// An upstream cluster reached through its agent's SVID.
pub struct SpireUpstreamAuthority {
    config: SpireUpstreamConfig,
    trust_domain: TrustDomain,
    /// The upstream bundle as the upstream agent delivers it: it vouches for the servers.
    bundle: Arc<RwLock<Bundle>>,
    /// The SVID chain the pool presents now, so a new one is set only when it changed.
    presented: Mutex<Vec<Vec<u8>>>,
    pool: ServerPool,
}

fn unavailable(reason: impl Into<String>) -> UpstreamError {
    UpstreamError::Unavailable { name: NAME, reason: reason.into() }
}

fn refused(reason: impl Into<String>) -> UpstreamError {
    UpstreamError::Refused { name: NAME, reason: reason.into() }
}

/// An upstream answer as an error: refusals of the request are the upstream's word,
/// anything else means it could not be reached.
fn call_error(what: &str, status: &Status) -> UpstreamError {
    let reason = format!("{what}: {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated | Code::InvalidArgument | Code::FailedPrecondition => {
            refused(reason)
        }
        _ => unavailable(reason),
    }
}

impl SpireUpstreamAuthority {
    /// An upstream for a downstream cluster of `trust_domain`. Nothing is contacted yet:
    /// the upstream agent and servers are reached when the CA first needs them, so a
    /// downstream replica starts while its upstream is away.
    pub async fn new(config: SpireUpstreamConfig, trust_domain: TrustDomain) -> Result<Self, UpstreamError> {
        let server_id = SpiffeId::parse(&format!("spiffe://{}/spire/server", trust_domain.name()))
            .map_err(|e| UpstreamError::Config { name: NAME, reason: e.to_string() })?;
        let bundle = Arc::new(RwLock::new(Bundle::new(trust_domain.clone())));
        let pool = ServerPool::new(config.servers.clone(), server_id, bundle.clone(), FAILURES_METRIC).await;
        Ok(Self { config, trust_domain, bundle, presented: Mutex::new(Vec::new()), pool })
    }

    /// Takes this server's SVID and the upstream bundle from the upstream agent, and
    /// presents and trusts them from now on.
    async fn refresh_identity(&self) -> Result<(), UpstreamError> {
        let socket = &self.config.workload_api_socket;
        let fetched = tokio::time::timeout(WORKLOAD_API_TIMEOUT, first_x509_message(socket)).await;
        let message = fetched
            .map_err(|_| unavailable(format!("the upstream agent at {} did not answer in time", socket.display())))??;
        // As SPIRE's X509Source: the first SVID is the default one.
        let svid = message.svids.first().ok_or_else(|| {
            unavailable(format!(
                "the upstream agent at {} gave no SVID: register an entry marked downstream for this server",
                socket.display()
            ))
        })?;
        let id = SpiffeId::parse(&svid.spiffe_id).map_err(|e| refused(format!("the agent's SVID ID: {e}")))?;
        if id.trust_domain() != &self.trust_domain {
            return Err(UpstreamError::Config {
                name: NAME,
                reason: format!(
                    "the upstream agent's SVID {id} is not of this server's trust domain {}: a nested cluster \
                     shares its upstream's trust domain",
                    self.trust_domain.name()
                ),
            });
        }
        let chain = split_der_certificates(&svid.x509_svid).map_err(|e| refused(format!("the agent's SVID: {e}")))?;
        let mut bundle = Bundle::new(self.trust_domain.clone());
        for root in split_der_certificates(&svid.bundle).map_err(|e| refused(format!("the agent's bundle: {e}")))? {
            bundle.add_x509_authority(&root).map_err(|e| refused(format!("the agent's bundle: {e}")))?;
        }
        *self.bundle.write().unwrap_or_else(|p| p.into_inner()) = bundle;
        let mut presented = self.presented.lock().unwrap_or_else(|p| p.into_inner());
        if *presented != chain {
            tracing::info!(spiffe_id = %id, "calling the upstream cluster with a new SVID");
            self.pool.set_identity(&chain, &svid.x509_svid_key);
            *presented = chain;
        }
        Ok(())
    }
}

/// The first X.509 message of the agent's Workload API stream.
async fn first_x509_message(socket: &std::path::Path) -> Result<workload_pb::X509svidResponse, UpstreamError> {
    let channel = proto::unix_socket::connect(socket)
        .await
        .map_err(|e| unavailable(format!("cannot reach the upstream agent at {}: {e}", socket.display())))?;
    let mut client = workload_pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let mut request = tonic::Request::new(workload_pb::X509svidRequest {});
    request.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
    let mut stream =
        client.fetch_x509svid(request).await.map_err(|s| call_error("the upstream agent", &s))?.into_inner();
    stream
        .message()
        .await
        .map_err(|s| call_error("the upstream agent", &s))?
        .ok_or_else(|| unavailable("the upstream agent closed the stream"))
}

#[async_trait]
impl UpstreamAuthority for SpireUpstreamAuthority {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn mint_x509_ca(
        &self,
        trust_domain: &TrustDomain,
        signer: Arc<dyn Signer>,
        _subject: &Subject,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<UpstreamSigned, UpstreamError> {
        // The CSR is signed with the CA key wherever it lives (an HSM, KMS): off the reactor.
        let public_key = signer.public_key().clone();
        let csr = tokio::task::spawn_blocking(move || create_csr(signer.as_ref(), None))
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .map_err(|e| refused(format!("CSR: {e}")))?;
        self.refresh_identity().await?;
        let preferred_ttl = i32::try_from(ttl.as_secs()).unwrap_or(i32::MAX);
        let answer = self
            .pool
            .call(ROUNDS, Hedge::Never, |channel| {
                let request = svid_pb::NewDownstreamX509caRequest { csr: csr.clone(), preferred_ttl };
                async move { svid_pb::svid_client::SvidClient::new(channel).new_downstream_x509ca(request).await }
            })
            .await
            .map_err(|s| call_error("NewDownstreamX509CA", &s))?
            .into_inner();
        let mut chain = answer.ca_cert_chain;
        if chain.is_empty() {
            return Err(refused("NewDownstreamX509CA answered no certificate"));
        }
        let certificate = chain.remove(0);
        let facts = certificate_facts(&certificate).map_err(|e| refused(format!("the signed CA: {e}")))?;
        if facts.public_key != public_key || !facts.is_ca {
            return Err(refused("the upstream signed a certificate that is not a CA for this server's key"));
        }
        let roots = answer.x509_authorities;
        check_chains_to_roots(NAME, trust_domain, &certificate, &chain, &roots, now)?;
        tracing::info!(not_after = %facts.not_after, "the upstream cluster signed an intermediate CA");
        Ok(UpstreamSigned { certificate, chain, roots })
    }

    fn is_upstream_cluster(&self) -> bool {
        true
    }

    async fn fetch_bundle(&self) -> Result<UpstreamBundle, UpstreamError> {
        self.refresh_identity().await?;
        let bundle = self
            .pool
            .call(ROUNDS, Hedge::Allowed, |channel| async move {
                bundle_pb::bundle_client::BundleClient::new(channel)
                    .get_bundle(bundle_pb::GetBundleRequest { output_mask: None })
                    .await
            })
            .await
            .map_err(|s| call_error("GetBundle", &s))?
            .into_inner();
        self.checked_bundle(&bundle)
    }

    async fn publish_jwt_key(&self, key: &StoredJwtKey) -> Result<Vec<StoredJwtKey>, UpstreamError> {
        self.refresh_identity().await?;
        let jwt_authority = types::JwtKey {
            public_key: key.public_key.clone(),
            key_id: key.key_id.clone(),
            expires_at: key.expires_at,
            tainted: false,
        };
        let answer = self
            .pool
            .call(ROUNDS, Hedge::Never, |channel| {
                let request = bundle_pb::PublishJwtAuthorityRequest { jwt_authority: Some(jwt_authority.clone()) };
                async move { bundle_pb::bundle_client::BundleClient::new(channel).publish_jwt_authority(request).await }
            })
            .await
            .map_err(|s| call_error("PublishJWTAuthority", &s))?
            .into_inner();
        let checked = types::Bundle {
            trust_domain: self.trust_domain.name().to_owned(),
            jwt_authorities: answer.jwt_authorities,
            ..Default::default()
        };
        Ok(crate::api::convert::bundle_from_pb(&checked, "PublishJWTAuthority")
            .map_err(|s| refused(s.message().to_owned()))?
            .jwt_authorities)
    }
}

impl SpireUpstreamAuthority {
    /// The upstream's bundle, checked: our trust domain, CA certificates, JWT keys that
    /// parse; taint marks kept.
    fn checked_bundle(&self, bundle: &types::Bundle) -> Result<UpstreamBundle, UpstreamError> {
        let stored = crate::api::convert::bundle_from_pb(bundle, "upstream bundle")
            .map_err(|s| refused(s.message().to_owned()))?;
        if stored.trust_domain != self.trust_domain {
            return Err(refused(format!(
                "the upstream bundle is of {}, not {}",
                stored.trust_domain.name(),
                self.trust_domain.name()
            )));
        }
        let tainted = |der: &[u8]| bundle.x509_authorities.iter().any(|a| a.asn1 == der && a.tainted);
        let x509 = stored
            .x509_authorities
            .iter()
            .map(|a| StoredX509Authority { der: a.der.clone(), tainted: tainted(&a.der) })
            .collect();
        Ok(UpstreamBundle { x509, jwt: stored.jwt_authorities })
    }
}
