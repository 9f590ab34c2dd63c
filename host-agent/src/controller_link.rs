//! The agent's link to portplane-controller: it caches every inventory the
//! controller streams (so the ownership rule works when the controller is
//! away) and reports the agent's tunnels. Optional and never in the tunnel's
//! way: failures are logged and retried with backoff.
//!
//! Every call carries the agent's ServiceAccount token
//! (`authorization: Bearer ...`), re-read from `[controller] token_file` on
//! every reconnect so a rotated token needs no restart.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use pb::port_inventory_client::PortInventoryClient;
use portplane_proto::v1alpha1 as pb;

use crate::config::{AgentConfig, ControllerSection, Forward};
use crate::ownership::{CachedInventory, RuntimePort};
use crate::token;
use crate::tunnel::backoff::{Backoff, jitter_seed};
use crate::tunnel::pool::Pool;
use tonic::metadata::{Ascii, MetadataValue};

const REPORT_EVERY: Duration = Duration::from_secs(10);

/// What the agent reports about its forwards.
pub struct TunnelStatus {
    pub pool: Arc<Pool>,
    /// Forwards being served, each with its live connection count.
    pub served: Vec<(Forward, Arc<AtomicU32>)>,
    /// Forwards refused by the ownership rule, with the reason.
    pub refused: Vec<(Forward, String)>,
    /// The VM's Docker port maps, as last read (`docker_ports`).
    pub host_ports: crate::docker_ports::HostPorts,
    /// Second owners of runtime ports, as last scanned (`second_owners`).
    pub second_owners: crate::second_owners::SecondOwners,
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
            .map(|(f, active)| {
                let state = if up {
                    pb::TunnelState::Up
                } else {
                    pb::TunnelState::Down
                };
                tunnel(f, state, active.load(Ordering::Relaxed), String::new())
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
            host_ports: self
                .host_ports
                .lock()
                .map(|h| h.clone())
                .unwrap_or_default(),
            second_owners: self
                .second_owners
                .lock()
                .map(|o| o.clone())
                .unwrap_or_default(),
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
        match session(&config.name, &controller, &status, &mut backoff).await {
            Ok(()) => tracing::info!(endpoint = controller.endpoint, "controller stream ended"),
            Err(error) => {
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
    let bearer = bearer(controller)?;
    let channel = crate::link_tls::endpoint(controller)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = PortInventoryClient::with_interceptor(channel, authorize(bearer));
    let mut stream = client
        .watch_inventory(pb::WatchInventoryRequest {
            agent: agent.into(),
        })
        .await?
        .into_inner();
    backoff.reset();
    let mut reporter = client.clone();
    let mut tick = tokio::time::interval(REPORT_EVERY);
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(inventory) = message? else { return Ok(()) };
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
            }
        }
    }
}

/// The `authorization` value for this connection, from the token file as it
/// is now; warns (logs) when the token expires within 14 days.
fn bearer(controller: &ControllerSection) -> Result<MetadataValue<Ascii>, tonic::Status> {
    let Some(path) = controller.token_file.as_ref() else {
        return Err(tonic::Status::unauthenticated(
            "no [controller] token_file; run `portplane-agent enroll --config FILE`",
        ));
    };
    let value = token::read(path).map_err(|e| tonic::Status::unauthenticated(e.to_string()))?;
    if let Some(warning) = token::expiry_warning(&value, std::time::SystemTime::now()) {
        tracing::warn!(token_file = %path.display(), "{warning}");
    }
    let mut header: MetadataValue<Ascii> = format!("Bearer {value}").parse().map_err(|_| {
        tonic::Status::unauthenticated(format!("{}: not usable as a bearer token", path.display()))
    })?;
    // Kept out of Debug output, so it cannot reach a log by accident.
    header.set_sensitive(true);
    Ok(header)
}

/// Adds the bearer token to every call.
fn authorize(
    header: MetadataValue<Ascii>,
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |mut request| {
        request
            .metadata_mut()
            .insert("authorization", header.clone());
        Ok(request)
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
