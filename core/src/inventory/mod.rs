//! The desired inventory: Services + the Tailscale operator's proxy state +
//! what host agents see + a narrow [`Policy`] -> one [`DesiredPort`] per
//! exposed Service port and per declared operator port, with the problems
//! found ([`Finding`]).
//!
//! Inputs are plain data (the controller maps Kubernetes objects onto
//! [`ServiceFacts`]); the seed's port tables are unit tests in the
//! controller, which feeds real `Service` objects through.

mod exposure;
mod findings;
mod unmapped;

use std::collections::BTreeMap;
use std::net::SocketAddr;

pub use exposure::{EXPOSE_ANNOTATION, HOSTNAME_ANNOTATION, TAGS_ANNOTATION};
pub use findings::{Finding, FindingKind};
pub use unmapped::{MAX_UNMAPPED, unmapped_name};

use crate::model::{LocalEndpoint, Plane, PortSpec, TargetEndpoint};
use crate::{HostPort, Protocol};

/// What the inventory reads of one Service (everything else is ignored).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceFacts<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// Annotation `tailscale.com/expose`, verbatim.
    pub expose: Option<&'a str>,
    /// Annotation `tailscale.com/hostname`.
    pub hostname: Option<&'a str>,
    /// Annotation `tailscale.com/tags` (comma-separated).
    pub tags: Option<&'a str>,
    /// `spec.type`; Kubernetes' default is ClusterIP.
    pub type_: &'a str,
    pub load_balancer_class: Option<&'a str>,
    /// `spec.clusterIP`: "" when unset, "None" when headless.
    pub cluster_ip: &'a str,
    pub ports: Vec<ServicePortFacts>,
    /// `status.loadBalancer.ingress`.
    pub ingress: Vec<Ingress<'a>>,
}

/// One `spec.ports[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortFacts {
    pub port: i32,
    pub protocol: Protocol,
    /// `None` (or 0 from the API): no NodePort.
    pub node_port: Option<i32>,
    /// Number or container port name, as written.
    pub target_port: Option<String>,
}

/// One `status.loadBalancer.ingress[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingress<'a> {
    pub hostname: Option<&'a str>,
    pub ip: Option<&'a str>,
}

/// The Tailscale operator's state for one proxy, from its state Secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyState {
    /// device_fqdn without the trailing dot.
    pub fqdn: Option<String>,
    /// device_ips.
    pub ips: Vec<String>,
}

/// Proxy states keyed by the Service they front: (namespace, name).
pub type ProxyIndex = BTreeMap<(String, String), ProxyState>;

/// A host port an agent sees published (Docker/Lima port map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPortReport {
    pub agent: String,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// A process on an agent's host listening on a runtime port it does not own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecondOwnerReport {
    pub agent: String,
    pub port: u16,
    pub address: String,
    pub pid: u32,
    pub process: String,
    pub command: String,
}

/// What the agents see on their hosts (the part of their reports the
/// inventory reads; tunnel state is status, kept by the controller).
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFacts<'a> {
    pub host_ports: &'a [HostPortReport],
    pub second_owners: &'a [SecondOwnerReport],
}

/// The settings the inventory depends on (the controller's config keys
/// `tailnetDomain`, `nodePorts`, `operatorPorts`), nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    /// Predicts FQDNs (`<hostname>.<domain>`) before Tailscale confirms them.
    pub tailnet_domain: Option<String>,
    /// Publish NodePort Services (reachable through Lima/Docker port maps).
    pub node_ports: bool,
    /// The ports the host agent owns.
    pub operator_ports: Vec<OperatorPortDecl>,
}

/// One declared operator port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorPortDecl {
    /// Object name, e.g. kube-apiserver.
    pub name: String,
    /// Loopback listen address of the agent.
    pub local: SocketAddr,
    /// Target as seen from the SSH server.
    pub target: HostPort,
}

/// One object the controller wants to exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPort {
    pub spec: PortSpec,
    /// Problems found for this port (empty: Ready).
    pub findings: Vec<Finding>,
}

/// The desired inventory, keyed by object name.
pub type Desired = BTreeMap<String, DesiredPort>;

/// Build the desired inventory.
pub fn desired_inventory<'a>(
    services: impl IntoIterator<Item = ServiceFacts<'a>>,
    proxies: &ProxyIndex,
    hosts: HostFacts<'_>,
    policy: &Policy,
) -> Desired {
    let mut desired = Desired::new();
    for service in services {
        for (name, port) in exposure::service_ports(&service, proxies, hosts.host_ports, policy) {
            desired.insert(name, port);
        }
    }
    for port in &policy.operator_ports {
        desired.insert(port.name.clone(), operator_port(port));
    }
    findings::cross_check(&mut desired, hosts.host_ports, policy);
    // Docker maps to an operator port's target (the node's 6443, 50000)
    // are the operator plane's, not a runtime map leading nowhere.
    let operator_targets = policy
        .operator_ports
        .iter()
        .map(|p| p.target.port)
        .collect();
    unmapped::add_unmapped(&mut desired, hosts.host_ports, &operator_targets);
    findings::second_owners(&mut desired, hosts);
    desired
}

fn operator_port(port: &OperatorPortDecl) -> DesiredPort {
    DesiredPort {
        spec: PortSpec {
            plane: Plane::Operator,
            port: i32::from(port.local.port()),
            protocol: crate::ownership::OPERATOR_PROTOCOL,
            endpoint: Some(port.local.to_string()),
            owner: "portplane-agent".into(),
            service: None,
            target_port: None,
            node_port: None,
            exposures: Vec::new(),
            local: Some(LocalEndpoint {
                address: port.local.ip().to_string(),
                port: i32::from(port.local.port()),
            }),
            target: Some(TargetEndpoint {
                host: port.target.host.clone(),
                port: i32::from(port.target.port),
            }),
        },
        findings: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
