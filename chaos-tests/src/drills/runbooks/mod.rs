//! The runbooks of docs/runbooks, executed as written. Each drill installs replicas on hosts
//! of its own (`hosts`), brings about what its runbook is for, runs the runbook's `sh`
//! blocks section by section on the hosts they name, and checks where they led. A runbook
//! block that fails, hangs, or is never run fails the drill.

mod hosts;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use self::hosts::{server_config, Hosts};
use super::{Report, Settings, Workdir};

/// How long one block of a runbook may take (its waits included).
const BLOCK_LIMIT: Duration = Duration::from_secs(180);

/// A runbook's `sh` blocks and which of them ran.
struct Runbook {
    file: &'static str,
    blocks: Vec<testkit::docs::Block>,
    ran: Vec<bool>,
    transcript: PathBuf,
}

impl Runbook {
    fn load(file: &'static str, workdir: &Path) -> Self {
        let blocks: Vec<_> =
            testkit::docs::blocks(&format!("runbooks/{file}")).into_iter().filter(|b| b.lang() == "sh").collect();
        let ran = vec![false; blocks.len()];
        Self { file, blocks, ran, transcript: workdir.join("transcript.txt") }
    }

    /// Runs, in order, every block under the heading `section`, each on the host it names.
    fn section(&mut self, hosts: &Hosts, section: &str) -> Result<(), String> {
        let indices: Vec<usize> = (0..self.blocks.len()).filter(|&i| self.blocks[i].section == section).collect();
        if indices.is_empty() {
            return Err(format!("{}: no sh block under \"{section}\"", self.file));
        }
        for i in indices {
            let block = &self.blocks[i];
            let host = block.attribute("on").ok_or_else(|| format!("{}: a block names no host (on=…)", self.file))?;
            let began = Instant::now();
            let outcome = hosts.run(host, &block.body, BLOCK_LIMIT);
            let entry = format!(
                "## {} / {section}, on {host}, {} ms\n{}\n{}\n",
                self.file,
                began.elapsed().as_millis(),
                block.body,
                outcome.as_ref().unwrap_or_else(|e| e)
            );
            append(&self.transcript, &entry);
            outcome.map_err(|e| format!("{} \"{section}\": {e}", self.file))?;
            self.ran[i] = true;
        }
        Ok(())
    }

    /// Fails if some block was never run: the drill must cover the whole runbook.
    fn all_ran(&self) -> Result<(), String> {
        let missed: Vec<&str> =
            self.blocks.iter().zip(&self.ran).filter(|(_, ran)| !**ran).map(|(b, _)| b.section.as_str()).collect();
        if missed.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: the drill never ran the blocks under {missed:?}", self.file))
        }
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write as _;
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = file.write_all(text.as_bytes());
    }
}

