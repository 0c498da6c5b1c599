//! The leader is killed while it makes a CA key in a KMS (moto, every call slowed) or on an
//! HSM token (SoftHSM2, RSA-4096 keys that take a while to generate), at a random moment of
//! a `localauthority … prepare`, again and again. Kills that land between the key's creation
//! and its authority's record leave keys nothing names; the next leader's sweep must delete
//! them, and at the end the backend holds exactly the keys of the authorities in the
//! journal, read with the backend's own tools (boto3, pkcs11-tool).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::key_backend::{KeyBackend, PIN, TOKEN};
use super::{entry_clients, Report, Settings, Workdir};
use testkit::moto;
use testkit::proxy::Link;
use testkit::softhsm::MODULE;
use testkit::{binary, ServerProcess};

pub const NAME: &str = "key_orphans";
/// Long enough that a key left by a kill is still there when the round looks for it.
const GRACE: &str = "10s";
/// Every KMS call crosses this delay each way, so one key takes seconds to make and name.
const KMS_DELAY: Duration = Duration::from_millis(300);

/// The live keys (not pending deletion) tagged with a cluster, by key id.
const BOTO3_OWNED: &str = r#"
import sys, json, boto3
kms = boto3.client("kms", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
owned = []
for page in kms.get_paginator("list_keys").paginate():
    for key in page["Keys"]:
        meta = kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
        if meta["KeyState"] == "PendingDeletion":
            continue
        tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key["KeyId"])["Tags"]}
        if tags.get("testudo-cluster") == sys.argv[2]:
            owned.append(tags.get("testudo-key-id", "?"))
print(json.dumps(sorted(owned)))
"#;

impl KeyBackend {
    fn server_extra(&self) -> String {
        let keys = match self {
            Self::Kms { .. } => "",
            Self::Hsm { .. } => "\n  ca_key_type = \"rsa-4096\"\n  jwt_key_type = \"rsa-4096\"",
        };
        format!("ca_key_sweep_grace = \"{GRACE}\"{keys}")
    }

