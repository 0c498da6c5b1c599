//! One `testudo-agent` process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{binary, wait_until};

/// An agent, its directory and Workload API socket.
pub struct AgentProcess {
    pub dir: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl AgentProcess {
    /// Starts an agent under `root` that attests with `join_token` to `servers`, trusting
    /// `bundle_pem`, and syncs every `sync_interval` (e.g. `"1s"`). It logs at INFO;
    /// set RUST_LOG for more.
    pub fn start(root: &Path, servers: &[String], bundle_pem: &str, join_token: &str, sync_interval: &str) -> Self {
        Self::start_with_attestor(
            root,
            servers,
            bundle_pem,
            &format!("join_token = \"{join_token}\""),
            r#"NodeAttestor "join_token" {}"#,
            sync_interval,
            "",
        )
    }

    /// [`Self::start`] with the unix attestor reading the caller's binary path and digest
    /// (`discover_workload_path`), so entries can select processes by `unix:path:` (a
    /// downstream cluster's server processes, say).
    pub fn start_discovering_paths(
        root: &Path,
        servers: &[String],
        bundle_pem: &str,
        join_token: &str,
        sync_interval: &str,
    ) -> Self {
        Self::start_edited(root, servers, bundle_pem, join_token, sync_interval, |config| {
            config.replace(
                r#"WorkloadAttestor "unix" {}"#,
                "WorkloadAttestor \"unix\" {\n plugin_data {\n discover_workload_path = true\n }\n }",
            )
        })
    }

    /// [`Self::start`] for an agent of `trust_domain` rather than example.org.
    pub fn start_in(
        root: &Path,
        trust_domain: &str,
        servers: &[String],
        bundle_pem: &str,
        join_token: &str,
        sync_interval: &str,
    ) -> Self {
        Self::start_edited(root, servers, bundle_pem, join_token, sync_interval, |config| {
            config.replace("trust_domain = \"example.org\"", &format!("trust_domain = \"{trust_domain}\""))
        })
    }

    /// [`Self::start`] with its config text passed through `edit` first.
    fn start_edited(
        root: &Path,
        servers: &[String],
        bundle_pem: &str,
        join_token: &str,
        sync_interval: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        let dir = root.join("agent");
        std::fs::create_dir_all(&dir).expect("agent dir");
        std::fs::write(dir.join("bundle.pem"), bundle_pem).expect("bundle file");
        let config = Self::config_text(
            root,
            servers,
            &format!("join_token = \"{join_token}\""),
            r#"NodeAttestor "join_token" {}"#,
            sync_interval,
            "",
        );
        Self::start_configured(root, &edit(config), &[])
    }

    /// An agent whose `agent { }` block also holds `agent_extra`, whose node attestor block
    /// is `node_attestor`, and whose file ends with `extra_blocks` (e.g. `health_checks`).
    pub fn start_with_attestor(
        root: &Path,
        servers: &[String],
        bundle_pem: &str,
        agent_extra: &str,
        node_attestor: &str,
        sync_interval: &str,
        extra_blocks: &str,
    ) -> Self {
        let dir = root.join("agent");
        std::fs::create_dir_all(&dir).expect("agent dir");
        std::fs::write(dir.join("bundle.pem"), bundle_pem).expect("bundle file");
        Self::start_configured(
            root,
            &Self::config_text(root, servers, agent_extra, node_attestor, sync_interval, extra_blocks),
            &[],
        )
    }

    /// The config file [`Self::start_with_attestor`] writes (trusting `<root>/agent/bundle.pem`),
    /// for tests that change it before [`Self::start_configured`].
    pub fn config_text(
        root: &Path,
        servers: &[String],
        agent_extra: &str,
        node_attestor: &str,
        sync_interval: &str,
        extra_blocks: &str,
    ) -> String {
        let servers: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
        format!(
            r#"agent {{
  data_dir = "{dir}/data"
  server_address = [{servers}]
  trust_domain = "example.org"
  trust_bundle_path = "{dir}/bundle.pem"
  socket_path = "{dir}/api.sock"
  {agent_extra}
  sync_interval = "{sync_interval}"
  log_level = "INFO"
}}
plugins {{
  {node_attestor}
  KeyManager "disk" {{}}
  WorkloadAttestor "unix" {{}}
}}
{extra_blocks}
"#,
            dir = root.join("agent").display(),
            servers = servers.join(", "),
        )
    }

    /// Starts an agent under `root` with this config text and these extra environment
    /// variables.
    pub fn start_configured(root: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        let dir = root.join("agent");
        std::fs::create_dir_all(&dir).expect("agent dir");
        std::fs::write(dir.join("agent.hcl"), config).expect("agent config");
        let mut agent =
            Self { dir, child: None, env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        agent.restart();
        agent
    }

    /// Sets (`Some`) or removes (`None`) an environment variable for the next (re)start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_owned(), value.to_owned()));
        }
    }

    pub fn restart(&mut self) {
        // A killed agent leaves its socket file behind; readiness means a new one.
        let _ = std::fs::remove_file(self.socket());
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("agent.log")).expect("agent log");
        let child = Command::new(binary("testudo-agent"))
            .args(["run", "--config"])
            .arg(self.dir.join("agent.hcl"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("testudo-agent starts");
        self.child = Some(child);
        let socket = self.socket();
        let child = self.child.as_mut().expect("just started");
        wait_until(
            Duration::from_secs(20),
            || super::accepts(&socket) || child.try_wait().ok().flatten().is_some(),
            "the agent's Workload API socket",
        );
        assert!(super::accepts(&socket), "the agent exited at start-up:\n{}", self.log());
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
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
        self.dir.join("api.sock")
    }

    /// The socket as the SPIFFE libraries name endpoints: `unix:<path>`.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
