//! One `testudo-server` replica process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::{binary, free_port, wait_until};

/// How a replica is configured beyond the harness's defaults.
#[derive(Clone, Debug, Default)]
pub struct ReplicaOptions {
    /// Lines added to the `server { }` block (e.g. `default_x509_svid_ttl = "1m"`).
    pub server_extra: String,
    /// Lines added to `plugins { }`; one naming a `KeyManager` replaces the `memory` one.
    pub plugins_extra: String,
    /// Lines added to `cluster { }` (e.g. `snapshot_every = 100`).
    pub cluster_extra: String,
    pub env: Vec<(String, String)>,
    /// The cluster RPC's listen address; a free port on 127.0.0.1 by default.
    pub raft_bind: Option<SocketAddr>,
    /// The data directory; `<replica dir>/data` by default.
    pub data_dir: Option<PathBuf>,
    /// Leave heartbeat and election timeout at the server's defaults instead of the
    /// harness's fast ones (50 ms / 300 ms), as the failover benchmark must.
    pub default_timing: bool,
    /// The trust domain; `example.org` by default.
    pub trust_domain: Option<String>,
    /// A command the server runs under, e.g. `["fiu-run", "-x"]` to inject I/O errors.
    pub launcher: Vec<String>,
    /// The replica forms or joins its cluster by itself (`cluster_extra` names the peers
    /// and the CA files): its config names no `node_id`.
    pub declarative: bool,
}

