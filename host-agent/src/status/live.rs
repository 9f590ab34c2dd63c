//! The running agent's view of itself, gathered from the tunnel's counters,
//! the SSH pool and the controller link when `status` asks.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::{AgentStatus, ControllerStatus, ForwardStatus, SshStatus, rfc3339};
use crate::config::AgentConfig;
use crate::controller_link::TunnelStatus;

/// Everything `status` reads in a running agent.
pub struct Live {
    pub config_path: PathBuf,
    pub config: AgentConfig,
    pub started: SystemTime,
    pub tunnel: Arc<TunnelStatus>,
}

impl Live {
    pub fn snapshot(&self) -> AgentStatus {
        let pool = &self.tunnel.pool;
        let up = pool.live_sessions();
        let ssh_error = pool.health().last_error();
        let mut forwards: Vec<ForwardStatus> = self
            .tunnel
            .served
            .iter()
            .map(|(f, counters)| ForwardStatus {
                name: f.name.clone(),
                listen: f.listen.to_string(),
                target: f.target.to_string(),
                state: if up > 0 { "Up" } else { "Down" }.into(),
                active_connections: counters.active.load(Ordering::Relaxed),
                total_connections: counters.total.load(Ordering::Relaxed),
                bytes_from_clients: counters.bytes_from_clients.load(Ordering::Relaxed),
                bytes_to_clients: counters.bytes_to_clients.load(Ordering::Relaxed),
                last_error: if up > 0 { None } else { ssh_error.clone() },
            })
            .collect();
        forwards.extend(self.tunnel.refused.iter().map(|(f, why)| ForwardStatus {
            name: f.name.clone(),
            listen: f.listen.to_string(),
            target: f.target.to_string(),
            state: "Refused".into(),
            active_connections: 0,
            total_connections: 0,
            bytes_from_clients: 0,
            bytes_to_clients: 0,
            last_error: Some(why.clone()),
        }));
        let controller = self.config.controller.as_ref().map(|c| {
            let link = self.tunnel.link.snapshot();
            // Before the first inventory arrives, the one cached on disk is
            // what the ownership rule uses.
            let cached = || {
                crate::ownership::load_cache(&c.inventory_cache)
                    .ok()
                    .flatten()
                    .map(|i| i.revision)
            };
            ControllerStatus {
                endpoint: c.endpoint.clone(),
                connected: self.tunnel.link.connected(),
                last_report: link.last_report.map(rfc3339),
                inventory_revision: link.inventory_revision.or_else(cached),
                last_error: link.last_error,
            }
        });
        let now = SystemTime::now();
        AgentStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            config: self.config_path.display().to_string(),
            started_at: rfc3339(self.started),
            uptime_seconds: now.duration_since(self.started).map_or(0, |d| d.as_secs()),
            forwards,
            ssh: SshStatus {
                host: pool.health().host(),
                sessions_up: up,
                sessions: pool.size(),
                up_since: pool.up_since().map(rfc3339),
                last_error: ssh_error,
            },
            controller,
        }
    }
}
