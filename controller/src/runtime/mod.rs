//! The I/O shell around the pure core: watches feed in-memory indexes, one
//! loop reconciles the whole desired set against what exists, writes are
//! gated by the lease.

mod overlay;
mod watches;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::{Notify, RwLock, watch};

use crate::Error;
use crate::auth::{AUDIENCE, Authenticator, token_review};
use crate::config::Config;
use crate::grpc::{self, AgentRegistry};
use crate::inventory::{self, ProxyIndex};
use crate::lease::{LeaderElector, Leadership, is_leading};
use crate::metrics::Metrics;
use crate::reconcile::MANAGER;
use portplane_core::inventory::Policy;

pub use watches::Stores;

/// Shared by the runtime's tasks.
pub struct Context {
    pub client: Client,
    pub config: Config,
    /// What the inventory reads of `config`.
    pub policy: Policy,
    pub metrics: Arc<Metrics>,
    pub stores: Stores,
    pub leader: watch::Receiver<Leadership>,
    pub trigger: Arc<Notify>,
    pub agents: Arc<RwLock<AgentRegistry>>,
    pub inventory: watch::Sender<grpc::Published>,
    overlay: overlay::Overlay,
    recorder: Recorder,
}

/// Run until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), Error> {
    // Before anything starts: no token ever crosses a network in the clear.
    crate::config::check_plaintext(
        config.grpc_listen,
        config.grpc_tls.is_some(),
        config.insecure,
    )
    .map_err(Error::Plaintext)?;
    let tls = config.grpc_tls.as_ref().map(grpc::server_tls).transpose()?;
    let client = Client::try_default().await?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = shutdown_tx.send(true);
    });

    let identity = identity();
    let metrics = Arc::new(Metrics::default());
    let trigger = Arc::new(Notify::new());
    let ready = Arc::new(AtomicBool::new(false));
    let (stores, watch_tasks) = watches::start(&client, &config, trigger.clone(), metrics.clone());

    let (leader_tx, leader) = watch::channel(None);
    let elector = LeaderElector::new(
        client.clone(),
        &config.lease_namespace(),
        &config.lease.name,
        &identity,
        config.lease.timing(),
    );
    let lease_task = tokio::spawn(elector.run(leader_tx, shutdown.clone()));

    let http = crate::http::serve(
        config.http_listen,
        ready.clone(),
        metrics.clone(),
        until(shutdown.clone()),
    )
    .await?;
    let http_task = tokio::spawn(http);

    let (inventory_tx, inventory_rx) = watch::channel(grpc::Published::default());
    let agents = Arc::new(RwLock::new(AgentRegistry::default()));
    let auth = Arc::new(Authenticator::new(
        token_review(client.clone()),
        config.agents_namespace(),
        AUDIENCE.into(),
        Duration::from_secs(config.agents.token_cache_seconds),
        metrics.clone(),
    ));
    let grpc = grpc::serve(
        config.grpc_listen,
        inventory_rx,
        grpc::Shared {
            agents: agents.clone(),
            leader: leader.clone(),
            trigger: trigger.clone(),
            auth,
            metrics: metrics.clone(),
        },
        tls,
        until(shutdown.clone()),
    )
    .await?;
    let grpc_task = tokio::spawn(grpc);

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(identity.clone()),
        },
    );
    let policy = config.policy().map_err(Error::InvalidConfig)?;
    let ctx = Arc::new(Context {
        client,
        config,
        policy,
        metrics,
        stores,
        leader,
        trigger,
        agents,
        inventory: inventory_tx,
        overlay: overlay::Overlay::default(),
        recorder,
    });
    tracing::info!(%identity, "started; waiting for watches to sync");
    reconcile_loop(ctx, ready, shutdown).await;

    for task in watch_tasks {
        task.abort();
    }
    // The lease is released before exit so a standby takes over at once.
    let _ = lease_task.await;
    let _ = http_task.await;
    let _ = grpc_task.await;
    tracing::info!("stopped");
    Ok(())
}

