//! The agent's `/live`, `/ready` and Prometheus `/metrics`, as configured.

use std::time::Duration;

use chaos_tests::harness::{free_port, http_get, wait_until, AgentProcess, ServerProcess};

#[test]
fn health_and_metrics_endpoints_answer() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    let bundle_pem = server.bundle_pem();
    let token = server.json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_string();
    let (health, metrics) = (free_port(), free_port());
    let blocks = format!(
        "health_checks {{\n  listener_enabled = true\n  bind_address = \"127.0.0.1\"\n  bind_port = \"{health}\"\n}}\ntelemetry {{\n  Prometheus {{\n    host = \"127.0.0.1\"\n    port = {metrics}\n  }}\n}}\n"
    );
    let agent = AgentProcess::start_with_attestor(root.path(), &[server.api_address()], &bundle_pem, &format!("join_token = \"{token}\""), r#"NodeAttestor "join_token" {}"#, "500ms", &blocks);
    assert_eq!(http_get(health, "/live").0, 200, "{}", agent.log());
    assert_eq!(http_get(health, "/ready").0, 200, "ready once the Workload API serves");
    wait_until(Duration::from_secs(10), || http_get(metrics, "/metrics").1.contains("testudo_agent_syncs_total{result=\"ok\"}"), "the sync counter in /metrics");
}
