//! A small pool of SSH sessions to the same host, each kept alive by its own
//! supervisor: keepalives detect a dead peer, the ssh config is re-read
//! before every attempt (Lima picks a new port on each VM start), and
//! reconnects back off exponentially with jitter. Each connection goes to
//! the first live session that is not held back by a slow reader (see
//! [`first_not_behind`]); the others stand by. During an outage
//! connections wait for a session.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use russh::client;
use tokio::sync::watch;

use super::channel_sink::Sinks;
use crate::backoff::{Backoff, jitter_seed};
use crate::ssh::client_config::{ClientConfigError, ResolvedHost, SshEnv, resolve_file};
use crate::ssh::nodelay::{self, Outcome};
use crate::ssh::session::{self, SessionTuning, TunnelHandler};

/// A pooled session: the handle to open channels on, and where the session
/// delivers their data (see `tunnel::channel_sink`).
pub struct PooledSession {
    pub handle: client::Handle<TunnelHandler>,
    pub sinks: Arc<Sinks>,
    /// When the session came up (for `status`).
    pub since: SystemTime,
}

pub type SshHandle = Arc<PooledSession>;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub ssh_config: PathBuf,
    pub host_alias: String,
    pub sessions: usize,
    pub tuning: SessionTuning,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub env: SshEnv,
}

pub struct Pool {
    slots: Vec<watch::Receiver<Option<SshHandle>>>,
    health: Arc<PoolHealth>,
}

/// What the supervisors last saw, for `status` and `doctor`: the resolved
/// `user@host:port` and the last connect error (cleared when a session is up).
#[derive(Debug, Default)]
pub struct PoolHealth {
    host: Mutex<String>,
    last_error: Mutex<Option<String>>,
}

impl PoolHealth {
    pub fn host(&self) -> String {
        self.host
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, host: Option<String>, error: Option<String>) {
        if let Some(host) = host {
            *self.host.lock().unwrap_or_else(PoisonError::into_inner) = host;
        }
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }
}

impl Pool {
    /// Start one supervisor task per session slot.
    pub fn start(config: PoolConfig) -> Arc<Pool> {
        let config = Arc::new(config);
        let health = Arc::new(PoolHealth::default());
        let mut slots = Vec::new();
        for slot in 0..config.sessions.max(1) {
            let (tx, rx) = watch::channel(None);
            slots.push(rx);
            tokio::spawn(supervise(config.clone(), slot, tx, health.clone()));
        }
        Arc::new(Pool { slots, health })
    }

    /// Session slots in the pool.
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// When the oldest live session came up; `None` when none is up.
    pub fn up_since(&self) -> Option<SystemTime> {
        self.slots
            .iter()
            .filter_map(|s| {
                s.borrow()
                    .as_ref()
                    .filter(|h| !h.handle.is_closed())
                    .map(|h| h.since)
            })
            .min()
    }

    pub fn health(&self) -> &PoolHealth {
        &self.health
    }

    /// Number of sessions currently up.
    pub fn live_sessions(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.borrow().as_ref().is_some_and(|h| !h.handle.is_closed()))
            .count()
    }

    /// Every slot's session, for tasks that act when a session comes up or
    /// goes away (the controller link reports a tunnel state change at once;
    /// the Docker poll re-reads the VM's port maps after a reconnect).
    pub fn subscribe(&self) -> SessionChanges {
        let mut slots = self.slots.clone();
        for s in &mut slots {
            s.mark_unchanged();
        }
        SessionChanges { slots }
    }

    /// The first live session not held back by a slow reader, else the
    /// first live one ([`first_not_behind`]); waits up to `grace` when none
    /// is up.
    pub async fn session(&self, grace: Duration) -> Option<SshHandle> {
        // A session is up: no watchers to clone (the loop's are taken
        // before its pick, so that no change between the two is missed).
        if let Some(found) = self.pick() {
            return Some(found);
        }
        let deadline = Instant::now() + grace;
        loop {
            let mut watchers = self.slots.clone();
            for w in &mut watchers {
                w.mark_unchanged();
            }
            if let Some(handle) = self.pick() {
                return Some(handle);
            }
            let any_change =
                futures::future::select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
            let remaining = deadline.checked_duration_since(Instant::now())?;
            if tokio::time::timeout(remaining, any_change).await.is_err() {
                return None;
            }
        }
    }

    /// The live session [`first_not_behind`] chooses.
    fn pick(&self) -> Option<SshHandle> {
        let live: Vec<Option<SshHandle>> = self
            .slots
            .iter()
            .map(|slot| {
                slot.borrow()
                    .as_ref()
                    .filter(|h| !h.handle.is_closed())
                    .cloned()
            })
            .collect();
        let chosen = first_not_behind(live.iter().map(|h| h.as_ref().map(|h| h.sinks.behind())))?;
        live.into_iter().nth(chosen).flatten()
    }
}

