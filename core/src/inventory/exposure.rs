//! One Service -> its ports, with every exposure path and the problems
//! visible from the Service alone.

use super::findings::{Finding, FindingKind};
use super::{DesiredPort, HostPortReport, Policy, ProxyIndex, ServiceFacts};
use crate::model::{Exposure, ExposureKind, FqdnSource, Plane, PortSpec, ServiceRef};
use crate::names::{is_dns_label, object_name};

pub const EXPOSE_ANNOTATION: &str = "tailscale.com/expose";
pub const HOSTNAME_ANNOTATION: &str = "tailscale.com/hostname";
pub const TAGS_ANNOTATION: &str = "tailscale.com/tags";

/// Values people write meaning "true" that the Tailscale operator ignores
/// (it compares with the exact string "true").
fn is_near_miss(value: &str) -> bool {
    value != "true"
        && matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "true" | "yes" | "y" | "1" | "on" | "enabled" | "enable"
        )
}

pub fn service_ports(
    service: &ServiceFacts<'_>,
    proxies: &ProxyIndex,
    host_ports: &[HostPortReport],
    policy: &Policy,
) -> Vec<(String, DesiredPort)> {
    let (namespace, name) = (service.namespace, service.name);
    let by_annotation = service.expose == Some("true");
    let near_miss = service.expose.filter(|v| is_near_miss(v));
    let type_ = if service.type_.is_empty() {
        "ClusterIP"
    } else {
        service.type_
    };
    let by_load_balancer =
        type_ == "LoadBalancer" && service.load_balancer_class == Some("tailscale");
    let by_node_port = policy.node_ports && type_ == "NodePort";
    if !(by_annotation || by_load_balancer || by_node_port || near_miss.is_some()) {
        return Vec::new();
    }

    let hostname = service
        .hostname
        .map(str::to_string)
        .unwrap_or_else(|| format!("{namespace}-{name}"));
    let tags: Vec<String> = service
        .tags
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let (fqdn, fqdn_source, tailnet_ips) =
        reachable_name(service, &hostname, by_load_balancer, proxies, policy);

    let mut service_findings = Vec::new();
    if let Some(value) = near_miss {
        service_findings.push(Finding::new(
            FindingKind::ExposeAnnotationIgnored,
            format!(
                "{EXPOSE_ANNOTATION} is {value:?}; Tailscale only exposes a Service when it is exactly \"true\", so it will not expose {namespace}/{name}"
            ),
        ));
    }
    let tailscale = by_annotation || by_load_balancer;
    if tailscale && !is_dns_label(&hostname) {
        service_findings.push(Finding::new(
            FindingKind::InvalidHostname,
            format!(
                "tailnet hostname {hostname:?} is not one DNS label (1-63 letters, digits or '-', not starting or ending with '-'); Tailscale will not use it"
            ),
        ));
    }
    if by_annotation && service.cluster_ip == "None" {
        service_findings.push(Finding::new(
            FindingKind::HeadlessService,
            format!("{namespace}/{name} is headless (clusterIP: None); Tailscale cannot expose a headless Service"),
        ));
    } else if by_annotation && service.cluster_ip.is_empty() {
        service_findings.push(Finding::new(
            FindingKind::NoClusterIP,
            format!("{namespace}/{name} is exposed by annotation but has no ClusterIP for the Tailscale proxy to forward to"),
        ));
    }

    let mut out = Vec::new();
    for port in &service.ports {
        let protocol = port.protocol;
        let node_port = port.node_port.filter(|p| *p > 0);
        let mut exposures = Vec::new();
        let tailscale_exposure = |kind| Exposure {
            kind,
            hostname: Some(hostname.clone()),
            fqdn: fqdn.clone(),
            fqdn_source,
            tailnet_ips: tailnet_ips.clone(),
            tags: tags.clone(),
            host_port: None,
        };
        if by_annotation {
            exposures.push(tailscale_exposure(ExposureKind::TailscaleService));
        }
        if by_load_balancer {
            exposures.push(tailscale_exposure(ExposureKind::TailscaleLoadBalancer));
        }
        let mut host_port = None;
        if by_node_port && let Some(node_port) = node_port {
            host_port = host_ports
                .iter()
                .filter(|h| i32::from(h.container_port) == node_port && h.protocol == protocol)
                .map(|h| i32::from(h.host_port))
                .min();
            exposures.push(Exposure::node_port(host_port));
        }
        let endpoint = endpoint(&exposures, port.port, node_port, host_port);
        let owner = owner(&exposures);
        let spec = PortSpec {
            plane: Plane::Runtime,
            port: port.port,
            protocol,
            endpoint,
            owner,
            service: Some(ServiceRef {
                namespace: namespace.into(),
                name: name.into(),
            }),
            target_port: port.target_port.clone(),
            node_port,
            exposures,
            local: None,
            target: None,
        };
        out.push((
            object_name(namespace, name, port.port, protocol),
            DesiredPort {
                spec,
                findings: service_findings.clone(),
            },
        ));
    }
    out
}