    /// Waits for the moment to kill the leader in round `round` of a prepare it serves.
    /// KMS: a random moment of the seconds the slowed calls take. HSM: on even rounds, just
    /// after the new key pair's object files are written in the token directory (the few
    /// milliseconds between a key's generation and its record are too short to hit at
    /// random); on odd rounds, a random moment of the generation.
    fn await_kill_moment(&self, round: usize, objects_before: usize) {
        let random =
            |window: Duration| std::thread::sleep(Duration::from_millis(fastrand::u64(0..=window.as_millis() as u64)));
        match self {
            Self::Kms { .. } => random(KMS_DELAY * 2 * 5),
            Self::Hsm { .. } if round % 2 == 1 => random(Duration::from_millis(1500)),
            Self::Hsm { .. } => {
                // SoftHSM creates each object file empty, then fills it.
                let deadline = Instant::now() + Duration::from_secs(10);
                while self.token_objects() < objects_before + 2 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Written object files in the SoftHSM token directory (one per key half); 0 for KMS.
    fn token_objects(&self) -> usize {
        let Self::Hsm { conf, .. } = self else { return 0 };
        let tokens = conf.with_file_name("tokens");
        let tokens = std::fs::read_dir(tokens).into_iter().flatten().flatten();
        tokens
            .flat_map(|token| std::fs::read_dir(token.path()).into_iter().flatten().flatten())
            .filter(|f| f.path().extension().is_some_and(|e| e == "object"))
            .filter(|f| f.metadata().is_ok_and(|m| m.len() > 0))
            .count()
    }

    /// Slows or restores the KMS link (the HSM is local).
    fn slow(&self, slow: bool) {
        self.set_link(if slow { Link::Delay(KMS_DELAY) } else { Link::Open });
    }

    /// The key ids of the live keys made for `cluster` (for KMS, listed by the boto3 script
    /// at `script`).
    fn owned(&self, cluster: &str, script: &Path) -> Result<Vec<String>, String> {
        match self {
            Self::Kms { moto, .. } => {
                let out = Command::new(moto::python())
                    .arg(script)
                    .arg(moto.endpoint())
                    .arg(cluster)
                    .output()
                    .map_err(|e| e.to_string())?;
                if !out.status.success() {
                    return Err(format!("boto3: {}", String::from_utf8_lossy(&out.stderr)));
                }
                serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
            }
            Self::Hsm { conf, .. } => hsm_owned(conf, cluster),
        }
    }
}

/// Key pairs on the token whose CKA_ID names `cluster`, by either half, as pkcs11-tool
/// lists them: a SoftHSM2 process killed while it writes a new pair can leave the public
/// half alone.
fn hsm_owned(conf: &Path, cluster: &str) -> Result<Vec<String>, String> {
    let out = Command::new("pkcs11-tool")
        .args(["--module", MODULE, "--token-label", TOKEN, "--login", "--pin", PIN, "--list-objects"])
        .env("SOFTHSM2_CONF", conf)
        .output()
        .map_err(|e| format!("pkcs11-tool: {e}"))?;
    if !out.status.success() {
        return Err(format!("pkcs11-tool: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let prefix = format!("{cluster}/");
    let mut owned = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines().map(str::trim) {
        let Some(id) = line.strip_prefix("ID:") else { continue };
        let Some(text) = hex::decode(id.trim()).ok().and_then(|b| String::from_utf8(b).ok()) else { continue };
        if let Some(rest) = text.strip_prefix(&prefix) {
            owned.push(rest.rsplit('/').next().unwrap_or(rest).to_owned());
        }
    }
    owned.sort();
    owned.dedup();
    Ok(owned)
}

/// How many authorities the journal holds (active, prepared, old; both kinds), asked of
/// any replica that answers.
fn authorities(servers: &[ServerProcess], alive: &[bool]) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        for (server, _) in servers.iter().zip(alive).filter(|(_, up)| **up) {
            let mut total = 0;
            let mut answered = true;
            for kind in ["x509", "jwt"] {
                let out = server.command(&["localauthority", kind, "show", "--output", "json"]);
                match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    Ok(v) if out.status.success() => {
                        total += ["active", "prepared", "old"].iter().filter(|s| !v[**s].is_null()).count()
                    }
                    _ => answered = false,
                }
            }
            if answered {
                return Some(total);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

pub fn run(settings: &Settings) -> Report {
    let mut report = Report::new(NAME);
    let mut root = Workdir::new(NAME);
    let mut lines = Vec::new();
    let (kms, hsm) = (root.path().join("kms"), root.path().join("hsm"));
    for dir in [&kms, &hsm] {
        std::fs::create_dir_all(dir).expect("a directory");
    }
    lines.push(drill_backend(&KeyBackend::kms(), &kms, settings, &mut report));
    lines.push(drill_backend(&KeyBackend::hsm(&hsm), &hsm, settings, &mut report));
    report.summary = lines.join("; ");
    root.settle(&mut report);
    report
}

/// Runs the kills against one backend; answers its summary.
fn drill_backend(backend: &KeyBackend, dir: &Path, settings: &Settings, report: &mut Report) -> String {
    let name = backend.name();
    let mut servers = backend.cluster(dir, 3, &backend.server_extra());
    let script = dir.join("owned.py");
    std::fs::write(&script, BOTO3_OWNED).expect("script");
    let cluster = servers[0].status()["cluster_id"].as_str().unwrap_or_default().to_owned();

    // Every key id seen after a kill; those not in the final set were left by a kill.
    let (began, mut kills, mut seen) = (Instant::now(), 0, std::collections::BTreeSet::new());
    while settings.another_round(kills, began) {
        let alive = [true; 3];
        let Some(index) = entry_clients::leader(&servers, &alive).and_then(|l| servers.iter().position(|s| s.id == l))
        else {
            report.failures.push(format!("{name}: no leader to kill"));
            break;
        };
        let kind = if kills % 2 == 0 { "x509" } else { "jwt" };
        let objects_before = backend.token_objects();
        backend.slow(true);
        let prepare = Command::new(binary("testudo-server"))
            .args(["localauthority", kind, "prepare", "--socket-path"])
            .arg(servers[index].socket())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        backend.await_kill_moment(kills, objects_before);
        servers[index].kill();
        kills += 1;
        report.faults += 1;
        report.leader_kills += 1;
        backend.slow(false);
        if let Ok(mut cli) = prepare {
            let _ = cli.kill();
            let _ = cli.wait();
        }
        let mut alive = [true; 3];
        alive[index] = false;
        // Inside the grace: what the kill left is still there.
        let (owned, recorded) = (backend.owned(&cluster, &script), authorities(&servers, &alive));
        eprintln!(
            "{NAME}: {name} kill {kills} ({kind} prepare on replica {}): keys {owned:?}, authorities {recorded:?}",
            index + 1
        );
        match (owned, recorded) {
            (Ok(owned), Some(_)) => seen.extend(owned),
            (Err(e), _) => report.failures.push(format!("{name}: listing the keys: {e}")),
            (_, None) => report.failures.push(format!("{name}: no replica showed the authorities after kill {kills}")),
        }
        servers[index].restart();
        if !servers[index].serves_within(Duration::from_secs(30)) {
            report.failures.push(format!("{name}: replica {} serves nothing 30 s after its restart", index + 1));
        }
    }

    // After the grace and a sweep or two, the backend holds exactly the journal's keys.
    let alive = [true; 3];
    let settled_by = Instant::now() + Duration::from_secs(60);
    let (mut last, mut left, mut kept) = (String::new(), None, Vec::new());
    let settled = loop {
        match (backend.owned(&cluster, &script), authorities(&servers, &alive)) {
            (Ok(owned), Some(recorded)) => {
                left = Some(owned.len().saturating_sub(recorded));
                if owned.len() == recorded {
                    kept = owned;
                    break true;
                }
                last = format!("keys {owned:?}, authorities {recorded}");
            }
            (owned, recorded) => last = format!("keys {owned:?}, authorities {recorded:?}"),
        }
        if Instant::now() > settled_by {
            break false;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    report.check(settled, || format!("{name}: keys nothing records remain 60 s after the last kill: {last}"));
    // A kill may have stopped the CA's own first keys in the making; the next leader makes
    // them again.
    if let Err(refusals) = super::key_backend::all_sign_within(&servers, Duration::from_secs(60)) {
        report.failures.push(format!("{name}: {refusals}"));
    }
    let swept: usize = servers.iter().map(|s| s.log().matches("deleted a CA key that nothing records").count()).sum();
    // Keys seen after a kill and gone at the end: orphans the sweep deleted, and keys
    // recorded then and retired by a later prepare.
    let gone = seen.iter().filter(|id| !kept.contains(id)).count();
    // The KMS window is seconds long, so some kill must land in it and leave a key for the
    // sweep; on the HSM it is a few milliseconds, and the count is reported, not required.
    let must_hit = matches!(backend, KeyBackend::Kms { .. }) && kills >= 3;
    report.check(!must_hit || swept > 0, || {
        format!("{name}: no kill landed between a key's creation and its record in {kills} kills")
    });
    format!(
        "{name}: {kills} leader kills mid-prepare, {swept} keys nothing recorded deleted by sweeps, {gone} keys seen \
         after a kill gone at the end, {} left at the end",
        left.map_or("?".to_owned(), |n| n.to_string())
    )
}
