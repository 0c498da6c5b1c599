//! The runbooks of docs/runbooks, executed as written. Each drill installs replicas on hosts
//! of its own (`hosts`), brings about what its runbook is for, runs the runbook's `sh`
//! blocks section by section on the hosts they name, and checks where they led. A runbook
//! block that fails, hangs, or is never run fails the drill.

mod hosts;
mod upgrade;

pub use upgrade::{upgrade_compat, NAME_UPGRADE_COMPAT};

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

    /// Runs, in order, every block under the heading `section`, each on the hosts it names
    /// (`on=r2,r3,r1`: on each in turn); answers what each run printed.
    fn section(&mut self, hosts: &Hosts, section: &str) -> Result<Vec<String>, String> {
        let indices: Vec<usize> = (0..self.blocks.len()).filter(|&i| self.blocks[i].section == section).collect();
        if indices.is_empty() {
            return Err(format!("{}: no sh block under \"{section}\"", self.file));
        }
        let mut printed = Vec::new();
        for i in indices {
            let block = &self.blocks[i];
            let on = block.attribute("on").ok_or_else(|| format!("{}: a block names no host (on=…)", self.file))?;
            for host in on.split(',') {
                if !hosts.has(host) {
                    return Err(format!("{}: a block names {host}, a host this drill does not have", self.file));
                }
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
                printed.push(outcome.map_err(|e| format!("{} \"{section}\": {e}", self.file))?);
            }
            self.ran[i] = true;
        }
        Ok(printed)
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
    testkit::new_cluster_ca(&dir.join("cluster-ca.crt"), &dir.join("cluster-ca.key"));
    Ok(dir)
}

/// The founding replicas of every runbook drill.
const MEMBERS: [&str; 3] = ["r1", "r2", "r3"];

/// Hosts `names` (r1–r3 and whichever more the drill needs) with a cluster formed on r1–r3
/// as docs/deploy.md does, holding entries 0..10; answers them, the cluster CA's
/// directory, and r1–r3's node ids.
fn formed_cluster(workdir: &Path, names: &[&str]) -> Result<(Hosts, PathBuf, Vec<u64>), String> {
    let hosts = Hosts::create(workdir, names)?;
    let ca = cluster_ca(workdir)?;
    for host in MEMBERS {
        hosts.install_server(host, &server_config(host, &MEMBERS, None), &ca)?;
        hosts.run(host, "systemctl enable --now testudo-server", Duration::from_secs(10))?;
    }
    let ids = wait_for_voters(&hosts, &MEMBERS, Duration::from_secs(60))?;
    write_entries(&hosts, "r1", 0..10)?;
    Ok((hosts, ca, ids))
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

/// Writes registration entries `numbers` through the replica on `host`.
fn write_entries(hosts: &Hosts, host: &str, numbers: std::ops::Range<usize>) -> Result<(), String> {
    let script: String = numbers
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
        let (hosts, ca, ids) = formed_cluster(workdir, &MEMBERS)?;
        let mut book = Runbook::load("lost-replica.md", workdir);

        hosts.lose("r2");
        report.faults += 1;
        book.section(&hosts, "See what is lost")?;
        hosts.install_server("r2", &server_config("r2", &MEMBERS, None), &ca)?;
        book.section(&hosts, "Bring it back")?;
        book.section(&hosts, "Check")?;
        book.all_ran()?;

        let now = wait_for_voters(&hosts, &MEMBERS, Duration::from_secs(10))?;
        report.check(now[1] != ids[1], || format!("r2 came back as node {}, the id it had", now[1]));
        report.check(now[0] == ids[0] && now[2] == ids[2], || format!("node ids were {ids:?}, now {now:?}"));
        let count = entry_count(&hosts, "r2")?;
        report.check(count == 10, || format!("r2 holds {count} entries of 10"));
        Ok(format!("r2 (node {}) lost and rebuilt; it rejoined as node {}", ids[1], now[1]))
    })
}

pub const NAME_LOST_QUORUM: &str = "runbook_lost_quorum";

