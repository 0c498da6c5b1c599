//! Real `testudo-server` and `testudo-agent` processes on loopback, each with its own
//! directory, free ports and log file; killed when dropped, even when a test panics.
//! The binaries come from the same target directory as the test (`make test` builds them).

mod agent;
pub mod pki;
mod server;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use agent::AgentProcess;
pub use server::ServerProcess;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The path of a workspace binary, next to the running test's `deps` directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build the workspace first (`cargo build --workspace`; `make test` does)", path.display());
    path
}

/// Polls `ok` until it holds, or panics naming `what` after `within`.
pub fn wait_until(within: Duration, mut ok: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
