//! The controller's config (YAML). Every key is optional; the defaults are the
//! seed's contract. Errors name the file, the key and what was expected.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use portplane_core::inventory::{OperatorPortDecl, Policy};
use portplane_core::names::{is_dns_name, is_lowercase_dns_label};
use portplane_core::{HostPort, check_loopback_listen, is_dns_label, is_dns_subdomain};
use serde::Deserialize;

use crate::Error;

/// The controller's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Namespace of the Tailscale operator (where its proxy state Secrets live).
    pub operator_namespace: String,
    /// Tailnet domain ("tail1234.ts.net") used to predict FQDNs before Tailscale confirms them.
    pub tailnet_domain: Option<String>,
    /// Publish NodePort Services (reachable through Lima/Docker port maps).
    pub node_ports: bool,
    /// Only Services matching this label selector are inventoried (empty: all).
    pub service_selector: String,
    /// Value of the `portplane.dev/instance` label on the objects this
    /// controller writes; it deletes only objects with its own value. It
    /// does not make two controllers safe on one cluster: they share a field
    /// manager, and an object both want (a declared operator port, a Service
    /// both select) goes to whichever applied last. Run one controller per
    /// cluster; the tests give controllers over disjoint Services on one test
    /// control plane distinct values.
    pub instance: String,
    /// The ports the host agent owns.
    pub operator_ports: Vec<OperatorPortConfig>,
    /// Full resync period: reconcile even when no watch reported a change.
    pub resync_seconds: u64,
    /// Leader election.
    pub lease: LeaseConfig,
    /// Health, readiness and metrics listener.
    pub http_listen: SocketAddr,
    /// gRPC listener for host agents (PortInventory).
    pub grpc_listen: SocketAddr,
    /// Host agents: who they are and how long their reports count.
    pub agents: AgentsConfig,
    /// Serve the agents' gRPC over TLS with this certificate (PEM files;
    /// the chart mounts them from a Secret).
    pub grpc_tls: Option<GrpcTls>,
    /// Allow plaintext gRPC on a non-loopback `grpcListen` (tokens would
    /// cross the network in the clear); without it the controller refuses
    /// to start that way.
    pub insecure: bool,
}

/// The gRPC serving certificate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// PEM private key of the leaf.
    pub key_file: std::path::PathBuf,
}

/// Host agents' identities and reports.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AgentsConfig {
    /// Namespace of the agents' ServiceAccounts (`portplane-agent-<name>`);
    /// defaults to $POD_NAMESPACE (the controller's own), else "default".
    pub namespace: Option<String>,
    /// How long a reviewed token is trusted before the next TokenReview.
    pub token_cache_seconds: u64,
    /// A report counts for Ready this long after it arrived (agents report
    /// every 10 s).
    pub ttl_seconds: u64,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            namespace: None,
            token_cache_seconds: 60,
            ttl_seconds: 30,
        }
    }
}

/// One declared operator port.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperatorPortConfig {
    /// Object name, e.g. kube-apiserver.
    pub name: String,
    /// Loopback listen address of the agent, e.g. 127.0.0.1:16443.
    pub local: SocketAddr,
    /// Target as seen from the SSH server, "host:port" (checked by
    /// [`Config::policy`], so the error names this key).
    pub target: String,
}

/// Lease-based leader election.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace; defaults to $POD_NAMESPACE, else "default".
    pub namespace: Option<String>,
    /// How long a standby waits, from the last renew it saw, before it takes
    /// the lease of a leader that stopped renewing.
    pub duration_seconds: u32,
    /// How often the leader renews (and a standby retries).
    pub renew_seconds: u32,
    /// How long a leader keeps writing after the start of its last
    /// successful renew; default two thirds of `durationSeconds` (client-go:
    /// 10 s of 15 s). Must lie between `renewSeconds` and `durationSeconds`.
    pub renew_deadline_seconds: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            operator_namespace: "tailscale".into(),
            tailnet_domain: None,
            node_ports: true,
            service_selector: String::new(),
            instance: "default".into(),
            operator_ports: vec![
                OperatorPortConfig {
                    name: "kube-apiserver".into(),
                    local: SocketAddr::from(([127, 0, 0, 1], 16443)),
                    target: "10.5.0.2:6443".into(),
                },
                OperatorPortConfig {
                    name: "talos-api".into(),
                    local: SocketAddr::from(([127, 0, 0, 1], 15000)),
                    target: "10.5.0.2:50000".into(),
                },
            ],
            resync_seconds: 300,
            lease: LeaseConfig::default(),
            http_listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            agents: AgentsConfig::default(),
            grpc_tls: None,
            insecure: false,
        }
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            name: "portplane-controller".into(),
            namespace: None,
            duration_seconds: 15,
            renew_seconds: 2,
            renew_deadline_seconds: None,
        }
    }
}

