//! Where the agent's first trust bundle comes from: the bundle it saved last time, the
//! configured file, an HTTPS URL checked with the system's web roots (`trust_bundle_url`,
//! as SPIRE's), or — with `insecure_bootstrap` — whatever the first reachable server says,
//! fetched once without checking the server (development only: anyone who can answer on
//! that address can impersonate the trust domain).

use std::sync::Arc;

use identity::bundle::Bundle;
use identity::TrustDomain;
use proto::spire::api::server::bundle::v1 as bundle_pb;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{ClientTlsConfig, Endpoint};

/// Why no trust bundle could be had.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("trust bundle {path}: {reason}")]
    File { path: String, reason: String },
    #[error("insecure bootstrap: no server gave a bundle: {0}")]
    Bootstrap(String),
    #[error("trust bundle URL {url}: {reason}")]
    Url { url: String, reason: String },
}

/// How long fetching the bundle from `trust_bundle_url` may take, all told.
const URL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A bundle from its bytes: PEM certificates, or a SPIFFE bundle document.
fn parse_bundle(trust_domain: &TrustDomain, bytes: &[u8], spiffe_format: bool) -> Result<Bundle, String> {
    let bundle = if spiffe_format {
        Bundle::from_spiffe_json(trust_domain.clone(), bytes).map_err(|e| e.to_string())?
    } else {
        let text = std::str::from_utf8(bytes).map_err(|_| "not PEM text".to_string())?;
        let mut bundle = Bundle::new(trust_domain.clone());
        for der in identity::bundle::parse_pem_certificates(text).map_err(|e| e.to_string())? {
            bundle.add_x509_authority(&der).map_err(|e| e.to_string())?;
        }
        bundle
    };
    if bundle.x509_authorities().is_empty() {
        return Err("no X.509 authority in it".into());
    }
    Ok(bundle)
}

/// Reads the configured trust bundle file (PEM certificates or a SPIFFE bundle document).
pub fn from_file(
    trust_domain: &TrustDomain,
    path: &std::path::Path,
    spiffe_format: bool,
) -> Result<Bundle, TrustError> {
    let error = |reason: String| TrustError::File { path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    parse_bundle(trust_domain, &bytes, spiffe_format).map_err(error)
}

/// Downloads the bundle from `url` over HTTPS, checking the server with the system's web
/// roots (SSL_CERT_FILE and SSL_CERT_DIR are honoured); a response over
/// [`MAX_BUNDLE_JSON_BYTES`] is refused.
///
/// [`MAX_BUNDLE_JSON_BYTES`]: identity::bundle::MAX_BUNDLE_JSON_BYTES
pub async fn from_url(trust_domain: &TrustDomain, url: &str, spiffe_format: bool) -> Result<Bundle, TrustError> {
    let error = |reason: String| TrustError::Url { url: url.to_owned(), reason };
    let client = reqwest::Client::builder()
        .https_only(true)
        .timeout(URL_TIMEOUT)
        .build()
        .map_err(|e| error(format!("cannot set up HTTPS: {e}")))?;
    let limit = identity::bundle::MAX_BUNDLE_JSON_BYTES;
    let mut response = client.get(url).send().await.map_err(|e| error(error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(error(format!("the server answered {}", response.status())));
    }
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(error(format!("the bundle is over {limit} bytes")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error(e.to_string()))? {
        if body.len() + chunk.len() > limit {
            return Err(error(format!("the bundle is over {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    let bundle = parse_bundle(trust_domain, &body, spiffe_format).map_err(error)?;
    tracing::info!(url, authorities = bundle.x509_authorities().len(), "trust bundle downloaded");
    Ok(bundle)
}

/// An error with its sources: reqwest's own message ("error sending request") says little.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
                tracing::warn!(server = %address, "trust bundle taken from a server that was not verified \
                    (insecure_bootstrap)");
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
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
