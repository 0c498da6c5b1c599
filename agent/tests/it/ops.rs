//! The agent's `/live`, `/ready` and Prometheus `/metrics`, as configured, and the debug
//! API on its admin socket.

use std::time::Duration;

use testkit::{free_port, http_get, wait_until, AgentProcess, ServerProcess};

#[test]
fn health_and_metrics_endpoints_answer() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    let bundle_pem = server.bundle_pem();
    let token = server.json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_string();
    let (health, metrics) = (free_port(), free_port());
    let blocks = format!(
        "health_checks {{\n  listener_enabled = true\n  bind_address = \"127.0.0.1\"\n  bind_port = \
            \"{health}\"\n}}\ntelemetry {{\n  Prometheus {{\n    host = \"127.0.0.1\"\n    port = \
            {metrics}\n  }}\n}}\n"
    );
    let admin = root.path().join("admin").join("admin.sock");
    let agent_extra = format!("join_token = \"{token}\"\n  admin_socket_path = \"{}\"", admin.display());
    let agent = AgentProcess::start_with_attestor(
        root.path(),
        &[server.api_address()],
        &bundle_pem,
        &agent_extra,
        r#"NodeAttestor "join_token" {}"#,
        "500ms",
        &blocks,
    );
    assert_eq!(http_get(health, "/live").0, 200, "{}", agent.log());
    assert_eq!(http_get(health, "/ready").0, 200, "ready once the Workload API serves");
    wait_until(
        Duration::from_secs(30),
        || http_get(metrics, "/metrics").1.contains("testudo_agent_syncs_total{result=\"ok\"}"),
        "the sync counter in /metrics",
    );

    // The admin socket: owner-only, and GetInfo describes the agent.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&admin).unwrap().permissions().mode() & 0o777, 0o600);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let info = runtime.block_on(async {
        let channel = proto::unix_socket::connect(&admin).await.unwrap();
        let mut client = proto::spire::agent::debug::v1::debug_client::DebugClient::new(channel);
        client.get_info(proto::spire::agent::debug::v1::GetInfoRequest {}).await.unwrap().into_inner()
    });
    let leaf = info.svid_chain.first().unwrap_or_else(|| panic!("no agent SVID in {info:?}"));
    let id = leaf.id.as_ref().unwrap();
    assert_eq!(
        (id.trust_domain.as_str(), id.path.as_str()),
        ("example.org", format!("/spire/agent/join_token/{token}").as_str())
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(leaf.expires_at > now, "{info:?}");
    assert!(info.last_sync_success > 0 && info.last_sync_success <= now, "{info:?}");

    // A stock grpcio client with stubs from SPIRE's proto is served there too.
    let python = std::env::var("TESTUDO_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python").to_string());
    let package = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let out = std::process::Command::new(&python)
        .arg(format!("{package}/tests/py/debug_client.py"))
        .arg(format!("{package}/../proto/proto"))
        .arg(format!("unix:{}", admin.display()))
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (make test creates the venv)"));
    assert!(out.status.success(), "debug_client.py: {}", String::from_utf8_lossy(&out.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(seen["svid_chain"].as_u64().unwrap() >= 1, "{seen}");
}