/// Which session a new connection goes to: given each slot's state
/// (`None` for a slot with no live session, else whether the session is
/// [`Sinks::behind`](super::channel_sink::Sinks::behind), holding back for
/// a slow or stalled reader), the first live slot that is not behind, else
/// the first live one; `None` when no session is live.
///
/// Why every connection on one session, as `ssh -L` carries them: with
/// four downloads spread over two sessions (two sshd processes, each
/// waking the agent in turn) the agent slept 2-3x as often per GB as
/// `ssh -L`, and the tunnel client cost 1.01x / 0.87x `ssh -L`'s CPU per
/// GB (the bench's readers / iperf3, median of five runs), the whole path
/// 1.01x / 0.98x; on one session 0.83x / 0.82x and 0.94x / 0.95x (four
/// runs), at the same throughput and latency (BENCHMARKS.md, Tunnel,
/// issue 12, thirteenth run). Short connections one after another share a
/// warm session too (eighth run). The other sessions stand by: they take
/// new connections while the first is down or behind, so a reader that
/// stops (a paused pager on `kubectl logs -f`) does not make new
/// connections wait for the session to give up on it.
pub fn first_not_behind(slots: impl IntoIterator<Item = Option<bool>>) -> Option<usize> {
    let mut first_live = None;
    for (i, behind) in slots.into_iter().enumerate() {
        match behind {
            Some(false) => return Some(i),
            Some(true) => {
                first_live.get_or_insert(i);
            }
            None => {}
        }
    }
    first_live
}

/// Changes of the pool's session slots, from [`Pool::subscribe`].
pub struct SessionChanges {
    slots: Vec<watch::Receiver<Option<SshHandle>>>,
}

impl SessionChanges {
    /// Resolves once any slot has changed since the last call (or since
    /// [`Pool::subscribe`]). Never resolves once the pool is gone.
    pub async fn changed(&mut self) {
        let closed = {
            let pending: Vec<_> = self
                .slots
                .iter_mut()
                .map(|w| Box::pin(w.changed()))
                .collect();
            pending.is_empty() || futures::future::select_all(pending).await.0.is_err()
        };
        if closed {
            // A supervisor ended: the pool is shutting down.
            std::future::pending::<()>().await;
        }
        for s in &mut self.slots {
            s.mark_unchanged();
        }
    }
}

