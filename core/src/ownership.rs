//! The ownership rule, the one place it is decided.
//!
//! Operator ports (kube API, Talos API) belong to the host agent, which
//! tunnels them over TCP; runtime ports (Redis, Inngest, ...) belong to
//! Colima/Lima or the Tailscale operator. Two owners collide only on the
//! same port number AND protocol: a UDP-only runtime port (LiveKit's
//! 7882/UDP) leaves TCP 7882 free for a forward, a TCP one does not.
//!
//! The controller uses [`collides`] to flag a runtime port on an operator
//! port's local port (`OperatorPortClash`); the agent uses [`refusal`] to
//! refuse a forward onto a runtime port, from the inventory the controller
//! last sent ([`Inventory`], cached on disk by the agent).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{HostPort, Protocol};

/// What the agent's tunnel carries: every operator port is TCP.
pub const OPERATOR_PROTOCOL: Protocol = Protocol::Tcp;

/// Whether an operator port listening on `operator_port` and a runtime port
/// published on `runtime_port` over `runtime_protocol` claim the same
/// socket (port 0 is "none" and never collides).
pub fn collides(operator_port: u16, runtime_port: u16, runtime_protocol: Protocol) -> bool {
    operator_port != 0 && operator_port == runtime_port && runtime_protocol == OPERATOR_PROTOCOL
}

/// The runtime half of the inventory, as the agent keeps it (JSON cache:
/// the wire `Inventory` message's fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Inventory {
    #[serde(default)]
    pub revision: u64,
    #[serde(default)]
    pub runtime_ports: Vec<RuntimePort>,
}

/// One runtime port: a Service port the runtime publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct RuntimePort {
    /// `<namespace>.<service>.<port>[-udp|-sctp]`.
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub service: String,
    pub port: u16,
    /// Absent in caches written before the protocol was kept: TCP, the
    /// reading that refuses more rather than less.
    #[serde(default)]
    pub protocol: Protocol,
    /// 0: none.
    #[serde(default)]
    pub node_port: u16,
    /// Tailnet hostnames and FQDNs the port is reachable by.
    #[serde(default)]
    pub hostnames: Vec<String>,
}

impl Inventory {
    /// The host-side TCP ports runtime ports occupy: the NodePorts, which
    /// Lima forwards to the same port on the host (a Service port alone is
    /// reached through the tailnet, not the host). These are where a second
    /// owner (a stray `ssh -L`) would sit.
    pub fn host_tcp_ports(&self) -> std::collections::BTreeSet<u16> {
        self.runtime_ports
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp && p.node_port != 0)
            .map(|p| p.node_port)
            .collect()
    }
}

/// A forward the agent is asked to hold: listen on `listen`, carry TCP to
/// `target` as the SSH server resolves it.
#[derive(Debug, Clone, Copy)]
pub struct ForwardClaim<'a> {
    pub name: &'a str,
    pub listen: SocketAddr,
    pub target: &'a HostPort,
}

/// Why `forward` may not be tunnelled, when it may not: it listens on a
/// runtime port (its Service port or NodePort) or targets a runtime
/// Service, over the same protocol. `None`: it may.
pub fn refusal(forward: ForwardClaim<'_>, inventory: &Inventory) -> Option<String> {
    let rule = "runtime ports belong to Colima/Lima or the Tailscale operator; portplane-agent \
                tunnels only operator ports (kube API, Talos API), so a second owner cannot \
                shadow a runtime port. Pick another listen port or remove this [[forward]]";
    let listen = forward.listen.port();
    for rp in &inventory.runtime_ports {
        if collides(listen, rp.port, rp.protocol) || collides(listen, rp.node_port, rp.protocol) {
            return Some(format!(
                "forward \"{}\" refused: listen port {listen} is runtime port {} ({}) \
                 (inventory revision {}); {rule}",
                forward.name, rp.name, rp.protocol, inventory.revision
            ));
        }
        if targets_service(forward.target, rp) {
            return Some(format!(
                "forward \"{}\" refused: target {} is runtime service {} ({}) \
                 (inventory revision {}); {rule}",
                forward.name, forward.target, rp.name, rp.protocol, inventory.revision
            ));
        }
    }
    None
}

