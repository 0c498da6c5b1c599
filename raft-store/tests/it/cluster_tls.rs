//! The cluster RPC accepts only replicas of this cluster, and refuses malformed messages
//! with a clear status.

use std::time::Duration;

use proto::cluster::cluster_client::ClusterClient;
use proto::cluster::Payload;
use raft_store::network::tls::{client_endpoint, joiner_endpoint};

use crate::cluster_support::{TestCa, TestCluster, REPLICA_ID};

async fn call(endpoint: tonic::transport::Endpoint, data: Vec<u8>) -> Result<Payload, String> {
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    ClusterClient::new(channel)
        .vote(Payload { data })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_peers_that_are_not_replicas_and_malformed_messages() {
    let cluster = TestCluster::start(1, 10_000).await;
    let address = cluster.replicas[&1].address().to_string();
    let timeout = Duration::from_secs(2);

    // A replica certificate from this cluster's CA gets through, and garbage is refused.
    let replica = cluster.ca.tls(REPLICA_ID);
    let err =
        call(client_endpoint(&replica, &address, timeout).unwrap(), b"\xff\xff garbage".to_vec()).await.unwrap_err();
    assert!(
        err.contains("InvalidArgument") || err.contains("invalid argument") || err.contains("Invalid argument"),
        "{err}"
    );
    assert!(err.contains("cannot decode Vote payload"), "{err}");

    // A message over the cap is refused before it is decoded.
    let huge = vec![0u8; raft_store::network::MAX_MESSAGE_BYTES + 1];
    let err = call(client_endpoint(&replica, &address, timeout).unwrap(), huge).await.unwrap_err();
    assert!(err.contains("decoded message length too large") && err.contains("67108864"), "{err}");

    // A workload SVID from the same CA is not a replica.
    let workload = cluster.ca.tls("spiffe://cluster.test/workload");
    assert!(call(client_endpoint(&workload, &address, timeout).unwrap(), vec![]).await.is_err());

    // A replica certificate from another CA is not trusted.
    let stranger_ca = TestCa::new();
    let mut stranger = stranger_ca.tls(REPLICA_ID);
    stranger.bundle = cluster.ca.bundle.clone(); // it trusts us, but we do not trust it
    assert!(call(client_endpoint(&stranger, &address, timeout).unwrap(), vec![]).await.is_err());

    // A client with a valid certificate of ours that trusts only another CA refuses our
    // server: only the client-side check can fail here.
    let mut wary = cluster.ca.tls(REPLICA_ID);
    wary.bundle = stranger_ca.bundle.clone();
    assert!(call(client_endpoint(&wary, &address, timeout).unwrap(), vec![]).await.is_err());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_reaches_only_join() {
    let cluster = TestCluster::start(1, 10_000).await;
    let address = cluster.replicas[&1].address().to_string();
    let timeout = Duration::from_secs(2);
    let replica_id = identity::SpiffeId::parse(REPLICA_ID).unwrap();
    let pin: [u8; 32] =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cluster.ca.cert).as_ref().try_into().unwrap();
    let connect = |pin: [u8; 32]| {
        let endpoint = joiner_endpoint(replica_id.clone(), pin, &address, timeout).unwrap();
        async move { endpoint.connect().await.map(ClusterClient::new) }
    };

    let mut client = connect(pin).await.expect("the pinned CA is the cluster's");
    let err = client.vote(Payload { data: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = client.append_entries(Payload { data: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = client.write(Payload { data: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // The TLS handshake succeeded and Join was routed: this replica has no join handler.
    let err = client.join(Payload { data: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");

    // With a wrong pin the joiner refuses the server: no call gets through.
    let mut wrong = pin;
    wrong[0] ^= 1;
    let refused = match connect(wrong).await {
        Err(_) => true,
        Ok(mut c) => c
            .join(Payload { data: vec![] })
            .await
            .is_err_and(|e| e.code() == tonic::Code::Unavailable || e.code() == tonic::Code::Unknown),
    };
    assert!(refused, "a server whose CA does not match the pin must be refused");
    cluster.shutdown().await;
}
