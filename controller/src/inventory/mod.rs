//! The pure heart of the controller: Services + proxy state + agent reports +
//! config -> the desired OperatorPort objects and the problems found.
//!
//! No I/O here: every input is plain data, so the seed's port tables are unit
//! tests.

mod exposure;
pub mod health;
mod names;
mod unmapped;
mod validate;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Secret, Service};

pub use names::{is_dns_label, is_dns_subdomain, object_name};
pub use validate::{Finding, FindingKind};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::config::Config;
use crate::crd::{AgentStatus, LocalEndpoint, OperatorPortSpec, Plane, TargetEndpoint};

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
    pub protocol: String,
}

/// One object the controller wants to exist.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPort {
    pub spec: OperatorPortSpec,
    /// Problems found for this port (empty: Ready).
    pub findings: Vec<Finding>,
    /// What host agents report about this port (status.agents).
    pub agents: Vec<AgentStatus>,
    /// Operator ports: the Ready condition the agents' reports call for
    /// (set by [`assess_health`]; None until then, and for runtime ports).
    pub health: Option<health::Health>,
}

/// One agent's tunnel, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelReport {
    pub agent: String,
    /// Forward name = operator port name.
    pub forward: String,
    /// Up, Down or Refused.
    pub state: String,
    pub active_connections: i64,
    pub last_error: Option<String>,
    /// The agent's version.
    pub version: String,
    /// When the report arrived.
    pub last_seen: Option<Timestamp>,
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

/// Everything host agents reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentReports {
    pub host_ports: Vec<HostPortReport>,
    pub tunnels: Vec<TunnelReport>,
    pub second_owners: Vec<SecondOwnerReport>,
}

/// The desired inventory, keyed by object name.
pub type Desired = BTreeMap<String, DesiredPort>;

/// Build the desired inventory from everything the controller watches.
pub fn desired_inventory<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    proxies: &ProxyIndex,
    agents: &AgentReports,
    config: &Config,
) -> Desired {
    let mut desired = Desired::new();
    for service in services {
        for (name, port) in exposure::service_ports(service, proxies, &agents.host_ports, config) {
            desired.insert(name, port);
        }
    }
    for port in &config.operator_ports {
        let mut want = operator_port(port);
        want.agents = agents
            .tunnels
            .iter()
            .filter(|t| t.forward == port.name)
            .map(|t| AgentStatus {
                name: t.agent.clone(),
                tunnel: t.state.clone(),
                active_connections: t.active_connections,
                last_error: t.last_error.clone(),
                version: Some(t.version.clone()).filter(|v| !v.is_empty()),
                last_seen: t.last_seen.map(Time),
            })
            .collect();
        desired.insert(port.name.clone(), want);
    }
    validate::cross_check(&mut desired, &agents.host_ports, config);
    let operator_targets = config
        .operator_ports
        .iter()
        .filter_map(|p| p.target.rsplit_once(':')?.1.parse().ok())
        .collect();
    unmapped::add_unmapped(&mut desired, &agents.host_ports, &operator_targets);
    validate::second_owners(&mut desired, agents);
    crate::bounds::cap_desired(&mut desired);
    desired
}

fn operator_port(port: &crate::config::OperatorPortConfig) -> DesiredPort {
    // Validated when the config was loaded; an unparsable target keeps the raw text.
    let (host, target_port) =
        crate::config::parse_target(&port.target).unwrap_or_else(|_| (port.target.clone(), 0));
    DesiredPort {
        spec: OperatorPortSpec {
            plane: Plane::Operator,
            port: i32::from(port.local.port()),
            protocol: "TCP".into(),
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
                host,
                port: i32::from(target_port),
            }),
        },
        findings: Vec::new(),
        agents: Vec::new(),
        health: None,
    }
}

/// Set every operator port's tunnel health from its agent entries, as of
/// `now` (the rule is in [`health`]).
pub fn assess_health(desired: &mut Desired, now: Timestamp, ttl: std::time::Duration) {
    for port in desired.values_mut() {
        if port.spec.plane == Plane::Operator {
            port.health = Some(health::tunnel_health(&port.agents, now, ttl));
        }
    }
}

/// Parse the Tailscale operator's proxy state Secret; `None` when it is not
/// one (missing parent labels or not for a Service).
pub fn proxy_state(secret: &Secret) -> Option<((String, String), ProxyState)> {
    let labels = secret.metadata.labels.as_ref()?;
    if labels
        .get("tailscale.com/parent-resource-type")
        .map(String::as_str)
        != Some("svc")
    {
        return None;
    }
    let name = labels.get("tailscale.com/parent-resource")?.clone();
    let namespace = labels.get("tailscale.com/parent-resource-ns")?.clone();
    let field = |key: &str| -> Option<String> {
        if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
            return String::from_utf8(v.0.clone()).ok();
        }
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .cloned()
    };
    let fqdn = field("device_fqdn")
        .map(|f| f.trim().trim_end_matches('.').to_string())
        .filter(|f| !f.is_empty());
    let ips = field("device_ips")
        .and_then(|v| serde_json::from_str::<Vec<String>>(&v).ok())
        .unwrap_or_default();
    Some(((namespace, name), ProxyState { fqdn, ips }))
}

#[cfg(test)]
mod tests;
