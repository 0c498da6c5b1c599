//! Anonymous callers who try to make a cluster spend: unknown join tokens and invite
//! secrets must not cost a replicated write, and node attestation from one address is
//! rate limited as SPIRE limits it.

use std::time::{Duration, Instant};

use identity::crypto::Signer;
use proto::cluster::cluster_client::ClusterClient;
use proto::spire::api::server::agent::v1 as agent_pb;
use testkit::ServerProcess;

use crate::cluster_processes::api_channel;

const UNKNOWN_EACH: usize = 5_000;
const CONCURRENCY: usize = 32;

fn last_log_index(server: &ServerProcess) -> u64 {
    server.status()["last_log_index"].as_u64().unwrap()
}

fn bundle_of(server: &ServerProcess) -> identity::bundle::Bundle {
    let mut bundle = identity::bundle::Bundle::new(identity::TrustDomain::parse("example.org").unwrap());
    for der in identity::bundle::parse_pem_certificates(&server.bundle_pem()).unwrap() {
        bundle.add_x509_authority(&der).unwrap();
    }
    bundle
}

/// One AttestAgent with a join token; the status it ends with.
async fn attest(channel: tonic::transport::Channel, token: String, csr: Vec<u8>) -> tonic::Code {
    let params = agent_pb::attest_agent_request::Params {
        data: Some(proto::spire::api::types::AttestationData { r#type: "join_token".into(), payload: token.into() }),
        params: Some(agent_pb::AgentX509svidParams { csr }),
    };
    let request = agent_pb::AttestAgentRequest { step: Some(agent_pb::attest_agent_request::Step::Params(params)) };
    let mut client = agent_pb::agent_client::AgentClient::new(channel);
    let answer = async {
        let mut responses = client.attest_agent(tokio_stream::once(request)).await?.into_inner();
        responses.message().await.map(|_| ())
    };
    match answer.await {
        Ok(()) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// Runs `job(i)` for `0..n`, `CONCURRENCY` at a time, and counts the codes it returns.
async fn flood<F, Fut>(n: usize, job: F) -> std::collections::BTreeMap<String, usize>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = tonic::Code>,
{
    use futures::stream::StreamExt;
    let codes: Vec<tonic::Code> = futures::stream::iter(0..n).map(job).buffer_unordered(CONCURRENCY).collect().await;
    let mut counted = std::collections::BTreeMap::new();
    for code in codes {
        *counted.entry(format!("{code:?}")).or_default() += 1;
    }
    counted
}

#[test]
fn unknown_join_tokens_and_invite_secrets_cost_no_replicated_write() {
    let root = tempfile::tempdir().unwrap();
    // Attestation is not rate limited here, so every token reaches the check under test.
    let unlimited = "ratelimit {\n    attestation = false\n  }";
    let servers = ServerProcess::cluster(root.path(), 3, unlimited);
    let leader_id = servers[0].status()["leader"].as_u64().unwrap();
    let leader = servers.iter().find(|s| s.id == leader_id).unwrap();
    let follower = servers.iter().find(|s| s.id != leader_id).unwrap();
    let bundle = bundle_of(follower);
    let ca_der = std::fs::read(follower.data_dir.join("cluster/ca.der")).unwrap();
    let pin: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &ca_der).as_ref().try_into().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // A real token still attests after the flood; made first, so its write is counted before.
    let real = follower.json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_owned();
    let before = last_log_index(leader);
    let started = Instant::now();
    let (tokens, invites) = runtime.block_on(async {
        let channel = api_channel(follower, &bundle, None).await;
        let key = identity::crypto::LocalKey::generate(identity::crypto::KeyType::EcP256).unwrap();
        let csr = identity::x509::create_csr(&key, None).unwrap();
        let tokens = flood(UNKNOWN_EACH, |i| attest(channel.clone(), format!("no-such-token-{i}"), csr.clone())).await;

        let replica_id =
            server::cluster::authority::replicas_id(&identity::TrustDomain::parse("example.org").unwrap()).unwrap();
        let address = format!("127.0.0.1:{}", follower.raft_port);
        let endpoint =
            raft_store::network::tls::joiner_endpoint(replica_id, pin, &address, Duration::from_secs(5)).unwrap();
        let mut joiner = ClusterClient::new(endpoint.connect().await.unwrap());
        // One call first: until the server's SETTINGS arrive, a client may open more streams
        // than the 4 an anonymous connection gets, and the extra ones are refused.
        let err = joiner.join(proto::cluster::Payload { data: b"{}".to_vec() }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        let public_key = key.public_key().spki_der().to_vec();
        let invites = flood(UNKNOWN_EACH, |i| {
            let mut joiner = joiner.clone();
            let mut secret = [0u8; 32];
            secret[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let request = server::cluster::admission::JoinRequest {
                secret: secret.to_vec(),
                node_id: 100 + i as u64,
                raft_address: "127.0.0.1:1".into(),
                api_address: "127.0.0.1:2".into(),
                public_key: public_key.clone(),
            };
            let data = serde_json::to_vec(&request).unwrap();
            async move {
                match joiner.join(proto::cluster::Payload { data }).await {
                    Ok(_) => tonic::Code::Ok,
                    Err(status) => status.code(),
                }
            }
        })
        .await;
        let real = attest(channel, real.clone(), csr).await;
        assert_eq!(real, tonic::Code::Ok, "the real token attests after the flood");
        (tokens, invites)
    });
    let took = started.elapsed();
    let after = last_log_index(leader);
    eprintln!("{UNKNOWN_EACH} unknown tokens: {tokens:?}; {UNKNOWN_EACH} unknown invites: {invites:?}; {took:?}");
    assert_eq!(tokens.get("PermissionDenied"), Some(&UNKNOWN_EACH), "{tokens:?}");
    assert_eq!(invites.get("PermissionDenied"), Some(&UNKNOWN_EACH), "{invites:?}");
    // The real attestation writes the agent and consumes the token; nothing else moves.
    assert!(after - before <= 4, "the leader's log grew by {} entries during the flood", after - before);
}

#[test]
fn node_attestation_from_one_address_is_rate_limited() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    let bundle = bundle_of(&server);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let codes = runtime.block_on(async {
        let channel = api_channel(&server, &bundle, None).await;
        let key = identity::crypto::LocalKey::generate(identity::crypto::KeyType::EcP256).unwrap();
        let csr = identity::x509::create_csr(&key, None).unwrap();
        flood(40, |i| attest(channel.clone(), format!("no-such-token-{i}"), csr.clone())).await
    });
    // One a second, waiting at most two: of 40 at once, a few are checked, the rest refused.
    let refused = codes.get("ResourceExhausted").copied().unwrap_or_default();
    let checked = codes.get("PermissionDenied").copied().unwrap_or_default();
    assert!(refused >= 30 && (1..=5).contains(&checked), "{codes:?}");
}

/// A caller choosing request paths cannot grow the metrics: unknown methods share one label.
#[test]
fn random_method_paths_do_not_grow_the_metrics() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    let bundle = bundle_of(&server);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let call_all = |count: usize, salt: &'static str| {
        runtime.block_on(async {
            let channel = api_channel(&server, &bundle, None).await;
            flood(count, |i| {
                let channel = channel.clone();
                async move {
                    let mut grpc = tonic::client::Grpc::new(channel);
                    if grpc.ready().await.is_err() {
                        return tonic::Code::Unavailable;
                    }
                    let path = format!("/attacker.{salt}{i}.Service/Method{i}");
                    let path = tonic::codegen::http::uri::PathAndQuery::try_from(path).unwrap();
                    let codec = tonic_prost::ProstCodec::<(), ()>::default();
                    match grpc.unary(tonic::Request::new(()), path, codec).await {
                        Ok(_) => tonic::Code::Ok,
                        Err(status) => status.code(),
                    }
                }
            })
            .await
        })
    };
    let first = call_all(10, "warm");
    assert_eq!(first.get("PermissionDenied"), Some(&10), "{first:?}");
    let size = || testkit::http_get(server.metrics_port, "/metrics").1.len();
    let before = size();
    let codes = call_all(1_000, "x");
    let after = size();
    assert_eq!(codes.get("PermissionDenied"), Some(&1_000), "{codes:?}");
    let metrics = testkit::http_get(server.metrics_port, "/metrics").1;
    assert!(!metrics.contains("attacker."), "a caller's path became a label");
    assert!(metrics.contains("method=\"unknown\""), "unknown methods are counted under one label");
    // Counters and histogram buckets change digits, not lines.
    assert!(after < before + 512, "/metrics grew from {before} to {after} bytes");
}

/// Health watches are open to anyone: only so many at once, and each gives its place back
/// when its caller goes away. An attestation that never sends its params is ended.
#[test]
fn anonymous_streams_are_bounded_and_released() {
    use proto::health::health_client::HealthClient;
    use proto::health::HealthCheckRequest;
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    let bundle = bundle_of(&server);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let watch = |channel: tonic::transport::Channel| async move {
            let mut client = HealthClient::new(channel);
            let mut stream = client.watch(HealthCheckRequest { service: String::new() }).await?.into_inner();
            stream.message().await?;
            Ok::<_, tonic::Status>(stream)
        };
        // Watches spread over connections (a connection carries at most 256 streams anyway).
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(api_channel(&server, &bundle, None).await);
        }
        let mut open = Vec::new();
        for i in 0..server::api::health::MAX_WATCHES {
            open.push(watch(channels[i % channels.len()].clone()).await.expect("a watch within the bound"));
        }
        let Err(refused) = watch(channels[0].clone()).await else { panic!("one watch over the bound is refused") };
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
        drop(open);
        let mut reopened = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(stream) = watch(channels[1].clone()).await {
                reopened = Some(stream);
                break;
            }
        }
        assert!(reopened.is_some(), "closed watches give their places back");

        // AttestAgent with no message: ended after 10 s, not held open.
        let (_keep_open, silence) = tokio::sync::mpsc::channel::<agent_pb::AttestAgentRequest>(1);
        let started = Instant::now();
        let mut client = agent_pb::agent_client::AgentClient::new(channels[2].clone());
        let outcome = async {
            let mut answers =
                client.attest_agent(tokio_stream::wrappers::ReceiverStream::new(silence)).await?.into_inner();
            answers.message().await
        };
        let err = tokio::time::timeout(Duration::from_secs(20), outcome).await.expect("an answer").unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    });
}

