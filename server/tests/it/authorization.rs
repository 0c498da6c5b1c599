//! The authorization table, walked: every method it names, called by every kind of caller
//! (the admin socket, an admin SVID, an agent, a downstream workload, a plain workload, an
//! anonymous caller), is refused by the table exactly when the table says so.

use std::time::Duration;

use proto::reason::Reason;
use proto::spire::api::server::agent::v1 as agent_pb;
use server::api::policy::{Allowed, POLICY};
use testkit::ServerProcess;

use crate::cluster_processes::api_channel;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Local,
    Admin,
    Agent,
    Downstream,
    Workload,
    Anonymous,
}

fn admits(allowed: Allowed, kind: Kind) -> bool {
    allowed.any
        || match kind {
            Kind::Local => allowed.local,
            Kind::Admin => allowed.admin,
            Kind::Agent => allowed.agent,
            Kind::Downstream => allowed.downstream,
            Kind::Workload | Kind::Anonymous => false,
        }
}

/// Calls `method` with one empty message; whether the authorization table refused it.
async fn refused_by_table(channel: tonic::transport::Channel, method: &'static str) -> bool {
    let mut grpc = tonic::client::Grpc::new(channel);
    let call = async {
        grpc.ready().await.map_err(|e| tonic::Status::unknown(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<(), ()>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
        let mut answers = grpc.streaming(tonic::Request::new(tokio_stream::once(())), path, codec).await?.into_inner();
        answers.message().await.map(|_| ())
    };
    match tokio::time::timeout(Duration::from_secs(3), call).await {
        // Still running: the handler took it (a stream that stays open).
        Err(_) | Ok(Ok(())) => false,
        Ok(Err(status)) => Reason::of(&status) == Some(Reason::CallerNotAllowed),
    }
}

fn pem_of(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

/// An SVID for `id` from the CLI (MintX509SVID), as (chain PEM, key PEM).
fn minted(server: &ServerProcess, dir: &std::path::Path, id: &str) -> (String, String) {
    let out = server.command(&["x509", "mint", "--spiffe-id", id, "--write", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (std::fs::read_to_string(dir.join("svid.pem")).unwrap(), std::fs::read_to_string(dir.join("key.pem")).unwrap())
}

fn entry(server: &ServerProcess, id: &str, flag: &str) {
    let out = server.command(&[
        "entry",
        "create",
        "--spiffe-id",
        id,
        "--parent-id",
        "spiffe://example.org/spire/agent/none",
        "--selector",
        "unix:uid:0",
        flag,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_method_admits_exactly_the_callers_the_table_names() {
    use identity::crypto::{KeyType, LocalKey};
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, testkit::NO_RATE_LIMITS);
    server.json(&["cluster", "init"]);
    let mut bundle = identity::bundle::Bundle::new(identity::TrustDomain::parse("example.org").unwrap());
    for der in identity::bundle::parse_pem_certificates(&server.bundle_pem()).unwrap() {
        bundle.add_x509_authority(&der).unwrap();
    }
    entry(&server, "spiffe://example.org/ops", "--admin");
    entry(&server, "spiffe://example.org/nested", "--downstream");
    let admin = minted(&server, &root.path().join("admin"), "spiffe://example.org/ops");
    let downstream = minted(&server, &root.path().join("downstream"), "spiffe://example.org/nested");
    let workload = minted(&server, &root.path().join("workload"), "spiffe://example.org/web");
    let token = server.json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_owned();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mismatches = runtime.block_on(async {
        let anonymous = api_channel(&server, &bundle, None).await;
        // An agent: attested with the join token.
        let key = LocalKey::generate(KeyType::EcP256).unwrap();
        let params = agent_pb::attest_agent_request::Params {
            data: Some(proto::spire::api::types::AttestationData {
                r#type: "join_token".into(),
                payload: token.into_bytes(),
            }),
            params: Some(agent_pb::AgentX509svidParams { csr: identity::x509::create_csr(&key, None).unwrap() }),
        };
        let request = agent_pb::AttestAgentRequest { step: Some(agent_pb::attest_agent_request::Step::Params(params)) };
        let mut answers = agent_pb::agent_client::AgentClient::new(anonymous.clone())
            .attest_agent(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        let Some(agent_pb::attest_agent_response::Step::Result(result)) =
            answers.message().await.unwrap().unwrap().step
        else {
            panic!("no attestation result");
        };
        let chain: String = result.svid.unwrap().cert_chain.iter().map(|c| pem_of("CERTIFICATE", c)).collect();
        let agent = (chain, pem_of("PRIVATE KEY", &key.to_pkcs8_der().unwrap()));

        let callers = [
            (Kind::Local, proto::unix_socket::connect(&server.socket()).await.unwrap()),
            (Kind::Admin, api_channel(&server, &bundle, Some(admin)).await),
            (Kind::Agent, api_channel(&server, &bundle, Some(agent)).await),
            (Kind::Downstream, api_channel(&server, &bundle, Some(downstream)).await),
            (Kind::Workload, api_channel(&server, &bundle, Some(workload)).await),
            (Kind::Anonymous, anonymous),
        ];
        let mut mismatches = Vec::new();
        for (method, allowed) in POLICY {
            for (kind, channel) in &callers {
                let refused = refused_by_table(channel.clone(), method).await;
                if refused == admits(*allowed, *kind) {
                    mismatches.push(format!("{method} by {kind:?}: refused {refused}, table admits {allowed:?}"));
                }
            }
        }
        // A method the table does not name is refused to everyone, the admin socket too.
        for (kind, channel) in &callers {
            if !refused_by_table(channel.clone(), "/spire.api.server.entry.v1.Entry/Unlisted").await {
                mismatches.push(format!("an unlisted method was not refused to {kind:?}"));
            }
        }
        mismatches
    });
    assert!(mismatches.is_empty(), "{} mismatches:\n{}", mismatches.len(), mismatches.join("\n"));
}
