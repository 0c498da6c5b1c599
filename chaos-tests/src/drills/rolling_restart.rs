//! Every replica restarted in turn (kill -9, down a second, started from its disk) while an
//! agent serves a workload that streams its X.509-SVID and asks for JWT-SVIDs: the workload
//! sees no error and always holds an SVID that has not expired; the agent's SVIDs keep
//! rotating (short TTLs), and an entry created mid-drill reaches the workload.
//!
//! `rolling_restart_managed_keys` does the same with the CA keys in a KMS (moto), then on
//! an HSM token (SoftHSM2). With the KMS, it is also cut off (connections reset) for 6 s
//! once the second replica is back: no replica can sign then, so the workload asks for a
//! JWT-SVID its agent has cached (a new audience would need a signature), and its X.509-SVID
//! must outlive the cut. (A replica that starts while its KMS is unreachable cannot sign
//! its own server SVID and serves no agent until it can: restarts and the cut are apart.)

use std::time::{Duration, Instant};

use super::entry_clients;
use super::key_backend::{self, KeyBackend};
use super::svid_watch::{attach_agent, uid_selector, JwtAsk, Watch, WEB};
use super::{runtime, Report, Settings, Workdir};
use testkit::proxy::Link;
use testkit::ServerProcess;

pub const NAME: &str = "rolling_restart";
pub const NAME_MANAGED_KEYS: &str = "rolling_restart_managed_keys";
const LATE: &str = "spiffe://example.org/late";
const TTL: &str = r#"default_x509_svid_ttl = "20s""#;
/// How long the KMS is cut off: well inside the SVIDs' 20 s.
const KMS_CUT: Duration = Duration::from_secs(6);

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let servers = ServerProcess::cluster(root.path(), 3, TTL);
    report.summary = restart_loop(root.path(), servers, None, settings, &mut report);
    root.settle(&mut report);
    report
}

/// The same with the CA keys in a KMS (cut off for a while), then on an HSM.
pub fn run_managed_keys(settings: &Settings) -> Report {
    let mut root = Workdir::new(NAME_MANAGED_KEYS);
    let mut report = key_backend::on_each_backend(NAME_MANAGED_KEYS, root.path(), |backend, dir, part| {
        restart_loop(dir, backend.cluster(dir, 3, TTL), Some(backend), settings, part)
    });
    root.settle(&mut report);
    report
}

/// Restarts each of `servers` in turn, round after round, while an agent under `root` serves
/// a workload; with a KMS in `keys`, cuts it off while the second replica is down. Fills
/// `report`; answers its summary line.
fn restart_loop(
    root: &std::path::Path,
    mut servers: Vec<ServerProcess>,
    keys: Option<&KeyBackend>,
    settings: &Settings,
    report: &mut Report,
) -> String {
    let cut_kms = keys.is_some_and(|k| matches!(k, KeyBackend::Kms { .. }));
    let (agent, agent_id) = attach_agent(root, &servers);
    let runtime = runtime();
    let ask = if cut_kms { JwtAsk::SameAudience } else { JwtAsk::NewAudience };
    let watch = Watch::start(&runtime, agent.socket(), WEB, ask);

    std::thread::sleep(Duration::from_secs(2));
    let began = Instant::now();
    let mut rounds = 0;
    while settings.another_round(rounds, began) {
        rounds += 1;
        for i in 0..servers.len() {
            let leading = entry_clients::leader(&servers, &[true; 3]) == Some(servers[i].id);
            servers[i].kill();
            report.faults += 1;
            report.leader_kills += usize::from(leading);
            std::thread::sleep(Duration::from_secs(1));
            servers[i].restart();
            assert!(
                servers[i].serves_within(Duration::from_secs(20)),
                "the restarted replica {} serves no reads",
                servers[i].id
            );
            if let (true, 1, Some(keys)) = (cut_kms, i, keys) {
                // Every replica up: none can sign, all still answer the agent.
                keys.set_link(Link::Reset);
                if let Err(e) = key_backend::refused_while_cut(&servers[0]) {
                    report.failures.push(e);
                }
                std::thread::sleep(KMS_CUT);
                keys.set_link(Link::Open);
                report.faults += 1;
            }
            if i == 1 && rounds == 1 {
                // Registrations made mid-drill still reach the workload.
                servers[(i + 1) % 3].json(&[
                    "entry",
                    "create",
                    "--spiffe-id",
                    LATE,
                    "--parent-id",
                    &agent_id,
                    "--selector",
                    &uid_selector(),
                ]);
            }
        }
    }
    let took = began.elapsed();
    // Long enough after the last restart for another rotation.
    std::thread::sleep(Duration::from_secs(8));
    let seen = watch.finish(&runtime);
    seen.judge(2, &agent.log(), report);
    if keys.is_some() {
        if let Err(refusals) = key_backend::all_sign_within(&servers, Duration::from_secs(60)) {
            report.failures.push(format!("not every replica signs after the restarts: {refusals}"));
        }
    }
    let summary = format!(
        "{} restarts in {:.1} s, {} workload errors, longest time without a valid SVID {} ms, {} X.509-SVIDs seen",
        report.faults,
        took.as_secs_f64(),
        seen.errors.len(),
        seen.longest_gap.as_millis(),
        seen.svids
    );
    report.check(seen.ids.contains(LATE), || {
        format!("an entry made mid-drill did not reach the workload: {:?}", seen.ids)
    });
    summary
}