/// docs/runbooks/lost-quorum.md: r2 and r3 lost with their disks; r1 restores its backup.
pub fn lost_quorum(_settings: &Settings) -> Report {
    drill(NAME_LOST_QUORUM, |workdir, report| {
        let (hosts, ca, _) = formed_cluster(workdir, &MEMBERS)?;
        let mut book = Runbook::load("lost-quorum.md", workdir);
        book.section(&hosts, "Before: take backups")?;
        // Written after the backup: the runbook says these are lost.
        write_entries(&hosts, "r1", 10..15)?;

        hosts.lose("r2");
        hosts.lose("r3");
        report.faults += 2;
        book.section(&hosts, "See that the majority is lost")?;
        book.section(&hosts, "Restore")?;
        for host in ["r2", "r3"] {
            hosts.install_server(host, &server_config(host, &MEMBERS, None), &ca)?;
        }
        book.section(&hosts, "Bring back the others")?;
        let counts = book.section(&hosts, "Check")?;
        book.all_ran()?;

        let ids = wait_for_voters(&hosts, &MEMBERS, Duration::from_secs(10))?;
        report.check(ids[0] == 1, || format!("r1 was restored as node {}, not as its founder id 1", ids[0]));
        for host in MEMBERS {
            let count = entry_count(&hosts, host)?;
            report.check(count == 10, || format!("{host} holds {count} entries; the backup had 10"));
        }
        Ok(format!(
            "r2, r3 lost; restored on r1 from its backup; node ids now {ids:?}; {} replicas checked",
            counts.len()
        ))
    })
}

pub const NAME_SCALING: &str = "runbook_scaling";

/// docs/runbooks/scaling.md: three replicas to five, and back to three.
pub fn scaling(_settings: &Settings) -> Report {
    drill(NAME_SCALING, |workdir, report| {
        let (three, five) = (MEMBERS, ["r1", "r2", "r3", "r4", "r5"]);
        let (hosts, ca, before) = formed_cluster(workdir, &five)?;
        let mut book = Runbook::load("scaling.md", workdir);

        // Installed as the runbook says: every host's peers name all five.
        for host in five {
            hosts.install_server(host, &server_config(host, &five, None), &ca)?;
        }
        book.section(&hosts, "Scale up to five")?;
        report.faults += 1;
        let grown = wait_for_voters(&hosts, &five, Duration::from_secs(10))?;
        let count = entry_count(&hosts, "r5")?;
        report.check(count == 10, || format!("r5 holds {count} entries of 10"));

        book.section(&hosts, "Scale down to three")?;
        report.faults += 1;
        book.all_ran()?;
        let after = wait_for_voters(&hosts, &three, Duration::from_secs(10))?;
        report.check(after == before, || format!("r1-r3 were nodes {before:?}, now {after:?}"));
        for host in ["r4", "r5"] {
            let left = hosts.dir(host).join("lib/server");
            report.check(!left.exists(), || format!("{host} kept its data dir after it was removed"));
        }
        Ok(format!("3 -> 5 (nodes {grown:?}) -> 3 (nodes {after:?})"))
    })
}

pub const NAME_MOVING: &str = "runbook_moving_a_replica";

/// docs/runbooks/moving-a-replica.md: r3 moves to r4.
pub fn moving_a_replica(_settings: &Settings) -> Report {
    drill(NAME_MOVING, |workdir, report| {
        let (hosts, ca, before) = formed_cluster(workdir, &["r1", "r2", "r3", "r4"])?;
        let mut book = Runbook::load("moving-a-replica.md", workdir);

        let moved = ["r1", "r2", "r4"];
        hosts.install_server("r4", &server_config("r4", &moved, None), &ca)?;
        book.section(&hosts, "Add the new host")?;
        book.section(&hosts, "Retire the old host")?;
        report.faults += 1;
        book.all_ran()?;
        let after = wait_for_voters(&hosts, &moved, Duration::from_secs(10))?;
        report.check(after[..2] == before[..2], || format!("r1, r2 were nodes {before:?}, now {after:?}"));
        let count = entry_count(&hosts, "r4")?;
        report.check(count == 10, || format!("r4 holds {count} entries of 10"));
        let left = hosts.dir("r3").join("lib/server");
        report.check(!left.exists(), || "r3 kept its data dir after it was removed".into());
        Ok(format!("r3 (node {}) moved to r4 (node {})", before[2], after[2]))
    })
}

