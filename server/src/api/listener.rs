//! The network listener of the server API (`bind_address:bind_port`): TLS 1.3 with this
//! replica's server SVID (`spiffe://<td>/spire/server`, minted locally with the cluster's
//! active CA and renewed at half-life), and a client SVID verified against the trust bundle
//! when the caller presents one. Who may call what is decided per method from the caller.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use identity::bundle::Bundle;
use identity::crypto::{KeyType, LocalKey, Signer};
use identity::SpiffeId;
use raft_store::network::{ConnectionLimits, Incoming};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use spiffe_tls::SvidVerifier;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::ca::Signing;
use crate::cluster::runtime::ClusterRuntime;

/// This replica's server SVID, swapped in place when renewed.
#[derive(Debug)]
pub struct ServerIdentity {
    id: SpiffeId,
    current: RwLock<Option<(Arc<CertifiedKey>, OffsetDateTime)>>,
}

impl ServerIdentity {
    pub fn new(trust_domain: &identity::TrustDomain) -> Result<Self, String> {
        let id = super::server_id(trust_domain).map_err(|e| e.to_string())?;
        Ok(Self { id, current: RwLock::new(None) })
    }

    /// Mints a new server SVID when there is none or the current one is past half-life.
    pub async fn refresh_if_due(&self, signing: &Signing, now: OffsetDateTime) -> Result<bool, String> {
        let due =
            self.current.read().map_err(|_| "lock poisoned")?.as_ref().is_none_or(|(_, renew_at)| now >= *renew_at);
        if !due {
            return Ok(false);
        }
        let key = LocalKey::generate(KeyType::EcP256).map_err(|e| e.to_string())?;
        let chain = signing
            .mint_x509_svid(self.id.clone(), key.public_key().clone(), None, vec![])
            .await
            .map_err(|e| e.to_string())?;
        let facts = identity::x509::certificate_facts(&chain[0]).map_err(|e| e.to_string())?;
        // Half of what is left of its life, counted from now: NotBefore is backdated, so
        // half of its whole life can be now already (a 10 s TTL), and it would be minted
        // again and again.
        let renew_at = now + (facts.not_after - now) / 2;
        let pkcs8 = key.to_pkcs8_der().map_err(|e| e.to_string())?;
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&PrivateKeyDer::Pkcs8(
            PrivatePkcs8KeyDer::from(pkcs8.to_vec()),
        ))
        .map_err(|e| e.to_string())?;
        let certified = CertifiedKey::new(chain.into_iter().map(CertificateDer::from).collect(), signing);
        *self.current.write().map_err(|_| "lock poisoned")? = Some((Arc::new(certified), renew_at));
        tracing::info!(id = %self.id, renew_at = %renew_at, "server SVID minted");
        Ok(true)
    }

    /// When the current server SVID is due for renewal; `None` before the first.
    pub fn renew_at(&self) -> Option<OffsetDateTime> {
        self.current.read().ok().and_then(|c| c.as_ref().map(|(_, at)| *at))
    }
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().and_then(|c| c.as_ref().map(|(k, _)| k.clone()))
    }
}

/// Keeps the server SVID and the bundle client certificates are checked against current:
/// the bundle whenever the views announce a new one, the SVID at half-life (and as soon as
/// a CA is active in a new cluster).
pub async fn maintain(identity: Arc<ServerIdentity>, bundle: Arc<RwLock<Bundle>>, runtime: Arc<ClusterRuntime>) {
    runtime
        .for_each_member(|member| {
            let (identity, bundle) = (identity.clone(), bundle.clone());
            async move {
                let mut changes = member.views.signing_changes();
                let mut sequence = None;
                loop {
                    let signing = changes.borrow_and_update().clone();
                    let mut retry = None;
                    if let Some(signing) = &signing {
                        let stored = signing.stored_bundle();
                        if sequence != Some(stored.sequence_number) && !stored.x509_authorities.is_empty() {
                            if let (Ok(fresh), Ok(mut current)) = (signing.bundle(), bundle.write()) {
                                *current = fresh;
                                sequence = Some(stored.sequence_number);
                            }
                        }
                        if let Err(e) = identity.refresh_if_due(signing, OffsetDateTime::now_utc()).await {
                            tracing::warn!(error = %e, "server SVID not minted; retrying");
                            retry = Some(Duration::from_secs(1));
                        }
                    }
                    let renew_in = identity
                        .renew_at()
                        .map(|at| Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO));
                    // At least a second between mints, whatever the CA's remaining life.
                    let wait = retry
                        .or(renew_in.filter(|_| signing.is_some()))
                        .unwrap_or(Duration::from_secs(3600))
                        .max(Duration::from_secs(1));
                    tokio::select! {
                        changed = changes.changed() => if changed.is_err() { return },
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        })
        .await;
}

/// Concurrent streams on one API connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// A connection without a client certificate (attestation, GetBundle, health probes) is
/// closed after this, whatever it does: such callers come, ask and go.
const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(300);

/// Many agents may share one address (NAT, a node's pods): the per-source bound is wide.
const API_CONNECTION_LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 32_768,
    max_handshakes: 256,
    max_per_source: 1024,
    handshake_timeout: Duration::from_secs(10),
};

/// Binds the API listener. Returns the bound address and the stream of TLS connections
/// for tonic.
pub async fn bind(
    address: SocketAddr,
    identity: Arc<ServerIdentity>,
    bundle: Arc<RwLock<Bundle>>,
) -> Result<(SocketAddr, impl tokio_stream::Stream<Item = Incoming>), String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(SvidVerifier::any_svid(bundle)))
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(address).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    // The accept task ends when tonic drops the stream.
    let (incoming, _accepting) = raft_store::network::accept_tls(listener, acceptor, "API", API_CONNECTION_LIMITS);
    let incoming = tokio_stream::StreamExt::map(incoming, |accepted| {
        accepted.map(|c| if c.has_client_certificate() { c } else { c.with_lifetime(ANONYMOUS_LIFETIME) })
    });
    Ok((bound, incoming))
}
