//! Watches -> reflector stores. Each watch retries with backoff forever (API
//! server restarts, expired resourceVersions), and every change wakes the
//! reconcile loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceSpec};
use kube::api::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::crd::OperatorPort;
use crate::metrics::Metrics;
use crate::reconcile::owned_selector;

/// The in-memory indexes.
pub struct Stores {
    pub services: Store<Service>,
    /// The Tailscale operator's proxy state Secrets (operator namespace only).
    pub secrets: Store<Secret>,
    /// The OperatorPorts this instance owns.
    pub operator_ports: Store<OperatorPort>,
}

impl Stores {
    /// Resolves once every watch has listed once.
    pub async fn wait_until_ready(&self) {
        let _ = tokio::join!(
            self.services.wait_until_ready(),
            self.secrets.wait_until_ready(),
            self.operator_ports.wait_until_ready(),
        );
    }
}

pub fn start(
    client: &Client,
    config: &Config,
    trigger: Arc<Notify>,
    metrics: Arc<Metrics>,
) -> (Stores, Vec<JoinHandle<()>>) {
    let mut services_cfg = watcher::Config::default();
    if !config.service_selector.is_empty() {
        services_cfg = services_cfg.labels(&config.service_selector);
    }
    let (services, t1) = watch(
        Api::<Service>::all(client.clone()),
        services_cfg,
        "services",
        trim_service,
        trigger.clone(),
        metrics.clone(),
    );
    let (secrets, t2) = watch(
        Api::<Secret>::namespaced(client.clone(), &config.operator_namespace),
        watcher::Config::default().labels("tailscale.com/parent-resource-type=svc"),
        "secrets",
        trim_secret,
        trigger.clone(),
        metrics.clone(),
    );
    let (operator_ports, t3) = watch(
        Api::<OperatorPort>::all(client.clone()),
        watcher::Config::default().labels(&owned_selector(&config.instance)),
        "operatorports",
        super::overlay::trim,
        trigger,
        metrics,
    );
    (
        Stores {
            services,
            secrets,
            operator_ports,
        },
        vec![t1, t2, t3],
    )
}

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    trim: fn(&mut K),
    trigger: Arc<Notify>,
    metrics: Arc<Metrics>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(trim)
        .reflect(writer);
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => trigger.notify_one(),
                Err(e) => {
                    metrics.watch_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(watch = what, error = %e, "watch error; retrying with backoff");
                }
            }
        }
    });
    (reader, task)
}

/// Keep only what the inventory reads (see `inventory::exposure`): at 10,000
/// Services the rest (managedFields, kubectl's last-applied copy, selectors,
/// IP family settings) is most of the index.
fn trim_service(service: &mut Service) {
    let meta = std::mem::take(&mut service.metadata);
    service.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        annotations: meta.annotations.map(|mut a| {
            a.retain(|k, _| k.starts_with("tailscale.com/"));
            a
        }),
        ..Default::default()
    };
    if let Some(spec) = service.spec.take() {
        service.spec = Some(ServiceSpec {
            type_: spec.type_,
            load_balancer_class: spec.load_balancer_class,
            cluster_ip: spec.cluster_ip,
            ports: spec.ports,
            ..Default::default()
        });
    }
}

