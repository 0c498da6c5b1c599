//! Two clusters of three replicas, federated both ways: example.org fetches b.test's bundle
//! over `https_spiffe`, b.test fetches example.org's over `https_web` (a web PKI certificate
//! its replicas trust through SSL_CERT_FILE). A workload under example.org's agent, using
//! the `spiffe` crate and py-spiffe, holds b.test's bundle; an X.509-SVID from b.test
//! verifies against it with openssl, and a JWT-SVID minted in b.test validates through
//! example.org's agent. When b.test rotates its CA, the workload holds the new one within
//! b.test's refresh hint and a second, with no refresh asked for.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::{free_port, wait_until, AgentProcess, ReplicaOptions, ServerProcess};

fn endpoint(port: u16, profile: &str) -> String {
    format!(
        "federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {port}\n refresh_hint = \"1m\"\n {profile}\n }}\n"
    )
}

/// Three replicas of `trust_domain`, each serving a bundle endpoint on its port of `ports`;
/// `extra` closes the `federation` block.
fn cluster(
    root: &Path,
    trust_domain: &str,
    ports: &[u16],
    profile: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> Vec<ServerProcess> {
    let servers: Vec<ServerProcess> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let options = ReplicaOptions {
                trust_domain: Some(trust_domain.into()),
                server_extra: format!("{}{extra}\n}}", endpoint(*port, profile)),
                env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            };
            ServerProcess::start_with(root, i as u64 + 1, &options)
        })
        .collect();
    ServerProcess::form_cluster(&servers);
    servers
}

fn federated_x509(server: &ServerProcess, trust_domain: &str) -> Option<u64> {
    let listed = server.json(&["bundle", "list"]);
    listed["bundles"].as_array()?.iter().find(|b| b["trust_domain"] == trust_domain)?["x509_authorities"].as_u64()
}

