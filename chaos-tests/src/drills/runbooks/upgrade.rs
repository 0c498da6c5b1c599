//! Upgrade compatibility: a cluster of the build `deploy/upgrade-baseline` names (built by
//! `deploy/build-baseline.sh`) rolled to this build and back with docs/runbooks/rolling-upgrade.md,
//! while an agent serves a workload and a client writes through every replica in turn.
//! Agents go after the replicas on the way up and before them on the way back, as the
//! runbook says.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::hosts::{self, server_config, Hosts};
use super::{cluster_ca, drill, wait_for_voters, KillOnDrop, Runbook, MEMBERS};
use crate::drills::svid_watch::{uid_selector, JwtAsk, Watch, WEB};
use crate::drills::{runtime, Report, Settings};

pub const NAME_UPGRADE_COMPAT: &str = "upgrade_compat";

/// Short, so agents renew while the replicas are of mixed builds.
const SVID_TTL: &str = "20s";

/// The baseline's binaries, built if need be; `Err` says why not.
fn baseline() -> Result<PathBuf, String> {
    let script = hosts::repo().join("deploy/build-baseline.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed", script.display()));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The agent on its host, as one build or the other.
struct Agent {
    dir: PathBuf,
    process: Option<KillOnDrop>,
}

impl Agent {
    fn socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    /// Starts `binary` with the agent's config; waits until it serves the Workload API.
    fn start(&mut self, hosts: &Hosts, binary: &Path) -> Result<(), String> {
        let config = self.dir.join("agent.hcl");
        let config = config.to_str().ok_or("a non-UTF-8 path")?;
        let child = hosts.spawn("node1", binary, &["run", "--config", config], Some(&self.dir.join("agent.log")))?;
        self.process = Some(KillOnDrop(child));
        let socket = self.socket();
        testkit::wait_until(Duration::from_secs(60), || testkit::accepts(&socket), "the agent's Workload API");
        Ok(())
    }