/// A proxy state Secret holds the whole tailscaled state; only the parent
/// labels and the device name and addresses are read.
fn trim_secret(secret: &mut Secret) {
    const KEPT: [&str; 2] = ["device_fqdn", "device_ips"];
    let meta = std::mem::take(&mut secret.metadata);
    secret.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        resource_version: meta.resource_version,
        labels: meta.labels,
        ..Default::default()
    };
    if let Some(data) = secret.data.as_mut() {
        data.retain(|k, _| KEPT.contains(&k.as_str()));
    }
    if let Some(data) = secret.string_data.as_mut() {
        data.retain(|k, _| KEPT.contains(&k.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{self, AgentReports, ProxyIndex};
    use serde_json::json;

    /// Services as the API server returns them, every field the inventory
    /// could read filled in, plus the noise the trim drops.
    fn services() -> Vec<Service> {
        let noise = json!({
            "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
            "labels": {"app": "web"},
            "creationTimestamp": "2026-11-24T00:00:00Z",
        });
        let mut out = Vec::new();
        for (name, annotations, spec, status) in [
            (
                "web",
                json!({"tailscale.com/expose": "true", "tailscale.com/hostname": "web", "tailscale.com/tags": "tag:k8s", "kubectl.kubernetes.io/last-applied-configuration": "{}"}),
                json!({"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
                json!({}),
            ),
            (
                "lb",
                json!({}),
                json!({"type": "LoadBalancer", "loadBalancerClass": "tailscale", "clusterIP": "10.96.0.11", "ports": [{"port": 443, "nodePort": 30443}]}),
                json!({"loadBalancer": {"ingress": [{"hostname": "lb.tail1234.ts.net", "ip": "100.64.0.9"}]}}),
            ),
            (
                "pds",
                json!({}),
                json!({"type": "NodePort", "clusterIP": "10.96.0.12", "ports": [{"port": 9627, "targetPort": 3000, "nodePort": 3000}], "externalTrafficPolicy": "Cluster"}),
                json!({}),
            ),
            (
                "headless",
                json!({"tailscale.com/expose": "true"}),
                json!({"clusterIP": "None", "ports": [{"port": 5432}]}),
                json!({}),
            ),
            (
                "near-miss",
                json!({"tailscale.com/expose": "True"}),
                json!({"clusterIP": "10.96.0.13", "ports": [{"port": 6379}]}),
                json!({}),
            ),
        ] {
            let mut metadata = noise.clone();
            metadata["name"] = json!(name);
            metadata["namespace"] = json!("apps");
            metadata["uid"] = json!(format!("uid-{name}"));
            metadata["annotations"] = annotations;
            out.push(
                serde_json::from_value(
                    json!({"metadata": metadata, "spec": spec, "status": status}),
                )
                .unwrap(),
            );
        }
        out
    }

    fn proxy_secret() -> Secret {
        serde_json::from_value(json!({
            "metadata": {
                "name": "ts-web-abc", "namespace": "tailscale",
                "labels": {"tailscale.com/parent-resource-type": "svc", "tailscale.com/parent-resource": "web", "tailscale.com/parent-resource-ns": "apps"},
                "managedFields": [{"manager": "operator"}],
            },
            // base64 of "web.tail1234.ts.net.", ["100.64.0.7"] and a big state blob
            "data": {"device_fqdn": "d2ViLnRhaWwxMjM0LnRzLm5ldC4=", "device_ips": "WyIxMDAuNjQuMC43Il0=", "_machinekey": "c3RhdGU="},
        }))
        .unwrap()
    }

    fn inventory_of(services: &[Service], secrets: &[Secret]) -> inventory::Desired {
        let proxies: ProxyIndex = secrets.iter().filter_map(inventory::proxy_state).collect();
        inventory::desired_inventory(
            services,
            &proxies,
            &AgentReports::default(),
            &Config::default().policy().unwrap(),
        )
    }

    #[test]
    fn trimming_keeps_everything_the_inventory_reads() {
        let full = services();
        let secrets = vec![proxy_secret()];
        let mut trimmed = full.clone();
        trimmed.iter_mut().for_each(trim_service);
        let mut trimmed_secrets = secrets.clone();
        trimmed_secrets.iter_mut().for_each(trim_secret);

        let before = inventory_of(&full, &secrets);
        let after = inventory_of(&trimmed, &trimmed_secrets);
        assert!(before.len() > 5, "fixture exercises every path: {before:?}");
        assert_eq!(before, after);
        // The proxy Secret's FQDN made it through.
        assert!(format!("{after:?}").contains("web.tail1234.ts.net"));
    }

    #[test]
    fn trimming_drops_what_is_never_read() {
        let mut service = services().remove(0);
        trim_service(&mut service);
        assert!(service.metadata.managed_fields.is_none());
        assert!(service.metadata.labels.is_none());
        let annotations = service.metadata.annotations.unwrap();
        assert!(annotations.keys().all(|k| k.starts_with("tailscale.com/")));
        assert!(service.spec.unwrap().selector.is_none());

        let mut secret = proxy_secret();
        trim_secret(&mut secret);
        let keys: Vec<_> = secret.data.unwrap().into_keys().collect();
        assert_eq!(keys, ["device_fqdn", "device_ips"]);
    }
}