/// A replica, its directory and ports.
pub struct ServerProcess {
    pub id: u64,
    pub api_port: u16,
    pub raft_port: u16,
    /// `/live` and `/ready`.
    pub health_port: u16,
    /// Prometheus `/metrics`.
    pub metrics_port: u16,
    pub dir: PathBuf,
    /// Where its state lives (`<dir>/data` unless the options put it elsewhere).
    pub data_dir: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    launcher: Vec<String>,
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
        let options = ReplicaOptions {
            server_extra: server_extra.to_owned(),
            plugins_extra: plugins_extra.to_owned(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        Self::start_with(root, id, &options)
    }

    /// Writes the config of replica `id` under `root`, as `options` shape it, and starts it.
    pub fn start_with(root: &Path, id: u64, options: &ReplicaOptions) -> Self {
        let dir = root.join(format!("replica-{id}"));
        std::fs::create_dir_all(&dir).expect("replica dir");
        let (api_port, health_port, metrics_port) = (free_port(), free_port(), free_port());
        let raft_bind = options.raft_bind.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let data_dir = options.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        let config = format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = {api_port}
  socket_path = "{dir}/admin.sock"
  trust_domain = "{trust_domain}"
  data_dir = "{data_dir}"
  {server_extra}
}}
plugins {{
  {key_manager}
  NodeAttestor "join_token" {{}}
  {plugins_extra}
}}
cluster {{
  {node_id}
  raft_bind_address = "{raft_bind}"
  {timing}
  {cluster_extra}
}}
health_checks {{
  listener_enabled = true
  bind_address = "127.0.0.1"
  bind_port = "{health_port}"
}}
telemetry {{
  Prometheus {{
    host = "127.0.0.1"
    port = {metrics_port}
  }}
}}
"#,
            dir = dir.display(),
            data_dir = data_dir.display(),
            trust_domain = options.trust_domain.as_deref().unwrap_or("example.org"),
            server_extra = options.server_extra,
            plugins_extra = options.plugins_extra,
            cluster_extra = options.cluster_extra,
            node_id = if options.declarative { String::new() } else { format!("node_id = {id}") },
            timing = if options.default_timing {
                ""
            } else {
                "heartbeat_interval = \"50ms\"\n  election_timeout = \"300ms\""
            },
            key_manager = if options.plugins_extra.contains("KeyManager") { "" } else { r#"KeyManager "memory" {}"# },
        );
        std::fs::write(dir.join("server.hcl"), config).expect("server config");
        let mut server = Self {
            id,
            api_port,
            raft_port: raft_bind.port(),
            health_port,
            metrics_port,
            dir,
            data_dir,
            child: None,
            env: options.env.clone(),
            launcher: options.launcher.clone(),
        };
        server.restart();
        server
    }

    /// A one-replica cluster of `trust_domain` under `root`, serving its SPIFFE bundle
    /// endpoint (`https_spiffe`) on 127.0.0.1:`port`: a federation partner.
    pub fn federation_partner(root: &Path, trust_domain: &str, port: u16) -> Self {
        let options = ReplicaOptions {
            trust_domain: Some(trust_domain.into()),
            server_extra: format!(
                "federation {{\n bundle_endpoint {{\n address = \"127.0.0.1\"\n port = {port}\n \
                 profile \"https_spiffe\" {{}}\n }}\n }}"
            ),
            ..Default::default()
        };
        let server = Self::start_with(root, 1, &options);
        server.json(&["cluster", "init"]);
        server
    }

    /// Starts `n` replicas under `root` and forms one cluster: replica 1 initialises, the
    /// others join with one-time invites.
    pub fn cluster(root: &Path, n: u64, server_extra: &str) -> Vec<Self> {
        Self::cluster_with(root, n, server_extra, "", &[])
    }

    /// As [`Self::cluster`], each replica started as by [`Self::start_with_env`].
    pub fn cluster_with(
        root: &Path,
        n: u64,
        server_extra: &str,
        plugins_extra: &str,
        env: &[(&str, &str)],
    ) -> Vec<Self> {
        let servers: Vec<Self> =
            (1..=n).map(|id| Self::start_with_env(root, id, server_extra, plugins_extra, env)).collect();
        Self::form_cluster(&servers);
        servers
    }

    /// Forms one cluster of started, pristine replicas: the first initialises, the others
    /// join with one-time invites.
    pub fn form_cluster(servers: &[Self]) {
        servers[0].json(&["cluster", "init"]);
        for server in &servers[1..] {
            server.join(&servers[0]);
        }
    }

    /// Joins this pristine replica to `member`'s cluster with a one-time invite.
    pub fn join(&self, member: &Self) {
        let token = member.invite("600");
        self.json(&["cluster", "join", "--token", &token]);
    }

    /// A one-time invite to this replica's cluster, valid for `ttl_seconds`.
    pub fn invite(&self, ttl_seconds: &str) -> String {
        let invite = self.json(&["cluster", "invite", "--ttl", ttl_seconds]);
        invite["token"].as_str().expect("an invite token").to_owned()
    }

    /// `cluster status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        self.json(&["cluster", "status"])
    }

    /// Sets (`Some`) or removes (`None`) an environment variable for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Starts the process again (after `kill`), on the same data and ports.
    pub fn restart(&mut self) {
        if let Err(log) = self.try_restart() {
            panic!("replica {} exited at start-up:\n{log}", self.id);
        }
    }

    /// As [`Self::restart`], answering the replica's log when it exits at start-up (a data
    /// dir it refuses, say) instead of panicking.
    pub fn try_restart(&mut self) -> Result<(), String> {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("server log");
        let mut command = match self.launcher.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary("testudo-server"));
                command
            }
            None => Command::new(binary("testudo-server")),
        };
        let child = command
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
            || super::accepts(&socket) || child.try_wait().ok().flatten().is_some(),
            &format!("replica {}'s admin socket", self.id),
        );
        if super::accepts(&socket) {
            Ok(())
        } else {
            Err(self.log())
        }
    }

    /// How the process ended, if it has (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the process to exit: a clean stop.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let mut child = self.child.take().expect("the replica runs");
        child.wait().expect("the replica exits")
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

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Resident memory now and at its peak (VmRSS, VmHWM), in KiB, from /proc.
    pub fn memory_kib(&self) -> Option<(u64, u64)> {
        super::memory_kib(self.pid()?)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn api_address(&self) -> String {
        format!("127.0.0.1:{}", self.api_port)
    }

    /// Any CLI command against this replica's admin socket.
    pub fn command(&self, args: &[&str]) -> Output {
        Command::new(binary("testudo-server"))
            .args(args)
            .arg("--socket-path")
            .arg(self.socket())
            .output()
            .expect("testudo-server CLI")
    }

    /// A CLI command that must succeed, with `--output json`.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(binary("testudo-server"))
            .args(args)
            .arg("--socket-path")
            .arg(self.socket())
            .args(["--output", "json"])
            .output()
            .expect("testudo-server CLI");
        assert!(
            out.status.success(),
            "replica {}: {args:?} failed: {}\nlog:\n{}",
            self.id,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// Whether this replica answers a linearizable read (`entry count`) within `within`,
    /// asking every 200 ms: it has a leader and has caught up to it.
    pub fn serves_within(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.command(&["entry", "count"]).status.success() {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
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
