use std::time::Duration;

use super::*;

const MINIMAL: &str = r#"
server {
  trust_domain = "example.org"
  data_dir = "/var/lib/testudo"
}

plugins {
  KeyManager "memory" {}
  NodeAttestor "join_token" {}
}

cluster {
  node_id = 1
  raft_bind_address = "127.0.0.1:8082"
}
"#;

fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
    ServerConfig::parse(text, "server.hcl")
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
    assert_eq!(config.server.trust_domain.name(), "example.org");
    assert_eq!(config.server.bind_port, 8081);
    assert_eq!(config.server.bind_address.to_string(), "0.0.0.0");
    assert_eq!(config.server.socket_path, Path::new("/tmp/spire-server/private/api.sock"));
    assert_eq!(config.server.ca_ttl, Duration::from_secs(86400));
    assert_eq!(config.server.default_x509_svid_ttl, Duration::from_secs(3600));
    assert_eq!(config.server.default_jwt_svid_ttl, Duration::from_secs(300));
    assert_eq!(config.key_manager, KeyManagerConfig::Memory);
    assert!(config.node_attestors.join_token);
    assert_eq!(config.node_attestors.x509pop_ca_bundle_paths, None);
    assert!(config.upstream_authority.is_none());
    assert!(!config.health_checks.listener_enabled);
    assert_eq!(config.health_checks.live_path, "/live");
    assert!(config.telemetry.prometheus.is_none());
    assert!(config.warnings.is_empty());
}

