use std::time::Duration;

use hcl_config::InvalidKey;

use super::*;

const MINIMAL: &str = r#"
agent {
  data_dir = "/var/lib/testudo-agent"
  server_address = "spire-server"
  trust_domain = "example.org"
  trust_bundle_path = "/etc/testudo/bundle.pem"
  join_token = "abc"
}

plugins {
  NodeAttestor "join_token" {}
  KeyManager "disk" {}
  WorkloadAttestor "unix" {}
}
"#;

fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
    AgentConfig::parse(text, "agent.hcl")
}

fn refusal(text: &str) -> InvalidKey {
    match parse(text) {
        Err(ConfigError::Invalid(key)) => key,
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

#[test]
fn minimal_file_gets_spires_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.servers, ["spire-server:8081"]);
    assert_eq!(config.agent.socket_path, Path::new("/tmp/spire-agent/public/api.sock"));
    assert_eq!(config.agent.sync_interval, Duration::from_secs(5));
    assert_eq!(config.trust, TrustSource::File { path: "/etc/testudo/bundle.pem".into(), spiffe_format: false });
    assert_eq!(config.node_attestor, NodeAttestor::JoinToken);
    assert_eq!(config.key_storage, KeyStorage::Disk("/var/lib/testudo-agent".into()));
    assert_eq!(config.workload_attestors.unix, Some(plugins::UnixData::default()));
}

#[test]
fn a_list_of_servers_keeps_their_ports_and_fills_in_the_default() {
    let text = MINIMAL.replace(
        r#"server_address = "spire-server""#,
        r#"server_address = ["10.0.0.1:9000", "10.0.0.2", "[::1]"]
  server_port = "7000""#,
    );
    assert_eq!(parse(&text).unwrap().servers, ["10.0.0.1:9000", "10.0.0.2:7000", "[::1]:7000"]);
}

#[test]
fn refusals_name_the_key_and_its_line() {
    let unknown = refusal(&MINIMAL.replace("join_token = \"abc\"", "join_token = \"abc\"\n  colour = \"blue\""));
    assert_eq!((unknown.key.as_str(), unknown.line), ("agent.colour", Some(8)));
    assert!(unknown.message.contains("unknown field `colour`"), "{unknown:?}");

    let duration = refusal(&MINIMAL.replace("join_token = \"abc\"", "sync_interval = \"often\""));
    assert_eq!((duration.key.as_str(), duration.line), ("agent.sync_interval", Some(7)));

    let missing = refusal(&MINIMAL.replace("  trust_domain = \"example.org\"\n", ""));
    assert!(missing.message.contains("trust_domain"), "{missing:?}");

    let both = refusal(&MINIMAL.replace("join_token = \"abc\"", "insecure_bootstrap = true"));
    assert_eq!(both.key, "agent.insecure_bootstrap");

    let plugin = refusal(&MINIMAL.replace("NodeAttestor \"join_token\"", "NodeAttestor \"tpm\""));
    assert_eq!((plugin.key.as_str(), plugin.line), ("plugins.NodeAttestor.tpm", Some(11)));
    assert!(plugin.message.contains("expected `join_token` or `x509pop`"), "{plugin:?}");

    let no_workload = refusal(&MINIMAL.replace("  WorkloadAttestor \"unix\" {}\n", ""));
    assert!(no_workload.message.contains("WorkloadAttestor"), "{no_workload:?}");

    let bad_server = refusal(&MINIMAL.replace("\"spire-server\"", "\"https://spire-server\""));
    assert_eq!(bad_server.key, "agent.server_address");
}

