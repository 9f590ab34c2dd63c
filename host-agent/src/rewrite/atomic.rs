//! Replace a config file without ever leaving a partial one: under
//! kubectl's `<file>.lock`, write a temp file in the same directory with
//! the original's mode and owner, fsync it, rename it over the original and
//! fsync the directory. One backup of the replaced bytes is kept beside it.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::RewriteError;

/// Test hook: when set to a path, the writer creates that file once the
/// temp file is complete and waits until the file is removed (or 60 s), so
/// a test can SIGKILL it between write and rename, or write the file behind
/// its back.
pub const PAUSE_BEFORE_RENAME_ENV: &str = "PORTPLANE_TEST_PAUSE_BEFORE_RENAME";

/// How many times a writer that ignores the lock (talosctl) may change the
/// file under us before we give up for now.
const ATTEMPTS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The edit changed nothing: no lock taken, nothing written.
    Unchanged,
    Written {
        backup: PathBuf,
    },
}

/// Read `path`, apply `edit` to its text and, if that changes anything,
/// replace the file atomically. `edit` may run more than once: again on the
/// newer text whenever another writer got there first.
pub fn update<E>(path: &Path, lock_timeout: Duration, mut edit: E) -> Result<Outcome, RewriteError>
where
    E: FnMut(&str) -> Result<String, RewriteError>,
{
    let before = read(path)?;
    if edit(&before)? == before {
        return Ok(Outcome::Unchanged);
    }
    let _lock = Lock::acquire(path, lock_timeout)?;
    // Write to the symlink's target, so a symlinked ~/.kube/config stays a
    // symlink.
    let target = fs::canonicalize(path).map_err(|e| RewriteError::io(path, "resolve", e))?;
    remove_leftover_temp_files(&target);
    for _ in 0..ATTEMPTS {
        let base = read(&target)?;
        let new = edit(&base)?;
        if new == base {
            return Ok(Outcome::Unchanged);
        }
        let metadata = fs::metadata(&target).map_err(|e| RewriteError::io(&target, "stat", e))?;
        let backup = backup_path(&target);
        replace(&backup, base.as_bytes(), &metadata, 0o600)?;
        let temp = write_temp(&target, new.as_bytes(), &metadata, metadata.mode() & 0o7777)?;
        pause_for_crash_test();
        // A writer that does not take the lock (talosctl) may have written
        // since we read: never rename over its bytes; redo the edit on them.
        if read(&target)? != base {
            let _ = fs::remove_file(&temp);
            continue;
        }
        rename_and_sync(&temp, &target)?;
        return Ok(Outcome::Written { backup });
    }
    Err(RewriteError::Contended {
        path: path.into(),
        attempts: ATTEMPTS,
    })
}

/// `config` -> `config.portplane.bak`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".portplane.bak");
    path.with_file_name(name)
}

/// kubectl's lock: `<file>.lock`, created with O_EXCL, removed after.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

pub fn read(path: &Path) -> Result<String, RewriteError> {
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => RewriteError::Missing {
            path: path.into(),
            hint: "create it first (talosctl cluster create writes it) or point the agent config at the right file"
                .into(),
        },
        _ => RewriteError::io(path, "read", e),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        RewriteError::Invalid {
            path: path.into(),
            line,
            problem: "not UTF-8 text".into(),
        }
    })
}

struct Lock {
    path: PathBuf,
}

