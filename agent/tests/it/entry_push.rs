//! An entry created on the server reaches the workload's open stream without waiting for
//! the agent's periodic sync: the server tells the agent its entries changed.

use std::time::{Duration, Instant};

use proto::workload as pb;

use crate::workload_api::{raw_client, world};

fn ids(message: &pb::X509svidResponse) -> Vec<String> {
    let mut ids: Vec<String> = message.svids.iter().map(|s| s.spiffe_id.clone()).collect();
    ids.sort();
    ids
}

/// The next message on the stream, within 10 s.
async fn next(
    stream: &mut tonic::Streaming<pb::X509svidResponse>,
    agent: &testkit::AgentProcess,
) -> pb::X509svidResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap_or_else(|_| panic!("no update within 10 s\nagent log:\n{}", agent.log()))
        .unwrap()
        .unwrap()
}

#[test]
fn a_new_entry_reaches_the_open_stream_long_before_the_next_sync() {
    // The periodic sync comes every ten minutes: only a notification can be this quick.
    let world = world("", "10m");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = raw_client(&world.agent).await;
        let mut request = tonic::Request::new(pb::X509svidRequest {});
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
        let mut stream = client.fetch_x509svid(request).await.unwrap().into_inner();
        let first = next(&mut stream, &world.agent).await;
        assert_eq!(ids(&first), vec!["spiffe://example.org/workload"]);

        let uid = nix::unistd::getuid().as_raw();
        let created = Instant::now();
        let entry = world.server.json(&[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/second",
            "--parent-id",
            &world.agent_id,
            "--selector",
            &format!("unix:uid:{uid}"),
        ]);
        let update = next(&mut stream, &world.agent).await;
        println!("entry create → workload update: {:?}", created.elapsed());
        assert_eq!(ids(&update), vec!["spiffe://example.org/second", "spiffe://example.org/workload"]);

        // A deletion travels the same way.
        let entry_id = entry["entries"][0]["id"].as_str().unwrap().to_owned();
        world.server.json(&["entry", "delete", "--entry-id", &entry_id]);
        let update = next(&mut stream, &world.agent).await;
        assert_eq!(ids(&update), vec!["spiffe://example.org/workload"]);
    });
}

/// The X.509 bundle of `trust_domain` among the federated bundles of `message`.
fn federated(message: &pb::X509svidResponse, trust_domain: &str) -> Option<Vec<u8>> {
    message.federated_bundles.get(trust_domain).cloned()
}

#[test]
fn a_refreshed_federated_bundle_reaches_the_open_stream_long_before_the_next_sync() {
    let world = world("", "10m");
    // The partner, b.test, serves its bundle endpoint; its first bundle is handed over with
    // the relationship.
    let root = tempfile::tempdir().unwrap();
    let b_port = testkit::free_port();
    let partner = testkit::ServerProcess::federation_partner(root.path(), "b.test", b_port);
    let b_pem = root.path().join("b.pem");
    std::fs::write(&b_pem, partner.bundle_pem()).unwrap();
    world.server.json(&[
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
        "b.test",
    ]);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = raw_client(&world.agent).await;
        let mut request = tonic::Request::new(pb::X509svidRequest {});
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
        let mut stream = client.fetch_x509svid(request).await.unwrap().into_inner();
        let mut message = next(&mut stream, &world.agent).await;
        while federated(&message, "spiffe://b.test").is_none() {
            message = next(&mut stream, &world.agent).await;
        }
        let first = federated(&message, "spiffe://b.test").unwrap();

        // The partner prepares a CA; a refresh here brings it to the workload's stream.
        let out = partner.command(&["localauthority", "x509", "prepare"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let refreshed = Instant::now();
        world.server.command(&["federation", "refresh", "--id", "b.test"]);
        let mut update = next(&mut stream, &world.agent).await;
        while federated(&update, "spiffe://b.test").as_ref() == Some(&first) {
            update = next(&mut stream, &world.agent).await;
        }
        println!("federation refresh → workload update: {:?}", refreshed.elapsed());
        let second = federated(&update, "spiffe://b.test").unwrap();
        assert!(
            second.len() > first.len() && second.windows(first.len()).any(|w| w == first.as_slice()),
            "the new bundle holds the old CA and the prepared one"
        );
    });
}
