//! Envoy's Secret Discovery Service (v3) on the Workload API socket, as SPIRE's agent serves
//! it: Envoy asks for secrets by name and gets the caller's X.509-SVIDs as TLS certificates
//! and its trust bundles as validation contexts. Names, as SPIRE users configure them:
//!
//! - a SPIFFE ID: that SVID; `default_svid_name` ("default"): the caller's first SVID (the
//!   one the Workload API lists first);
//! - a trust domain ID (`spiffe://td`): that trust domain's bundle (ours, or one the
//!   caller's entries federate with); `default_bundle_name` ("ROOTCA"): ours;
//! - `default_all_bundles_name` ("ALL"): ours and every federated one, in one SPIFFE
//!   validator config;
//! - no names: every SVID and bundle of the caller.
//!
//! Validation contexts use Envoy's SPIFFE certificate validator (which checks that a peer's
//! SPIFFE ID belongs to the trust domain whose bundle verified it) unless the config or the
//! node metadata key `disable_spiffe_cert_validation` turns it off, or the client says it is
//! an Envoy older than 1.18, which lacks the validator; then they carry plain CA certificates.
//!
//! The caller is identified by its peer credentials, as for the Workload API; Envoy sends
//! no security header, so none is asked for. Streams follow the xDS protocol: a response
//! carries a version and a nonce; a request whose nonce is not the last one sent is stale
//! and ignored; an ACK or NACK (same names) sends nothing; new names, or any change to what
//! the names resolve to (rotation, bundle change), send a new response.

use std::collections::BTreeSet;
use std::pin::Pin;

use identity::bundle::Bundle;
use identity::SelectorSet;
use prost::Message;
use prost_types::Any;
use proto::envoy::config::core::v3::{data_source, node, DataSource, Node, TypedExtensionConfig};
use proto::envoy::extensions::transport_sockets::tls::v3 as tls;
use proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use proto::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::attestor::WorkloadAttestors;
use crate::cache::{Cache, Snapshot};
use crate::config::SdsSection;

/// The type of every resource SDS serves.
pub const SECRET_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const SPIFFE_VALIDATOR_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";
const SPIFFE_VALIDATOR_NAME: &str = "envoy.tls.cert_validator.spiffe";
/// The node metadata key with which one Envoy turns the SPIFFE validator off.
const DISABLE_VALIDATOR_KEY: &str = "disable_spiffe_cert_validation";

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

/// The service; cheap to clone.
#[derive(Clone)]
pub struct SecretDiscovery {
    cache: Cache,
    attestors: WorkloadAttestors,
    names: SdsSection,
}

impl SecretDiscovery {
    pub fn new(cache: Cache, attestors: WorkloadAttestors, names: SdsSection) -> Self {
        Self { cache, attestors, names }
    }

    /// Whether validation contexts for this client use the SPIFFE validator.
    fn spiffe_validator(&self, node: Option<&Node>) -> bool {
        if self.names.disable_spiffe_cert_validation {
            return false;
        }
        let Some(node) = node else { return true };
        let disabled = node.metadata.as_ref().and_then(|m| m.fields.get(DISABLE_VALIDATOR_KEY)).is_some_and(|value| {
            use prost_types::value::Kind;
            match &value.kind {
                Some(Kind::BoolValue(b)) => *b,
                Some(Kind::StringValue(s)) => s.eq_ignore_ascii_case("true"),
                _ => false,
            }
        });
        if disabled {
            return false;
        }
        match &node.user_agent_version_type {
            Some(node::UserAgentVersionType::UserAgentBuildVersion(build)) => build
                .version
                .as_ref()
                .is_none_or(|v| v.major_number > 1 || (v.major_number == 1 && v.minor_number >= 18)),
            _ => true,
        }
    }

