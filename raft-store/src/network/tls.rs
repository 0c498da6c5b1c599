//! Mutual TLS between replicas. Each replica presents an X.509-SVID with the cluster's
//! replica SPIFFE ID; each side checks the other's chain against the trust bundle with the
//! identity crate's SVID verifier and refuses any other SPIFFE ID.

use std::fmt;
use std::sync::{Arc, RwLock};

use identity::bundle::Bundle;
use identity::x509::verify_x509_svid;
use identity::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use time::OffsetDateTime;
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
    /// The SPIFFE ID every replica presents, e.g. `spiffe://example.org/spire/server`.
    pub replica_id: SpiffeId,
}

impl fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterTls").field("replica_id", &self.replica_id).finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Checks a peer's certificate chain: a valid X.509-SVID chaining to the bundle, for the
/// replica SPIFFE ID (cluster RPC) or, with [`PeerVerifier::any_svid`], for any ID of the
/// bundle's trust domain (the server API, where callers are agents and admins).
pub struct PeerVerifier {
    trust: Trust,
    /// `None`: any SPIFFE ID the bundle vouches for.
    replica_id: Option<SpiffeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// What a peer's chain must lead to.
enum Trust {
    /// The cluster's bundle, as replicas hold it.
    Bundle(Arc<RwLock<Bundle>>),
    /// A CA certificate known only by its SHA-256, which the peer must send in its chain:
    /// how a joining replica, holding just an invite, recognises the cluster.
    PinnedCa { trust_domain: identity::TrustDomain, sha256: [u8; 32] },
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerVerifier").field("replica_id", &self.replica_id).finish_non_exhaustive()
    }
}

impl PeerVerifier {
    pub fn new(tls: &ClusterTls) -> Self {
        Self {
            trust: Trust::Bundle(tls.bundle.clone()),
            replica_id: Some(tls.replica_id.clone()),
            algorithms: provider().signature_verification_algorithms,
        }
    }

    /// Accepts any SVID that chains to `bundle` (kept current by its owner).
    pub fn any_svid(bundle: Arc<RwLock<Bundle>>) -> Self {
        Self { trust: Trust::Bundle(bundle), replica_id: None, algorithms: provider().signature_verification_algorithms }
    }

    /// Trusts the CA whose DER has this SHA-256, taken from the chain the peer sends.
    pub fn pinned(replica_id: SpiffeId, ca_sha256: [u8; 32]) -> Self {
        Self {
            trust: Trust::PinnedCa { trust_domain: replica_id.trust_domain().clone(), sha256: ca_sha256 },
            replica_id: Some(replica_id),
            algorithms: provider().signature_verification_algorithms,
        }
    }

    fn bundle(&self, intermediates: &[CertificateDer<'_>]) -> Result<Bundle, String> {
        match &self.trust {
            Trust::Bundle(bundle) => bundle.read().map(|b| b.clone()).map_err(|_| "bundle lock poisoned".to_string()),
            Trust::PinnedCa { trust_domain, sha256 } => {
                let ca = intermediates
                    .iter()
                    .find(|c| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, c.as_ref()).as_ref() == sha256.as_slice())
                    .ok_or("the peer did not send the pinned cluster CA")?;
                let mut bundle = Bundle::new(trust_domain.clone());
                bundle.add_x509_authority(ca.as_ref()).map_err(|e| format!("pinned cluster CA: {e}"))?;
                Ok(bundle)
            }
        }
    }

    fn verify(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], now: UnixTime) -> Result<(), rustls::Error> {
        let refused = |why: String| {
            tracing::warn!(reason = %why, "refused a peer certificate");
            rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
        };
        let now = i64::try_from(now.as_secs()).ok().and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok()).ok_or_else(|| refused("bad clock".into()))?;
        let bundle = self.bundle(intermediates).map_err(refused)?;
        // A peer may send its root along; the root is the anchor, not part of the path.
        let is_root = |der: &[u8]| bundle.x509_authorities().iter().any(|a| a.der.as_slice() == der);
        let mut chain: Vec<&[u8]> = vec![end_entity.as_ref()];
        chain.extend(intermediates.iter().map(|c| c.as_ref()).filter(|der| !is_root(der)));
        let verified = verify_x509_svid(&chain, &bundle, now).map_err(|e| refused(e.to_string()))?;
        if let Some(expected) = &self.replica_id {
            if verified.spiffe_id != *expected {
                return Err(refused(format!("peer is {}, not a replica ({expected})", verified.spiffe_id)));
            }
        }
        Ok(())
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Replicas are named by SPIFFE ID, not DNS: the server name is not used.
        self.verify(end_entity, intermediates, now).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// A joining replica has no certificate yet; the service refuses every call but Join
    /// from a connection without one. A certificate that is presented must verify.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], now: UnixTime) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server side: TLS 1.3 only, a client certificate verified when presented (and
/// required by every call but Join), ALPN h2 for gRPC.
pub fn server_config(tls: &ClusterTls) -> Result<rustls::ServerConfig, TlsError> {
    let chain: Vec<CertificateDer<'static>> = tls.chain.iter().map(|c| CertificateDer::from(c.clone())).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls.key_pkcs8.to_vec()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(PeerVerifier::new(tls)))
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The client side of a replica that has no certificate yet: no client identity, and a
/// server check against the cluster CA pinned by its SHA-256 (from an invite).
pub fn joiner_endpoint(replica_id: SpiffeId, ca_sha256: [u8; 32], address: &str, timeout: std::time::Duration) -> Result<tonic::transport::Endpoint, TlsError> {
    let config = tonic::transport::ClientTlsConfig::new().domain_name("replica.testudo.invalid");
    tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| TlsError::Config(format!("replica address {address:?}: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tls_config_with_verifier(config, Arc::new(PeerVerifier::pinned(replica_id, ca_sha256)))
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// The client side, for tonic: our identity as PEM, and the peer verifier.
pub fn client_endpoint(tls: &ClusterTls, address: &str, timeout: std::time::Duration) -> Result<tonic::transport::Endpoint, TlsError> {
    let chain_pem: String = tls.chain.iter().map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.clone()))).collect();
    let key_pem = Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", tls.key_pkcs8.to_vec())));
    let identity = tonic::transport::Identity::from_pem(chain_pem, key_pem.as_bytes());
    let config = tonic::transport::ClientTlsConfig::new().identity(identity).domain_name("replica.testudo.invalid");
    tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| TlsError::Config(format!("replica address {address:?}: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tls_config_with_verifier(config, Arc::new(PeerVerifier::new(tls)))
        .map_err(|e| TlsError::Config(e.to_string()))
}
