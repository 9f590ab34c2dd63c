//! Protocol-aware ownership in the inventory. The seed's port tables run
//! through real `Service` objects in the controller's tests.

use super::*;

fn node_port_service<'a>(port: i32, node_port: i32, protocol: Protocol) -> ServiceFacts<'a> {
    ServiceFacts {
        namespace: "joelclaw",
        name: "livekit",
        type_: "NodePort",
        cluster_ip: "10.96.0.20",
        ports: vec![ServicePortFacts {
            port,
            protocol,
            node_port: Some(node_port),
            target_port: None,
        }],
        ..Default::default()
    }
}

fn policy() -> Policy {
    Policy {
        tailnet_domain: None,
        node_ports: true,
        operator_ports: vec![OperatorPortDecl {
            name: "kube-apiserver".into(),
            local: SocketAddr::from(([127, 0, 0, 1], 16443)),
            target: HostPort::parse("10.5.0.2:6443").unwrap(),
        }],
    }
}

fn kinds(d: &Desired, name: &str) -> Vec<FindingKind> {
    d[name].findings.iter().map(|f| f.kind).collect()
}

#[test]
fn a_udp_node_port_on_an_operator_port_is_no_clash_a_tcp_one_is() {
    let udp = desired_inventory(
        [node_port_service(7882, 16443, Protocol::Udp)],
        &ProxyIndex::new(),
        HostFacts::default(),
        &policy(),
    );
    assert_eq!(kinds(&udp, "joelclaw.livekit.7882-udp"), []);
    let tcp = desired_inventory(
        [node_port_service(7882, 16443, Protocol::Tcp)],
        &ProxyIndex::new(),
        HostFacts::default(),
        &policy(),
    );
    assert_eq!(
        kinds(&tcp, "joelclaw.livekit.7882"),
        [FindingKind::OperatorPortClash]
    );
}

#[test]
fn a_udp_host_port_map_onto_an_operator_port_is_no_clash() {
    let host_ports = |protocol| {
        vec![HostPortReport {
            agent: "panda".into(),
            host_port: 16443,
            container_port: 30882,
            protocol,
        }]
    };
    for (protocol, name, want) in [
        (Protocol::Udp, "joelclaw.livekit.7882-udp", vec![]),
        (
            Protocol::Tcp,
            "joelclaw.livekit.7882",
            vec![FindingKind::OperatorPortClash],
        ),
    ] {
        let reports = host_ports(protocol);
        let d = desired_inventory(
            [node_port_service(7882, 30882, protocol)],
            &ProxyIndex::new(),
            HostFacts {
                host_ports: &reports,
                second_owners: &[],
            },
            &policy(),
        );
        assert_eq!(kinds(&d, name), want, "{protocol}");
        assert_eq!(
            d[name].spec.endpoint.as_deref(),
            Some("127.0.0.1:16443"),
            "{protocol}"
        );
    }
}

#[test]
fn operator_ports_come_from_the_policy() {
    let d = desired_inventory([], &ProxyIndex::new(), HostFacts::default(), &policy());
    let spec = &d["kube-apiserver"].spec;
    assert_eq!(spec.plane, Plane::Operator);
    assert_eq!(spec.protocol, Protocol::Tcp);
    assert_eq!(spec.endpoint.as_deref(), Some("127.0.0.1:16443"));
    let target = spec.target.as_ref().unwrap();
    assert_eq!((target.host.as_str(), target.port), ("10.5.0.2", 6443));
}
