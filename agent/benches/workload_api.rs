//! Workload API latency through a real agent (release build) against a real server replica:
//! FetchX509SVID (open a stream, take the first message) and FetchJWTSVID (cached), beside a
//! bare gRPC unary call (grpc.health.v1 Check answering a constant) served by a process of
//! its own over the same kind of Unix socket, from the same client, in the same run.
//!
//! cargo bench -p testudo-agent --bench workload_api -- [--calls N]
//! (needs target/release/testudo-server: `make bench` builds it first)

use std::time::{Duration, Instant};

use proto::workload as pb;
use testkit::{AgentProcess, ServerProcess};

fn calls() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).find(|w| w[0] == "--calls").and_then(|w| w[1].parse().ok()).unwrap_or(2000)
}

async fn uds_channel(path: std::path::PathBuf) -> tonic::transport::Channel {
    proto::unix_socket::connect(&path).await.expect("connect")
}

fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
    request
}

struct Figures {
    p50: Duration,
    p99: Duration,
    per_s: f64,
}

async fn measure<F, Fut>(n: usize, mut call: F) -> Figures
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        call().await;
    }
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let sent = Instant::now();
        call().await;
        latencies.push(sent.elapsed());
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures { p50: pick(0.50), p99: pick(0.99), per_s: n as f64 / elapsed.as_secs_f64() }
}

/// A bare unary service on a Unix socket: health Check answering SERVING.
struct Echo;

#[tonic::async_trait]
impl proto::health::health_server::Health for Echo {
    async fn check(
        &self,
        _: tonic::Request<proto::health::HealthCheckRequest>,
    ) -> Result<tonic::Response<proto::health::HealthCheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(proto::health::HealthCheckResponse {
            status: proto::health::health_check_response::ServingStatus::Serving as i32,
        }))
    }

    type WatchStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::health::HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<proto::health::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("watch"))
    }
}

/// Serves the echo from a process of its own, like the agent: `--echo-server <socket>`.
fn echo_server(path: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::UnixListener::bind(path).expect("echo socket");
        let served = tonic::transport::Server::builder()
            .add_service(proto::health::health_server::HealthServer::new(Echo))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await;
        served.expect("echo server");
    });
}

/// Kills the echo process when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = args.windows(2).find(|w| w[0] == "--echo-server").map(|w| w[1].clone()) {
        echo_server(&path);
        return;
    }
    let n = calls();
    let root = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(root.path(), 1, testkit::NO_RATE_LIMITS);
    server.json(&["cluster", "init"]);
    let bundle_pem = server.bundle_pem();
    let token = server.json(&["token", "generate", "--ttl", "600"])["value"].as_str().expect("token").to_string();
    let uid = nix::unistd::getuid().as_raw();
    server.json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/bench",
        "--parent-id",
        &format!("spiffe://example.org/spire/agent/join_token/{token}"),
        "--selector",
        &format!("unix:uid:{uid}"),
    ]);
    let agent = AgentProcess::start(root.path(), &[server.api_address()], &bundle_pem, &token, "5s");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let echo_path = root.path().join("echo.sock");
        let _echo_process = Child(
            std::process::Command::new(std::env::current_exe().expect("own path"))
                .arg("--echo-server")
                .arg(&echo_path)
                .spawn()
                .expect("echo process"),
        );
        while !echo_path.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let echo = proto::health::health_client::HealthClient::new(uds_channel(echo_path).await);
        let api = pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(uds_channel(agent.socket()).await);

        let bare = measure(n, || {
            let mut echo = echo.clone();
            async move {
                echo.check(proto::health::HealthCheckRequest { service: String::new() }).await.expect("echo");
            }
        })
        .await;
        let x509 = measure(n, || {
            let mut api = api.clone();
            async move {
                let mut stream =
                    api.fetch_x509svid(with_header(pb::X509svidRequest {})).await.expect("FetchX509SVID").into_inner();
                stream.message().await.expect("first message").expect("an SVID");
            }
        })
        .await;
        let jwt = measure(n, || {
            let mut api = api.clone();
            async move {
                api.fetch_jwtsvid(with_header(pb::JwtsvidRequest {
                    audience: vec!["bench".into()],
                    spiffe_id: String::new(),
                }))
                .await
                .expect("FetchJWTSVID");
            }
        })
        .await;

        println!(
            "# Workload API latency, {n} sequential calls each, one client connection; agent (release) and echo \
            in processes of their own"
        );
        println!("| call | p50 | p99 | calls/s | p99 / echo p99 |");
        println!("| --- | --- | --- | --- | --- |");
        for (name, f) in [
            ("bare gRPC echo (health Check) over UDS", &bare),
            ("FetchX509SVID (first message)", &x509),
            ("FetchJWTSVID (cached)", &jwt),
        ] {
            println!(
                "| {name} | {:.0} µs | {:.0} µs | {:.0} | {:.2} |",
                f.p50.as_secs_f64() * 1e6,
                f.p99.as_secs_f64() * 1e6,
                f.per_s,
                f.p99.as_secs_f64() / bare.p99.as_secs_f64()
            );
        }
    });
}
