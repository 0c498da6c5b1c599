//! TLS with X.509-SVIDs: a rustls verifier that checks a peer's chain against a SPIFFE trust
//! bundle with the identity crate's SVID verifier, and (optionally) the SPIFFE ID it must
//! carry. Used for both ends: replicas to each other, agents to servers, servers to agents.
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::{Arc, RwLock};

use identity::bundle::Bundle;
use identity::x509::verify_x509_svid_allowing_slow_clock;
use identity::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use time::OffsetDateTime;

/// The one rustls crypto provider of the process (aws-lc-rs, as the AWS SDK brings).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Checks a peer's certificate chain: a valid X.509-SVID chaining to the bundle, for one
/// expected SPIFFE ID ([`SvidVerifier::for_id`]: a replica, a server) or, with
/// [`SvidVerifier::any_svid`], for any ID of the bundle's trust domain (the server API,
/// where callers are agents and admins).
pub struct SvidVerifier {
    trust: Trust,
    /// `None`: any SPIFFE ID the bundle vouches for.
    expected: Option<Expected>,
    algorithms: WebPkiSupportedAlgorithms,
    /// How far behind the issuer's clock ours may be (see [`SvidVerifier::allowing_slow_clock`]).
    slow_clock: std::time::Duration,
}

/// Which SPIFFE IDs a peer may present.
#[derive(Debug)]
enum Expected {
    /// Exactly this one.
    Id(SpiffeId),
    /// One directly under this one: `<id>/<name>` (a replica, `…/spire/replica/<node id>`).
    Under(SpiffeId),
}

impl Expected {
    fn admits(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Id(expected) => id == expected,
            Self::Under(parent) => {
                id.trust_domain() == parent.trust_domain()
                    && id
                        .path()
                        .strip_prefix(parent.path())
                        .and_then(|rest| rest.strip_prefix('/'))
                        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
            }
        }
    }
}

/// How far behind the issuer's clock an agent's or a replica's may be when it checks a
/// peer it talks to for the control plane (see [`SvidVerifier::allowing_slow_clock`]): a
/// certificate minted less than this ago passes, though the slow clock says it is not
/// valid yet. Replicas notice a clock off by far less and stop signing (`max_clock_skew`);
/// this keeps such a replica, or an agent, talking meanwhile.
pub const SLOW_CLOCK_ALLOWANCE: std::time::Duration = std::time::Duration::from_secs(300);

/// What a peer's chain must lead to.
enum Trust {
    /// The cluster's bundle, as replicas hold it.
    Bundle(Arc<RwLock<Bundle>>),
    /// A CA certificate known only by its SHA-256, which the peer must send in its chain:
    /// how a joining replica, holding just an invite, recognises the cluster.
    PinnedCa { trust_domain: identity::TrustDomain, sha256: [u8; 32] },
}

impl fmt::Debug for SvidVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidVerifier").field("expected", &self.expected).finish_non_exhaustive()
    }
}

impl SvidVerifier {
    /// Accepts only an SVID for `id` that chains to `bundle` (kept current by its owner).
    pub fn for_id(bundle: Arc<RwLock<Bundle>>, id: SpiffeId) -> Self {
        Self {
            trust: Trust::Bundle(bundle),
            expected: Some(Expected::Id(id)),
            algorithms: provider().signature_verification_algorithms,
            slow_clock: std::time::Duration::ZERO,
        }
    }

    /// Accepts only an SVID for an ID directly under `parent` (`<parent>/<name>`) that
    /// chains to `bundle`: any one of a family, such as the replicas of a cluster.
    pub fn for_ids_under(bundle: Arc<RwLock<Bundle>>, parent: SpiffeId) -> Self {
        Self {
            trust: Trust::Bundle(bundle),
            expected: Some(Expected::Under(parent)),
            algorithms: provider().signature_verification_algorithms,
            slow_clock: std::time::Duration::ZERO,
        }
    }

    /// Accepts any SVID that chains to `bundle` (kept current by its owner).
    pub fn any_svid(bundle: Arc<RwLock<Bundle>>) -> Self {
        Self {
            trust: Trust::Bundle(bundle),
            expected: None,
            algorithms: provider().signature_verification_algorithms,
            slow_clock: std::time::Duration::ZERO,
        }
    }

    /// Trusts the CA whose DER has this SHA-256, taken from the chain the peer sends, for
    /// an SVID of an ID directly under `parent`.
    pub fn pinned(parent: SpiffeId, ca_sha256: [u8; 32]) -> Self {
        Self {
            trust: Trust::PinnedCa { trust_domain: parent.trust_domain().clone(), sha256: ca_sha256 },
            expected: Some(Expected::Under(parent)),
            algorithms: provider().signature_verification_algorithms,
            slow_clock: std::time::Duration::ZERO,
        }
    }

    /// Accepts a certificate our clock says is not valid yet if it is valid `by` later: for
    /// a caller whose clock may be behind the issuer's, to whom every freshly minted
    /// certificate looks early. Expired certificates stay refused.
    pub fn allowing_slow_clock(mut self, by: std::time::Duration) -> Self {
        self.slow_clock = by;
        self
    }

    fn bundle(&self, intermediates: &[CertificateDer<'_>]) -> Result<Bundle, String> {
        match &self.trust {
            Trust::Bundle(bundle) => bundle.read().map(|b| b.clone()).map_err(|_| "bundle lock poisoned".to_string()),
            Trust::PinnedCa { trust_domain, sha256 } => {
                let ca = intermediates
                    .iter()
                    .find(|c| {
                        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, c.as_ref()).as_ref() == sha256.as_slice()
                    })
                    .ok_or("the peer did not send the pinned cluster CA")?;
                let mut bundle = Bundle::new(trust_domain.clone());
                bundle.add_x509_authority(ca.as_ref()).map_err(|e| format!("pinned cluster CA: {e}"))?;
                Ok(bundle)
            }
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let refused = |why: String| {
            // Anyone can present a bad certificate: the listener logs failed handshakes at a
            // bounded rate; the reason is here for whoever turns debug on.
            tracing::debug!(reason = %why, "refused a peer certificate");
            rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
        };
        let now = i64::try_from(now.as_secs())
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .ok_or_else(|| refused("bad clock".into()))?;
        let bundle = self.bundle(intermediates).map_err(refused)?;
        // A peer may send its root along; the root is the anchor, not part of the path.
        let is_root = |der: &[u8]| bundle.x509_authorities().iter().any(|a| a.der.as_slice() == der);
        let mut chain: Vec<&[u8]> = vec![end_entity.as_ref()];
        chain.extend(intermediates.iter().map(|c| c.as_ref()).filter(|der| !is_root(der)));
        let verified = verify_x509_svid_allowing_slow_clock(&chain, &bundle, now, self.slow_clock)
            .map_err(|e| refused(e.to_string()))?;
        if let Some(expected) = &self.expected {
            if !expected.admits(&verified.spiffe_id) {
                return Err(refused(format!("peer is {}, not {expected:?}", verified.spiffe_id)));
            }
        }
        Ok(())
    }
}

impl ServerCertVerifier for SvidVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Peers are named by SPIFFE ID, not DNS: the server name is not used.
        self.verify(end_entity, intermediates, now).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for SvidVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// Optional: callers without a certificate (joining replicas, agents attesting) reach
    /// the service, which decides per call. A certificate that is presented must verify.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verify(end_entity, intermediates, now).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
