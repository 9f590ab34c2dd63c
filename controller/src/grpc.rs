//! The `PortInventory` gRPC service for host agents: `WatchInventory` streams
//! the live inventory (fed by a `tokio::sync::watch` from the reconcile
//! loop), `Report` records an agent's tunnels and host ports, which flow into
//! OperatorPort status and the operator-port clash check.
//!
//! Every call must carry an agent's ServiceAccount token ([`crate::auth`]);
//! a report is accepted only under the name that token maps to, so only
//! authenticated agents ever enter the registry.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use pb::port_inventory_server::{PortInventory, PortInventoryServer};
use portplane_proto::v1alpha1 as pb;
use tokio::sync::{Notify, RwLock, watch};
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use crate::Error;
use crate::auth::{AuthError, Authenticator, bearer};
use crate::crd::Plane;
use crate::inventory::{AgentReports, Desired, HostPortReport, TunnelReport};
use crate::metrics::Metrics;

/// Reports older than this are forgotten (the agent is gone).
const REPORT_TTL: Duration = Duration::from_secs(600);

/// The latest report of every agent.
#[derive(Default)]
pub struct AgentRegistry {
    latest: BTreeMap<String, (pb::AgentReport, Instant)>,
}

impl AgentRegistry {
    pub fn record(&mut self, report: pb::AgentReport) {
        self.latest.retain(|_, (_, at)| at.elapsed() < REPORT_TTL);
        self.latest
            .insert(report.agent.clone(), (report, Instant::now()));
    }

    /// Flattened for the pure inventory.
    pub fn reports(&self) -> AgentReports {
        let mut out = AgentReports::default();
        for (agent, (report, at)) in &self.latest {
            if at.elapsed() >= REPORT_TTL {
                continue;
            }
            for h in &report.host_ports {
                let (Ok(host_port), Ok(container_port)) =
                    (u16::try_from(h.host_port), u16::try_from(h.container_port))
                else {
                    continue;
                };
                out.host_ports.push(HostPortReport {
                    agent: agent.clone(),
                    host_port,
                    container_port,
                    protocol: if h.protocol.is_empty() {
                        "TCP".into()
                    } else {
                        h.protocol.to_ascii_uppercase()
                    },
                });
            }
            for t in &report.tunnels {
                let state = match pb::TunnelState::try_from(t.state) {
                    Ok(pb::TunnelState::Up) => "Up",
                    Ok(pb::TunnelState::Down) => "Down",
                    Ok(pb::TunnelState::Refused) => "Refused",
                    _ => "Unknown",
                };
                out.tunnels.push(TunnelReport {
                    agent: agent.clone(),
                    forward: t.forward.clone(),
                    state: state.into(),
                    active_connections: i64::from(t.active_connections),
                    last_error: Some(t.last_error.clone()).filter(|e| !e.is_empty()),
                });
            }
        }
        out
    }
}

/// The wire form of the desired inventory.
pub fn to_proto(desired: &Desired, revision: u64) -> pb::Inventory {
    let mut inventory = pb::Inventory {
        revision,
        ..Default::default()
    };
    for (name, port) in desired {
        let spec = &port.spec;
        match spec.plane {
            Plane::Runtime => {
                let service = spec
                    .service
                    .clone()
                    .unwrap_or_else(|| crate::crd::ServiceRef {
                        namespace: String::new(),
                        name: String::new(),
                    });
                let mut hostnames: Vec<String> = Vec::new();
                for e in &spec.exposures {
                    for h in e.hostname.iter().chain(e.fqdn.iter()) {
                        if !hostnames.contains(h) {
                            hostnames.push(h.clone());
                        }
                    }
                }
                inventory.runtime_ports.push(pb::RuntimePort {
                    name: name.clone(),
                    namespace: service.namespace,
                    service: service.name,
                    port: u32::try_from(spec.port).unwrap_or(0),
                    protocol: spec.protocol.clone(),
                    node_port: spec
                        .node_port
                        .and_then(|p| u32::try_from(p).ok())
                        .unwrap_or(0),
                    hostnames,
                });
            }
            Plane::Operator => {
                let (local_address, local_port) = spec
                    .local
                    .as_ref()
                    .map(|l| (l.address.clone(), u32::try_from(l.port).unwrap_or(0)))
                    .unwrap_or_default();
                let (target_host, target_port) = spec
                    .target
                    .as_ref()
                    .map(|t| (t.host.clone(), u32::try_from(t.port).unwrap_or(0)))
                    .unwrap_or_default();
                inventory.operator_ports.push(pb::OperatorPortSpec {
                    name: name.clone(),
                    local_address,
                    local_port,
                    target_host,
                    target_port,
                });
            }
        }
    }
    inventory
}

