//! Under `run`: rewrite at start and whenever either file changes on disk.
//! Polling (mtime, size, inode) is enough for two small files and works the
//! same on macOS and Linux. Our own write is seen as a change once and then
//! found to need nothing, so there is no rewrite loop; a writer such as
//! `talosctl cluster create` gets one rewrite after it settles. Never fatal:
//! problems are logged and the files left as they are.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::apply::{self, Env, FileReport};
use super::atomic::Outcome;
use super::error::RewriteError;
use crate::config::AgentConfig;

const POLL: Duration = Duration::from_secs(1);
/// A file must look the same this long before it is rewritten, so a
/// writer's several steps are not interleaved with ours.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// Runs until dropped; `KUBECONFIG`/`TALOSCONFIG` are read once, here.
pub async fn keep_rewritten(config: AgentConfig) {
    keep_rewritten_with(config, Env::from_process()).await;
}

pub async fn keep_rewritten_with(config: AgentConfig, env: Env) {
    let mut seen: [Option<Vec<Option<Stamp>>>; 2] = [None, None];
    loop {
        for (which, last) in seen.iter_mut().enumerate() {
            let files = watched_files(&config, &env, which);
            let now = stamps(&files);
            if last.as_ref() == Some(&now) {
                continue;
            }
            tokio::time::sleep(SETTLE).await;
            if stamps(&files) != now {
                continue; // still being written; look again next round
            }
            let (config, env) = (config.clone(), env.clone());
            let result = tokio::task::spawn_blocking(move || match which {
                0 => apply::rewrite_kubeconfig(&config, &env),
                _ => apply::rewrite_talosconfig(&config, &env),
            })
            .await;
            match result {
                Ok(result) => log(result),
                Err(error) => tracing::error!(%error, "config rewrite task failed"),
            }
            *last = Some(stamps(&files));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn log(result: Result<FileReport, RewriteError>) {
    match result {
        Ok(report) => {
            for warning in &report.warnings {
                tracing::warn!(path = %report.path.display(), "{warning}");
            }
            match report.outcome {
                Outcome::Written { .. } => tracing::info!("{report}"),
                Outcome::Unchanged => tracing::debug!("{report}"),
            }
        }
        Err(error) => tracing::warn!(%error, "config not rewritten; the tunnel is unaffected"),
    }
}

/// Every file whose change may call for a rewrite: all of `KUBECONFIG`'s
/// list, or the configured path.
fn watched_files(config: &AgentConfig, env: &Env, which: usize) -> Vec<PathBuf> {
    match (which, &env.kubeconfig) {
        (0, Some(list)) => std::env::split_paths(list).collect(),
        (0, None) => vec![config.kubeconfig.path.clone()],
        _ => vec![apply::talosconfig_path(config, env)],
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Option<Stamp>> {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f).ok().map(|m| Stamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: m.ino(),
            })
        })
        .collect()
}
