//! The Trust Domain API through the `federation` CLI, as SPIRE's users type it: create with a
//! bootstrap bundle, show, list, refresh on demand (a partner's new CA arrives at once),
//! update, delete, `--data` files; and the refusals (own trust domain, plain http, a
//! duplicate, a relationship the config declares, a partner that does not answer).

use std::time::Duration;

use testkit::{free_port, wait_until, ServerProcess as Server};

fn x509_count(server: &Server, trust_domain: &str) -> Option<u64> {
    let listed = server.json(&["bundle", "list"]);
    listed["bundles"].as_array()?.iter().find(|b| b["trust_domain"] == trust_domain)?["x509_authorities"].as_u64()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn relationships_are_managed_with_spires_cli_and_refreshed_on_demand() {
    let root = tempfile::tempdir().unwrap();
    let b_port = free_port();
    let b = Server::federation_partner(&root.path().join("b"), "b.test", b_port);
    let b_pem = root.path().join("b.pem");
    std::fs::write(&b_pem, b.bundle_pem()).unwrap();
    let configured = r#"federation {
    federates_with "c.test" {
      bundle_endpoint_url = "https://127.0.0.1:1/"
      bundle_endpoint_profile "https_web" {}
    }
  }"#;
    let a = Server::start(&root.path().join("a"), 1, configured);
    a.json(&["cluster", "init"]);
    let url = format!("https://127.0.0.1:{b_port}/");

    let created = a.json(&[
        "federation",
        "create",
        "--trustDomain",
        "b.test",
        "--bundleEndpointURL",
        &url,
        "--bundleEndpointProfile",
        "https_spiffe",
        "--endpointSpiffeID",
        "spiffe://b.test/spire/server",
        "--trustDomainBundlePath",
        b_pem.to_str().unwrap(),
    ]);
    assert_eq!(created["federation_relationships"][0]["bundle_endpoint_profile"], "https_spiffe");
    assert_eq!(x509_count(&a, "b.test"), Some(1), "the bootstrap bundle is stored");
    let shown = a.json(&["federation", "show", "--trustDomain", "b.test"]);
    assert_eq!(shown["federation_relationships"][0]["endpoint_spiffe_id"], "spiffe://b.test/spire/server");
    let pretty = a.command(&["federation", "show", "--trustDomain", "b.test"]);
    assert!(String::from_utf8_lossy(&pretty.stdout).contains("Bundle endpoint profile   : https_spiffe"));

    // The partner prepares a CA; a refresh on demand brings it here before the command returns.
    let out = b.command(&["localauthority", "x509", "prepare"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = a.command(&["federation", "refresh", "--id", "b.test"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Bundle refreshed"));
    assert_eq!(x509_count(&a, "b.test"), Some(2));

    // Refusals, each with SPIRE's reason.
    for (args, want) in [
        (
            vec![
                "--trustDomain",
                "b.test",
                "--bundleEndpointURL",
                url.as_str(),
                "--bundleEndpointProfile",
                "https_web",
            ],
            "already exists",
        ),
        (
            vec![
                "--trustDomain",
                "example.org",
                "--bundleEndpointURL",
                url.as_str(),
                "--bundleEndpointProfile",
                "https_web",
            ],
            "server trust domain",
        ),
        (
            vec![
                "--trustDomain",
                "d.test",
                "--bundleEndpointURL",
                "http://127.0.0.1/",
                "--bundleEndpointProfile",
                "https_web",
            ],
            "https",
        ),
        (
            vec![
                "--trustDomain",
                "d.test",
                "--bundleEndpointURL",
                url.as_str(),
                "--bundleEndpointProfile",
                "https_spiffe",
            ],
            "endpoint SPIFFE ID is required",
        ),
        (
            vec!["--trustDomain", "d.test", "--bundleEndpointURL", url.as_str(), "--bundleEndpointProfile", "ftp"],
            "unknown bundle endpoint profile",
        ),
    ] {
        let mut command = vec!["federation", "create"];
        command.extend(args);
        let out = a.command(&command);
        assert!(!out.status.success() && stderr(&out).contains(want), "{command:?}: want {want:?}: {}", stderr(&out));
    }

    // The config's relationship is listed but changed only in the config.
    let count = || a.json(&["federation", "list"])["federation_relationships"].as_array().map_or(0, Vec::len);
    wait_until(Duration::from_secs(10), || count() == 2, "the configured relationship to be written");
    let listed = a.json(&["federation", "list"]);
    let names: Vec<_> =
        listed["federation_relationships"].as_array().unwrap().iter().map(|r| r["trust_domain"].clone()).collect();
    assert_eq!(names, ["b.test", "c.test"]);
    let out = a.command(&["federation", "delete", "--id", "c.test"]);
    assert!(!out.status.success() && stderr(&out).contains("declared in the server config"), "{}", stderr(&out));

    // An update pointing at nothing: a refresh now fails with the endpoint's error and the
    // bundle stays.
    let out = a.command(&[
        "federation",
        "update",
        "--trustDomain",
        "b.test",
        "--bundleEndpointURL",
        "https://127.0.0.1:1/",
        "--bundleEndpointProfile",
        "https_spiffe",
        "--endpointSpiffeID",
        "spiffe://b.test/spire/server",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = a.command(&["federation", "refresh", "--id", "b.test"]);
    assert!(!out.status.success() && stderr(&out).contains("failed to refresh bundle"), "{}", stderr(&out));
    assert_eq!(x509_count(&a, "b.test"), Some(2));

    // --data, as SPIRE's CLI takes it: a PEM bundle as a string.
    let data = root.path().join("relationships.json");
    let pem = std::fs::read_to_string(&b_pem).unwrap();
    let file = serde_json::json!({ "federationRelationships": [
        { "trustDomain": "d.test", "bundleEndpointURL": "https://d.example/", "bundleEndpointProfile": "https_web" },
        { "trustDomain": "e.test", "bundleEndpointURL": "https://e.example/", "bundleEndpointProfile": "https_spiffe",
          "endpointSPIFFEID": "spiffe://b.test/spire/server", "trustDomainBundle": pem, "trustDomainBundleFormat": "pem" },
    ]});
    std::fs::write(&data, serde_json::to_vec(&file).unwrap()).unwrap();
    let created = a.json(&["federation", "create", "--data", data.to_str().unwrap()]);
    assert_eq!(created["federation_relationships"].as_array().unwrap().len(), 2);
    let out = a.command(&["federation", "create", "--data", data.to_str().unwrap(), "--trustDomain", "x.test"]);
    assert!(!out.status.success() && stderr(&out).contains("'data' flag is set"), "{}", stderr(&out));

    // A bootstrap bundle in the SPIFFE format, as `bundle show --format spiffe` prints it.
    let out = b.command(&["bundle", "show", "--format", "spiffe"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let document = root.path().join("b.json");
    std::fs::write(&document, &out.stdout).unwrap();
    let parsed =
        identity::bundle::Bundle::from_spiffe_json(identity::TrustDomain::parse("b.test").unwrap(), &out.stdout);
    assert_eq!(parsed.unwrap().x509_authorities().len(), 2, "the partner's two CAs");
    a.json(&[
        "federation",
        "create",
        "--trustDomain",
        "f.test",
        "--bundleEndpointURL",
        &url,
        "--bundleEndpointProfile",
        "https_spiffe",
        "--endpointSpiffeID",
        "spiffe://b.test/spire/server",
        "--trustDomainBundlePath",
        document.to_str().unwrap(),
        "--trustDomainBundleFormat",
        "spiffe",
    ]);

    // Delete: gone from show and refresh.
    let out = a.command(&["federation", "delete", "--id", "d.test"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = a.command(&["federation", "show", "--trustDomain", "d.test"]);
    assert!(!out.status.success() && stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let out = a.command(&["federation", "refresh", "--id", "d.test"]);
    assert!(!out.status.success() && stderr(&out).contains("no relationship"), "{}", stderr(&out));
    assert_eq!(count(), 4, "b.test, c.test, e.test, f.test");
}
