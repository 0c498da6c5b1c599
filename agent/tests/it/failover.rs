//! A workload streaming from the agent does not notice replicas dying: kill -9 of the
//! replica the agent uses, then of every replica; the stream stays open, the cached SVID
//! stays valid, new entries still arrive while a majority lives, and rotation resumes when
//! the replicas come back.

use std::time::{Duration, Instant};

use proto::workload as pb;
use testkit::{AgentProcess, ServerProcess};

use crate::workload_api::raw_client;

/// Serial and expiry of the SVID for `spiffe_id` in a Workload API message.
fn svid_of(response: &pb::X509svidResponse, spiffe_id: &str) -> Option<(Vec<u8>, time::OffsetDateTime)> {
    let svid = response.svids.iter().find(|s| s.spiffe_id == spiffe_id)?;
    let chain = identity::x509::split_der_certificates(&svid.x509_svid).ok()?;
    identity::x509::certificate_facts(&chain[0]).ok().map(|f| (f.serial, f.not_after))
}

fn serial_of(response: &pb::X509svidResponse, spiffe_id: &str) -> Option<Vec<u8>> {
    svid_of(response, spiffe_id).map(|(serial, _)| serial)
}

/// Three replicas, an agent configured with all of them, and an entry for this test's
/// processes (`spiffe://example.org/web`, by uid) under that agent.
struct Served {
    servers: Vec<ServerProcess>,
    agent: AgentProcess,
    agent_id: String,
    selector: String,
    addresses: Vec<String>,
}

fn served_workload(root: &std::path::Path, server_extra: &str) -> Served {
    let servers = ServerProcess::cluster(root, 3, server_extra);
    let bundle_pem = servers[0].bundle_pem();
    let token = servers[0].json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_string();
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    let selector = format!("unix:uid:{}", nix::unistd::getuid().as_raw());
    let web = ["--spiffe-id", "spiffe://example.org/web", "--parent-id", &agent_id, "--selector", &selector];
    servers[1].json(&[&["entry", "create"][..], &web].concat());
    let addresses: Vec<String> = servers.iter().map(|s| s.api_address()).collect();
    let agent = AgentProcess::start(root, &addresses, &bundle_pem, &token, "500ms");
    Served { servers, agent, agent_id, selector, addresses }
}

