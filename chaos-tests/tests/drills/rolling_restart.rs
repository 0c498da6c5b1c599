//! Every replica restarted in turn (kill -9, down a second, started from its disk) while an
//! agent serves a workload that streams its X.509-SVID and asks for JWT-SVIDs: the workload
//! sees no error and always holds an SVID that has not expired; the agent's SVIDs keep
//! rotating (short TTLs), and an entry created mid-drill reaches the workload.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chaos_tests::harness::{wait_until, AgentProcess, ServerProcess};
use proto::workload as pb;

fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
    request
}

async fn workload_client(socket: std::path::PathBuf) -> pb::spiffe_workload_api_client::SpiffeWorkloadApiClient<tonic::transport::Channel> {
    pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(super::workload::connect(&socket).await.expect("the agent's socket"))
}

/// The leaf of a concatenated DER chain: its serial number and `not_after` (epoch seconds).
fn leaf(chain: &[u8]) -> (Vec<u8>, i64) {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(chain).expect("an X.509-SVID");
    (cert.raw_serial().to_vec(), cert.validity().not_after.timestamp())
}

#[test]
fn a_rolling_restart_is_invisible_to_workloads() {
    let root = tempfile::tempdir().unwrap();
    let mut servers = ServerProcess::cluster(root.path(), 3, r#"default_x509_svid_ttl = "20s""#);
    let token = servers[0].json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_owned();
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_owned();
    servers[0].json(&["entry", "create", "--spiffe-id", "spiffe://example.org/web", "--parent-id", &agent_id, "--selector", &format!("unix:uid:{uid}")]);
    let addresses: Vec<String> = servers.iter().map(ServerProcess::api_address).collect();
    let agent = AgentProcess::start(root.path(), &addresses, &servers[0].bundle_pem(), &token, "1s");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let expired_gaps = Arc::new(Mutex::new(0u32));
    let serials = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let ids_seen = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // The streaming workload: every message, and every second, it checks it holds an
    // unexpired SVID.
    let stream = {
        let (errors, expired_gaps, serials, ids_seen, stop, socket) = (errors.clone(), expired_gaps.clone(), serials.clone(), ids_seen.clone(), stop.clone(), agent.socket());
        runtime.spawn(async move {
            let mut client = workload_client(socket).await;
            let mut stream = match client.fetch_x509svid(with_header(pb::X509svidRequest {})).await {
                Ok(s) => s.into_inner(),
                Err(e) => return errors.lock().unwrap().push(format!("open stream: {e:?}")),
            };
            let mut held_until = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                    Err(_) => {}
                    Ok(Ok(Some(message))) => {
                        for svid in &message.svids {
                            ids_seen.lock().unwrap().insert(svid.spiffe_id.clone());
                            if svid.spiffe_id == "spiffe://example.org/web" {
                                let (serial, until) = leaf(&svid.x509_svid);
                                held_until = until;
                                serials.lock().unwrap().insert(serial);
                            }
                        }
                    }
                    Ok(Ok(None)) => return errors.lock().unwrap().push("the stream ended".into()),
                    Ok(Err(e)) => return errors.lock().unwrap().push(format!("stream: {e:?}")),
                }
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
                if held_until != 0 && now >= held_until {
                    *expired_gaps.lock().unwrap() += 1;
                }
            }
        })
    };
    // A workload that asks for a JWT-SVID every 200 ms (minted by a replica on a cache miss).
    let jwts = {
        let (errors, stop, socket) = (errors.clone(), stop.clone(), agent.socket());
        runtime.spawn(async move {
            let mut client = workload_client(socket).await;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                // A new audience each time: a cache miss, so a server is called.
                let request = pb::JwtsvidRequest { audience: vec![format!("aud-{n}")], spiffe_id: String::new() };
                if let Err(e) = client.fetch_jwtsvid(with_header(request)).await {
                    errors.lock().unwrap().push(format!("JWT-SVID {n}: {e:?}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    for i in 0..servers.len() {
        servers[i].kill();
        std::thread::sleep(Duration::from_secs(1));
        servers[i].restart();
        wait_until(Duration::from_secs(20), || servers[i].command(&["entry", "count"]).status.success(), "the restarted replica to serve");
        if i == 1 {
            // Registrations made mid-drill still reach the workload.
            servers[(i + 1) % 3].json(&["entry", "create", "--spiffe-id", "spiffe://example.org/late", "--parent-id", &agent_id, "--selector", &format!("unix:uid:{uid}")]);
        }
    }
    // Long enough after the last restart for another rotation.
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    runtime.block_on(async {
        stream.await.unwrap();
        jwts.await.unwrap();
    });
    let errors = errors.lock().unwrap().clone();
    let rotations = serials.lock().unwrap().len();
    eprintln!(
        "rolling restart drill: {} replicas restarted in {:.1} s, {} workload errors, {} checks without a valid SVID, {rotations} X.509-SVIDs seen",
        servers.len(),
        started.elapsed().as_secs_f64(),
        errors.len(),
        expired_gaps.lock().unwrap()
    );
    assert!(errors.is_empty(), "the workload saw errors: {errors:?}\nagent log:\n{}", agent.log());
    assert_eq!(*expired_gaps.lock().unwrap(), 0, "the workload held an expired SVID");
    assert!(rotations >= 2, "the SVID rotated during the drill: {rotations}");
    assert!(ids_seen.lock().unwrap().contains("spiffe://example.org/late"), "an entry made mid-drill reached the workload: {:?}", ids_seen.lock().unwrap());
}
