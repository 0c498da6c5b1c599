//! Real `testudo-server` processes on loopback, driven by the CLI over their admin sockets:
//! init, invites (one use, expiry), joins, leader transfer, kill -9 of the leader and
//! restart from disk, and removal.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{http_get, wait_until, ServerProcess as Server};

const BIN: &str = env!("CARGO_BIN_EXE_testudo-server");

fn voters(status: &serde_json::Value) -> Vec<u64> {
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["node_id"].as_u64().unwrap())
        .collect()
}

fn leader(status: &serde_json::Value) -> Option<u64> {
    status["leader"].as_u64()
}

#[test]
fn three_processes_form_a_cluster_survive_a_leader_kill_and_shrink() {
    let root = tempfile::tempdir().unwrap();
    let mut servers: Vec<Server> = (1..=3).map(|id| Server::start(root.path(), id, "")).collect();

    assert_eq!(servers[0].status()["initialized"], false);
    let out = servers[0].command(&["healthcheck"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
    assert_eq!(http_get(servers[0].health_port, "/live").0, 200);
    let (code, body) = http_get(servers[0].health_port, "/ready");
    assert_eq!(code, 503, "a pristine replica is not ready: {body}");
    let status = servers[0].json(&["cluster", "init"]);
    let out = servers[0].command(&["healthcheck"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Server is healthy."));
    let (code, body) = http_get(servers[0].health_port, "/ready");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"leader\":1"), "{body}");
    wait_until(
        Duration::from_secs(20),
        || http_get(servers[0].metrics_port, "/metrics").1.contains("testudo_raft_is_leader 1"),
        "the leader gauge in /metrics",
    );
    assert_eq!((leader(&status), voters(&status)), (Some(1), vec![1]));
    let out = servers[0].command(&["cluster", "init"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already belongs to a cluster"));

    // An invite admits one replica, once.
    let token = servers[0].invite("600");
    let status = servers[1].json(&["cluster", "join", "--token", &token]);
    assert_eq!(voters(&status), vec![1, 2]);
    let out = servers[2].command(&["cluster", "join", "--token", &token]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("invite is unknown or already used"), "{err}");
    // A garbled token is refused before anything is sent.
    let out = servers[2].command(&["cluster", "join", "--token", "testudo-invite-v1.garbage"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("invite"));
    // An expired invite is refused (and the replica stays pristine, so it can try again).
    let stale = servers[1].invite("1");
    std::thread::sleep(Duration::from_millis(2100));
    let out = servers[2].command(&["cluster", "join", "--token", &stale]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invite has expired"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Invites can come from a follower too.
    let token = servers[1].invite("600");
    let status = servers[2].json(&["cluster", "join", "--token", &token]);
    assert_eq!(voters(&status), vec![1, 2, 3]);
    let cluster_id = status["cluster_id"].as_str().unwrap().to_string();
    for server in &servers {
        assert_eq!(server.status()["cluster_id"], cluster_id.as_str());
    }

    // One CA for the cluster: an SVID minted on any replica verifies (openssl) against the
    // bundle read from another one.
    let bundle = root.path().join("bundle.pem");
    wait_until(
        Duration::from_secs(20),
        || servers[2].command(&["bundle", "show"]).status.success(),
        "the CA to publish a bundle",
    );
    std::fs::write(&bundle, servers[2].command(&["bundle", "show"]).stdout).unwrap();
    for server in &servers {
        let out_dir = root.path().join(format!("svid-{}", server.id));
        let out = server.command(&[
            "x509",
            "mint",
            "--spiffe-id",
            "spiffe://example.org/web",
            "--write",
            out_dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&bundle)
            .arg(out_dir.join("svid.pem"))
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "replica {}: {}{}",
            server.id,
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        let out = server.command(&["jwt", "mint", "--spiffe-id", "spiffe://example.org/web", "--audience", "db"]);
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).trim().split('.').count() == 3);
    }
    for (id, want) in
        [("spiffe://example.org/spire/agent/x", "reserved"), ("spiffe://other.org/web", "not in trust domain")]
    {
        let out = servers[1].command(&["x509", "mint", "--spiffe-id", id]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("invalid argument") && err.contains("csr:") && err.contains(want),
            "{id}: {err}"
        );
    }

    // The network listener presents the server SVID, serves GetBundle to anyone and refuses
    // admin calls from callers that are not admins.
    let presented = || {
        let script = format!(
            "openssl s_client -connect 127.0.0.1:{} -alpn h2 </dev/null 2>/dev/null | openssl x509 \
            -noout -ext subjectAltName",
            servers[0].api_port
        );
        String::from_utf8_lossy(&Command::new("sh").arg("-c").arg(script).output().unwrap().stdout).into_owned()
    };
    wait_until(
        Duration::from_secs(30),
        || presented().contains("URI:spiffe://example.org/spire/server"),
        "the server SVID on the API listener",
    );
    network_calls(&servers[1], &root.path().join("svid-2"));
    let metrics = http_get(servers[1].metrics_port, "/metrics").1;
    assert!(
        metrics.lines().any(|l| l.starts_with("testudo_api_calls_total{")
            && l.contains("Entry/CountEntries")
            && l.contains("PermissionDenied")),
        "API calls are counted by method and code"
    );

    // Entries written through one replica are read (linearizably) through the others.
    let parent = "spiffe://example.org/spire/agent/join_token/abc";
    let create = |server: &Server, id: &str, selector: &str| {
        server.command(&[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--parent-id",
            parent,
            "--selector",
            selector,
            "--output",
            "json",
        ])
    };
    let out = create(&servers[1], "spiffe://example.org/web", "unix:uid:1000");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry_id = created["entries"][0]["id"].as_str().unwrap().to_string();
    for server in &servers {
        let shown = server.command(&["entry", "show", "--entry-id", &entry_id, "--output", "json"]);
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(shown["entries"][0]["spiffe_id"], "spiffe://example.org/web", "replica {}", server.id);
    }
    let refusals = [
        (create(&servers[2], "spiffe://example.org/web", "unix:uid:1000"), "already exists"),
        (create(&servers[2], "spiffe://example.org/spire/x", "unix:uid:1"), "spiffe_id"),
        (create(&servers[2], "spiffe://other.org/web", "unix:uid:1"), "not in trust domain"),
        (servers[0].command(&["entry", "show", "--entry-id", "no-such-entry"]), "not found"),
        (servers[0].command(&["entry", "delete", "--entry-id", "no-such-entry"]), "not found"),
    ];
    for (out, want) in refusals {
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success() && err.contains(want), "want {want:?}: {err}");
    }
    let out = servers[0].command(&["entry", "count", "--output", "json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["count"], 1);
    let out = servers[2].command(&["entry", "delete", "--entry-id", &entry_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = servers[1].command(&["entry", "count", "--output", "json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["count"], 0);

    // Join tokens: created through any replica; one with an agent ID adds a node-alias entry.
    let out = servers[0].command(&["token", "generate", "--ttl", "600", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(token["value"].as_str().unwrap().len(), 36);
    let out =
        servers[1].command(&["token", "generate", "--spiffe-id", "spiffe://example.org/nodes/web", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        servers[2].command(&["entry", "show", "--spiffe-id", "spiffe://example.org/nodes/web", "--output", "json"]);
    let alias: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        alias["entries"][0]["parent_id"].as_str().unwrap().starts_with("spiffe://example.org/spire/agent/join_token/"),
        "{alias}"
    );
    for (args, want) in [
        (vec!["token", "generate", "--ttl", "0"], "ttl"),
        (vec!["token", "generate", "--spiffe-id", "spiffe://example.org/spire/server"], "agent_id"),
        (vec!["token", "generate", "--spiffe-id", "spiffe://example.org/spire/agent/x509pop/other"], "reserved"),
        (vec!["token", "generate", "--spiffe-id", "spiffe://other.org/nodes/web"], "trust domain"),
        (vec!["agent", "show", "--spiffe-id", "spiffe://example.org/spire/agent/join_token/none"], "no agent"),
        (vec!["agent", "ban", "--spiffe-id", "spiffe://example.org/spire/agent/join_token/none"], "not found"),
    ] {
        let out = servers[2].command(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success() && err.contains(want), "{args:?}: want {want:?}: {err}");
    }
    let out = servers[0].command(&["agent", "count", "--output", "json"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["count"], 0);

    // Leadership moves where an admin asks, from any replica; the leader's duties move
    // with it: they run on the leader only.
    let duties = |server: &Server| {
        let metrics = http_get(server.metrics_port, "/metrics").1;
        metrics.lines().find_map(|l| l.strip_prefix("testudo_leader_duties_running ").map(str::to_owned))
    };
    // The clock check, CA rotation, change-log pruning, expiry pruning, federation refresh.
    const DUTIES: &str = "5";
    wait_until(Duration::from_secs(20), || duties(&servers[0]).as_deref() == Some(DUTIES), "duties on leader 1");
    let status = servers[2].json(&["cluster", "transfer", "--node-id", "2"]);
    assert_eq!(leader(&status), Some(2));
    wait_until(
        Duration::from_secs(20),
        || duties(&servers[1]).as_deref() == Some(DUTIES) && duties(&servers[0]).as_deref() == Some("0"),
        "the duties to stop on replica 1 and start on replica 2",
    );
    assert_ne!(duties(&servers[2]).as_deref(), Some(DUTIES), "a follower runs no duty");

    // kill -9 the leader: the other two elect a new one.
    servers[1].kill();
    let mut new_leader = None;
    wait_until(
        Duration::from_secs(20),
        || {
            new_leader = leader(&servers[0].status()).filter(|l| *l != 2);
            new_leader.is_some()
        },
        "a new leader after the old one was killed",
    );
    let new_leader = new_leader.unwrap();
    // The restarted replica rejoins from its disk, with no invite.
    servers[1].restart();
    wait_until(
        Duration::from_secs(20),
        || leader(&servers[1].status()) == Some(new_leader),
        "the restarted replica to follow the new leader",
    );
    assert_eq!(voters(&servers[1].status()), vec![1, 2, 3]);

    // Remove replica 3 through a replica that is not the leader.
    let via = servers.iter().find(|s| s.id != new_leader && s.id != 3).unwrap();
    let status = via.json(&["cluster", "remove", "--node-id", "3"]);
    assert!(!voters(&status).contains(&3), "{status}");
    wait_until(
        Duration::from_secs(30),
        || servers[0].status()["members"].as_array().unwrap().len() == 2,
        "replica 3 to leave everyone's view",
    );

    // SIGTERM stops a replica cleanly and removes its socket.
    let code = servers[0].terminate();
    assert!(code.success(), "exit after SIGTERM: {code:?}\n{}", servers[0].log());
    assert!(!servers[0].socket().exists());
}

/// Calls over the network listener: anonymous, and with a workload SVID (not an admin).
fn network_calls(server: &Server, workload_svid_dir: &Path) {
    use proto::spire::api::server::bundle::v1::{bundle_client::BundleClient, GetBundleRequest};
    use proto::spire::api::server::entry::v1::{entry_client::EntryClient, CountEntriesRequest};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let bundle_pem = std::fs::read_to_string(workload_svid_dir.join("bundle.pem")).unwrap();
    let mut bundle = identity::bundle::Bundle::new(identity::TrustDomain::parse("example.org").unwrap());
    for der in pem::parse_many(&bundle_pem).unwrap() {
        bundle.add_x509_authority(der.contents()).unwrap();
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let anonymous = api_channel(server, &bundle, None).await;
        let mut health = proto::health::health_client::HealthClient::new(anonymous.clone());
        let serving =
            health.check(proto::health::HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
        assert_eq!(serving.status, proto::health::health_check_response::ServingStatus::Serving as i32);
        let err =
            health.check(proto::health::HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        let served = BundleClient::new(anonymous.clone())
            .get_bundle(GetBundleRequest { output_mask: None })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(served.trust_domain, "example.org");
        assert!(!served.x509_authorities.is_empty());
        let err = EntryClient::new(anonymous).count_entries(CountEntriesRequest { filter: None }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

        let svid = std::fs::read_to_string(workload_svid_dir.join("svid.pem")).unwrap();
        let key = std::fs::read_to_string(workload_svid_dir.join("key.pem")).unwrap();
        let with_svid = api_channel(server, &bundle, Some((svid, key))).await;
        let err =
            EntryClient::new(with_svid.clone()).count_entries(CountEntriesRequest { filter: None }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(
            err.message()
                .contains("spiffe://example.org/web may not call /spire.api.server.entry.v1.Entry/CountEntries"),
            "{err:?}"
        );
        assert_eq!(proto::reason::Reason::of(&err), Some(proto::reason::Reason::CallerNotAllowed));

        // Nested clusters: only a workload with a downstream entry gets an intermediate CA.
        downstream_ca(server, &bundle, with_svid).await;
    });
}

/// NewDownstreamX509CA and PublishJWTAuthority: refused without a downstream entry; with
/// one, the CA returned signs SVIDs that verify against this trust domain's bundle (ours and
/// openssl's check), and a published JWT key joins the bundle everyone gets.
async fn downstream_ca(server: &Server, bundle: &identity::bundle::Bundle, with_svid: tonic::transport::Channel) {
    use identity::crypto::{KeyType, LocalKey, Signer};
    use identity::x509::{mint_x509_svid, Issuer, Subject, SvidTemplate};
    use proto::spire::api::server::svid::v1::{svid_client::SvidClient, NewDownstreamX509caRequest};
    let key = LocalKey::generate(KeyType::EcP256).unwrap();
    let request = NewDownstreamX509caRequest { csr: identity::x509::create_csr(&key, None).unwrap(), preferred_ttl: 0 };
    let err = SvidClient::new(with_svid.clone()).new_downstream_x509ca(request.clone()).await.unwrap_err();
    assert!(err.code() == tonic::Code::PermissionDenied && err.message().contains("downstream"), "{err:?}");
    use proto::spire::api::server::bundle::v1::{
        bundle_client::BundleClient, GetBundleRequest, PublishJwtAuthorityRequest,
    };
    let jwt_key = LocalKey::generate(KeyType::EcP256).unwrap();
    let expires_at = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let publish = PublishJwtAuthorityRequest {
        jwt_authority: Some(proto::spire::api::types::JwtKey {
            public_key: jwt_key.public_key().spki_der().to_vec(),
            key_id: "downstream-1".into(),
            expires_at,
            tainted: false,
        }),
    };
    let err = BundleClient::new(with_svid.clone()).publish_jwt_authority(publish.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let out = server.command(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/web",
        "--parent-id",
        "spiffe://example.org/spire/agent/x",
        "--selector",
        "unix:uid:7",
        "--downstream",
        "--x509-svid-ttl",
        "3600",
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entry_id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["entries"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let published =
        BundleClient::new(with_svid.clone()).publish_jwt_authority(publish).await.unwrap().into_inner().jwt_authorities;
    assert!(published.iter().any(|k| k.key_id == "downstream-1"), "{published:?}");
    let served = BundleClient::new(with_svid.clone())
        .get_bundle(GetBundleRequest { output_mask: None })
        .await
        .unwrap()
        .into_inner();
    assert!(served
        .jwt_authorities
        .iter()
        .any(|k| k.key_id == "downstream-1" && k.public_key == jwt_key.public_key().spki_der()));
    let err = BundleClient::new(with_svid.clone())
        .publish_jwt_authority(PublishJwtAuthorityRequest { jwt_authority: None })
        .await
        .unwrap_err();
    assert!(err.code() == tonic::Code::InvalidArgument && err.message().starts_with("jwt_authority"), "{err:?}");
    let bad = NewDownstreamX509caRequest { csr: b"not a csr".to_vec(), preferred_ttl: 0 };
    let err = SvidClient::new(with_svid.clone()).new_downstream_x509ca(bad).await.unwrap_err();
    assert!(err.code() == tonic::Code::InvalidArgument && err.message().starts_with("csr"), "{err:?}");

    let response = SvidClient::new(with_svid).new_downstream_x509ca(request).await.unwrap().into_inner();
    let roots: Vec<Vec<u8>> = bundle.x509_authorities().iter().map(|a| a.der.clone()).collect();
    assert_eq!(response.x509_authorities, roots, "the trust domain's roots");
    assert_eq!(response.ca_cert_chain.len(), 1, "the new CA alone: as SPIRE, a self-signed root is not sent");
    let now = time::OffsetDateTime::now_utc();
    let facts = identity::x509::certificate_facts(&response.ca_cert_chain[0]).unwrap();
    assert!(facts.is_ca);
    let life = facts.not_after - now;
    assert!(life <= time::Duration::hours(1) && life > time::Duration::minutes(55), "the entry's TTL: {life}");
    // A leaf from the downstream CA chains through it to the bundle.
    let workload = LocalKey::generate(KeyType::EcP256).unwrap();
    let template = SvidTemplate {
        spiffe_id: identity::SpiffeId::parse("spiffe://example.org/downstream/app").unwrap(),
        public_key: workload.public_key().clone(),
        ttl: Duration::from_secs(600),
        dns_names: vec![],
        subject: Subject::svid_default(),
        serial: None,
    };
    let leaf = mint_x509_svid(&template, &Issuer::new(&response.ca_cert_chain[0], &key).unwrap(), now).unwrap();
    let chain: Vec<Vec<u8>> = std::iter::once(leaf.der).chain(response.ca_cert_chain.iter().cloned()).collect();
    assert_eq!(
        identity::x509::verify_x509_svid(&chain, bundle, now).unwrap().spiffe_id.to_string(),
        "spiffe://example.org/downstream/app"
    );
    openssl_verify(bundle, &chain);
    let out = server.command(&["entry", "delete", "--entry-id", &entry_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `openssl verify` of a leaf chain against the bundle's roots.
fn openssl_verify(bundle: &identity::bundle::Bundle, chain: &[Vec<u8>]) {
    let dir = tempfile::tempdir().unwrap();
    let roots: String = bundle.x509_authorities().iter().map(|a| pem_of("CERTIFICATE", &a.der)).collect();
    std::fs::write(dir.path().join("roots.pem"), roots).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), pem_of("CERTIFICATE", &chain[0])).unwrap();
    let untrusted: String = chain[1..].iter().map(|der| pem_of("CERTIFICATE", der)).collect();
    std::fs::write(dir.path().join("untrusted.pem"), untrusted).unwrap();
    let out = Command::new("openssl")
        .args(["verify", "-CAfile", "roots.pem", "-untrusted", "untrusted.pem", "leaf.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_config_stops_start_up_naming_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.hcl");
    std::fs::write(
        &path,
        "server {\n  trust_domain = \"example.org\"\n  data_dir = \"/tmp/x\"\n  ca_ttl = \"forever\"\n}\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["run", "--config"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.hcl:4: server.ca_ttl: invalid duration \"forever\""), "{err}");
}

#[test]
fn a_backup_seeds_a_new_cluster_offline() {
    let root = tempfile::tempdir().unwrap();
    let origin = Server::start(root.path(), 1, "");
    origin.json(&["cluster", "init"]);
    for _ in 0..3 {
        origin.invite("600"); // each invite is a replicated write
    }
    let applied = origin.status()["last_applied"].as_u64().unwrap();
    let file = root.path().join("backup.tsnp");
    let saved = origin.json(&["cluster", "backup", "--file", file.to_str().unwrap()]);
    assert!(saved["bytes"].as_u64().unwrap() > 0);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let out = origin.command(&["cluster", "backup", "--file", file.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not overwriting"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A new replica (its own config, never started) is seeded from the file, then runs.
    let mut fresh = Server::start(root.path(), 5, "");
    fresh.kill();
    let restore = |server: &Server| {
        Command::new(BIN)
            .args(["cluster", "restore", "--config"])
            .arg(server.dir.join("server.hcl"))
            .arg("--file")
            .arg(&file)
            .output()
            .unwrap()
    };
    // Its data dir was created by the start above, but holds no cluster: restore works.
    let out = restore(&fresh);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = restore(&fresh);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("already belongs to a cluster"));
    fresh.restart();
    wait_until(
        Duration::from_secs(20),
        || leader(&fresh.status()) == Some(5),
        "the restored replica to lead its new cluster",
    );
    let status = fresh.status();
    assert_eq!(voters(&status), vec![5]);
    assert!(status["last_applied"].as_u64().unwrap() >= applied, "{status}");
    assert_ne!(status["cluster_id"], origin.status()["cluster_id"]);
    // It accepts writes.
    fresh.invite("600");
}

/// A TLS channel to the server API, trusting `bundle`, presenting `identity` if given.
pub(crate) async fn api_channel(
    server: &Server,
    bundle: &identity::bundle::Bundle,
    identity: Option<(String, String)>,
) -> tonic::transport::Channel {
    let verifier = std::sync::Arc::new(spiffe_tls::SvidVerifier::any_svid(std::sync::Arc::new(
        std::sync::RwLock::new(bundle.clone()),
    )));
    let mut tls = tonic::transport::ClientTlsConfig::new().domain_name("server.example.org");
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", server.api_port))
        .unwrap()
        .tls_config_with_verifier(tls, verifier)
        .unwrap();
    // The listener presents its server SVID within a second of the CA's first activation.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(e) if Instant::now() > deadline => panic!("connect: {e:?}\nserver log:\n{}", server.log()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn pem_of(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// Every agent-facing call, and the admin calls around them, through the leader and then
/// through a follower of a 3-replica cluster.
#[test]
fn agents_attest_with_join_tokens_renew_and_mint_only_their_entries() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    let (servers, leader_then_follower) = three_replicas(root.path());
    for (round, index) in leader_then_follower.into_iter().enumerate() {
        agent_calls(&servers[index], round);
    }
}

/// Three replicas formed into a cluster, and the indexes of the leader and of a follower.
fn three_replicas(root: &Path) -> (Vec<Server>, [usize; 2]) {
    let servers: Vec<Server> = (1..=3).map(|id| Server::start(root, id, "")).collect();
    servers[0].json(&["cluster", "init"]);
    for server in &servers[1..] {
        let token = servers[0].invite("600");
        server.json(&["cluster", "join", "--token", &token]);
    }
    let leader_id = leader(&servers[0].status()).expect("a leader");
    let follower_id = (1..=3).find(|id| *id != leader_id).expect("a follower");
    let index = |id: u64| usize::try_from(id).expect("a small id") - 1;
    (servers, [index(leader_id), index(follower_id)])
}

/// An agent's life through `server`: attestation (a replayed and an expired token refused),
/// minting only its own entries, authorized entries and paged sync, JWT-SVIDs, renewal with
/// serial promotion, ban and eviction. `round` keeps its entries apart from other rounds'.
fn agent_calls(server: &Server, round: usize) {
    use identity::crypto::{KeyType, LocalKey};
    use proto::spire::api::server::agent::v1 as agent_pb;
    use proto::spire::api::server::svid::v1 as svid_pb;
    wait_until(
        Duration::from_secs(20),
        || server.command(&["bundle", "show"]).status.success(),
        "the CA to publish a bundle",
    );
    let mut bundle = identity::bundle::Bundle::new(identity::TrustDomain::parse("example.org").unwrap());
    for cert in pem::parse_many(server.command(&["bundle", "show"]).stdout).unwrap() {
        bundle.add_x509_authority(cert.contents()).unwrap();
    }
    let token = |ttl: &str| {
        let out = server.command(&["token", "generate", "--ttl", ttl, "--output", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["value"].as_str().unwrap().to_string()
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let anonymous = api_channel(server, &bundle, None).await;
        let agent_key = LocalKey::generate(KeyType::EcP256).unwrap();
        let csr = identity::x509::create_csr(&agent_key, None).unwrap();
        let attest = |token: String| {
            let params = agent_pb::attest_agent_request::Params {
                data: Some(proto::spire::api::types::AttestationData {
                    r#type: "join_token".into(),
                    payload: token.into_bytes(),
                }),
                params: Some(agent_pb::AgentX509svidParams { csr: csr.clone() }),
            };
            let request =
                agent_pb::AttestAgentRequest { step: Some(agent_pb::attest_agent_request::Step::Params(params)) };
            let mut client = agent_pb::agent_client::AgentClient::new(anonymous.clone());
            async move {
                let mut responses = client.attest_agent(tokio_stream::once(request)).await?.into_inner();
                match responses.message().await?.and_then(|r| r.step) {
                    Some(agent_pb::attest_agent_response::Step::Result(result)) => {
                        Ok::<_, tonic::Status>(result.svid.unwrap())
                    }
                    other => panic!("unexpected attestation step {other:?}"),
                }
            }
        };
        let value = token("600");
        let svid = attest(value.clone()).await.unwrap();
        let agent_id = format!("spiffe://example.org/spire/agent/join_token/{value}");
        assert_eq!(
            identity::x509::verify_x509_svid(&svid.cert_chain, &bundle, time::OffsetDateTime::now_utc())
                .unwrap()
                .spiffe_id
                .to_string(),
            agent_id
        );
        let err = attest(value).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "a replayed token: {err:?}");
        let stale = token("1");
        std::thread::sleep(Duration::from_millis(2100));
        let err = attest(stale).await.unwrap_err();
        assert!(err.code() == tonic::Code::PermissionDenied && err.message().contains("expired"), "{err:?}");

        // Entries: one for this agent, one for another.
        let create = |spiffe_id: &str, parent: &str| {
            let out = server.command(&[
                "entry",
                "create",
                "--spiffe-id",
                spiffe_id,
                "--parent-id",
                parent,
                "--selector",
                "unix:uid:1000",
                "--output",
                "json",
            ]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["entries"][0]["id"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let mine = create("spiffe://example.org/web", &agent_id);
        let theirs = create(
            "spiffe://example.org/db",
            &format!("spiffe://example.org/spire/agent/join_token/someone-else-{round}"),
        );
        let theirs_id = theirs.clone();

        let agent_identity = |svid: &proto::spire::api::types::X509svid| {
            (
                svid.cert_chain.iter().map(|c| pem_of("CERTIFICATE", c)).collect::<String>(),
                pem_of("PRIVATE KEY", &agent_key.to_pkcs8_der().unwrap()),
            )
        };
        let as_agent = api_channel(server, &bundle, Some(agent_identity(&svid))).await;
        let workload = LocalKey::generate(KeyType::EcP256).unwrap();
        let workload_csr = identity::x509::create_csr(&workload, None).unwrap();
        let request = svid_pb::BatchNewX509svidRequest {
            params: vec![
                svid_pb::NewX509svidParams { entry_id: mine.clone(), csr: workload_csr.clone() },
                svid_pb::NewX509svidParams { entry_id: theirs, csr: workload_csr.clone() },
                svid_pb::NewX509svidParams { entry_id: mine.clone(), csr: b"junk".to_vec() },
            ],
        };
        let results = svid_pb::svid_client::SvidClient::new(as_agent.clone())
            .batch_new_x509svid(request.clone())
            .await
            .unwrap()
            .into_inner()
            .results;
        let codes: Vec<i32> = results.iter().map(|r| r.status.as_ref().unwrap().code).collect();
        assert_eq!(codes, vec![0, tonic::Code::NotFound as i32, tonic::Code::InvalidArgument as i32]);
        let chain = &results[0].svid.as_ref().unwrap().cert_chain;
        assert_eq!(
            identity::x509::verify_x509_svid(chain, &bundle, time::OffsetDateTime::now_utc())
                .unwrap()
                .spiffe_id
                .to_string(),
            "spiffe://example.org/web"
        );
        let err = svid_pb::svid_client::SvidClient::new(anonymous.clone())
            .batch_new_x509svid(request.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);

        agent_pb::agent_client::AgentClient::new(as_agent.clone())
            .post_status(agent_pb::PostStatusRequest { current_bundle_serial: 1 })
            .await
            .unwrap();
        let err = agent_pb::agent_client::AgentClient::new(anonymous.clone())
            .post_status(agent_pb::PostStatusRequest { current_bundle_serial: 1 })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);

        // What the agent may see and mint: its own entries only.
        use proto::spire::api::server::entry::v1 as entry_pb;
        let mut entries = entry_pb::entry_client::EntryClient::new(as_agent.clone());
        let got = entries
            .get_authorized_entries(entry_pb::GetAuthorizedEntriesRequest { output_mask: None })
            .await
            .unwrap()
            .into_inner()
            .entries;
        assert_eq!(got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), vec![mine.as_str()]);
        let sync = tokio_stream::once(entry_pb::SyncAuthorizedEntriesRequest { output_mask: None, ids: vec![] });
        let mut synced = entries.sync_authorized_entries(sync).await.unwrap().into_inner();
        let first = synced.message().await.unwrap().unwrap();
        assert!(!first.more && first.entry_revisions.is_empty());
        assert_eq!(first.entries.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), vec![mine.as_str()]);
        // Past a page of entries, sync pages revisions first; the agent then asks by id.
        let admin = proto::unix_socket::connect(&server.socket()).await.unwrap();
        let many: Vec<proto::spire::api::types::Entry> = (0..500)
            .map(|i| proto::spire::api::types::Entry {
                spiffe_id: Some(proto::spire::api::types::Spiffeid {
                    trust_domain: "example.org".into(),
                    path: format!("/many/{i}"),
                }),
                parent_id: Some(proto::spire::api::types::Spiffeid {
                    trust_domain: "example.org".into(),
                    path: agent_id.trim_start_matches("spiffe://example.org").into(),
                }),
                selectors: vec![proto::spire::api::types::Selector {
                    r#type: "unix".into(),
                    value: format!("uid:{i}"),
                }],
                ..Default::default()
            })
            .collect();
        let created = entry_pb::entry_client::EntryClient::new(admin)
            .batch_create_entry(entry_pb::BatchCreateEntryRequest { entries: many, output_mask: None })
            .await
            .unwrap()
            .into_inner()
            .results;
        assert!(created.iter().all(|r| r.status.as_ref().unwrap().code == 0));
        let (requests, stream) = tokio::sync::mpsc::channel(4);
        requests.send(entry_pb::SyncAuthorizedEntriesRequest { output_mask: None, ids: vec![] }).await.unwrap();
        let mut synced = entries
            .sync_authorized_entries(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
            .unwrap()
            .into_inner();
        let (first, second) = (synced.message().await.unwrap().unwrap(), synced.message().await.unwrap().unwrap());
        assert!(first.more && first.entries.is_empty() && first.entry_revisions.len() == 500);
        assert!(!second.more && second.entry_revisions.len() == 1);
        let wanted: Vec<String> = first.entry_revisions.iter().take(3).map(|r| r.id.clone()).collect();
        requests.send(entry_pb::SyncAuthorizedEntriesRequest { output_mask: None, ids: wanted.clone() }).await.unwrap();
        let details = synced.message().await.unwrap().unwrap();
        assert!(!details.more);
        assert_eq!(details.entries.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), wanted);
        drop(requests);

        let mut jwt = svid_pb::svid_client::SvidClient::new(as_agent.clone());
        let token = jwt
            .new_jwtsvid(svid_pb::NewJwtsvidRequest { entry_id: mine.clone(), audience: vec!["db".into()] })
            .await
            .unwrap()
            .into_inner()
            .svid
            .unwrap();
        assert_eq!(token.id.unwrap().path, "/web");
        let err = jwt
            .new_jwtsvid(svid_pb::NewJwtsvidRequest { entry_id: "nope".into(), audience: vec!["db".into()] })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);

        // Renewal: the new SVID is promoted on first use; the old one then stops working.
        let renewed = agent_pb::agent_client::AgentClient::new(as_agent.clone())
            .renew_agent(agent_pb::RenewAgentRequest {
                params: Some(agent_pb::AgentX509svidParams { csr: csr.clone() }),
            })
            .await
            .unwrap()
            .into_inner()
            .svid
            .unwrap();
        let as_renewed = api_channel(server, &bundle, Some(agent_identity(&renewed))).await;
        svid_pb::svid_client::SvidClient::new(as_renewed.clone()).batch_new_x509svid(request.clone()).await.unwrap();
        let err =
            svid_pb::svid_client::SvidClient::new(as_agent).batch_new_x509svid(request.clone()).await.unwrap_err();
        assert!(err.code() == tonic::Code::PermissionDenied && err.message().contains("no longer active"), "{err:?}");

        // Admin calls about it through the same replica: agent show/list/count, entries
        // listed by parent (501: paged), an entry updated, Debug GetInfo.
        let json = |args: &[&str]| {
            let out = server.command(&[args, &["--output", "json"]].concat());
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        };
        assert_eq!(json(&["agent", "show", "--spiffe-id", &agent_id])["agents"][0]["id"], agent_id.as_str());
        let listed = json(&["agent", "list"]);
        assert!(listed["agents"].as_array().unwrap().iter().any(|a| a["id"] == agent_id.as_str()), "{listed}");
        assert!(json(&["agent", "count"])["count"].as_i64().unwrap() >= 1);
        assert_eq!(json(&["entry", "show", "--parent-id", &agent_id])["entries"].as_array().unwrap().len(), 501);
        let theirs_parent = format!("spiffe://example.org/spire/agent/join_token/someone-else-{round}");
        let updated = json(&[
            "entry",
            "update",
            "--entry-id",
            &theirs_id,
            "--spiffe-id",
            "spiffe://example.org/db2",
            "--parent-id",
            &theirs_parent,
            "--selector",
            "unix:uid:1001",
        ]);
        assert_eq!(updated["entries"][0]["spiffe_id"], "spiffe://example.org/db2", "{updated}");
        assert_eq!(json(&["entry", "show", "--entry-id", &theirs_id])["entries"][0]["selectors"][0], "unix:uid:1001");
        let out = server.command(&["entry", "delete", "--entry-id", &theirs_id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = server.command(&["entry", "show", "--entry-id", &theirs_id]);
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).to_lowercase().contains("not found"));
        let admin = proto::unix_socket::connect(&server.socket()).await.unwrap();
        let info = proto::spire::api::server::debug::v1::debug_client::DebugClient::new(admin)
            .get_info(proto::spire::api::server::debug::v1::GetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(info.agents_count >= 1 && info.entries_count >= 501, "{info:?}");

        // A banned agent is refused; an evicted one too.
        let out = server.command(&["agent", "ban", "--spiffe-id", &agent_id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let err = svid_pb::svid_client::SvidClient::new(as_renewed.clone())
            .batch_new_x509svid(request.clone())
            .await
            .unwrap_err();
        assert!(err.code() == tonic::Code::PermissionDenied && err.message().contains("banned"), "{err:?}");
        let out = server.command(&["agent", "evict", "--spiffe-id", &agent_id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let err = svid_pb::svid_client::SvidClient::new(as_renewed).batch_new_x509svid(request).await.unwrap_err();
        assert!(err.code() == tonic::Code::PermissionDenied && err.message().contains("not attested"), "{err:?}");
    });
}

#[test]
fn local_authority_prepares_activates_taints_and_revokes_in_order() {
    let root = tempfile::tempdir().unwrap();
    let (servers, leader_then_follower) = three_replicas(root.path());
    for index in leader_then_follower {
        local_authority_calls(&servers[index]);
    }
}

/// One turn of X.509 and JWT authorities through `server`: show, prepare, activate, taint,
/// revoke, each refused out of order; then SVIDs still mint.
fn local_authority_calls(server: &Server) {
    wait_until(
        Duration::from_secs(20),
        || server.command(&["bundle", "show"]).status.success(),
        "the CA to publish a bundle",
    );
    let run = |args: &[&str]| {
        let mut all = vec!["localauthority"];
        all.extend(args);
        all.extend(["--output", "json"]);
        let out = server.command(&all);
        (
            out.status.success(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).to_lowercase(),
        )
    };
    let certs = || pem::parse_many(server.command(&["bundle", "show"]).stdout).unwrap().len();
    for kind in ["x509", "jwt"] {
        let (ok, shown, _) = run(&[kind, "show"]);
        assert!(ok && shown["prepared"].is_null() && shown["old"].is_null(), "{shown}");
        assert_eq!(
            shown["active"]["upstream_authority_subject_key_id"], "",
            "no upstream authority signed it: {shown}"
        );
        let first = shown["active"]["authority_id"].as_str().unwrap().to_string();
        let (ok, _, err) = run(&[kind, "taint", "--authority-id", &first]);
        assert!(!ok && err.contains("only an old authority can be tainted"), "{err}");
        let (ok, _, err) = run(&[kind, "revoke", "--authority-id", "no-such-authority"]);
        assert!(!ok && err.contains("not found"), "{err}");
        let (ok, prepared, err) = run(&[kind, "prepare"]);
        assert!(ok, "{err}");
        let second = prepared["prepared"]["authority_id"].as_str().unwrap().to_string();
        assert_ne!(first, second);
        let (ok, _, err) = run(&[kind, "activate", "--authority-id", &second]);
        assert!(ok, "{err}");
        let (_, shown, _) = run(&[kind, "show"]);
        assert_eq!(
            (shown["active"]["authority_id"].as_str(), shown["old"]["authority_id"].as_str()),
            (Some(second.as_str()), Some(first.as_str()))
        );
        let (ok, _, err) = run(&[kind, "revoke", "--authority-id", &first]);
        assert!(
            !ok && err.contains("state required") && err.contains("tainted"),
            "only a tainted authority can be revoked: {err}"
        );
        let (ok, _, err) = run(&[kind, "taint", "--authority-id", &first]);
        assert!(ok, "{err}");
        let before = certs();
        let (ok, _, err) = run(&[kind, "revoke", "--authority-id", &first]);
        assert!(ok, "{err}");
        let (_, shown, _) = run(&[kind, "show"]);
        assert!(shown["old"].is_null(), "{shown}");
        if kind == "x509" {
            assert_eq!(certs(), before - 1, "a revoked CA leaves the bundle");
        }
    }
    // SVIDs still mint with the new authority.
    let out = server.command(&["x509", "mint", "--spiffe-id", "spiffe://example.org/web"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Upstream authorities need one configured.
    let out = server.command(&["upstreamauthority", "taint", "--subject-key-id", "ab"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("upstream authority is not configured"),
        "{out:?}"
    );
}

/// Writes a new openssl-made root CA (P-256) to `cert` and `key`; returns its subject key
/// id as lowercase hex and its DER.
fn openssl_upstream_root(cert: &Path, key: &Path, name: &str) -> (String, Vec<u8>) {
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/O=Upstream/CN={name}"),
        ])
        .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let der = pem::parse(std::fs::read(cert).unwrap()).unwrap().into_contents();
    let skid = identity::x509::certificate_facts(&der).unwrap().subject_key_id.expect("openssl sets a subject key id");
    (hex::encode(skid), der)
}

#[test]
fn an_upstream_authority_that_signed_the_old_ca_is_tainted_then_revoked() {
    let root = tempfile::tempdir().unwrap();
    let (cert, key) = (root.path().join("upstream.crt"), root.path().join("upstream.key"));
    let (first_root, first_der) = openssl_upstream_root(&cert, &key, "first");
    let plugin = format!(
        "  UpstreamAuthority \"disk\" {{\n    plugin_data {{\n      cert_file_path = \"{}\"\n      key_file_path = \
            \"{}\"\n    }}\n  }}",
        cert.display(),
        key.display()
    );
    let server = Server::start_with_plugins(root.path(), 1, "", &plugin);
    server.json(&["cluster", "init"]);
    wait_until(
        Duration::from_secs(20),
        || server.command(&["bundle", "show"]).status.success(),
        "the CA to publish a bundle",
    );
    let run = |server: &Server, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = server.command(&all);
        (
            out.status.success(),
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).to_lowercase(),
        )
    };
    let bundle = |server: &Server| {
        pem::parse_many(server.command(&["bundle", "show"]).stdout)
            .unwrap()
            .into_iter()
            .map(|p| p.into_contents())
            .collect::<Vec<_>>()
    };
    let (_, shown, _) = run(&server, &["localauthority", "x509", "show"]);
    assert_eq!(shown["active"]["upstream_authority_subject_key_id"], first_root.as_str(), "{shown}");
    let (ok, _, err) = run(&server, &["upstreamauthority", "taint", "--subject-key-id", &first_root]);
    assert!(!ok && err.contains("signed the active local authority"), "{err}");

    // The upstream moves to a new root (the files are read at every signing); the next CA
    // is signed by it.
    let (second_root, _) = openssl_upstream_root(&cert, &key, "second");
    let (ok, prepared, err) = run(&server, &["localauthority", "x509", "prepare"]);
    assert!(ok, "{err}");
    assert_eq!(prepared["prepared"]["upstream_authority_subject_key_id"], second_root.as_str(), "{prepared}");
    let (ok, _, err) = run(&server, &["upstreamauthority", "taint", "--subject-key-id", &second_root]);
    assert!(!ok && err.contains("signed the old local authority"), "it signed only the prepared one: {err}");
    let prepared_id = prepared["prepared"]["authority_id"].as_str().unwrap().to_string();
    let (ok, _, err) = run(&server, &["localauthority", "x509", "activate", "--authority-id", &prepared_id]);
    assert!(ok, "{err}");
    assert!(bundle(&server).contains(&first_der));

    let (ok, _, err) = run(&server, &["upstreamauthority", "taint", "--subject-key-id", &second_root]);
    assert!(!ok && err.contains("signed the active local authority"), "{err}");
    let (ok, _, err) = run(&server, &["upstreamauthority", "revoke", "--subject-key-id", &first_root]);
    assert!(!ok && err.contains("only a tainted"), "{err}");
    let (ok, tainted, err) =
        run(&server, &["upstreamauthority", "taint", "--subject-key-id", &first_root.to_uppercase()]);
    assert!(ok, "{err}");
    assert_eq!(tainted["tainted"], first_root.as_str(), "the key id comes back normalised");
    let (ok, _, err) = run(&server, &["upstreamauthority", "taint", "--subject-key-id", &first_root]);
    assert!(!ok && err.contains("already tainted"), "{err}");
    let (ok, _, err) = run(&server, &["upstreamauthority", "revoke", "--subject-key-id", &first_root]);
    assert!(ok, "{err}");
    assert!(!bundle(&server).contains(&first_der), "a revoked upstream root leaves the bundle");
    let (ok, _, err) = run(&server, &["upstreamauthority", "revoke", "--subject-key-id", &first_root]);
    assert!(!ok && err.contains("no x.509 authority of the local bundle"), "{err}");
    // SVIDs still mint, chaining to the new root.
    let out = server.command(&["x509", "mint", "--spiffe-id", "spiffe://example.org/web"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_agent_attests_with_x509pop_through_the_network_listener() {
    use proto::spire::api::server::agent::v1 as agent_pb;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    let pki_dir = root.path().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    crate::x509pop::pki(&pki_dir, "nodes-ca", "node-1", "digitalSignature");
    let plugin = format!(
        "  NodeAttestor \"x509pop\" {{\n    plugin_data {{\n      ca_bundle_path = \"{}\"\n    }}\n  }}",
        pki_dir.join("nodes-ca.pem").display()
    );
    let server = Server::start_with_plugins(root.path(), 1, "", &plugin);
    server.json(&["cluster", "init"]);
    wait_until(
        Duration::from_secs(20),
        || server.command(&["bundle", "show"]).status.success(),
        "the CA to publish a bundle",
    );
    let mut bundle = identity::bundle::Bundle::new(identity::TrustDomain::parse("example.org").unwrap());
    for cert in pem::parse_many(server.command(&["bundle", "show"]).stdout).unwrap() {
        bundle.add_x509_authority(cert.contents()).unwrap();
    }
    let leaf = crate::x509pop::der(&pki_dir, "node-1.pem");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let channel = api_channel(&server, &bundle, None).await;
        let agent_key = identity::crypto::LocalKey::generate(identity::crypto::KeyType::EcP256).unwrap();
        let csr = identity::x509::create_csr(&agent_key, None).unwrap();
        for round in 0..2 {
            let (requests, stream) = tokio::sync::mpsc::channel(2);
            let params = agent_pb::attest_agent_request::Params {
                data: Some(proto::spire::api::types::AttestationData {
                    r#type: "x509pop".into(),
                    payload: crate::x509pop::payload(&leaf),
                }),
                params: Some(agent_pb::AgentX509svidParams { csr: csr.clone() }),
            };
            requests
                .send(agent_pb::AttestAgentRequest { step: Some(agent_pb::attest_agent_request::Step::Params(params)) })
                .await
                .unwrap();
            let mut client = agent_pb::agent_client::AgentClient::new(channel.clone());
            let mut responses =
                client.attest_agent(tokio_stream::wrappers::ReceiverStream::new(stream)).await.unwrap().into_inner();
            let Some(agent_pb::attest_agent_response::Step::Challenge(challenge)) =
                responses.message().await.unwrap().unwrap().step
            else {
                panic!("expected a challenge");
            };
            let answer = crate::x509pop::respond(&pki_dir, "node-1.key", &challenge, false);
            requests
                .send(agent_pb::AttestAgentRequest {
                    step: Some(agent_pb::attest_agent_request::Step::ChallengeResponse(answer)),
                })
                .await
                .unwrap();
            let Some(agent_pb::attest_agent_response::Step::Result(result)) =
                responses.message().await.unwrap().unwrap().step
            else {
                panic!("expected the result");
            };
            assert!(result.reattestable, "x509pop agents may attest again (round {round})");
            let svid = result.svid.unwrap();
            let id = identity::x509::verify_x509_svid(&svid.cert_chain, &bundle, time::OffsetDateTime::now_utc())
                .unwrap()
                .spiffe_id;
            assert!(id.path().starts_with("/spire/agent/x509pop/"), "{id}");
            // It proves the node again instead of renewing, as in SPIRE.
            let identity = (
                svid.cert_chain.iter().map(|c| pem_of("CERTIFICATE", c)).collect::<String>(),
                pem_of("PRIVATE KEY", &agent_key.to_pkcs8_der().unwrap()),
            );
            let as_agent = api_channel(&server, &bundle, Some(identity)).await;
            let err = agent_pb::agent_client::AgentClient::new(as_agent)
                .renew_agent(agent_pb::RenewAgentRequest {
                    params: Some(agent_pb::AgentX509svidParams { csr: csr.clone() }),
                })
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
            assert_eq!(proto::reason::Reason::of(&err), Some(proto::reason::Reason::ReattestRequired), "{err:?}");
        }
        // A wrong answer is refused.
        let (requests, stream) = tokio::sync::mpsc::channel(2);
        let params = agent_pb::attest_agent_request::Params {
            data: Some(proto::spire::api::types::AttestationData {
                r#type: "x509pop".into(),
                payload: crate::x509pop::payload(&leaf),
            }),
            params: Some(agent_pb::AgentX509svidParams { csr: csr.clone() }),
        };
        requests
            .send(agent_pb::AttestAgentRequest { step: Some(agent_pb::attest_agent_request::Step::Params(params)) })
            .await
            .unwrap();
        let mut responses = agent_pb::agent_client::AgentClient::new(channel.clone())
            .attest_agent(tokio_stream::wrappers::ReceiverStream::new(stream))
            .await
            .unwrap()
            .into_inner();
        let Some(agent_pb::attest_agent_response::Step::Challenge(challenge)) =
            responses.message().await.unwrap().unwrap().step
        else {
            panic!("expected a challenge");
        };
        let answer = crate::x509pop::respond(&pki_dir, "node-1.key", &challenge, true);
        requests
            .send(agent_pb::AttestAgentRequest {
                step: Some(agent_pb::attest_agent_request::Step::ChallengeResponse(answer)),
            })
            .await
            .unwrap();
        let err = responses.message().await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    });
    // The refusal came after the stream had started (a challenge was sent): the metric
    // counts it by its real code, read from the trailers; the two good rounds as OK.
    let metrics = http_get(server.metrics_port, "/metrics").1;
    let attest = |code: &str| {
        metrics.lines().any(|l| {
            l.starts_with("testudo_api_calls_total{")
                && l.contains("AttestAgent")
                && l.contains(&format!("code=\"{code}\""))
        })
    };
    assert!(attest("PermissionDenied") && attest("Ok"), "{metrics}");
    let out = server.command(&["agent", "list", "--output", "json"]);
    let agents: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let agent = &agents["agents"][0];
    assert_eq!(agent["attestation_type"], "x509pop");
    assert!(agent["selectors"].as_array().unwrap().iter().any(|s| s == "x509pop:subject:cn:node-1"), "{agent}");
}

#[test]
fn federated_bundles_are_set_listed_and_deleted() {
    let root = tempfile::tempdir().unwrap();
    let pki_dir = root.path().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    crate::x509pop::pki(&pki_dir, "partner-ca", "partner-node", "digitalSignature");
    let (servers, leader_then_follower) = three_replicas(root.path());
    for index in leader_then_follower {
        bundle_calls(&servers[index], root.path(), &pki_dir);
    }
}

/// Federated bundles set, listed and deleted, and AppendBundle, through `server`.
fn bundle_calls(server: &Server, root: &Path, pki_dir: &Path) {
    wait_until(
        Duration::from_secs(20),
        || server.command(&["bundle", "show"]).status.success(),
        "the CA to publish a bundle",
    );
    let ca_pem = pki_dir.join("partner-ca.pem");
    let set = |id: &str, path: &Path| server.command(&["bundle", "set", "--id", id, "--path", path.to_str().unwrap()]);
    let out = set("spiffe://partner.org", &ca_pem);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(set("partner.org", &ca_pem).status.success(), "setting again replaces");
    let listed: serde_json::Value =
        serde_json::from_slice(&server.command(&["bundle", "list", "--output", "json"]).stdout).unwrap();
    assert_eq!(listed["bundles"][0]["trust_domain"], "partner.org");
    assert_eq!(listed["bundles"][0]["x509_authorities"], 1);
    assert_eq!(listed["bundles"][0]["sequence_number"], 2, "{listed}");
    // CountBundles and GetFederatedBundle over the admin socket.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use proto::spire::api::server::bundle::v1::{
            bundle_client::BundleClient, CountBundlesRequest, GetFederatedBundleRequest,
        };
        let mut client = BundleClient::new(proto::unix_socket::connect(&server.socket()).await.unwrap());
        assert_eq!(
            client.count_bundles(CountBundlesRequest {}).await.unwrap().into_inner().count,
            2,
            "the local bundle and partner.org"
        );
        let partner = client
            .get_federated_bundle(GetFederatedBundleRequest { trust_domain: "partner.org".into(), output_mask: None })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((partner.trust_domain.as_str(), partner.x509_authorities.len()), ("partner.org", 1));
        let err = client
            .get_federated_bundle(GetFederatedBundleRequest { trust_domain: "nobody.org".into(), output_mask: None })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    });
    let out = set("example.org", &ca_pem);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not federated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(root.join("junk.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    assert!(!set("other.org", &root.join("junk.pem")).status.success());
    let out = server.command(&["bundle", "delete", "--id", "partner.org"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = server.command(&["bundle", "delete", "--id", "partner.org"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).to_lowercase().contains("not found"));

    // AppendBundle adds an authority to the local bundle (admin only).
    let shown = || {
        pem::parse_many(server.command(&["bundle", "show"]).stdout)
            .unwrap()
            .into_iter()
            .map(|p| p.into_contents())
            .collect::<Vec<Vec<u8>>>()
    };
    let partner_der = crate::x509pop::der(pki_dir, "partner-ca.pem");
    let before = shown();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use proto::spire::api::server::bundle::v1::{bundle_client::BundleClient, AppendBundleRequest};
        let admin = proto::unix_socket::connect(&server.socket()).await.unwrap();
        let der = crate::x509pop::der(pki_dir, "partner-ca.pem");
        let request = AppendBundleRequest {
            x509_authorities: vec![proto::spire::api::types::X509Certificate { asn1: der, tainted: false }],
            ..Default::default()
        };
        BundleClient::new(admin.clone()).append_bundle(request).await.unwrap();
        let bad = AppendBundleRequest {
            x509_authorities: vec![proto::spire::api::types::X509Certificate {
                asn1: b"junk".to_vec(),
                tainted: false,
            }],
            ..Default::default()
        };
        let err = BundleClient::new(admin).append_bundle(bad).await.unwrap_err();
        assert!(
            err.code() == tonic::Code::InvalidArgument && err.message().starts_with("x509_authorities[0]"),
            "{err:?}"
        );
    });
    let after = shown();
    assert!(after.contains(&partner_der), "the appended authority is in the bundle");
    // The second round appends what the first one did: nothing changes then.
    assert_eq!(after.len(), before.len() + usize::from(!before.contains(&partner_der)));
}

#[test]
fn an_svid_whose_entry_is_marked_admin_may_call_admin_apis() {
    use proto::spire::api::server::entry::v1::{entry_client::EntryClient, CountEntriesRequest};
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    wait_until(
        Duration::from_secs(20),
        || server.command(&["bundle", "show"]).status.success(),
        "the CA to publish a bundle",
    );
    let dir = root.path().join("ops-svid");
    let out =
        server.command(&["x509", "mint", "--spiffe-id", "spiffe://example.org/ops", "--write", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut bundle = identity::bundle::Bundle::new(identity::TrustDomain::parse("example.org").unwrap());
    for cert in pem::parse_many(std::fs::read(dir.join("bundle.pem")).unwrap()).unwrap() {
        bundle.add_x509_authority(cert.contents()).unwrap();
    }
    let identity_pem =
        (std::fs::read_to_string(dir.join("svid.pem")).unwrap(), std::fs::read_to_string(dir.join("key.pem")).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let channel = api_channel(&server, &bundle, Some(identity_pem.clone())).await;
        let err =
            EntryClient::new(channel.clone()).count_entries(CountEntriesRequest { filter: None }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let out = server.command(&[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/ops",
            "--parent-id",
            "spiffe://example.org/spire/agent/x",
            "--selector",
            "unix:uid:0",
            "--admin",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let count = EntryClient::new(channel)
            .count_entries(CountEntriesRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .count;
        assert_eq!(count, 1);
    });
}

#[test]
fn federated_bundle_updates_honour_the_input_mask() {
    use identity::crypto::{KeyType, LocalKey, Signer};
    use proto::spire::api::server::bundle::v1 as bundle_pb;
    use proto::spire::api::types;
    let root = tempfile::tempdir().unwrap();
    let (servers, leader_then_follower) = three_replicas(root.path());
    let pki_dir = root.path().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    testkit::pki::ca_and_leaf(&pki_dir, "partner-ca", "partner-leaf", "digitalSignature");
    testkit::pki::ca_and_leaf(&pki_dir, "partner-ca2", "partner-leaf2", "digitalSignature");
    let ca = |name: &str| {
        identity::bundle::parse_pem_certificates(&std::fs::read_to_string(pki_dir.join(name)).unwrap())
            .unwrap()
            .remove(0)
    };
    let (first_ca, second_ca) = (ca("partner-ca.pem"), ca("partner-ca2.pem"));
    let jwt_key = LocalKey::generate(KeyType::EcP256).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Through the leader, then through a follower, each with a trust domain of its own.
    for (round, index) in leader_then_follower.into_iter().enumerate() {
        let server = &servers[index];
        let partner = format!("partner{round}.org");
        runtime.block_on(async {
            let mut client = bundle_pb::bundle_client::BundleClient::new(
                proto::unix_socket::connect(&server.socket()).await.unwrap(),
            );
            let jwt = types::JwtKey {
                public_key: jwt_key.public_key().spki_der().to_vec(),
                key_id: "partner-kid".into(),
                expires_at: 0,
                tainted: false,
            };
            let bundle = |x509: &[u8], refresh_hint: i64, jwt: Vec<types::JwtKey>| types::Bundle {
                trust_domain: partner.clone(),
                x509_authorities: vec![types::X509Certificate { asn1: x509.to_vec(), tainted: false }],
                jwt_authorities: jwt,
                refresh_hint,
                sequence_number: 0,
            };
            let created = client
                .batch_create_federated_bundle(bundle_pb::BatchCreateFederatedBundleRequest {
                    bundle: vec![bundle(&first_ca, 60, vec![jwt.clone()])],
                    output_mask: None,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(created.results[0].status.as_ref().unwrap().code, 0, "{created:?}");

            // Only the refresh hint: the authorities stay.
            let only_hint = types::BundleMask { refresh_hint: true, ..Default::default() };
            let update = bundle_pb::BatchUpdateFederatedBundleRequest {
                bundle: vec![bundle(&second_ca, 300, vec![])],
                input_mask: Some(only_hint),
                output_mask: None,
            };
            let updated = client
                .batch_update_federated_bundle(update)
                .await
                .unwrap()
                .into_inner()
                .results
                .remove(0)
                .bundle
                .unwrap();
            assert_eq!(updated.refresh_hint, 300);
            assert_eq!(updated.x509_authorities[0].asn1, first_ca);
            assert_eq!(updated.jwt_authorities.len(), 1);

            // Only the X.509 authorities: the JWT key stays.
            let only_x509 = types::BundleMask { x509_authorities: true, ..Default::default() };
            let update = bundle_pb::BatchUpdateFederatedBundleRequest {
                bundle: vec![bundle(&second_ca, 5, vec![])],
                input_mask: Some(only_x509),
                output_mask: None,
            };
            let updated = client
                .batch_update_federated_bundle(update)
                .await
                .unwrap()
                .into_inner()
                .results
                .remove(0)
                .bundle
                .unwrap();
            assert_eq!(updated.x509_authorities[0].asn1, second_ca);
            assert_eq!((updated.refresh_hint, updated.jwt_authorities.len()), (300, 1));

            // No mask: the whole bundle is replaced. An unknown trust domain is NotFound.
            let update = bundle_pb::BatchUpdateFederatedBundleRequest {
                bundle: vec![bundle(&first_ca, 7, vec![])],
                input_mask: None,
                output_mask: None,
            };
            let updated = client
                .batch_update_federated_bundle(update)
                .await
                .unwrap()
                .into_inner()
                .results
                .remove(0)
                .bundle
                .unwrap();
            assert_eq!((updated.refresh_hint, updated.jwt_authorities.len()), (7, 0));
            let mut unknown = bundle(&first_ca, 7, vec![]);
            unknown.trust_domain = "nobody.org".into();
            let update = bundle_pb::BatchUpdateFederatedBundleRequest {
                bundle: vec![unknown],
                input_mask: Some(only_x509),
                output_mask: None,
            };
            let result = client.batch_update_federated_bundle(update).await.unwrap().into_inner().results.remove(0);
            assert_eq!(result.status.unwrap().code, tonic::Code::NotFound as i32);
            let stored = client
                .get_federated_bundle(bundle_pb::GetFederatedBundleRequest {
                    trust_domain: partner.clone(),
                    output_mask: None,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(stored.x509_authorities[0].asn1, first_ca);
        });
    }
}

/// A replica that is joining a cluster answers every other call at once, saying so: the
/// join (here stuck on an invite address that accepts TCP and never speaks TLS) holds no
/// lock that API calls wait behind.
#[test]
fn calls_made_during_a_join_answer_within_a_second() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path(), 1, "");
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let invite = server::cluster::invite::Invite {
        secret: [7; 32],
        ca_sha256: [9; 32],
        addresses: vec![silent.local_addr().unwrap().to_string()],
    }
    .encode()
    .unwrap();
    let mut joining = Command::new(BIN)
        .args(["cluster", "join", "--token", &invite, "--socket-path"])
        .arg(server.socket())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The join is under way once the server has connected to the silent address.
    silent.set_nonblocking(true).unwrap();
    let mut held = None;
    wait_until(
        Duration::from_secs(20),
        || {
            held = held.take().or_else(|| silent.accept().ok());
            held.is_some()
        },
        "the joining replica to dial the invite's address",
    );

    for args in [vec!["entry", "count"], vec!["agent", "count"], vec!["cluster", "status"]] {
        let started = Instant::now();
        let out = server.command(&args);
        let took = started.elapsed();
        let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
        assert!(took < Duration::from_secs(1), "{args:?} took {took:?} during a join: {said}");
        if args[0] != "cluster" {
            assert!(!out.status.success(), "{args:?} cannot be served while joining");
            assert!(said.contains("forming or joining a cluster"), "{args:?} says why: {said}");
        }
    }
    assert!(joining.try_wait().unwrap().is_none(), "the join was still under way during the calls");
    let _ = joining.kill();
    let _ = joining.wait();
}
