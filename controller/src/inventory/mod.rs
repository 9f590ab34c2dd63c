//! The controller's side of the inventory: Kubernetes objects in, the
//! objects to write out. The rule itself is pure and lives in
//! `portplane_core::inventory`; here a `Service` becomes the
//! [`ServiceFacts`] it reads, and the result gains what only the controller
//! knows: the agents' tunnel reports (status) and the size bounds.

pub mod health;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use portplane_core::inventory::{HostFacts, Ingress, Policy, ServiceFacts, ServicePortFacts};
use portplane_core::{Plane, PortSpec, Protocol};

pub use portplane_core::inventory::{
    EXPOSE_ANNOTATION, Finding, FindingKind, HOSTNAME_ANNOTATION, HostPortReport, ProxyIndex,
    ProxyState, SecondOwnerReport, TAGS_ANNOTATION,
};

use crate::crd::AgentStatus;

/// One object the controller wants to exist.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPort {
    /// The port as `portplane_core` computed it (the CRD's spec).
    pub spec: PortSpec,
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

/// Everything host agents reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentReports {
    pub host_ports: Vec<HostPortReport>,
    pub tunnels: Vec<TunnelReport>,
    pub second_owners: Vec<SecondOwnerReport>,
}

/// The desired inventory, keyed by object name.
pub type Desired = std::collections::BTreeMap<String, DesiredPort>;

/// Build the desired inventory from everything the controller watches.
pub fn desired_inventory<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    proxies: &ProxyIndex,
    agents: &AgentReports,
    policy: &Policy,
) -> Desired {
    let core = portplane_core::inventory::desired_inventory(
        services.into_iter().filter_map(service_facts),
        proxies,
        HostFacts {
            host_ports: &agents.host_ports,
            second_owners: &agents.second_owners,
        },
        policy,
    );
    let mut desired: Desired = core
        .into_iter()
        .map(|(name, port)| {
            let agents = if port.spec.plane == Plane::Operator {
                tunnel_entries(&name, &agents.tunnels)
            } else {
                Vec::new()
            };
            let want = DesiredPort {
                spec: port.spec,
                findings: port.findings,
                agents,
                health: None,
            };
            (name, want)
        })
        .collect();
    crate::bounds::cap_desired(&mut desired);
    desired
}

/// The agents' reports on the forward named like operator port `name`.
fn tunnel_entries(name: &str, tunnels: &[TunnelReport]) -> Vec<AgentStatus> {
    tunnels
        .iter()
        .filter(|t| t.forward == name)
        .map(|t| AgentStatus {
            name: t.agent.clone(),
            tunnel: t.state.clone(),
            active_connections: t.active_connections,
            last_error: t.last_error.clone(),
            version: Some(t.version.clone()).filter(|v| !v.is_empty()),
            last_seen: t.last_seen.map(Time),
        })
        .collect()
}

/// What the inventory reads of a Service; `None` without a namespace, name
/// or spec (never so from the API server).
pub fn service_facts(service: &Service) -> Option<ServiceFacts<'_>> {
    let namespace = service.metadata.namespace.as_deref()?;
    let name = service.metadata.name.as_deref()?;
    let spec = service.spec.as_ref()?;
    let annotations = service.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(ServicePortFacts {
                port: p.port,
                // The API server admits only TCP, UDP and SCTP.
                protocol: Protocol::parse(p.protocol.as_deref().unwrap_or("TCP")).ok()?,
                node_port: p.node_port,
                target_port: p.target_port.as_ref().map(|t| match t {
                    IntOrString::Int(i) => i.to_string(),
                    IntOrString::String(s) => s.clone(),
                }),
            })
        })
        .collect();
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| {
            ingress
                .iter()
                .map(|i| Ingress {
                    hostname: i.hostname.as_deref(),
                    ip: i.ip.as_deref(),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(ServiceFacts {
        namespace,
        name,
        expose: annotation(EXPOSE_ANNOTATION),
        hostname: annotation(HOSTNAME_ANNOTATION),
        tags: annotation(TAGS_ANNOTATION),
        type_: spec.type_.as_deref().unwrap_or("ClusterIP"),
        load_balancer_class: spec.load_balancer_class.as_deref(),
        cluster_ip: spec.cluster_ip.as_deref().unwrap_or(""),
        ports,
        ingress,
    })
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
