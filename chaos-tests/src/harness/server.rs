//! One `testudo-server` replica process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{binary, free_port, wait_until};

/// A replica, its directory and ports.
pub struct ServerProcess {
    pub id: u64,
    pub api_port: u16,
    pub raft_port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl ServerProcess {
    /// Writes the config of replica `id` under `root` and starts it. `server_extra` goes
    /// into the `server { }` block (e.g. `default_x509_svid_ttl = "1m"`).
    pub fn start(root: &Path, id: u64, server_extra: &str) -> Self {
        Self::start_with_plugins(root, id, server_extra, "")
    }

    /// As [`Self::start`], with `plugins_extra` added to the `plugins { }` block.
    pub fn start_with_plugins(root: &Path, id: u64, server_extra: &str, plugins_extra: &str) -> Self {
        Self::start_with_env(root, id, server_extra, plugins_extra, &[])
    }

    /// As [`Self::start_with_plugins`], with extra environment variables for the process.
    /// When `plugins_extra` names a `KeyManager`, it replaces the default `memory` one.
    pub fn start_with_env(root: &Path, id: u64, server_extra: &str, plugins_extra: &str, env: &[(&str, &str)]) -> Self {
        let dir = root.join(format!("replica-{id}"));
        std::fs::create_dir_all(&dir).expect("replica dir");
        let (api_port, raft_port) = (free_port(), free_port());
        let config = format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = {api_port}
  socket_path = "{dir}/admin.sock"
  trust_domain = "example.org"
  data_dir = "{dir}/data"
  {server_extra}
}}
plugins {{
  {key_manager}
  NodeAttestor "join_token" {{}}
  {plugins_extra}
}}
cluster {{
  node_id = {id}
  raft_bind_address = "127.0.0.1:{raft_port}"
  heartbeat_interval = "50ms"
  election_timeout = "300ms"
}}
"#,
            dir = dir.display(),
            key_manager = if plugins_extra.contains("KeyManager") { "" } else { r#"KeyManager "memory" {}"# },
        );
        std::fs::write(dir.join("server.hcl"), config).expect("server config");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut server = Self { id, api_port, raft_port, dir, child: None, env };
        server.restart();
        server
    }

    /// Starts `n` replicas under `root` and forms one cluster: replica 1 initialises, the
    /// others join with one-time invites.
    pub fn cluster(root: &Path, n: u64, server_extra: &str) -> Vec<Self> {
        Self::cluster_with(root, n, server_extra, "", &[])
    }

    /// As [`Self::cluster`], each replica started as by [`Self::start_with_env`].
    pub fn cluster_with(root: &Path, n: u64, server_extra: &str, plugins_extra: &str, env: &[(&str, &str)]) -> Vec<Self> {
        let servers: Vec<Self> = (1..=n).map(|id| Self::start_with_env(root, id, server_extra, plugins_extra, env)).collect();
        servers[0].json(&["cluster", "init"]);
        for server in &servers[1..] {
            let invite = servers[0].json(&["cluster", "invite", "--ttl", "600"]);
            let token = invite["token"].as_str().expect("an invite token").to_owned();
            server.json(&["cluster", "join", "--token", &token]);
        }
        servers
    }

    /// Starts the process again (after `kill`), on the same data and ports.
    pub fn restart(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).expect("server log");
        let child = Command::new(binary("testudo-server"))
            .args(["run", "--config"])
            .arg(self.dir.join("server.hcl"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("testudo-server starts");
        self.child = Some(child);
        let socket = self.socket();
        let child = self.child.as_mut().expect("just started");
        wait_until(
            Duration::from_secs(20),
            || socket.exists() || child.try_wait().ok().flatten().is_some(),
            &format!("replica {}'s admin socket", self.id),
        );
        assert!(socket.exists(), "replica {} exited at start-up:\n{}", self.id, self.log());
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stops answering but keeps its sockets, as a hung machine does.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().expect("kill(1)");
            assert!(status.success(), "kill {signal} {}", child.id());
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn api_address(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    /// Any CLI command against this replica's admin socket.
    pub fn command(&self, args: &[&str]) -> Output {
        Command::new(binary("testudo-server")).args(args).arg("--socket-path").arg(self.socket()).output().expect("testudo-server CLI")
    }

    /// A CLI command that must succeed, with `--output json`.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(binary("testudo-server")).args(args).arg("--socket-path").arg(self.socket()).args(["--output", "json"]).output().expect("testudo-server CLI");
        assert!(out.status.success(), "replica {}: {args:?} failed: {}\nlog:\n{}", self.id, String::from_utf8_lossy(&out.stderr), self.log());
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// The trust bundle as PEM, once the CA has published one.
    pub fn bundle_pem(&self) -> String {
        let mut pem = String::new();
        wait_until(
            Duration::from_secs(20),
            || {
                let out = self.command(&["bundle", "show"]);
                pem = String::from_utf8_lossy(&out.stdout).into_owned();
                out.status.success() && pem.contains("BEGIN CERTIFICATE")
            },
            "the CA to publish a bundle",
        );
        pem
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
