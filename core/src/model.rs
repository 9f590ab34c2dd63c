//! The port model: which plane a port belongs to, every path by which a
//! runtime port is reachable, and an operator port's two ends.
//!
//! The controller's `OperatorPort` CRD nests these types (its schema is
//! derived from them, feature `schemars`), so their doc comments are the
//! descriptions `kubectl explain` shows.

use serde::{Deserialize, Serialize};

use crate::Protocol;

/// One port of the inventory, as the controller computes it; the CRD's
/// `spec` is this, field by field (`protocol` spelled as Kubernetes does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Runtime or Operator.
    pub plane: Plane,
    /// The Service port (Runtime) or the local listen port (Operator).
    pub port: i32,
    pub protocol: Protocol,
    /// Where users reach the port: "<fqdn>:<port>", "<hostname>:<port>",
    /// "127.0.0.1:<hostPort>", "node:<nodePort>" or the agent's listen
    /// address.
    pub endpoint: Option<String>,
    /// tailscale, colima, tailscale+colima, portplane-agent, or none.
    pub owner: String,
    /// Runtime plane only.
    pub service: Option<ServiceRef>,
    /// The Service port's targetPort (number or container port name).
    pub target_port: Option<String>,
    pub node_port: Option<i32>,
    /// Runtime plane only.
    pub exposures: Vec<Exposure>,
    /// Operator plane only.
    pub local: Option<LocalEndpoint>,
    /// Operator plane only.
    pub target: Option<TargetEndpoint>,
}

/// Which half of the ownership contract a port belongs to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum Plane {
    /// Owned by the cluster runtime (Tailscale operator, Colima/Lima); never tunnelled by the agent.
    Runtime,
    /// Owned by the portplane host agent, which tunnels it on a dedicated loopback port.
    Operator,
}

/// A namespaced Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
}

/// One path by which a port is reachable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Exposure {
    /// TailscaleService (annotation tailscale.com/expose), TailscaleLoadBalancer (loadBalancerClass tailscale) or NodePort (published through Lima/Docker).
    pub kind: ExposureKind,
    /// Tailnet hostname (MagicDNS label): tailscale.com/hostname, or <namespace>-<name> by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Fully qualified tailnet name, without the trailing dot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
    /// Where the FQDN came from: ProxySecret (the Tailscale operator's proxy state), LoadBalancerStatus, or Predicted (hostname + configured tailnet domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn_source: Option<FqdnSource>,
    /// Tailnet IP addresses of the proxy, from its state Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tailnet_ips: Vec<String>,
    /// Tailscale ACL tags from tailscale.com/tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Host port that publishes the NodePort on the host (from agents' view of the Docker port map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
}

impl Exposure {
    /// The NodePort path (Lima/Docker), published on the host at
    /// `host_port` when an agent reports a Docker map for it.
    pub fn node_port(host_port: Option<i32>) -> Exposure {
        Exposure {
            kind: ExposureKind::NodePort,
            hostname: None,
            fqdn: None,
            fqdn_source: None,
            tailnet_ips: Vec::new(),
            tags: Vec::new(),
            host_port,
        }
    }
}

/// The exposure path.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum ExposureKind {
    /// Service annotated tailscale.com/expose: "true".
    TailscaleService,
    /// Service of type LoadBalancer with loadBalancerClass tailscale.
    TailscaleLoadBalancer,
    /// NodePort Service, published on the host through Lima/Docker port maps.
    NodePort,
}

/// Where an FQDN came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub enum FqdnSource {
    /// device_fqdn of the Tailscale operator's proxy state Secret.
    ProxySecret,
    /// The Service's .status.loadBalancer.ingress.
    LoadBalancerStatus,
    /// Hostname plus the configured tailnet domain; not yet confirmed by Tailscale.
    Predicted,
}

/// A loopback listen address of the host agent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct LocalEndpoint {
    /// Loopback IP address, e.g. 127.0.0.1.
    pub address: String,
    /// Local port, e.g. 16443.
    pub port: i32,
}

/// A tunnel target as seen from the SSH server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TargetEndpoint {
    /// Host name or IP, e.g. 10.5.0.2.
    pub host: String,
    /// Port, e.g. 6443.
    pub port: i32,
}
