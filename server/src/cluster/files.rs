//! What a replica keeps on disk to take part in the cluster: the cluster id, the cluster CA
//! and its own replica certificate and key, under `<data_dir>/cluster/`. Written when the
//! replica initialises or joins; `cluster.json` is written last and marks the set complete,
//! so a crash half-way leaves a pristine replica rather than a broken one. A rotation of the
//! cluster CA writes the new CA's files under its generation (`ca-<n>.der`, `ca-<n>.key`;
//! generation 0 is `ca.der`, `ca.key`), then `cluster.json` naming which CA this replica
//! issues from and which other one it still trusts, then deletes the files of any other.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::ClusterSetupError;

const DIR: &str = "cluster";
const MARKER: &str = "cluster.json";

/// The files' contents.
pub struct ClusterMaterial {
    pub cluster_id: String,
    /// The generation of the CA this replica issues from (0 until the first rotation).
    pub ca_generation: u64,
    pub ca_cert_der: Vec<u8>,
    pub ca_key_pkcs8: Zeroizing<Vec<u8>>,
    /// During a rotation: the other cluster CA (generation, certificate) still trusted.
    pub also_trusted: Option<(u64, Vec<u8>)>,
    pub replica_cert_der: Vec<u8>,
    pub replica_key_pkcs8: Zeroizing<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
struct Marker {
    cluster_id: String,
    #[serde(default)]
    ca_generation: u64,
    #[serde(default)]
    also_trusted: Option<u64>,
}

/// The certificate and key file names of cluster CA `generation`.
fn ca_files(generation: u64) -> (String, String) {
    match generation {
        0 => ("ca.der".into(), "ca.key".into()),
        n => (format!("ca-{n}.der"), format!("ca-{n}.key")),
    }
}

fn io_error(path: &Path, e: std::io::Error) -> ClusterSetupError {
    ClusterSetupError::Files(format!("{}: {e}", path.display()))
}

/// `<data_dir>/cluster`.
fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(DIR)
}

/// The marker in `dir`; `None` if there is none (a pristine replica).
fn read_marker(dir: &Path) -> Result<Option<Marker>, ClusterSetupError> {
    let path = dir.join(MARKER);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path, e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| ClusterSetupError::Files(format!("{}: {e}", path.display())))
}

/// Reads the material if this replica has initialised or joined; `None` if it is pristine.
pub fn load(data_dir: &Path) -> Result<Option<ClusterMaterial>, ClusterSetupError> {
    let dir = dir(data_dir);
    let Some(marker) = read_marker(&dir)? else { return Ok(None) };
    let read = |name: &str| fs::read(dir.join(name)).map_err(|e| io_error(&dir.join(name), e));
    let read_secret = |name: &str| -> Result<Zeroizing<Vec<u8>>, ClusterSetupError> {
        let path = dir.join(name);
        let mode = fs::metadata(&path).map_err(|e| io_error(&path, e))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(ClusterSetupError::Files(format!(
                "{} is readable by group or others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            )));
        }
        read(name).map(Zeroizing::new)
    };
    let (ca_cert, ca_key) = ca_files(marker.ca_generation);
    let also_trusted = match marker.also_trusted {
        Some(generation) => Some((generation, read(&ca_files(generation).0)?)),
        None => None,
    };
    Ok(Some(ClusterMaterial {
        cluster_id: marker.cluster_id,
        ca_generation: marker.ca_generation,
        ca_cert_der: read(&ca_cert)?,
        ca_key_pkcs8: read_secret(&ca_key)?,
        also_trusted,
        replica_cert_der: read("replica.der")?,
        replica_key_pkcs8: read_secret("replica.key")?,
    }))
}

/// Writes the material; refuses to overwrite a replica that already has some.
pub fn store(data_dir: &Path, material: &ClusterMaterial) -> Result<(), ClusterSetupError> {
    if load(data_dir)?.is_some() {
        return Err(ClusterSetupError::AlreadyMember);
    }
    let dir = dir(data_dir);
    fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| io_error(&dir, e))?;
    let (ca_cert, ca_key) = ca_files(material.ca_generation);
    write_file(&dir, &ca_cert, &material.ca_cert_der)?;
    write_file(&dir, &ca_key, &material.ca_key_pkcs8)?;
    if let Some((generation, cert)) = &material.also_trusted {
        write_file(&dir, &ca_files(*generation).0, cert)?;
    }
    write_file(&dir, "replica.der", &material.replica_cert_der)?;
    write_file(&dir, "replica.key", &material.replica_key_pkcs8)?;
    write_marker(&dir, &material.cluster_id, material.ca_generation, material.also_trusted.as_ref().map(|(g, _)| *g))
}

fn write_marker(
    dir: &Path,
    cluster_id: &str,
    ca_generation: u64,
    also_trusted: Option<u64>,
) -> Result<(), ClusterSetupError> {
    let marker = serde_json::to_vec(&Marker { cluster_id: cluster_id.to_owned(), ca_generation, also_trusted })
        .map_err(|e| ClusterSetupError::Files(e.to_string()))?;
    write_file(dir, MARKER, &marker)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))
}

