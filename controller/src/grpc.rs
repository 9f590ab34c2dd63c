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
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use pb::port_inventory_server::{PortInventory, PortInventoryServer};
use portplane_proto::convert;
use portplane_proto::v1alpha1 as pb;
use tokio::sync::{Notify, RwLock, watch};
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use crate::auth::{AuthError, Authenticator, bearer};
use crate::crd::{OperatorPort, Plane};
use crate::inventory::{AgentReports, Desired, TunnelReport};
use crate::metrics::Metrics;
use crate::{Error, bounds};
use k8s_openapi::jiff::Timestamp;

/// Host ports of an agent silent this long no longer count (its VM may be
/// gone with it).
const REPORT_TTL: Duration = Duration::from_secs(600);
/// An agent silent this long leaves status altogether; until then its entry
/// stays, going stale by `lastSeen` (Ready follows the TTL, not this).
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The latest report of every authenticated agent, with when it arrived
/// (wall clock: it is written into status as `lastSeen` and read back after
/// a restart).
#[derive(Default)]
pub struct AgentRegistry {
    latest: BTreeMap<String, (pb::AgentReport, SystemTime)>,
}

fn age(at: SystemTime) -> Duration {
    SystemTime::now().duration_since(at).unwrap_or_default()
}

impl AgentRegistry {
    /// Keep `report` (capped: `bounds::cap_report`) as its agent's latest.
    /// A new agent is refused once [`bounds::MAX_AGENTS`] agents are held.
    pub fn record(&mut self, mut report: pb::AgentReport) -> Result<(), Status> {
        bounds::cap_report(&mut report);
        self.latest.retain(|_, (_, at)| age(*at) < FORGET_AFTER);
        if self.latest.len() >= bounds::MAX_AGENTS && !self.latest.contains_key(&report.agent) {
            return Err(Status::resource_exhausted(format!(
                "the controller already holds reports of {} agents (its limit); \
                 agent {:?} is not recorded",
                bounds::MAX_AGENTS,
                report.agent
            )));
        }
        self.latest
            .insert(report.agent.clone(), (report, SystemTime::now()));
        Ok(())
    }

    /// Take over the agent entries a previous controller wrote into the
    /// operator ports' status, for agents that have not reported to this
    /// one yet: a restart keeps them (they go stale by `lastSeen`).
    pub fn seed<'a>(&mut self, objects: impl IntoIterator<Item = &'a OperatorPort>) {
        let mut seeded: BTreeMap<String, (pb::AgentReport, SystemTime)> = BTreeMap::new();
        for object in objects {
            let (Some(name), Some(status)) = (&object.metadata.name, &object.status) else {
                continue;
            };
            if object.spec.plane != Plane::Operator {
                continue;
            }
            for entry in &status.agents {
                let Some(seen) = entry.last_seen.as_ref().map(|t| SystemTime::from(t.0)) else {
                    continue;
                };
                if age(seen) >= FORGET_AFTER || self.latest.contains_key(&entry.name) {
                    continue;
                }
                let (report, at) = seeded.entry(entry.name.clone()).or_insert_with(|| {
                    (
                        pb::AgentReport {
                            agent: entry.name.clone(),
                            version: entry.version.clone().unwrap_or_default(),
                            ..Default::default()
                        },
                        seen,
                    )
                });
                *at = (*at).max(seen);
                let state = convert::tunnel_state_from_status(&entry.tunnel);
                report.tunnels.push(pb::TunnelReport {
                    forward: name.clone(),
                    state: state as i32,
                    active_connections: u32::try_from(entry.active_connections).unwrap_or(0),
                    last_error: entry.last_error.clone().unwrap_or_default(),
                    ..Default::default()
                });
            }
        }
        self.latest.extend(seeded);
    }

    /// The next moment a fresh report goes stale under `ttl` (Ready may
    /// change then without any event).
    pub fn next_expiry(&self, ttl: Duration) -> Option<SystemTime> {
        let now = SystemTime::now();
        self.latest
            .values()
            .filter_map(|(_, at)| at.checked_add(ttl))
            .filter(|expires| *expires > now)
            .min()
    }

    /// Flattened for the pure inventory.
    pub fn reports(&self) -> AgentReports {
        let mut out = AgentReports::default();
        for (agent, (report, at)) in &self.latest {
            if age(*at) >= FORGET_AFTER {
                continue;
            }
            let host_ports = if age(*at) < REPORT_TTL {
                report.host_ports.as_slice()
            } else {
                &[]
            };
            out.host_ports.extend(
                host_ports
                    .iter()
                    .filter_map(|h| convert::host_port(agent, h)),
            );
            if age(*at) < REPORT_TTL {
                for o in report.second_owners.iter().take(64) {
                    let Some(mut o) = convert::second_owner(agent, o) else {
                        continue;
                    };
                    let cut = |s: &mut String, n: usize| *s = s.chars().take(n).collect();
                    cut(&mut o.address, 64);
                    cut(&mut o.process, 64);
                    cut(&mut o.command, 256);
                    out.second_owners.push(o);
                }
            }
            for t in &report.tunnels {
                let state = convert::tunnel_state(t.state);
                out.tunnels.push(TunnelReport {
                    agent: agent.clone(),
                    forward: t.forward.clone(),
                    state: state.into(),
                    active_connections: i64::from(t.active_connections),
                    last_error: Some(t.last_error.clone()).filter(|e| !e.is_empty()),
                    version: report.version.clone(),
                    last_seen: Timestamp::try_from(*at).ok(),
                });
            }
        }
        out
    }
}