/// A caller without a certificate opens 10,000 streams on the cluster port (as many at
/// once as the replica allows), each starting a Join whose message claims 1 MiB and sends
/// 8 KiB of it. The replica may hold none of that past the anonymous limits: its peak
/// resident memory stays within a bound.
#[test]
fn ten_thousand_anonymous_streams_on_the_cluster_port_cost_a_bounded_amount() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    let ca_der = std::fs::read(server.data_dir.join("cluster/ca.der")).unwrap();
    let pin: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &ca_der).as_ref().try_into().unwrap();
    let replica_id =
        server::cluster::authority::replicas_id(&identity::TrustDomain::parse("example.org").unwrap()).unwrap();
    let (_, peak_before) = server.memory_kib().unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (opened, held) = runtime.block_on(async {
        let mut config = rustls::ClientConfig::builder_with_provider(spiffe_tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(spiffe_tls::SvidVerifier::pinned(replica_id, pin)))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.raft_port)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("replica").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(connection);
        // A gRPC message header claiming 1 MiB, then 8 KiB of it.
        let mut data = vec![0u8];
        data.extend_from_slice(&(1u32 << 20).to_be_bytes());
        data.extend(vec![0u8; 8 * 1024]);
        let data = bytes::Bytes::from(data);
        let (mut opened, mut held) = (0usize, Vec::new());
        for _ in 0..10_000 {
            let Ok(Ok(ready)) = tokio::time::timeout(Duration::from_secs(10), client.ready()).await else { break };
            client = ready;
            let request = tonic::codegen::http::Request::builder()
                .method("POST")
                .uri("https://replica/testudo.cluster.v1.Cluster/Join")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let Ok((response, mut body)) = client.send_request(request, false) else { break };
            body.reserve_capacity(data.len());
            let _ = body.send_data(data.clone(), false);
            opened += 1;
            // Keep every stream's handles, as an attacker would.
            held.push((response, body));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        (opened, held.len())
    });
    let (_, peak_after) = server.memory_kib().expect("the replica is still running");
    let grown_mib = peak_after.saturating_sub(peak_before) / 1024;
    eprintln!("{opened} streams opened, {held} held; peak RSS grew {grown_mib} MiB");
    assert!(grown_mib < 32, "the replica's peak memory grew by {grown_mib} MiB for one anonymous connection");
    assert!(server.serves_within(Duration::from_secs(5)), "the replica still serves");
}
