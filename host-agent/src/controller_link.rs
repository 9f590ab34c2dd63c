//! The agent's link to portplane-controller: it caches every inventory the
//! controller streams (so the ownership rule works when the controller is
//! away) and reports the agent's tunnels. Optional and never in the tunnel's
//! way: failures are logged and retried with backoff.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use pb::port_inventory_client::PortInventoryClient;
use portplane_proto::v1alpha1 as pb;

use crate::config::{AgentConfig, ControllerSection, Forward};
use crate::ownership::{CachedInventory, RuntimePort};
use crate::tunnel::backoff::{Backoff, jitter_seed};
use crate::tunnel::listener::Counters;
use crate::tunnel::pool::Pool;

const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What the agent reports about its forwards.
pub struct TunnelStatus {
    pub pool: Arc<Pool>,
    /// Forwards being served, each with its connection counts.
    pub served: Vec<(Forward, Arc<Counters>)>,
    /// Forwards refused by the ownership rule, with the reason.
    pub refused: Vec<(Forward, String)>,
    /// The controller link as last seen, for `status`.
    pub link: LinkState,
}

/// The controller link as last seen: written by [`keep_in_touch`], read by
/// `status`.
#[derive(Debug, Default)]
pub struct LinkState {
    connected: AtomicBool,
    inner: Mutex<LinkInner>,
}

#[derive(Debug, Default, Clone)]
pub struct LinkInner {
    pub last_report: Option<SystemTime>,
    pub inventory_revision: Option<u64>,
    pub last_error: Option<String>,
}

impl LinkState {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> LinkInner {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut LinkInner)) {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl TunnelStatus {
    fn report(&self, agent: &str) -> pb::AgentReport {
        let up = self.pool.live_sessions() > 0;
        let tunnel =
            |f: &Forward, state: pb::TunnelState, active: u32, error: String| pb::TunnelReport {
                forward: f.name.clone(),
                listen: f.listen.to_string(),
                target: f.target.to_string(),
                state: state as i32,
                active_connections: active,
                last_error: error,
            };
        let mut tunnels: Vec<pb::TunnelReport> = self
            .served
            .iter()
            .map(|(f, counters)| {
                let state = if up {
                    pb::TunnelState::Up
                } else {
                    pb::TunnelState::Down
                };
                tunnel(
                    f,
                    state,
                    counters.active.load(Ordering::Relaxed),
                    String::new(),
                )
            })
            .collect();
        tunnels.extend(
            self.refused
                .iter()
                .map(|(f, why)| tunnel(f, pb::TunnelState::Refused, 0, why.clone())),
        );
        pb::AgentReport {
            agent: agent.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            tunnels,
            host_ports: Vec::new(),
        }
    }
}

/// Runs until dropped.
pub async fn keep_in_touch(config: AgentConfig, status: Arc<TunnelStatus>) {
    let Some(controller) = config.controller.clone() else {
        return;
    };
    let mut backoff = Backoff::new(
        Duration::from_millis(500),
        Duration::from_secs(30),
        jitter_seed(7),
    );
    loop {
        let outcome = session(&config.name, &controller, &status, &mut backoff).await;
        status.link.connected.store(false, Ordering::Relaxed);
        match outcome {
            Ok(()) => {
                status
                    .link
                    .update(|l| l.last_error = Some("the inventory stream ended".into()));
                tracing::info!(endpoint = controller.endpoint, "controller stream ended")
            }
            Err(error) => {
                status
                    .link
                    .update(|l| l.last_error = Some(error.message().to_string()));
                tracing::warn!(endpoint = controller.endpoint, %error, "controller unreachable")
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn session(
    agent: &str,
    controller: &ControllerSection,
    status: &TunnelStatus,
    backoff: &mut Backoff,
) -> Result<(), tonic::Status> {
    let mut client = PortInventoryClient::connect(controller.endpoint.clone())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut stream = client
        .watch_inventory(pb::WatchInventoryRequest {
            agent: agent.into(),
        })
        .await?
        .into_inner();
    backoff.reset();
    status.link.connected.store(true, Ordering::Relaxed);
    status.link.update(|l| l.last_error = None);
    let mut reporter = client.clone();
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(inventory) = message? else { return Ok(()) };
                status.link.update(|l| l.inventory_revision = Some(inventory.revision));
                match write_cache(&controller.inventory_cache, &cached(&inventory)) {
                    Ok(()) => tracing::debug!(revision = inventory.revision, "inventory cached"),
                    Err(error) => tracing::warn!(
                        path = %controller.inventory_cache.display(), %error,
                        "cannot cache the inventory"
                    ),
                }
            }
            _ = tick.tick() => {
                reporter.report(status.report(agent)).await?;
                status.link.update(|l| l.last_report = Some(SystemTime::now()));
            }
        }
    }
}

fn cached(inventory: &pb::Inventory) -> CachedInventory {
    CachedInventory {
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
                    node_port: u16::try_from(p.node_port).unwrap_or(0),
                    hostnames: p.hostnames.clone(),
                })
            })
            .collect(),
    }
}

/// Temp file in the same directory, then rename: readers never see half.
fn write_cache(path: &Path, inventory: &CachedInventory) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_vec_pretty(inventory).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