/// The wire form of the desired inventory (`portplane_proto::convert`).
pub fn to_proto(desired: &Desired, revision: u64) -> pb::Inventory {
    convert::inventory(
        revision,
        desired
            .iter()
            .map(|(name, port)| (name.as_str(), &port.spec)),
    )
}

/// What the reconcile loop publishes: the desired inventory and a revision
/// that increases with every change.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub revision: u64,
    pub desired: Arc<Desired>,
}

/// The `PortInventory` gRPC service: the published inventory it streams,
/// the registry it records reports into, and what it checks callers with.
struct PortInventoryService {
    inventory: watch::Receiver<Published>,
    agents: Arc<RwLock<AgentRegistry>>,
    leader: watch::Receiver<crate::lease::Leadership>,
    trigger: Arc<Notify>,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    /// Unix second of the last refusal logged at info.
    last_refusal_logged: std::sync::atomic::AtomicU64,
}

impl PortInventoryService {
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
        // Strangers must not be able to flood the log: one line per second
        // at info, the rest at debug (the metric counts every one).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let last = self
            .last_refusal_logged
            .swap(now, std::sync::atomic::Ordering::Relaxed);
        if last != now {
            tracing::info!(call, %peer, reason = %e, "agent call refused");
        } else {
            tracing::debug!(call, %peer, reason = %e, "agent call refused");
        }
        e.into()
    }
}

type InventoryStream = Pin<Box<dyn Stream<Item = Result<pb::Inventory, Status>> + Send>>;

#[tonic::async_trait]
impl PortInventory for PortInventoryService {
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
        if !crate::lease::is_leading(&self.leader.borrow(), tokio::time::Instant::now()) {
            // The agent reconnects (a new connection through the Service
            // may reach the leader) and reports again.
            return Err(Status::unavailable(
                "this controller replica is a standby, and only the leader records reports; reconnect",
            ));
        }
        let report = request.into_inner();
        tracing::debug!(agent = %report.agent, "agent report");
        self.agents.write().await.record(report)?;
        self.metrics
            .agent_reports
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

/// The TLS config for `grpcTls`: both PEM files read now, so a missing or
/// unreadable one stops the start naming it.
pub fn server_tls(
    tls: &crate::config::GrpcTls,
) -> Result<tonic::transport::ServerTlsConfig, Error> {
    let read = |path: &std::path::Path, what: &str| {
        let pem = std::fs::read(path).map_err(|e| Error::Tls {
            path: path.into(),
            message: format!("cannot read the {what}: {e}"),
        })?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN ") {
            return Err(Error::Tls {
                path: path.into(),
                message: format!("expected a PEM {what}"),
            });
        }
        Ok(pem)
    };
    let cert = read(&tls.cert_file, "certificate")?;
    let key = read(&tls.key_file, "private key")?;
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key)))
}