pub const NAME_CA_KEY_COMPROMISE: &str = "runbook_ca_key_compromise";

/// docs/runbooks/ca-key-compromise.md: the active X.509 CA and JWT key rotated out by hand.
pub fn ca_key_compromise(_settings: &Settings) -> Report {
    drill(NAME_CA_KEY_COMPROMISE, |workdir, report| {
        let (hosts, _, _) = formed_cluster(workdir, &MEMBERS)?;
        let active = |kind: &str| -> Result<String, String> {
            let shown = hosts.admin("r1", &format!("localauthority {kind} show"))?;
            shown["active"]["authority_id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("no active {kind}: {shown}"))
        };
        let wait_active = |kind: &str| -> Result<String, String> {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match active(kind) {
                    Ok(id) => return Ok(id),
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(500)),
                }
            }
        };
        let leaked = (wait_active("x509")?, wait_active("jwt")?);
        let mut book = Runbook::load("ca-key-compromise.md", workdir);
        for section in [
            "See the authorities",
            "Prepare new authorities",
            "Activate the new and taint the leaked",
            "Revoke the leaked",
            "Check",
        ] {
            book.section(&hosts, section)?;
        }
        report.faults += 1;
        book.all_ran()?;

        let now = (active("x509")?, active("jwt")?);
        report.check(now.0 != leaked.0 && now.1 != leaked.1, || format!("still active: {now:?}"));
        for host in MEMBERS {
            for kind in ["x509", "jwt"] {
                let shown = hosts.admin(host, &format!("localauthority {kind} show"))?.to_string();
                let id = if kind == "x509" { &leaked.0 } else { &leaked.1 };
                report.check(!shown.contains(id.as_str()), || format!("{host} still lists {kind} {id}: {shown}"));
            }
            let bundle = hosts.run(
                host,
                &format!("testudo-server bundle show --socket-path {}", hosts::ADMIN_SOCKET),
                Duration::from_secs(30),
            )?;
            let cas = bundle.matches("BEGIN CERTIFICATE").count();
            report.check(cas == 1, || format!("{host}'s bundle holds {cas} CAs, not the new one alone"));
        }
        Ok(format!("x509 {} and jwt {} rotated out and revoked", leaked.0, leaked.1))
    })
}

pub const NAME_KEY_MANAGER_OUTAGE: &str = "runbook_key_manager_outage";

