//! `trust_bundle_url`: an agent with no bundle file downloads its first bundle over HTTPS,
//! checked with the system's roots (here SSL_CERT_FILE names the test server's certificate),
//! attests and serves workloads; a 404 or an untrusted server stops start-up with a message
//! that names the URL. The server is named `localhost`, which the agent resolves to each of
//! its addresses.

use std::sync::Arc;
use std::time::Duration;

use testkit::{binary, AgentProcess, ServerProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTPS server on 127.0.0.1 for `localhost` that serves `body` at /bundle.pem and 404
/// elsewhere; returns its port and its certificate (PEM).
async fn bundle_server(body: String) -> (u16, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = if request.starts_with(b"GET /bundle.pem ") {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-pem-file\r\ncontent-length: \
                        {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                };
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, cert_pem)
}

#[test]
fn an_agent_bootstraps_from_an_https_bundle_url() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    let token = server.json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_string();
    let uid = nix::unistd::getuid().as_raw();
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    server.json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/from-url",
        "--parent-id",
        &agent_id,
        "--selector",
        &format!("unix:uid:{uid}"),
    ]);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (port, cert_pem) = runtime.block_on(bundle_server(server.bundle_pem()));
    let roots = root.path().join("web-roots.pem");
    std::fs::write(&roots, cert_pem).unwrap();
    let config_for = |path: &str| {
        // The server by name: the agent resolves it to each of its addresses.
        AgentProcess::config_text(
            root.path(),
            &[server.api_address().replace("127.0.0.1", "localhost")],
            &format!("join_token = \"{token}\""),
            r#"NodeAttestor "join_token" {}"#,
            "1s",
            "",
        )
        .replace(
            &format!("trust_bundle_path = \"{}/agent/bundle.pem\"", root.path().display()),
            &format!("trust_bundle_url = \"https://localhost:{port}{path}\""),
        )
    };
    let ssl_cert_file = ("SSL_CERT_FILE", roots.to_str().unwrap());

    // Refusals first (they spend nothing: the join token is used only after a bundle).
    let refused = |config: String, env: &[(&str, &str)]| {
        let file = root.path().join("refused.hcl");
        std::fs::write(&file, config).unwrap();
        let mut command = std::process::Command::new(binary("testudo-agent"));
        command.args(["run", "--config"]).arg(&file).envs(env.iter().copied());
        let out = command.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let missing = refused(config_for("/missing"), &[ssl_cert_file]);
    assert!(missing.contains(&format!("https://localhost:{port}/missing")) && missing.contains("404"), "{missing}");
    let untrusted = refused(config_for("/bundle.pem"), &[]);
    assert!(
        untrusted.contains(&format!("trust bundle URL https://localhost:{port}/bundle.pem"))
            && untrusted.contains("invalid peer certificate"),
        "an untrusted server must not be believed: {untrusted}"
    );

    let agent = AgentProcess::start_configured(root.path(), &config_for("/bundle.pem"), &[ssl_cert_file]);
    assert!(agent.log().contains("trust bundle downloaded"), "{}", agent.log());
    let replicas = agent.log().lines().find(|l| l.contains("server replicas")).map(str::to_owned).unwrap_or_default();
    assert!(
        replicas.contains(&format!("\"{}\"", server.api_address())),
        "localhost was not resolved to the server's address: {replicas}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::process::Command::new(binary("testudo-agent"))
            .args(["api", "fetch", "x509", "--output", "json", "--socket-path"])
            .arg(agent.socket())
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/from-url") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no SVID: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
