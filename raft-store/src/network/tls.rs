//! Mutual TLS between replicas. Each replica presents an X.509-SVID whose SPIFFE ID names
//! its node id under the cluster's replica ID (`<replicas>/<node id>`); each side checks the
//! other's chain against the trust bundle (`spiffe_tls::SvidVerifier`) and refuses any other
//! SPIFFE ID. The server side then admits only current members ([`node_id_of`]).

use std::fmt;
use std::sync::{Arc, RwLock};

use identity::bundle::Bundle;
use identity::SpiffeId;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use spiffe_tls::{provider, SvidVerifier};
use zeroize::Zeroizing;

/// Why the TLS set-up is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("replica TLS configuration: {0}")]
    Config(String),
}

/// A replica's TLS identity and what it trusts.
#[derive(Clone)]
pub struct ClusterTls {
    /// This replica's certificate chain, leaf first (DER).
    pub chain: Vec<Vec<u8>>,
    /// Its private key, PKCS#8 DER.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// The bundle replica certificates chain to; shared so CA rotation can update it.
    pub bundle: Arc<RwLock<Bundle>>,
    /// The SPIFFE ID replicas' IDs sit under, e.g. `spiffe://example.org/spire/replica`:
    /// replica 3 presents `spiffe://example.org/spire/replica/3`.
    pub replicas: SpiffeId,
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTls").field("replicas", &self.replicas).finish_non_exhaustive()
    }
}

/// The certificate the server side presents, replaceable while it runs (certificate
/// renewal): each handshake takes the current one.
#[derive(Debug)]
pub struct PresentedCertificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl PresentedCertificate {
    pub fn new(chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<Self, TlsError> {
        Ok(Self { current: RwLock::new(certified_key(chain, key_pkcs8)?) })
    }

    /// Presents `chain` (leaf first) and its key from the next handshake on; refuses a key
    /// that does not match the leaf.
    pub fn replace(&self, chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<(), TlsError> {
        let certified = certified_key(chain, key_pkcs8)?;
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = certified;
        Ok(())
    }
}

impl ResolvesServerCert for PresentedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }
}

fn certified_key(chain: &[Vec<u8>], key_pkcs8: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec()));
    CertifiedKey::from_der(chain, key, &provider())
        .map(Arc::new)
        .map_err(|e| TlsError::Config(format!("replica certificate and key: {e}")))
}

/// The server side: TLS 1.3 only, a client certificate verified when presented (and
/// required by every call but Join), ALPN h2 for gRPC; presents `certificate`.
pub fn server_config(
    tls: &ClusterTls,
    certificate: Arc<PresentedCertificate>,
) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(
            SvidVerifier::for_ids_under(tls.bundle.clone(), tls.replicas.clone())
                .allowing_slow_clock(spiffe_tls::SLOW_CLOCK_ALLOWANCE),
        ))
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The client side of a replica that has no certificate yet: no client identity, and a
/// server check against the cluster CA pinned by its SHA-256 (from an invite).
pub fn joiner_endpoint(
    replicas: SpiffeId,
    ca_sha256: [u8; 32],
    address: &str,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Endpoint, TlsError> {
    let config = tonic::transport::ClientTlsConfig::new().domain_name("replica.testudo.invalid");
    tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| TlsError::Config(format!("replica address {address:?}: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tls_config_with_verifier(config, Arc::new(SvidVerifier::pinned(replicas, ca_sha256)))
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// The client side, for tonic: our identity as PEM, and the peer verifier. `timeout`
/// limits connecting; each call sets its own limit (`ClusterClient`), since a forwarded
/// leader transfer takes longer than an append.
pub fn client_endpoint(
    tls: &ClusterTls,
    address: &str,
    timeout: std::time::Duration,
) -> Result<tonic::transport::Endpoint, TlsError> {
    let chain_pem: String = tls.chain.iter().map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.clone()))).collect();
    let key_pem = Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", tls.key_pkcs8.to_vec())));
    let identity = tonic::transport::Identity::from_pem(chain_pem, key_pem.as_bytes());
    let config = tonic::transport::ClientTlsConfig::new().identity(identity).domain_name("replica.testudo.invalid");
    tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| TlsError::Config(format!("replica address {address:?}: {e}")))?
        .connect_timeout(timeout)
        .tls_config_with_verifier(
            config,
            Arc::new(
                SvidVerifier::for_ids_under(tls.bundle.clone(), tls.replicas.clone())
                    .allowing_slow_clock(spiffe_tls::SLOW_CLOCK_ALLOWANCE),
            ),
        )
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// The node id a replica certificate names (`<replicas>/<node id>`), from its leaf (DER).
pub fn node_id_of(leaf: &[u8]) -> Option<crate::types::NodeId> {
    let facts = identity::x509::certificate_facts(leaf).ok()?;
    let id = facts.spiffe_ids.into_iter().next()?;
    id.path().rsplit('/').next()?.parse().ok().filter(|n| *n > 0)
}