#[test]
fn sds_names_default_to_spires_and_are_checked() {
    assert_eq!(parse(MINIMAL).unwrap().agent.sds, SdsSection::default());
    let set = |block: &str| {
        MINIMAL.replace("join_token = \"abc\"", &format!("join_token = \"abc\"\n  sds {{\n    {block}\n  }}"))
    };
    let custom = parse(&set(r#"default_svid_name = "svid"
    disable_spiffe_cert_validation = true"#))
    .unwrap();
    assert_eq!(custom.agent.sds.default_svid_name, "svid");
    assert_eq!(custom.agent.sds.default_bundle_name, "ROOTCA", "unset names keep their defaults");
    assert!(custom.agent.sds.disable_spiffe_cert_validation);

    let clash = refusal(&set(r#"default_bundle_name = "default""#));
    assert_eq!(clash.key, "agent.sds.default_bundle_name");
    assert!(clash.message.contains("default_svid_name"), "{clash:?}");
    let id = refusal(&set(r#"default_all_bundles_name = "spiffe://example.org""#));
    assert_eq!(id.key, "agent.sds.default_all_bundles_name");
    let unknown = refusal(&set(r#"default_name = "x""#));
    assert_eq!((unknown.key.as_str(), unknown.line), ("agent.sds.default_name", Some(9)));
}

#[test]
fn a_trust_bundle_url_must_be_https_and_alone() {
    let with_url = |url: &str| {
        MINIMAL.replace(
            r#"trust_bundle_path = "/etc/testudo/bundle.pem""#,
            &format!("trust_bundle_url = \"{url}\"\n  trust_bundle_format = \"spiffe\""),
        )
    };
    let config = parse(&with_url("https://bundles.example.org/td.json")).unwrap();
    assert_eq!(
        config.trust,
        TrustSource::Url { url: "https://bundles.example.org/td.json".into(), spiffe_format: true }
    );
    let plain = refusal(&with_url("http://bundles.example.org/td.json"));
    assert_eq!((plain.key.as_str(), plain.line), ("agent.trust_bundle_url", Some(6)));
    assert!(plain.message.contains("https://"), "{plain:?}");
    assert_eq!(refusal(&with_url("not a url")).key, "agent.trust_bundle_url");
    let both = refusal(&MINIMAL.replace("join_token = \"abc\"", "trust_bundle_url = \"https://x.example/b.pem\""));
    assert!(both.message.contains("exclude each other"), "{both:?}");
}

#[test]
fn the_admin_socket_must_not_be_where_workloads_reach() {
    let with_admin = |path: &str| {
        MINIMAL.replace(
            "join_token = \"abc\"",
            &format!(
                "join_token = \"abc\"\n  socket_path = \
            \"/run/agent/public/api.sock\"\n  admin_socket_path = \"{path}\""
            ),
        )
    };
    assert!(parse(&with_admin("/run/agent/private/admin.sock")).is_ok());
    for inside in ["/run/agent/public/admin.sock", "/run/agent/public/deeper/admin.sock", "relative/admin.sock"] {
        assert_eq!(refusal(&with_admin(inside)).key, "agent.admin_socket_path", "{inside}");
    }
}

/// The agent config docs/nested.md gives for the root's agent on a region's hosts loads as
/// written and serves the socket the region's servers are told to read.
#[test]
fn the_nested_guides_agent_config_loads() {
    let agents: Vec<AgentConfig> = testkit::docs::code_blocks("nested.md", "hcl")
        .iter()
        .filter(|block| block.starts_with("agent {"))
        .map(|block| parse(block).unwrap_or_else(|e| panic!("{e}\n{block}")))
        .collect();
    let [root_agent] = agents.as_slice() else {
        panic!("the guide gives one agent config, got {}", agents.len());
    };
    assert_eq!(root_agent.servers, ["root-1.example.net:8081", "root-2.example.net:8081", "root-3.example.net:8081"]);
    assert_eq!(root_agent.agent.socket_path, Path::new("/run/testudo-root-agent/api.sock"));
    let unix = root_agent.workload_attestors.unix.as_ref().expect("the unix workload attestor");
    assert!(unix.discover_workload_path, "the downstream entry selects the server by unix:path");
}
