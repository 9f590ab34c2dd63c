//! Under `run`: rewrite at start and whenever either file changes on disk.
//! Polling (mtime, size, inode) is enough for two small files and works the
//! same on macOS and Linux. Our own write is seen as a change once and then
//! found to need nothing, so there is no rewrite loop; a writer such as
//! `talosctl cluster create` gets one rewrite after it settles. Never fatal:
//! problems are logged and the files left as they are. A rewrite that failed
//! for a reason that can pass without the file changing (a stale
//! `<file>.lock`, another writer, an I/O error) is retried with backoff
//! ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]) until it succeeds or the file
//! changes; a malformed file waits for its next change.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::apply::{self, Env, FileReport, Plan};
use super::atomic::Outcome;
use super::error::RewriteError;

const POLL: Duration = Duration::from_secs(1);
/// A file must look the same this long before it is rewritten, so a
/// writer's several steps are not interleaved with ours.
const SETTLE: Duration = Duration::from_millis(300);
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(60);

/// A failed rewrite to try again: when, and the wait that led there.
#[derive(Debug, Clone, Copy)]
struct Retry {
    at: tokio::time::Instant,
    backoff: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// The two files kept rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum File {
    Kubeconfig,
    Talosconfig,
}

impl File {
    const BOTH: [File; 2] = [File::Kubeconfig, File::Talosconfig];
}

/// Runs until dropped; `KUBECONFIG`/`TALOSCONFIG` are read once, here.
pub async fn keep_rewritten(plan: Plan) {
    keep_rewritten_with(plan, Env::from_process()).await;
}

pub async fn keep_rewritten_with(plan: Plan, env: Env) {
    // Per file of File::BOTH: its stamps when last looked at, its retry.
    let mut seen: [Option<Vec<Option<Stamp>>>; 2] = [None, None];
    let mut retries: [Option<Retry>; 2] = [None, None];
    loop {
        for (file, (last, retry)) in File::BOTH
            .into_iter()
            .zip(seen.iter_mut().zip(retries.iter_mut()))
        {
            let files = watched_files(&plan, &env, file);
            let now = stamps(&files);
            let changed = last.as_ref() != Some(&now);
            let due = retry.is_some_and(|r| tokio::time::Instant::now() >= r.at);
            if !changed && !due {
                continue;
            }
            tokio::time::sleep(SETTLE).await;
            if stamps(&files) != now {
                continue; // still being written; look again next round
            }
            let (plan, env) = (plan.clone(), env.clone());
            let result = tokio::task::spawn_blocking(move || match file {
                File::Kubeconfig => apply::rewrite_kubeconfig(&plan, &env),
                File::Talosconfig => apply::rewrite_talosconfig(&plan, &env),
            })
            .await;
            *retry = match result {
                Ok(Err(error)) if passes_without_a_change(&error) => {
                    // A change to the file starts the backoff over.
                    let backoff = match retry {
                        Some(r) if !changed => (r.backoff * 2).min(RETRY_MAX),
                        _ => RETRY_FIRST,
                    };
                    tracing::warn!(
                        %error, retry_in = ?backoff,
                        "config not rewritten; the tunnel is unaffected"
                    );
                    Some(Retry {
                        at: tokio::time::Instant::now() + backoff,
                        backoff,
                    })
                }
                Ok(result) => {
                    log(result);
                    None
                }
                Err(error) => {
                    tracing::error!(%error, "config rewrite task failed");
                    None
                }
            };
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

/// Errors that can go away while the file stays as it is.
fn passes_without_a_change(error: &RewriteError) -> bool {
    matches!(
        error,
        RewriteError::Locked { .. }
            | RewriteError::Contended { .. }
            | RewriteError::Io { .. }
            | RewriteError::Owner { .. }
    )
}

/// Every file whose change may call for a rewrite: all of `KUBECONFIG`'s
/// list, or the configured path.
fn watched_files(plan: &Plan, env: &Env, file: File) -> Vec<PathBuf> {
    match (file, &env.kubeconfig) {
        (File::Kubeconfig, Some(list)) => std::env::split_paths(list).collect(),
        (File::Kubeconfig, None) => vec![plan.kubeconfig_path.clone()],
        (File::Talosconfig, _) => vec![apply::talosconfig_path(plan, env)],
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