#[test]
fn workloads_of_two_federated_clusters_trust_each_other() {
    let root = tempfile::tempdir().unwrap();
    let pki = root.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    testkit::pki::web_server(&pki);
    let a_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let b_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();

    let web_profile = format!(
        "profile \"https_web\" {{\n serving_cert_file {{\n cert_file_path = \"{dir}/web.pem\"\n key_file_path = \"{dir}/web.key\"\n }}\n }}",
        dir = pki.display()
    );
    let a_federates = format!(
        "federates_with \"b.test\" {{\n bundle_endpoint_url = \"https://127.0.0.1:{}/\"\n bundle_endpoint_profile \"https_spiffe\" {{\n endpoint_spiffe_id = \"spiffe://b.test/spire/server\"\n }}\n }}",
        b_ports[1]
    );
    let b_federates = format!(
        "federates_with \"example.org\" {{\n bundle_endpoint_url = \"https://localhost:{}/\"\n bundle_endpoint_profile \"https_web\" {{}}\n }}",
        a_ports[2]
    );
    let roots = pki.join("root.pem");
    let a = cluster(&root.path().join("a"), "example.org", &a_ports, &web_profile, &a_federates, &[]);
    let b = cluster(
        &root.path().join("b"),
        "b.test",
        &b_ports,
        "profile \"https_spiffe\" {}",
        &b_federates,
        &[("SSL_CERT_FILE", roots.to_str().unwrap())],
    );

    // example.org bootstraps b.test's bundle once; b.test needs nothing (web PKI).
    let b_pem = root.path().join("b.pem");
    std::fs::write(&b_pem, b[0].bundle_pem()).unwrap();
    let out = a[1].command(&["bundle", "set", "--id", "spiffe://b.test", "--path", b_pem.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let a_pem = a[0].bundle_pem();
    for server in &b {
        wait_until(
            Duration::from_secs(40),
            || federated_x509(server, "example.org").is_some(),
            &format!("b.test replica {} to fetch example.org's bundle over https_web", server.id),
        );
    }
    let out = a[0].command(&["federation", "refresh", "--id", "b.test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A workload of example.org whose entry federates with b.test.
    let token = a[0].json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_string();
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    let uid = nix::unistd::getuid().as_raw();
    a[0].json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        &agent_id,
        "--selector",
        &format!("unix:uid:{uid}"),
        "--federates-with",
        "b.test",
    ]);
    let agent = AgentProcess::start(root.path(), &[a[0].api_address(), a[1].api_address()], &a_pem, &token, "1s");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let source = tokio::time::timeout(
            Duration::from_secs(30),
            spiffe::X509Source::builder().endpoint(agent.endpoint()).build(),
        )
        .await
        .unwrap_or_else(|_| panic!("no X.509 source within 30 s\nagent log:\n{}", agent.log()))
        .unwrap();
        let b_td = spiffe::TrustDomain::new("b.test").unwrap();
        let mut held = None;
        for _ in 0..100 {
            if let Some(bundle) = source.bundle_set().unwrap().get(&b_td) {
                held = Some(bundle.authorities().iter().map(|c| c.as_ref().to_vec()).collect::<Vec<Vec<u8>>>());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let held = held.unwrap_or_else(|| panic!("no b.test bundle at the workload\nagent log:\n{}", agent.log()));
        let served = identity::bundle::parse_pem_certificates(&std::fs::read_to_string(&b_pem).unwrap()).unwrap();
        assert_eq!(held, served, "the workload holds b.test's CAs");

        // An X.509-SVID from b.test verifies (openssl) against the bundle the workload holds.
        let bundle_file = root.path().join("b-held.pem");
        std::fs::write(&bundle_file, identity::bundle::to_pem_certificates(held.iter().map(Vec::as_slice))).unwrap();
        let svid_dir = root.path().join("b-svid");
        let out =
            b[2].command(&["x509", "mint", "--spiffe-id", "spiffe://b.test/db", "--write", svid_dir.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&bundle_file)
            .arg(svid_dir.join("svid.pem"))
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );

        // A JWT-SVID minted in b.test validates through example.org's agent.
        let out = b[1].command(&["jwt", "mint", "--spiffe-id", "spiffe://b.test/db", "--audience", "web"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint()).await.unwrap();
        let mut validated = client.validate_jwt_token("web", &token).await;
        for _ in 0..50 {
            if validated.is_ok() {
                break;
            }
            // The JWT key reaches b.test's bundle, then a refresh here, then the agent.
            let _ = a[0].command(&["federation", "refresh", "--id", "b.test"]);
            tokio::time::sleep(Duration::from_millis(200)).await;
            validated = client.validate_jwt_token("web", &token).await;
        }
        let validated = validated.unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log()));
        assert_eq!(validated.spiffe_id().to_string(), "spiffe://b.test/db");

        // b.test prepares a new CA. Nobody asks for a refresh: the workload holds the new
        // CA within b.test's refresh hint (1 min, the floor) and a second of the moment
        // b.test's endpoint serves it.
        let prepared = b[0].json(&["localauthority", "x509", "prepare"]);
        let new_id = prepared["prepared"]["authority_id"].as_str().unwrap().to_string();
        let cas = |pem: &str| identity::bundle::parse_pem_certificates(pem).unwrap();
        while cas(&b[1].bundle_pem()).len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let served_at = tokio::time::Instant::now();
        let rotated = cas(&b[1].bundle_pem());
        let limit = Duration::from_secs(61);
        let held_count = loop {
            let count = source.bundle_set().unwrap().get(&b_td).map(|b| b.authorities().len()).unwrap_or(0);
            if count == rotated.len() || served_at.elapsed() > limit {
                break count;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            held_count,
            rotated.len(),
            "b.test's new CA at the workload within {limit:?}\nagent log:\n{}",
            agent.log()
        );
        eprintln!("b.test's prepared CA reached the workload {:?} after b.test served it", served_at.elapsed());

        // Activated, b.test issues from the new CA, and its SVIDs verify against what the
        // workload holds (and not against the old CA alone).
        b[0].json(&["localauthority", "x509", "activate", "--authority-id", &new_id]);
        let svid_dir = root.path().join("b-svid-rotated");
        let out =
            b[0].command(&["x509", "mint", "--spiffe-id", "spiffe://b.test/db", "--write", svid_dir.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let held_now: Vec<Vec<u8>> = source
            .bundle_set()
            .unwrap()
            .get(&b_td)
            .unwrap()
            .authorities()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect();
        std::fs::write(&bundle_file, identity::bundle::to_pem_certificates(held_now.iter().map(Vec::as_slice)))
            .unwrap();
        let old_only = root.path().join("b-old.pem");
        std::fs::write(&old_only, identity::bundle::to_pem_certificates(served.iter().map(Vec::as_slice))).unwrap();
        let verifies = |ca_file: &Path| {
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(ca_file)
                .arg(svid_dir.join("svid.pem"))
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(verifies(&bundle_file), "an SVID of b.test's new CA verifies against the bundle the workload holds");
        assert!(!verifies(&old_only), "and it comes from the new CA");
        source.shutdown().await;

        // py-spiffe, another client, sees the same: both trust domains' bundles, and the
        // b.test JWT-SVID validated.
        let seen = crate::workload_api::run_python_client_with("federated_bundles.py", &agent, &[&token, "web"]);
        assert_eq!(seen["x509_authorities"]["b.test"], rotated.len() as u64, "{seen}");
        assert!(seen["x509_authorities"]["example.org"].as_u64().is_some_and(|n| n >= 1), "{seen}");
        assert_eq!(seen["jwt_trust_domains"], serde_json::json!(["b.test", "example.org"]), "{seen}");
        assert_eq!(seen["validated_spiffe_id"], "spiffe://b.test/db", "{seen}");
    });
}
