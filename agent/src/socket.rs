//! Binding the agent's Unix sockets (the Workload API's and the admin socket).

use std::path::Path;

use tokio::net::UnixListener;

/// Binds a Unix socket at `path` with file mode `mode`: creates the directory and replaces
/// a stale socket file left by an agent that did not stop cleanly.
pub fn bind(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}