async fn supervise(
    config: Arc<PoolConfig>,
    slot: usize,
    tx: watch::Sender<Option<SshHandle>>,
    health: Arc<PoolHealth>,
) {
    let mut backoff = Backoff::new(
        config.initial_backoff,
        config.max_backoff,
        jitter_seed(slot as u64),
    );
    loop {
        let host = match resolve(&config).await {
            Ok(host) => host,
            Err(error) => {
                let delay = backoff.next_delay();
                health.set(None, Some(error.to_string()));
                tracing::warn!(slot, %error, retry_in = ?delay, "cannot read the ssh config");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let where_ = format!("{}@{}:{}", host.user, host.hostname, host.port);
        match session::connect(&host, &config.tuning).await {
            Ok(session) => {
                backoff.reset();
                health.set(Some(where_), None);
                tracing::info!(
                    slot,
                    host = %host.hostname,
                    port = host.port,
                    "ssh session up"
                );
                let pooled = Arc::new(PooledSession {
                    handle: session.handle,
                    sinks: session.sinks,
                    since: SystemTime::now(),
                });
                if config.tuning.sshd_tcp_nodelay {
                    // Beside the tunnel, not before it: connections need not
                    // wait for a process to start in the VM.
                    tokio::spawn(request_nodelay(pooled.clone(), slot));
                }
                let _ = tx.send(Some(pooled));
                // Resolves when the session task ends and drops its handler.
                let why = session
                    .closed
                    .await
                    .unwrap_or_else(|_| "the session task ended".into());
                let _ = tx.send(None);
                health.set(
                    None,
                    Some(format!("ssh session lost ({why}); reconnecting")),
                );
                tracing::warn!(slot, reason = %why, "ssh session lost; reconnecting");
            }
            Err(error) => {
                let delay = backoff.next_delay();
                health.set(Some(where_), Some(error.to_string()));
                tracing::warn!(slot, %error, retry_in = ?delay, "ssh connect failed");
                if error.is_unreachable() {
                    wait_until_accepting(&config, delay).await;
                } else {
                    tokio::time::sleep(delay).await;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Ask sshd for TCP_NODELAY on this session (`ssh::nodelay`) and log what
/// came of it; the session works either way.
async fn request_nodelay(session: SshHandle, slot: usize) {
    match nodelay::request(&session.handle, &session.sinks).await {
        Ok(Outcome::Started) => tracing::debug!(slot, "sshd runs `true`: TCP_NODELAY is on"),
        Ok(outcome) => tracing::info!(
            slot,
            ?outcome,
            "sshd did not run `true`: {} (set ssh.sshd_tcp_nodelay = false to stop asking)",
            nodelay::WITHOUT_IT
        ),
        // A session lost meanwhile is logged as such already.
        Err(_) if session.handle.is_closed() => {}
        Err(error) => tracing::info!(slot, %error, "could not ask sshd for TCP_NODELAY"),
    }
}

/// Sleep up to `delay`, but return as soon as the (re-read) ssh config's
/// host:port accepts a TCP connection: a refused connect costs nothing, and
/// this keeps recovery quick once the VM is back, whatever the backoff.
async fn wait_until_accepting(config: &PoolConfig, delay: Duration) {
    let deadline = tokio::time::Instant::now() + delay;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(PROBE_INTERVAL.min(delay)).await;
        if let Ok(host) = resolve(config).await
            && let Ok(Ok(_)) = tokio::time::timeout_at(
                deadline,
                tokio::net::TcpStream::connect((host.hostname.as_str(), host.port)),
            )
            .await
        {
            return;
        }
    }
}

const PROBE_INTERVAL: Duration = Duration::from_millis(25);

/// Read and resolve the ssh config off the async workers (during an outage
/// this runs every [`PROBE_INTERVAL`]).
async fn resolve(config: &PoolConfig) -> Result<ResolvedHost, ClientConfigError> {
    let (path, alias, env) = (
        config.ssh_config.clone(),
        config.host_alias.clone(),
        config.env.clone(),
    );
    tokio::task::spawn_blocking(move || resolve_file(&path, &alias, &env))
        .await
        .unwrap_or_else(|e| {
            Err(ClientConfigError::Read {
                path: config.ssh_config.clone(),
                source: std::io::Error::other(e),
            })
        })
}

#[cfg(test)]
mod tests {
    use super::first_not_behind;

    #[test]
    fn the_first_live_session_not_behind_wins() {
        assert_eq!(first_not_behind([Some(false), Some(false)]), Some(0));
        assert_eq!(first_not_behind([Some(true), Some(false)]), Some(1));
        assert_eq!(
            first_not_behind([Some(true), Some(false), Some(false)]),
            Some(1)
        );
    }

    #[test]
    fn when_every_live_session_is_behind_the_first_live_one_wins() {
        assert_eq!(first_not_behind([Some(true), Some(true)]), Some(0));
        assert_eq!(first_not_behind([None, Some(true), Some(true)]), Some(1));
    }

    #[test]
    fn slots_without_a_live_session_are_skipped() {
        assert_eq!(first_not_behind([None, Some(false)]), Some(1));
        assert_eq!(
            first_not_behind([None, Some(true), None, Some(false)]),
            Some(3)
        );
        assert_eq!(first_not_behind([None, None]), None);
        assert_eq!(first_not_behind(std::iter::empty()), None);
    }
}
