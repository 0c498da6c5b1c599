//! A workload gets its X.509- and JWT-SVIDs through the agent with the `spiffe` crate's
//! clients, unchanged; refusals: no security header, no matching entry, another uid.

use std::time::Duration;

use proto::workload as pb;
use testkit::{AgentProcess, ServerProcess};

pub struct World {
    _root: tempfile::TempDir,
    pub server: ServerProcess,
    pub agent: AgentProcess,
    pub agent_id: String,
    pub bundle: identity::bundle::Bundle,
}

/// One replica, an agent attested with a join token (syncing every `sync_interval`), and an
/// entry `spiffe://example.org/workload` for this process's uid.
pub fn world(server_extra: &str, sync_interval: &str) -> World {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, server_extra);
    server.json(&["cluster", "init"]);
    let bundle_pem = server.bundle_pem();
    let mut bundle = identity::bundle::Bundle::new(identity::TrustDomain::parse("example.org").unwrap());
    for der in identity::bundle::parse_pem_certificates(&bundle_pem).unwrap() {
        bundle.add_x509_authority(&der).unwrap();
    }
    let token = server.json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_string();
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    let uid = nix::unistd::getuid().as_raw();
    server.json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/workload",
        "--parent-id",
        &agent_id,
        "--selector",
        &format!("unix:uid:{uid}"),
    ]);
    let agent = AgentProcess::start(root.path(), &[server.api_address()], &bundle_pem, &token, sync_interval);
    World { _root: root, server, agent, agent_id, bundle }
}

pub async fn raw_client(
    agent: &AgentProcess,
) -> pb::spiffe_workload_api_client::SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let channel = proto::unix_socket::connect(&agent.socket()).await.unwrap();
    pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel)
}

#[test]
fn a_workload_gets_x509_and_jwt_svids_through_the_spiffe_crate() {
    let world = world("", "1s");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let source = tokio::time::timeout(
            Duration::from_secs(30),
            spiffe::X509Source::builder().endpoint(world.agent.endpoint()).build(),
        )
        .await
        .unwrap_or_else(|_| panic!("no X.509 source within 30 s\nagent log:\n{}", world.agent.log()))
        .unwrap_or_else(|e| panic!("X509Source: {e}\nagent log:\n{}", world.agent.log()));
        let svid = source.svid().unwrap();
        assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/workload");
        let chain: Vec<Vec<u8>> = svid.cert_chain().iter().map(|c| c.as_ref().to_vec()).collect();
        let verified =
            identity::x509::verify_x509_svid(&chain, &world.bundle, time::OffsetDateTime::now_utc()).unwrap();
        assert_eq!(verified.spiffe_id.to_string(), "spiffe://example.org/workload");
        let td = spiffe::TrustDomain::new("example.org").unwrap();
        let served = source.bundle_set().unwrap();
        assert!(served.get(&td).is_some(), "the source holds our trust domain's bundle");

        let client = spiffe::WorkloadApiClient::connect_to(world.agent.endpoint()).await.unwrap();
        let jwt = client.fetch_jwt_svid(["payments"], None).await.unwrap();
        assert_eq!(jwt.spiffe_id().to_string(), "spiffe://example.org/workload");
        let validated = client.validate_jwt_token("payments", jwt.token()).await.unwrap();
        assert_eq!(validated.spiffe_id().to_string(), "spiffe://example.org/workload");
        assert!(client.validate_jwt_token("someone-else", jwt.token()).await.is_err(), "the wrong audience is refused");
        let again = client.fetch_jwt_svid(["payments"], None).await.unwrap();
        assert_eq!(again.token(), jwt.token(), "JWT-SVIDs are cached until half-life");
        let bundles = client.fetch_jwt_bundles().await.unwrap();
        assert!(bundles.get(&td).is_some());

        // Refusals: no security header (InvalidArgument) and an empty audience.
        let mut raw = raw_client(&world.agent).await;
        let err = raw
            .fetch_jwtsvid(pb::JwtsvidRequest { audience: vec!["payments".into()], spiffe_id: String::new() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        let mut request = tonic::Request::new(pb::JwtsvidRequest { audience: vec![], spiffe_id: String::new() });
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
        assert_eq!(raw.fetch_jwtsvid(request).await.unwrap_err().code(), tonic::Code::InvalidArgument);
        source.shutdown().await;

        // Federation: an entry that federates with partner.org brings partner.org's bundle
        // (set on the server) to the workload.
        let pki_dir = world.agent.dir.join("partner");
        std::fs::create_dir_all(&pki_dir).unwrap();
        testkit::pki::ca_and_leaf(&pki_dir, "partner-ca", "partner-node", "digitalSignature");
        let partner_ca = pki_dir.join("partner-ca.pem");
        let set = world.server.command(&[
            "bundle",
            "set",
            "--id",
            "spiffe://partner.org",
            "--path",
            partner_ca.to_str().unwrap(),
        ]);
        assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
        let uid = nix::unistd::getuid().as_raw();
        world.server.json(&[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/federated",
            "--parent-id",
            &world.agent_id,
            "--selector",
            &format!("unix:uid:{uid}"),
            "--federates-with",
            "spiffe://partner.org",
        ]);
        let partner_der =
            identity::bundle::parse_pem_certificates(&std::fs::read_to_string(&partner_ca).unwrap()).unwrap().remove(0);
        let mut request = tonic::Request::new(pb::X509svidRequest {});
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
        let mut stream = raw.fetch_x509svid(request).await.unwrap().into_inner();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let message =
                tokio::time::timeout(deadline.saturating_duration_since(std::time::Instant::now()), stream.message())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("no federated bundle reached the workload\nagent log:\n{}", world.agent.log())
                    })
                    .unwrap()
                    .unwrap();
            if message.svids.iter().any(|s| s.spiffe_id == "spiffe://example.org/federated") {
                assert_eq!(
                    message.federated_bundles.get("spiffe://partner.org"),
                    Some(&partner_der),
                    "{:?}",
                    message.federated_bundles.keys()
                );
                break;
            }
        }
    });

    // Another uid matches no entry: PermissionDenied, and never this uid's SVID.
    if nix::unistd::getuid().is_root() {
        use std::os::unix::process::CommandExt;
        // A copy the other user can run: the build may live under a home directory it
        // cannot enter.
        let copy = world.agent.dir.join("testudo-agent-copy");
        std::fs::copy(testkit::binary("testudo-agent"), &copy).unwrap();
        let out = std::process::Command::new(&copy)
            .args(["api", "fetch", "x509", "--output", "json", "--socket-path"])
            .arg(world.agent.socket())
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("PermissionDenied"),
            "stdout {} stderr {stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/workload"));
    } else {
        eprintln!("not root: the other-uid refusal is not exercised");
    }
    // A restarted agent resumes with its stored SVID: its join token was used up, so
    // attesting again would be refused.
    let mut agent = world.agent;
    agent.kill();
    agent.restart();
    let out = std::process::Command::new(testkit::binary("testudo-agent"))
        .args(["api", "fetch", "x509", "--output", "json", "--socket-path"])
        .arg(agent.socket())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "after a restart: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    assert!(agent.log().contains("resumed with the stored agent SVID"), "{}", agent.log());

    // The CLI as this uid, writing the SVID files.
    let dir = agent.dir.join("fetched");
    let out = std::process::Command::new(testkit::binary("testudo-agent"))
        .args(["api", "fetch", "x509", "--write"])
        .arg(&dir)
        .arg("--socket-path")
        .arg(agent.socket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/workload"));
    for file in ["svid.0.pem", "svid.0.key", "bundle.0.pem"] {
        assert!(dir.join(file).exists(), "{file}");
    }
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", "bundle.0.pem", "svid.0.pem"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(verify.status.success(), "openssl verify: {}", String::from_utf8_lossy(&verify.stderr));

    // Banned: the agent keeps serving what it has, gets nothing new, and says why.
    let banned = world.server.command(&["agent", "ban", "--spiffe-id", &world.agent_id]);
    assert!(banned.status.success(), "{}", String::from_utf8_lossy(&banned.stderr));
    let uid = nix::unistd::getuid().as_raw();
    world.server.json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/after-ban",
        "--parent-id",
        &world.agent_id,
        "--selector",
        &format!("unix:uid:{uid}"),
    ]);
    testkit::wait_until(
        Duration::from_secs(20),
        || agent.log().contains("banned"),
        "the agent to log that it is banned",
    );
    let out = std::process::Command::new(testkit::binary("testudo-agent"))
        .args(["api", "fetch", "x509", "--output", "json", "--socket-path"])
        .arg(agent.socket())
        .output()
        .unwrap();
    let fetched = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && fetched.contains("spiffe://example.org/workload"),
        "the cached SVID is still served: {fetched}"
    );
    assert!(!fetched.contains("after-ban"), "a banned agent gets no new SVIDs: {fetched}");
}