    /// The secrets `names` resolve to for a caller, or `None` while some are not ready (no
    /// bundle yet, an SVID not minted yet): a later cache update brings them.
    fn render(
        &self,
        snapshot: &Snapshot,
        selectors: &SelectorSet,
        names: &[String],
        spiffe_validator: bool,
    ) -> Result<Option<Vec<Any>>, Status> {
        let Some(own) = &snapshot.bundle else { return Ok(None) };
        let mut wanted: BTreeSet<&str> = names.iter().map(String::as_str).filter(|n| !n.is_empty()).collect();
        let all = wanted.is_empty();
        let mut resources = Vec::new();
        let bundles = snapshot.bundles_for(selectors);
        let validation = |name: &str, bundles: &[&Bundle]| validation_context(name, bundles, spiffe_validator);

        let own_id = own.trust_domain().id().to_string();
        if wanted.remove(own_id.as_str()) || all {
            resources.push(validation(&own_id, &[own])?);
        }
        if wanted.remove(self.names.default_bundle_name.as_str()) {
            resources.push(validation(&self.names.default_bundle_name, &[own])?);
        }
        if wanted.remove(self.names.default_all_bundles_name.as_str()) {
            if !spiffe_validator {
                return Err(Status::failed_precondition(format!(
                    "{:?} needs Envoy's SPIFFE certificate validator (Envoy 1.18 or later, \
                        disable_spiffe_cert_validation off): plain CA certificates of several trust domains \
                        would let any of them vouch for the others' IDs",
                    self.names.default_all_bundles_name
                )));
            }
            resources.push(validation(&self.names.default_all_bundles_name, &bundles.iter().collect::<Vec<_>>())?);
        }
        for federated in bundles.iter().filter(|b| b.trust_domain() != own.trust_domain()) {
            let id = federated.trust_domain().id().to_string();
            if wanted.remove(id.as_str()) || all {
                resources.push(validation(&id, &[federated])?);
            }
        }

        let mut seen = BTreeSet::new();
        for (index, entry) in snapshot.entries_for(selectors).enumerate() {
            let spiffe_id = entry.spiffe_id.to_string();
            if !seen.insert(spiffe_id.clone()) {
                continue;
            }
            let by_id = wanted.remove(spiffe_id.as_str()) || all;
            let by_default = index == 0 && wanted.remove(self.names.default_svid_name.as_str());
            for name in
                [by_id.then_some(spiffe_id.as_str()), by_default.then_some(self.names.default_svid_name.as_str())]
                    .into_iter()
                    .flatten()
            {
                let Some(svid) = snapshot.svids.get(&entry.id) else { return Ok(None) };
                resources.push(tls_certificate(name, &svid.chain, &svid.key_pkcs8));
            }
        }

        if !wanted.is_empty() {
            return Err(Status::invalid_argument(format!(
                "workload is not authorized for the requested identities {:?}",
                wanted
            )));
        }
        Ok(Some(resources))
    }
}

fn any_of(type_url: &str, message: &impl Message) -> Any {
    Any { type_url: type_url.to_owned(), value: message.encode_to_vec() }
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource { specifier: Some(data_source::Specifier::InlineBytes(bytes)) })
}

