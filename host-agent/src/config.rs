//! The agent's TOML config. Every section is optional; the defaults are the
//! seed's contract (Colima's Lima ssh.config, `lima-colima`, the two operator
//! forwards, the Talos node at 10.5.0.2).
//!
//! Loading checks everything a typo could break and names the file, the key
//! and what was expected; nothing here touches the network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message carries the line, the column, the key and what was
    /// expected.
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{path}: `{key}`: {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// How this host shows up in OperatorPort status.
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default)]
    pub ssh: SshSection,
    /// A `[[forward]]` list, when given, replaces the default forwards.
    #[serde(default = "default_forwards", rename = "forward")]
    pub forwards: Vec<Forward>,
    #[serde(default)]
    pub kubeconfig: KubeconfigSection,
    #[serde(default)]
    pub talosconfig: TalosconfigSection,
    pub controller: Option<ControllerSection>,
    /// The status socket `run` serves and `status`/`doctor` ask; its folder
    /// is made 0700.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    #[serde(default)]
    pub docker: DockerSection,
    #[serde(default)]
    pub second_owners: SecondOwnersSection,
}

/// Second owners of runtime ports on the host, reported while
/// `[controller]` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecondOwnersSection {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The runtime's own forwarders: a pattern without '/' is a process
    /// name, one with '/' a part of the command line.
    #[serde(default = "default_runtime_forwarders")]
    pub allowed: Vec<String>,
    #[serde(default = "default_docker_interval", with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for SecondOwnersSection {
    fn default() -> Self {
        SecondOwnersSection {
            enabled: true,
            allowed: default_runtime_forwarders(),
            interval: default_docker_interval(),
        }
    }
}

