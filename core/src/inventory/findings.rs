//! Problems users would otherwise find the hard way, found across the whole
//! inventory (hostname conflicts, runtime ports on operator ports, second
//! owners).

use std::collections::BTreeMap;

use super::{Desired, HostFacts, HostPortReport, Policy};
use crate::model::{ExposureKind, Plane, PortSpec};
use crate::ownership::collides;

/// What is wrong; each kind is one condition type on the OperatorPort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FindingKind {
    /// Two Services claim one tailnet hostname.
    HostnameConflict,
    /// The hostname is not one DNS label.
    InvalidHostname,
    /// A headless Service is marked for exposure.
    HeadlessService,
    /// A runtime port sits on an operator port's local port.
    OperatorPortClash,
    /// Exposed by annotation but the Service has no ClusterIP.
    NoClusterIP,
    /// tailscale.com/expose is set to something other than exactly "true".
    ExposeAnnotationIgnored,
    /// Reachable only by NodePort, and no agent's VM has a Docker port map
    /// for it: unreachable from the host.
    NoHostPort,
    /// A Docker port map on an agent's VM leads to a container port that no
    /// Service has as its NodePort (`unmapped`).
    NoNodePort,
    /// A process on an agent's host that is not the runtime listens on the
    /// port's host side.
    SecondOwner,
}

impl FindingKind {
    /// The condition type (and Event reason).
    pub fn condition_type(self) -> &'static str {
        match self {
            FindingKind::HostnameConflict => "HostnameConflict",
            FindingKind::InvalidHostname => "InvalidHostname",
            FindingKind::HeadlessService => "HeadlessService",
            FindingKind::OperatorPortClash => "OperatorPortClash",
            FindingKind::NoClusterIP => "NoClusterIP",
            FindingKind::ExposeAnnotationIgnored => "ExposeAnnotationIgnored",
            FindingKind::NoHostPort => "NoHostPort",
            FindingKind::NoNodePort => "NoNodePort",
            FindingKind::SecondOwner => "SecondOwner",
        }
    }
}

/// One problem, with a message a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: FindingKind,
    pub message: String,
}

impl Finding {
    pub fn new(kind: FindingKind, message: String) -> Finding {
        Finding { kind, message }
    }
}

/// Add the findings that need the whole inventory.
pub fn cross_check(desired: &mut Desired, host_ports: &[HostPortReport], policy: &Policy) {
    // hostname -> the Services claiming it
    let mut claims: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for port in desired.values() {
        let Some(service) = &port.spec.service else {
            continue;
        };
        let id = format!("{}/{}", service.namespace, service.name);
        for e in &port.spec.exposures {
            if e.kind == ExposureKind::NodePort {
                continue;
            }
            if let Some(hostname) = &e.hostname {
                let owners = claims.entry(hostname.to_ascii_lowercase()).or_default();
                if !owners.contains(&id) {
                    owners.push(id.clone());
                }
            }
        }
    }

    for port in desired.values_mut() {
        if port.spec.plane != Plane::Runtime {
            continue;
        }
        let Some(service) = port.spec.service.clone() else {
            continue;
        };
        let id = format!("{}/{}", service.namespace, service.name);
        let mut found = Vec::new();
        for e in &port.spec.exposures {
            let Some(hostname) = &e.hostname else {
                continue;
            };
            let Some(owners) = claims.get(&hostname.to_ascii_lowercase()) else {
                continue;
            };
            if owners.len() > 1 {
                let others: Vec<&str> = owners
                    .iter()
                    .filter(|o| **o != id)
                    .map(String::as_str)
                    .collect();
                found.push(Finding::new(
                    FindingKind::HostnameConflict,
                    format!(
                        "tailnet hostname {hostname:?} is also claimed by {}; only one device can hold it",
                        others.join(", ")
                    ),
                ));
                break;
            }
        }
        found.extend(operator_port_clashes(&port.spec, host_ports, policy));
        if let Some(finding) = no_host_port(&port.spec, host_ports) {
            found.push(finding);
        }
        port.findings.extend(found);
    }
}

/// A runtime port whose host side (its NodePort, or the host port a Docker
/// map publishes it on) is an operator port's local port, on the same
/// protocol ([`collides`]).
fn operator_port_clashes(
    spec: &PortSpec,
    host_ports: &[HostPortReport],
    policy: &Policy,
) -> Vec<Finding> {
    let mut found = Vec::new();
    let Some(node_port) = spec.node_port.and_then(|p| u16::try_from(p).ok()) else {
        return found;
    };
    for op in &policy.operator_ports {
        let local = op.local.port();
        if collides(local, node_port, spec.protocol) {
            found.push(Finding::new(
                FindingKind::OperatorPortClash,
                format!("NodePort {node_port} is the local port of operator port {}; the agent's tunnel and the runtime would both claim it", op.name),
            ));
        }
        for h in host_ports {
            if h.container_port == node_port
                && h.protocol == spec.protocol
                && collides(local, h.host_port, h.protocol)
            {
                found.push(Finding::new(
                    FindingKind::OperatorPortClash,
                    format!(
                        "agent {} sees host port {} published for this port; it is the local port of operator port {}",
                        h.agent, h.host_port, op.name
                    ),
                ));
            }
        }
    }
    found
}

/// A port reachable only through its NodePort, with Docker facts from at
/// least one agent and none mapping it: nothing on the host reaches it.
/// Without any agent's Docker facts nothing is known, so nothing is said.
fn no_host_port(spec: &PortSpec, host_ports: &[HostPortReport]) -> Option<Finding> {
    let node_port = spec.node_port?;
    let only_node_port = !spec.exposures.is_empty()
        && spec
            .exposures
            .iter()
            .all(|e| e.kind == ExposureKind::NodePort && e.host_port.is_none());
    if !only_node_port || host_ports.is_empty() {
        return None;
    }
    let mut agents: Vec<&str> = host_ports.iter().map(|h| h.agent.as_str()).collect();
    agents.dedup();
    Some(Finding::new(
        FindingKind::NoHostPort,
        format!(
            "NodePort {node_port} has no Docker port map on the VM of {}, so nothing on the host reaches it; \
             Docker's port maps are fixed when the cluster is created, so expose the Service with \
             tailscale.com/expose: \"true\" (or recreate the cluster with the map)",
            agents.join(", ")
        ),
    ))
}

/// A second owner on a host holds the port's host side: its NodePort, or
/// the host port a Docker map publishes it on. Agents scan TCP listeners,
/// so only TCP ports are matched.
pub fn second_owners(desired: &mut Desired, hosts: HostFacts<'_>) {
    if hosts.second_owners.is_empty() {
        return;
    }
    for port in desired.values_mut() {
        if port.spec.plane != Plane::Runtime || port.spec.protocol != crate::Protocol::Tcp {
            continue;
        }
        let Some(node_port) = port.spec.node_port else {
            continue;
        };
        for o in hosts.second_owners {
            let mapped = hosts.host_ports.iter().any(|h| {
                h.agent == o.agent
                    && h.protocol == crate::Protocol::Tcp
                    && i32::from(h.container_port) == node_port
                    && h.host_port == o.port
            });
            if i32::from(o.port) != node_port && !mapped {
                continue;
            }
            port.findings.push(Finding::new(
                FindingKind::SecondOwner,
                format!(
                    "on host {}, {}:{} is held by pid {} ({}: {}), not by the runtime's forwarders; \
                     a second owner of this port (a stray ssh -L or an old tunnel daemon?): stop it",
                    o.agent, o.address, o.port, o.pid, o.process, o.command
                ),
            ));
        }
    }
}