/// What the reconcile loop publishes: the desired inventory and a revision
/// that increases with every change.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub revision: u64,
    pub desired: Arc<Desired>,
}

struct Service {
    inventory: watch::Receiver<Published>,
    agents: Arc<RwLock<AgentRegistry>>,
    trigger: Arc<Notify>,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

impl Service {
    /// The agent the call's bearer token stands for; refusals are counted
    /// and logged with the peer, never with the token.
    async fn caller<T>(&self, request: &Request<T>, call: &str) -> Result<String, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        let result = match bearer(header) {
            Ok(token) => self.auth.agent(token).await,
            Err(e) => Err(e),
        };
        result.map_err(|e| self.refused(request, call, e))
    }

    fn refused<T>(&self, request: &Request<T>, call: &str, e: AuthError) -> Status {
        let counter = match &e {
            AuthError::Unauthenticated(_) => Some(&self.metrics.agent_unauthenticated),
            AuthError::PermissionDenied(_) => Some(&self.metrics.agent_permission_denied),
            AuthError::Unavailable(_) => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(call, %peer, reason = %e, "agent call refused");
        e.into()
    }
}

type InventoryStream = Pin<Box<dyn Stream<Item = Result<pb::Inventory, Status>> + Send>>;

#[tonic::async_trait]
impl PortInventory for Service {
    async fn report(
        &self,
        request: Request<pb::AgentReport>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        let caller = self.caller(&request, "Report").await?;
        if request.get_ref().agent != caller {
            let claimed = request.get_ref().agent.chars().take(64).collect::<String>();
            return Err(self.refused(
                &request,
                "Report",
                AuthError::PermissionDenied(format!(
                    "AgentReport.agent {claimed:?}: this token is agent {caller:?} and may only report as {caller:?}"
                )),
            ));
        }
        let report = request.into_inner();
        tracing::debug!(agent = %report.agent, "agent report");
        self.agents.write().await.record(report);
        self.trigger.notify_one();
        Ok(Response::new(pb::ReportAck {
            inventory_revision: self.inventory.borrow().revision,
        }))
    }

    type WatchInventoryStream = InventoryStream;

    async fn watch_inventory(
        &self,
        request: Request<pb::WatchInventoryRequest>,
    ) -> Result<Response<Self::WatchInventoryStream>, Status> {
        let caller = self.caller(&request, "WatchInventory").await?;
        let claimed = &request.get_ref().agent;
        if !claimed.is_empty() && *claimed != caller {
            let claimed = claimed.chars().take(64).collect::<String>();
            return Err(self.refused(
                &request,
                "WatchInventory",
                AuthError::PermissionDenied(format!(
                    "WatchInventoryRequest.agent {claimed:?}: this token is agent {caller:?}"
                )),
            ));
        }
        let stream = WatchStream::new(self.inventory.clone())
            .map(|published| Ok(to_proto(&published.desired, published.revision)));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Bind now, serve until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    inventory: watch::Receiver<Published>,
    agents: Arc<RwLock<AgentRegistry>>,
    trigger: Arc<Notify>,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<impl std::future::Future<Output = Result<(), tonic::transport::Error>>, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    let service = Service {
        inventory,
        agents,
        trigger,
        auth,
        metrics,
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Ok(tonic::transport::Server::builder()
        .add_service(PortInventoryServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown))
}