/// What the gRPC service shares with the rest of the controller.
pub struct Shared {
    pub agents: Arc<RwLock<AgentRegistry>>,
    /// Reports are taken only while this replica leads: only the leader
    /// writes them into status, so a standby's copy would go nowhere.
    pub leader: watch::Receiver<crate::lease::Leadership>,
    /// Wakes the reconcile loop after a report.
    pub trigger: Arc<Notify>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
}

/// Bind now, serve until `shutdown`; over TLS when `tls` is given.
pub async fn serve(
    addr: SocketAddr,
    inventory: watch::Receiver<Published>,
    shared: Shared,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<impl std::future::Future<Output = Result<(), tonic::transport::Error>>, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen { addr, source })?;
    let Shared {
        agents,
        leader,
        trigger,
        auth,
        metrics,
    } = shared;
    let service = PortInventoryService {
        inventory,
        agents,
        leader,
        trigger,
        auth,
        metrics,
        last_refusal_logged: std::sync::atomic::AtomicU64::new(0),
    };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    Ok(builder
        .add_service(
            PortInventoryServer::new(service).max_decoding_message_size(bounds::MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AgentStatus, OperatorPortSpec, OperatorPortStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn operator_port(name: &str, agents: Vec<AgentStatus>) -> OperatorPort {
        let mut o = OperatorPort::new(
            name,
            OperatorPortSpec {
                plane: Plane::Operator,
                port: 16443,
                protocol: "TCP".into(),
                endpoint: None,
                owner: "portplane-agent".into(),
                service: None,
                target_port: None,
                node_port: None,
                exposures: Vec::new(),
                local: None,
                target: None,
            },
        );
        o.status = Some(OperatorPortStatus {
            agents,
            ..Default::default()
        });
        o
    }

    fn entry(name: &str, tunnel: &str, seen: SystemTime) -> AgentStatus {
        AgentStatus {
            name: name.into(),
            tunnel: tunnel.into(),
            active_connections: 2,
            last_error: Some("e".into()).filter(|_| tunnel != "Up"),
            version: Some("0.1.0".into()),
            last_seen: Some(Time(Timestamp::try_from(seen).unwrap())),
        }
    }

    #[test]
    fn a_restart_keeps_the_entries_written_before_it() {
        let ten_s_ago = SystemTime::now() - Duration::from_secs(10);
        let objects = [operator_port(
            "kube-apiserver",
            vec![
                entry("panda", "Up", ten_s_ago),
                entry("mini", "Down", ten_s_ago),
            ],
        )];
        let mut registry = AgentRegistry::default();
        // "mini" reported to this controller before the seed: its own report wins.
        registry
            .record(pb::AgentReport {
                agent: "mini".into(),
                version: "0.2.0".into(),
                tunnels: vec![pb::TunnelReport {
                    forward: "kube-apiserver".into(),
                    state: pb::TunnelState::Up as i32,
                    ..Default::default()
                }],
                host_ports: Vec::new(),
                second_owners: Vec::new(),
            })
            .unwrap();
        registry.seed(objects.iter());
        let reports = registry.reports();
        let by_agent = |a: &str| reports.tunnels.iter().find(|t| t.agent == a).unwrap();
        let panda = by_agent("panda");
        assert_eq!(
            (panda.state.as_str(), panda.forward.as_str()),
            ("Up", "kube-apiserver")
        );
        assert_eq!(panda.active_connections, 2);
        assert_eq!(
            panda.last_seen.map(|t| t.as_second()),
            Some(Timestamp::try_from(ten_s_ago).unwrap().as_second()),
            "lastSeen is kept, not renewed"
        );
        assert_eq!(by_agent("mini").version, "0.2.0");
        // The seeded entry goes stale 20 s from now (TTL 30 s).
        let expiry = registry.next_expiry(Duration::from_secs(30)).unwrap();
        let left = expiry.duration_since(SystemTime::now()).unwrap();
        assert!(left <= Duration::from_secs(20), "{left:?}");
    }

    #[test]
    fn entries_older_than_a_day_are_not_seeded() {
        let old = SystemTime::now() - FORGET_AFTER - Duration::from_secs(1);
        let objects = [operator_port(
            "kube-apiserver",
            vec![entry("gone", "Up", old)],
        )];
        let mut registry = AgentRegistry::default();
        registry.seed(objects.iter());
        assert!(registry.reports().tunnels.is_empty());
        assert_eq!(registry.next_expiry(Duration::from_secs(30)), None);
    }
}
