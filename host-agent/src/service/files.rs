//! Files install and uninstall write: folders owned by the service user,
//! atomic writes, and the pre-install copies of the configs.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::install::{InstallError, io};
use super::user::ServiceUser;

/// Create `dir` (and its parents) when missing, owned by the service user;
/// an existing folder is left as it is.
pub fn create_owned_dir(dir: &Path, mode: u32, user: &ServiceUser) -> Result<(), InstallError> {
    if dir.is_dir() {
        return Ok(());
    }
    // Create each missing level so every new folder gets the user as owner.
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur.filter(|d| !d.exists()) {
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    for d in missing.iter().rev() {
        std::fs::create_dir(d).map_err(io(d))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).map_err(io(d))?;
        chown_if_root(d, user.uid, user.gid)?;
    }
    Ok(())
}

pub fn chown_if_root(path: &Path, uid: u32, gid: u32) -> Result<(), InstallError> {
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io(path))?;
    }
    Ok(())
}

/// `<file>.portplane.pre-install`: the config as it was before the first
/// install, for `uninstall --restore-configs`. A later install keeps it.
pub fn snapshot_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".portplane.pre-install");
    path.with_file_name(name)
}

pub fn snapshot_config(path: &Path, user: &ServiceUser) -> Result<(), InstallError> {
    let snapshot = snapshot_path(path);
    if snapshot.exists() || !path.exists() {
        return Ok(());
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    write_atomically(&snapshot, &bytes, 0o600)?;
    chown_if_root(&snapshot, user.uid, user.gid)
}

/// Temp file in the same folder, fsync, rename: readers never see half a file.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    let dir = path
        .parent()
        .ok_or_else(|| InstallError::Unsupported(format!("{}: no folder", path.display())))?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".portplane-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(bytes).map_err(io(path))?;
    tmp.as_file().sync_all().map_err(io(path))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
        .map_err(io(path))?;
    chown_if_root(tmp.path(), 0, 0)?;
    tmp.persist(path).map_err(|e| io(path)(e.error))?;
    Ok(())
}
