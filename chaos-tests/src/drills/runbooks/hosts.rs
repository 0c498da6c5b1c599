//! Hosts laid out as docs/deploy.md installs them, for the runbook drills to type into.
//!
//! Each host is a network namespace of its own (`testkit::netns`), named in a shared
//! `/etc/hosts` as `<name>.testudo.internal`. A command "on" a host runs in that namespace
//! with the host's own directories bind-mounted where an installed host has them
//! (`/etc/testudo`, `/var/lib/testudo`, `/run/testudo-server`, `/usr/local/bin`, …) and an
//! `/etc/passwd` that has the `testudo` user, so a runbook's commands run exactly as written.
//! `systemctl` is a stand-in (`systemctl.sh`) that runs the units of deploy/systemd.
//! Needs root (namespaces, bind mounts), as the partition drills do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::netns::{MountPoints, Network};

/// Where an installed host keeps what the runbooks touch, and the directory of each host's
/// own files that stands for it.
const MOUNTS: [(&str, &str); 7] = [
    ("/etc/testudo", "etc"),
    ("/var/lib/testudo", "lib"),
    ("/run/testudo-server", "run-server"),
    ("/run/testudo-agent", "run-agent"),
    ("/var/backups/testudo", "backups"),
    ("/var/tmp/testudo-upgrade", "staging"),
    ("/usr/local/bin", "bin"),
];

/// Files every host sees in place of the machine's.
const FILES: [(&str, &str); 3] = [("/etc/hosts", "hosts"), ("/etc/passwd", "passwd"), ("/etc/group", "group")];

/// The service user's ids (deploy/install.sh creates `testudo` as a system user).
const SERVICE_ID: u32 = 61_234;

/// The hosts' DNS domain, as deploy/systemd's example configs name them.
pub(crate) const DOMAIN: &str = "testudo.internal";

/// Where a replica's admin socket is on an installed host.
pub(crate) const ADMIN_SOCKET: &str = "/run/testudo-server/api.sock";

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// The hosts of one drill.
pub(crate) struct Hosts {
    names: Vec<String>,
    dir: PathBuf,
    shims: PathBuf,
    network: Network,
    _mount_points: MountPoints,
}

