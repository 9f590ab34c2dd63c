//! The `OperatorPort` custom resource: one object per exposed Service port
//! (plane `Runtime`) or per declared operator port (plane `Operator`).
//!
//! The CRD YAML is derived from these types (`portplane-controller crd`); the
//! chart's copy is checked against it by a test.

// Every printcolumn repeats `type_ = "string"`; clippy reads that as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One port of the cluster's inventory, with every path by which it is reachable.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "portplane.dev",
    version = "v1alpha1",
    kind = "OperatorPort",
    plural = "operatorports",
    shortname = "oport",
    category = "portplane",
    status = "OperatorPortStatus",
    doc = "A port of the cluster's live inventory: an exposed Service port (plane Runtime) or a port the portplane host agent tunnels (plane Operator).",
    printcolumn(
        name = "Plane",
        type_ = "string",
        json_path = ".spec.plane",
        description = "Runtime or Operator"
    ),
    printcolumn(
        name = "Service",
        type_ = "string",
        json_path = ".spec.service.name",
        description = "The Service the port belongs to"
    ),
    printcolumn(
        name = "Port",
        type_ = "integer",
        json_path = ".spec.port",
        description = "Service port or local listen port"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".spec.endpoint",
        description = "Where users reach the port"
    ),
    printcolumn(
        name = "Owner",
        type_ = "string",
        json_path = ".spec.owner",
        description = "Who publishes the port"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Ready condition"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Namespace",
        type_ = "string",
        json_path = ".spec.service.namespace",
        priority = 1,
        description = "Namespace of the Service"
    ),
    printcolumn(
        name = "Protocol",
        type_ = "string",
        json_path = ".spec.protocol",
        priority = 1,
        description = "TCP, UDP or SCTP"
    ),
    printcolumn(
        name = "NodePort",
        type_ = "integer",
        json_path = ".spec.nodePort",
        priority = 1,
        description = "The Service's NodePort"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target.host",
        priority = 1,
        description = "Tunnel target host (Operator plane)"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1,
        description = "Why the port is (not) ready"
    ),
    printcolumn(
        name = "Agents",
        type_ = "string",
        json_path = ".status.agentSummary",
        priority = 1,
        description = "Host agents that reported this port, with their tunnel state"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct OperatorPortSpec {
    /// Runtime: a Service port published by the cluster runtime (Tailscale operator, Colima/Lima NodePort). Operator: a port the portplane host agent tunnels (kube API, Talos API).
    pub plane: Plane,
    /// The port users connect to: the Service port (Runtime) or the local listen port (Operator).
    pub port: i32,
    /// Transport protocol: TCP, UDP or SCTP.
    pub protocol: String,
    /// Where the port is reached, summarised: "<fqdn>:<port>", "<hostname>:<port>", "127.0.0.1:<hostPort>", "node:<nodePort>" or the agent's local listen address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Who publishes the port: tailscale, colima, portplane-agent, or none when nothing does.
    pub owner: String,
    /// The Service the port belongs to (Runtime plane only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// The Service port's targetPort (number or container port name), as written in the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<String>,
    /// The NodePort allocated for the Service port, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
    /// Every path by which the port is reachable (Runtime plane only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exposures: Vec<Exposure>,
    /// The loopback address the host agent listens on (Operator plane only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalEndpoint>,
    /// The tunnel's target as seen from the SSH server (Operator plane only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetEndpoint>,
}

// The nested types are the port model's own (`portplane_core::model`); their
// doc comments are the schema's descriptions.
pub use portplane_core::{
    Exposure, ExposureKind, FqdnSource, LocalEndpoint, Plane, ServiceRef, TargetEndpoint,
};

impl From<&portplane_core::PortSpec> for OperatorPortSpec {
    /// The CRD's spec is the core's, field by field, with the protocol
    /// spelled as Kubernetes does (`TCP`, `UDP`, `SCTP`).
    fn from(s: &portplane_core::PortSpec) -> Self {
        OperatorPortSpec {
            plane: s.plane,
            port: s.port,
            protocol: s.protocol.as_str().to_string(),
            endpoint: s.endpoint.clone(),
            owner: s.owner.clone(),
            service: s.service.clone(),
            target_port: s.target_port.clone(),
            node_port: s.node_port,
            exposures: s.exposures.clone(),
            local: s.local.clone(),
            target: s.target.clone(),
        }
    }
}

impl OperatorPortSpec {
    /// Whether this spec (as read from the API server) is `want`, without
    /// building a copy of it (the reconcile loop compares every object).
    pub fn is(&self, want: &portplane_core::PortSpec) -> bool {
        self.plane == want.plane
            && self.port == want.port
            && self.protocol == want.protocol.as_str()
            && self.endpoint == want.endpoint
            && self.owner == want.owner
            && self.service == want.service
            && self.target_port == want.target_port
            && self.node_port == want.node_port
            && self.exposures == want.exposures
            && self.local == want.local
            && self.target == want.target
    }
}

/// Observed state, written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperatorPortStatus {
    /// The metadata.generation the status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready plus one condition per problem found (HostnameConflict, InvalidHostname, HeadlessService, OperatorPortClash, NoClusterIP, ExposeAnnotationIgnored, NoHostPort, NoNodePort, SecondOwner), merged by type. Operator ports: Ready follows the agents' tunnel reports (TunnelUp, TunnelDown, NoAgentReport).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// What each host agent reported about this port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<AgentStatus>,
    /// The agents in one line, `name=Tunnel` each ("mini=Down,panda=Up"),
    /// for `kubectl get -o wide` (a printer column shows one value only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_summary: Option<String>,
}

/// One host agent's view of a port.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The agent's name ("panda").
    pub name: String,
    /// Up, Down or Refused (Operator plane); Published when the agent sees the port on its host (Runtime plane).
    pub tunnel: String,
    /// Active tunnelled connections.
    #[serde(default)]
    pub active_connections: i64,
    /// The agent's last error for this port, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// portplane-agent version of the reporting agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When the controller last heard from this agent; an entry older than
    /// the TTL (agents.ttlSeconds, default 30 s) no longer counts for Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
}

/// The CRD as YAML, exactly what `portplane-controller crd` prints and the
/// chart ships.
pub fn crd_yaml() -> Result<String, serde_saphyr::SerializeError> {
    use kube::CustomResourceExt;
    serde_saphyr::to_string(&OperatorPort::crd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    /// Every property of the schema carries a description, so
    /// `kubectl explain operatorport.spec...` helps.
    #[test]
    fn every_field_has_a_description() {
        let crd = serde_json::to_value(OperatorPort::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk(schema, "", &mut missing);
        assert!(
            missing.is_empty(),
            "fields without description: {missing:?}"
        );
    }

    fn walk(node: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let p = format!("{path}.{name}");
                if prop.get("description").is_none()
                    && !path.is_empty()
                    && !p.starts_with(".metadata")
                {
                    missing.push(p.clone());
                }
                walk(prop, &p, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, path, missing);
        }
    }

    #[test]
    fn names_users_type() {
        let crd = OperatorPort::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("operatorports.portplane.dev")
        );
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.short_names, Some(vec!["oport".to_string()]));
        assert_eq!(
            crd.spec.names.categories,
            Some(vec!["portplane".to_string()])
        );
        let columns: Vec<String> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name.to_uppercase())
            .collect();
        assert_eq!(
            columns,
            [
                "PLANE", "SERVICE", "PORT", "ENDPOINT", "OWNER", "READY", "AGE"
            ]
        );
        assert!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .unwrap()
                .status
                .is_some()
        );
    }
}