impl Lock {
    fn acquire(file: &Path, timeout: Duration) -> Result<Lock, RewriteError> {
        let path = lock_path(file);
        let started = Instant::now();
        let mut announced = false;
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => return Ok(Lock { path }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if !announced {
                        announced = true;
                        tracing::info!(
                            lock = %path.display(),
                            "waiting for the lock another writer holds (kubectl holds it while it writes)"
                        );
                    }
                    if started.elapsed() >= timeout {
                        return Err(RewriteError::Locked {
                            lock: path,
                            waited: timeout,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(e) => return Err(RewriteError::io(path, "create the lock file", e)),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn temp_prefix(target: &Path) -> String {
    format!(
        ".{}.portplane-",
        target.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// Temp files a killed writer left behind. Only called under the lock, so
/// no other portplane writer of this file is running.
fn remove_leftover_temp_files(target: &Path) {
    let (Some(dir), prefix) = (target.parent(), temp_prefix(target)) else {
        return;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Write `bytes` to a new temp file beside `target` with `mode` and the
/// owner of `like`, fsynced.
fn write_temp(
    target: &Path,
    bytes: &[u8],
    like: &fs::Metadata,
    mode: u32,
) -> Result<PathBuf, RewriteError> {
    let temp = target.with_file_name(format!("{}{}.tmp", temp_prefix(target), std::process::id()));
    let _ = fs::remove_file(&temp);
    write_new(&temp, bytes, |file| {
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| RewriteError::io(&temp, "set the mode of", e))?;
        keep_owner(file, target, like)
    })?;
    Ok(temp)
}

/// Create `temp` (which must not exist; mode 0600 until `prepare` says
/// otherwise), write `bytes`, let `prepare` adjust the open file, fsync.
/// On any error the half-written file is removed.
fn write_new(
    temp: &Path,
    bytes: &[u8],
    prepare: impl FnOnce(&File) -> Result<(), RewriteError>,
) -> Result<(), RewriteError> {
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(temp)
            .map_err(|e| RewriteError::io(temp, "create", e))?;
        file.write_all(bytes)
            .map_err(|e| RewriteError::io(temp, "write", e))?;
        prepare(&file)?;
        file.sync_all()
            .map_err(|e| RewriteError::io(temp, "fsync", e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(temp);
    }
    result
}

fn keep_owner(file: &File, target: &Path, like: &fs::Metadata) -> Result<(), RewriteError> {
    let ours = file
        .metadata()
        .map_err(|e| RewriteError::io(target, "stat", e))?;
    if (ours.uid(), ours.gid()) == (like.uid(), like.gid()) {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(like.uid()), Some(like.gid())).map_err(|source| {
        RewriteError::Owner {
            path: target.into(),
            uid: like.uid(),
            gid: like.gid(),
            source,
        }
    })
}

/// Write a file of the agent's own (the inventory cache) the same way:
/// a temp file with a unique name beside it, mode 0600, fsynced, renamed over
/// `path`, the directory fsynced. The folder is created (0700) if missing.
/// No lock and no backup: nothing else writes this file.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RewriteError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| RewriteError::io(dir, "create the folder", e))?;
    }
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = path.with_file_name(format!(
        "{}{}-{n}.tmp",
        temp_prefix(path),
        std::process::id()
    ));
    write_new(&temp, bytes, |_| Ok(()))?;
    rename_and_sync(&temp, path)
}

/// Atomically replace `path` with `bytes` (used for the backup).
fn replace(path: &Path, bytes: &[u8], like: &fs::Metadata, mode: u32) -> Result<(), RewriteError> {
    let temp = write_temp(path, bytes, like, mode)?;
    rename_and_sync(&temp, path)
}

fn rename_and_sync(temp: &Path, target: &Path) -> Result<(), RewriteError> {
    if let Err(e) = fs::rename(temp, target) {
        let _ = fs::remove_file(temp);
        return Err(RewriteError::io(target, "rename the new file over", e));
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RewriteError::io(dir, "fsync the directory", e))
}

fn pause_for_crash_test() {
    let Some(marker) = std::env::var_os(PAUSE_BEFORE_RENAME_ENV) else {
        return;
    };
    let marker = PathBuf::from(marker);
    if fs::write(&marker, std::process::id().to_string()).is_err() {
        return;
    }
    let started = Instant::now();
    while marker.exists() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper(text: &str) -> Result<String, RewriteError> {
        Ok(text.to_uppercase())
    }

    #[test]
    fn writes_keep_mode_and_one_backup_and_no_op_keeps_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        fs::write(&path, "abc\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let outcome = update(&path, Duration::from_secs(1), upper).unwrap();
        assert_eq!(
            outcome,
            Outcome::Written {
                backup: dir.path().join("config.portplane.bak")
            }
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "ABC\n");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
        let backup = dir.path().join("config.portplane.bak");
        assert_eq!(fs::read_to_string(&backup).unwrap(), "abc\n");
        assert_eq!(fs::metadata(&backup).unwrap().mode() & 0o7777, 0o600);

        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(
            update(&path, Duration::from_secs(1), upper).unwrap(),
            Outcome::Unchanged
        );
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no lock or temp file left: {names:?}");
    }

    #[test]
    fn a_held_lock_is_waited_for_then_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        fs::write(&path, "abc").unwrap();
        fs::write(dir.path().join("config.lock"), "").unwrap();
        let err = update(&path, Duration::from_millis(100), upper).unwrap_err();
        assert!(matches!(err, RewriteError::Locked { .. }), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "abc");
    }

    #[test]
    fn a_symlinked_config_stays_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        let link = dir.path().join("config");
        fs::write(&real, "abc").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        update(&link, Duration::from_secs(1), upper).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_to_string(&real).unwrap(), "ABC");
    }

    #[test]
    fn a_private_file_is_0600_in_a_0700_folder_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portplane/inventory.json");
        write_private(&path, b"{}").unwrap();
        write_private(&path, b"{\"revision\":2}").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"revision\":2}");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["inventory.json"]);
    }

    #[test]
    fn missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = update(&dir.path().join("nope"), Duration::from_secs(1), upper).unwrap_err();
        assert!(err.to_string().contains("nope: does not exist"), "{err}");
    }
}