/// FQDN and tailnet IPs: proxy state Secret, else the LoadBalancer status of
/// a `loadBalancerClass: tailscale` Service, else predicted from the
/// configured tailnet domain. Another load balancer's ingress (MetalLB,
/// Cilium: a LAN address) says nothing about the tailnet: only the
/// Tailscale operator fills in the status of its own class.
fn reachable_name(
    service: &ServiceFacts<'_>,
    hostname: &str,
    tailscale_load_balancer: bool,
    proxies: &ProxyIndex,
    policy: &Policy,
) -> (Option<String>, Option<FqdnSource>, Vec<String>) {
    if let Some(state) = proxies.get(&(service.namespace.to_string(), service.name.to_string()))
        && let Some(fqdn) = &state.fqdn
    {
        return (
            Some(fqdn.clone()),
            Some(FqdnSource::ProxySecret),
            state.ips.clone(),
        );
    }
    if tailscale_load_balancer && !service.ingress.is_empty() {
        let fqdn = service.ingress.iter().find_map(|i| i.hostname);
        let ips: Vec<String> = service
            .ingress
            .iter()
            .filter_map(|i| i.ip.map(String::from))
            .collect();
        if fqdn.is_some() || !ips.is_empty() {
            let fqdn = fqdn.map(|f| f.trim_end_matches('.').to_string());
            return (fqdn, Some(FqdnSource::LoadBalancerStatus), ips);
        }
    }
    if let Some(domain) = &policy.tailnet_domain {
        return (
            Some(format!("{hostname}.{domain}")),
            Some(FqdnSource::Predicted),
            Vec::new(),
        );
    }
    (None, None, Vec::new())
}

fn endpoint(
    exposures: &[Exposure],
    port: i32,
    node_port: Option<i32>,
    host_port: Option<i32>,
) -> Option<String> {
    let tailscale = exposures.iter().find(|e| e.kind != ExposureKind::NodePort);
    if let Some(e) = tailscale {
        let host = e.fqdn.as_ref().or(e.hostname.as_ref())?;
        return Some(format!("{host}:{port}"));
    }
    if let Some(host_port) = host_port {
        return Some(format!("127.0.0.1:{host_port}"));
    }
    if exposures.iter().any(|e| e.kind == ExposureKind::NodePort) {
        return node_port.map(|p| format!("node:{p}"));
    }
    None
}

fn owner(exposures: &[Exposure]) -> String {
    let tailscale = exposures.iter().any(|e| e.kind != ExposureKind::NodePort);
    let colima = exposures.iter().any(|e| e.kind == ExposureKind::NodePort);
    match (tailscale, colima) {
        (true, true) => "tailscale+colima",
        (true, false) => "tailscale",
        (false, true) => "colima",
        (false, false) => "none",
    }
    .into()
}
