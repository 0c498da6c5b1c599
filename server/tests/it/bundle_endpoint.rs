//! The SPIFFE bundle endpoint on real replicas: every replica answers the same document
//! (the replicated bundle) with the server SVID (`https_spiffe`) or a web certificate that
//! is re-read from its files (`https_web`, checked with curl); it follows a CA rotation,
//! keeps answering with a replica down, and refuses other methods, paths, oversized and
//! slow request heads.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use identity::bundle::{parse_pem_certificates, Bundle};
use identity::{SpiffeId, TrustDomain};
use rustls::client::danger::ServerCertVerifier;
use spiffe_tls::SvidVerifier;
use testkit::{free_port, wait_until, ReplicaOptions, ServerProcess as Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn endpoint_block(port: u16, profile: &str) -> String {
    format!(
        r#"federation {{
    bundle_endpoint {{
      address = "127.0.0.1"
      port = {port}
      refresh_hint = "1m"
      {profile}
    }}
  }}"#
    )
}

/// An HTTP answer: status, head, body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Sends `request` (raw HTTP/1.1) over TLS, checking the server with `verifier`.
fn exchange(port: u16, verifier: Arc<dyn ServerCertVerifier>, request: &[u8]) -> Result<Answer, String> {
    let request = request.to_vec();
    tokio::runtime::Runtime::new().unwrap().block_on(async move {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tls.write_all(&request).await.map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut raw)).await;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no HTTP answer: {:?}", String::from_utf8_lossy(&raw[..raw.len().min(200)])))?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
        Ok(Answer { status, head, body: raw[split + 4..].to_vec() })
    })
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes()
}

fn server_verifier(bundle: &Bundle, id: &str) -> Arc<dyn ServerCertVerifier> {
    Arc::new(SvidVerifier::for_id(Arc::new(RwLock::new(bundle.clone())), SpiffeId::parse(id).unwrap()))
}

fn trust_bundle(server: &Server) -> Bundle {
    let mut bundle = Bundle::new(td());
    for der in parse_pem_certificates(&server.bundle_pem()).unwrap() {
        bundle.add_x509_authority(&der).unwrap();
    }
    bundle
}