/// `target` reaches `rp` over the forward's protocol: by the Service's
/// cluster DNS name or a tailnet name on its port, or by its NodePort.
fn targets_service(target: &HostPort, rp: &RuntimePort) -> bool {
    if rp.protocol != OPERATOR_PROTOCOL {
        return false;
    }
    let host = target.host.trim_end_matches('.').to_ascii_lowercase();
    let service_names = [
        format!("{}.{}", rp.service, rp.namespace),
        format!("{}.{}.svc", rp.service, rp.namespace),
        format!("{}.{}.svc.cluster.local", rp.service, rp.namespace),
    ];
    let named = !rp.service.is_empty() && service_names.contains(&host);
    let tailnet = rp.hostnames.iter().any(|h| {
        let h = h.trim_end_matches('.').to_ascii_lowercase();
        h == host || h.split('.').next() == Some(host.as_str())
    });
    ((named || tailnet) && target.port == rp.port)
        || (rp.node_port != 0 && target.port == rp.node_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim<'a>(listen: u16, target: &'a HostPort) -> ForwardClaim<'a> {
        ForwardClaim {
            name: "f",
            listen: SocketAddr::from(([127, 0, 0, 1], listen)),
            target,
        }
    }

    fn target(s: &str) -> HostPort {
        HostPort::parse(s).unwrap()
    }

    fn inventory() -> Inventory {
        serde_json::from_str(
            r#"{"revision": 7, "runtime_ports": [
                {"name": "joelclaw.redis.6379", "namespace": "joelclaw", "service": "redis",
                 "port": 6379, "node_port": 30079, "hostnames": ["joelclaw-redis.tail1.ts.net."]},
                {"name": "joelclaw.livekit.7882-udp", "namespace": "joelclaw", "service": "livekit",
                 "port": 7882, "protocol": "UDP", "node_port": 30882,
                 "hostnames": ["joelclaw-livekit.tail1.ts.net"]}
            ]}"#,
        )
        .unwrap()
    }

    #[test]
    fn operator_forward_passes() {
        assert_eq!(
            refusal(claim(16443, &target("10.5.0.2:6443")), &inventory()),
            None
        );
    }

    #[test]
    fn listen_on_a_tcp_runtime_port_is_refused_explaining_the_rule() {
        let t = target("10.5.0.2:6443");
        let why = refusal(claim(6379, &t), &inventory()).unwrap();
        assert!(
            why.contains("listen port 6379 is runtime port joelclaw.redis.6379 (TCP)"),
            "{why}"
        );
        assert!(
            why.contains("belong to Colima/Lima or the Tailscale operator"),
            "{why}"
        );
        assert!(refusal(claim(30079, &t), &inventory()).is_some());
    }

    #[test]
    fn a_udp_only_runtime_port_leaves_tcp_on_the_same_number_free() {
        let t = target("10.5.0.2:6443");
        assert_eq!(refusal(claim(7882, &t), &inventory()), None);
        assert_eq!(refusal(claim(30882, &t), &inventory()), None);
        // Targets too: TCP to the UDP service's name and port is not it.
        for to in [
            "livekit.joelclaw:7882",
            "joelclaw-livekit:7882",
            "10.5.0.2:30882",
        ] {
            assert_eq!(
                refusal(claim(17882, &target(to)), &inventory()),
                None,
                "{to}"
            );
        }
        // The same port as TCP is refused.
        let mut tcp = inventory();
        tcp.runtime_ports[1].protocol = Protocol::Tcp;
        assert!(refusal(claim(7882, &t), &tcp).is_some());
    }

    #[test]
    fn a_cache_without_protocols_reads_as_tcp() {
        let old: Inventory = serde_json::from_str(
            r#"{"revision": 1, "runtime_ports": [{"name": "a.b.7882", "port": 7882}]}"#,
        )
        .unwrap();
        assert_eq!(old.runtime_ports[0].protocol, Protocol::Tcp);
        assert!(refusal(claim(7882, &target("10.5.0.2:6443")), &old).is_some());
    }

    #[test]
    fn target_naming_a_tcp_runtime_service_is_refused() {
        for to in [
            "redis.joelclaw:6379",
            "redis.joelclaw.svc.cluster.local:6379",
            "joelclaw-redis.tail1.ts.net:6379",
            "joelclaw-redis:6379",
            "10.5.0.2:30079",
        ] {
            let why = refusal(claim(16379, &target(to)), &inventory());
            assert!(why.is_some_and(|w| w.contains("runtime service")), "{to}");
        }
        assert_eq!(
            refusal(claim(16379, &target("redis.joelclaw:6380")), &inventory()),
            None
        );
    }

    #[test]
    fn host_tcp_ports_are_the_tcp_node_ports() {
        assert_eq!(
            inventory().host_tcp_ports().into_iter().collect::<Vec<_>>(),
            [30079]
        );
    }

    #[test]
    fn collision_needs_the_same_number_and_tcp() {
        assert!(collides(16443, 16443, Protocol::Tcp));
        assert!(!collides(16443, 16443, Protocol::Udp));
        assert!(!collides(16443, 16444, Protocol::Tcp));
        assert!(!collides(0, 0, Protocol::Tcp));
    }
}
