//! An agent attests with SPIRE's x509pop (a node certificate and key made by openssl) and
//! serves its workload, attests again when evicted and when its SVID is due for renewal; an
//! agent whose certificate the servers do not trust is refused.

use std::time::Duration;

use testkit::{pki, AgentProcess, ServerProcess};

#[test]
fn an_agent_attests_with_x509pop_and_serves_its_workload() {
    let root = tempfile::tempdir().unwrap();
    let pki_dir = root.path().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    pki::ca_and_leaf(&pki_dir, "nodes-ca", "node", "digitalSignature");
    let plugin = format!(
        "NodeAttestor \"x509pop\" {{\n    plugin_data {{\n      ca_bundle_path = \"{}\"\n    }}\n  }}",
        pki_dir.join("nodes-ca.pem").display()
    );
    // Agent SVIDs live 30 s (from a backdated start), so the agent renews within the test.
    let server = ServerProcess::start_with_plugins(root.path(), 1, r#"agent_ttl = "30s""#, &plugin);
    server.json(&["cluster", "init"]);
    let bundle_pem = server.bundle_pem();

    // SPIRE names the agent by the SHA-1 of its leaf certificate.
    let der = pem::parse(std::fs::read_to_string(pki_dir.join("node.pem")).unwrap()).unwrap().into_contents();
    let fingerprint = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der));
    let agent_id = format!("spiffe://example.org/spire/agent/x509pop/{fingerprint}");
    let uid = nix::unistd::getuid().as_raw();
    server.json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/node-workload",
        "--parent-id",
        &agent_id,
        "--selector",
        &format!("unix:uid:{uid}"),
    ]);

    let attestor = format!(
        "NodeAttestor \"x509pop\" {{\n    plugin_data {{\n      private_key_path = \"{key}\"\n      certificate_path \
            = \"{cert}\"\n    }}\n  }}",
        key = pki_dir.join("node.key").display(),
        cert = pki_dir.join("node.pem").display(),
    );
    let agent =
        AgentProcess::start_with_attestor(root.path(), &[server.api_address()], &bundle_pem, "", &attestor, "1s", "");
    let out = std::process::Command::new(testkit::binary("testudo-agent"))
        .args(["api", "fetch", "x509", "--output", "json", "--socket-path"])
        .arg(agent.socket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\nagent log:\n{}", String::from_utf8_lossy(&out.stderr), agent.log());
    let fetched: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(fetched["svids"][0]["spiffe_id"], "spiffe://example.org/node-workload");
    let agents = server.json(&["agent", "list"]);
    assert!(agents.to_string().contains(&agent_id), "{agents}");

    // Evicted, the agent proves its node again and keeps getting new SVIDs.
    let evicted = server.command(&["agent", "evict", "--spiffe-id", &agent_id]);
    assert!(evicted.status.success(), "{}", String::from_utf8_lossy(&evicted.stderr));
    server.json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/after-eviction",
        "--parent-id",
        &agent_id,
        "--selector",
        &format!("unix:uid:{uid}"),
    ]);
    testkit::wait_until(
        Duration::from_secs(30),
        || {
            let out = std::process::Command::new(testkit::binary("testudo-agent"))
                .args(["api", "fetch", "x509", "--output", "json", "--socket-path"])
                .arg(agent.socket())
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/after-eviction")
        },
        "the evicted agent to attest again and mint for a new entry",
    );
    assert!(agent.log().contains("attesting again") && agent.log().contains("attested again"), "{}", agent.log());

    // At half its SVID's life it proves the node again rather than renewing (the servers
    // refuse RenewAgent to agents that can re-attest, as SPIRE's do).
    testkit::wait_until(Duration::from_secs(40), || agent.log().contains("agent SVID renewed"), "a renewal");
    assert!(!agent.log().contains("renewal failed"), "{}", agent.log());
}

#[test]
fn an_agent_with_an_untrusted_node_certificate_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let pki_dir = root.path().join("pki");
    std::fs::create_dir_all(&pki_dir).unwrap();
    pki::ca_and_leaf(&pki_dir, "nodes-ca", "node", "digitalSignature");
    pki::ca_and_leaf(&pki_dir, "rogue-ca", "rogue", "digitalSignature");
    let plugin = format!(
        "NodeAttestor \"x509pop\" {{\n    plugin_data {{\n      ca_bundle_path = \"{}\"\n    }}\n  }}",
        pki_dir.join("nodes-ca.pem").display()
    );
    let server = ServerProcess::start_with_plugins(root.path(), 1, "", &plugin);
    server.json(&["cluster", "init"]);
    let bundle_pem = server.bundle_pem();
    let dir = root.path().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bundle.pem"), &bundle_pem).unwrap();
    let config = format!(
        r#"agent {{
  data_dir = "{dir}/data"
  server_address = "{server}"
  trust_domain = "example.org"
  trust_bundle_path = "{dir}/bundle.pem"
  socket_path = "{dir}/api.sock"
}}
plugins {{
  NodeAttestor "x509pop" {{
    plugin_data {{
      private_key_path = "{key}"
      certificate_path = "{cert}"
    }}
  }}
  KeyManager "memory" {{}}
  WorkloadAttestor "unix" {{}}
}}
"#,
        dir = dir.display(),
        server = server.api_address(),
        key = pki_dir.join("rogue.key").display(),
        cert = pki_dir.join("rogue.pem").display(),
    );
    std::fs::write(dir.join("agent.hcl"), config).unwrap();
    let mut child = std::process::Command::new(testkit::binary("testudo-agent"))
        .args(["run", "--config"])
        .arg(dir.join("agent.hcl"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the agent should stop: attestation refused");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("node attestation failed") && stderr.contains("PermissionDenied"), "{stderr}");
    assert!(!dir.join("api.sock").exists(), "no Workload API without an identity");
}