/// docs/runbooks/key-manager-outage.md: the CA keys in a KMS (moto) that is cut off, then back.
pub fn key_manager_outage(_settings: &Settings) -> Report {
    drill(NAME_KEY_MANAGER_OUTAGE, |workdir, report| {
        let hosts = Hosts::create(workdir, &["r1", "r2", "r3", "kms"])?;
        let _moto =
            KillOnDrop(hosts.spawn("kms", &testkit::moto::server_program(), &["-H", "0.0.0.0", "-p", "5000"], None)?);
        let ca = cluster_ca(workdir)?;
        let endpoint = format!("http://{}:5000", Hosts::fqdn("kms"));
        let credentials: Vec<(&str, String)> = vec![
            ("AWS_ACCESS_KEY_ID", testkit::moto::ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", testkit::moto::SECRET_ACCESS_KEY.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ];
        for host in MEMBERS {
            hosts.set_service_env(host, &credentials)?;
            hosts.install_server(host, &server_config(host, &MEMBERS, Some(&endpoint)), &ca)?;
            hosts.run(host, "systemctl enable --now testudo-server", Duration::from_secs(10))?;
        }
        wait_for_voters(&hosts, &MEMBERS, Duration::from_secs(90))?;
        let mint = format!(
            "until testudo-server x509 mint --spiffe-id spiffe://example.org/up --ttl 60 --socket-path {} >/dev/null 2>&1; \
             do sleep 1; done",
            hosts::ADMIN_SOCKET
        );
        for host in MEMBERS {
            hosts.run(host, &mint, Duration::from_secs(90))?;
        }
        let mut book = Runbook::load("key-manager-outage.md", workdir);
        let healthy = book.section(&hosts, "See it")?.concat();
        report.check(healthy.contains("signing works"), || format!("before the outage the runbook saw: {healthy}"));

        hosts.set_link("kms", false)?;
        report.faults += 1;
        let cut_off = book.section(&hosts, "See it")?.concat();
        report.check(cut_off.contains("signing fails"), || format!("during the outage the runbook saw: {cut_off}"));
        report.check(cut_off.contains("testudo_key_manager_attempts_total"), || {
            format!("the metrics the runbook reads are missing: {cut_off}")
        });
        let status = hosts.admin("r2", "cluster status")?;
        report.check(status["leader"].as_u64().is_some(), || format!("no leader during the outage: {status}"));
        // Writes need no signature: they go on.
        if let Err(e) = write_entries(&hosts, "r2", 0..1) {
            report.failures.push(format!("a write failed during the outage: {e}"));
        }

        hosts.set_link("kms", true)?;
        book.section(&hosts, "After it is back")?;
        book.all_ran()?;
        Ok("KMS cut off and back; every replica signs again".into())
    })
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub const NAME_ROLLING_UPGRADE: &str = "runbook_rolling_upgrade";

/// docs/runbooks/rolling-upgrade.md: every replica upgraded in turn, then rolled back. The
/// "new" binaries are this build's, so this checks the procedure, not compatibility between
/// versions.
pub fn rolling_upgrade(_settings: &Settings) -> Report {
    drill(NAME_ROLLING_UPGRADE, |workdir, report| {
        let (hosts, _, before) = formed_cluster(workdir, &MEMBERS)?;
        for host in MEMBERS {
            hosts.stage_upgrade(host)?;
        }
        let mut book = Runbook::load("rolling-upgrade.md", workdir);
        book.section(&hosts, "Before you start")?;
        let printed = book.section(&hosts, "Upgrade each replica in turn")?;
        report.faults += MEMBERS.len();
        let upgraded = wait_for_voters(&hosts, &MEMBERS, Duration::from_secs(10))?;
        // The leader handed leadership away before its restart: `cluster transfer` printed
        // the status it left (the block prints nothing else of the kind).
        let transfers = printed.iter().filter(|p| p.contains("Cluster ")).count();
        report.check(transfers >= 1, || "no replica handed leadership away before its restart".into());
        book.section(&hosts, "Roll back")?;
        report.faults += MEMBERS.len();
        book.all_ran()?;
        let after = wait_for_voters(&hosts, &MEMBERS, Duration::from_secs(10))?;
        report.check(upgraded == before && after == before, || {
            format!("node ids changed: {before:?}, {upgraded:?}, {after:?}")
        });
        for host in MEMBERS {
            let count = entry_count(&hosts, host)?;
            report.check(count == 10, || format!("{host} holds {count} entries of 10"));
        }
        Ok("3 replicas upgraded in turn, leader last, and rolled back".into())
    })
}

#[cfg(test)]
mod tests {
    /// A runbook added without a drill, or a block that names no host, would go unrun.
    #[test]
    fn every_runbook_has_a_drill_and_every_block_a_host() {
        let dir = super::hosts::repo().join("docs/runbooks");
        let mut runbooks = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name == "README.md" || !name.ends_with(".md") {
                continue;
            }
            runbooks += 1;
            let drill = format!("runbook_{}", name.trim_end_matches(".md").replace('-', "_"));
            assert!(crate::drills::ALL.iter().any(|d| d.name == drill), "{name} has no drill named {drill}");
            let blocks = testkit::docs::blocks(&format!("runbooks/{name}"));
            assert!(blocks.iter().any(|b| b.lang() == "sh"), "{name} has no sh block");
            for block in blocks.iter().filter(|b| b.lang() == "sh") {
                assert!(block.attribute("on").is_some(), "{name}, under {:?}: a block names no host", block.section);
            }
        }
        assert_eq!(runbooks, 7);
    }
}
