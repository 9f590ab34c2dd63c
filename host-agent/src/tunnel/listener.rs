//! Binding every forward's listener up front (like `ExitOnForwardFailure`)
//! and accepting connections for as long as the agent runs. Listeners do not
//! depend on the SSH session: they stay bound through reconnects.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::net::TcpListener;

use super::connection::{self, PoolWithGrace};
use crate::config::Forward;

#[derive(Debug, thiserror::Error)]
#[error("forward \"{forward}\": cannot listen on {listen}: {source}{holder}")]
pub struct BindError {
    pub forward: String,
    pub listen: std::net::SocketAddr,
    pub source: std::io::Error,
    /// ", held by pid 1234 (ssh)" when the holder was found.
    pub holder: String,
}

/// Bind all listeners, or fail naming the first port that could not be bound.
pub async fn bind_all(forwards: &[Forward]) -> Result<Vec<(Forward, TcpListener)>, BindError> {
    let mut bound = Vec::new();
    for f in forwards {
        match TcpListener::bind(f.listen).await {
            Ok(listener) => bound.push((f.clone(), listener)),
            Err(source) => {
                let holder = match source.kind() {
                    std::io::ErrorKind::AddrInUse => holder_of(f.listen.port())
                        .await
                        .map(|h| format!(", held by {h}"))
                        .unwrap_or_else(|| ", held by another process".into()),
                    _ => String::new(),
                };
                return Err(BindError {
                    forward: f.name.clone(),
                    listen: f.listen,
                    source,
                    holder,
                });
            }
        }
    }
    Ok(bound)
}

/// One forward's connection counts, for reports and `status`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections being forwarded now.
    pub active: AtomicU32,
    /// Connections accepted since start.
    pub total: AtomicU64,
    /// Bytes read from clients and sent to the target, since start.
    pub bytes_from_clients: AtomicU64,
    /// Bytes the target sent for clients, since start (counted as they
    /// arrive from the SSH server; the sink writes them on).
    pub bytes_to_clients: Arc<AtomicU64>,
}

/// The port's holder, looked up off the async workers (it walks /proc or
/// runs `lsof`) and given up on after a few seconds.
async fn holder_of(port: u16) -> Option<String> {
    let lookup = tokio::task::spawn_blocking(move || super::port_holder::describe_holder(port));
    tokio::time::timeout(std::time::Duration::from_secs(5), lookup)
        .await
        .ok()?
        .ok()?
}

/// Accept forever; each connection gets its own task.
/// `counters` counts this forward's connections, for reports.
pub async fn serve(
    shared: Arc<PoolWithGrace>,
    forward: Forward,
    listener: TcpListener,
    counters: Arc<Counters>,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_FORWARD));
    loop {
        // Bounded connection count keeps total memory bounded too.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((client, peer)) => {
                let (shared, target, name) =
                    (shared.clone(), forward.target.clone(), forward.name.clone());
                let counters = counters.clone();
                counters.active.fetch_add(1, Ordering::Relaxed);
                counters.total.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    connection::forward(shared, client, peer, target, name, &counters).await;
                    counters.active.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(forward = forward.name, %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

const MAX_CONNECTIONS_PER_FORWARD: usize = 1024;
