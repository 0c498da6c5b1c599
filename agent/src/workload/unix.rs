//! The `unix` workload attestor: who the calling process is, from the kernel. The uid and
//! gid come from the socket's peer credentials (SO_PEERCRED, taken at connect time and not
//! forgeable by the caller); supplementary groups and, with `discover_workload_path`, the
//! binary's path and SHA-256 from /proc, read while the caller's process is pinned
//! (`peer_process`), so a pid that now names another process is never read.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use identity::{Selector, SelectorSet};

use crate::config::plugins::UnixData;

/// The attestor's name in config and its selectors' type.
pub const NAME: &str = "unix";

/// The `unix` attestor with its `plugin_data`.
pub struct Unix {
    settings: UnixData,
}

/// Builds the attestor when the config enables it.
pub fn build(
    config: &crate::config::plugins::WorkloadAttestorConfig,
) -> Option<std::sync::Arc<dyn super::attestor::WorkloadAttestor>> {
    config.unix.clone().map(|settings| std::sync::Arc::new(Unix { settings }) as _)
}

impl super::attestor::WorkloadAttestor for Unix {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attest(&self, peer: PeerCredentials) -> Result<SelectorSet, AttestError> {
        attest(peer, &self.settings)
    }
}

/// Why a caller could not be attested.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("the calling process {pid} is gone: it exited, or its pid now names another process")]
    ProcessChanged { pid: i32 },
    #[error("the caller was not identified when it connected: {reason}")]
    NotPinned { reason: String },
    #[error("reading /proc/{pid}: {reason}")]
    Proc { pid: i32, reason: String },
    #[error("the workload binary is {size} bytes, over workload_size_limit ({limit})")]
    TooLarge { size: u64, limit: u64 },
}

/// The kernel's view of the caller at connect time.
#[derive(Clone, Copy, Debug)]
pub struct PeerCredentials {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

fn selector(kind: &str, value: impl std::fmt::Display) -> Option<Selector> {
    Selector::new(kind, &value.to_string()).ok()
}

/// Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot.
pub(crate) fn start_time(pid: i32) -> Result<u64, AttestError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|_| AttestError::ProcessChanged { pid })?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| AttestError::Proc { pid, reason: "unreadable stat".into() })?;
    after
        .split_whitespace()
        .nth(19)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| AttestError::Proc { pid, reason: "no start time in stat".into() })
}

fn supplementary_gids(pid: i32) -> Result<Vec<u32>, AttestError> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| AttestError::ProcessChanged { pid })?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|groups| groups.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        .unwrap_or_default())
}

/// How long a uid's or gid's name is remembered. A lookup goes through NSS (files, LDAP…)
/// and cost more than the rest of an attestation; names change rarely.
const NAME_TTL: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Id {
    User(u32),
    Group(u32),
}

fn name_of(id: Id) -> Option<String> {
    type Names = HashMap<Id, (Option<String>, Instant)>;
    static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();
    let names = NAMES.get_or_init(Mutex::default);
    if let Some((name, at)) = names.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
        if at.elapsed() < NAME_TTL {
            return name.clone();
        }
    }
    let name = match id {
        Id::User(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name),
        Id::Group(gid) => nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).ok().flatten().map(|g| g.name),
    };
    let mut names = names.lock().unwrap_or_else(|p| p.into_inner());
    if names.len() > 10_000 {
        names.clear();
    }
    names.insert(id, (name.clone(), Instant::now()));
    name
}

fn user_name(uid: u32) -> Option<String> {
    name_of(Id::User(uid))
}

fn group_name(gid: u32) -> Option<String> {
    name_of(Id::Group(gid))
}

/// The binary's path and SHA-256 (through /proc/<pid>/exe, so a replaced file on disk does
/// not fool it).
fn binary(pid: i32, limit: u64) -> Result<(String, String), AttestError> {
    let proc_error = |reason: String| AttestError::Proc { pid, reason };
    let path = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| proc_error(format!("exe: {e}")))?;
    let mut file = std::fs::File::open(format!("/proc/{pid}/exe")).map_err(|e| proc_error(format!("exe: {e}")))?;
    let size = file.metadata().map_err(|e| proc_error(e.to_string()))?.len();
    if limit > 0 && size > limit {
        return Err(AttestError::TooLarge { size, limit });
    }
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buffer).map_err(|e| proc_error(e.to_string()))?;
        if n == 0 {
            break;
        }
        digest.update(&buffer[..n]);
    }
    Ok((path.to_string_lossy().into_owned(), hex::encode(digest.finish())))
}

/// The caller's `unix:` selectors. Blocking (reads /proc): run it off the reactor, inside
/// `PeerProcess::guard`.
pub fn attest(peer: PeerCredentials, settings: &UnixData) -> Result<SelectorSet, AttestError> {
    let mut selectors: SelectorSet =
        [selector("unix", format!("uid:{}", peer.uid)), selector("unix", format!("gid:{}", peer.gid))]
            .into_iter()
            .flatten()
            .collect();
    if let Some(name) = user_name(peer.uid) {
        selectors.extend(selector("unix", format!("user:{name}")));
    }
    if let Some(name) = group_name(peer.gid) {
        selectors.extend(selector("unix", format!("group:{name}")));
    }
    for gid in supplementary_gids(peer.pid)? {
        selectors.extend(selector("unix", format!("supplementary_gid:{gid}")));
        if let Some(name) = group_name(gid) {
            selectors.extend(selector("unix", format!("supplementary_group:{name}")));
        }
    }
    if settings.discover_workload_path {
        let (path, sha256) = binary(peer.pid, settings.workload_size_limit)?;
        selectors.extend(selector("unix", format!("path:{path}")));
        selectors.extend(selector("unix", format!("sha256:{sha256}")));
    }
    Ok(selectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> PeerCredentials {
        PeerCredentials {
            pid: std::process::id() as i32,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    #[test]
    fn this_process_is_attested_with_its_ids_names_and_binary() {
        let peer = me();
        let selectors = attest(peer, &UnixData { discover_workload_path: true, workload_size_limit: 0 }).unwrap();
        let has = |s: String| selectors.contains(&Selector::parse(&s).unwrap());
        assert!(has(format!("unix:uid:{}", peer.uid)));
        assert!(has(format!("unix:gid:{}", peer.gid)));
        if let Some(name) = user_name(peer.uid) {
            assert!(has(format!("unix:user:{name}")));
        }
        let exe = std::env::current_exe().unwrap();
        assert!(has(format!("unix:path:{}", exe.display())), "{selectors:?}");
        let bytes = std::fs::read(&exe).unwrap();
        let expected = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes));
        assert!(has(format!("unix:sha256:{expected}")));
    }

    #[test]
    fn a_size_limit_refuses_large_binaries_and_a_missing_process_is_refused() {
        let err = attest(me(), &UnixData { discover_workload_path: true, workload_size_limit: 10 }).unwrap_err();
        assert!(matches!(err, AttestError::TooLarge { limit: 10, .. }), "{err:?}");
        let gone = PeerCredentials { pid: i32::MAX, uid: 0, gid: 0 };
        assert!(attest(gone, &UnixData::default()).is_err());
        assert!(matches!(start_time(gone.pid), Err(AttestError::ProcessChanged { .. })));
    }
}
