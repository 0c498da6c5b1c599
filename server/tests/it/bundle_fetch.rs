//! Fetching a partner's bundle: from a real bundle endpoint (this crate's, in-process) with
//! each profile, and from hostile endpoints: the wrong SPIFFE ID, an expired or
//! foreign-signed certificate, a document for another trust domain, a 100 MiB answer and
//! an answer dripped byte by byte. Each is refused with its reason.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use identity::bundle::Bundle;
use identity::crypto::{KeyType, LocalKey, Signer};
use identity::x509::{mint_ca, mint_x509_svid, CaTemplate, Issuer, Subject, SvidTemplate};
use identity::{SpiffeId, TrustDomain};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use server::federation::fetch::{fetch, EndpointAuth, FetchError};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Ca {
    der: Vec<u8>,
    key: LocalKey,
}

fn td(name: &str) -> TrustDomain {
    TrustDomain::parse(name).unwrap()
}

fn ca(trust_domain: &str) -> Ca {
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let template = CaTemplate {
        trust_domain: td(trust_domain),
        public_key: key.public_key().clone(),
        ttl: Duration::from_secs(3600),
        subject: Subject::default(),
        serial: None,
    };
    let der = mint_ca(&template, None, Some(&key as &dyn Signer), OffsetDateTime::now_utc()).unwrap().der;
    Ca { der, key }
}

fn bundle_of(trust_domain: &str, ca: &Ca) -> Bundle {
    let mut bundle = Bundle::new(td(trust_domain));
    bundle.add_x509_authority(&ca.der).unwrap();
    bundle
}

/// A server certificate for `id` from `ca`, valid from `issued` for an hour.
fn svid(ca: &Ca, id: &str, issued: OffsetDateTime) -> Arc<CertifiedKey> {
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let template = SvidTemplate {
        spiffe_id: SpiffeId::parse(id).unwrap(),
        public_key: key.public_key().clone(),
        ttl: Duration::from_secs(3600),
        dns_names: vec![],
        subject: Subject::default(),
        serial: None,
    };
    let issuer = Issuer::new(&ca.der, &ca.key).unwrap();
    let leaf = mint_x509_svid(&template, &issuer, issued).unwrap().der;
    let pkcs8 = key.to_pkcs8_der().unwrap();
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        pkcs8.to_vec(),
    )))
    .unwrap();
    Arc::new(CertifiedKey::new(vec![CertificateDer::from(leaf), CertificateDer::from(ca.der.clone())], signing))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The crate's bundle endpoint, serving `document` with `certificate`; its URL.
async fn endpoint(certificate: Arc<dyn rustls::server::ResolvesServerCert>, document: &Bundle) -> String {
    let (_tx, rx) = tokio::sync::watch::channel(Some(Bytes::from(document.to_spiffe_json())));
    std::mem::forget(_tx);
    let (bound, _task) =
        server::federation::endpoint::serve("127.0.0.1:0".parse().unwrap(), certificate, rx).await.unwrap();
    format!("https://127.0.0.1:{}/", bound.port())
}

/// A hostile endpoint: after the TLS handshake and the request head, it writes `head` and
/// then `body_chunk` `chunks` times, sleeping `pause` between chunks.
async fn hostile(
    certificate: Arc<CertifiedKey>,
    head: String,
    body_chunk: Vec<u8>,
    chunks: usize,
    pause: Duration,
) -> String {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(certificate)));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, head, chunk) = (acceptor.clone(), head.clone(), body_chunk.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut request = vec![0u8; 4096];
                let _ = tls.read(&mut request).await;
                if tls.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..chunks {
                    if tls.write_all(&chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
    });
    format!("https://127.0.0.1:{port}/")
}

fn ok_head(length: usize) -> String {
    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n")
}

const SERVER: &str = "spiffe://b.test/spire/server";

