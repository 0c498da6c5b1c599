//! The SPIFFE bundle endpoint (`server.federation.bundle_endpoint`): `GET /` answers the
//! trust domain's bundle document over HTTPS, on every replica. Anyone may call it (that
//! is its purpose), so everything a caller can make it hold is bounded: connections (all,
//! per source, handshaking), 10 s to send the request head, 16 KiB of it, one minute per
//! connection; a request body is never read, and the answer is a document rendered once
//! per bundle change.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use raft_store::network::ConnectionLimits;
use rustls::server::ResolvesServerCert;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;

use super::document::Document;

/// Bundle consumers come, fetch one small document and go.
const LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 4096,
    max_handshakes: 128,
    max_per_source: 64,
    handshake_timeout: Duration::from_secs(10),
};
/// Time to send the request head, and its size (hyper's smallest buffer).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Whatever a connection does, it is closed after this.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Binds the endpoint on `address`, presenting what `certificate` resolves, and serves
/// `document`. Returns the bound address; the task serves until aborted.
pub async fn serve(
    address: SocketAddr,
    certificate: Arc<dyn ResolvesServerCert>,
    document: Document,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // TLS 1.2 as well as 1.3, as SPIRE's endpoint: partners run Go, Java and curl clients.
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen for the bundle endpoint on {address}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let (mut incoming, accepting) =
        raft_store::network::accept_tls(listener, TlsAcceptor::from(Arc::new(config)), "bundle endpoint", LIMITS);
    let task = tokio::spawn(async move {
        let _accepting = AbortOnDrop(accepting);
        while let Some(connection) = incoming.next().await {
            let Ok(connection) = connection else { continue };
            let connection = connection.with_lifetime(CONNECTION_LIFETIME);
            let document = document.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let document = document.clone();
                    async move { Ok::<_, Infallible>(answer(&request, &document)) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .serve_connection(TokioIo::new(connection), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "bundle endpoint connection ended");
                }
            });
        }
    });
    Ok((bound, task))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What SPIRE's endpoint answers: the document for `GET /`, 405 for other methods, 404 for
/// other paths; 503 while this replica has no bundle to serve.
fn answer(request: &Request<Incoming>, document: &Document) -> Response<Full<Bytes>> {
    let (status, body) = if request.method() != Method::GET {
        (StatusCode::METHOD_NOT_ALLOWED, None)
    } else if request.uri().path() != "/" {
        (StatusCode::NOT_FOUND, None)
    } else {
        match document.borrow().clone() {
            Some(bytes) => (StatusCode::OK, Some(bytes)),
            None => (StatusCode::SERVICE_UNAVAILABLE, None),
        }
    };
    let code = match status {
        StatusCode::OK => "200",
        StatusCode::NOT_FOUND => "404",
        StatusCode::METHOD_NOT_ALLOWED => "405",
        _ => "503",
    };
    metrics::counter!("testudo_bundle_endpoint_requests_total", "code" => code).increment(1);
    let mut response = match body {
        Some(bytes) => {
            let mut response = Response::new(Full::new(bytes));
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        None => Response::new(Full::new(Bytes::from(format!("{status}\n")))),
    };
    *response.status_mut() = status;
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
    }
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
