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

/// An HPACK integer with an `prefix`-bit prefix, first byte OR-ed with `flags`.
fn hpack_integer(value: usize, prefix: u8, flags: u8) -> Vec<u8> {
    let max = (1usize << prefix) - 1;
    if value < max {
        return vec![flags | value as u8];
    }
    let mut out = vec![flags | max as u8];
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

fn hpack_literal(indexed: bool, name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![if indexed { 0x40 } else { 0x00 }];
    out.extend(hpack_integer(name.len(), 7, 0));
    out.extend_from_slice(name);
    out.extend(hpack_integer(value.len(), 7, 0));
    out.extend_from_slice(value);
    out
}

/// A Workload API client that announces a 256 MiB HPACK table and fills it: the agent must
/// refuse the announcement (the table it advertises is HTTP/2's 4 KiB) and so never hold
/// more than a bounded amount for one connection.
#[test]
fn a_client_announcing_a_huge_hpack_table_is_refused_and_costs_little_memory() {
    use std::io::Write;
    let root = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(root.path(), 1, "");
    server.json(&["cluster", "init"]);
    let token = server.json(&["token", "generate", "--ttl", "600"])["value"].as_str().unwrap().to_string();
    let agent = AgentProcess::start(root.path(), &[server.api_address()], &server.bundle_pem(), &token, "5s");
    let (rss_before, _) = agent.memory_kib().unwrap();

    let mut stream = std::os::unix::net::UnixStream::connect(agent.socket()).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sent = stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .and_then(|()| stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]));
    let value = vec![b'v'; 4_000];
    let mut bytes = 0usize;
    let mut stream_id = 1u32;
    while sent.is_ok() && bytes < 64 << 20 {
        let mut block = Vec::new();
        if stream_id == 1 {
            block.extend(hpack_integer(256 << 20, 5, 0x20));
        }
        for (name, value) in [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "localhost")] {
            block.extend(hpack_literal(false, name.as_bytes(), value.as_bytes()));
        }
        for j in 0..3 {
            block.extend(hpack_literal(true, format!("x-pad-{stream_id}-{j}").as_bytes(), &value));
        }
        let mut frame = vec![(block.len() >> 16) as u8, (block.len() >> 8) as u8, block.len() as u8, 0x1, 0x4];
        frame.extend_from_slice(&stream_id.to_be_bytes());
        frame.extend_from_slice(&block);
        sent = stream.write_all(&frame);
        bytes += frame.len();
        stream_id += 2;
    }
    std::thread::sleep(Duration::from_millis(500));
    let (rss_after, _) = agent.memory_kib().expect("the agent is still running");
    let grown_mib = rss_after.saturating_sub(rss_before) / 1024;
    eprintln!("sent {} KiB before the agent closed the connection; agent RSS grew {grown_mib} MiB", bytes / 1024);
    assert!(sent.is_err(), "the agent kept reading after a 256 MiB table was announced ({} MiB sent)", bytes >> 20);
    assert!(bytes < 1 << 20, "the connection was refused within the first frames, not after {} KiB", bytes / 1024);
    assert!(grown_mib < 16, "the agent grew by {grown_mib} MiB");
}
