//! Docker port maps that lead nowhere: a host port an agent's VM publishes
//! to a container port that no Service has as its NodePort. The seed's rule
//! (../shared/seeds/002: Mac 9627 -> container 3000 -> NodePort 3000) is that
//! the NodePort must equal the Docker container-side port; a Service created
//! with a random NodePort, or a map left from an earlier cluster, breaks it
//! silently. Each such map becomes a Runtime-plane OperatorPort of its own,
//! not Ready, with a `NoNodePort` condition saying what to change.

use std::collections::{BTreeMap, BTreeSet};

use super::{Desired, DesiredPort, Finding, FindingKind, HostPortReport};
use crate::Protocol;
use crate::model::{Exposure, Plane, PortSpec};
use crate::names::object_name;
use crate::ownership::OPERATOR_PROTOCOL;

/// Objects for unmapped maps, at most: the reports are bounded, but 256
/// agents x 1,024 maps would still be a flood of objects.
pub const MAX_UNMAPPED: usize = 64;

/// `hostport.<host port>.<container port>`, with `-udp` / `-sctp`. It cannot
/// meet a Service's `<namespace>.<service>.<port>`: a Service name starts
/// with a letter (RFC 1035 label), never a digit.
pub fn unmapped_name(host_port: u16, container_port: u16, protocol: Protocol) -> String {
    object_name(
        "hostport",
        &host_port.to_string(),
        container_port.into(),
        protocol,
    )
}

/// Add an object for every map whose container port is no watched Service's
/// NodePort (same protocol). Maps to an operator port's target port (the
/// kube API's 6443, Talos's 50000, which Docker publishes for the node
/// container) are the operator plane's business, not flagged.
pub fn add_unmapped(
    desired: &mut Desired,
    host_ports: &[HostPortReport],
    operator_targets: &BTreeSet<u16>,
) {
    let node_ports: BTreeSet<(i32, Protocol)> = desired
        .values()
        .filter(|p| p.spec.plane == Plane::Runtime)
        .filter_map(|p| Some((p.spec.node_port?, p.spec.protocol)))
        .collect();
    // (host port, container port, protocol) -> the agents that see the map
    let mut maps: BTreeMap<(u16, u16, Protocol), Vec<&str>> = BTreeMap::new();
    for h in host_ports {
        let wanted = node_ports.contains(&(i32::from(h.container_port), h.protocol));
        let operator =
            h.protocol == OPERATOR_PROTOCOL && operator_targets.contains(&h.container_port);
        if !wanted && !operator {
            let agents = maps
                .entry((h.host_port, h.container_port, h.protocol))
                .or_default();
            if !agents.contains(&h.agent.as_str()) {
                agents.push(&h.agent);
            }
        }
    }
    let mut added = Vec::new();
    for ((host_port, container_port, protocol), agents) in maps.into_iter().take(MAX_UNMAPPED) {
        let message = format!(
            "the VM of {} maps host port {host_port} to container port {container_port}/{protocol}, \
             but no Service has nodePort {container_port}, so the map leads nowhere; the NodePort must \
             equal the Docker container-side port: set spec.ports[].nodePort: {container_port} on the \
             Service meant to be reached on 127.0.0.1:{host_port} (or the map is left from an earlier cluster)",
            agents.join(", ")
        );
        let spec = PortSpec {
            plane: Plane::Runtime,
            port: host_port.into(),
            protocol,
            endpoint: Some(format!("127.0.0.1:{host_port}")),
            owner: "colima".into(),
            service: None,
            target_port: None,
            node_port: None,
            exposures: vec![Exposure::node_port(Some(host_port.into()))],
            local: None,
            target: None,
        };
        let port = DesiredPort {
            spec,
            findings: vec![Finding::new(FindingKind::NoNodePort, message)],
        };
        added.push((unmapped_name(host_port, container_port, protocol), port));
    }
    desired.extend(added);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(agent: &str, host: u16, container: u16, protocol: &str) -> HostPortReport {
        HostPortReport {
            agent: agent.into(),
            host_port: host,
            container_port: container,
            protocol: Protocol::parse(protocol).unwrap(),
        }
    }

    fn node_port_service(node_port: i32, protocol: &str) -> (String, DesiredPort) {
        let protocol = Protocol::parse(protocol).unwrap();
        let mut port = DesiredPort {
            spec: PortSpec {
                plane: Plane::Runtime,
                port: 80,
                protocol,
                endpoint: None,
                owner: "colima".into(),
                service: None,
                target_port: None,
                node_port: Some(node_port),
                exposures: Vec::new(),
                local: None,
                target: None,
            },
            findings: Vec::new(),
        };
        port.spec.port = node_port;
        (object_name("apps", "web", node_port, protocol), port)
    }

    #[test]
    fn a_map_without_a_node_port_gets_an_object_naming_both_ports_and_the_agents() {
        let mut desired: Desired = [node_port_service(3000, "TCP")].into_iter().collect();
        let maps = [
            map("laptop", 9627, 3000, "TCP"),
            map("laptop", 9628, 3001, "TCP"),
            map("mini", 9628, 3001, "TCP"),
        ];
        add_unmapped(&mut desired, &maps, &BTreeSet::new());
        assert!(
            !desired.contains_key("hostport.9627.3000"),
            "3000 is a NodePort"
        );
        let o = &desired["hostport.9628.3001"];
        assert_eq!(o.spec.endpoint.as_deref(), Some("127.0.0.1:9628"));
        assert_eq!(o.spec.plane, Plane::Runtime);
        assert_eq!(o.findings.len(), 1);
        assert_eq!(o.findings[0].kind, FindingKind::NoNodePort);
        let m = &o.findings[0].message;
        assert!(
            m.contains("laptop, mini") && m.contains("nodePort: 3001"),
            "{m}"
        );
    }

    #[test]
    fn protocol_and_operator_targets_are_respected() {
        let mut desired: Desired = [node_port_service(5353, "TCP")].into_iter().collect();
        let maps = [
            // A UDP map is not served by a TCP NodePort of the same number.
            map("laptop", 5353, 5353, "UDP"),
            // Docker publishes the node's kube API: an operator target.
            map("laptop", 6443, 6443, "TCP"),
        ];
        add_unmapped(&mut desired, &maps, &BTreeSet::from([6443]));
        let names: Vec<&String> = desired.keys().collect();
        assert_eq!(names, ["apps.web.5353", "hostport.5353.5353-udp"]);
    }

    #[test]
    fn the_number_of_objects_is_bounded() {
        let mut desired = Desired::new();
        let maps: Vec<HostPortReport> = (0..1000)
            .map(|i| map("a", 10_000 + i, 20_000 + i, "TCP"))
            .collect();
        add_unmapped(&mut desired, &maps, &BTreeSet::new());
        assert_eq!(desired.len(), MAX_UNMAPPED);
    }
}
