//! Short-lived SVIDs over many rotations: a streaming workload always holds a valid one.

use std::time::Duration;

use proto::workload as pb;

use crate::workload_api::{raw_client, world};

#[test]
fn rotation_over_many_cycles_leaves_no_gap() {
    // 20 s SVIDs (30 s with the 10 s backdate): the agent replaces them every 5-6 s.
    let world = world(r#"default_x509_svid_ttl = "20s""#, "500ms");
    let agent = &world.agent;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = raw_client(agent).await;
        let mut request = tonic::Request::new(pb::X509svidRequest {});
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
        let mut stream = client.fetch_x509svid(request).await.unwrap().into_inner();
        // (serial, not_after) of what the workload holds, and every change it saw.
        let mut held: Option<(Vec<u8>, time::OffsetDateTime)> = None;
        let mut rotations = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(35);
        while tokio::time::Instant::now() < deadline {
            let message = match tokio::time::timeout_at(deadline, stream.message()).await {
                Err(_) => break,
                Ok(message) => message
                    .unwrap_or_else(|e| panic!("the stream failed: {e:?}\nagent log:\n{}", agent.log()))
                    .expect("the stream stays open"),
            };
            let now = time::OffsetDateTime::now_utc();
            if let Some((_, not_after)) = &held {
                assert!(*not_after > now, "the workload held an expired SVID until {now} (expired {not_after})");
            }
            let svid = message.svids.iter().find(|s| s.spiffe_id == "spiffe://example.org/workload").expect("the SVID");
            let chain = identity::x509::split_der_certificates(&svid.x509_svid).unwrap();
            let facts = identity::x509::certificate_facts(&chain[0]).unwrap();
            assert!(facts.not_after > now, "the agent sent an expired SVID");
            if held.as_ref().is_some_and(|(serial, _)| *serial != facts.serial) {
                rotations += 1;
            }
            held = Some((facts.serial, facts.not_after));
        }
        let (_, not_after) = held.expect("at least one SVID");
        assert!(not_after > time::OffsetDateTime::now_utc(), "the last SVID held is still valid at the end");
        assert!(rotations >= 4, "only {rotations} rotations in 35 s\nagent log:\n{}", agent.log());
    });
}

#[test]
fn an_svid_signed_by_a_tainted_authority_is_replaced_at_once() {
    let world = world("", "500ms");
    let (server, agent) = (&world.server, &world.agent);
    let issuer_of = |message: &pb::X509svidResponse| {
        let svid = message.svids.iter().find(|s| s.spiffe_id == "spiffe://example.org/workload").expect("the SVID");
        identity::x509::split_der_certificates(&svid.x509_svid).unwrap()[1].clone()
    };

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = raw_client(agent).await;
        let mut request = tonic::Request::new(pb::X509svidRequest {});
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
        let mut stream = client.fetch_x509svid(request).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let old_ca = issuer_of(&first);

        // A new authority, activated; the old one tainted. The SVID (valid for an hour)
        // must be replaced now, by one from the new authority.
        let old_id =
            server.json(&["localauthority", "x509", "show"])["active"]["authority_id"].as_str().unwrap().to_string();
        let prepared = server.json(&["localauthority", "x509", "prepare"]);
        let new_id = prepared["prepared"]["authority_id"].as_str().unwrap().to_string();
        server.json(&["localauthority", "x509", "activate", "--authority-id", &new_id]);
        server.json(&["localauthority", "x509", "taint", "--authority-id", &old_id]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let message = tokio::time::timeout_at(deadline, stream.message())
                .await
                .unwrap_or_else(|_| {
                    panic!("no replacement for the tainted authority's SVID\nagent log:\n{}", agent.log())
                })
                .unwrap()
                .unwrap();
            if issuer_of(&message) != old_ca {
                break;
            }
        }
    });
}
