//! A cluster keeps a partner's bundle fresh: the relationship comes from the config's
//! `federates_with`; the leader cannot check the partner's endpoint (`https_spiffe`) before
//! the partner's first bundle is set, and cannot reach it while the partner is down (the
//! bundle set stays, failures are counted); once the partner is back, its change (a
//! prepared CA) reaches every replica, recorded once.

use std::time::Duration;

use testkit::{free_port, http_get, wait_until, ServerProcess as Server};

fn b_bundle_x509(server: &Server) -> Option<u64> {
    let listed = server.json(&["bundle", "list"]);
    listed["bundles"]
        .as_array()?
        .iter()
        .find(|b| b["trust_domain"] == "b.test")
        .and_then(|b| b["x509_authorities"].as_u64())
}

/// `testudo_federation_refresh_total{trust_domain="b.test",result}` summed over replicas.
fn refreshes(servers: &[Server], result: &str) -> u64 {
    let result = format!("result=\"{result}\"");
    servers
        .iter()
        .filter_map(|s| {
            let (_, metrics) = http_get(s.metrics_port, "/metrics");
            let line = metrics.lines().find(|l| {
                l.starts_with("testudo_federation_refresh_total{")
                    && l.contains(&result)
                    && l.contains("trust_domain=\"b.test\"")
            })?;
            line.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

#[test]
fn a_partners_bundle_is_fetched_by_the_leader_and_kept_when_the_partner_is_down() {
    let root = tempfile::tempdir().unwrap();
    let b_port = free_port();
    let mut partner = Server::federation_partner(&root.path().join("b"), "b.test", b_port);
    let b_pem = root.path().join("b.pem");
    std::fs::write(&b_pem, partner.bundle_pem()).unwrap();

    let federates_with = format!(
        r#"federation {{
    federates_with "b.test" {{
      bundle_endpoint_url = "https://127.0.0.1:{b_port}/"
      bundle_endpoint_profile "https_spiffe" {{
        endpoint_spiffe_id = "spiffe://b.test/spire/server"
      }}
    }}
  }}"#
    );
    let servers = Server::cluster(&root.path().join("a"), 3, &federates_with);
    // Without b.test's first bundle the endpoint's SVID cannot be checked: refused, counted.
    wait_until(Duration::from_secs(20), || refreshes(&servers, "error") >= 1, "a refused first refresh");
    assert_eq!(b_bundle_x509(&servers[0]), None);

    // The partner prepares a new CA after handing over its first bundle, then goes down.
    let out = partner.command(&["localauthority", "x509", "prepare"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    partner.kill();
    let out = servers[1].command(&["bundle", "set", "--id", "spiffe://b.test", "--path", b_pem.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let before = refreshes(&servers, "error");
    wait_until(
        Duration::from_secs(60),
        || refreshes(&servers, "error") >= before + 2,
        "two more refreshes of the down partner, backing off",
    );
    for server in &servers {
        assert_eq!(b_bundle_x509(server), Some(1), "the bundle set is kept while the partner is down");
    }
    // Any replica shows the schedule the leader recorded: the error, and when it tries again.
    let shown = servers[2].json(&["federation", "show", "--trustDomain", "b.test"]);
    let refresh = &shown["federation_relationships"][0]["refresh"];
    assert!(refresh["failures"].as_u64() >= Some(3), "{shown}");
    assert!(refresh["last_error"].as_str().is_some_and(|e| !e.is_empty()), "{shown}");
    assert_eq!(refresh["last_success"], 0, "{shown}");
    assert!(refresh["next_due"].as_i64() > refresh["last_attempt"].as_i64(), "retried later: {shown}");
    let pretty = servers[2].command(&["federation", "show", "--trustDomain", "b.test"]);
    let pretty = String::from_utf8_lossy(&pretty.stdout).into_owned();
    assert!(pretty.contains("Last error                : ") && pretty.contains("failures in a row"), "{pretty}");

    // Back: the next refresh brings the prepared CA to every replica, recorded once.
    partner.restart();
    for server in &servers {
        wait_until(
            Duration::from_secs(60),
            || b_bundle_x509(server) == Some(2),
            &format!("replica {} to hold b.test's refreshed bundle", server.id),
        );
    }
    assert_eq!(refreshes(&servers, "changed"), 1, "one refresh, recorded once cluster-wide");
    let listed = servers[1].json(&["federation", "list"]);
    let refresh = &listed["federation_relationships"][0]["refresh"];
    assert_eq!(refresh["last_error"], "", "{listed}");
    assert_eq!(refresh["failures"], 0, "{listed}");
    assert!(refresh["last_success"].as_i64() > Some(0) && refresh["bundle_sequence"].as_u64() > Some(0), "{listed}");
    let out = servers[1].command(&["federation", "show", "--trustDomain", "c.test"]);
    assert!(!out.status.success(), "an unknown trust domain is not found");
    let sequences: Vec<String> = servers
        .iter()
        .flat_map(|s| {
            let metrics = http_get(s.metrics_port, "/metrics").1;
            metrics
                .lines()
                .filter(|l| l.starts_with("testudo_federation_bundle_sequence{"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!sequences.is_empty() && sequences.iter().all(|l| l.contains("trust_domain=\"b.test\"")), "{sequences:?}");
}

fn sequence(server: &Server) -> Option<u64> {
    let listed = server.json(&["bundle", "list"]);
    listed["bundles"].as_array()?.iter().find(|b| b["trust_domain"] == "b.test")?["sequence_number"].as_u64()
}

/// A refresh asked for just as the leader dies is done by the next leader: not skipped, and
/// the bundle changes once.
#[test]
fn a_refresh_survives_the_death_of_the_leader_that_was_to_run_it() {
    let root = tempfile::tempdir().unwrap();
    let b_port = free_port();
    let partner = Server::federation_partner(&root.path().join("b"), "b.test", b_port);
    let b_pem = root.path().join("b.pem");
    std::fs::write(&b_pem, partner.bundle_pem()).unwrap();
    let mut servers = Server::cluster(&root.path().join("a"), 3, "");
    servers[0].json(&[
        "federation",
        "create",
        "--trustDomain",
        "b.test",
        "--bundleEndpointURL",
        &format!("https://127.0.0.1:{b_port}/"),
        "--bundleEndpointProfile",
        "https_spiffe",
        "--endpointSpiffeID",
        "spiffe://b.test/spire/server",
        "--trustDomainBundlePath",
        b_pem.to_str().unwrap(),
    ]);
    let out = servers[0].command(&["federation", "refresh", "--id", "b.test"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = partner.command(&["localauthority", "x509", "prepare"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let leader = servers[0].status()["leader"].as_u64().unwrap();
    let asker = servers.iter().position(|s| s.id != leader).unwrap();
    let before = sequence(&servers[asker]).unwrap();
    let refresh = std::process::Command::new(env!("CARGO_BIN_EXE_testudo-server"))
        .args(["federation", "refresh", "--id", "b.test", "--socket-path"])
        .arg(servers[asker].socket())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    servers.iter_mut().find(|s| s.id == leader).unwrap().kill();
    let out = refresh.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for server in servers.iter().filter(|s| s.id != leader) {
        wait_until(
            Duration::from_secs(30),
            || b_bundle_x509(server) == Some(2),
            &format!("replica {} to hold the prepared CA", server.id),
        );
        assert_eq!(sequence(server), Some(before + 1), "the bundle changed once");
    }
}