/// Makes the cluster CA as docs/deploy.md does; answers the directory holding
/// `cluster-ca.crt` and `cluster-ca.key`.
fn cluster_ca(workdir: &Path) -> Result<PathBuf, String> {
    let dir = workdir.join("cluster-ca");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let out = std::process::Command::new(testkit::binary("testudo-server"))
        .args(["cluster", "new-ca", "--trust-domain", "example.org", "--cert"])
        .arg(dir.join("cluster-ca.crt"))
        .arg("--key")
        .arg(dir.join("cluster-ca.key"))
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("cluster new-ca: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(dir)
}

/// Installs replicas on `members` (peers `peers`) and starts them as docs/deploy.md does.
fn install_and_start(hosts: &Hosts, ca: &Path, members: &[&str], peers: &[&str]) -> Result<(), String> {
    for host in members {
        hosts.install_server(host, &server_config(host, peers, 3), ca)?;
        hosts.run(host, "systemctl enable --now testudo-server", Duration::from_secs(10))?;
    }
    Ok(())
}

/// Waits until every replica on `members` follows one leader and the cluster has exactly
/// `members.len()` voters; answers each host's node id.
fn wait_for_voters(hosts: &Hosts, members: &[&str], within: Duration) -> Result<Vec<u64>, String> {
    let deadline = Instant::now() + within;
    loop {
        let seen: Vec<Option<(u64, Vec<u64>)>> = members
            .iter()
            .map(|h| hosts.admin(h, "cluster status").ok().and_then(|s| testkit::voters_of(&s)))
            .collect();
        let agreed = seen.iter().all(|v| v.as_ref().is_some_and(|(_, voters)| voters.len() == members.len()))
            && seen.windows(2).all(|w| w[0].as_ref().map(|v| &v.1) == w[1].as_ref().map(|v| &v.1));
        if agreed {
            return Ok(seen.into_iter().flatten().map(|(me, _)| me).collect());
        }
        if Instant::now() > deadline {
            return Err(format!("{members:?} did not become {} voters of one cluster: {seen:?}", members.len()));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Writes `n` registration entries through the replica on `host`.
fn write_entries(hosts: &Hosts, host: &str, n: usize) -> Result<(), String> {
    let script: String = (0..n)
        .map(|i| {
            format!(
                "testudo-server entry create --socket-path {} --spiffe-id spiffe://example.org/runbook/{i} \
                 --parent-id spiffe://example.org/node --selector unix:uid:{i} >/dev/null\n",
                hosts::ADMIN_SOCKET
            )
        })
        .collect();
    hosts.run(host, &script, Duration::from_secs(60)).map(|_| ())
}

/// How many entries the replica on `host` holds.
fn entry_count(hosts: &Hosts, host: &str) -> Result<u64, String> {
    let count = hosts.admin(host, "entry count")?;
    count["count"].as_u64().ok_or_else(|| format!("entry count on {host}: {count}"))
}

/// Runs `body` as the drill `name`, turning its error into the report's failure and keeping
/// the drill's directory when it failed.
fn drill(name: &'static str, body: impl FnOnce(&Path, &mut Report) -> Result<String, String>) -> Report {
    let mut report = Report::new(name);
    let mut workdir = Workdir::new(name);
    let began = Instant::now();
    match body(workdir.path(), &mut report) {
        Ok(summary) => report.summary = format!("{summary} ({} s)", began.elapsed().as_secs()),
        Err(failure) => report.failures.push(failure),
    }
    workdir.settle(&mut report);
    report
}

pub const NAME_LOST_REPLICA: &str = "runbook_lost_replica";

/// docs/runbooks/lost-replica.md: r2's host is lost with its disk and rebuilt under its name.
pub fn lost_replica(_settings: &Settings) -> Report {
    drill(NAME_LOST_REPLICA, |workdir, report| {
        let members = ["r1", "r2", "r3"];
        let hosts = Hosts::create(workdir, &members)?;
        let ca = cluster_ca(workdir)?;
        install_and_start(&hosts, &ca, &members, &members)?;
        let ids = wait_for_voters(&hosts, &members, Duration::from_secs(60))?;
        write_entries(&hosts, "r1", 10)?;
        let mut book = Runbook::load("lost-replica.md", workdir);

        hosts.lose("r2");
        report.faults += 1;
        book.section(&hosts, "See what is lost")?;
        hosts.install_server("r2", &server_config("r2", &members, 3), &ca)?;
        book.section(&hosts, "Bring it back")?;
        book.section(&hosts, "Check")?;
        book.all_ran()?;

        let now = wait_for_voters(&hosts, &members, Duration::from_secs(10))?;
        report.check(now[1] != ids[1], || format!("r2 came back as node {}, the id it had", now[1]));
        report.check(now[0] == ids[0] && now[2] == ids[2], || format!("node ids were {ids:?}, now {now:?}"));
        let count = entry_count(&hosts, "r2")?;
        report.check(count == 10, || format!("r2 holds {count} entries of 10"));
        Ok(format!("r2 (node {}) lost and rebuilt; it rejoined as node {}", ids[1], now[1]))
    })
}
