//! `portplane-agent run`: check the ownership rule, bind every listener (or
//! exit naming the port and its holder), then hold the SSH session pool and
//! forward connections until SIGINT/SIGTERM. Nothing here waits for the
//! controller or the kubeconfig rewrites.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{AgentConfig, Forward};
use crate::controller_link::{self, LinkState, TunnelStatus};
use crate::ownership;
use crate::ssh::client_config::SshEnv;
use crate::ssh::session::{SessionTuning, supported_ciphers};
use crate::status::live::Live;
use crate::tunnel::channel_sink::{Buffered, Limits};
use crate::tunnel::connection::PoolWithGrace;
use crate::tunnel::listener::{self, BindError, Counters};
use crate::tunnel::pool::{Pool, PoolConfig};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("every forward was refused:\n{0}")]
    AllRefused(String),
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
}

/// `config_path` only names the config in `status`.
pub async fn run(config: AgentConfig, config_path: PathBuf) -> Result<(), RunError> {
    let started = SystemTime::now();
    let (forwards, refused) = allowed_forwards(&config)?;
    let bound = listener::bind_all(&forwards).await?;
    for (f, _) in &bound {
        tracing::info!(forward = f.name, listen = %f.listen, target = %f.target, "listening");
    }
    let pool = Pool::start(pool_config(&config));
    let shared = Arc::new(PoolWithGrace {
        pool,
        outage_grace: config.ssh.outage_grace,
    });
    let mut served = Vec::new();
    for (forward, listener) in bound {
        let counters = Arc::new(Counters::default());
        served.push((forward.clone(), counters.clone()));
        tokio::spawn(listener::serve(shared.clone(), forward, listener, counters));
    }
    let host_ports = crate::docker_ports::HostPorts::default();
    if config.controller.is_some() && config.docker.enabled {
        tokio::spawn(crate::docker_ports::keep_polling(
            config.clone(),
            pool_config(&config),
            shared.pool.clone(),
            host_ports.clone(),
        ));
    }
    let second_owners = crate::second_owners::SecondOwners::default();
    if config.controller.is_some() && config.second_owners.enabled {
        tokio::spawn(crate::second_owners::keep_scanning(
            config.clone(),
            second_owners.clone(),
        ));
    }
    let status = Arc::new(TunnelStatus {
        pool: shared.pool.clone(),
        served,
        refused,
        link: LinkState::default(),
        host_ports,
        second_owners,
    });
    tokio::spawn(controller_link::keep_in_touch(
        config.clone(),
        status.clone(),
    ));
    // Never fatal: `status` is for people; the tunnel works without it.
    let socket = match crate::status::socket::bind(&config.socket) {
        Ok(socket) => {
            let live = Arc::new(Live {
                config_path,
                config: config.clone(),
                started,
                tunnel: status,
            });
            tokio::spawn(crate::status::socket::serve(socket, live));
            tracing::info!(socket = %config.socket.display(), "status socket listening");
            Some(config.socket.clone())
        }
        Err(error) => {
            tracing::error!(%error, "no status socket; `portplane-agent status` will not answer");
            None
        }
    };
    // Never fatal and never in the tunnel's way: it logs its own problems.
    tokio::spawn(crate::rewrite::keep_rewritten(config.rewrite_plan()));
    tracing::info!(
        forwards = forwards.len(),
        "tunnel listening; ssh sessions connecting"
    );
    // systemd (Type=notify): every listener is bound. A no-op elsewhere.
    if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(%error, "cannot notify systemd");
    }
    wait_for_shutdown().await.map_err(RunError::Signal)?;
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(socket) = socket {
        let _ = std::fs::remove_file(socket);
    }
    Ok(())
}

/// A forward the ownership rule refused, with the reason.
type Refused = (Forward, String);

/// The forwards the ownership rule lets through, and the refused ones with
/// the reason (also logged).
fn allowed_forwards(config: &AgentConfig) -> Result<(Vec<Forward>, Vec<Refused>), RunError> {
    let inventory = match config.controller.as_ref() {
        Some(c) => match ownership::load_cache(&c.inventory_cache) {
            Ok(inv) => inv,
            // A broken cache must not take operator access down with it.
            Err(error) => {
                tracing::error!(%error, "ignoring the cached inventory");
                None
            }
        },
        None => None,
    };
    let Some(inventory) = inventory else {
        return Ok((config.forwards.clone(), Vec::new()));
    };
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    for f in &config.forwards {
        match ownership::refusal(f, &inventory) {
            Some(why) => {
                tracing::error!(forward = f.name, "{why}");
                refused.push((f.clone(), why));
            }
            None => allowed.push(f.clone()),
        }
    }
    if allowed.is_empty() {
        let reasons: Vec<&str> = refused.iter().map(|(_, why)| why.as_str()).collect();
        return Err(RunError::AllRefused(reasons.join("\n")));
    }
    Ok((allowed, refused))
}

fn pool_config(config: &AgentConfig) -> PoolConfig {
    PoolConfig {
        ssh_config: config.ssh.config.clone(),
        host_alias: config.ssh.host.clone(),
        sessions: config.ssh.sessions,
        tuning: session_tuning(config, Duration::from_secs(15)),
        initial_backoff: config.ssh.initial_backoff,
        max_backoff: config.ssh.max_backoff,
        env: ssh_env(),
    }
}

/// The SSH tuning `run` uses (also `doctor`'s SSH check).
pub fn session_tuning(config: &AgentConfig, handshake_timeout: Duration) -> SessionTuning {
    SessionTuning {
        keepalive_interval: config.ssh.keepalive_interval,
        keepalive_count_max: config.ssh.keepalive_count_max,
        handshake_timeout,
        limits: Limits::default(),
        buffered: Arc::new(Buffered::default()),
        sshd_tcp_nodelay: config.ssh.sshd_tcp_nodelay,
    }
}

/// What `ssh` would take from the environment.
pub fn ssh_env() -> SshEnv {
    SshEnv {
        home: crate::config::home_dir(),
        local_user: std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "root".into()),
        default_ciphers: supported_ciphers(),
    }
}

async fn wait_for_shutdown() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
