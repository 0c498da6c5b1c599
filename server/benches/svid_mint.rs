//! BatchNewX509SVID throughput of one `testudo-server` replica (memory key manager,
//! EC P-256 CA, TLS on loopback), beside `openssl speed ecdsap256` from the same run.
//!
//! cargo bench -p testudo-server --bench svid_mint -- [--seconds N] [--concurrency C] [--batch B]
//!
//! Each minted SVID costs the server one CSR signature check and one signature; the
//! reference is openssl's rate for that pair on one core: 1 / (1/sign + 1/verify).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use identity::crypto::{KeyType, LocalKey};
use proto::spire::api::server::agent::v1 as agent_pb;
use proto::spire::api::server::svid::v1 as svid_pb;
use testkit::{ReplicaOptions, ServerProcess};

struct Options {
    seconds: u64,
    concurrency: usize,
    batch: usize,
}

fn options() -> Options {
    let mut o = Options { seconds: 10, concurrency: 8, batch: 50 };
    let args: Vec<String> = std::env::args().collect();
    for pair in args.windows(2) {
        let value = pair[1].parse::<u64>().ok();
        match (pair[0].as_str(), value) {
            ("--seconds", Some(v)) => o.seconds = v,
            ("--concurrency", Some(v)) => o.concurrency = v as usize,
            ("--batch", Some(v)) => o.batch = v as usize,
            _ => {}
        }
    }
    o
}

fn openssl_speed() -> (f64, f64) {
    let out = Command::new("openssl").args(["speed", "-seconds", "3", "ecdsap256"]).output().expect("openssl speed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("nistp256")).expect("openssl speed output");
    let numbers: Vec<f64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    // "256 bits ecdsa (nistp256)   sign/s verify/s" -> last two numbers are sign/s and verify/s.
    (numbers[numbers.len() - 2], numbers[numbers.len() - 1])
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let o = options();
    let root = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start_with(
        root.path(),
        1,
        &ReplicaOptions {
            server_extra: format!("log_level = \"WARN\"\n  {}", testkit::NO_RATE_LIMITS),
            default_timing: true,
            ..Default::default()
        },
    );
    server.json(&["cluster", "init"]);
    let bundle_pem = server.bundle_pem();
    let mut bundle = identity::bundle::Bundle::new(identity::TrustDomain::parse("example.org").unwrap());
    for cert in pem::parse_many(&bundle_pem).expect("bundle") {
        bundle.add_x509_authority(cert.contents()).expect("authority");
    }
    let token = server.json(&["token", "generate", "--ttl", "600"])["value"].as_str().expect("token").to_string();
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    let entry_ids: Vec<String> = (0..o.batch)
        .map(|i| {
            let created = server.json(&[
                "entry",
                "create",
                "--spiffe-id",
                &format!("spiffe://example.org/w/{i}"),
                "--parent-id",
                &agent_id,
                "--selector",
                &format!("unix:uid:{i}"),
            ]);
            created["entries"][0]["id"].as_str().expect("entry id").to_string()
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let (minted, elapsed, latencies) = runtime.block_on(async {
        let verifier = Arc::new(spiffe_tls::SvidVerifier::any_svid(Arc::new(std::sync::RwLock::new(bundle.clone()))));
        let endpoint = |identity: Option<tonic::transport::Identity>| {
            let mut tls = tonic::transport::ClientTlsConfig::new().domain_name("server.example.org");
            if let Some(identity) = identity {
                tls = tls.identity(identity);
            }
            tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", server.api_port))
                .unwrap()
                .tls_config_with_verifier(tls, verifier.clone())
                .unwrap()
        };
        let channel = loop {
            if let Ok(channel) = endpoint(None).connect().await {
                break channel;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let agent_key = LocalKey::generate(KeyType::EcP256).unwrap();
        let params = agent_pb::attest_agent_request::Params {
            data: Some(proto::spire::api::types::AttestationData {
                r#type: "join_token".into(),
                payload: token.into_bytes(),
            }),
            params: Some(agent_pb::AgentX509svidParams { csr: identity::x509::create_csr(&agent_key, None).unwrap() }),
        };
        let request = agent_pb::AttestAgentRequest { step: Some(agent_pb::attest_agent_request::Step::Params(params)) };
        let mut responses = agent_pb::agent_client::AgentClient::new(channel)
            .attest_agent(tokio_stream::once(request))
            .await
            .expect("attest")
            .into_inner();
        let Some(agent_pb::attest_agent_response::Step::Result(result)) =
            responses.message().await.expect("attest").and_then(|r| r.step)
        else {
            panic!("attestation failed");
        };
        let chain: String = result
            .svid
            .unwrap()
            .cert_chain
            .iter()
            .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.clone())))
            .collect();
        let key = pem::encode(&pem::Pem::new("PRIVATE KEY", agent_key.to_pkcs8_der().unwrap().to_vec()));
        let agent =
            endpoint(Some(tonic::transport::Identity::from_pem(chain, key))).connect().await.expect("agent channel");
        // One CSR per entry, made up front: the clients measure the server, not themselves.
        let workload = LocalKey::generate(KeyType::EcP256).unwrap();
        let csr = identity::x509::create_csr(&workload, None).unwrap();
        let request = svid_pb::BatchNewX509svidRequest {
            params: entry_ids
                .iter()
                .map(|id| svid_pb::NewX509svidParams { entry_id: id.clone(), csr: csr.clone() })
                .collect(),
        };
        let stop = Instant::now() + Duration::from_secs(o.seconds);
        let started = Instant::now();
        let workers = (0..o.concurrency).map(|_| {
            let (agent, request) = (agent.clone(), request.clone());
            tokio::spawn(async move {
                let mut client = svid_pb::svid_client::SvidClient::new(agent);
                let (mut minted, mut latencies) = (0usize, Vec::new());
                while Instant::now() < stop {
                    let t = Instant::now();
                    let results = client.batch_new_x509svid(request.clone()).await.expect("mint").into_inner().results;
                    latencies.push(t.elapsed());
                    minted += results.iter().filter(|r| r.status.as_ref().is_some_and(|s| s.code == 0)).count();
                }
                (minted, latencies)
            })
        });
        let mut total = 0;
        let mut latencies = Vec::new();
        for worker in workers.collect::<Vec<_>>() {
            let (minted, l) = worker.await.expect("worker");
            total += minted;
            latencies.extend(l);
        }
        (total, started.elapsed(), latencies)
    });
    drop(server);
    let mut latencies = latencies;
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let rate = minted as f64 / elapsed.as_secs_f64();
    let (sign, verify) = openssl_speed();
    let pair = 1.0 / (1.0 / sign + 1.0 / verify);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    println!(
        "# BatchNewX509SVID on one replica (memory key manager, ec-p256), {} clients, {} SVIDs per call, {} s, \
        {} cores",
        o.concurrency, o.batch, o.seconds, cores
    );
    println!("| what | figure |");
    println!("| --- | --- |");
    println!("| SVIDs minted/s (server, all cores) | {rate:.0} |");
    println!("| SVIDs minted/s per core | {:.0} |", rate / cores);
    println!(
        "| call latency p50 / p99 ({} SVIDs) | {:.1} ms / {:.1} ms |",
        o.batch,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3
    );
    println!("| openssl ecdsap256 sign/s, verify/s (one core) | {sign:.0}, {verify:.0} |");
    println!("| openssl one-verify-plus-one-sign/s (one core) | {pair:.0} |");
    println!("| ratio per core (target >= 0.50) | {:.2} |", rate / cores / pair);
}