/// Makes cluster CA `generation` (certificate and key) the one this replica issues from,
/// and `also_trusted` (generation, certificate) the other one it trusts, if any; then
/// deletes the files of every other CA. The marker switches last, so a crash leaves the
/// replica on the CAs it had, or on the new ones, never between.
pub fn set_cluster_cas(
    data_dir: &Path,
    generation: u64,
    cert_der: &[u8],
    key_pkcs8: &[u8],
    also_trusted: Option<(u64, &[u8])>,
) -> Result<(), ClusterSetupError> {
    let dir = dir(data_dir);
    let marker = read_marker(&dir)?.ok_or(ClusterSetupError::NotMember)?;
    let (ca_cert, ca_key) = ca_files(generation);
    write_file(&dir, &ca_cert, cert_der)?;
    write_file(&dir, &ca_key, key_pkcs8)?;
    if let Some((other, cert)) = also_trusted {
        write_file(&dir, &ca_files(other).0, cert)?;
    }
    write_marker(&dir, &marker.cluster_id, generation, also_trusted.map(|(g, _)| g))?;
    let mut keep = vec![ca_cert, ca_key];
    if let Some((other, _)) = also_trusted {
        keep.push(ca_files(other).0);
    }
    for entry in fs::read_dir(&dir).map_err(|e| io_error(&dir, e))? {
        let entry = entry.map_err(|e| io_error(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_ca = name.starts_with("ca") && (name.ends_with(".der") || name.ends_with(".key"));
        if is_ca && !keep.contains(&name) {
            fs::remove_file(entry.path()).map_err(|e| io_error(&entry.path(), e))?;
        }
    }
    fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| io_error(&dir, e))
}

/// Replaces the replica certificate (same key) of a replica that has cluster files.
pub fn replace_replica_certificate(data_dir: &Path, cert_der: &[u8]) -> Result<(), ClusterSetupError> {
    let dir = dir(data_dir);
    write_file(&dir, "replica.der", cert_der)?;
    fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| io_error(&dir, e))
}

/// Creates `path` (0600) with `contents`, whole or not at all; refuses an existing file.
pub fn write_new(path: &Path, contents: &[u8]) -> Result<(), ClusterSetupError> {
    if !path.is_absolute() {
        return Err(ClusterSetupError::Files(format!("{} must be an absolute path", path.display())));
    }
    let dir = path.parent().ok_or_else(|| ClusterSetupError::Files(format!("{} has no directory", path.display())))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ClusterSetupError::Files(format!("{} has no file name", path.display())))?;
    if path.exists() {
        return Err(ClusterSetupError::Files(format!("{} exists; not overwriting it", path.display())));
    }
    write_file(dir, name, contents)
}

/// Temp file (0600), fsync, rename: the file is whole or absent.
fn write_file(dir: &Path, name: &str, contents: &[u8]) -> Result<(), ClusterSetupError> {
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| io_error(&temp, e))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|e| io_error(&temp, e))?;
    fs::rename(&temp, &path).map_err(|e| io_error(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> ClusterMaterial {
        ClusterMaterial {
            cluster_id: "c1".into(),
            ca_generation: 0,
            ca_cert_der: vec![1],
            ca_key_pkcs8: Zeroizing::new(vec![2]),
            also_trusted: None,
            replica_cert_der: vec![3],
            replica_key_pkcs8: Zeroizing::new(vec![4]),
        }
    }

    #[test]
    fn round_trips_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        store(dir.path(), &material()).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!((loaded.cluster_id.as_str(), loaded.replica_key_pkcs8.as_slice()), ("c1", &[4u8][..]));
        let mode = fs::metadata(dir.path().join("cluster/ca.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(store(dir.path(), &material()), Err(ClusterSetupError::AlreadyMember)));
    }

    #[test]
    fn a_rotation_switches_the_cas_and_leaves_no_old_key_behind() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &material()).unwrap();
        set_cluster_cas(dir.path(), 0, &[1], &[2], Some((1, &[5][..]))).unwrap();
        let prepared = load(dir.path()).unwrap().unwrap();
        assert_eq!((prepared.ca_generation, prepared.also_trusted), (0, Some((1, vec![5]))));
        set_cluster_cas(dir.path(), 1, &[5], &[6], Some((0, &[1][..]))).unwrap();
        let active = load(dir.path()).unwrap().unwrap();
        assert_eq!((active.ca_generation, active.ca_cert_der, active.also_trusted), (1, vec![5], Some((0, vec![1]))));
        assert_eq!(active.ca_key_pkcs8.as_slice(), &[6]);
        assert!(!dir.path().join("cluster/ca.key").exists(), "the old key is gone once it is no longer issued from");
        set_cluster_cas(dir.path(), 1, &[5], &[6], None).unwrap();
        let retired = load(dir.path()).unwrap().unwrap();
        assert_eq!((retired.cluster_id.as_str(), retired.also_trusted), ("c1", None));
        let mut left: Vec<String> = fs::read_dir(dir.path().join("cluster"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["ca-1.der", "ca-1.key", "cluster.json", "replica.der", "replica.key"]);
    }

    #[test]
    fn refuses_keys_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &material()).unwrap();
        fs::set_permissions(dir.path().join("cluster/replica.key"), fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(dir.path()).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