#[test]
fn full_file_in_spires_shape() {
    let text = r#"
server {
  bind_address = "127.0.0.1"
  bind_port = "9081"
  socket_path = "/run/testudo/api.sock"
  trust_domain = "prod.example.org"
  data_dir = "/var/lib/testudo"
  log_level = "DEBUG"
  log_format = "json"
  ca_ttl = "168h"
  default_x509_svid_ttl = "2h"
  default_jwt_svid_ttl = "10m"
  ca_key_type = "ec-p384"
  jwt_key_type = "rsa-2048"
  jwt_issuer = "https://oidc.example.org"
  admin_ids = ["spiffe://prod.example.org/admin"]
  ca_subject {
    country = ["DE"]
    organization = ["Example"]
    common_name = "Example CA"
  }
}

plugins {
  KeyManager "disk" {
    plugin_data {
      keys_path = "/var/lib/testudo/keys.json"
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  NodeAttestor "x509pop" {
    plugin_data {
      ca_bundle_path = "/etc/testudo/x509pop-ca.pem"
    }
  }
  UpstreamAuthority "disk" {
    plugin_data {
      cert_file_path = "/etc/testudo/upstream.crt"
      key_file_path = "/etc/testudo/upstream.key"
    }
  }
}

cluster {
  node_id = 3
  raft_bind_address = "127.0.0.1:9082"
  raft_advertise_address = "replica-3.internal:9082"
  raft_source_address = "127.0.0.3"
  heartbeat_interval = "200ms"
  election_timeout = "1s"
}

health_checks {
  listener_enabled = true
  bind_address = "127.0.0.1"
  bind_port = "8080"
}

telemetry {
  Prometheus {
    host = "127.0.0.1"
    port = 9988
  }
}
"#;
    let config = parse(text).unwrap();
    assert_eq!(config.server.bind_port, 9081);
    assert_eq!(config.server.log_level, sections::LogLevel::DEBUG);
    assert_eq!(config.server.log_format, sections::LogFormat::Json);
    assert_eq!(config.server.ca_ttl, Duration::from_secs(168 * 3600));
    assert_eq!(config.server.admin_ids.len(), 1);
    assert_eq!(config.key_manager, KeyManagerConfig::Disk { keys_path: "/var/lib/testudo/keys.json".into() });
    assert_eq!(config.node_attestors.x509pop_ca_bundle_paths, Some(vec!["/etc/testudo/x509pop-ca.pem".into()]));
    let Some(crate::upstream::UpstreamConfig::Disk(upstream)) = config.upstream_authority.clone() else {
        panic!("the disk upstream authority");
    };
    assert_eq!(upstream.key_file_path, Path::new("/etc/testudo/upstream.key"));
    assert_eq!(config.cluster.node_id, 3);
    assert_eq!(config.cluster.election_timeout, Duration::from_secs(1));
    assert_eq!(config.cluster.raft_source_address, Some("127.0.0.3".parse().unwrap()));
    assert_eq!(config.health_checks.bind_port, 8080);
    assert_eq!(config.telemetry.prometheus.as_ref().map(|p| p.port), Some(9988));
    let ca = config.ca_config();
    assert_eq!(ca.ca_subject.common_name.as_deref(), Some("Example CA"));
    assert_eq!(ca.ca_subject.country.as_deref(), Some("DE"));
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let text = MINIMAL.replace("  data_dir", "  bind_prot = 1\n  data_dir");
    let key = refusal(&text);
    assert_eq!(key.key, "server.bind_prot");
    assert_eq!(key.line, Some(4));
    assert!(key.message.contains("unknown field `bind_prot`"), "{key}");
    assert!(key.to_string().starts_with("server.hcl:4: server.bind_prot: unknown field"), "{key}");
}

#[test]
fn bad_duration_is_named_with_its_line() {
    let text = MINIMAL.replace("  data_dir", "  ca_ttl = \"a day\"\n  data_dir");
    let key = refusal(&text);
    assert_eq!((key.key.as_str(), key.line), ("server.ca_ttl", Some(4)));
    assert!(key.message.contains("invalid duration \"a day\""), "{key}");
}

#[test]
fn missing_required_field_points_at_its_block() {
    let text = MINIMAL.replace("  data_dir = \"/var/lib/testudo\"\n", "");
    let key = refusal(&text);
    assert_eq!((key.key.as_str(), key.line), ("server", Some(2)));
    assert!(key.message.contains("missing field `data_dir`"), "{key}");

    // Without `peers` (the invite flow) a node id is required.
    let text = MINIMAL.replace("  node_id = 1\n", "");
    let key = refusal(&text);
    assert_eq!(key.key, "cluster.node_id");
    assert!(key.message.contains("positive integer"), "{key}");
}

#[test]
fn a_declared_cluster_takes_peers_and_the_ca_files_instead_of_a_node_id() {
    let declared = |lines: &str| MINIMAL.replace("  node_id = 1\n", lines);
    let files = "  ca_cert_file = \"/etc/ca.crt\"\n  ca_key_file = \"/etc/ca.key\"\n";
    let peers = "  peers = [\"a:8082\", \"b:8082\", \"c:8082\"]\n";
    let config = parse(&declared(&format!("{peers}{files}  bootstrap_expect = 3\n"))).unwrap();
    assert_eq!(config.cluster.node_id, 0);
    assert_eq!(config.cluster.peers.len(), 3);
    assert_eq!(config.cluster.remove_unreachable_after, None);
    let config = parse(&declared(&format!("{peers}{files}  remove_unreachable_after = \"10m\"\n"))).unwrap();
    assert_eq!(config.cluster.remove_unreachable_after, Some(std::time::Duration::from_secs(600)));

    for (lines, key, says) in [
        (format!("  node_id = 1\n{peers}{files}"), "cluster.node_id", "not with `peers`"),
        (peers.to_string(), "cluster.ca_cert_file", "required with `peers`"),
        (files.to_string(), "cluster.ca_cert_file", "only with `peers`"),
        (format!("{peers}{files}  bootstrap_expect = 4\n"), "cluster.bootstrap_expect", "between 1 and"),
        (format!("{peers}{files}  bootstrap_expect = 0\n"), "cluster.bootstrap_expect", "between 1 and"),
        (format!("  peers = [\"a:8082\", \"a:8082\"]\n{files}"), "cluster.peers", "listed twice"),
        (format!("  peers = [\"a\"]\n{files}"), "cluster.peers", "not host:port"),
        (
            "  node_id = 1\n  remove_unreachable_after = \"10m\"\n".to_string(),
            "cluster.remove_unreachable_after",
            "only with `peers`",
        ),
        (
            format!("{peers}{files}  remove_unreachable_after = \"9s\"\n"),
            "cluster.remove_unreachable_after",
            "at least 10 s",
        ),
    ] {
        let refused = refusal(&declared(&lines));
        assert_eq!(refused.key, key, "{lines}");
        assert!(refused.message.contains(says), "{lines}: {refused}");
    }
}

#[test]
fn bad_values_are_refused_by_key() {
    let cases = [
        (
            "trust_domain = \"example.org\"",
            "trust_domain = \"Example.org\"",
            "server.trust_domain",
            "invalid trust domain",
        ),
        ("node_id = 1", "node_id = 0", "cluster.node_id", "positive"),
        ("node_id = 1", "node_id = -1", "cluster.node_id", "invalid"),
        (
            "raft_bind_address = \"127.0.0.1:8082\"",
            "raft_bind_address = \"localhost\"",
            "cluster.raft_bind_address",
            "invalid",
        ),
        (
            "data_dir = \"/var/lib/testudo\"",
            "data_dir = \"/var/lib/testudo\"\n  ca_key_type = \"ed25519\"",
            "server.ca_key_type",
            "ec-p256",
        ),
        (
            "data_dir = \"/var/lib/testudo\"",
            "data_dir = \"/var/lib/testudo\"\n  bind_port = 70000",
            "server.bind_port",
            "0 to 65535",
        ),
        (
            "data_dir = \"/var/lib/testudo\"",
            "data_dir = \"/var/lib/testudo\"\n  log_level = \"LOUD\"",
            "server.log_level",
            "unknown variant",
        ),
        (
            "data_dir = \"/var/lib/testudo\"",
            "data_dir = \"/var/lib/testudo\"\n  ca_ttl = \"30s\"",
            "server.ca_ttl",
            "at least one minute",
        ),
        (
            "data_dir = \"/var/lib/testudo\"",
            "data_dir = \"/var/lib/testudo\"\n  jwt_issuer = \"oidc\"",
            "server.jwt_issuer",
            "URL",
        ),
        (
            "data_dir = \"/var/lib/testudo\"",
            "data_dir = \"/var/lib/testudo\"\n  admin_ids = [\"spiffe://x/\"]",
            "server.admin_ids",
            "invalid SPIFFE ID",
        ),
    ];
    for (from, to, want_key, want_message) in cases {
        let key = refusal(&MINIMAL.replace(from, to));
        assert_eq!(key.key, want_key, "{to}: {key}");
        assert!(key.line.is_some(), "{to}: {key}");
        assert!(key.message.contains(want_message), "{to}: {key}");
    }
}

#[test]
fn plugin_problems_are_named() {
    let key = refusal(&MINIMAL.replace("KeyManager \"memory\" {}", "KeyManager \"vault\" {}"));
    assert_eq!((key.key.as_str(), key.line), ("plugins.KeyManager.vault", Some(8)));
    assert!(key.message.contains("unknown field `vault`"), "{key}");

    let key = refusal(&MINIMAL.replace("KeyManager \"memory\" {}", ""));
    assert!(key.message.contains("exactly one KeyManager"), "{key}");

    let key = refusal(&MINIMAL.replace(
        "KeyManager \"memory\" {}",
        "KeyManager \"memory\" {}\n  KeyManager \"disk\" {\n    plugin_data {\n      keys_path = \"k\"\n    }\n  }",
    ));
    assert!(key.message.contains("only one KeyManager"), "{key}");

    let key = refusal(&MINIMAL.replace("KeyManager \"memory\" {}", "KeyManager \"disk\" {\n    plugin_data {}\n  }"));
    assert_eq!((key.key.as_str(), key.line), ("plugins.KeyManager.disk.plugin_data", Some(9)));
    assert!(key.message.contains("keys_path"), "{key}");

    let key = refusal(&MINIMAL.replace("NodeAttestor \"join_token\" {}", "NodeAttestor \"tpm\" {}"));
    assert_eq!(key.key, "plugins.NodeAttestor.tpm");

    let key = refusal(
        &MINIMAL.replace("KeyManager \"memory\" {}", "KeyManager \"memory\" {\n    plugin_cmd = \"/bin/evil\"\n  }"),
    );
    assert_eq!((key.key.as_str(), key.line), ("plugins.KeyManager.memory.plugin_cmd", Some(9)));
}

#[test]
fn syntax_errors_give_line_and_column() {
    let text = MINIMAL.replace("node_id = 1", "node_id = = 1");
    match parse(&text) {
        Err(ConfigError::Syntax { file, line, .. }) => {
            assert_eq!(file, "server.hcl");
            assert_eq!(line, 13);
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn disabled_plugins_do_not_count() {
    let text = MINIMAL.replace(
        "KeyManager \"memory\" {}",
        "KeyManager \"memory\" {}\n  KeyManager \"disk\" {\n    enabled = false\n  }",
    );
    assert_eq!(parse(&text).unwrap().key_manager, KeyManagerConfig::Memory);
}

#[test]
fn reading_a_missing_file_says_which() {
    let err = ServerConfig::load(Path::new("/nonexistent/server.hcl")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/server.hcl"), "{err}");
}

#[test]
fn a_pkcs11_key_manager_takes_its_pin_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("module.so");
    std::fs::write(&module, b"not really a module; the config only checks it exists").unwrap();
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "1234\n").unwrap();
    let with = |data: &str| {
        MINIMAL.replace(
            "KeyManager \"memory\" {}",
            &format!("KeyManager \"pkcs11\" {{\n    plugin_data {{\n      {data}\n    }}\n  }}"),
        )
    };
    let good = format!(
        "module_path = \"{}\"\n      token_label = \"ca\"\n      user_pin_path = \"{}\"",
        module.display(),
        pin.display()
    );
    match parse(&with(&good)).unwrap().key_manager {
        KeyManagerConfig::Pkcs11(config) => {
            assert_eq!(config.user_pin.as_str(), "1234", "the trailing newline is not part of the PIN");
            assert_eq!(config.token, kms::pkcs11::TokenSelector::Label("ca".into()));
            assert_eq!(config.key_label_prefix, "testudo/example.org/");
            assert!(!format!("{config:?}").contains("1234"), "the PIN never reaches a log");
        }
        other => panic!("{other:?}"),
    }
    let cases = [
        (
            format!("module_path = \"{}\"\n      token_label = \"ca\"", module.display()),
            "plugins.KeyManager.pkcs11.plugin_data.user_pin_path",
            "never written in the config",
        ),
        (
            format!("module_path = \"{}\"\n      user_pin_path = \"{}\"", module.display(), pin.display()),
            "plugins.KeyManager.pkcs11.plugin_data.token_label",
            "token_label or slot_id",
        ),
        (
            format!(
                "module_path = \"/nonexistent.so\"\n      token_label = \"ca\"\n      user_pin_path = \"{}\"",
                pin.display()
            ),
            "plugins.KeyManager.pkcs11.plugin_data.module_path",
            "no such file",
        ),
        (
            format!(
                "module_path = \"{}\"\n      token_label = \"ca\"\n      user_pin_env = \"TESTUDO_UNSET_PIN_VARIABLE\"",
                module.display()
            ),
            "plugins.KeyManager.pkcs11.plugin_data.user_pin_env",
            "is not set",
        ),
        (
            format!(
                "module_path = \"{}\"\n      slot_id = 1\n      token_label = \"ca\"\n      user_pin_path = \"{}\"",
                module.display(),
                pin.display()
            ),
            "plugins.KeyManager.pkcs11.plugin_data.slot_id",
            "exclude each other",
        ),
        (
            format!("module_path = \"{}\"\n      token_label = \"ca\"\n      user_pin = \"1234\"", module.display()),
            "plugins.KeyManager.pkcs11.plugin_data.user_pin",
            "unknown field",
        ),
    ];
    for (data, want_key, want_message) in cases {
        let key = refusal(&with(&data));
        assert_eq!(key.key, want_key, "{data}: {key}");
        assert!(key.message.contains(want_message), "{data}: {key}");
    }
}

#[test]
fn an_aws_kms_key_manager_names_its_keys_after_the_trust_domain() {
    let with = |data: &str| {
        MINIMAL.replace(
            "KeyManager \"memory\" {}",
            &format!("KeyManager \"aws_kms\" {{\n    plugin_data {{\n      {data}\n    }}\n  }}"),
        )
    };
    match parse(&with("region = \"eu-west-1\"\n      key_tags = { team = \"identity\" }")).unwrap().key_manager {
        KeyManagerConfig::AwsKms(config) => {
            assert_eq!(config.alias_prefix, "alias/testudo/example_org/");
            assert_eq!(config.region.as_deref(), Some("eu-west-1"));
            assert_eq!(config.key_tags.get("team").map(String::as_str), Some("identity"));
            assert_eq!(config.trust_domain, "example.org");
        }
        other => panic!("{other:?}"),
    }
    for (data, want_key) in [
        ("alias_prefix = \"alias/aws/mine/\"", "plugins.KeyManager.aws_kms.plugin_data.alias_prefix"),
        ("alias_prefix = \"alias/no.dots/\"", "plugins.KeyManager.aws_kms.plugin_data.alias_prefix"),
        ("endpoint = \"kms.local:4566\"", "plugins.KeyManager.aws_kms.plugin_data.endpoint"),
        ("key_tags = { testudo-key-id = \"x\" }", "plugins.KeyManager.aws_kms.plugin_data.key_tags"),
        ("access_key_id = \"AKIA\"", "plugins.KeyManager.aws_kms.plugin_data.access_key_id"),
    ] {
        assert_eq!(refusal(&with(data)).key, want_key, "{data}");
    }
}

#[test]
fn a_config_nested_too_deep_is_refused_before_the_parser_runs() {
    // The shape the fuzzer found (objects inside binary operations): hcl-edit took 24 s
    // on 380 bytes of it nested 18 deep.
    let text = format!("server {{\n  x = {}\n}}\n", "{\thz<hh%".repeat(18));
    let err = parse(&text).map(|_| ()).expect_err("refused").to_string();
    assert!(err.contains("server.hcl:2:") && err.contains("nested more than 10 deep"), "{err}");
}

fn with_server_extra(extra: &str) -> String {
    MINIMAL.replace("server {", &format!("server {{\n{extra}"))
}

#[test]
fn bundle_endpoint_in_spires_shape() {
    use crate::config::federation::{EndpointProfile, ServingCertFile};
    let spiffe = parse(&with_server_extra(
        r#"federation {
             bundle_endpoint {
               port = 8443
               profile "https_spiffe" {}
             }
           }"#,
    ))
    .unwrap();
    let endpoint = spiffe.bundle_endpoint.expect("configured");
    assert_eq!(endpoint.address, "0.0.0.0:8443".parse().unwrap());
    assert_eq!((endpoint.refresh_hint, endpoint.profile), (Duration::from_secs(300), EndpointProfile::HttpsSpiffe));

    let web = parse(&with_server_extra(
        r#"federation {
             bundle_endpoint {
               address = "127.0.0.1"
               refresh_hint = "10m"
               profile "https_web" {
                 serving_cert_file {
                   cert_file_path = "/etc/testudo/endpoint.pem"
                   key_file_path = "/etc/testudo/endpoint.key"
                 }
               }
             }
           }"#,
    ))
    .unwrap()
    .bundle_endpoint
    .expect("configured");
    assert_eq!(web.address, "127.0.0.1:443".parse().unwrap());
    assert_eq!(web.refresh_hint, Duration::from_secs(600));
    assert_eq!(
        web.profile,
        EndpointProfile::HttpsWeb(ServingCertFile {
            cert_file_path: "/etc/testudo/endpoint.pem".into(),
            key_file_path: "/etc/testudo/endpoint.key".into(),
            file_sync_interval: Duration::from_secs(3600),
        })
    );
    assert!(parse(MINIMAL).unwrap().bundle_endpoint.is_none());
}

#[test]
fn bundle_endpoint_refusals_name_the_key() {
    for (block, want) in [
        ("bundle_endpoint {\nport = 8443\n}", "needs profile"),
        ("bundle_endpoint {\nprofile \"https_web\" {\nacme {\ndomain_name = \"x\"\n}\n}\n}", "ACME is not supported"),
        ("bundle_endpoint {\nacme {\ndomain_name = \"x\"\n}\n}", "ACME is not supported"),
        ("bundle_endpoint {\nprofile \"https_web\" {}\n}", "needs serving_cert_file"),
        ("bundle_endpoint {\nrefresh_hint = \"10s\"\nprofile \"https_spiffe\" {}\n}", "outside [60s, 86400s]"),
        ("bundle_endpoint {\nprofile \"https_spiffe\" {}\nprofile \"https_web\" {}\n}", "one profile"),
    ] {
        let text = with_server_extra(&format!("federation {{\n{block}\n}}"));
        let err = parse(&text).map(|_| ()).expect_err(block).to_string();
        assert!(err.contains("server.federation.bundle_endpoint") && err.contains(want), "{block}: {err}");
    }
    let err = parse(&with_server_extra("federation {\nbundle_endpoint {\nprofile \"https_other\" {}\n}\n}"))
        .map(|_| ())
        .expect_err("unknown profile")
        .to_string();
    assert!(err.contains("https_other"), "{err}");
}

#[test]
fn federates_with_in_spires_shape() {
    use raft_store::model::BundleEndpointProfile;
    let config = parse(&with_server_extra(
        r#"federation {
             federates_with "domain1.test" {
               bundle_endpoint_url = "https://1.2.3.4:8443"
               bundle_endpoint_profile "https_web" {}
             }
             federates_with "domain2.test" {
               bundle_endpoint_url = "https://5.6.7.8:8443"
               bundle_endpoint_profile "https_spiffe" {
                 endpoint_spiffe_id = "spiffe://domain2.test/beserver"
               }
             }
           }"#,
    ))
    .unwrap();
    let found: Vec<_> = config.federates_with.iter().map(|r| (r.trust_domain.name(), &r.profile)).collect();
    assert_eq!(found.len(), 2);
    assert_eq!(found[0], ("domain1.test", &BundleEndpointProfile::HttpsWeb));
    assert!(matches!(found[1].1, BundleEndpointProfile::HttpsSpiffe { endpoint_spiffe_id }
        if endpoint_spiffe_id.to_string() == "spiffe://domain2.test/beserver"));

    for (block, want) in [
        ("federates_with \"x.test\" {\nbundle_endpoint_url = \"http://x\"\nbundle_endpoint_profile \"https_web\" {}\n}", "https"),
        ("federates_with \"example.org\" {\nbundle_endpoint_url = \"https://x\"\nbundle_endpoint_profile \"https_web\" {}\n}", "own trust domain"),
        ("federates_with \"x.test\" {\nbundle_endpoint_url = \"https://x\"\n}", "needs one bundle_endpoint_profile"),
        ("federates_with \"x.test\" {\nbundle_endpoint_url = \"https://x\"\nbundle_endpoint_profile \"https_spiffe\" {\nendpoint_spiffe_id = \"nope\"\n}\n}", "endpoint_spiffe_id"),
        ("federates_with \"Not A Domain\" {\nbundle_endpoint_url = \"https://x\"\nbundle_endpoint_profile \"https_web\" {}\n}", "trust domain"),
    ] {
        let text = with_server_extra(&format!("federation {{\n{block}\n}}"));
        let err = parse(&text).map(|_| ()).expect_err(block).to_string();
        assert!(err.contains("server.federation.federates_with") && err.contains(want), "{block}: {err}");
    }
}

#[test]
fn the_spire_upstream_authority_takes_every_upstream_replica() {
    let with = |data: &str| {
        MINIMAL.replace(
            r#"NodeAttestor "join_token" {}"#,
            &format!("NodeAttestor \"join_token\" {{}}\n  UpstreamAuthority \"spire\" {{\n plugin_data {{\n {data}\n }}\n }}"),
        )
    };
    let config = parse(&with(
        r#"server_address = ["r1.upstream", "10.0.0.2:9081"]
        server_port = "8443"
        workload_api_socket = "/run/spire-agent/public/api.sock""#,
    ))
    .unwrap();
    let Some(crate::upstream::UpstreamConfig::Spire(spire)) = config.upstream_authority else {
        panic!("the spire upstream authority");
    };
    assert_eq!(spire.servers, ["r1.upstream:8443", "10.0.0.2:9081"], "a replica's own port wins");
    assert_eq!(spire.workload_api_socket, Path::new("/run/spire-agent/public/api.sock"));

    // SPIRE's single host, with its default port.
    let config = parse(&with(
        r#"server_address = "upstream.example"
        workload_api_socket = "/s.sock""#,
    ))
    .unwrap();
    let Some(crate::upstream::UpstreamConfig::Spire(spire)) = config.upstream_authority else {
        panic!("the spire upstream authority");
    };
    assert_eq!(spire.servers, ["upstream.example:8081"]);

    let refused = refusal(&with(r#"server_address = "upstream.example""#));
    assert!(refused.message.contains("workload_api_socket"), "{refused:?}");
    let refused = refusal(&with(
        r#"server_address = []
        workload_api_socket = "/s.sock""#,
    ));
    assert!(refused.message.contains("at least one server address"), "{refused:?}");
    let both = MINIMAL.replace(
        r#"NodeAttestor "join_token" {}"#,
        "NodeAttestor \"join_token\" {}\n UpstreamAuthority \"disk\" {\n plugin_data {\n cert_file_path = \"/c\"\n \
         key_file_path = \"/k\"\n }\n }\n UpstreamAuthority \"spire\" {\n plugin_data {\n server_address = \"u\"\n \
         workload_api_socket = \"/s\"\n }\n }",
    );
    assert!(refusal(&both).message.contains("only one UpstreamAuthority"));
}

/// The server configs docs/nested.md gives for its three tiers load as written, with only
/// the replica number filled in and the HSM's module and PIN files pointed at files that
/// exist here.
#[test]
fn the_nested_guides_server_configs_load() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("module.so");
    std::fs::write(&module, b"stands for the HSM's module").unwrap();
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "1234\n").unwrap();
    let servers: Vec<ServerConfig> = testkit::docs::code_blocks("nested.md", "hcl")
        .iter()
        .filter(|block| block.contains("\nserver {") || block.starts_with("server {"))
        .map(|block| {
            let text = block
                .replace("node_id = N", "node_id = 2")
                .replace("-N.example.net", "-2.example.net")
                .replace("/usr/lib/softhsm/libsofthsm2.so", &module.display().to_string())
                .replace("/etc/testudo/hsm-pin", &pin.display().to_string());
            parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
        })
        .collect();
    let [root, eu] = servers.as_slice() else {
        panic!("the guide gives the root's and a region's server config, got {}", servers.len());
    };
    assert!(root.upstream_authority.is_none(), "the root holds its own CA");
    assert!(matches!(root.key_manager, KeyManagerConfig::AwsKms(_)));
    assert_eq!(root.cluster.raft_advertise_address.as_deref(), Some("root-2.example.net:8082"));
    assert!(matches!(eu.key_manager, KeyManagerConfig::Pkcs11(_)));
    let Some(crate::upstream::UpstreamConfig::Spire(upstream)) = &eu.upstream_authority else {
        panic!("the region takes its CA from the root");
    };
    assert_eq!(upstream.servers, ["root-1.example.net:8081", "root-2.example.net:8081", "root-3.example.net:8081"]);
    assert_eq!(upstream.workload_api_socket, Path::new("/run/testudo-root-agent/api.sock"));
    assert!(eu.server.ca_ttl < root.server.ca_ttl, "an intermediate lives shorter than the root");
}

/// The `server { … }` examples of docs/federation.md load once the keys they leave out
/// (data dir, plugins, cluster) are added, and say what the guide says they say.
#[test]
fn the_federation_guides_examples_load() {
    let configs: Vec<ServerConfig> = testkit::docs::code_blocks("federation.md", "hcl")
        .iter()
        .map(|block| {
            let mut text = block.replacen("server {\n", "server {\n  data_dir = \"/var/lib/testudo\"\n", 1);
            if !text.contains("trust_domain") {
                text = text.replacen("server {\n", "server {\n  trust_domain = \"a.test\"\n", 1);
            }
            text.push_str(&MINIMAL[MINIMAL.find("plugins {").unwrap()..]);
            parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
        })
        .collect();
    assert!(configs.len() >= 4, "the guide's examples: {}", configs.len());
    let relationships: usize = configs.iter().map(|c| c.federates_with.len()).sum();
    let endpoints = configs.iter().filter(|c| c.bundle_endpoint.is_some()).count();
    assert!(relationships >= 4 && endpoints >= 3, "{relationships} relationships, {endpoints} endpoints");
}