impl LeaseConfig {
    /// `renewDeadlineSeconds`, or two thirds of `durationSeconds`.
    pub fn renew_deadline_seconds(&self) -> u32 {
        self.renew_deadline_seconds
            .unwrap_or(self.duration_seconds.saturating_mul(2) / 3)
    }

    /// The election's timing.
    pub fn timing(&self) -> crate::lease::Timing {
        let secs = |s: u32| std::time::Duration::from_secs(u64::from(s));
        crate::lease::Timing {
            lease_duration: secs(self.duration_seconds),
            renew_deadline: secs(self.renew_deadline_seconds()),
            retry_period: secs(self.renew_seconds),
        }
    }
}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|message| Error::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parse and validate config text; the error says which key is wrong.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| e.to_string())?
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for (i, port) in self.operator_ports.iter().enumerate() {
            let key = format!("operatorPorts[{i}]");
            if !is_dns_subdomain(&port.name) {
                return Err(format!(
                    "{key}.name: expected a lowercase DNS name (letters, digits, '-', '.'), got {:?}",
                    port.name
                ));
            }
            if !names.insert(port.name.as_str()) {
                return Err(format!("{key}.name: {:?} is declared twice", port.name));
            }
            check_loopback_listen(port.local).map_err(|e| format!("{key}.local: {e}"))?;
            if !ports.insert(port.local.port()) {
                return Err(format!(
                    "{key}.local: port {} is declared twice",
                    port.local.port()
                ));
            }
        }
        self.policy()?;
        let lease = &self.lease;
        let deadline = lease.renew_deadline_seconds();
        if lease.renew_seconds == 0
            || lease.renew_seconds >= deadline
            || deadline >= lease.duration_seconds
        {
            return Err(format!(
                "lease: expected 0 < renewSeconds < renewDeadlineSeconds < durationSeconds, got renewSeconds {}, renewDeadlineSeconds {deadline}{} and durationSeconds {}",
                lease.renew_seconds,
                if lease.renew_deadline_seconds.is_none() {
                    " (two thirds of durationSeconds)"
                } else {
                    ""
                },
                lease.duration_seconds
            ));
        }
        if self.agents.ttl_seconds == 0 {
            return Err("agents.ttlSeconds: expected a positive number of seconds".into());
        }
        if let Some(ns) = &self.agents.namespace
            && !is_lowercase_dns_label(ns)
        {
            return Err(format!(
                "agents.namespace: expected a namespace name (a DNS label), got {ns:?}"
            ));
        }
        if self.resync_seconds == 0 {
            return Err("resyncSeconds: expected a positive number of seconds".into());
        }
        if self.instance.is_empty() || !is_dns_label(&self.instance) {
            return Err(format!(
                "instance: expected a DNS label (a label value), got {:?}",
                self.instance
            ));
        }
        if let Some(domain) = &self.tailnet_domain
            && (domain.is_empty() || !is_dns_name(domain))
        {
            return Err(format!(
                "tailnetDomain: expected a DNS name such as tail1234.ts.net, got {domain:?}"
            ));
        }
        Ok(())
    }

    /// What the inventory computation reads of this config; the error names
    /// the `operatorPorts[i].target` that is not `host:port`.
    pub fn policy(&self) -> Result<Policy, String> {
        let mut operator_ports = Vec::with_capacity(self.operator_ports.len());
        for (i, p) in self.operator_ports.iter().enumerate() {
            let target = HostPort::parse(&p.target)
                .map_err(|e| format!("operatorPorts[{i}].target: {e}"))?;
            operator_ports.push(OperatorPortDecl {
                name: p.name.clone(),
                local: p.local,
                target,
            });
        }
        Ok(Policy {
            tailnet_domain: self.tailnet_domain.clone(),
            node_ports: self.node_ports,
            operator_ports,
        })
    }

    /// The agents' ServiceAccount namespace: config, then $POD_NAMESPACE,
    /// then "default".
    pub fn agents_namespace(&self) -> String {
        self.agents
            .namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into())
    }

    /// The lease namespace: config, then $POD_NAMESPACE, then "default".
    pub fn lease_namespace(&self) -> String {
        self.lease
            .namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into())
    }
}

