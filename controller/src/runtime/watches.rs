//! Watches -> reflector stores. Each watch retries with backoff forever (API
//! server restarts, expired resourceVersions), and every change wakes the
//! reconcile loop.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
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
        trigger.clone(),
        metrics.clone(),
    );
    let (secrets, t2) = watch(
        Api::<Secret>::namespaced(client.clone(), &config.operator_namespace),
        watcher::Config::default().labels("tailscale.com/parent-resource-type=svc"),
        "secrets",
        trigger.clone(),
        metrics.clone(),
    );
    let (operator_ports, t3) = watch(
        Api::<OperatorPort>::all(client.clone()),
        watcher::Config::default().labels(&owned_selector(&config.instance)),
        "operatorports",
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
        // managedFields and kubectl's last-applied copy are never read;
        // dropping them keeps the indexes small.
        .modify(|o: &mut K| {
            let meta = o.meta_mut();
            meta.managed_fields = None;
            if let Some(a) = meta.annotations.as_mut() {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
        })
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
