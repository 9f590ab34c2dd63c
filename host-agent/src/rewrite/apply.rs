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
use crate::config::AgentConfig;

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

pub fn kube_target(config: &AgentConfig) -> KubeTarget {
    let section = &config.kubeconfig;
    let forward = config.forward(&section.forward);
    let listen = forward.map_or(SocketAddr::from(([127, 0, 0, 1], 16443)), |f| f.listen);
    // The Talos apiserver certificate names 127.0.0.1 and the node address;
    // on any other loopback address, verify against the node's name instead.
    let tls_server_name = (listen.ip() != std::net::Ipv4Addr::LOCALHOST)
        .then(|| forward.map(|f| f.target.host.clone()))
        .flatten();
    KubeTarget {
        cluster: section.cluster.clone(),
        server: format!("https://{listen}"),
        tls_server_name,
        insecure_skip_tls_verify: section.insecure_skip_tls_verify,
        prune_stale: section.prune_stale,
    }
}

pub fn talos_target(config: &AgentConfig) -> TalosTarget {
    let section = &config.talosconfig;
    let endpoint = config
        .forward(&section.forward)
        .map_or_else(|| "127.0.0.1:15000".to_string(), |f| f.listen.to_string());
    TalosTarget {
        context: section.context.clone(),
        endpoint,
        node: section.node.clone(),
    }
}

/// The kubeconfig to edit: the first file of `KUBECONFIG` that holds the
/// cluster (kubectl's merge gives the first file's entry precedence), else
/// the agent config's path.
pub fn kubeconfig_path(config: &AgentConfig, env: &Env) -> Result<PathBuf, RewriteError> {
    let Some(list) = &env.kubeconfig else {
        return Ok(config.kubeconfig.path.clone());
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
        if kubeconfig::holds_cluster(&text, &config.kubeconfig.cluster)
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
        cluster: config.kubeconfig.cluster.clone(),
        read: read.join(", "),
    })
}

pub fn talosconfig_path(config: &AgentConfig, env: &Env) -> PathBuf {
    env.talosconfig
        .as_ref()
        .map_or_else(|| config.talosconfig.path.clone(), PathBuf::from)
}

pub fn rewrite_kubeconfig(config: &AgentConfig, env: &Env) -> Result<FileReport, RewriteError> {
    let path = kubeconfig_path(config, env)?;
    let target = kube_target(config);
    let mut report = None;
    let outcome = atomic::update(&path, LOCK_TIMEOUT, |text| {
        let edited = kubeconfig::rewrite(text, &target, &mut port_is_dead)
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

pub fn rewrite_talosconfig(config: &AgentConfig, env: &Env) -> Result<FileReport, RewriteError> {
    let path = talosconfig_path(config, env);
    let target = talos_target(config);
    let mut report = None;
    let outcome = atomic::update(&path, LOCK_TIMEOUT, |text| {
        let edited =
            talosconfig::rewrite(text, &target).map_err(|e| RewriteError::invalid(&path, e))?;
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
        let config = AgentConfig::parse(&dir.path().join("agent.toml"), "").unwrap();
        let env = Env {
            kubeconfig: Some(list),
            talosconfig: None,
        };
        let error = kubeconfig_path(&config, &env).unwrap_err().to_string();
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