/// Lima's host agent and SSH mux, Colima, Docker's proxies.
fn default_runtime_forwarders() -> Vec<String> {
    [
        "limactl",
        "colima",
        "docker-proxy",
        "com.docker.backend",
        "vpnkit",
        "/.lima/",
        "/.colima/",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

/// The VM's Docker port maps, read over SSH and reported to the controller
/// (only while `[controller]` is set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSection {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Container whose port maps count; default the Talos node container,
    /// `<[kubeconfig] cluster>-controlplane-1`.
    pub container: Option<String>,
    /// The docker CLI on the VM, run through its shell (may carry flags,
    /// e.g. "docker -H unix:///run/docker.sock").
    #[serde(default = "default_docker_command")]
    pub command: String,
    #[serde(default = "default_docker_interval", with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for DockerSection {
    fn default() -> Self {
        DockerSection {
            enabled: true,
            container: None,
            command: default_docker_command(),
            interval: default_docker_interval(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_docker_command() -> String {
    "docker".into()
}

fn default_report_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_docker_interval() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSection {
    /// OpenSSH client config, as for `ssh -F`. Re-read on every reconnect,
    /// because Lima picks a new port on each VM start.
    #[serde(default = "default_ssh_config")]
    pub config: PathBuf,
    /// Host alias in that config.
    #[serde(default = "default_ssh_host")]
    pub host: String,
    /// Like `ServerAliveInterval`.
    #[serde(default = "default_keepalive_interval", with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Like `ServerAliveCountMax`: unanswered keepalives before reconnecting.
    #[serde(default = "default_keepalive_count_max")]
    pub keepalive_count_max: u32,
    /// First reconnect delay; doubles per failure, with jitter, up to `max_backoff`.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long a connection accepted during an outage waits for the new
    /// session before it is closed.
    #[serde(default = "default_connect_grace", with = "humantime_serde")]
    pub outage_grace: Duration,
    /// SSH sessions in the pool. The first live one carries every new
    /// connection, as `ssh -L` carries its forwards on one connection; the
    /// others stand by for when it is down or holding back for a slow
    /// reader (`tunnel::pool::first_not_behind`). Defaults to 2: one
    /// carrying, one standing by.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Run `true` once per session so that sshd sends small packets at once
    /// (sshd turns on TCP_NODELAY only for sessions that run a command;
    /// without it a TLS handshake can stall 40-90 ms, see `ssh::nodelay`).
    /// Set `false` for a server where a command must not run (a
    /// `ForceCommand` runs instead).
    #[serde(default = "default_true")]
    pub sshd_tcp_nodelay: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// Operator port name: `kube-apiserver`, `talos-api`.
    pub name: String,
    /// Loopback address to listen on.
    pub listen: SocketAddr,
    /// `host:port` as reached from the SSH server.
    pub target: Target,
}

/// `host:port`, the host a name or an address as the SSH server resolves it
/// (the one parser, shared with the controller's `operatorPorts[].target`).
pub use portplane_core::HostPort as Target;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeconfigSection {
    /// `KUBECONFIG`, when set, wins over this.
    #[serde(default = "default_kubeconfig_path")]
    pub path: PathBuf,
    /// Cluster name; `talosctl cluster create` renames re-creations
    /// `<name>-1`, `<name>-2`, ... and the newest one is rewritten.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// The forward whose listen address becomes the cluster's server.
    #[serde(default = "default_kube_forward")]
    pub forward: String,
    /// Write `insecure-skip-tls-verify: true` (and drop the CA): only when
    /// the certificate cannot be verified on the loopback address.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    /// Remove contexts that point at a dead loopback port.
    #[serde(default)]
    pub prune_stale: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TalosconfigSection {
    /// `TALOSCONFIG`, when set, wins over this.
    #[serde(default = "default_talosconfig_path")]
    pub path: PathBuf,
    #[serde(default = "default_cluster")]
    pub context: String,
    #[serde(default = "default_talos_forward")]
    pub forward: String,
    #[serde(default = "default_talos_node")]
    pub node: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerSection {
    /// gRPC endpoint of portplane-controller.
    pub endpoint: String,
    /// The agent's ServiceAccount token (`portplane-agent enroll` writes
    /// it); default `~/.config/portplane/agent-token`. Re-read on every
    /// reconnect.
    #[serde(default = "default_token_file")]
    pub token_file: Option<PathBuf>,
    /// Namespace the controller runs in (its agents' ServiceAccounts live
    /// there); used by `enroll`.
    #[serde(default = "default_controller_namespace")]
    pub namespace: String,
    /// CA that signs the controller's certificate (PEM); used for https://
    /// endpoints when the file exists, else the system roots. `enroll`
    /// writes it from the ConfigMap `ca_configmap`.
    #[serde(default = "default_ca_file")]
    pub ca_file: Option<PathBuf>,
    /// ConfigMap (in `namespace`, key `ca.crt`) the chart publishes its CA in.
    #[serde(default = "default_ca_configmap")]
    pub ca_configmap: String,
    /// The name the controller's certificate must carry, when it is not the
    /// endpoint's host (e.g. dialing through a port-forward).
    pub tls_server_name: Option<String>,
    /// Allow http:// to a non-loopback host (the token travels in the clear).
    #[serde(default)]
    pub insecure: bool,
    /// Where the last inventory is cached, so runtime ports are refused even
    /// when the controller is away.
    #[serde(default = "default_inventory_cache")]
    pub inventory_cache: PathBuf,
    /// How often the agent reports while nothing changes (a tunnel going Up
    /// or Down is reported at once); default 10s, 1s to 10m. Keep it well
    /// under the controller's `agents.ttlSeconds` (default 30 s), or the
    /// agent's entries go stale between reports.
    #[serde(default = "default_report_interval", with = "humantime_serde")]
    pub report_interval: Duration,
}

impl AgentConfig {
    /// Read, parse, expand `~` and validate `path`.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Like [`AgentConfig::load`], with `~` meaning `home` (install reads
    /// the config as root for the user the service runs as).
    pub fn load_with_home(path: &Path, home: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse_with_home(path, &text, home)
    }

    /// Parse `text` as if read from `path` (which only names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
        Self::parse_with_home(path, text, &home_dir())
    }

    fn parse_with_home(path: &Path, text: &str, home: &Path) -> Result<AgentConfig, ConfigError> {
        let mut config: AgentConfig =
            toml::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.into(),
                source: Box::new(source),
            })?;
        config.expand_home(home);
        config.validate(path)?;
        Ok(config)
    }

    /// The forward named `name`.
    pub fn forward(&self, name: &str) -> Option<&Forward> {
        self.forwards.iter().find(|f| f.name == name)
    }

    fn expand_home(&mut self, home: &Path) {
        for p in [
            &mut self.ssh.config,
            &mut self.kubeconfig.path,
            &mut self.talosconfig.path,
            &mut self.socket,
        ] {
            *p = expand_tilde(p, home);
        }
        if let Some(c) = self.controller.as_mut() {
            c.inventory_cache = expand_tilde(&c.inventory_cache, home);
            if let Some(t) = c.token_file.as_mut() {
                *t = expand_tilde(t, home);
            }
            if let Some(t) = c.ca_file.as_mut() {
                *t = expand_tilde(t, home);
            }
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, problem: String| ConfigError::Invalid {
            path: path.into(),
            key,
            problem,
        };
        if self.forwards.is_empty() {
            return Err(invalid(
                "forward".into(),
                "expected at least one [[forward]]".into(),
            ));
        }
        for (i, f) in self.forwards.iter().enumerate() {
            if f.name.is_empty() {
                return Err(invalid(
                    format!("forward[{i}].name"),
                    "expected a non-empty name".into(),
                ));
            }
            portplane_core::check_loopback_listen(f.listen)
                .map_err(|problem| invalid(format!("forward[{i}].listen"), problem))?;
            if let Some(j) = self.forwards[..i].iter().position(|g| g.name == f.name) {
                return Err(invalid(
                    format!("forward[{i}].name"),
                    format!("\"{}\" is also forward[{j}]; names must be unique", f.name),
                ));
            }
            if let Some(j) = self.forwards[..i].iter().position(|g| g.listen == f.listen) {
                return Err(invalid(
                    format!("forward[{i}].listen"),
                    format!("{} is also forward[{j}].listen", f.listen),
                ));
            }
        }
        for (key, name) in [
            ("kubeconfig.forward", &self.kubeconfig.forward),
            ("talosconfig.forward", &self.talosconfig.forward),
        ] {
            if self.forward(name).is_none() {
                let known: Vec<&str> = self.forwards.iter().map(|f| f.name.as_str()).collect();
                return Err(invalid(
                    key.into(),
                    format!("no [[forward]] named \"{name}\"; expected one of {known:?}"),
                ));
            }
        }
        if let Some(c) = &self.controller {
            crate::link_tls::check_endpoint(&c.endpoint, c.insecure)
                .map_err(|problem| invalid("controller.endpoint".into(), problem))?;
            let ok = portplane_core::names::is_lowercase_dns_label(&c.namespace);
            if !ok {
                return Err(invalid(
                    "controller.namespace".into(),
                    format!(
                        "expected a namespace name (lowercase letters, digits, '-'), got {:?}",
                        c.namespace
                    ),
                ));
            }
        }
        if let Some(c) = &self.controller
            && !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&c.report_interval)
        {
            return Err(invalid(
                "controller.report_interval".into(),
                format!(
                    "expected 1s to 10m, got {}",
                    humantime::format_duration(c.report_interval)
                ),
            ));
        }
        if !(1..=32).contains(&self.ssh.sessions) {
            return Err(invalid(
                "ssh.sessions".into(),
                format!("expected 1 to 32, got {}", self.ssh.sessions),
            ));
        }
        if self.ssh.initial_backoff.is_zero() || self.ssh.initial_backoff > self.ssh.max_backoff {
            return Err(invalid(
                "ssh.initial_backoff".into(),
                "expected a duration above zero and no larger than ssh.max_backoff".into(),
            ));
        }
        Ok(())
    }
}

impl AgentConfig {
    /// What the kubeconfig and talosconfig rewrites need of this config: the
    /// files, and the forwards' listen addresses as the values to write.
    pub fn rewrite_plan(&self) -> crate::rewrite::apply::Plan {
        use crate::rewrite::kubeconfig::KubeTarget;
        use crate::rewrite::talosconfig::TalosTarget;
        let kube = &self.kubeconfig;
        let forward = self.forward(&kube.forward);
        let listen = forward.map_or(SocketAddr::from(([127, 0, 0, 1], 16443)), |f| f.listen);
        // The Talos apiserver certificate names 127.0.0.1 and the node
        // address; on any other loopback address, verify against the node's
        // name instead.
        let tls_server_name = (listen.ip() != std::net::Ipv4Addr::LOCALHOST)
            .then(|| forward.map(|f| f.target.host.clone()))
            .flatten();
        let talos = &self.talosconfig;
        let endpoint = self
            .forward(&talos.forward)
            .map_or_else(|| "127.0.0.1:15000".to_string(), |f| f.listen.to_string());
        crate::rewrite::apply::Plan {
            kubeconfig_path: kube.path.clone(),
            kube: KubeTarget {
                cluster: kube.cluster.clone(),
                server: format!("https://{listen}"),
                tls_server_name,
                insecure_skip_tls_verify: kube.insecure_skip_tls_verify,
                prune_stale: kube.prune_stale,
            },
            talosconfig_path: talos.path.clone(),
            talos: TalosTarget {
                context: talos.context.clone(),
                endpoint,
                node: talos.node.clone(),
            },
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        let mut config = AgentConfig {
            name: default_name(),
            ssh: SshSection::default(),
            forwards: default_forwards(),
            kubeconfig: KubeconfigSection::default(),
            talosconfig: TalosconfigSection::default(),
            controller: None,
            socket: default_socket(),
            docker: DockerSection::default(),
            second_owners: SecondOwnersSection::default(),
        };
        config.expand_home(&home_dir());
        config
    }
}

impl Default for SshSection {
    fn default() -> Self {
        SshSection {
            config: default_ssh_config(),
            host: default_ssh_host(),
            keepalive_interval: default_keepalive_interval(),
            keepalive_count_max: default_keepalive_count_max(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            outage_grace: default_connect_grace(),
            sessions: default_sessions(),
            sshd_tcp_nodelay: true,
        }
    }
}

impl Default for KubeconfigSection {
    fn default() -> Self {
        KubeconfigSection {
            path: default_kubeconfig_path(),
            cluster: default_cluster(),
            forward: default_kube_forward(),
            insecure_skip_tls_verify: false,
            prune_stale: false,
        }
    }
}

impl Default for TalosconfigSection {
    fn default() -> Self {
        TalosconfigSection {
            path: default_talosconfig_path(),
            context: default_cluster(),
            forward: default_talos_forward(),
            node: default_talos_node(),
        }
    }
}

/// `~` and `~/...` become the home directory; other paths are kept.
pub fn expand_tilde(path: &Path, home: &Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home.join(rest),
        Err(_) => path.to_path_buf(),
    }
}

pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into())
}
fn default_ssh_config() -> PathBuf {
    PathBuf::from("~/.colima/_lima/colima/ssh.config")
}
fn default_ssh_host() -> String {
    "lima-colima".into()
}
fn default_keepalive_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_keepalive_count_max() -> u32 {
    3
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    // Lima's sshd is local: a refused connect is cheap, and a short cap keeps
    // recovery under a second once the VM is back.
    Duration::from_secs(1)
}
fn default_sessions() -> usize {
    2
}
fn default_connect_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_forwards() -> Vec<Forward> {
    let forward = |name: &str, listen: [u8; 4], port: u16, target_port: u16| Forward {
        name: name.into(),
        listen: SocketAddr::from((listen, port)),
        target: Target {
            host: "10.5.0.2".into(),
            port: target_port,
        },
    };
    vec![
        forward("kube-apiserver", [127, 0, 0, 1], 16443, 6443),
        forward("talos-api", [127, 0, 0, 1], 15000, 50000),
    ]
}
fn default_kubeconfig_path() -> PathBuf {
    PathBuf::from("~/.kube/config")
}
fn default_talosconfig_path() -> PathBuf {
    PathBuf::from("~/.talos/config")
}
fn default_cluster() -> String {
    "joelclaw".into()
}
fn default_kube_forward() -> String {
    "kube-apiserver".into()
}
fn default_talos_forward() -> String {
    "talos-api".into()
}
fn default_talos_node() -> String {
    "10.5.0.2".into()
}
fn default_socket() -> PathBuf {
    PathBuf::from("~/.local/state/portplane/agent.sock")
}

fn default_token_file() -> Option<PathBuf> {
    Some(PathBuf::from("~/.config/portplane/agent-token"))
}

fn default_ca_file() -> Option<PathBuf> {
    Some(PathBuf::from("~/.config/portplane/controller-ca.crt"))
}

fn default_ca_configmap() -> String {
    "portplane-controller-agent-ca".into()
}

fn default_controller_namespace() -> String {
    "portplane".into()
}

fn default_inventory_cache() -> PathBuf {
    PathBuf::from("~/.cache/portplane/inventory.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("/etc/portplane/agent.toml"), text)
    }

    #[test]
    fn empty_file_is_the_seed_contract() {
        let c = parse("").unwrap();
        assert_eq!(c.ssh.host, "lima-colima");
        assert!(c.ssh.config.ends_with(".colima/_lima/colima/ssh.config"));
        assert!(!c.ssh.config.starts_with("~"), "~ expanded");
        let kube = c.forward("kube-apiserver").unwrap();
        assert_eq!(kube.listen.to_string(), "127.0.0.1:16443");
        assert_eq!(kube.target.to_string(), "10.5.0.2:6443");
        let talos = c.forward("talos-api").unwrap();
        assert_eq!(talos.listen.to_string(), "127.0.0.1:15000");
        assert_eq!(talos.target.to_string(), "10.5.0.2:50000");
        assert_eq!(c.talosconfig.node, "10.5.0.2");
        assert!(c.controller.is_none());
        assert!(c.ssh.sshd_tcp_nodelay, "asked for unless turned off");
        assert!(
            !parse("[ssh]\nsshd_tcp_nodelay = false\n")
                .unwrap()
                .ssh
                .sshd_tcp_nodelay
        );
    }

    #[test]
    fn forward_list_replaces_the_defaults() {
        let c = parse(
            "[[forward]]\nname = \"kube-apiserver\"\nlisten = \"127.0.0.1:26443\"\ntarget = \"127.0.0.1:6443\"\n\
             [talosconfig]\nforward = \"kube-apiserver\"\n",
        )
        .unwrap();
        assert_eq!(c.forwards.len(), 1);
        assert_eq!(c.forwards[0].listen.port(), 26443);
    }

    #[test]
    fn non_loopback_listen_is_refused_naming_file_and_key() {
        let err = parse("[[forward]]\nname = \"kube-apiserver\"\nlisten = \"0.0.0.0:16443\"\ntarget = \"10.5.0.2:6443\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/portplane/agent.toml: `forward[0].listen`"),
            "{err}"
        );
        assert!(err.contains("loopback"), "{err}");
    }

    #[test]
    fn bad_value_names_line_key_and_expectation() {
        let err = parse("[ssh]\nhost = \"lima-colima\"\nkeepalive_count_max = \"three\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/etc/portplane/agent.toml:"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("keepalive_count_max"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error_not_ignored() {
        let err = parse("[ssh]\nhots = \"lima-colima\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hots"), "{err}");
    }

    #[test]
    fn bad_target_says_what_was_expected() {
        let err =
            parse("[[forward]]\nname = \"k\"\nlisten = \"127.0.0.1:1\"\ntarget = \"10.5.0.2\"\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("expected \\\"host:port\\\"") || err.contains("expected \"host:port\""),
            "{err}"
        );
    }

    #[test]
    fn rewrite_sections_must_name_a_forward() {
        let err = parse("[kubeconfig]\nforward = \"kube\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`kubeconfig.forward`"), "{err}");
        assert!(
            err.contains("kube-apiserver"),
            "lists the known forwards: {err}"
        );
    }

    #[test]
    fn duplicate_listen_is_refused() {
        let err = parse(
            "[[forward]]\nname = \"kube-apiserver\"\nlisten = \"127.0.0.1:16443\"\ntarget = \"a:1\"\n\
             [[forward]]\nname = \"talos-api\"\nlisten = \"127.0.0.1:16443\"\ntarget = \"a:2\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`forward[1].listen`"), "{err}");
    }

    #[test]
    fn report_interval_is_bounded_naming_the_key() {
        let section = |interval: &str| {
            format!(
                "[controller]\nendpoint = \"http://127.0.0.1:1\"\nreport_interval = \"{interval}\"\n"
            )
        };
        let c = parse(&section("2s")).unwrap();
        assert_eq!(
            c.controller.unwrap().report_interval,
            Duration::from_secs(2)
        );
        let err = parse(&section("100ms")).unwrap_err().to_string();
        assert!(
            err.starts_with("/etc/portplane/agent.toml: `controller.report_interval`")
                && err.contains("expected 1s to 10m, got 100ms"),
            "{err}"
        );
        let default = parse("[controller]\nendpoint = \"http://127.0.0.1:1\"\n").unwrap();
        assert_eq!(
            default.controller.unwrap().report_interval,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn tilde_expands_only_at_the_start() {
        let home = Path::new("/Users/joel");
        assert_eq!(
            expand_tilde(Path::new("~/.kube/config"), home),
            home.join(".kube/config")
        );
        assert_eq!(
            expand_tilde(Path::new("/tmp/~x"), home),
            PathBuf::from("/tmp/~x")
        );
    }
}
