//! Serving workloads: the Workload API ([`api`]) and Envoy SDS ([`sds`]) on one Unix
//! socket, the connection wrapper that lets gRPC C-core clients in ([`authority`]), and
//! who is calling ([`caller`], through the [`unix`] and [`systemd`] attestors).

pub mod api;
pub mod authority;
pub mod caller;
pub mod sds;
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
