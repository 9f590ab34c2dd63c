//! `uninstall`: stop and remove the service; optionally put back the
//! kubeconfig and talosconfig saved by the first install.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use super::files::{chown_if_root, snapshot_path, write_atomically};
use super::install::{InstallError, io, run};
use super::{Paths, Platform, launchd, systemd};
use crate::config::AgentConfig;

/// `uninstall`: stop and remove the service; with `restore` (the agent
/// config), put back the kubeconfig and talosconfig saved at install.
pub fn uninstall(
    platform: Platform,
    paths: &Paths,
    restore: Option<&AgentConfig>,
    out: &mut dyn Write,
) -> Result<(), InstallError> {
    let file = paths.service_file(platform);
    match platform {
        Platform::Launchd => {
            let _ = run(&launchd::bootout(), out);
            run(&launchd::disable(), out)?;
        }
        // disable fails on a unit that does not exist.
        Platform::Systemd if file.exists() => run(&systemd::disable_now(), out)?,
        Platform::Systemd => {}
    }
    match std::fs::remove_file(&file) {
        Ok(()) => writeln!(out, "removed {}", file.display()).map_err(io(&file))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            writeln!(out, "{} was not installed", file.display()).map_err(io(&file))?
        }
        Err(e) => return Err(io(&file)(e)),
    }
    if platform == Platform::Systemd {
        run(&systemd::daemon_reload(), out)?;
    }
    if let Some(config) = restore {
        for path in [&config.kubeconfig.path, &config.talosconfig.path] {
            let snapshot = snapshot_path(path);
            let Ok(bytes) = std::fs::read(&snapshot) else {
                writeln!(
                    out,
                    "{}: no copy from before install ({} is missing); left as it is",
                    path.display(),
                    snapshot.display()
                )
                .map_err(io(path))?;
                continue;
            };
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o600);
            let owner = std::fs::metadata(path)
                .ok()
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
            write_atomically(path, &bytes, mode)?;
            if let (Some(uid), Ok(meta)) = (owner, std::fs::metadata(&snapshot)) {
                chown_if_root(path, uid, std::os::unix::fs::MetadataExt::gid(&meta))?;
            }
            std::fs::remove_file(&snapshot).map_err(io(&snapshot))?;
            writeln!(out, "restored {} from before install", path.display()).map_err(io(path))?;
        }
    }
    Ok(())
}
