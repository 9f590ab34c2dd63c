//! `portplane-agent status`: what the running agent says about itself over
//! its Unix socket ([`socket`]), plus how the service manager sees it
//! ([`crate::service::manager`]), as one stable JSON object or as text.

pub mod live;
pub mod render;
pub mod socket;

use serde::{Deserialize, Serialize};

/// What `run` answers on its status socket. Times are RFC 3339 (UTC,
/// seconds); durations are whole seconds. Fields are only ever added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// `portplane-agent` version of the running process.
    pub version: String,
    pub pid: u32,
    /// The config file it runs with (absolute).
    pub config: String,
    pub started_at: String,
    pub uptime_seconds: u64,
    pub forwards: Vec<ForwardStatus>,
    pub ssh: SshStatus,
    /// `None` when the config has no `[controller]`.
    pub controller: Option<ControllerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardStatus {
    pub name: String,
    pub listen: String,
    pub target: String,
    /// `Up` (listening, an SSH session is up), `Down` (listening, no SSH
    /// session) or `Refused` (the ownership rule refused it; not listening).
    pub state: String,
    /// Connections being forwarded right now.
    pub active_connections: u32,
    /// Connections accepted since the agent started.
    pub total_connections: u64,
    /// Bytes from clients to the target since the agent started.
    pub bytes_from_clients: u64,
    /// Bytes from the target to clients since the agent started.
    pub bytes_to_clients: u64,
    pub last_error: Option<String>,
}

/// The pool of SSH sessions every forward shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshStatus {
    /// `user@host:port` from the ssh config, as last resolved.
    pub host: String,
    pub sessions_up: usize,
    pub sessions: usize,
    /// When the oldest live session came up.
    pub up_since: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerStatus {
    pub endpoint: String,
    /// The inventory stream is open.
    pub connected: bool,
    /// When the last report was accepted by the controller.
    pub last_report: Option<String>,
    /// Revision of the cached inventory (the last one the controller sent).
    pub inventory_revision: Option<u64>,
    pub last_error: Option<String>,
}

/// `status --json`: the agent's answer (absent when no agent answered) and
/// the service manager's view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub socket: String,
    pub agent: Option<AgentStatus>,
    pub service: crate::service::manager::ServiceView,
}

/// RFC 3339 in UTC, to the second.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