fn spiffe_auth(bundle: &Bundle) -> EndpointAuth {
    EndpointAuth::Spiffe { id: SpiffeId::parse(SERVER).unwrap(), bundle: bundle.clone() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spiffe_endpoint_is_fetched_and_every_hostile_one_refused() {
    let b = ca("b.test");
    let b_bundle = bundle_of("b.test", &b);
    let now = OffsetDateTime::now_utc();
    let timeout = Duration::from_secs(3);

    let url = endpoint(Arc::new(Fixed(svid(&b, SERVER, now))), &b_bundle).await;
    let fetched = fetch(&td("b.test"), &url, &spiffe_auth(&b_bundle), timeout).await.unwrap();
    assert_eq!(fetched.x509_authorities(), b_bundle.x509_authorities());

    // The endpoint is someone else: another ID, an expired SVID, an SVID from another CA.
    let wrong_id = endpoint(Arc::new(Fixed(svid(&b, "spiffe://b.test/not-the-server", now))), &b_bundle).await;
    let expired = endpoint(Arc::new(Fixed(svid(&b, SERVER, now - time::Duration::hours(2)))), &b_bundle).await;
    let evil = ca("b.test");
    let forged = endpoint(Arc::new(Fixed(svid(&evil, SERVER, now))), &b_bundle).await;
    for (what, url) in [("another ID", wrong_id), ("expired", expired), ("another CA", forged)] {
        let err = fetch(&td("b.test"), &url, &spiffe_auth(&b_bundle), timeout).await.unwrap_err();
        assert!(matches!(err, FetchError::Tls(..)), "{what}: {err}");
    }

    // A document of another trust domain, served by b.test's real endpoint identity.
    let c = ca("c.test");
    let url = endpoint(Arc::new(Fixed(svid(&b, SERVER, now))), &bundle_of("c.test", &c)).await;
    let err = fetch(&td("b.test"), &url, &spiffe_auth(&b_bundle), timeout).await.unwrap_err();
    assert!(matches!(err, FetchError::ForeignAuthority(_)) && err.to_string().contains("spiffe://c.test"), "{err}");

    // Not a bundle; an empty one; an error status.
    let not_json = hostile(svid(&b, SERVER, now), ok_head(5), b"hello".to_vec(), 1, Duration::ZERO).await;
    let err = fetch(&td("b.test"), &not_json, &spiffe_auth(&b_bundle), timeout).await.unwrap_err();
    assert!(matches!(err, FetchError::Document(_)), "{err}");
    let empty = br#"{"keys":[]}"#.to_vec();
    let url = hostile(svid(&b, SERVER, now), ok_head(empty.len()), empty, 1, Duration::ZERO).await;
    let err = fetch(&td("b.test"), &url, &spiffe_auth(&b_bundle), timeout).await.unwrap_err();
    assert!(err.to_string().contains("no X.509 or JWT authority"), "{err}");
    let url = hostile(
        svid(&b, SERVER, now),
        "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".into(),
        vec![],
        0,
        Duration::ZERO,
    )
    .await;
    let err = fetch(&td("b.test"), &url, &spiffe_auth(&b_bundle), timeout).await.unwrap_err();
    assert!(matches!(err, FetchError::Status(s) if s.as_u16() == 500), "{err}");

    // 100 MiB announced and streamed: refused once past the 4 MiB cap, not buffered whole.
    let url = hostile(svid(&b, SERVER, now), ok_head(100 << 20), vec![b' '; 1 << 20], 100, Duration::ZERO).await;
    let err = fetch(&td("b.test"), &url, &spiffe_auth(&b_bundle), Duration::from_secs(20)).await.unwrap_err();
    assert!(matches!(err, FetchError::TooLarge), "{err}");

    // An answer dripped a byte every 200 ms is cut off at the timeout.
    let url = hostile(svid(&b, SERVER, now), ok_head(1000), b"{".to_vec(), 1000, Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let err = fetch(&td("b.test"), &url, &spiffe_auth(&b_bundle), timeout).await.unwrap_err();
    assert!(matches!(err, FetchError::Timeout(_)), "{err}");
    assert!(started.elapsed() < timeout + Duration::from_secs(2), "took {:?}", started.elapsed());

    // Plain http is refused before anything is sent.
    let err = fetch(&td("b.test"), "http://127.0.0.1:1/", &spiffe_auth(&b_bundle), timeout).await.unwrap_err();
    assert!(matches!(err, FetchError::Url(..)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_endpoint_is_checked_against_web_pki_roots() {
    let dir = tempfile::tempdir().unwrap();
    testkit::pki::web_server(dir.path());
    let files = server::config::federation::ServingCertFile {
        cert_file_path: dir.path().join("web.pem"),
        key_file_path: dir.path().join("web.key"),
        file_sync_interval: Duration::from_secs(3600),
    };
    let web = Arc::new(server::federation::web_cert::WebCertificate::load(files).unwrap());
    let b = ca("b.test");
    let url = endpoint(web, &bundle_of("b.test", &b)).await;

    let pem = std::fs::read(dir.path().join("root.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for block in pem::parse_many(&pem).unwrap() {
        roots.add(CertificateDer::from(block.into_contents())).unwrap();
    }
    let fetched =
        fetch(&td("b.test"), &url, &EndpointAuth::Web(Arc::new(roots)), Duration::from_secs(3)).await.unwrap();
    assert_eq!(fetched.x509_authorities().len(), 1);

    let nobody = EndpointAuth::Web(Arc::new(rustls::RootCertStore::empty()));
    let err = fetch(&td("b.test"), &url, &nobody, Duration::from_secs(3)).await.unwrap_err();
    assert!(matches!(err, FetchError::Tls(..)), "an unknown root: {err}");
}
