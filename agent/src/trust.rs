//! Where the agent's first trust bundle comes from: the bundle it saved last time, the
//! configured file, or — with `insecure_bootstrap` — whatever the first reachable server
//! says, fetched once without checking the server (development only: anyone who can answer
//! on that address can impersonate the trust domain).

use std::sync::Arc;

use identity::bundle::Bundle;
use identity::TrustDomain;
use proto::spire::api::server::bundle::v1 as bundle_pb;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::config::TrustSource;

/// Why no trust bundle could be had.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("trust bundle {path}: {reason}")]
    File { path: String, reason: String },
    #[error("insecure bootstrap: no server gave a bundle: {0}")]
    Bootstrap(String),
}

/// Reads the configured trust bundle file (PEM certificates or a SPIFFE bundle document).
pub fn from_file(trust_domain: &TrustDomain, source: &TrustSource) -> Result<Option<Bundle>, TrustError> {
    let TrustSource::File { path, spiffe_format } = source else { return Ok(None) };
    let error = |reason: String| TrustError::File { path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let bundle = if *spiffe_format {
        Bundle::from_spiffe_json(trust_domain.clone(), &bytes).map_err(|e| error(e.to_string()))?
    } else {
        let text = String::from_utf8(bytes).map_err(|_| error("not PEM text".into()))?;
        let mut bundle = Bundle::new(trust_domain.clone());
        for der in identity::bundle::parse_pem_certificates(&text).map_err(|e| error(e.to_string()))? {
            bundle.add_x509_authority(&der).map_err(|e| error(e.to_string()))?;
        }
        bundle
    };
    if bundle.x509_authorities().is_empty() {
        return Err(error("no X.509 authority in it".into()));
    }
    Ok(Some(bundle))
}

/// Asks each server in turn for the bundle, without verifying who answers.
pub async fn bootstrap_insecurely(servers: &[String]) -> Result<Bundle, TrustError> {
    let mut last = String::from("no server configured");
    for address in servers {
        let attempt = async {
            let tls = ClientTlsConfig::new().domain_name("server.testudo.invalid");
            let channel = Endpoint::from_shared(format!("https://{address}"))
                .map_err(|e| e.to_string())?
                .connect_timeout(std::time::Duration::from_secs(3))
                .timeout(std::time::Duration::from_secs(10))
                .tls_config_with_verifier(tls, Arc::new(AcceptAnyServer::default()))
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            let pb = bundle_pb::bundle_client::BundleClient::new(channel)
                .get_bundle(bundle_pb::GetBundleRequest { output_mask: None })
                .await
                .map_err(|e| e.message().to_string())?
                .into_inner();
            crate::sync::bundle_from_pb(&pb)
        };
        match attempt.await {
            Ok(bundle) => {
                tracing::warn!(server = %address, "trust bundle taken from a server that was not verified (insecure_bootstrap)");
                return Ok(bundle);
            }
            Err(e) => last = format!("{address}: {e}"),
        }
    }
    Err(TrustError::Bootstrap(last))
}

/// Accepts any server certificate; still checks the handshake signatures.
#[derive(Debug)]
struct AcceptAnyServer {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl Default for AcceptAnyServer {
    fn default() -> Self {
        Self { algorithms: spiffe_tls::provider().signature_verification_algorithms }
    }
}

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
