//! The status socket: `run` serves a read-only JSON snapshot on a Unix
//! socket in a folder only its user can open (0700; the socket itself 0600).
//! A client connects and reads one JSON object; the agent reads nothing from
//! it, so there is no write path.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use super::AgentStatus;
use super::live::Live;

/// Largest answer a client accepts: a snapshot is a few KiB.
pub const MAX_ANSWER: u64 = 1024 * 1024;
/// How long the agent gives a client to take its answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: cannot create the status folder: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: the status socket's folder must be yours alone (owner uid {owner}, mode {mode:o}); \
         use a folder of your own (the default is ~/.local/state/portplane) or chmod 700 it"
    )]
    SharedFolder {
        path: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error("{path}: another agent answers on this socket (pid {pid})")]
    InUse { path: PathBuf, pid: u32 },
    #[error("{path}: exists and is not a socket; move it away")]
    NotASocket { path: PathBuf },
    #[error("{path}: cannot listen: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Nothing listens: the agent is not running (or uses another socket).
    #[error("{path}: no agent answers ({source})")]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the answer is not an agent status: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Create the folder (0700), clear a socket left by a dead agent, bind, and
/// make the socket 0600. Fails, touching nothing, when a live agent answers.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    if let Some(dir) = path.parent() {
        private_folder(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if let Ok(status) = query(path, Duration::from_secs(2)) {
                return Err(SocketError::InUse {
                    path: path.into(),
                    pid: status.pid,
                });
            }
            let _ = std::fs::remove_file(path);
        }
        Ok(_) => return Err(SocketError::NotASocket { path: path.into() }),
        Err(_) => {}
    }
    let bind_error = |source| SocketError::Bind {
        path: path.into(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    Ok(listener)
}

/// A folder only this user can open: created 0700 when missing; an
/// existing one must already be ours and closed to others (we never chmod a
/// folder we did not make: think `/tmp`).
fn private_folder(dir: &Path) -> Result<(), SocketError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let folder = |source| SocketError::Folder {
        path: dir.into(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(folder)?;
        // The umask may have taken bits off; never added any.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(folder)?;
    }
    let meta = std::fs::metadata(dir).map_err(folder)?;
    let mode = meta.mode() & 0o7777;
    if meta.uid() != nix::unistd::geteuid().as_raw() || mode & 0o077 != 0 {
        return Err(SocketError::SharedFolder {
            path: dir.into(),
            owner: meta.uid(),
            mode,
        });
    }
    Ok(())
}

/// Answer every connection with one snapshot, until the task is dropped.
pub async fn serve(listener: UnixListener, live: Arc<Live>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "status socket: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let live = live.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let Ok(mut body) = serde_json::to_vec(&live.snapshot()) else {
                return;
            };
            body.push(b'\n');
            let write = async {
                stream.write_all(&body).await?;
                stream.shutdown().await
            };
            if let Err(error) = tokio::time::timeout(WRITE_TIMEOUT, write)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            {
                tracing::debug!(%error, "status socket: client went away");
            }
        });
    }
}

/// Ask the agent on `path` (blocking; for the CLI).
pub fn query(path: &Path, timeout: Duration) -> Result<AgentStatus, QueryError> {
    let stream =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| QueryError::NotRunning {
            path: path.into(),
            source,
        })?;
    let io = |source| QueryError::Io {
        path: path.into(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut text = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut text).map_err(io)?;
    serde_json::from_slice(&text).map_err(|source| QueryError::Parse {
        path: path.into(),
        source,
    })
}

/// The default socket: `~/.local/state/portplane/agent.sock` (the agent's
/// state folder, which the systemd unit makes writable).
pub fn default_path(home: &Path) -> PathBuf {
    home.join(".local/state/portplane/agent.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_is_private_and_a_shared_folder_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/portplane/agent.sock");
        let listener = bind(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        drop(listener);
        // A socket left by a dead agent is replaced.
        bind(&path).unwrap();

        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = bind(&shared.join("agent.sock")).unwrap_err().to_string();
        assert!(err.contains("must be yours alone"), "{err}");
        assert_eq!(mode(&shared), 0o1777, "left as it was");

        let file = dir.path().join("state/portplane/not-a-socket");
        std::fs::write(&file, "keep").unwrap();
        let err = bind(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }
}
