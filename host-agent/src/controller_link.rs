//! The agent's link to portplane-controller: it caches every inventory the
//! controller streams (so the ownership rule works when the controller is
//! away) and reports the agent's tunnels. Optional and never in the tunnel's
//! way: failures are logged and retried with backoff.
//!
//! Every call carries the agent's ServiceAccount token
//! (`authorization: Bearer ...`), re-read from `[controller] token_file` on
//! every reconnect so a rotated token needs no restart.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use pb::port_inventory_client::PortInventoryClient;
use portplane_proto::v1alpha1 as pb;

use crate::backoff::{Backoff, jitter_seed};
use crate::config::{AgentConfig, ControllerSection, Forward};
use crate::ownership::CachedInventory;
use crate::token;
use crate::tunnel::listener::Counters;
use crate::tunnel::pool::Pool;
use tonic::metadata::{Ascii, MetadataValue};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a unary call (or the start of the inventory stream) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 PINGs on the link, idle or not: a controller that vanished
/// without a FIN (its node or the network went away) is noticed within
/// interval + timeout, 10 s, however far apart the reports are.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// `call`, or DeadlineExceeded after [`REQUEST_TIMEOUT`] (not set on the
/// channel: it would also cut the long-lived inventory stream).
async fn within<T>(
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {REQUEST_TIMEOUT:?}"
            )))
        })
}

/// An error and its causes, "a: b: c" (a tonic transport error alone says
/// only "transport error"; the cause says "Connection refused" or which
/// certificate failed).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text = format!("{text}: {line}");
        }
        source = cause.source();
    }
    text
}

/// What the agent reports about its forwards.
pub struct TunnelStatus {
    pub pool: Arc<Pool>,
    /// Forwards being served, each with its connection counts.
    pub served: Vec<(Forward, Arc<Counters>)>,
    /// Forwards refused by the ownership rule, with the reason.
    pub refused: Vec<(Forward, String)>,
    /// The controller link as last seen, for `status`.
    pub link: LinkState,
    /// The VM's Docker port maps, as last read (`docker_ports`).
    pub host_ports: crate::docker_ports::HostPorts,
    /// Second owners of runtime ports, as last scanned (`second_owners`).
    pub second_owners: crate::second_owners::SecondOwners,
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
    let bearer = bearer(controller)?;
    let channel = crate::link_tls::endpoint(controller)
        .map_err(|e| tonic::Status::invalid_argument(with_causes(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        // A controller that vanished without a FIN (its node or the network
        // went away) is noticed within interval + timeout, not never.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(with_causes(&e)))?;
    let mut client = PortInventoryClient::with_interceptor(channel, Authorize(bearer));
    let mut stream = within(client.watch_inventory(pb::WatchInventoryRequest {
        agent: agent.into(),
    }))
    .await?
    .into_inner();
    backoff.reset();
    status.link.connected.store(true, Ordering::Relaxed);
    status.link.update(|l| l.last_error = None);
    let mut reporter = client.clone();
    let mut tick = tokio::time::interval(controller.report_interval);
    // A tunnel going Up or Down is reported at once, not at the next tick:
    // the OperatorPort's Ready follows it within a round trip.
    let mut changes = status.pool.subscribe();
    let mut reported_up = None;
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(inventory) = message? else { return Ok(()) };
                status.link.update(|l| l.inventory_revision = Some(inventory.revision));
                // File I/O and fsync: off the async workers.
                let (path, cache) = (controller.inventory_cache.clone(), portplane_proto::convert::runtime_inventory(&inventory));
                match tokio::task::spawn_blocking(move || write_cache(&path, &cache)).await {
                    Ok(Ok(())) => tracing::debug!(revision = inventory.revision, "inventory cached"),
                    Ok(Err(error)) => tracing::warn!(%error, "cannot cache the inventory"),
                    Err(error) => tracing::warn!(%error, "cannot cache the inventory"),
                }
            }
            _ = tick.tick() => {
                reported_up = Some(send_report(&mut reporter, status, agent).await?);
            }
            () = changes.changed() => {
                if reported_up != Some(status.pool.live_sessions() > 0) {
                    reported_up = Some(send_report(&mut reporter, status, agent).await?);
                }
            }
        }
    }
}

/// One report of the state as it is now; returns whether it said Up.
async fn send_report(
    reporter: &mut Client,
    status: &TunnelStatus,
    agent: &str,
) -> Result<bool, tonic::Status> {
    let up = status.pool.live_sessions() > 0;
    within(reporter.report(status.report(agent))).await?;
    status
        .link
        .update(|l| l.last_report = Some(SystemTime::now()));
    Ok(up)
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
#[derive(Clone)]
struct Authorize(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Authorize {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

type Client = PortInventoryClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Authorize>,
>;

/// With the rewrites' atomic writer: readers never see half a file, and the
/// cache the ownership rule is enforced from is private (0600, 0700 folder).
fn write_cache(
    path: &Path,
    inventory: &CachedInventory,
) -> Result<(), crate::rewrite::error::RewriteError> {
    let text = serde_json::to_vec_pretty(inventory)
        .map_err(|e| crate::rewrite::error::RewriteError::io(path, "encode", e.into()))?;
    crate::rewrite::atomic::write_private(path, &text)
}

#[cfg(test)]
mod tests {
    /// tonic's own text for a refused connection is only "transport error".
    #[tokio::test]
    async fn a_transport_error_is_logged_with_its_cause() {
        // Bound, then closed: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let error = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "transport error");
        let text = super::with_causes(&error);
        assert!(text.to_lowercase().contains("refused"), "{text}");
    }
}
