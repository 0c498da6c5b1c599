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