/// Runs a client script from tests/py with the test venv's Python against the agent's
/// socket; returns the JSON it prints.
pub fn run_python_client(script: &str, agent: &AgentProcess) -> serde_json::Value {
    run_python_client_with(script, agent, &[])
}

/// As [`run_python_client`], with more arguments after the endpoint.
pub fn run_python_client_with(script: &str, agent: &AgentProcess, args: &[&str]) -> serde_json::Value {
    let python = std::env::var("TESTUDO_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python").to_string());
    // Cargo and nextest set CARGO_MANIFEST_DIR when they run a test; the compiled-in one may
    // name another clone that shares the build cache.
    let package = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let script = format!("{package}/tests/py/{script}");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(agent.endpoint())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (make test creates the venv)"));
    assert!(
        out.status.success(),
        "{script} failed: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// py-spiffe (PyPI `spiffe`, in the test venv): fetch, validate and a streamed rotation.
#[test]
fn py_spiffe_fetches_validates_and_sees_a_rotation() {
    // Short SVIDs: the agent replaces them every few seconds.
    let world = world(r#"default_x509_svid_ttl = "20s""#, "1s");
    let seen = run_python_client("workload_client.py", &world.agent);
    assert_eq!(seen["x509_spiffe_id"], "spiffe://example.org/workload");
    assert_eq!(seen["x509_chain_length"], 2);
    assert_eq!(seen["x509_bundle_trust_domains"], serde_json::json!(["example.org"]));
    assert_eq!(seen["jwt_spiffe_id"], "spiffe://example.org/workload");
    assert_eq!(seen["validated_spiffe_id"], "spiffe://example.org/workload");
    assert_ne!(seen["wrong_audience"], "accepted", "{seen}");
    assert_eq!(seen["jwt_bundle_count"], 1);
    assert!(seen["streamed_serials"].as_u64().unwrap() >= 2, "no rotation reached the streaming client: {seen}");
    assert_eq!(seen["stream_errors"], serde_json::json!([]), "{seen}");
}