/// The rule for plaintext gRPC: only on a loopback listener (tests,
/// `kubectl port-forward`), or with an explicit `insecure: true`.
pub fn check_plaintext(listen: SocketAddr, tls: bool, insecure: bool) -> Result<(), String> {
    if tls || insecure || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "grpcListen {listen}: refusing plaintext gRPC on a non-loopback address (agent tokens \
         would cross the network in the clear); configure grpcTls (certFile, keyFile; the chart \
         does by default) or set insecure: true"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_seed_contract() {
        let config = Config::parse("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.operator_ports[0].local.port(), 16443);
        assert_eq!(
            config.operator_ports[1].target.to_string(),
            "10.5.0.2:50000"
        );
        assert!(config.node_ports);
    }

    #[test]
    fn keys_override_defaults() {
        let config = Config::parse(
            "tailnetDomain: tail1234.ts.net\nnodePorts: false\noperatorPorts: []\nlease: {name: x, durationSeconds: 5, renewSeconds: 1}\n",
        )
        .unwrap();
        assert_eq!(config.tailnet_domain.as_deref(), Some("tail1234.ts.net"));
        assert!(!config.node_ports);
        assert!(config.operator_ports.is_empty());
        assert_eq!(config.lease.duration_seconds, 5);
    }

    #[test]
    fn renew_deadline_defaults_to_two_thirds_and_must_lie_between() {
        let config = Config::parse("").unwrap();
        assert_eq!(config.lease.renew_deadline_seconds(), 10);
        let err = Config::parse(
            "lease: {durationSeconds: 15, renewSeconds: 2, renewDeadlineSeconds: 15}\n",
        )
        .unwrap_err();
        assert!(err.contains("renewDeadlineSeconds 15"), "{err}");
        let err = Config::parse("lease: {durationSeconds: 3, renewSeconds: 2}\n").unwrap_err();
        assert!(err.contains("renewDeadlineSeconds 2 (two thirds"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("tailnetDomian: x.ts.net\n").unwrap_err();
        assert!(err.contains("tailnetDomian"), "{err}");
    }

    #[test]
    fn non_loopback_operator_port_is_refused() {
        let err = Config::parse(
            "operatorPorts:\n- {name: kube-apiserver, local: '0.0.0.0:16443', target: '10.5.0.2:6443'}\n",
        )
        .unwrap_err();
        assert!(
            err.contains("operatorPorts[0].local") && err.contains("loopback"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_local_port_and_bad_target_are_refused() {
        let err = Config::parse(
            "operatorPorts:\n- {name: a, local: '127.0.0.1:1', target: 'h:1'}\n- {name: b, local: '127.0.0.1:1', target: 'h:2'}\n",
        )
        .unwrap_err();
        assert!(err.contains("operatorPorts[1].local"), "{err}");
        let err = Config::parse("operatorPorts:\n- {name: a, local: '127.0.0.1:1', target: 'h'}\n")
            .unwrap_err();
        assert!(err.contains("operatorPorts[0].target"), "{err}");
    }

    #[test]
    fn plaintext_only_on_loopback_or_when_insecure() {
        let any: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        let err = check_plaintext(any, false, false).unwrap_err();
        assert!(
            err.contains("grpcListen 0.0.0.0:50051") && err.contains("grpcTls"),
            "{err}"
        );
        assert!(check_plaintext(lo, false, false).is_ok());
        assert!(check_plaintext(any, true, false).is_ok());
        assert!(check_plaintext(any, false, true).is_ok());
        let config = Config::parse(
            "grpcTls: {certFile: /tls/tls.crt, keyFile: /tls/tls.key}\ninsecure: false\n",
        )
        .unwrap();
        assert_eq!(
            config.grpc_tls.unwrap().cert_file,
            std::path::PathBuf::from("/tls/tls.crt")
        );
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.yaml");
        std::fs::write(&path, "nodePorts: maybe\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("controller.yaml") && err.contains("nodePorts"),
            "{err}"
        );
    }
}
