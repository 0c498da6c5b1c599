//! A local AWS KMS: moto's server (PyPI `moto[server]`, in the test venv) on a free
//! loopback port, stopped when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

/// Test credentials: moto accepts any.
pub const ACCESS_KEY_ID: &str = "testudo-test";
pub const SECRET_ACCESS_KEY: &str = "testudo-test-secret";
pub const REGION: &str = "us-east-1";

/// A running moto server.
pub struct MotoServer {
    pub port: u16,
    child: Child,
}

/// The test venv: `TESTUDO_VENV`, or `.venv` at the workspace root.
fn venv() -> String {
    std::env::var("TESTUDO_VENV").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv").to_string())
}

/// The venv's Python, which has boto3 (moto depends on it) to read KMS with.
pub fn python() -> std::path::PathBuf {
    format!("{}/bin/python", venv()).into()
}

/// The venv's `moto_server` program.
pub fn server_program() -> std::path::PathBuf {
    format!("{}/bin/moto_server", venv()).into()
}

impl MotoServer {
    /// Starts `moto_server` from the venv (`TESTUDO_VENV`, or `.venv` at the workspace root).
    pub fn start() -> Self {
        let venv = venv();
        let port = free_port();
        let child = Command::new(server_program())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{venv}/bin/moto_server: {e} (make test installs moto[server] into the venv)"));
        let server = Self { port, child };
        wait_until(
            Duration::from_secs(30),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "moto_server to listen",
        );
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment a process needs to reach it with the AWS SDK's default chain.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
