//! The `systemd` workload attestor: the unit a process runs in, from its cgroup path in
//! /proc/<pid>/cgroup (the unified hierarchy `0::…` line, or the legacy `name=systemd`
//! one), without D-Bus. Selectors: `systemd:id:<unit>` and, when the unit file is found in
//! systemd's unit directories, `systemd:fragment_path:<path>`.

use std::path::{Path, PathBuf};

use identity::{Selector, SelectorSet};

use super::unix::AttestError;

/// The attestor's name in config and its selectors' type.
pub const NAME: &str = "systemd";

/// The `systemd` attestor (it takes no `plugin_data`).
pub struct Systemd;

/// Builds the attestor when the config enables it.
pub fn build(
    config: &crate::config::plugins::WorkloadAttestorConfig,
) -> Option<std::sync::Arc<dyn super::attestor::WorkloadAttestor>> {
    config.systemd.then(|| std::sync::Arc::new(Systemd) as _)
}

impl super::attestor::WorkloadAttestor for Systemd {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attest(&self, peer: super::unix::PeerCredentials) -> Result<SelectorSet, AttestError> {
        attest(peer.pid)
    }
}

/// Where systemd looks for unit files, in its order of precedence.
const UNIT_DIRS: [&str; 4] =
    ["/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"];

/// The innermost service or scope unit in a cgroup file's systemd line.
pub fn unit_of(cgroup: &str) -> Option<String> {
    let path = cgroup
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            (controllers.is_empty() || controllers == "name=systemd").then_some(path)
        })
        .next_back()?;
    path.split('/')
        .rev()
        .find(|segment| segment.ends_with(".service") || segment.ends_with(".scope"))
        .map(str::to_owned)
}

/// The unit file systemd would load for `unit`, if one is in the standard directories.
fn fragment_path(unit: &str, dirs: &[&str]) -> Option<PathBuf> {
    dirs.iter().map(|dir| Path::new(dir).join(unit)).find(|path| path.is_file())
}

/// The caller's `systemd:` selectors; none for a process outside any unit. Blocking.
pub fn attest(pid: i32) -> Result<SelectorSet, AttestError> {
    let cgroup =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|_| AttestError::ProcessChanged { pid })?;
    let mut selectors = SelectorSet::new();
    if let Some(unit) = unit_of(&cgroup) {
        selectors.extend(Selector::new("systemd", &format!("id:{unit}")).ok());
        if let Some(path) = fragment_path(&unit, &UNIT_DIRS) {
            selectors.extend(Selector::new("systemd", &format!("fragment_path:{}", path.display())).ok());
        }
    }
    Ok(selectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_read_from_unified_and_legacy_cgroup_lines() {
        assert_eq!(unit_of("0::/system.slice/nginx.service\n").as_deref(), Some("nginx.service"));
        assert_eq!(unit_of("12:pids:/\n1:name=systemd:/system.slice/sshd.service\n").as_deref(), Some("sshd.service"));
        assert_eq!(
            unit_of("0::/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope\n").as_deref(),
            Some("run-r1.scope")
        );
        assert_eq!(unit_of("0::/\n"), None);
        assert_eq!(unit_of("4:memory:/process_api/abc\n0::/\n"), None);
        assert_eq!(unit_of("garbage"), None);
    }

    #[test]
    fn the_fragment_is_the_first_unit_file_found() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        std::fs::write(second.path().join("web.service"), "[Service]\n").unwrap();
        let dirs = [first.path().to_str().unwrap(), second.path().to_str().unwrap()];
        assert_eq!(fragment_path("web.service", &dirs), Some(second.path().join("web.service")));
        assert_eq!(fragment_path("other.service", &dirs), None);
    }

    #[test]
    fn this_process_is_attested_without_error() {
        let selectors = attest(std::process::id() as i32).unwrap();
        assert!(selectors.iter().all(|s| s.kind() == "systemd"));
    }
}
