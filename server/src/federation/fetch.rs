//! Fetching a foreign trust domain's bundle from its bundle endpoint (SPIFFE Federation
//! §5). The endpoint is someone else's server, so everything it can make this replica
//! spend is bounded (time to connect, time for the whole exchange, bytes of the answer), the
//! endpoint is authenticated by its profile before a byte of the request is sent, and the
//! document is checked before it is returned.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{HeaderValue, ACCEPT, HOST, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use identity::bundle::{Bundle, MAX_BUNDLE_JSON_BYTES};
use identity::{SpiffeId, TrustDomain};
use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use spiffe_tls::SvidVerifier;

/// How long to wait for the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the whole exchange (connect, handshake, request, answer) may take by default:
/// an endpoint that drips its answer is cut off here.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How the endpoint must authenticate.
#[derive(Clone, Debug)]
pub enum EndpointAuth {
    /// Web PKI: the certificate chains to `roots` and names the URL's host.
    Web(Arc<RootCertStore>),
    /// SPIFFE: the endpoint presents an X509-SVID for `id`, verified against `bundle` (the
    /// bundle of `id`'s trust domain this replica holds).
    Spiffe { id: SpiffeId, bundle: Bundle },
}

/// Why a fetch failed; the last good bundle stays in use.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bundle endpoint URL {0:?}: {1}")]
    Url(String, String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("TLS with {0}: {1}")]
    Tls(String, String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the endpoint answered {0}")]
    Status(StatusCode),
    #[error("the answer is larger than {MAX_BUNDLE_JSON_BYTES} bytes")]
    TooLarge,
    #[error("no whole answer within {0:?}")]
    Timeout(Duration),
    #[error("the document is not a SPIFFE bundle: {0}")]
    Document(String),
    #[error("the document is for another trust domain: {0}")]
    ForeignAuthority(String),
}

/// The web PKI roots of this host (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
pub fn system_roots() -> Arc<RootCertStore> {
    let loaded = rustls_native_certs::load_native_certs();
    for error in &loaded.errors {
        tracing::warn!(error = %error, "a system root certificate could not be loaded");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    tracing::debug!(added, ignored, "web PKI roots for https_web bundle endpoints");
    Arc::new(roots)
}

/// `url` as a bundle endpoint's: an https URL with a host.
pub fn check_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
    if uri.scheme_str() != Some("https") {
        return Err("must be an https URL".into());
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(uri)
}

/// Fetches and checks `trust_domain`'s bundle from `url`, within `timeout` for the whole
/// exchange.
pub async fn fetch(
    trust_domain: &TrustDomain,
    url: &str,
    auth: &EndpointAuth,
    timeout: Duration,
) -> Result<Bundle, FetchError> {
    let uri = check_url(url).map_err(|why| FetchError::Url(url.to_owned(), why))?;
    let host = uri.host().unwrap_or_default().to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_else(|| host.clone());
    let body = tokio::time::timeout(timeout, exchange(&host, port, &authority, &path, auth))
        .await
        .map_err(|_| FetchError::Timeout(timeout))??;
    check(trust_domain, &body)
}

async fn exchange(
    host: &str,
    port: u16,
    authority: &str,
    path: &str,
    auth: &EndpointAuth,
) -> Result<Bytes, FetchError> {
    let address = format!("{host}:{port}");
    let bracketed = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((bracketed, port)))
        .await
        .map_err(|_| FetchError::Connect(address.clone(), "timed out".into()))?
        .map_err(|e| FetchError::Connect(address.clone(), e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls(address.clone(), e.to_string()))?;
    let mut config = match auth {
        EndpointAuth::Web(roots) => builder.with_root_certificates(roots.clone()).with_no_client_auth(),
        EndpointAuth::Spiffe { id, bundle } => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SvidVerifier::for_id(
                Arc::new(RwLock::new(bundle.clone())),
                id.clone(),
            )))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(bracketed.to_owned())
        .map_err(|e| FetchError::Tls(address.clone(), format!("server name: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| FetchError::Tls(address.clone(), e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let driving = tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, HeaderValue::from_str(authority).map_err(|e| FetchError::Http(e.to_string()))?)
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "testudo-server")
        .body(Empty::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let answer = sender.send_request(request).await.map_err(|e| FetchError::Http(e.to_string()));
    let result = match answer {
        Ok(answer) if answer.status() != StatusCode::OK => Err(FetchError::Status(answer.status())),
        Ok(answer) => match Limited::new(answer.into_body(), MAX_BUNDLE_JSON_BYTES).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(FetchError::TooLarge),
            Err(e) => Err(FetchError::Http(e.to_string())),
        },
        Err(e) => Err(e),
    };
    driving.abort();
    result
}

/// The document as `trust_domain`'s bundle: a SPIFFE bundle with at least one key, whose
/// X.509 authorities that name a trust domain name this one.
fn check(trust_domain: &TrustDomain, document: &[u8]) -> Result<Bundle, FetchError> {
    let bundle =
        Bundle::from_spiffe_json(trust_domain.clone(), document).map_err(|e| FetchError::Document(e.to_string()))?;
    if bundle.x509_authorities().is_empty() && bundle.jwt_authorities().is_empty() {
        return Err(FetchError::Document("it holds no X.509 or JWT authority".into()));
    }
    for authority in bundle.x509_authorities() {
        let facts = identity::x509::certificate_facts(&authority.der)
            .map_err(|e| FetchError::Document(format!("X.509 authority: {e}")))?;
        if let Some(other) = facts.spiffe_ids.iter().find(|id| id.trust_domain() != trust_domain) {
            return Err(FetchError::ForeignAuthority(format!(
                "an X.509 authority names {other}, not trust domain {}",
                trust_domain.name()
            )));
        }
    }
    Ok(bundle)
}
