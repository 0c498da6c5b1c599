//! Local callers of the Workload API who try to be someone else.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::workload as pb;
use testkit::{AgentProcess, ServerProcess};

/// A Unix socket made here and connected to `path` by a short-lived child process, as a
/// process that connects and hands its socket to another would: the agent sees the child
/// as the caller. `then` is Python run in the child after connecting (e.g. an exec).
fn connected_by_child(path: &std::path::Path, then: &str) -> (std::os::unix::net::UnixStream, Child) {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    socket.set_cloexec(false).unwrap();
    let script = format!(
        "import os, socket, sys\ns = socket.socket(fileno=int(sys.argv[1]))\ns.connect(sys.argv[2])\ns.detach()\n{then}\n"
    );
    let child =
        Command::new("python3").args(["-c", &script, &socket.as_raw_fd().to_string()]).arg(path).spawn().unwrap();
    socket.set_cloexec(true).unwrap();
    // Wait until the child's connect() took effect: the socket then has a peer.
    testkit::wait_until(Duration::from_secs(10), || socket.peer_addr().is_ok(), "the child to connect");
    (std::os::unix::net::UnixStream::from(OwnedFd::from(socket)), child)
}

/// A Workload API client on an already connected socket.
async fn client_on(
    stream: std::os::unix::net::UnixStream,
) -> pb::spiffe_workload_api_client::SpiffeWorkloadApiClient<tonic::transport::Channel> {
    stream.set_nonblocking(true).unwrap();
    let stream = Arc::new(Mutex::new(Some(tokio::net::UnixStream::from_std(stream).unwrap())));
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let taken = stream.lock().unwrap().take();
            async move { taken.map(hyper_util::rt::TokioIo::new).ok_or_else(|| std::io::Error::other("used once")) }
        }))
        .await
        .unwrap();
    pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel)
}

async fn fetch_x509(
    client: &mut pb::spiffe_workload_api_client::SpiffeWorkloadApiClient<tonic::transport::Channel>,
) -> Result<Vec<String>, tonic::Status> {
    let mut request = tonic::Request::new(pb::X509svidRequest {});
    request.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
    let mut stream = client.fetch_x509svid(request).await?.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("an answer")?;
    Ok(first.map(|r| r.svids.into_iter().map(|s| s.spiffe_id).collect()).unwrap_or_default())
}

/// Starts `program` so that it gets pid `pid`, by setting the kernel's last-allocated pid
/// just below it (root only); `None` if another process took the pid first every time.
fn spawn_with_pid(pid: u32, program: &str, args: &[&str]) -> Option<Child> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).ok()?;
        let mut child = Command::new(program).args(args).spawn().unwrap();
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// A process connects to the Workload API, hands the socket over and exits; its pid then
/// goes to another service (here `sleep`, whose binary an entry names). Calls on the
/// handed-over socket must not be attested as that service.
#[test]
fn a_socket_whose_process_exited_cannot_borrow_the_next_owner_of_its_pid() {
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    let bundle_pem = server.bundle_pem();
    let token = server.json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_string();
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    let sleep = std::fs::canonicalize("/bin/sleep").unwrap();
    let sleep = sleep.to_str().unwrap();
    server.json(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/victim",
        "--parent-id",
        &agent_id,
        "--selector",
        &format!("unix:path:{sleep}"),
    ]);
    let config = AgentProcess::config_text(
        root.path(),
        &[server.api_address()],
        &format!("join_token = \"{token}\""),
        r#"NodeAttestor "join_token" {}"#,
        "1s",
        "",
    )
    .replace(
        r#"WorkloadAttestor "unix" {}"#,
        "WorkloadAttestor \"unix\" {\n    plugin_data {\n      discover_workload_path = true\n    }\n  }",
    );
    std::fs::create_dir_all(root.path().join("agent")).unwrap();
    std::fs::write(root.path().join("agent/bundle.pem"), &bundle_pem).unwrap();
    let agent = AgentProcess::start_configured(root.path(), &config, &[]);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // The control: a process that connects and then becomes `sleep` (exec keeps the process)
    // is the victim's binary, and gets its SVID, once the agent has synced the entry.
    let (stream, mut execed) = connected_by_child(&agent.socket(), &format!("os.execv('{sleep}', ['sleep', '30'])"));
    runtime.block_on(async {
        let mut client = client_on(stream).await;
        let mut got = Vec::new();
        for _ in 0..100 {
            got = fetch_x509(&mut client).await.unwrap_or_default();
            if !got.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(got, vec!["spiffe://example.org/victim".to_owned()], "agent log:\n{}", agent.log());
    });
    let _ = execed.kill();
    let _ = execed.wait();

    // The attack: the connecting process exits and is reaped; `sleep` starts under its pid.
    let (stream, mut connector) = connected_by_child(&agent.socket(), "");
    let pid = connector.id();
    assert!(connector.wait().unwrap().success());
    let mut victim = spawn_with_pid(pid, sleep, &["30"]).expect("the victim to get the freed pid");
    let answer = runtime.block_on(async {
        let mut client = client_on(stream).await;
        fetch_x509(&mut client).await
    });
    let _ = victim.kill();
    let _ = victim.wait();
    let status = answer.expect_err("the victim's identity must not be served on a socket it never opened");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("gone"), "{status:?}");
}
