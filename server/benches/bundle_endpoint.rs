//! Bundle endpoint throughput of one `testudo-server` replica (`https_web` profile, the
//! certificate of a test web PKI), beside `openssl s_server -WWW` serving the same document
//! as a static file with the same certificate, in the same run on the same machine.
//!
//! cargo bench -p testudo-server --bench bundle_endpoint -- [--seconds N] [--concurrency C]
//!
//! Two ways of asking: a new TLS connection per request (how partners fetch, every few
//! minutes each), against both servers; and requests on kept-alive connections, against the
//! endpoint only (s_server -WWW closes after each answer).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::{free_port, wait_until, ReplicaOptions, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Options {
    seconds: u64,
    concurrency: usize,
}

fn options() -> Options {
    let mut o = Options { seconds: 10, concurrency: 16 };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let value = pair[1].parse::<u64>().ok();
        match (pair[0].as_str(), value) {
            ("--seconds", Some(v)) => o.seconds = v,
            ("--concurrency", Some(v)) => o.concurrency = v as usize,
            _ => {}
        }
    }
    o
}

fn client_config(roots: &Path) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for cert in pem::parse_many(std::fs::read(roots).expect("roots")).expect("roots PEM") {
        store.add(rustls::pki_types::CertificateDer::from(cert.into_contents())).expect("root");
    }
    Arc::new(rustls::ClientConfig::builder().with_root_certificates(store).with_no_client_auth())
}

/// One request on a new connection; the body's length.
async fn fetch_once(config: &Arc<rustls::ClientConfig>, port: u16, request: &[u8]) -> std::io::Result<usize> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await?;
    tls.write_all(request).await?;
    let mut answer = Vec::new();
    // s_server ends with a TLS close_notify or a plain close: either ends the answer.
    let _ = tls.read_to_end(&mut answer).await;
    let body = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |at| answer.len() - at - 4);
    Ok(body)
}

/// Requests per second over `seconds`, `concurrency` clients each making a new connection
/// per request; panics if an answer lacks the document.
fn new_connections(
    o: &Options,
    config: &Arc<rustls::ClientConfig>,
    port: u16,
    request: &'static [u8],
    want: usize,
) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(o.seconds);
    runtime.block_on(async {
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..o.concurrency {
            let (config, done) = (config.clone(), done.clone());
            clients.spawn(async move {
                while Instant::now() < until {
                    let body = fetch_once(&config, port, request).await.expect("a request");
                    assert!(body >= want, "an answer of {body} bytes, not the {want}-byte document");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while clients.join_next().await.is_some() {}
    });
    done.load(Ordering::Relaxed) as f64 / o.seconds as f64
}

/// Requests per second on kept-alive connections, one per client.
fn kept_alive(o: &Options, config: &Arc<rustls::ClientConfig>, port: u16, want: usize) -> f64 {
    use http_body_util::{BodyExt, Empty};
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(o.seconds);
    runtime.block_on(async {
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..o.concurrency {
            let (config, done) = (config.clone(), done.clone());
            clients.spawn(async move {
                // The endpoint closes a connection after 60 s; a run is shorter.
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("handshake");
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(hyper_util::rt::TokioIo::new(tls))
                        .await
                        .expect("HTTP/1.1");
                tokio::spawn(connection);
                while Instant::now() < until {
                    let request =
                        hyper::Request::get("/").header("host", "localhost").body(Empty::new()).expect("request");
                    let answer = sender.send_request(request).await.expect("an answer");
                    let body = answer.into_body().collect().await.expect("a body").to_bytes();
                    assert_eq!(body.len(), want);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        while clients.join_next().await.is_some() {}
    });
    done.load(Ordering::Relaxed) as f64 / o.seconds as f64
}

fn s_server(dir: &Path, port: u16) -> Child {
    Command::new("openssl")
        .args(["s_server", "-quiet", "-WWW", "-accept", &port.to_string(), "-cert", "web.pem", "-key", "web.key"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server")
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let o = options();
    let root = tempfile::tempdir().expect("temp dir");
    let pki = root.path().join("pki");
    std::fs::create_dir(&pki).expect("pki dir");
    testkit::pki::web_server(&pki);
    let port = free_port();
    let server_extra = format!(
        "log_level = \"WARN\"\n  federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {port}\n \
         profile \"https_web\" {{\n serving_cert_file {{\n cert_file_path = \"{dir}/web.pem\"\n \
         key_file_path = \"{dir}/web.key\"\n }}\n }}\n }}\n }}",
        dir = pki.display()
    );
    let server = ServerProcess::start_with(
        root.path(),
        1,
        &ReplicaOptions { server_extra, default_timing: true, ..Default::default() },
    );
    server.json(&["cluster", "init"]);
    let config = client_config(&pki.join("root.pem"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut document = 0;
    wait_until(
        Duration::from_secs(30),
        || {
            document = runtime
                .block_on(fetch_once(&config, port, b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"))
                .unwrap_or(0);
            document > 100
        },
        "the bundle endpoint to serve its document",
    );
    // The same document as a static file for s_server.
    let body = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp).await.expect("handshake");
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        let at = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
        answer[at + 4..].to_vec()
    });
    std::fs::write(pki.join("bundle.json"), &body).expect("static document");

    println!(
        "bundle endpoint benchmark: {} s per run, {} clients, a {}-byte document, TLS 1.3, loopback",
        o.seconds,
        o.concurrency,
        body.len()
    );
    let endpoint_new = new_connections(
        &o,
        &config,
        port,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        body.len(),
    );
    let s_port = free_port();
    let mut baseline = s_server(&pki, s_port);
    wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", s_port)).is_ok(), "s_server");
    let static_new = new_connections(&o, &config, s_port, b"GET /bundle.json HTTP/1.0\r\n\r\n", body.len());
    let _ = baseline.kill();
    let _ = baseline.wait();
    let endpoint_kept = kept_alive(&o, &config, port, body.len());
    println!("new connection per request:  bundle endpoint {endpoint_new:>9.0} req/s   openssl s_server -WWW (static file) {static_new:>9.0} req/s   ratio {:.2}", endpoint_new / static_new);
    println!("kept-alive connections:      bundle endpoint {endpoint_kept:>9.0} req/s");
    drop(server);
}