/// The document `port` serves, once it serves one.
fn document(port: u16, bundle: &Bundle) -> Vec<u8> {
    let verifier = server_verifier(bundle, "spiffe://example.org/spire/server");
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match exchange(port, verifier.clone(), &get("/")) {
            Ok(answer) if answer.status == 200 => {
                assert!(answer.head.to_ascii_lowercase().contains("content-type: application/json"), "{}", answer.head);
                return answer.body;
            }
            Ok(answer) => last = format!("status {}", answer.status),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no document from port {port}: {last}");
}

fn x509_count(document: &[u8]) -> usize {
    Bundle::from_spiffe_json(td(), document).unwrap().x509_authorities().len()
}

#[test]
fn every_replica_serves_the_replicated_bundle_with_its_server_svid() {
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut servers: Vec<Server> = (1..=3)
        .map(|id| {
            Server::start(root.path(), id, &endpoint_block(ports[id as usize - 1], r#"profile "https_spiffe" {}"#))
        })
        .collect();
    Server::form_cluster(&servers);
    let bundle = trust_bundle(&servers[0]);

    // The same bytes from every replica, and the bundle `bundle show` prints.
    let first = document(ports[0], &bundle);
    for port in &ports[1..] {
        assert_eq!(document(*port, &bundle), first, "replica on port {port} answers another document");
    }
    let served = Bundle::from_spiffe_json(td(), &first).unwrap();
    assert_eq!(served.x509_authorities(), bundle.x509_authorities());
    assert_eq!(served.refresh_hint, Some(60), "the configured refresh hint");
    assert!(!served.jwt_authorities().is_empty(), "JWT authorities are published too");

    // The endpoint is the server: a client expecting another SPIFFE ID refuses it.
    let other = server_verifier(&bundle, "spiffe://example.org/somebody-else");
    assert!(exchange(ports[0], other, &get("/")).is_err());

    // Only GET /.
    let verifier = server_verifier(&bundle, "spiffe://example.org/spire/server");
    let post = b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let answer = exchange(ports[1], verifier.clone(), post).unwrap();
    assert_eq!(answer.status, 405);
    assert!(answer.head.to_ascii_lowercase().contains("allow: get"), "{}", answer.head);
    assert_eq!(exchange(ports[1], verifier.clone(), &get("/bundle")).unwrap().status, 404);

    // A request head over 16 KiB is refused without an answer of 200.
    let huge = format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n", "a".repeat(32 * 1024));
    match exchange(ports[1], verifier.clone(), huge.as_bytes()) {
        Ok(answer) => assert_eq!(answer.status, 431, "{}", answer.head),
        Err(e) => assert!(e.contains("no HTTP answer"), "{e}"),
    }
    // A head sent too slowly is cut off after 10 s.
    let started = Instant::now();
    let slow = exchange(ports[1], verifier.clone(), b"GET / HTTP/1.1\r\nHost: loc");
    let took = started.elapsed();
    assert!(slow.map(|a| a.status != 200).unwrap_or(true), "a partial head got the document");
    assert!(took < Duration::from_secs(15), "the slow head was held for {took:?}");

    // A CA rotation reaches every replica's document.
    let out = servers[0].command(&["localauthority", "x509", "prepare"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for port in &ports {
        wait_until(
            Duration::from_secs(20),
            || x509_count(&document(*port, &bundle)) == 2,
            &format!("the prepared CA in the document on port {port}"),
        );
    }
    let rotated = document(ports[0], &bundle);
    assert_ne!(rotated, first);

    // With a replica down, the others answer the same document.
    servers[0].kill();
    for port in &ports[1..] {
        assert_eq!(document(*port, &bundle), rotated);
    }
}

fn openssl_certificate(dir: &Path, name: &str) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.pem")))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// curl, checking the endpoint against `ca` as a web PKI client does.
fn curl(port: u16, ca: &Path) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg(format!("https://127.0.0.1:{port}/"))
        .output()
        .unwrap()
}

#[test]
fn the_https_web_profile_presents_the_files_and_follows_their_renewal() {
    let root = tempfile::tempdir().unwrap();
    let certs = root.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    openssl_certificate(&certs, "first");
    std::fs::copy(certs.join("first.pem"), certs.join("serving.pem")).unwrap();
    std::fs::copy(certs.join("first.key"), certs.join("serving.key")).unwrap();
    let port = free_port();
    let profile = format!(
        r#"profile "https_web" {{
        serving_cert_file {{
          cert_file_path = "{dir}/serving.pem"
          key_file_path = "{dir}/serving.key"
          file_sync_interval = "1s"
        }}
      }}"#,
        dir = certs.display()
    );
    let options = ReplicaOptions { server_extra: endpoint_block(port, &profile), ..Default::default() };
    let server = Server::start_with(root.path(), 1, &options);
    server.json(&["cluster", "init"]);
    let bundle = trust_bundle(&server);

    let mut body = Vec::new();
    wait_until(
        Duration::from_secs(20),
        || {
            let out = curl(port, &certs.join("first.pem"));
            body = out.stdout;
            out.status.success() && body.starts_with(b"{")
        },
        "curl to fetch the bundle over web PKI",
    );
    assert_eq!(Bundle::from_spiffe_json(td(), &body).unwrap().x509_authorities(), bundle.x509_authorities());

    // A renewed certificate on disk is presented within a file sync interval or two.
    openssl_certificate(&certs, "second");
    std::fs::copy(certs.join("second.key"), certs.join("serving.key.tmp")).unwrap();
    std::fs::copy(certs.join("second.pem"), certs.join("serving.pem.tmp")).unwrap();
    std::fs::rename(certs.join("serving.key.tmp"), certs.join("serving.key")).unwrap();
    std::fs::rename(certs.join("serving.pem.tmp"), certs.join("serving.pem")).unwrap();
    wait_until(
        Duration::from_secs(10),
        || curl(port, &certs.join("second.pem")).status.success(),
        "the renewed certificate to be presented",
    );
    assert!(!curl(port, &certs.join("first.pem")).status.success(), "the old certificate is gone");

    // A broken file is logged and the certificate in use kept.
    std::fs::write(certs.join("serving.pem"), "not a certificate").unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(curl(port, &certs.join("second.pem")).status.success());
    assert!(server.log().contains("bundle endpoint certificate not reloaded"), "{}", server.log());
}
