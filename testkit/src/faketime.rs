//! One process's wall clock set off from the machine's with libfaketime (Debian
//! `faketime`, installed by deploy/bootstrap.sh): a replica or agent whose clock is wrong
//! while the rest of the machine's is right. Monotonic clocks stay real, as when a host's
//! time-of-day is off but its timers are not: timeouts and leases run at the true rate.

use std::path::PathBuf;

/// Where Debian puts the multi-threaded build of the library (our processes are).
fn library() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|dir| dir.path().join("faketime/libfaketimeMT.so.1"))
        .find(|path| path.exists());
    found.unwrap_or_else(|| panic!("libfaketimeMT.so.1 not found under /usr/lib/*/faketime: install faketime"))
}

/// The environment that makes a child's wall clock read `offset` from the real one:
/// libfaketime's relative format, such as `+10m` or `-3m`.
pub fn env(offset: &str) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), library().display().to_string()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// The variables [`env`] sets, to remove them again.
pub const VARIABLES: [&str; 3] = ["LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_FAKE_MONOTONIC"];
