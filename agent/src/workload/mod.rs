//! Serving workloads: the Workload API on a Unix socket ([`api`]), the connection wrapper
//! that lets gRPC C-core clients in ([`authority`]), and the attestors that say who is
//! calling ([`unix`], [`systemd`]).

pub mod api;
pub mod authority;
pub mod systemd;
pub mod unix;

use std::path::Path;

use tokio::net::UnixListener;

/// Binds the Workload API socket: replaces a stale socket file, creates the directory, and
/// opens the socket to every local user (workloads of any uid must reach it; who they are
/// is decided by attestation, not by file modes).
pub fn bind(socket_path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(socket_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(socket_path)?;
    std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o777))?;
    Ok(listener)
}
