//! The test kit every multi-process test, benchmark and drill uses: real `testudo-server`
//! and `testudo-agent` processes on loopback, each with its own directory, free ports and
//! log file, killed when dropped, even when a test panics; a local KMS (moto), SoftHSM2
//! tokens, a per-link fault proxy, test PKI through openssl, free ports and polling. The
//! binaries come from the same target directory as the test (`make test` builds them).
#![forbid(unsafe_code)]

mod agent;
pub mod docs;
pub mod faketime;
pub mod moto;
pub mod netns;
pub mod pki;
pub mod proxy;
mod server;
pub mod softhsm;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use agent::AgentProcess;
pub use server::{ReplicaOptions, ServerProcess};

/// A `server { }` block line that turns off the per-address rate limits: for benchmarks,
/// whose one client address stands for many agents.
pub const NO_RATE_LIMITS: &str = "ratelimit {\n    attestation = false\n    signing = false\n  }";

/// A port nothing listens on right now, for a process the test starts to bind later.
/// Taken below the kernel's ephemeral range: a port the kernel handed out (bind to port 0)
/// can be taken by an outgoing connection's local end before the process binds it, which
/// made a drill's replica fail with "Address already in use". Never the same port twice in
/// one test process; processes start at different points (by pid).
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOWEST: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next().and_then(|low| low.parse::<u32>().ok()))
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(LOWEST);
    if span < 5_000 {
        return TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
    }
    let start = std::process::id().wrapping_mul(7_919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < span, "no free port left below {ephemeral_low}");
        let port = u16::try_from(LOWEST + (start + n) % span).expect("below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The path of a workspace binary: beside the running program (a binary such as
/// `testudo-chaos`), or beside its `deps` directory (a test).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the program's own path");
    let dir = exe.parent().expect("the program's directory");
    let candidates = [dir.join(name), dir.parent().map(|d| d.join(name)).unwrap_or_default()];
    let found = candidates.iter().find(|p| p.is_file());
    found.cloned().unwrap_or_else(|| {
        panic!(
            "{name} is missing beside {}: build the workspace first (`cargo build --workspace`; `make test` does)",
            dir.display()
        )
    })
}

/// Whether a Unix socket accepts connections. Its file appears at bind(), a moment before
/// listen(): a file alone does not mean it is ready.
pub fn accepts(socket: &std::path::Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

/// A plain HTTP/1.1 GET on loopback: (status code, body); (0, "") if nothing answers.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// Resident memory of process `pid` now and at its peak (VmRSS, VmHWM), in KiB, from /proc.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok();
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The time now as the logs write it (UTC, RFC 3339), to find a fault's moment in them.
pub fn utc_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| now.to_string())
}

/// Polls `ok` until it holds, or panics naming `what` after `within`.
pub fn wait_until(within: Duration, mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes a cluster CA for declarative formation (trust domain example.org) as an operator
/// does: `testudo-server cluster new-ca`, the certificate to `cert` and the key to `key`.
pub fn new_cluster_ca(cert: &std::path::Path, key: &std::path::Path) {
    let out = std::process::Command::new(binary("testudo-server"))
        .args(["cluster", "new-ca", "--trust-domain", "example.org", "--cert"])
        .arg(cert)
        .arg("--key")
        .arg(key)
        .output()
        .expect("testudo-server cluster new-ca");
    assert!(out.status.success(), "cluster new-ca: {}", String::from_utf8_lossy(&out.stderr));
}

/// From `cluster status --output json`: this replica's node id and the voters' ids (sorted),
/// once it follows a leader and is one of the voters.
pub fn voters_of(status: &serde_json::Value) -> Option<(u64, Vec<u64>)> {
    status["leader"].as_u64()?;
    let me = status["node_id"].as_u64()?;
    let mut voters: Vec<u64> = status["members"]
        .as_array()?
        .iter()
        .filter(|m| m["voter"].as_bool() == Some(true))
        .filter_map(|m| m["node_id"].as_u64())
        .collect();
    voters.sort_unstable();
    voters.contains(&me).then_some((me, voters))
}
