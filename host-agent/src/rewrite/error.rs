use std::path::PathBuf;
use std::time::Duration;

use super::yaml::YamlError;

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("{path}: does not exist; {hint}")]
    Missing { path: PathBuf, hint: String },
    /// `KUBECONFIG` lists files, and none of those that exist holds the
    /// cluster (they do exist: `Missing` would contradict them).
    #[error(
        "KUBECONFIG={list}: no file holds cluster \"{cluster}\" (read: {read}); create it with \
         `talosctl cluster create --name {cluster}` or set [kubeconfig] cluster"
    )]
    NotInList {
        list: String,
        cluster: String,
        read: String,
    },
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// A malformed file, or one without the cluster/context to rewrite.
    #[error("{path}:{line}: {problem}; the file was left untouched")]
    Invalid {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error(
        "{lock}: still held after {waited:?} (kubectl takes it while writing); \
         if no kubectl or portplane-agent is running, remove it"
    )]
    Locked { lock: PathBuf, waited: Duration },
    #[error("{path}: changed by another writer on each of {attempts} attempts; left as it is")]
    Contended { path: PathBuf, attempts: u32 },
    #[error("{path}: owned by uid {uid} gid {gid} and cannot keep that owner: {source}")]
    Owner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: std::io::Error,
    },
}

impl RewriteError {
    pub fn invalid(path: impl Into<PathBuf>, error: YamlError) -> Self {
        RewriteError::Invalid {
            path: path.into(),
            line: error.line,
            problem: error.problem,
        }
    }

    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        RewriteError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}
