//! Signing rates through each key manager, as the CA signs: ECDSA P-256 over a
//! certificate-sized message, `--tasks` concurrent signers for `--seconds` each.
//! `memory` is the floor; `pkcs11` runs against a SoftHSM2 token made here; `aws_kms`
//! against moto on loopback (a local stand-in: the figure says what the client side and the
//! protocol cost, not what AWS does).
//!
//! `cargo bench -p testudo-kms --bench signing -- --seconds 5 --tasks 4`

use std::sync::Arc;
use std::time::{Duration, Instant};

use kms::{KeyManager, KeyType, SignatureAlgorithm};
use testkit::moto::{self, MotoServer};
use testkit::softhsm;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

/// Signs as fast as `tasks` callers can for `seconds`; returns (signatures/s, p50 ms, p99 ms).
async fn rate(manager: Arc<dyn KeyManager>, tasks: u64, seconds: u64) -> (f64, f64, f64) {
    manager.generate_key("bench-key", KeyType::EcP256, None).await.expect("a key");
    let message = vec![0x5au8; 600];
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (manager, message) = (manager.clone(), message.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let t = Instant::now();
                    manager
                        .sign("bench-key", SignatureAlgorithm::EcdsaP256Sha256, &message)
                        .await
                        .expect("a signature");
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.await.expect("a signer task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let _ = manager.delete_key("bench-key").await;
    (latencies.len() as f64 / elapsed, at(0.50), at(0.99))
}

fn softhsm() -> (tempfile::TempDir, kms::pkcs11::Pkcs11Config) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::env::set_var("SOFTHSM2_CONF", softhsm::init_token(dir.path(), "bench", "1111"));
    let config = kms::pkcs11::Pkcs11Config {
        module_path: softhsm::MODULE.into(),
        token: kms::pkcs11::TokenSelector::Label("bench".into()),
        user_pin: zeroize::Zeroizing::new("1111".into()),
        key_label_prefix: "bench/".into(),
    };
    (dir, config)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (seconds, tasks) = (arg("--seconds", 5), arg("--tasks", 4));
    println!("ECDSA P-256 signing through each key manager, {tasks} concurrent signers, {seconds} s each");
    println!("{:<10} {:>12} {:>10} {:>10}", "backend", "signatures/s", "p50 ms", "p99 ms");

    let memory: Arc<dyn KeyManager> = Arc::new(kms::memory::MemoryKeyManager::new());
    let (r, p50, p99) = rate(memory, tasks, seconds).await;
    println!("{:<10} {r:>12.0} {p50:>10.3} {p99:>10.3}", "memory");

    let (_token, config) = softhsm();
    let hsm: Arc<dyn KeyManager> =
        Arc::new(kms::pkcs11::Pkcs11KeyManager::open(config).await.expect("the SoftHSM token"));
    let (r, p50, p99) = rate(hsm, tasks, seconds).await;
    println!("{:<10} {r:>12.0} {p50:>10.3} {p99:>10.3}", "pkcs11");

    let server = MotoServer::start();
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(moto::REGION))
        .credentials_provider(aws_sdk_kms::config::SharedCredentialsProvider::new(
            aws_sdk_kms::config::Credentials::new(moto::ACCESS_KEY_ID, moto::SECRET_ACCESS_KEY, None, None, "bench"),
        ))
        .build();
    let config = kms::aws_kms::AwsKmsConfig {
        region: None,
        endpoint: Some(server.endpoint()),
        key_tags: Default::default(),
        alias_prefix: "alias/bench/".into(),
        trust_domain: "example.org".into(),
    };
    let aws: Arc<dyn KeyManager> =
        Arc::new(kms::aws_kms::AwsKmsKeyManager::with_sdk_config(&sdk, config).expect("a KMS client"));
    let (r, p50, p99) = rate(aws, tasks, seconds).await;
    println!("{:<10} {r:>12.0} {p50:>10.3} {p99:>10.3}", "aws_kms");
}
