//! The cluster RPC accepts only replicas of this cluster, and refuses malformed messages
//! with a clear status.

use std::time::Duration;

use proto::cluster::cluster_client::ClusterClient;
use proto::cluster::Payload;
use raft_store::network::tls::{client_endpoint, joiner_endpoint};

use crate::cluster_support::{TestCa, TestCluster, REPLICAS};

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

    // A member's certificate from this cluster's CA gets through, and garbage is refused.
    let replica = cluster.ca.replica_tls(1);
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
    let mut stranger = stranger_ca.replica_tls(1);
    stranger.bundle = cluster.ca.bundle.clone(); // it trusts us, but we do not trust it
    assert!(call(client_endpoint(&stranger, &address, timeout).unwrap(), vec![]).await.is_err());

    // A client with a valid certificate of ours that trusts only another CA refuses our
    // server: only the client-side check can fail here.
    let mut wary = cluster.ca.replica_tls(1);
    wary.bundle = stranger_ca.bundle.clone();
    assert!(call(client_endpoint(&wary, &address, timeout).unwrap(), vec![]).await.is_err());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_reaches_only_join() {
    let cluster = TestCluster::start(1, 10_000).await;
    let address = cluster.replicas[&1].address().to_string();
    let timeout = Duration::from_secs(2);
    let replica_id = identity::SpiffeId::parse(REPLICAS).unwrap();
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
    let err = client.clock(Payload { data: vec![] }).await.unwrap_err();
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

/// What an anonymous caller can make a replica hold: a Join-sized message, not the 64 MiB
/// replication needs, and a bounded number of connections from one address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_caller_gets_small_messages_and_few_connections() {
    use tokio::io::AsyncReadExt;
    let cluster = TestCluster::start(1, 10_000).await;
    let address = cluster.replicas[&1].address().to_string();
    let timeout = Duration::from_secs(2);

    // Connections that never finish a handshake: from one address, only so many are held;
    // the rest are closed at once instead of waiting out the handshake timeout.
    let limit = raft_store::network::ConnectionLimits::CLUSTER.max_per_source;
    let mut streams = Vec::new();
    for _ in 0..limit + 8 {
        streams.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut closed = Vec::new();
    for (i, stream) in streams.iter_mut().enumerate() {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed.push(i),
            Ok(Ok(_)) => panic!("the server spoke first"),
            Err(_) => {}
        }
    }
    assert_eq!(closed, (limit..limit + 8).collect::<Vec<_>>(), "held: the first {limit}; closed: the rest");
    drop(streams);

    // A Join-sized cap for callers without a replica certificate ...
    let replica_id = identity::SpiffeId::parse(REPLICAS).unwrap();
    let pin: [u8; 32] =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cluster.ca.cert).as_ref().try_into().unwrap();
    let big = vec![0u8; 1024 * 1024];
    let endpoint = joiner_endpoint(replica_id, pin, &address, timeout).unwrap();
    let mut anonymous = None;
    for _ in 0..50 {
        // The held connections' slots come back as their handshakes fail.
        match endpoint.connect().await {
            Ok(channel) => {
                anonymous = Some(ClusterClient::new(channel));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut anonymous = anonymous.expect("an anonymous connection once the flood is gone");
    for status in [
        anonymous.join(Payload { data: big.clone() }).await.unwrap_err(),
        anonymous.append_entries(Payload { data: big.clone() }).await.unwrap_err(),
    ] {
        assert!(status.message().contains("decoded message length too large"), "{status:?}");
        assert!(status.message().contains("65536"), "{status:?}");
    }

    // ... while a replica's connection keeps the large one (the megabyte is decoded, and
    // refused only as a malformed vote).
    let replica = cluster.ca.replica_tls(1);
    let err = call(client_endpoint(&replica, &address, timeout).unwrap(), big).await.unwrap_err();
    assert!(err.contains("cannot decode Vote payload"), "{err}");
    cluster.shutdown().await;
}

/// A replica certificate opens the cluster RPC only while its node id is a member: a removed
/// replica's certificate (which stays valid for months) is refused everywhere, and it may
/// not add itself back; a certificate for a node id never added reaches nothing but an
/// AddMember of itself and the replication calls (a replica that is behind does not know
/// every current member yet; only removed ones are refused there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_replica_certificate_opens_nothing() {
    use raft_store::network::{AdminRequest, ClusterClient, Faults};
    let mut cluster = TestCluster::start(3, 10_000).await;
    let leader = cluster.wait_for_leader().await;
    let leaving = cluster.follower(leader);
    let stolen = cluster.ca.replica_tls(leaving);
    cluster.replicas[&leader].remove(leaving).await.unwrap();
    cluster.stop(leaving).await;
    let address = cluster.replicas[&leader].address().to_string();
    let timeout = Duration::from_secs(2);

    let err = call(client_endpoint(&stolen, &address, timeout).unwrap(), vec![]).await.unwrap_err();
    assert!(err.contains("PermissionDenied") || err.contains("permission"), "{err}");
    assert!(err.contains(&format!("replica {leaving} is not a member")), "{err}");
    let channel = client_endpoint(&stolen, &address, timeout).unwrap().connect().await.unwrap();
    let appended = proto::cluster::cluster_client::ClusterClient::new(channel)
        .append_entries(Payload { data: vec![] })
        .await
        .unwrap_err();
    assert!(appended.message().contains("was removed"), "{appended:?}");
    let client = ClusterClient::new(stolen.clone(), timeout, Faults::default());
    let node = cluster.replicas[&leader].node().clone();
    let back =
        client.admin(leader, &node.raft_address, &AdminRequest::AddMember { id: leaving, node: node.clone() }).await;
    assert!(format!("{back:?}").contains("was removed"), "{back:?}");

    let stranger = cluster.ca.replica_tls(99);
    let err = call(client_endpoint(&stranger, &address, timeout).unwrap(), vec![]).await.unwrap_err();
    assert!(err.contains("replica 99 is not a member"), "{err}");
    let channel = client_endpoint(&stranger, &address, timeout).unwrap().connect().await.unwrap();
    let appended = proto::cluster::cluster_client::ClusterClient::new(channel)
        .append_entries(Payload { data: vec![] })
        .await
        .unwrap_err();
    assert!(appended.message().contains("cannot decode AppendEntries"), "replication is open to it: {appended:?}");
    // The members still talk to each other.
    let entry =
        crate::support::entry("after", "spiffe://example.org/after", "spiffe://example.org/node", &["unix:uid:1"]);
    let created = cluster.replicas[&leader]
        .write_command(raft_store::Command::CreateEntries(raft_store::command::CreateEntries(vec![entry])))
        .await;
    assert!(created.is_ok(), "{created:?}");
    cluster.shutdown().await;
}

/// Every member reads the others' clocks over the cluster RPC; on one machine they agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_read_each_others_clocks() {
    let cluster = TestCluster::start(3, 10_000).await;
    let deadline = tokio::time::Instant::now() + raft_store::peer_clocks::PROBE_EVERY * 5;
    for (id, replica) in &cluster.replicas {
        let clocks = replica.clocks();
        while clocks.clocks_read() < 3 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(clocks.clocks_read(), 3, "replica {id} read {} clocks", clocks.clocks_read());
        assert!(clocks.cluster_offset_ms().abs() < 1_000, "replica {id}: {} ms", clocks.cluster_offset_ms());
        assert_eq!(clocks.check(), Ok(()), "replica {id}");
    }
    cluster.shutdown().await;
}