async fn reconcile_loop(
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = ctx.stores.wait_until_ready() => {}
        _ = shutdown.wait_for(|s| *s) => return,
    }
    ready.store(true, Ordering::Relaxed);
    // Agent entries a previous controller wrote stay (stale by lastSeen)
    // until the agents report here.
    {
        let objects = ctx.stores.operator_ports.state();
        ctx.agents
            .write()
            .await
            .seed(objects.iter().map(|o| o.as_ref()));
    }
    tracing::info!("watches synced; ready");
    let ttl = Duration::from_secs(ctx.config.agents.ttl_seconds);

    let mut leader = ctx.leader.clone();
    let mut resync = tokio::time::interval(Duration::from_secs(ctx.config.resync_seconds));
    let mut failures = 0u32;
    loop {
        let retry_after = match reconcile_once(&ctx).await {
            Ok(()) => {
                failures = 0;
                None
            }
            Err(e) => {
                failures += 1;
                ctx.metrics.reconcile_errors.fetch_add(1, Ordering::Relaxed);
                let backoff = Duration::from_millis(200 * 2u64.pow(failures.min(6)));
                tracing::warn!(error = %e, ?backoff, "reconcile failed; retrying");
                Some(backoff)
            }
        };
        let retry = async {
            match retry_after {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        // When the next agent report goes stale, Ready may change with no
        // event to say so: reconcile then (a little after, so it is stale).
        let expiry = ctx.agents.read().await.next_expiry(ttl);
        let stale = async {
            match expiry.and_then(|e| e.duration_since(std::time::SystemTime::now()).ok()) {
                Some(d) => tokio::time::sleep(d + Duration::from_millis(50)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ctx.trigger.notified() => {
                // Coalesce a burst of watch events into one pass.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ = resync.tick() => {}
            _ = leader.changed() => {}
            _ = retry => {}
            _ = stale => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Compute the desired set from the indexes; publish it to agents; when
/// leading, write the difference.
async fn reconcile_once(ctx: &Context) -> Result<(), Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.fetch_add(1, Ordering::Relaxed);
    let services = ctx.stores.services.state();
    let proxies: ProxyIndex = ctx
        .stores
        .secrets
        .state()
        .iter()
        .filter_map(|s| inventory::proxy_state(s))
        .collect();
    let reports = ctx.agents.read().await.reports();
    // Shared with the gRPC stream rather than copied: at 10,000 ports a copy
    // is megabytes.
    let mut desired = inventory::desired_inventory(
        services.iter().map(|s| s.as_ref()),
        &proxies,
        &reports,
        &ctx.policy,
    );
    inventory::assess_health(
        &mut desired,
        k8s_openapi::jiff::Timestamp::now(),
        Duration::from_secs(ctx.config.agents.ttl_seconds),
    );
    let desired = Arc::new(desired);
    drop(services);
    ctx.metrics
        .inventory_size
        .store(desired.len() as u64, Ordering::Relaxed);
    ctx.inventory.send_if_modified(|published| {
        if published.desired == desired {
            false
        } else {
            published.revision += 1;
            published.desired = desired.clone();
            true
        }
    });
    let leadership = *ctx.leader.borrow();
    let leading = is_leading(&leadership, tokio::time::Instant::now());
    ctx.metrics
        .is_leader
        .store(u64::from(leading), Ordering::Relaxed);
    let result = match leadership {
        // Writes stop when the lease runs out, even mid-request: a hung API
        // call cannot keep this replica writing after another took over.
        Some(until) if leading => {
            tokio::time::timeout_at(until, writer::write_difference(ctx, &desired))
                .await
                .unwrap_or(Err(Error::LeaseExpired))
        }
        _ => Ok(()),
    };
    ctx.metrics
        .last_reconcile_micros
        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    result
}

/// Pod name (or host name) plus pid: unique per replica.
fn identity() -> String {
    let host = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .or_else(|_| std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()))
        .unwrap_or_else(|_| "portplane-controller".into());
    format!("{host}-{}", std::process::id())
}

async fn until(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the controller");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