    /// Stops it as its service manager would (SIGTERM).
    fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            let _ = std::process::Command::new("kill").args(["-TERM", &process.0.id().to_string()]).output();
            drop(process);
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

/// What a client writing through every replica in turn saw.
#[derive(Default)]
struct Written {
    acknowledged: usize,
    sent: usize,
    /// Writes refused by a replica that was up (not "cannot reach" its socket while it
    /// restarted): what builds that cannot work together would cause.
    refused: Vec<String>,
}

/// Writes entries through r1, r2, r3 in turn until `stop`, numbered from `first`, with
/// the new build's CLI (the admin API is the same gRPC API across builds).
fn write_while(hosts: &Hosts, stop: &AtomicBool, first: usize) -> Written {
    let mut written = Written::default();
    while !stop.load(Ordering::SeqCst) {
        let n = first + written.sent;
        let host = ["r1", "r2", "r3"][n % 3];
        // The staged new build's CLI: the one in /usr/local/bin is replaced under it.
        let create = format!(
            "/var/tmp/testudo-upgrade/testudo-server entry create --socket-path {} --spiffe-id spiffe://example.org/roll/{n} \
             --parent-id spiffe://example.org/node --selector unix:uid:{n} >/dev/null",
            hosts::ADMIN_SOCKET
        );
        written.sent += 1;
        match hosts.run(host, &create, Duration::from_secs(10)) {
            Ok(_) => written.acknowledged += 1,
            Err(e) => {
                let said = e.lines().last().unwrap_or_default().to_owned();
                if !said.contains("cannot reach") {
                    written.refused.push(format!("write {n} on {host}: {said}"));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    written
}

/// Runs `section` of the runbook while a client writes; answers what it saw.
fn section_under_writes(book: &mut Runbook, hosts: &Hosts, section: &str, first: usize) -> Result<Written, String> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| write_while(hosts, &stop, first));
        let outcome = book.section(hosts, section);
        stop.store(true, Ordering::SeqCst);
        let written = writer.join().unwrap_or_default();
        outcome.map(|_| written)
    })
}

pub fn upgrade_compat(_settings: &Settings) -> Report {
    drill(NAME_UPGRADE_COMPAT, |workdir, report| {
        let old = baseline()?;
        let new = testkit::binary("testudo-server").parent().ok_or("the build's directory")?.to_path_buf();
        let hosts = Hosts::create(workdir, &["r1", "r2", "r3", "node1"])?;
        let ca = cluster_ca(workdir)?;
        for host in MEMBERS {
            hosts.install_binaries(host, &old)?;
            hosts.stage_upgrade(host)?;
            let config = server_config(host, &MEMBERS, None)
                .replace(
                    "  NodeAttestor \"x509pop\" {",
                    "  NodeAttestor \"join_token\" {}\n  NodeAttestor \"x509pop\" {",
                )
                .replace("default_x509_svid_ttl = \"1h\"", &format!("default_x509_svid_ttl = \"{SVID_TTL}\""));
            hosts.install_server(host, &config, &ca)?;
            hosts.run(host, "systemctl enable --now testudo-server", Duration::from_secs(10))?;
        }
        let ids = wait_for_voters(&hosts, &MEMBERS, Duration::from_secs(60))?;

        let token = hosts.admin("r1", "token generate --ttl 600")?["value"]
            .as_str()
            .ok_or("token generate answered no value")?
            .to_owned();
        let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
        hosts.admin(
            "r1",
            &format!("entry create --spiffe-id {WEB} --parent-id {agent_id} --selector {}", uid_selector()),
        )?;
        let bundle = hosts.run(
            "r1",
            &format!("testudo-server bundle show --socket-path {}", hosts::ADMIN_SOCKET),
            Duration::from_secs(30),
        )?;
        let agent_root = workdir.join("node1");
        let servers: Vec<String> = MEMBERS.iter().map(|h| format!("{}:8081", hosts.ip(h))).collect();
        let config = testkit::AgentProcess::config_text(
            &agent_root,
            &servers,
            &format!("join_token = \"{token}\""),
            r#"NodeAttestor "join_token" {}"#,
            "1s",
            "",
        );
        let mut agent = Agent { dir: agent_root.join("agent"), process: None };
        std::fs::create_dir_all(&agent.dir).map_err(|e| e.to_string())?;
        std::fs::write(agent.dir.join("bundle.pem"), bundle).map_err(|e| e.to_string())?;
        std::fs::write(agent.dir.join("agent.hcl"), config).map_err(|e| e.to_string())?;
        agent.start(&hosts, &old.join("testudo-agent"))?;

        let runtime = runtime();
        let mut book = Runbook::load("rolling-upgrade.md", workdir);
        book.section(&hosts, "Before you start")?;

        // Up: the replicas one by one under the old agent, then the agent.
        let watch = Watch::start(&runtime, agent.socket(), WEB, JwtAsk::NewAudience);
        std::thread::sleep(Duration::from_secs(2));
        let up = section_under_writes(&mut book, &hosts, "Upgrade each replica in turn", 0)?;
        report.faults += MEMBERS.len();
        std::thread::sleep(Duration::from_secs(6));
        let mut part = Report::new(NAME_UPGRADE_COMPAT);
        watch.finish(&runtime).judge(2, &agent.log(), &mut part);
        report.absorb(part, "replicas old to new, old agent");
        for host in MEMBERS {
            report.check(hosts.runs_binary(host, "testudo-server", &new.join("testudo-server")), || {
                format!("{host} does not run the new build after the upgrade")
            });
        }
        agent.stop();
        agent.start(&hosts, &new.join("testudo-agent"))?;
        report.faults += 1;
        let watch = Watch::start(&runtime, agent.socket(), WEB, JwtAsk::NewAudience);
        std::thread::sleep(Duration::from_secs(12));
        let mut part = Report::new(NAME_UPGRADE_COMPAT);
        watch.finish(&runtime).judge(2, &agent.log(), &mut part);
        report.absorb(part, "new agent, new replicas");

        // Back: the agent first, then the replicas one by one.
        agent.stop();
        agent.start(&hosts, &old.join("testudo-agent"))?;
        report.faults += 1;
        let watch = Watch::start(&runtime, agent.socket(), WEB, JwtAsk::NewAudience);
        std::thread::sleep(Duration::from_secs(2));
        let back = section_under_writes(&mut book, &hosts, "Roll back", up.sent)?;
        report.faults += MEMBERS.len();
        std::thread::sleep(Duration::from_secs(6));
        let mut part = Report::new(NAME_UPGRADE_COMPAT);
        watch.finish(&runtime).judge(2, &agent.log(), &mut part);
        report.absorb(part, "replicas new to old, old agent");
        book.all_ran()?;
        for host in MEMBERS {
            report.check(hosts.runs_binary(host, "testudo-server", &old.join("testudo-server")), || {
                format!("{host} does not run the baseline build after the roll back")
            });
        }

        let after = wait_for_voters(&hosts, &MEMBERS, Duration::from_secs(10))?;
        report.check(after == ids, || format!("node ids were {ids:?}, now {after:?}"));
        let (acknowledged, sent) = (up.acknowledged + back.acknowledged, up.sent + back.sent);
        let refused: Vec<&String> = up.refused.iter().chain(&back.refused).collect();
        report.check(refused.is_empty(), || format!("replicas that were up refused writes: {refused:?}"));
        report.operations += sent;
        report.acknowledged += acknowledged;
        let mut fewest = usize::MAX;
        for host in MEMBERS {
            // The workload's entry and the writer's.
            let written = super::entry_count(&hosts, host)?.saturating_sub(1) as usize;
            fewest = fewest.min(written);
            report.check(written >= acknowledged && written <= sent, || {
                format!("{host} holds {written} of the writer's entries; {acknowledged} acknowledged of {sent} sent")
            });
        }
        report.lost_writes = Some(acknowledged.saturating_sub(fewest));
        Ok(format!(
            "baseline {} -> this build -> baseline; {acknowledged} of {sent} writes acknowledged across the rolls",
            old.parent()
                .and_then(|p| p.file_name())
                .map(|c| c.to_string_lossy().chars().take(12).collect::<String>())
                .unwrap_or_default()
        ))
    })
}
