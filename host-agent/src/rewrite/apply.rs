//! The edges: which files (`KUBECONFIG`, `TALOSCONFIG`, the agent config),
//! which values (the forwards' listen addresses), probing stale ports, and
//! handing the pure edits to the atomic writer.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::atomic::{self, Outcome};
use super::error::RewriteError;
use super::kubeconfig::{self, KubeTarget};
use super::talosconfig::{self, TalosTarget};

/// How long to wait for kubectl's `<file>.lock`.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// What one file's rewrite did, in words for the log and the terminal.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: PathBuf,
    pub outcome: Outcome,
    /// e.g. `cluster "joelclaw-1": server https://127.0.0.1:64213 -> https://127.0.0.1:16443`.
    pub summary: String,
    pub warnings: Vec<String>,
}

impl std::fmt::Display for FileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.summary)?;
        match &self.outcome {
            Outcome::Unchanged => write!(f, " (already so, not written)"),
            Outcome::Written { backup } => {
                write!(f, " (written; previous version in {})", backup.display())
            }
        }
    }
}

/// The environment variables that win over the agent config's paths.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub kubeconfig: Option<OsString>,
    pub talosconfig: Option<OsString>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            kubeconfig: std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()),
            talosconfig: std::env::var_os("TALOSCONFIG").filter(|v| !v.is_empty()),
        }
    }
}

/// What the rewrites need to know: which files (the environment's
/// `KUBECONFIG`/`TALOSCONFIG` win over these paths) and the values to write.
/// Built from the agent's config by `AgentConfig::rewrite_plan`; the engine
/// knows nothing else of that config.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `[kubeconfig] path`.
    pub kubeconfig_path: PathBuf,
    /// The cluster entry to point at the kube-apiserver forward.
    pub kube: KubeTarget,
    /// `[talosconfig] path`.
    pub talosconfig_path: PathBuf,
    /// The context to point at the talos-api forward.
    pub talos: TalosTarget,
}

/// The kubeconfig to edit: the first file of `KUBECONFIG` that holds the
/// cluster (kubectl's merge gives the first file's entry precedence), else
/// the agent config's path.
pub fn kubeconfig_path(plan: &Plan, env: &Env) -> Result<PathBuf, RewriteError> {
    let Some(list) = &env.kubeconfig else {
        return Ok(plan.kubeconfig_path.clone());
    };
    let files: Vec<PathBuf> = std::env::split_paths(list)
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    let mut read = Vec::new();
    for file in &files {
        let text = match atomic::read(file) {
            Ok(text) => text,
            Err(RewriteError::Missing { .. }) => continue,
            Err(e) => return Err(e),
        };
        read.push(file.display().to_string());
        if kubeconfig::holds_cluster(&text, &plan.kube.cluster)
            .map_err(|e| RewriteError::invalid(file, e))?
        {
            return Ok(file.clone());
        }
    }
    if read.is_empty() {
        return Err(RewriteError::Missing {
            path: PathBuf::from(list),
            hint: "no file of KUBECONFIG exists".into(),
        });
    }
    Err(RewriteError::NotInList {
        list: list.to_string_lossy().into_owned(),
        cluster: plan.kube.cluster.clone(),
        read: read.join(", "),
    })
}

pub fn talosconfig_path(plan: &Plan, env: &Env) -> PathBuf {
    env.talosconfig
        .as_ref()
        .map_or_else(|| plan.talosconfig_path.clone(), PathBuf::from)
}

pub fn rewrite_kubeconfig(plan: &Plan, env: &Env) -> Result<FileReport, RewriteError> {
    let path = kubeconfig_path(plan, env)?;
    let target = &plan.kube;
    let mut report = None;
    let outcome = atomic::update(&path, LOCK_TIMEOUT, |text| {
        let edited = kubeconfig::rewrite(text, target, &mut port_is_dead)
            .map_err(|e| RewriteError::invalid(&path, e))?;
        report = Some(edited.report);
        Ok(edited.text)
    })?;
    let report = report.unwrap_or_default();
    let mut warnings = report.warnings;
    if !report.stale.is_empty() && report.pruned.is_empty() {
        warnings.push(format!(
            "stale contexts (their loopback port is dead): {}; set [kubeconfig] prune_stale = true to remove them",
            report.stale.join(", ")
        ));
    }
    let mut summary = format!(
        "cluster \"{}\": server {} -> {}",
        report.cluster,
        report.previous_server.as_deref().unwrap_or("(none)"),
        target.server
    );
    if !report.pruned.is_empty() {
        summary.push_str(&format!("; pruned {}", report.pruned.join(", ")));
    }
    Ok(FileReport {
        path,
        outcome,
        summary,
        warnings,
    })
}

pub fn rewrite_talosconfig(plan: &Plan, env: &Env) -> Result<FileReport, RewriteError> {
    let path = talosconfig_path(plan, env);
    let target = &plan.talos;
    let mut report = None;
    let outcome = atomic::update(&path, LOCK_TIMEOUT, |text| {
        let edited =
            talosconfig::rewrite(text, target).map_err(|e| RewriteError::invalid(&path, e))?;
        report = Some(edited.report);
        Ok(edited.text)
    })?;
    let report = report.unwrap_or_default();
    Ok(FileReport {
        path,
        outcome,
        summary: format!(
            "context \"{}\": endpoints [{}] -> [{}], nodes [{}]",
            report.context,
            report.previous_endpoints.join(", "),
            target.endpoint,
            target.node
        ),
        warnings: report.warnings,
    })
}

/// A loopback server that refuses connections is dead; one that does not
/// answer in time is given the benefit of the doubt.
pub fn port_is_dead(host: &str, port: u16) -> bool {
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    let addrs: Vec<SocketAddr> = addrs.collect();
    !addrs.is_empty()
        && addrs.iter().all(|addr| {
            matches!(
                TcpStream::connect_timeout(addr, Duration::from_millis(300)),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Before: "<existing file>: does not exist; no file of KUBECONFIG=...
    /// holds cluster" about a file that exists.
    #[test]
    fn a_kubeconfig_list_without_the_cluster_names_the_files_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "apiVersion: v1\nclusters: []\ncontexts: []\n").unwrap();
        let missing = dir.path().join("missing");
        let list = std::env::join_paths([&missing, &other]).unwrap();
        let config = crate::config::AgentConfig::parse(&dir.path().join("agent.toml"), "").unwrap();
        let env = Env {
            kubeconfig: Some(list),
            talosconfig: None,
        };
        let error = kubeconfig_path(&config.rewrite_plan(), &env)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("does not exist"), "{error}");
        assert!(
            error.contains(&format!(
                "no file holds cluster \"joelclaw\" (read: {})",
                other.display()
            )),
            "{error}"
        );
    }
}
