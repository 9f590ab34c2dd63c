//! The one place the port model (`portplane-core`) meets the wire types:
//! the controller sends its inventory with [`inventory`], the agent reads it
//! with [`runtime_inventory`], and the controller reads the agents' reports
//! with [`host_port`], [`second_owner`] and [`tunnel_state`].
//!
//! Here rather than in either binary: both already depend on this crate, so
//! neither keeps its own copy, and `portplane-core` stays free of prost.

use portplane_core::inventory::{HostPortReport, SecondOwnerReport};
use portplane_core::ownership::{Inventory, RuntimePort};
use portplane_core::{Plane, PortSpec, Protocol};

use crate::v1alpha1 as pb;

/// The wire form of an inventory: `ports` are (object name, spec).
/// Numbers outside a field's range (never produced by the inventory) go out
/// as 0, the wire's "none".
pub fn inventory<'a>(
    revision: u64,
    ports: impl IntoIterator<Item = (&'a str, &'a PortSpec)>,
) -> pb::Inventory {
    let mut out = pb::Inventory {
        revision,
        ..Default::default()
    };
    let wire_port = |p: i32| u32::try_from(p).unwrap_or(0);
    for (name, spec) in ports {
        match spec.plane {
            Plane::Runtime => {
                let (namespace, service) = spec
                    .service
                    .as_ref()
                    .map(|s| (s.namespace.clone(), s.name.clone()))
                    .unwrap_or_default();
                let mut hostnames: Vec<String> = Vec::new();
                for e in &spec.exposures {
                    for h in e.hostname.iter().chain(e.fqdn.iter()) {
                        if !hostnames.contains(h) {
                            hostnames.push(h.clone());
                        }
                    }
                }
                out.runtime_ports.push(pb::RuntimePort {
                    name: name.to_string(),
                    namespace,
                    service,
                    port: wire_port(spec.port),
                    protocol: spec.protocol.as_str().to_string(),
                    node_port: spec.node_port.map(wire_port).unwrap_or(0),
                    hostnames,
                });
            }
            Plane::Operator => {
                let (local_address, local_port) = spec
                    .local
                    .as_ref()
                    .map(|l| (l.address.clone(), wire_port(l.port)))
                    .unwrap_or_default();
                let (target_host, target_port) = spec
                    .target
                    .as_ref()
                    .map(|t| (t.host.clone(), wire_port(t.port)))
                    .unwrap_or_default();
                out.operator_ports.push(pb::OperatorPortSpec {
                    name: name.to_string(),
                    local_address,
                    local_port,
                    target_host,
                    target_port,
                });
            }
        }
    }
    out
}

/// The runtime ports of a received inventory, as the agent enforces the
/// ownership rule from them. A port number out of range cannot be a socket
/// and is left out; an unknown protocol is read as TCP (it then refuses a
/// forward on its number rather than letting one through).
pub fn runtime_inventory(inventory: &pb::Inventory) -> Inventory {
    Inventory {
        revision: inventory.revision,
        runtime_ports: inventory
            .runtime_ports
            .iter()
            .filter_map(|p| {
                Some(RuntimePort {
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    service: p.service.clone(),
                    port: u16::try_from(p.port).ok()?,
                    protocol: Protocol::parse(&p.protocol).unwrap_or(Protocol::Tcp),
                    node_port: u16::try_from(p.node_port).unwrap_or(0),
                    hostnames: p.hostnames.clone(),
                })
            })
            .collect(),
    }
}

/// One published host port an agent reported; `None` when a port is out of
/// range or the protocol unknown.
pub fn host_port(agent: &str, h: &pb::HostPort) -> Option<HostPortReport> {
    Some(HostPortReport {
        agent: agent.to_string(),
        host_port: u16::try_from(h.host_port).ok()?,
        container_port: u16::try_from(h.container_port).ok()?,
        protocol: Protocol::parse(&h.protocol).ok()?,
    })
}

/// One second owner an agent reported; `None` when the port is out of range.
pub fn second_owner(agent: &str, o: &pb::SecondOwner) -> Option<SecondOwnerReport> {
    Some(SecondOwnerReport {
        agent: agent.to_string(),
        port: u16::try_from(o.port).ok()?,
        address: o.address.clone(),
        pid: o.pid,
        process: o.process.clone(),
        command: o.command.clone(),
    })
}

/// A tunnel's state as status spells it (`Up`, `Down`, `Refused`;
/// `Unknown` for anything else) from the wire's enum value.
pub fn tunnel_state(state: i32) -> &'static str {
    match pb::TunnelState::try_from(state) {
        Ok(pb::TunnelState::Up) => "Up",
        Ok(pb::TunnelState::Down) => "Down",
        Ok(pb::TunnelState::Refused) => "Refused",
        _ => "Unknown",
    }
}

/// The reverse of [`tunnel_state`] (status entries read back after a
/// controller restart).
pub fn tunnel_state_from_status(state: &str) -> pb::TunnelState {
    match state {
        "Up" => pb::TunnelState::Up,
        "Down" => pb::TunnelState::Down,
        "Refused" => pb::TunnelState::Refused,
        _ => pb::TunnelState::Unspecified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portplane_core::{Exposure, ExposureKind, ServiceRef};

    fn runtime(protocol: Protocol) -> PortSpec {
        PortSpec {
            plane: Plane::Runtime,
            port: 7882,
            protocol,
            endpoint: None,
            owner: "tailscale".into(),
            service: Some(ServiceRef {
                namespace: "joelclaw".into(),
                name: "livekit".into(),
            }),
            target_port: None,
            node_port: Some(30882),
            exposures: vec![Exposure {
                kind: ExposureKind::TailscaleService,
                hostname: Some("joelclaw-livekit".into()),
                fqdn: Some("joelclaw-livekit.tail1.ts.net".into()),
                fqdn_source: None,
                tailnet_ips: Vec::new(),
                tags: Vec::new(),
                host_port: None,
            }],
            local: None,
            target: None,
        }
    }

    /// What the controller sends is what the agent enforces, protocol
    /// included (the agent used to drop it).
    #[test]
    fn runtime_ports_round_trip_with_their_protocol() {
        let spec = runtime(Protocol::Udp);
        let wire = inventory(9, [("joelclaw.livekit.7882-udp", &spec)]);
        assert_eq!(wire.runtime_ports[0].protocol, "UDP");
        let back = runtime_inventory(&wire);
        assert_eq!(back.revision, 9);
        let rp = &back.runtime_ports[0];
        assert_eq!(rp.protocol, Protocol::Udp);
        assert_eq!((rp.port, rp.node_port), (7882, 30882));
        assert_eq!(
            rp.hostnames,
            ["joelclaw-livekit", "joelclaw-livekit.tail1.ts.net"]
        );
        assert_eq!(
            (rp.namespace.as_str(), rp.service.as_str()),
            ("joelclaw", "livekit")
        );
    }

    #[test]
    fn reports_and_states() {
        let h = pb::HostPort {
            host_port: 9627,
            container_port: 3000,
            protocol: "tcp".into(),
            host_ip: String::new(),
        };
        assert_eq!(host_port("panda", &h).unwrap().protocol, Protocol::Tcp);
        let bad = pb::HostPort {
            host_port: 70000,
            ..h
        };
        assert_eq!(host_port("panda", &bad), None);
        for s in ["Up", "Down", "Refused"] {
            assert_eq!(tunnel_state(tunnel_state_from_status(s) as i32), s);
        }
        assert_eq!(tunnel_state(42), "Unknown");
    }
}
