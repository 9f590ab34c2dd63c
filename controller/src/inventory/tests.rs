//! The seed's port tables as unit tests.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Secret, Service, ServicePort, ServiceSpec,
    ServiceStatus,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::*;
use crate::config::Config;
use crate::crd::{ExposureKind, FqdnSource};

fn service(ns: &str, name: &str, type_: &str, ports: &[(i32, i32, Option<i32>)]) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            annotations: Some(BTreeMap::new()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(type_.into()),
            cluster_ip: Some("10.96.0.10".into()),
            ports: Some(
                ports
                    .iter()
                    .map(|(port, target, node)| ServicePort {
                        port: *port,
                        target_port: Some(IntOrString::Int(*target)),
                        node_port: *node,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

fn annotate(mut s: Service, key: &str, value: &str) -> Service {
    s.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
    s
}

fn exposed(s: Service) -> Service {
    annotate(s, "tailscale.com/expose", "true")
}

fn no_operator_ports() -> Config {
    Config {
        operator_ports: Vec::new(),
        ..Config::default()
    }
}

fn run(services: &[Service], config: &Config) -> Desired {
    desired_inventory(
        services,
        &ProxyIndex::new(),
        &AgentReports::default(),
        &config.policy().unwrap(),
    )
}

/// One agent reporting that Docker publishes `container` on host `host`.
fn agent_maps_host_port(host: u16, container: u16) -> AgentReports {
    AgentReports {
        host_ports: vec![HostPortReport {
            agent: "panda".into(),
            host_port: host,
            container_port: container,
            protocol: Protocol::Tcp,
        }],
        tunnels: Vec::new(),
        second_owners: Vec::new(),
    }
}

fn kinds(d: &Desired, name: &str) -> Vec<FindingKind> {
    d[name].findings.iter().map(|f| f.kind).collect()
}

/// The seed's NodePort table (ADR-0082): host port = container port = NodePort,
/// except PDS (host 9627 -> NodePort 3000).
fn seed_node_ports() -> Vec<Service> {
    vec![
        service("joelclaw", "redis", "NodePort", &[(6379, 6379, Some(6379))]),
        service(
            "joelclaw",
            "livekit",
            "NodePort",
            &[(7880, 7880, Some(7880)), (7881, 7881, Some(7881))],
        ),
        service(
            "joelclaw",
            "inngest",
            "NodePort",
            &[(8288, 8288, Some(8288)), (8289, 8289, Some(8289))],
        ),
        service(
            "joelclaw",
            "system-bus-worker",
            "NodePort",
            &[(3111, 3111, Some(3111))],
        ),
        service(
            "joelclaw",
            "typesense",
            "NodePort",
            &[(8108, 8108, Some(8108))],
        ),
        service(
            "joelclaw",
            "bluesky-pds",
            "NodePort",
            &[(3000, 3000, Some(3000))],
        ),
    ]
}

#[test]
fn seed_node_port_table_becomes_one_object_per_port_plus_operator_ports() {
    let d = run(&seed_node_ports(), &Config::default());
    let names: Vec<&str> = d.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "joelclaw.bluesky-pds.3000",
            "joelclaw.inngest.8288",
            "joelclaw.inngest.8289",
            "joelclaw.livekit.7880",
            "joelclaw.livekit.7881",
            "joelclaw.redis.6379",
            "joelclaw.system-bus-worker.3111",
            "joelclaw.typesense.8108",
            "kube-apiserver",
            "talos-api",
        ]
    );
    let redis = &d["joelclaw.redis.6379"].spec;
    assert_eq!(redis.owner, "colima");
    assert_eq!(redis.endpoint.as_deref(), Some("node:6379"));
    assert!(
        d.values().all(|p| p.findings.is_empty()),
        "seed table has no problems"
    );
    let api = &d["kube-apiserver"].spec;
    assert_eq!(api.plane, Plane::Operator);
    assert_eq!(api.endpoint.as_deref(), Some("127.0.0.1:16443"));
    assert_eq!(
        api.target.as_ref().map(|t| (t.host.as_str(), t.port)),
        Some(("10.5.0.2", 6443))
    );
}

#[test]
fn pds_asymmetric_mapping_uses_the_agent_reported_host_port() {
    let reports = agent_maps_host_port(9627, 3000);
    let d = desired_inventory(
        &seed_node_ports(),
        &ProxyIndex::new(),
        &reports,
        &no_operator_ports().policy().unwrap(),
    );
    let pds = &d["joelclaw.bluesky-pds.3000"].spec;
    assert_eq!((pds.port, pds.node_port), (3000, Some(3000)));
    assert_eq!(pds.exposures[0].host_port, Some(9627));
    assert_eq!(pds.endpoint.as_deref(), Some("127.0.0.1:9627"));
}

#[test]
fn a_node_port_without_a_docker_map_is_flagged_once_docker_facts_exist() {
    // The seed's Docker maps, less typesense's.
    let mut reports = AgentReports::default();
    for (host, container) in [
        (6379, 6379),
        (7880, 7880),
        (7881, 7881),
        (8288, 8288),
        (8289, 8289),
        (3111, 3111),
        (9627, 3000),
    ] {
        reports
            .host_ports
            .extend(agent_maps_host_port(host, container).host_ports);
    }
    let d = desired_inventory(
        &seed_node_ports(),
        &ProxyIndex::new(),
        &reports,
        &no_operator_ports().policy().unwrap(),
    );
    assert_eq!(
        kinds(&d, "joelclaw.typesense.8108"),
        [FindingKind::NoHostPort]
    );
    let message = &d["joelclaw.typesense.8108"].findings[0].message;
    assert!(
        message.contains("NodePort 8108")
            && message.contains("panda")
            && message.contains("tailscale.com/expose"),
        "{message}"
    );
    for (name, port) in d.iter().filter(|(n, _)| *n != "joelclaw.typesense.8108") {
        assert!(port.findings.is_empty(), "{name}: {:?}", port.findings);
    }
    // A port the tailnet also reaches is not unreachable.
    let exposed = service(
        "joelclaw",
        "typesense",
        "NodePort",
        &[(8108, 8108, Some(8108))],
    );
    let mut exposed = exposed;
    exposed.metadata.annotations = Some(
        [("tailscale.com/expose".to_string(), "true".to_string())]
            .into_iter()
            .collect(),
    );
    let d = desired_inventory(
        &[exposed],
        &ProxyIndex::new(),
        &reports,
        &no_operator_ports().policy().unwrap(),
    );
    assert!(d["joelclaw.typesense.8108"].findings.is_empty());
}

#[test]
fn a_stray_listener_on_a_node_port_is_a_second_owner_naming_host_pid_and_process() {
    let mut reports = agent_maps_host_port(9627, 3000);
    let stray = |port: u16, pid: u32| crate::inventory::SecondOwnerReport {
        agent: "panda".into(),
        port,
        address: "127.0.0.1".into(),
        pid,
        process: "ssh".into(),
        command: "ssh -N -L 6379:10.5.0.2:6379 lima-colima".into(),
    };
    // On the redis NodePort, and on the PDS's Docker-mapped host port.
    reports.second_owners = vec![stray(6379, 4242), stray(9627, 4343)];
    let d = desired_inventory(
        &seed_node_ports(),
        &ProxyIndex::new(),
        &reports,
        &no_operator_ports().policy().unwrap(),
    );
    let redis = &d["joelclaw.redis.6379"].findings;
    let second: Vec<&String> = redis
        .iter()
        .filter(|f| f.kind == FindingKind::SecondOwner)
        .map(|f| &f.message)
        .collect();
    assert_eq!(second.len(), 1, "{redis:?}");
    assert!(
        second[0].contains("host panda")
            && second[0].contains("pid 4242")
            && second[0].contains("ssh -N -L 6379"),
        "{}",
        second[0]
    );
    assert!(kinds(&d, "joelclaw.bluesky-pds.3000").contains(&FindingKind::SecondOwner));
    assert!(!kinds(&d, "joelclaw.typesense.8108").contains(&FindingKind::SecondOwner));
}

#[test]
fn node_ports_can_be_switched_off() {
    let config = Config {
        node_ports: false,
        ..no_operator_ports()
    };
    assert!(run(&seed_node_ports(), &config).is_empty());
}

#[test]
fn tailscale_annotation_default_hostname_tags_and_predicted_fqdn() {
    let s = annotate(
        exposed(service(
            "joelclaw",
            "redis",
            "ClusterIP",
            &[(6379, 6379, None)],
        )),
        "tailscale.com/tags",
        "tag:k8s, tag:redis",
    );
    let config = Config {
        tailnet_domain: Some("tail1234.ts.net".into()),
        ..no_operator_ports()
    };
    let d = run(&[s], &config);
    let e = &d["joelclaw.redis.6379"].spec.exposures[0];
    assert_eq!(e.kind, ExposureKind::TailscaleService);
    assert_eq!(e.hostname.as_deref(), Some("joelclaw-redis"));
    assert_eq!(e.fqdn.as_deref(), Some("joelclaw-redis.tail1234.ts.net"));
    assert_eq!(e.fqdn_source, Some(FqdnSource::Predicted));
    assert_eq!(e.tags, ["tag:k8s", "tag:redis"]);
    assert_eq!(
        d["joelclaw.redis.6379"].spec.endpoint.as_deref(),
        Some("joelclaw-redis.tail1234.ts.net:6379")
    );
}

#[test]
fn proxy_secret_wins_over_prediction() {
    let secret = Secret {
        metadata: ObjectMeta {
            namespace: Some("tailscale".into()),
            name: Some("ts-redis-abcde-0".into()),
            labels: Some(BTreeMap::from([
                ("tailscale.com/parent-resource".into(), "redis".into()),
                ("tailscale.com/parent-resource-ns".into(), "joelclaw".into()),
                ("tailscale.com/parent-resource-type".into(), "svc".into()),
            ])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "device_fqdn".into(),
                ByteString(b"redis.tail1234.ts.net.".to_vec()),
            ),
            (
                "device_ips".into(),
                ByteString(br#"["100.64.0.7","fd7a:115c:a1e0::7"]"#.to_vec()),
            ),
        ])),
        ..Default::default()
    };
    let (key, state) = proxy_state(&secret).unwrap();
    assert_eq!(key, ("joelclaw".to_string(), "redis".to_string()));
    let proxies = ProxyIndex::from([(key, state)]);
    let s = exposed(service(
        "joelclaw",
        "redis",
        "ClusterIP",
        &[(6379, 6379, None)],
    ));
    let config = Config {
        tailnet_domain: Some("tail1234.ts.net".into()),
        ..no_operator_ports()
    };
    let d = desired_inventory(
        &[s],
        &proxies,
        &AgentReports::default(),
        &config.policy().unwrap(),
    );
    let e = &d["joelclaw.redis.6379"].spec.exposures[0];
    assert_eq!(e.fqdn.as_deref(), Some("redis.tail1234.ts.net"));
    assert_eq!(e.fqdn_source, Some(FqdnSource::ProxySecret));
    assert_eq!(e.tailnet_ips, ["100.64.0.7", "fd7a:115c:a1e0::7"]);
}

#[test]
fn tailscale_load_balancer_uses_ingress_status() {
    let mut s = service(
        "joelclaw",
        "qdrant",
        "LoadBalancer",
        &[(6333, 6333, Some(30633)), (6334, 6334, Some(30634))],
    );
    if let Some(spec) = s.spec.as_mut() {
        spec.load_balancer_class = Some("tailscale".into());
    }
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![
                LoadBalancerIngress {
                    hostname: Some("joelclaw-qdrant.tail1234.ts.net".into()),
                    ..Default::default()
                },
                LoadBalancerIngress {
                    ip: Some("100.64.0.9".into()),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    });
    let d = run(&[s], &no_operator_ports());
    assert_eq!(d.len(), 2, "two ports, two objects");
    let spec = &d["joelclaw.qdrant.6334"].spec;
    assert_eq!(
        spec.exposures.len(),
        1,
        "a LoadBalancer's node ports are not a NodePort exposure"
    );
    let e = &spec.exposures[0];
    assert_eq!(e.kind, ExposureKind::TailscaleLoadBalancer);
    assert_eq!(e.fqdn_source, Some(FqdnSource::LoadBalancerStatus));
    assert_eq!(e.tailnet_ips, ["100.64.0.9"]);
    assert_eq!(spec.owner, "tailscale");
}

/// A public report, names neutral: a LoadBalancer exposed by annotation but
/// served by a LAN load balancer (no `loadBalancerClass: tailscale`). Its
/// ingress is a LAN address, not tailnet evidence: the endpoint is the
/// predicted tailnet name. Before: `edge-gw:443`, `tailnetIps:
/// [192.168.10.228]`, `fqdnSource: LoadBalancerStatus`.
#[test]
fn a_lan_load_balancers_ingress_is_not_tailnet_evidence() {
    let mut s = annotate(
        exposed(service(
            "edge",
            "gateway",
            "LoadBalancer",
            &[(443, 8443, Some(30443))],
        )),
        "tailscale.com/hostname",
        "edge-gw",
    );
    s.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(vec![LoadBalancerIngress {
                ip: Some("192.168.10.228".into()),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    });
    let config = Config {
        tailnet_domain: Some("tailnet-0000.ts.net".into()),
        ..no_operator_ports()
    };
    let d = run(&[s], &config);
    let spec = &d["edge.gateway.443"].spec;
    let e = &spec.exposures[0];
    assert_eq!(e.kind, ExposureKind::TailscaleService);
    assert_eq!(e.fqdn.as_deref(), Some("edge-gw.tailnet-0000.ts.net"));
    assert_eq!(e.fqdn_source, Some(FqdnSource::Predicted));
    assert!(e.tailnet_ips.is_empty(), "{:?}", e.tailnet_ips);
    assert_eq!(
        spec.endpoint.as_deref(),
        Some("edge-gw.tailnet-0000.ts.net:443")
    );
}

#[test]
fn other_load_balancer_classes_and_plain_cluster_ips_are_not_inventoried() {
    let mut lb = service("a", "lb", "LoadBalancer", &[(80, 80, Some(30080))]);
    if let Some(spec) = lb.spec.as_mut() {
        spec.load_balancer_class = Some("metallb".into());
    }
    let plain = service("a", "plain", "ClusterIP", &[(80, 80, None)]);
    let off = annotate(
        service("a", "off", "ClusterIP", &[(80, 80, None)]),
        "tailscale.com/expose",
        "false",
    );
    assert!(run(&[lb, plain, off], &no_operator_ports()).is_empty());
}

#[test]
fn near_miss_annotation_is_a_warning_not_an_exposure() {
    for value in ["True", "yes", " true", "1"] {
        let s = annotate(
            service("a", "web", "ClusterIP", &[(80, 80, None)]),
            "tailscale.com/expose",
            value,
        );
        let d = run(&[s], &no_operator_ports());
        let port = &d["a.web.80"];
        assert!(port.spec.exposures.is_empty(), "{value:?}");
        assert_eq!(port.spec.owner, "none");
        assert_eq!(
            kinds(&d, "a.web.80"),
            [FindingKind::ExposeAnnotationIgnored],
            "{value:?}"
        );
        assert!(port.findings[0].message.contains("will not expose"));
    }
}

#[test]
fn two_services_one_hostname_conflict_on_both() {
    let a = annotate(
        exposed(service("a", "web", "ClusterIP", &[(80, 80, None)])),
        "tailscale.com/hostname",
        "shop",
    );
    let b = annotate(
        exposed(service("b", "api", "ClusterIP", &[(8080, 8080, None)])),
        "tailscale.com/hostname",
        "shop",
    );
    let d = run(&[a, b], &no_operator_ports());
    assert_eq!(kinds(&d, "a.web.80"), [FindingKind::HostnameConflict]);
    assert!(d["a.web.80"].findings[0].message.contains("b/api"));
    assert!(d["b.api.8080"].findings[0].message.contains("a/web"));
}

#[test]
fn one_service_with_two_ports_is_not_a_conflict() {
    let s = exposed(service(
        "joelclaw",
        "inngest",
        "ClusterIP",
        &[(8288, 8288, None), (8289, 8289, None)],
    ));
    let d = run(&[s], &no_operator_ports());
    assert!(d.values().all(|p| p.findings.is_empty()));
}

#[test]
fn invalid_hostnames_are_flagged() {
    for bad in ["-shop", "shop-", "my.shop", "sh_op", &"x".repeat(64)] {
        let s = annotate(
            exposed(service("a", "web", "ClusterIP", &[(80, 80, None)])),
            "tailscale.com/hostname",
            bad,
        );
        let d = run(&[s], &no_operator_ports());
        assert_eq!(
            kinds(&d, "a.web.80"),
            [FindingKind::InvalidHostname],
            "{bad:?}"
        );
    }
    let long_ok = "x".repeat(63);
    let s = annotate(
        exposed(service("a", "web", "ClusterIP", &[(80, 80, None)])),
        "tailscale.com/hostname",
        &long_ok,
    );
    assert!(
        run(&[s], &no_operator_ports())["a.web.80"]
            .findings
            .is_empty()
    );
}

#[test]
fn headless_and_no_cluster_ip_are_flagged() {
    let mut headless = exposed(service("a", "db", "ClusterIP", &[(5432, 5432, None)]));
    let mut external = exposed(service("a", "ext", "ExternalName", &[(443, 443, None)]));
    if let Some(spec) = headless.spec.as_mut() {
        spec.cluster_ip = Some("None".into());
    }
    if let Some(spec) = external.spec.as_mut() {
        spec.cluster_ip = None;
    }
    let d = run(&[headless, external], &no_operator_ports());
    assert_eq!(kinds(&d, "a.db.5432"), [FindingKind::HeadlessService]);
    assert_eq!(kinds(&d, "a.ext.443"), [FindingKind::NoClusterIP]);
}

#[test]
fn node_port_or_host_port_on_an_operator_port_is_a_clash() {
    let s = service("a", "sneaky", "NodePort", &[(443, 443, Some(16443))]);
    let d = run(&[s], &Config::default());
    assert_eq!(kinds(&d, "a.sneaky.443"), [FindingKind::OperatorPortClash]);
    assert!(
        d["a.sneaky.443"].findings[0]
            .message
            .contains("kube-apiserver")
    );
    assert!(d["kube-apiserver"].findings.is_empty());

    let reports = agent_maps_host_port(15000, 3000);
    let d = desired_inventory(
        &seed_node_ports(),
        &ProxyIndex::new(),
        &reports,
        &Config::default().policy().unwrap(),
    );
    assert_eq!(
        kinds(&d, "joelclaw.bluesky-pds.3000"),
        [FindingKind::OperatorPortClash]
    );
    assert!(
        d["joelclaw.bluesky-pds.3000"].findings[0]
            .message
            .contains("talos-api")
    );
}

#[test]
fn udp_and_sctp_ports_get_a_suffix() {
    let mut s = service(
        "a",
        "dns",
        "NodePort",
        &[(53, 53, Some(30053)), (53, 53, Some(30054))],
    );
    if let Some(ports) = s.spec.as_mut().and_then(|sp| sp.ports.as_mut()) {
        ports[0].protocol = Some("UDP".into());
        ports[1].protocol = Some("SCTP".into());
    }
    let d = run(&[s], &no_operator_ports());
    assert!(d.contains_key("a.dns.53-udp") && d.contains_key("a.dns.53-sctp"));
}

#[test]
fn agent_tunnel_reports_land_on_the_operator_port() {
    let reports = AgentReports {
        host_ports: Vec::new(),
        tunnels: vec![TunnelReport {
            agent: "panda".into(),
            forward: "kube-apiserver".into(),
            state: "Up".into(),
            active_connections: 3,
            last_error: None,
            version: "0.1.0".into(),
            last_seen: Some(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap()),
        }],
        second_owners: Vec::new(),
    };
    let mut d = desired_inventory(
        &[],
        &ProxyIndex::new(),
        &reports,
        &Config::default().policy().unwrap(),
    );
    assert_eq!(d["kube-apiserver"].agents.len(), 1);
    assert_eq!(d["kube-apiserver"].agents[0].tunnel, "Up");
    assert_eq!(
        d["kube-apiserver"].agents[0].version.as_deref(),
        Some("0.1.0")
    );
    assert!(d["talos-api"].agents.is_empty());

    // Health: Up 10 s ago is Ready; nobody at all is Unknown; runtime
    // ports have no tunnel health.
    let now = k8s_openapi::jiff::Timestamp::from_second(1010).unwrap();
    super::assess_health(&mut d, now, std::time::Duration::from_secs(30));
    let health = |name: &str| d[name].health.as_ref().map(|h| h.status);
    assert_eq!(health("kube-apiserver"), Some("True"));
    assert_eq!(health("talos-api"), Some("Unknown"));
    let wanted = crate::conditions::wanted_with_health(
        &d["talos-api"].findings,
        d["talos-api"].health.as_ref(),
    );
    assert_eq!(
        (wanted[0].status, wanted[0].reason.as_str()),
        ("Unknown", "NoAgentReport")
    );
}