fn secret(name: &str, kind: tls::secret::Type) -> Any {
    any_of(SECRET_TYPE_URL, &tls::Secret { name: name.to_owned(), r#type: Some(kind) })
}

fn tls_certificate(name: &str, chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Any {
    let chain_pem = identity::bundle::to_pem_certificates(chain.iter().map(Vec::as_slice));
    let key_pem = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", key_pkcs8.to_vec())));
    secret(
        name,
        tls::secret::Type::TlsCertificate(tls::TlsCertificate {
            certificate_chain: inline(chain_pem.into_bytes()),
            private_key: inline(key_pem.as_bytes().to_vec()),
        }),
    )
}

/// A validation context named `name` trusting `bundles`: one SPIFFE validator entry per
/// trust domain, or (without the validator, one bundle only) plain CA certificates.
fn validation_context(name: &str, bundles: &[&Bundle], spiffe_validator: bool) -> Result<Any, Status> {
    let context = if spiffe_validator {
        let mut trust_domains: Vec<_> = bundles
            .iter()
            .map(|b| tls::spiffe_cert_validator_config::TrustDomain {
                name: b.trust_domain().to_string(),
                trust_bundle: inline(b.x509_authorities_pem().into_bytes()),
            })
            .collect();
        trust_domains.sort_by(|a, b| a.name.cmp(&b.name));
        let config = tls::SpiffeCertValidatorConfig { trust_domains };
        tls::CertificateValidationContext {
            trusted_ca: None,
            custom_validator_config: Some(TypedExtensionConfig {
                name: SPIFFE_VALIDATOR_NAME.into(),
                typed_config: Some(any_of(SPIFFE_VALIDATOR_TYPE_URL, &config)),
            }),
        }
    } else {
        let [bundle] = bundles else {
            return Err(Status::internal("plain CA certificates for more than one trust domain"));
        };
        tls::CertificateValidationContext {
            trusted_ca: inline(bundle.x509_authorities_pem().into_bytes()),
            custom_validator_config: None,
        }
    };
    Ok(secret(name, tls::secret::Type::ValidationContext(context)))
}

fn check_type_url(request: &DiscoveryRequest) -> Result<(), Status> {
    match request.type_url.as_str() {
        "" | SECRET_TYPE_URL => Ok(()),
        other => {
            Err(Status::invalid_argument(format!("type_url {other:?}: this service serves only {SECRET_TYPE_URL}")))
        }
    }
}

fn same_names(a: &[String], b: &[String]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

/// What one stream has told its client so far.
#[derive(Default)]
struct StreamState {
    /// The names of the last request that counted; `None` before the first.
    names: Option<Vec<String>>,
    /// The client's node, from the first request that carried it.
    node: Option<Node>,
    version: u64,
    nonce: Option<String>,
    sent: Option<Vec<Any>>,
}

impl StreamState {
    /// Takes a request: whether it asks for something new (new names) and must be answered.
    fn accept(&mut self, request: DiscoveryRequest) -> bool {
        if let Some(error) = &request.error_detail {
            tracing::warn!(names = ?request.resource_names, code = error.code, error = %error.message, "Envoy could not apply the secrets it was sent");
        }
        if let Some(nonce) = &self.nonce {
            if request.response_nonce != *nonce {
                tracing::debug!(nonce = %request.response_nonce, expected = %nonce, "stale SDS request ignored");
                return false;
            }
        }
        if request.node.is_some() && self.node.is_none() {
            self.node = request.node;
        }
        let new = self.names.as_ref().is_none_or(|old| !same_names(old, &request.resource_names));
        self.names = Some(request.resource_names);
        new
    }

    /// The next response, if `resources` differ from what was sent or `force`.
    fn respond(&mut self, resources: Vec<Any>, force: bool) -> Option<DiscoveryResponse> {
        if !force && self.sent.as_ref() == Some(&resources) {
            return None;
        }
        self.version += 1;
        let nonce = format!("{:016x}", fastrand::u64(..));
        self.nonce = Some(nonce.clone());
        self.sent = Some(resources.clone());
        Some(DiscoveryResponse {
            version_info: self.version.to_string(),
            resources,
            canary: false,
            type_url: SECRET_TYPE_URL.into(),
            nonce,
        })
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SecretDiscovery {
    type StreamSecretsStream = ResponseStream;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let selectors = super::caller::attest(&self.attestors, request.extensions()).await?;
        let mut inbound = request.into_inner();
        let service = self.clone();
        let mut updates = self.cache.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut state = StreamState::default();
            loop {
                let force = tokio::select! {
                    incoming = inbound.message() => match incoming {
                        Ok(Some(request)) => {
                            if let Err(status) = check_type_url(&request) {
                                let _ = tx.send(Err(status)).await;
                                return;
                            }
                            if !state.accept(request) {
                                continue;
                            }
                            true
                        }
                        Ok(None) | Err(_) => return,
                    },
                    changed = updates.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        false
                    }
                    () = tx.closed() => return,
                };
                let Some(names) = state.names.clone() else { continue };
                let snapshot = updates.borrow_and_update().clone();
                match service.render(&snapshot, &selectors, &names, service.spiffe_validator(state.node.as_ref())) {
                    Ok(Some(resources)) => {
                        if let Some(response) = state.respond(resources, force) {
                            tracing::debug!(version = %response.version_info, resources = response.resources.len(), "sending secrets");
                            if tx.send(Ok(response)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(status) => {
                        tracing::warn!(names = ?names, error = %status.message(), "SDS request refused");
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn fetch_secrets(&self, request: Request<DiscoveryRequest>) -> Result<Response<DiscoveryResponse>, Status> {
        let selectors = super::caller::attest(&self.attestors, request.extensions()).await?;
        let request = request.into_inner();
        check_type_url(&request)?;
        let snapshot = self.cache.current();
        let resources = self
            .render(&snapshot, &selectors, &request.resource_names, self.spiffe_validator(request.node.as_ref()))?
            .ok_or_else(|| Status::unavailable("the requested secrets are not ready yet; retry shortly"))?;
        Ok(Response::new(DiscoveryResponse {
            version_info: String::new(),
            resources,
            canary: false,
            type_url: SECRET_TYPE_URL.into(),
            nonce: String::new(),
        }))
    }
}