#[test]
fn the_workload_keeps_its_identity_while_replicas_die_and_return() {
    let root = tempfile::tempdir().unwrap();
    // Short SVIDs (agent renewal at about 10 s) so rotation is seen within the test.
    let Served { mut servers, agent, agent_id, selector, .. } =
        served_workload(root.path(), r#"default_x509_svid_ttl = "20s""#);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = raw_client(&agent).await;
        let mut request = tonic::Request::new(pb::X509svidRequest {});
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
        let mut stream = client.fetch_x509svid(request).await.unwrap().into_inner();
        // Every message the workload receives, until the test ends; any error fails it.
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<pb::X509svidResponse>();
        let reader = tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(message)) => {
                        if seen_tx.send(message).is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Err("the agent ended the stream".to_string()),
                    Err(status) => return Err(format!("the workload saw an error: {status:?}")),
                }
            }
        });
        let first = tokio::time::timeout(Duration::from_secs(30), seen.recv())
            .await
            .expect("a first SVID within 30 s")
            .unwrap();
        let first_serial = serial_of(&first, "spiffe://example.org/web").expect("the web SVID");

        // kill -9 the replica the agent tries first; a new entry, written through another
        // replica, still reaches the workload.
        servers[0].kill();
        // The write waits for the other two to elect a leader. On a loaded machine that can
        // outlast the CLI's 10 s, so ask again until the entry is there (a write that did
        // commit is not made twice: the entry is found first).
        let api = "spiffe://example.org/api";
        let written = || {
            let shown = servers[2].command(&["entry", "show", "--spiffe-id", api]);
            shown.status.success() && String::from_utf8_lossy(&shown.stdout).contains(api)
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(written()
            || servers[2]
                .command(&["entry", "create", "--spiffe-id", api, "--parent-id", &agent_id, "--selector", &selector])
                .status
                .success())
        {
            assert!(
                Instant::now() < deadline,
                "no entry written through replica 3 after replica 1 died\nreplica 2:\n{}\nreplica 3:\n{}",
                servers[1].log(),
                servers[2].log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let message = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), seen.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("the new entry's SVID did not arrive after a replica died\nagent log:\n{}", agent.log())
                })
                .unwrap();
            if serial_of(&message, "spiffe://example.org/api").is_some() {
                break;
            }
        }

        // Every replica down: the workload keeps its (still valid) SVIDs and no error.
        servers[1].kill();
        servers[2].kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!reader.is_finished(), "the stream must stay open while the servers are down");
        // What the workload holds now: the last web SVID it was sent, still valid.
        let mut held = None;
        while let Ok(message) = seen.try_recv() {
            held = svid_of(&message, "spiffe://example.org/web").or(held);
        }
        let held =
            held.unwrap_or_else(|| (first_serial.clone(), svid_of(&first, "spiffe://example.org/web").unwrap().1));
        assert!(held.1 > time::OffsetDateTime::now_utc(), "the workload's SVID expired while the servers were down");

        // Back up: rotation resumes, and the workload receives a newer web SVID than it held.
        for server in &mut servers {
            server.restart();
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let message = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), seen.recv())
                .await
                .unwrap_or_else(|_| panic!("no rotation after the replicas returned\nagent log:\n{}", agent.log()))
                .unwrap();
            if serial_of(&message, "spiffe://example.org/web").is_some_and(|s| s != held.0) {
                break;
            }
        }
        assert!(
            !reader.is_finished(),
            "no error reached the workload: {:?}",
            if reader.is_finished() { Some(reader.await) } else { None }
        );
    });
    // The replicas that failed were probed back into the pool.
    testkit::wait_until(
        Duration::from_secs(30),
        || agent.log().contains("server replica is healthy again"),
        "a probe to find a returned replica",
    );
}

/// The replica the agent calls first hangs (SIGSTOP): a workload's request for a JWT-SVID the
/// agent has not cached is answered by another replica well before the agent's 10 s call
/// timeout, because the agent asks the next replica too once the first is slower than usual.
#[test]
fn a_hung_replica_does_not_hold_up_a_jwt_request() {
    let root = tempfile::tempdir().unwrap();
    let Served { servers, agent, addresses, .. } = served_workload(root.path(), "");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let client = raw_client(&agent).await;
        let jwt = |audience: String| {
            let mut request =
                tonic::Request::new(pb::JwtsvidRequest { audience: vec![audience], spiffe_id: String::new() });
            request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
            let mut client = client.clone();
            async move { client.fetch_jwtsvid(request).await.map(|r| r.into_inner().svids.len()) }
        };
        // The agent learns how fast the replica it calls answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        while jwt("warm-0".into()).await.unwrap_or(0) == 0 {
            assert!(Instant::now() < deadline, "no JWT-SVID within 30 s:\n{}", agent.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for n in 1..10 {
            assert_eq!(jwt(format!("warm-{n}")).await.unwrap(), 1);
        }
        let current = agent
            .log()
            .lines()
            .rev()
            .filter(|l| l.contains("calling another replica first"))
            .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("server=")).map(str::to_owned))
            .unwrap_or_else(|| addresses[0].clone());
        let hung = addresses.iter().position(|a| *a == current).unwrap();
        servers[hung].pause();
        let started = Instant::now();
        let answered = jwt("after-the-hang".into()).await;
        let took = started.elapsed();
        servers[hung].resume();
        assert_eq!(answered.unwrap(), 1, "a JWT-SVID from another replica");
        assert!(took < Duration::from_secs(3), "the request waited {took:?} on the hung replica:\n{}", agent.log());
    });
}