impl Hosts {
    /// Makes hosts `names` under `root`, each with the binaries installed in
    /// `/usr/local/bin` and nothing else.
    pub(crate) fn create(root: &Path, names: &[&str]) -> Result<Self, String> {
        let network = Network::create(names.len())?;
        let dir = root.join("hosts");
        let shims = root.join("shims");
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        std::fs::create_dir_all(&shims).map_err(|e| io("shims", e))?;
        let systemctl = shims.join("systemctl");
        std::fs::write(&systemctl, include_str!("systemctl.sh")).map_err(|e| io("systemctl", e))?;
        set_mode(&systemctl, 0o755)?;

        let hosts_file: String = std::iter::once("127.0.0.1 localhost\n".to_owned())
            .chain(names.iter().enumerate().map(|(i, n)| format!("{} {n}.{DOMAIN} {n}\n", network.address(i))))
            .collect();
        let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| io("/etc/passwd", e))?
            + &format!("testudo:x:{SERVICE_ID}:{SERVICE_ID}:Testudo:/var/lib/testudo:/usr/sbin/nologin\n");
        let group = std::fs::read_to_string("/etc/group").map_err(|e| io("/etc/group", e))?
            + &format!("testudo:x:{SERVICE_ID}:\n");
        for name in names {
            let host = dir.join(name);
            for (_, own) in MOUNTS {
                std::fs::create_dir_all(host.join(own)).map_err(|e| io(own, e))?;
                set_mode(&host.join(own), 0o755)?;
            }
            std::fs::write(host.join("hosts"), &hosts_file).map_err(|e| io("hosts", e))?;
            std::fs::write(host.join("passwd"), &passwd).map_err(|e| io("passwd", e))?;
            std::fs::write(host.join("group"), &group).map_err(|e| io("group", e))?;
            for binary in ["testudo-server", "testudo-agent"] {
                place_binary(&testkit::binary(binary), &host.join("bin").join(binary))?;
            }
        }
        // Parents first, so each one made is removed after what it holds.
        let paths: Vec<&str> = std::iter::once("/var/backups").chain(MOUNTS.iter().map(|(path, _)| *path)).collect();
        let mount_points = MountPoints::make(&paths);
        Ok(Self {
            names: names.iter().map(|n| n.to_string()).collect(),
            dir,
            shims,
            network,
            _mount_points: mount_points,
        })
    }

    pub(crate) fn has(&self, host: &str) -> bool {
        self.names.iter().any(|n| n == host)
    }

    fn index(&self, host: &str) -> usize {
        self.names.iter().position(|n| n == host).unwrap_or_else(|| panic!("no host {host}"))
    }

    /// The host's own directory: `etc`, `lib`, `bin`, … stand for its installed paths;
    /// `log/` holds its services' output.
    pub(crate) fn dir(&self, host: &str) -> PathBuf {
        self.dir.join(host)
    }

    /// `<host>.testudo.internal`.
    pub(crate) fn fqdn(host: &str) -> String {
        format!("{host}.{DOMAIN}")
    }

    /// Installs a replica on `host` as docs/deploy.md does: its config as
    /// `/etc/testudo/server.hcl`, the cluster CA (`ca_dir` holds `cluster-ca.crt` and
    /// `cluster-ca.key`, made by `cluster new-ca`) readable by the service's group, and a node CA for
    /// `x509pop`.
    pub(crate) fn install_server(&self, host: &str, config: &str, ca_dir: &Path) -> Result<(), String> {
        let etc = self.dir(host).join("etc");
        let write = |name: &str, bytes: &[u8], mode: u32| -> Result<(), String> {
            let path = etc.join(name);
            std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            set_mode(&path, mode)?;
            std::os::unix::fs::chown(&path, Some(0), Some(SERVICE_ID)).map_err(|e| format!("{}: {e}", path.display()))
        };
        let read = |name: &str| std::fs::read(ca_dir.join(name)).map_err(|e| format!("{name}: {e}"));
        write("server.hcl", config.as_bytes(), 0o644)?;
        write("cluster-ca.crt", &read("cluster-ca.crt")?, 0o644)?;
        write("cluster-ca.key", &read("cluster-ca.key")?, 0o640)?;
        write("node-ca.pem", &read("cluster-ca.crt")?, 0o644)
    }

    /// Copies this build's binaries to `host`'s `/var/tmp/testudo-upgrade`, as the new
    /// release an upgrade would stage there.
    pub(crate) fn stage_upgrade(&self, host: &str) -> Result<(), String> {
        let staging = self.dir(host).join("staging");
        for binary in ["testudo-server", "testudo-agent"] {
            place_binary(&testkit::binary(binary), &staging.join(binary))?;
        }
        Ok(())
    }

    /// Runs `script` on `host` as root with bash's `-euo pipefail`, as an operator with a
    /// root shell there would; stopped after `limit`. Answers its standard output, or what
    /// went wrong with both outputs.
    pub(crate) fn run(&self, host: &str, script: &str, limit: Duration) -> Result<String, String> {
        let dir = self.dir(host);
        let mut mounts = String::from("set -e\n");
        for (path, own) in MOUNTS.iter().chain(FILES.iter()) {
            mounts.push_str(&format!("mount --bind \"$TESTUDO_DRILL_HOST/{own}\" {path}\n"));
        }
        mounts.push_str(&format!("cd /\nexec timeout -k 5 {} bash -euo pipefail -c \"$1\"\n", limit.as_secs().max(1)));
        let launcher = self.network.launcher(self.index(host));
        let out = Command::new(&launcher[0])
            .args(&launcher[1..])
            .args(["bash", "-c", &mounts, host, script])
            .env("TESTUDO_DRILL_HOST", &dir)
            .env("TESTUDO_DRILL_UNITS", repo().join("deploy/systemd"))
            .env("PATH", format!("{}:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", self.shims.display()))
            .output()
            .map_err(|e| format!("ip netns exec: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            let code = out.status.code().map_or("a signal".to_owned(), |c| c.to_string());
            Err(format!(
                "on {host}, exit {code}{}:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
                if out.status.code() == Some(124) { " (timed out)" } else { "" },
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `testudo-server <args> --output json` against the replica on `host`.
    pub(crate) fn admin(&self, host: &str, args: &str) -> Result<serde_json::Value, String> {
        let out = self.run(
            host,
            &format!("testudo-server {args} --socket-path {ADMIN_SOCKET} --output json"),
            Duration::from_secs(30),
        )?;
        serde_json::from_str(&out).map_err(|e| format!("{args} on {host}: {e}: {out}"))
    }

    /// The host is gone with everything on it: its processes killed (-9), its installed
    /// files and state deleted. Its empty directories stay, for a new install.
    pub(crate) fn lose(&self, host: &str) {
        self.kill_processes(&self.dir(host));
        for (_, own) in MOUNTS {
            if own == "bin" {
                continue;
            }
            let path = self.dir(host).join(own);
            let _ = std::fs::remove_dir_all(&path);
            let _ = std::fs::create_dir_all(&path);
            let _ = set_mode(&path, 0o755);
        }
    }

    /// Takes `host`'s network link down (`false`) or up: cut off from every other host.
    pub(crate) fn set_link(&self, host: &str, up: bool) -> Result<(), String> {
        self.network.set_link(self.index(host), up)
    }

    /// Starts `program` on `host` (its network only: none of the host's directories), for a
    /// process the drill runs itself; its output goes to `log` if given. It is the caller's
    /// to stop.
    pub(crate) fn spawn(
        &self,
        host: &str,
        program: &Path,
        args: &[&str],
        log: Option<&Path>,
    ) -> Result<std::process::Child, String> {
        let launcher = self.network.launcher(self.index(host));
        let output = match log {
            Some(path) => std::process::Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            None => std::process::Stdio::null(),
        };
        Command::new(&launcher[0])
            .args(&launcher[1..])
            .arg(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(output)
            .spawn()
            .map_err(|e| format!("{}: {e}", program.display()))
    }

    /// `host`'s address on the drill's network.
    pub(crate) fn ip(&self, host: &str) -> std::net::IpAddr {
        self.network.address(self.index(host))
    }

    /// Installs the binaries in `dir` as `host`'s `/usr/local/bin/testudo-*`.
    pub(crate) fn install_binaries(&self, host: &str, dir: &Path) -> Result<(), String> {
        for binary in ["testudo-server", "testudo-agent"] {
            place_binary(&dir.join(binary), &self.dir(host).join("bin").join(binary))?;
        }
        Ok(())
    }

    /// Whether `host`'s `/usr/local/bin/<binary>` holds the same bytes as `other`.
    pub(crate) fn runs_binary(&self, host: &str, binary: &str, other: &Path) -> bool {
        let installed = std::fs::read(self.dir(host).join("bin").join(binary));
        matches!((installed, std::fs::read(other)), (Ok(a), Ok(b)) if a == b)
    }

    /// Gives `host`'s services these environment variables, as an instance role or a
    /// drop-in would (the `systemctl` stand-in reads them).
    pub(crate) fn set_service_env(&self, host: &str, env: &[(&str, String)]) -> Result<(), String> {
        let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(self.dir(host).join("service.env"), text).map_err(|e| e.to_string())
    }

    fn kill_processes(&self, host_dir: &Path) {
        let Ok(pids) = std::fs::read_dir(host_dir.join("pids")) else { return };
        for pidfile in pids.flatten() {
            if let Some(pid) = std::fs::read_to_string(pidfile.path()).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
                // The pid file names a process this drill's stand-in started; a stale one is
                // at worst a process that already ended.
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).output();
            }
            let _ = std::fs::remove_file(pidfile.path());
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            self.kill_processes(&self.dir.join(name));
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A hard link to the build's binary (a copy if the link fails): an upgrade with `install`
/// replaces the link, never the build's file.
fn place_binary(from: &Path, to: &Path) -> Result<(), String> {
    let _ = std::fs::remove_file(to);
    std::fs::hard_link(from, to)
        .or_else(|_| std::fs::copy(from, to).map(|_| ()))
        .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))
}

/// The example config of deploy/systemd for `host` in a cluster of `peers` (the first three
/// found it). The SPIFFE CA keys are in the AWS KMS at `kms_endpoint` (region us-east-1), or in
/// memory without one.
pub(crate) fn server_config(host: &str, peers: &[&str], kms_endpoint: Option<&str>) -> String {
    let example =
        std::fs::read_to_string(repo().join("deploy/systemd/server-aws-kms.hcl")).expect("the example config");
    let region = "      region = \"eu-west-1\"\n";
    let config = match kms_endpoint {
        Some(endpoint) => {
            replace_once(&example, region, &format!("      region = \"us-east-1\"\n      endpoint = \"{endpoint}\"\n"))
        }
        None => replace_once(
            &example,
            &format!("  KeyManager \"aws_kms\" {{\n    plugin_data {{\n{region}    }}\n  }}\n"),
            "  KeyManager \"memory\" {}\n",
        ),
    };
    let config = replace_once(
        &config,
        "raft_advertise_address = \"r1.testudo.internal:8082\"",
        &format!("raft_advertise_address = \"{}:8082\"", Hosts::fqdn(host)),
    );
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{}:8082\"", Hosts::fqdn(p))).collect();
    let old_peers =
        config.lines().find(|l| l.trim_start().starts_with("peers ")).expect("peers in the example").to_owned();
    replace_once(&config, &old_peers, &format!("  peers            = [{}]", peers.join(", ")))
}

/// `text` with `from` replaced by `to`; panics if `from` is not there exactly once, so an
/// edited example is noticed.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "the example config changed: {from:?} is not in it once");
    text.replacen(from, to, 1)
}
