//! SoftHSM2 tokens for tests and benches: a token directory of their own, named by
//! SOFTHSM2_CONF (the module reads it once, at C_Initialize).

use std::path::{Path, PathBuf};

/// The module deploy/bootstrap.sh installs.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Writes `<dir>/softhsm2.conf` for a token directory in `dir` and initialises a token
/// labelled `label` with user PIN `pin` there; returns the conf's path.
pub fn init_token(dir: &Path, label: &str, pin: &str) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("token dir");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
    )
    .expect("softhsm2.conf");
    let out = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", "87654321"])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (deploy/bootstrap.sh installs softhsm2)");
    assert!(out.status.success(), "softhsm2-util: {}", String::from_utf8_lossy(&out.stderr));
    conf
}
